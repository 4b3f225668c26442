//! Phase 1, the source: clone → verify → doctor (`check` is this phase; `check --sbom` adds
//! the base and the lock, see [`super::sbom::preview`]).

use crate::oci::append::Phases;
use crate::repo::clone::{clone, Checkout, CloneOptions};
use crate::repo::naming::{image_name, repo_id, RepoId};
use crate::repo::verify::verify;
use crate::spec::doctor::{doctor, unprovided_warning, Facts, Fired};
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub source: String,
    pub commit: String,
    pub commit_time: i64,
    /// Whether the server allowed a shallow (depth 1) clone.
    pub shallow: bool,
    /// The learner image `build` would push (`<registry>` when no registry was given).
    pub image: String,
    /// With `--aggregator`: the aggregator image `build --aggregator` would push beside it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregator_image: Option<String>,
    /// The spec file used.
    pub spec: &'static str,
    pub ignored_specs: Vec<&'static str>,
    /// Spec files skipped because they declare no dependencies the builder reads, and why;
    /// what the spec readers left out.
    pub notes: Vec<String>,
    pub python: Option<String>,
    pub python_constraint: Option<String>,
    pub requirements: Vec<String>,
    pub doctor: Vec<Fired>,
    pub warnings: Vec<String>,
    pub phases_ms: std::collections::BTreeMap<String, u64>,
    /// `check` (without `--offline`): the lock `build` would make, resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved: Option<CheckLock>,
    /// `check --sbom`: the SPDX documents a build would attach, role → platform → document.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sboms:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, serde_json::Value>>,
    /// Conda names taken from the index as they are; checked against it before resolving.
    #[serde(skip)]
    pub unverified: Vec<String>,
    /// Imported modules nothing is known to provide (a build looks again with the lock).
    #[serde(skip)]
    pub unprovided: Vec<(String, Vec<String>)>,
    /// The spec's own indexes (`--index-url`, `--extra-index-url`).
    #[serde(skip)]
    pub index_url: Option<String>,
    #[serde(skip)]
    pub extra_index_urls: Vec<String>,
    /// Versions the resolver must keep to where the requirements leave them open (uv `-c`):
    /// the training environment of a trained model (`flops-environment.txt`).
    #[serde(skip)]
    pub constraints: Vec<String>,
    /// Top-level repo files the FL runtime replaces (left out of the code layer; each also
    /// has a warning above).
    #[serde(skip)]
    pub replaced_by_runtime: Vec<&'static str>,
    #[serde(skip)]
    pub repo: Option<RepoId>,
    /// What the repo's code imports (module → files).
    #[serde(skip)]
    pub imports: crate::spec::imports::Imports,
}

/// Clones, verifies and doctors for images whose runtime adds `runtime` (requirements text);
/// the checkout (a temp dir) lives as long as the returned value.
pub fn check(
    source: &str,
    opts: &CloneOptions,
    registry: Option<&str>,
    runtime: &str,
) -> Result<(CheckReport, Checkout)> {
    let mut phases = Phases::default();
    let id = repo_id(source)?;
    let t = Instant::now();
    let co = clone(source, opts)?;
    phases.done("clone", t);
    tracing::info!("cloned {} at {}", co.source, co.sha);
    let t = Instant::now();
    let v = verify(co.root())?;
    // Only the repository part is validated; the host is shown as given (or a placeholder).
    let image = image_name(registry.unwrap_or("<registry>"), &id, "learner", &co.sha)?;
    phases.done("verify", t);
    let t = Instant::now();
    let facts = Facts {
        imports: v.imports.clone(),
        local_modules: v.local_modules.clone(),
        code_scanned: true,
        runtime: runtime.to_string(),
        serving: false,
    };
    let d = doctor(&v.spec, &facts)?;
    phases.done("doctor", t);
    let replaced_by_runtime = crate::repo::augment::clashes(co.root());
    let mut warnings = v.warnings;
    warnings.extend(d.warnings.iter().cloned());
    warnings.extend(
        d.unprovided
            .iter()
            .map(|(m, files)| unprovided_warning(m, files, v.spec.file)),
    );
    warnings.extend(
        replaced_by_runtime
            .iter()
            .map(|name| crate::repo::augment::clash_warning(name)),
    );
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let mut notes = v.notes;
    notes.extend(v.spec.notes.iter().cloned());
    let report = CheckReport {
        source: co.source.clone(),
        commit: co.sha.clone(),
        commit_time: co.commit_time,
        shallow: co.shallow,
        image,
        aggregator_image: None,
        spec: v.spec.file,
        ignored_specs: v.ignored_specs,
        notes,
        python: d.python,
        python_constraint: d.python_constraint,
        requirements: d.requirements.iter().map(|r| r.to_string()).collect(),
        doctor: d.fired,
        warnings,
        phases_ms: phases.0,
        resolved: None,
        sboms: Default::default(),
        unverified: d.unverified,
        unprovided: d.unprovided,
        index_url: v.spec.index_url.clone(),
        extra_index_urls: v.spec.extra_index_urls.clone(),
        constraints: Vec::new(),
        replaced_by_runtime,
        repo: Some(id),
        imports: v.imports,
    };
    Ok((report, co))
}

impl CheckReport {
    /// The human summary `check` prints.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: &str| s.push_str(&format!("{k:<10} {v}\n"));
        line("source", &self.source);
        line("commit", &self.commit);
        line("image", &self.image);
        if let Some(a) = &self.aggregator_image {
            line("aggregator", a);
        }
        let ignored = if self.ignored_specs.is_empty() {
            String::new()
        } else {
            format!(
                " (also present, ignored: {})",
                self.ignored_specs.join(", ")
            )
        };
        line("spec", &format!("{}{ignored}", self.spec));
        for (i, n) in self.notes.iter().enumerate() {
            line(if i == 0 { "notes" } else { "" }, n);
        }
        let py = match (&self.python, &self.python_constraint) {
            (Some(p), _) => p.clone(),
            (None, Some(c)) => format!("{c} (from the spec; the base image decides)"),
            (None, None) => "not pinned (the base image decides)".into(),
        };
        line("python", &py);
        for (i, f) in self.doctor.iter().enumerate() {
            line(
                if i == 0 { "doctor" } else { "" },
                &format!("[{}] {}", f.rule, f.detail),
            );
        }
        if self.doctor.is_empty() {
            line("doctor", "no fixes needed");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            line(if i == 0 { "deps" } else { "" }, r);
        }
        if let Some(r) = &self.resolved {
            let from = if r.cached { ", from the cache" } else { "" };
            line(
                "lock",
                &format!("{} packages for Python {}{from}", r.packages, r.python),
            );
        }
        for (i, w) in self.warnings.iter().enumerate() {
            line(if i == 0 { "warnings" } else { "" }, w);
        }
        s
    }
}

/// What `check` reports of its resolution.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckLock {
    /// Packages in the lock (all platforms, all sets).
    pub packages: usize,
    /// Python (major.minor) resolved for.
    pub python: String,
    /// Whether the lock came from the cache (the same inputs were resolved before).
    pub cached: bool,
}

/// The source of a plan: the checked repo and its checkout.
pub struct Source {
    pub check: CheckReport,
    pub checkout: Checkout,
}

/// Runs [`check`] off the async runtime and tells the observer what it found.
pub async fn source(
    sess: &super::Session<'_>,
    repo: &str,
    clone: &CloneOptions,
    runtime: &str,
) -> Result<Source> {
    let (repo, clone_opts, registry, runtime) = (
        repo.to_string(),
        clone.clone(),
        sess.opts.registry.clone(),
        runtime.to_string(),
    );
    let (check, checkout) =
        tokio::task::spawn_blocking(move || check(&repo, &clone_opts, Some(&registry), &runtime))
            .await??;
    for (name, ms) in &check.phases_ms {
        sess.record(name, *ms);
    }
    sess.observe(&format!(
        "repo cloned and verified: {} at {} ({})",
        check.source, check.commit, check.spec
    ))
    .await;
    for f in &check.doctor {
        sess.observe(&format!("dependency doctor [{}]: {}", f.rule, f.detail))
            .await;
    }
    for w in &check.warnings {
        sess.observe(&format!("warning: {w}")).await;
    }
    Ok(Source { check, checkout })
}

/// Requirements whose markers leave some of `platforms` without the package (e.g.
/// `tensorflow; platform_machine == "x86_64"` for linux/arm64): one warning each. Builds check
/// the same on the lock, which also covers dependencies.
pub fn platform_warnings(
    report: &CheckReport,
    platforms: &[crate::oci::reference::Platform],
) -> Result<Vec<String>> {
    if platforms.len() < 2 {
        return Ok(Vec::new());
    }
    let python = format!(
        "{}.0",
        report
            .python
            .as_deref()
            .unwrap_or(super::base::DEFAULT_PYTHON)
    );
    let mut envs = Vec::new();
    for p in platforms {
        let t = crate::wheels::tags::Target::new(
            &p.architecture,
            &python,
            crate::wheels::tags::Libc::Glibc(2, 28),
        )?;
        envs.push((p.to_string(), crate::wheels::pylock::marker_env(&t)?));
    }
    let mut out = Vec::new();
    for r in &report.requirements {
        let Ok(req) = r.parse::<pep508_rs::Requirement>() else {
            continue;
        };
        let holds: Vec<bool> = envs
            .iter()
            .map(|(_, env)| req.marker.evaluate(env, &[]))
            .collect();
        if holds.iter().any(|h| *h) {
            for ((p, _), h) in envs.iter().zip(&holds) {
                if !h {
                    out.push(format!(
                        "{p} gets no {} ({} in {}: its marker leaves {p} out)",
                        req.name, r, report.spec
                    ));
                }
            }
        }
    }
    Ok(out)
}
