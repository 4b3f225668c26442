//! Dependency specs found in an ML repo: conda.yaml (MLflow's format), requirements.txt,
//! pyproject.toml `[project]`, or a ready pylock.toml. Requirement strings are parsed with
//! pep508_rs; every error names the file (and line where there is one).

use crate::error::bad_input;
use crate::repo::read_inside;
use anyhow::Result;
use pep508_rs::{Requirement, VersionOrUrl};
use serde::Serialize;
use std::path::Path;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpecKind {
    PylockToml,
    CondaYaml,
    PyprojectToml,
    RequirementsTxt,
}

impl SpecKind {
    /// In precedence order: the first one present is used.
    pub const ALL: [SpecKind; 4] = [
        SpecKind::PylockToml,
        SpecKind::CondaYaml,
        SpecKind::PyprojectToml,
        SpecKind::RequirementsTxt,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            SpecKind::PylockToml => "pylock.toml",
            SpecKind::CondaYaml => "conda.yaml",
            SpecKind::PyprojectToml => "pyproject.toml",
            SpecKind::RequirementsTxt => "requirements.txt",
        }
    }
}

/// A conda (non-pip) dependency: `name[ op version[=build]]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CondaDep {
    pub name: String,
    pub version: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DepSpec {
    pub kind: SpecKind,
    /// Python as the spec states it: `3.10.14` (conda), `>=3.9` (requires-python), …
    pub python: Option<String>,
    pub requirements: Vec<Requirement>,
    pub conda: Vec<CondaDep>,
    pub env_name: Option<String>,
    /// `--index-url` / `--extra-index-url` lines of requirements.txt.
    pub index_urls: Vec<String>,
}

impl DepSpec {
    fn new(kind: SpecKind) -> Self {
        Self {
            kind,
            python: None,
            requirements: vec![],
            conda: vec![],
            env_name: None,
            index_urls: vec![],
        }
    }
}

/// The spec files present at the repo root, in precedence order.
pub fn present(root: &Path) -> Vec<SpecKind> {
    SpecKind::ALL
        .into_iter()
        .filter(|k| root.join(k.file_name()).symlink_metadata().is_ok())
        .collect()
}

pub fn load(root: &Path, kind: SpecKind) -> Result<DepSpec> {
    let text = read_inside(root, Path::new(kind.file_name()))?;
    match kind {
        SpecKind::CondaYaml => parse_conda(&text),
        SpecKind::RequirementsTxt => {
            parse_requirements(root, Path::new("requirements.txt"), &text, &mut Vec::new())
        }
        SpecKind::PyprojectToml => parse_pyproject(&text),
        SpecKind::PylockToml => parse_pylock_header(&text),
    }
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
    Ok(r)
}

fn yaml_error(file: &str, e: &serde_yaml_ng::Error) -> anyhow::Error {
    let at = e
        .location()
        .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
        .unwrap_or_default();
    let msg = e.to_string();
    let msg = msg.split(" at line ").next().unwrap_or(&msg);
    bad_input(format!("{file}: invalid YAML{at}: {msg}"))
}

pub fn parse_conda(text: &str) -> Result<DepSpec> {
    let file = "conda.yaml";
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| yaml_error(file, &e))?;
    let mut spec = DepSpec::new(SpecKind::CondaYaml);
    spec.env_name = doc.get("name").and_then(|n| n.as_str()).map(str::to_string);
    let deps = match doc.get("dependencies") {
        Some(serde_yaml_ng::Value::Sequence(s)) => s.clone(),
        Some(_) => return Err(bad_input(format!("{file}: `dependencies` must be a list"))),
        None => return Err(bad_input(format!("{file}: no `dependencies` list"))),
    };
    for d in deps {
        match d {
            serde_yaml_ng::Value::String(s) => {
                let dep = conda_dep(&s)
                    .ok_or_else(|| bad_input(format!("{file}: invalid conda dependency {s:?}")))?;
                if dep.name == "python" {
                    spec.python = dep
                        .version
                        .map(|v| v.trim_start_matches(['=', '>', '<', '~', '!']).to_string());
                } else {
                    spec.conda.push(dep);
                }
            }
            serde_yaml_ng::Value::Number(n) => {
                return Err(bad_input(format!(
                    "{file}: dependency {n} is a number, not a package name"
                )))
            }
            serde_yaml_ng::Value::Mapping(m) => {
                for (k, v) in m {
                    if k.as_str() != Some("pip") {
                        return Err(bad_input(format!("{file}: unexpected mapping {:?} in dependencies (only `pip:` is allowed)", k.as_str().unwrap_or("?"))));
                    }
                    let list = v
                        .as_sequence()
                        .ok_or_else(|| bad_input(format!("{file}: `pip:` must be a list")))?;
                    for item in list {
                        let s = item.as_str().ok_or_else(|| {
                            bad_input(format!("{file}: pip entry {item:?} is not a string"))
                        })?;
                        if s.trim_start().starts_with('-') {
                            return Err(bad_input(format!(
                                "{file}: pip option {s:?} is not supported in conda.yaml"
                            )));
                        }
                        spec.requirements.push(requirement(s, file)?);
                    }
                }
            }
            other => {
                return Err(bad_input(format!(
                    "{file}: unexpected dependency entry {other:?}"
                )))
            }
        }
    }
    Ok(spec)
}

/// `numpy`, `numpy=1.26`, `numpy==1.26.4`, `numpy>=1.2`, `numpy=1.26.4=py311h…`, `conda-forge::numpy`.
fn conda_dep(s: &str) -> Option<CondaDep> {
    let s = s.trim();
    let s = s.rsplit_once("::").map_or(s, |(_, n)| n);
    let end = s.find(|c: char| "=<>!~ ".contains(c)).unwrap_or(s.len());
    let name = s[..end].trim().to_lowercase();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return None;
    }
    let version = s[end..].trim();
    Some(CondaDep {
        name,
        version: (!version.is_empty()).then(|| version.to_string()),
    })
}

/// requirements.txt: comments, continuations, `-r` includes (inside the repo), `-c`
/// constraints (applied as requirements), index options; `-e`, URLs and local paths refused.
pub fn parse_requirements(
    root: &Path,
    rel: &Path,
    text: &str,
    seen: &mut Vec<std::path::PathBuf>,
) -> Result<DepSpec> {
    let mut spec = DepSpec::new(SpecKind::RequirementsTxt);
    if seen.iter().any(|p| p == rel) {
        return Err(bad_input(format!(
            "{}: includes itself (-r loop)",
            rel.display()
        )));
    }
    seen.push(rel.to_path_buf());
    let mut logical = String::new();
    let mut start_line = 0;
    for (i, raw) in text.lines().enumerate() {
        if logical.is_empty() {
            start_line = i + 1;
        }
        let line = match raw
            .find(" #")
            .or_else(|| raw.trim_start().starts_with('#').then_some(0))
        {
            Some(pos) => &raw[..pos],
            None => raw,
        };
        if let Some(cont) = line.trim_end().strip_suffix('\\') {
            logical.push_str(cont);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let entry = std::mem::take(&mut logical);
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let origin = format!("{} line {start_line}", rel.display());
        let (opt, arg) = entry
            .split_once([' ', '='])
            .map_or((entry, ""), |(o, a)| (o, a.trim()));
        match opt {
            "-r" | "--requirement" | "-c" | "--constraint" => {
                let inc = rel.parent().unwrap_or(Path::new("")).join(arg);
                let text =
                    read_inside(root, &inc).map_err(|e| bad_input(format!("{origin}: {e:#}")))?;
                let sub = parse_requirements(root, &inc, &text, seen)?;
                spec.requirements.extend(sub.requirements);
                spec.index_urls.extend(sub.index_urls);
            }
            "-i" | "--index-url" | "--extra-index-url" => spec.index_urls.push(arg.to_string()),
            "-e" | "--editable" => {
                return Err(bad_input(format!(
                    "{origin}: editable install {arg:?} is not supported; list the package by name"
                )))
            }
            "--pre" | "--prefer-binary" | "--only-binary" | "--no-binary" | "--trusted-host"
            | "-f" | "--find-links" => {
                tracing::warn!("{origin}: option {opt} ignored");
            }
            o if o.starts_with('-') => {
                return Err(bad_input(format!("{origin}: unsupported option {o}")))
            }
            _ => {
                // Strip per-requirement options pip allows (`--hash=...`).
                let req = entry.split(" --").next().unwrap_or(entry);
                if req.starts_with('.')
                    || req.starts_with('/')
                    || req.contains("://") && !req.contains(';') && !req.contains('@')
                {
                    return Err(bad_input(format!("{origin}: {req:?} is a path or URL, not a package; list the package by name")));
                }
                spec.requirements.push(requirement(req, &origin)?);
            }
        }
    }
    Ok(spec)
}

fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let at = e
        .span()
        .map(|s| {
            format!(
                " at line {}",
                text[..s.start.min(text.len())].lines().count().max(1)
            )
        })
        .unwrap_or_default();
    bad_input(format!("{file}: invalid TOML{at}: {}", e.message()))
}

pub fn parse_pyproject(text: &str) -> Result<DepSpec> {
    let file = "pyproject.toml";
    let doc: toml::Table = toml::from_str(text).map_err(|e| toml_error(file, text, &e))?;
    let project = doc
        .get("project")
        .and_then(|p| p.as_table())
        .ok_or_else(|| bad_input(format!("{file}: no [project] table")))?;
    let mut spec = DepSpec::new(SpecKind::PyprojectToml);
    if project
        .get("dynamic")
        .and_then(|d| d.as_array())
        .is_some_and(|d| d.iter().any(|x| x.as_str() == Some("dependencies")))
    {
        return Err(bad_input(format!("{file}: [project].dependencies is dynamic; list them statically or ship requirements.txt")));
    }
    spec.python = project
        .get("requires-python")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    for d in project
        .get("dependencies")
        .and_then(|d| d.as_array())
        .into_iter()
        .flatten()
    {
        let s = d
            .as_str()
            .ok_or_else(|| bad_input(format!("{file}: a dependency is not a string")))?;
        spec.requirements.push(requirement(s, file)?);
    }
    Ok(spec)
}

/// Only the header of a pylock.toml is read here; the lock is used as-is when building.
pub fn parse_pylock_header(text: &str) -> Result<DepSpec> {
    let file = "pylock.toml";
    let doc: toml::Table = toml::from_str(text).map_err(|e| toml_error(file, text, &e))?;
    let version = doc
        .get("lock-version")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad_input(format!("{file}: no lock-version")))?;
    if version.split('.').next() != Some("1") {
        return Err(bad_input(format!(
            "{file}: lock-version {version} is not supported (major version 1 only)"
        )));
    }
    let mut spec = DepSpec::new(SpecKind::PylockToml);
    spec.python = doc
        .get("requires-python")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    for p in doc
        .get("packages")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
    {
        if let (Some(n), Some(v)) = (
            p.get("name").and_then(|x| x.as_str()),
            p.get("version").and_then(|x| x.as_str()),
        ) {
            spec.requirements
                .push(requirement(&format!("{n}=={v}"), file)?);
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MLFLOW_CONDA: &str = "channels:\n- conda-forge\ndependencies:\n- python=3.10.14\n- pip<=24.0\n- numpy=1.26\n- pip:\n  - mlflow==2.11.1\n  - scikit-learn==1.4.2\n  - cloudpickle==3.0.0\nname: mlflow-env\n";

    #[test]
    fn conda_yaml_as_mlflow_writes_it() {
        let s = parse_conda(MLFLOW_CONDA).unwrap();
        assert_eq!(s.python.as_deref(), Some("3.10.14"));
        assert_eq!(s.env_name.as_deref(), Some("mlflow-env"));
        assert_eq!(
            s.conda,
            vec![
                CondaDep {
                    name: "pip".into(),
                    version: Some("<=24.0".into())
                },
                CondaDep {
                    name: "numpy".into(),
                    version: Some("=1.26".into())
                }
            ]
        );
        let names: Vec<String> = s.requirements.iter().map(|r| r.name.to_string()).collect();
        assert_eq!(names, ["mlflow", "scikit-learn", "cloudpickle"]);
    }

    #[test]
    fn malformed_yaml_names_file_and_line() {
        let e = parse_conda("dependencies:\n- numpy\n  - : [\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("conda.yaml: invalid YAML at line"), "{e}");
    }

    #[test]
    fn requirements_txt_features() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("base.txt"), "numpy>=1.24 # numbers\n").unwrap();
        let text = "# comment\n-r base.txt\n--index-url https://pypi.org/simple\nscikit-learn~=1.4 \\\n  ; python_version >= '3.9'\nrequests[socks]==2.31.0 --hash=sha256:abc\ntorch>=2,<3; platform_machine == 'x86_64'\n";
        let s =
            parse_requirements(d.path(), Path::new("requirements.txt"), text, &mut vec![]).unwrap();
        let names: Vec<String> = s.requirements.iter().map(|r| r.name.to_string()).collect();
        assert_eq!(names, ["numpy", "scikit-learn", "requests", "torch"]);
        assert_eq!(s.index_urls, ["https://pypi.org/simple"]);
        assert_eq!(s.requirements[2].extras.len(), 1);
    }

    #[test]
    fn requirements_txt_refusals() {
        let d = tempfile::tempdir().unwrap();
        for (text, needle) in [
            ("-e .\n", "editable"),
            ("pkg @ https://x.example/p.whl\n", "points to a URL"),
            ("-r ../../etc/passwd\n", "outside the repository"),
            ("numpy===\n", "line 1: invalid requirement"),
        ] {
            let e = parse_requirements(d.path(), Path::new("requirements.txt"), text, &mut vec![])
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn pyproject_dependencies() {
        let s = parse_pyproject("[project]\nname='x'\nrequires-python='>=3.10'\ndependencies=['numpy>=1.26', 'flwr==1.8.0']\n").unwrap();
        assert_eq!(s.python.as_deref(), Some(">=3.10"));
        assert_eq!(s.requirements.len(), 2);
        let e = parse_pyproject("[project\n").unwrap_err().to_string();
        assert!(
            e.starts_with("pyproject.toml: invalid TOML at line 1"),
            "{e}"
        );
    }
}
