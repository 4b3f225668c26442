//! The builder's phases tied together, each timed. `check` = clone → verify → doctor.

use crate::deps::doctor::{doctor, Facts, Fired};
use crate::oci::append::Phases;
use crate::repo::clone::{clone, Checkout, CloneOptions};
use crate::repo::naming::{learner_image, repo_id};
use crate::repo::verify::verify;
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
    /// The image `build` would push (`<registry>` when no registry was given).
    pub image: String,
    pub spec: &'static str,
    pub ignored_specs: Vec<&'static str>,
    pub python: Option<String>,
    pub python_constraint: Option<String>,
    pub requirements: Vec<String>,
    pub doctor: Vec<Fired>,
    pub warnings: Vec<String>,
    pub phases_ms: std::collections::BTreeMap<String, u64>,
}

/// Clones, verifies and doctors; the checkout (a temp dir) lives as long as the returned value.
pub fn check(
    source: &str,
    opts: &CloneOptions,
    registry: Option<&str>,
) -> Result<(CheckReport, Checkout)> {
    let mut phases = Phases::default();
    let id = repo_id(source)?;
    let t = Instant::now();
    let co = clone(source, opts)?;
    phases.done("clone", t);
    tracing::info!("cloned {} at {}", co.source, co.sha);
    let t = Instant::now();
    let v = verify(co.root())?;
    let image = learner_image(registry.unwrap_or("<registry>"), &id, &co.sha);
    // The placeholder is not a valid host; validate the name with a real one.
    learner_image("localhost", &id, &co.sha)?;
    phases.done("verify", t);
    let t = Instant::now();
    let d = doctor(
        &v.spec,
        &Facts {
            imports_mlflow: v.imports_mlflow,
        },
    )?;
    phases.done("doctor", t);
    for w in &v.warnings {
        tracing::warn!("{w}");
    }
    let report = CheckReport {
        source: co.source.clone(),
        commit: co.sha.clone(),
        commit_time: co.commit_time,
        shallow: co.shallow,
        image: image.unwrap_or_else(|_| "<invalid>".into()),
        spec: v.spec.kind.file_name(),
        ignored_specs: v.ignored_specs.iter().map(|k| k.file_name()).collect(),
        python: d.python,
        python_constraint: d.python_constraint,
        requirements: d.requirements.iter().map(|r| r.to_string()).collect(),
        doctor: d.fired,
        warnings: v.warnings,
        phases_ms: phases.0,
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
        let ignored = if self.ignored_specs.is_empty() {
            String::new()
        } else {
            format!(
                " (also present, ignored: {})",
                self.ignored_specs.join(", ")
            )
        };
        line("spec", &format!("{}{ignored}", self.spec));
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
        for (i, w) in self.warnings.iter().enumerate() {
            line(if i == 0 { "warnings" } else { "" }, w);
        }
        s
    }
}
