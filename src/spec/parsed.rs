//! What every spec format parses into ([`DepSpec`]), and the requirement parsing and error
//! listing the format readers share.

use crate::error::bad_input;
use anyhow::Result;
use pep508_rs::{Requirement, VersionOrUrl};
use serde::Serialize;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpecKind {
    PylockToml,
    CondaYaml,
    PyprojectToml,
    RequirementsTxt,
}

/// The spec files read, in precedence order: the first present that declares dependencies
/// in a form the builder reads is used.
pub const SPEC_FILES: &[(&str, SpecKind)] = &[
    ("pylock.toml", SpecKind::PylockToml),
    ("conda.yaml", SpecKind::CondaYaml),
    ("conda.yml", SpecKind::CondaYaml),
    ("environment.yml", SpecKind::CondaYaml),
    ("environment.yaml", SpecKind::CondaYaml),
    ("pyproject.toml", SpecKind::PyprojectToml),
    ("requirements.txt", SpecKind::RequirementsTxt),
];

/// A conda (non-pip) dependency: `name[ op version]` with channel and build string removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CondaDep {
    pub name: String,
    pub version: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DepSpec {
    pub kind: SpecKind,
    /// The file it was read from (one of [`SPEC_FILES`]).
    pub file: &'static str,
    /// Python as the spec states it: `3.10.14` (conda), `>=3.9` (requires-python), …
    pub python: Option<String>,
    pub requirements: Vec<Requirement>,
    /// Where each requirement was written (`requirements.txt line 3`), same order.
    pub origins: Vec<String>,
    pub conda: Vec<CondaDep>,
    pub env_name: Option<String>,
    /// `--index-url` of the spec, if any.
    pub index_url: Option<String>,
    /// `--extra-index-url`s of the spec.
    pub extra_index_urls: Vec<String>,
    /// `-e .` style entries (the repo itself), dropped: `origin: text`.
    pub editables: Vec<String>,
    /// What the reader did that a user should know (groups left out, options ignored).
    pub notes: Vec<String>,
}

impl DepSpec {
    pub(crate) fn new(kind: SpecKind, file: &'static str) -> Self {
        Self {
            kind,
            file,
            python: None,
            requirements: vec![],
            origins: vec![],
            conda: vec![],
            env_name: None,
            index_url: None,
            extra_index_urls: vec![],
            editables: vec![],
            notes: vec![],
        }
    }

    pub(crate) fn push(&mut self, req: Requirement, origin: String) {
        self.requirements.push(req);
        self.origins.push(origin);
    }
}

/// A spec file read: its dependencies, or why it declares none the builder can read.
#[derive(Debug)]
pub enum Loaded {
    Spec(Box<DepSpec>),
    Empty(String),
}

/// One error for every line that cannot be installed from an index, one line each.
pub(crate) fn refusals(file: &str, problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    let n = problems.len();
    let head = format!(
        "{file}: {n} {} cannot be installed from a package index",
        if n == 1 { "entry" } else { "entries" }
    );
    Err(bad_input(crate::error::listed(&head, &problems)))
}

/// Parses one PEP 508 requirement; URL requirements are refused (they would fetch arbitrary
/// code from outside the lock).
pub fn requirement(s: &str, origin: &str) -> Result<Requirement> {
    let r = Requirement::from_str(s.trim()).map_err(|e| {
        bad_input(format!(
            "{origin}: invalid requirement {:?}: {}",
            s.trim(),
            e.message
        ))
    })?;
    if let Some(VersionOrUrl::Url(u)) = &r.version_or_url {
        return Err(bad_input(format!("{origin}: {} points to a URL ({u}); only index packages can be installed — publish it or vendor it into the repo", r.name)));
    }
    if let Some(VersionOrUrl::VersionSpecifier(specs)) = &r.version_or_url {
        if let Some(local) = specs
            .iter()
            .find(|s| s.version().is_local())
            .map(|s| s.version().to_string())
        {
            let public = local.split('+').next().unwrap_or(&local);
            return Err(bad_input(format!("{origin}: {} pins the local version {local}; package indexes do not serve local versions (they come from a vendor's find-links page): pin {}=={public}", r.name, r.name)));
        }
    }
    Ok(r)
}
