//! Phase 3, the base image: `--base-image`, else `python:<X.Y>-slim` from the target registry
//! (`library/python`), else from Docker Hub through its mirrors (flags, registries.conf), each
//! attempt logged. Its layers are never downloaded: push HEADs, mounts or streams them.
//!
//! Python: the spec's major.minor when a base for it exists anywhere; else the nearest newer
//! Python that has one (the `python-minor` doctor rule: MLflow records the Python it happened
//! to run on, not a requirement), unless `--strict-python`.

use crate::oci::assemble::{resolve_base, BaseImage};
use crate::oci::image;
use crate::oci::mirrors::Mirrors;
use crate::oci::reference::{Reference, DOCKER_HUB};
use crate::oci::registry::{self, Registry};
use crate::spec::doctor::Fired;
use anyhow::Result;
use serde::Serialize;
use std::str::FromStr;
use std::sync::Arc;

/// Pythons official `python:<X.Y>-slim` bases exist for, oldest first (the search for the
/// nearest newer one stops at the newest).
pub const PYTHONS: &[&str] = &["3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "3.14"];
/// When the spec says nothing about Python.
pub const DEFAULT_PYTHON: &str = "3.11";

/// The base chosen for a plan.
pub struct Base {
    pub reference: Reference,
    pub registry: Arc<Registry>,
    /// One per platform asked for.
    pub images: Vec<BaseImage>,
    /// The base's Python (`PYTHON_VERSION` of its config), e.g. `3.11.2`.
    pub python_full: String,
    /// Its major.minor.
    pub python: String,
    pub report: BaseReport,
}

/// Which base was used and where it came from (in `check`, the JSON report and the payload).
#[derive(Debug, Clone, Serialize)]
pub struct BaseReport {
    pub reference: String,
    /// `--base-image`, `target`, `mirror <host>` or `origin <host>`.
    pub origin: String,
    pub python: String,
}

/// Where to look for bases: the target registry, the mirrors, the origin.
pub struct Finder<'a> {
    pub target: &'a Reference,
    pub target_reg: &'a Arc<Registry>,
    pub mirrors: &'a Mirrors,
    pub opts: &'a registry::Options,
    pub platforms: &'a [crate::oci::reference::Platform],
}

impl<'a> Finder<'a> {
    /// Bases for images pushed to `target` on `reg`, with the options' mirrors and platforms.
    pub fn new(opts: &'a super::Options, target: &'a Reference, reg: &'a Arc<Registry>) -> Self {
        Finder {
            target,
            target_reg: reg,
            mirrors: &opts.mirrors,
            opts: &opts.registry_opts,
            platforms: &opts.platforms,
        }
    }
}

impl Finder<'_> {
    /// `--base-image REF`: used as written (mirrors apply to Docker Hub references).
    /// A base without `PYTHON_VERSION` in its config is taken to have Python `assume`.
    pub async fn explicit(&self, reference: &str, assume: &str) -> Result<Base> {
        let r = Reference::parse(reference)?;
        let mut last = None;
        for s in self.sources(&r)? {
            match self.try_source(&s.reference, s.insecure).await {
                Ok(b) => return Ok(self.finish(b, s.reference, "--base-image".into(), assume)),
                Err(e) => {
                    tracing::warn!("base {}: {e:#}", s.reference);
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one source"))
    }

    fn sources(&self, r: &Reference) -> Result<Vec<crate::oci::mirrors::Source>> {
        if r.registry == self.target.registry {
            return Ok(vec![crate::oci::mirrors::Source {
                reference: r.clone(),
                insecure: false,
                kind: "target",
            }]);
        }
        self.mirrors.sources(r)
    }

    /// Where [`Finder::python`] looks, for messages: the target, the mirrors, the origin.
    pub fn describe(&self) -> String {
        let hub = Reference::parse("python:3-slim").expect("valid reference");
        let mut places = vec![format!("{} (target)", self.target.registry)];
        if let Ok(sources) = self.mirrors.sources(&hub) {
            places.extend(
                sources
                    .iter()
                    .map(|s| format!("{} ({})", s.reference.registry, s.kind)),
            );
        }
        places.join(", ")
    }

    /// `python:<python>-slim`: the target's `library/python`, then Docker Hub's through the
    /// mirrors. `Ok(None)` when no source has it.
    pub async fn python(&self, python: &str) -> Result<Option<Base>> {
        let tag = format!("{python}-slim");
        let scheme = if self.target.plain_http {
            "http://"
        } else {
            ""
        };
        let on_target = Reference::parse(&format!(
            "{scheme}{}/library/python:{tag}",
            self.target.registry
        ))?;
        let hub = Reference::parse(&format!("{DOCKER_HUB}/library/python:{tag}"))?;
        let mut candidates = vec![crate::oci::mirrors::Source {
            reference: on_target,
            insecure: false,
            kind: "target",
        }];
        candidates.extend(self.mirrors.sources(&hub)?);
        for s in candidates {
            match self.try_source(&s.reference, s.insecure).await {
                Ok(b) => {
                    let origin = match s.kind {
                        "target" => "target".to_string(),
                        kind => format!("{kind} {}", s.reference.registry),
                    };
                    tracing::info!("base {} (from the {origin})", s.reference);
                    return Ok(Some(self.finish(b, s.reference, origin, python)));
                }
                Err(e) if crate::error::kind_of(&e) == crate::error::Kind::BadInput => {
                    tracing::info!("base {}: not there ({e:#})", s.reference)
                }
                Err(e) => tracing::warn!("base {}: {e:#}; trying the next source", s.reference),
            }
        }
        Ok(None)
    }

    async fn try_source(
        &self,
        r: &Reference,
        insecure: bool,
    ) -> Result<(Arc<Registry>, Vec<BaseImage>)> {
        let reg = if r.registry == self.target.registry {
            self.target_reg.clone()
        } else {
            let mut opts = self.opts.clone();
            if insecure {
                opts.insecure.push(r.registry.clone());
            }
            Registry::connect(
                &r.registry,
                r.api_host(),
                r.plain_http,
                &opts,
                vec![format!("repository:{}:pull", r.repository)],
            )
            .await?
        };
        let images = resolve_base(&reg, r, self.platforms).await?;
        Ok((reg, images))
    }

    fn finish(
        &self,
        (registry, images): (Arc<Registry>, Vec<BaseImage>),
        reference: Reference,
        origin: String,
        assume: &str,
    ) -> Base {
        let python_full = match image::config_env(&images[0].config, "PYTHON_VERSION") {
            Some(v) => v.to_string(),
            None => {
                tracing::warn!("base image {reference} does not say which Python it has (no PYTHON_VERSION in its config, as the official python images set); assuming {assume}");
                format!("{assume}.0")
            }
        };
        let python = python_full.split('.').take(2).collect::<Vec<_>>().join(".");
        Base {
            report: BaseReport {
                reference: reference.to_string(),
                origin,
                python: python_full.clone(),
            },
            reference,
            registry,
            images,
            python_full,
            python,
        }
    }
}

/// The Pythons to try for a spec, best first: its pin then newer ones, or those a range allows
/// (the default first), or the default alone.
pub fn candidates(pin: Option<&str>, constraint: Option<&str>) -> Vec<String> {
    if let Some(p) = pin {
        let start = PYTHONS.iter().position(|x| *x == p);
        return match start {
            Some(i) => PYTHONS[i..].iter().map(|s| s.to_string()).collect(),
            // Older than any base, or unknown: the pin itself, then every known one newer.
            None => std::iter::once(p.to_string())
                .chain(
                    PYTHONS
                        .iter()
                        .filter(|x| newer(x, p))
                        .map(|s| s.to_string()),
                )
                .collect(),
        };
    }
    if let Some(c) = constraint {
        if let Ok(spec) = pep508_rs::pep440_rs::VersionSpecifiers::from_str(&c.replace('^', ">=")) {
            let ok = |p: &str| {
                pep508_rs::pep440_rs::Version::from_str(&format!("{p}.0"))
                    .map(|v| spec.contains(&v))
                    .unwrap_or(false)
            };
            let mut out: Vec<String> = Vec::new();
            if ok(DEFAULT_PYTHON) {
                out.push(DEFAULT_PYTHON.into());
            }
            out.extend(
                PYTHONS
                    .iter()
                    .filter(|p| **p != DEFAULT_PYTHON && ok(p))
                    .map(|s| s.to_string()),
            );
            if !out.is_empty() {
                return out;
            }
        }
    }
    vec![DEFAULT_PYTHON.to_string()]
}

fn newer(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> (u32, u32) {
        let mut p = s.split('.').map(|x| x.parse().unwrap_or(0));
        (p.next().unwrap_or(0), p.next().unwrap_or(0))
    };
    parse(a) > parse(b)
}

/// The `python-minor` rule's report line.
pub fn python_minor(pinned: &str, used: &str, spec_file: &str, missing: &[String]) -> Fired {
    let why = if missing.is_empty() {
        "the lock does not resolve there".to_string()
    } else {
        format!("no python:{pinned}-slim base in {}", missing.join(", "))
    };
    Fired {
        rule: "python-minor",
        detail: format!("python {pinned} ({spec_file}) → {used}: {why}; MLflow records the Python it happened to run on, not a requirement (--strict-python refuses this)"),
        package: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_candidates() {
        assert_eq!(
            candidates(Some("3.10"), None),
            ["3.10", "3.11", "3.12", "3.13", "3.14"]
        );
        assert_eq!(candidates(Some("3.13"), None), ["3.13", "3.14"]);
        assert_eq!(candidates(Some("3.7"), None)[..2], ["3.7", "3.8"]);
        assert_eq!(candidates(None, Some(">=3.12")), ["3.12", "3.13", "3.14"]);
        assert_eq!(candidates(None, Some(">=3.10,<4"))[0], "3.11");
        assert_eq!(candidates(None, None), ["3.11"]);
    }
}
