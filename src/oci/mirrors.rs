//! Where to pull an image from: registry mirrors from `--registry-mirror REGISTRY=HOST` and
//! from a containers `registries.conf` (v2 TOML, the file podman, buildah and skopeo read:
//! `[[registry]]` with `prefix`, `location`, `insecure`, `blocked` and `[[registry.mirror]]`),
//! tried in order before the origin (or the `location` that replaces it).
//!
//! Hand-written: the format's only Rust reader lives inside container runtimes; the subset
//! here (prefix match, location rewrite, mirrors, insecure, blocked) is what pulls need.

use crate::error::bad_input;
use crate::oci::reference::{Reference, DOCKER_HUB};
use anyhow::Result;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One place to try: a registry host (with the repository rewritten) and whether plain HTTP
/// or an unverified certificate is allowed there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The reference to pull (registry and repository rewritten for this source).
    pub reference: Reference,
    pub insecure: bool,
    /// `mirror` or `origin`, for the report.
    pub kind: &'static str,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ConfFile {
    #[serde(default)]
    registry: Vec<ConfRegistry>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ConfRegistry {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror: Vec<ConfMirror>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ConfMirror {
    location: String,
    #[serde(default)]
    insecure: bool,
}

/// Mirrors and location rewrites, from flags and registries.conf.
#[derive(Debug, Clone, Default)]
pub struct Mirrors {
    /// From `--registry-mirror REGISTRY=[http://]HOST[:PORT][/PATH]`, tried first.
    flags: Vec<(String, String)>,
    conf: Vec<ConfRegistry>,
    /// The file the entries came from, for messages.
    pub conf_path: Option<PathBuf>,
}

impl Mirrors {
    /// `flags` as given on the command line (or `FLOPS_REGISTRY_MIRRORS`, comma separated);
    /// `conf` the registries.conf to read (`$CONTAINERS_REGISTRIES_CONF`, else
    /// `/etc/containers/registries.conf` when it exists).
    pub fn load(flags: &[String], conf: Option<&Path>) -> Result<Self> {
        let mut m = Mirrors::default();
        for f in flags.iter().flat_map(|f| f.split(',')).map(str::trim) {
            if f.is_empty() {
                continue;
            }
            let (reg, host) = f.split_once('=').ok_or_else(|| {
                bad_input(format!(
                    "invalid --registry-mirror {f:?}: use REGISTRY=HOST[:PORT] (e.g. docker.io=mirror.local:5000)"
                ))
            })?;
            m.flags.push((
                normalize_registry(reg),
                host.trim_end_matches('/').to_string(),
            ));
        }
        if let Some(path) = conf {
            let text = std::fs::read_to_string(path)
                .map_err(|e| bad_input(format!("cannot read {}: {e}", path.display())))?;
            let parsed: ConfFile = toml::from_str(&text).map_err(|e| {
                bad_input(format!(
                    "{}: not a v2 registries.conf: {}",
                    path.display(),
                    e.message()
                ))
            })?;
            m.conf = parsed.registry;
            m.conf_path = Some(path.to_path_buf());
        }
        Ok(m)
    }

    /// The registries.conf podman and skopeo would read.
    pub fn default_conf() -> Option<PathBuf> {
        match std::env::var_os("CONTAINERS_REGISTRIES_CONF") {
            Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
            _ => Some(PathBuf::from("/etc/containers/registries.conf")).filter(|p| p.exists()),
        }
    }

    /// Where to try `r` from, in order: flag mirrors, registries.conf mirrors, then the
    /// origin (or the conf's `location`). A blocked registry yields an error.
    pub fn sources(&self, r: &Reference) -> Result<Vec<Source>> {
        let full = format!("{}/{}", r.registry, r.repository);
        let mut out = Vec::new();
        for (reg, host) in &self.flags {
            if *reg == r.registry {
                let (plain, host) = match host.strip_prefix("http://") {
                    Some(h) => (true, h),
                    None => (false, host.trim_start_matches("https://")),
                };
                out.push(Source {
                    reference: rewrite(r, &r.registry, host, plain)?,
                    insecure: plain,
                    kind: "mirror",
                });
            }
        }
        let entry = self
            .conf
            .iter()
            .filter_map(|e| {
                let prefix = e.prefix.as_deref().or(e.location.as_deref())?;
                let prefix = normalize_registry(prefix);
                matches_prefix(&full, &prefix).then_some((prefix, e))
            })
            .max_by_key(|(p, _)| p.len());
        match entry {
            Some((prefix, e)) => {
                if e.blocked {
                    return Err(bad_input(format!(
                        "{full} is blocked by {}",
                        self.conf_path
                            .as_deref()
                            .map_or("registries.conf".into(), |p| p.display().to_string())
                    )));
                }
                for m in &e.mirror {
                    out.push(Source {
                        reference: rewrite(r, &prefix, &m.location, false)?,
                        insecure: m.insecure,
                        kind: "mirror",
                    });
                }
                let location = e.location.clone().unwrap_or(prefix.clone());
                out.push(Source {
                    reference: rewrite(r, &prefix, &location, false)?,
                    insecure: e.insecure,
                    kind: "origin",
                });
            }
            None => out.push(Source {
                reference: r.clone(),
                insecure: false,
                kind: "origin",
            }),
        }
        Ok(out)
    }
}

/// `index.docker.io` and `registry-1.docker.io` are Docker Hub's `docker.io`.
fn normalize_registry(r: &str) -> String {
    let r = r.trim().trim_end_matches('/');
    match r {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        _ => r.to_string(),
    }
}

fn matches_prefix(full: &str, prefix: &str) -> bool {
    full == prefix
        || full
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// `r` with `prefix` (a registry, or registry/path) replaced by `location`.
fn rewrite(r: &Reference, prefix: &str, location: &str, plain_http: bool) -> Result<Reference> {
    let full = format!("{}/{}", r.registry, r.repository);
    let rest = full.strip_prefix(prefix).unwrap_or(&full);
    let mut s = format!("{}{rest}", location.trim_end_matches('/'));
    if let Some(t) = &r.tag {
        s.push_str(&format!(":{t}"));
    }
    if let Some(d) = &r.digest {
        s.push_str(&format!("@{d}"));
    }
    let mut out = Reference::parse(&s)?;
    out.plain_http = plain_http;
    // A rewrite to Docker Hub keeps `library/` as the origin spells it.
    if out.registry == DOCKER_HUB && !out.repository.contains('/') {
        out.repository = format!("library/{}", out.repository);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn docker_reference_expansion() {
        for (short, full) in [
            ("python:3.11-slim", "docker.io/library/python:3.11-slim"),
            ("python", "docker.io/library/python:latest"),
            ("library/python:3.11", "docker.io/library/python:3.11"),
            ("bitnami/python:3.11", "docker.io/bitnami/python:3.11"),
            ("docker.io/python:3.11", "docker.io/library/python:3.11"),
            ("localhost/python:3.11", "localhost/python:3.11"),
            ("127.0.0.1:5000/python:3.11", "127.0.0.1:5000/python:3.11"),
            ("ghcr.io/owner/img:1", "ghcr.io/owner/img:1"),
        ] {
            assert_eq!(hub(short).to_string(), full, "{short}");
        }
        assert_eq!(hub("python:3.11-slim").api_host(), "registry-1.docker.io");
    }

    #[test]
    fn flag_mirrors_then_origin() {
        let m = Mirrors::load(
            &["docker.io=http://127.0.0.1:5001,quay.io=q.local".into()],
            None,
        )
        .unwrap();
        let s = m.sources(&hub("python:3.11-slim")).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0].reference.to_string(),
            "127.0.0.1:5001/library/python:3.11-slim"
        );
        assert!(s[0].reference.plain_http && s[0].insecure && s[0].kind == "mirror");
        assert_eq!(
            s[1].reference.to_string(),
            "docker.io/library/python:3.11-slim"
        );
        assert_eq!(s[1].kind, "origin");
        assert!(Mirrors::load(&["docker.io".into()], None).is_err());
    }

    #[test]
    fn registries_conf_mirrors_locations_and_blocks() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("registries.conf");
        std::fs::write(
            &conf,
            r#"
unqualified-search-registries = ["docker.io"]

[[registry]]
prefix = "docker.io"
location = "hub-cache.local:5000"
insecure = true

[[registry.mirror]]
location = "mirror-a.local:5000"
[[registry.mirror]]
location = "mirror-b.local/dockerhub"
insecure = true

[[registry]]
prefix = "docker.io/library/forbidden"
blocked = true
"#,
        )
        .unwrap();
        let m = Mirrors::load(&[], Some(&conf)).unwrap();
        let s = m.sources(&hub("python:3.13-slim")).unwrap();
        let got: Vec<(String, bool, &str)> = s
            .iter()
            .map(|s| (s.reference.to_string(), s.insecure, s.kind))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "mirror-a.local:5000/library/python:3.13-slim".to_string(),
                    false,
                    "mirror"
                ),
                (
                    "mirror-b.local/dockerhub/library/python:3.13-slim".into(),
                    true,
                    "mirror"
                ),
                (
                    "hub-cache.local:5000/library/python:3.13-slim".into(),
                    true,
                    "origin"
                ),
            ]
        );
        assert!(m
            .sources(&hub("forbidden:1"))
            .unwrap_err()
            .to_string()
            .contains("is blocked by"));
        // Other registries are untouched.
        let other = m.sources(&hub("ghcr.io/o/i:1")).unwrap();
        assert_eq!(other.len(), 1);
        std::fs::write(&conf, "[[registry]\n").unwrap();
        assert!(Mirrors::load(&[], Some(&conf))
            .unwrap_err()
            .to_string()
            .contains("not a v2 registries.conf"));
    }
}
