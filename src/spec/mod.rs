//! Dependency specs found in an ML repo, as people write them: conda files (MLflow's
//! `conda.yaml`, conda's own `environment.yml`, exports with channels and build strings),
//! `requirements.txt`, `pyproject.toml` (`[project]` or Poetry), or a ready `pylock.toml`.
//! Requirement strings are parsed with pep508_rs; every error names the file and line, and a
//! file with several bad lines gets one error listing all of them.

pub mod abi;
pub mod doctor;
pub mod imports;
pub mod parsed;
pub mod poetry;

pub(crate) use parsed::refusals;
pub use parsed::{requirement, CondaDep, DepSpec, Loaded, SpecKind, SPEC_FILES};

use crate::error::bad_input;
use crate::paths::read_inside;
use anyhow::Result;
use pep508_rs::pep440_rs::Operator;
use pep508_rs::{Requirement, VersionOrUrl};
use std::path::Path;

/// The spec files present at the repo root, in precedence order.
pub fn present(root: &Path) -> Vec<(&'static str, SpecKind)> {
    SPEC_FILES
        .iter()
        .copied()
        .filter(|(f, _)| root.join(f).symlink_metadata().is_ok())
        .collect()
}

pub fn load(root: &Path, file: &'static str, kind: SpecKind) -> Result<Loaded> {
    let text = read_inside(root, Path::new(file))?;
    Ok(match kind {
        SpecKind::CondaYaml => Loaded::Spec(Box::new(parse_conda_file(file, &text)?)),
        SpecKind::RequirementsTxt => {
            Loaded::Spec(Box::new(parse_requirements_file(root, file, &text)?))
        }
        SpecKind::PyprojectToml => parse_pyproject(&text)?,
        SpecKind::PylockToml => Loaded::Spec(Box::new(parse_pylock_header(&text)?)),
    })
}

/// What one requirement-list entry (a requirements.txt line or a conda `pip:` item) is.
enum Entry {
    Req(Requirement),
    /// `-e` of a path inside the repo: the repo itself.
    Editable(String),
    Include(String),
    IndexUrl(String),
    ExtraIndexUrl(String),
    Ignored(String),
    Refused(String),
}

fn classify(entry: &str, origin: &str, includes_allowed: bool) -> Entry {
    let (opt, arg) = entry
        .split_once([' ', '='])
        .map_or((entry, ""), |(o, a)| (o, a.trim()));
    match opt {
        "-r" | "--requirement" | "-c" | "--constraint" if includes_allowed => {
            Entry::Include(arg.to_string())
        }
        "-i" | "--index-url" => Entry::IndexUrl(arg.to_string()),
        "--extra-index-url" => Entry::ExtraIndexUrl(arg.to_string()),
        "-e" | "--editable" => {
            let inside = !arg.contains("://")
                && !arg.starts_with('/')
                && crate::paths::lexical_inside(Path::new(arg));
            if inside {
                Entry::Editable(arg.to_string())
            } else {
                Entry::Refused(format!("{origin}: `{entry}`: an editable install of something outside the repository; list the package by name"))
            }
        }
        "-f" | "--find-links" => Entry::Refused(format!("{origin}: `{entry}`: find-links pages are not read; the builder installs from the package index only (pass --index-url for a mirror)")),
        "--pre" | "--prefer-binary" | "--only-binary" | "--no-binary" | "--trusted-host" => {
            Entry::Ignored(opt.to_string())
        }
        o if o.starts_with('-') => {
            Entry::Refused(format!("{origin}: `{entry}`: unsupported option {o}"))
        }
        _ => {
            // Strip per-requirement options pip allows (`--hash=...`).
            let req = entry.split(" --").next().unwrap_or(entry).trim();
            let lower = req.to_ascii_lowercase();
            if lower.starts_with("git+") || lower.contains("@ git+") {
                return Entry::Refused(format!("{origin}: `{req}`: a git URL of another project; only packages from an index can be installed (publish it, or vendor its code into the repo)"));
            }
            if lower.starts_with("file:") || lower.contains("@ file:") {
                return Entry::Refused(format!("{origin}: `{req}`: a local file URL; only packages from an index can be installed (publish it, or vendor its code into the repo)"));
            }
            if req.starts_with('.')
                || req.starts_with('/')
                || req.contains("://") && !req.contains(';') && !req.contains('@')
            {
                return Entry::Refused(format!(
                    "{origin}: `{req}`: a path or URL, not a package; list the package by name"
                ));
            }
            match requirement(req, origin) {
                Ok(r) => Entry::Req(r),
                Err(e) => Entry::Refused(e.to_string()),
            }
        }
    }
}

/// Exact pins of one package that disagree (`numpy==1.26.4` and `numpy==1.24.0`, same
/// markers): pip would refuse them too, so they are reported rather than guessed at.
fn conflicting_pins(spec: &DepSpec) -> Vec<String> {
    let mut out = Vec::new();
    for (i, a) in spec.requirements.iter().enumerate() {
        for (j, b) in spec.requirements.iter().enumerate().skip(i + 1) {
            let exact = |r: &Requirement| match &r.version_or_url {
                Some(VersionOrUrl::VersionSpecifier(s)) => s
                    .iter()
                    .all(|s| matches!(s.operator(), Operator::Equal | Operator::ExactEqual)),
                _ => false,
            };
            if a.name == b.name
                && a.marker == b.marker
                && exact(a)
                && exact(b)
                && a.version_or_url != b.version_or_url
            {
                out.push(format!(
                    "{}: `{a}` ({}) and `{b}` ({}) are conflicting pins of the same package",
                    a.name, spec.origins[i], spec.origins[j]
                ));
            }
        }
    }
    out
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

/// A conda file as MLflow writes it (`conda.yaml`) or conda exports it (`environment.yml`).
pub fn parse_conda(text: &str) -> Result<DepSpec> {
    parse_conda_file("conda.yaml", text)
}

fn parse_conda_file(file: &'static str, text: &str) -> Result<DepSpec> {
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| yaml_error(file, &e))?;
    let mut spec = DepSpec::new(SpecKind::CondaYaml, file);
    spec.env_name = doc.get("name").and_then(|n| n.as_str()).map(str::to_string);
    let deps = match doc.get("dependencies") {
        Some(serde_yaml_ng::Value::Sequence(s)) => s.clone(),
        Some(_) => return Err(bad_input(format!("{file}: `dependencies` must be a list"))),
        None => return Err(bad_input(format!("{file}: no `dependencies` list"))),
    };
    let mut problems = Vec::new();
    for d in deps {
        match d {
            serde_yaml_ng::Value::String(s) => {
                let Some(dep) = conda_dep(&s) else {
                    problems.push(format!("{file}: `{s}`: not a conda package spec"));
                    continue;
                };
                if dep.name == "python" {
                    spec.python = dep.version.map(|v| {
                        v.trim_start_matches(['=', '>', '<', '~', '!'])
                            .trim()
                            .to_string()
                    });
                } else {
                    spec.conda.push(dep);
                }
            }
            serde_yaml_ng::Value::Number(n) => {
                problems.push(format!(
                    "{file}: dependency {n} is a number, not a package name"
                ));
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
                        let Some(s) = item.as_str() else {
                            problems.push(format!("{file}: pip entry {item:?} is not a string"));
                            continue;
                        };
                        let origin = format!("{file} pip entry `{}`", s.trim());
                        add_entry(&mut spec, s.trim(), &origin, &mut problems);
                    }
                }
            }
            other => problems.push(format!("{file}: unexpected dependency entry {other:?}")),
        }
    }
    problems.extend(conflicting_pins(&spec));
    refusals(file, problems)?;
    Ok(spec)
}

/// Adds one list entry to the spec, or its problem to `problems`.
fn add_entry(spec: &mut DepSpec, entry: &str, origin: &str, problems: &mut Vec<String>) {
    match classify(entry, origin, false) {
        Entry::Req(r) => spec.push(r, origin.to_string()),
        Entry::Editable(path) => spec.editables.push(format!("{origin}: -e {path}")),
        Entry::IndexUrl(u) => spec.index_url = Some(u),
        Entry::ExtraIndexUrl(u) => spec.extra_index_urls.push(u),
        Entry::Ignored(opt) => spec.notes.push(format!("{origin}: option {opt} ignored")),
        Entry::Include(_) => problems.push(format!(
            "{origin}: `{entry}`: includes are only read in requirements files"
        )),
        Entry::Refused(why) => problems.push(why),
    }
}

/// `numpy`, `numpy=1.26`, `numpy==1.26.4`, `numpy>=1.2`, `numpy=1.26.4=py311h…`,
/// `conda-forge::numpy`, `wavio >=0.0.5`, `numpy 1.26.4 py311h…` (space-separated export).
fn conda_dep(s: &str) -> Option<CondaDep> {
    let s = s.split('#').next().unwrap_or("").trim();
    let s = s.rsplit_once("::").map_or(s, |(_, n)| n);
    // A channel written as a URL path (`conda-forge/linux-64::x`) is gone with the `::` split.
    let end = s.find(|c: char| "=<>!~ ".contains(c)).unwrap_or(s.len());
    let name = s[..end].trim().to_lowercase();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return None;
    }
    let mut version = s[end..].trim().to_string();
    // `name 1.2.3 build` (conda list --export with spaces): a bare version means `=version`.
    if version.starts_with(|c: char| c.is_ascii_digit()) {
        let v = version.split_whitespace().next().unwrap_or("").to_string();
        version = format!("={v}");
    }
    // `>= 1.2` → `>=1.2`: conda allows the space, PEP 440 tooling does not need it.
    let version: String = version
        .split(',')
        .map(|p| p.split_whitespace().collect::<String>())
        .collect::<Vec<_>>()
        .join(",");
    Some(CondaDep {
        name,
        version: (!version.is_empty()).then_some(version),
    })
}

fn parse_requirements_file(root: &Path, file: &'static str, text: &str) -> Result<DepSpec> {
    let mut spec = DepSpec::new(SpecKind::RequirementsTxt, file);
    let mut problems = Vec::new();
    read_requirements(
        root,
        Path::new(file),
        text,
        &mut Vec::new(),
        &mut spec,
        &mut problems,
    )?;
    problems.extend(conflicting_pins(&spec));
    refusals(file, problems)?;
    Ok(spec)
}

/// requirements.txt: comments, continuations, `-r` includes (inside the repo), `-c`
/// constraints (applied as requirements), index options; `-e .` is the repo itself.
pub fn parse_requirements(
    root: &Path,
    rel: &Path,
    text: &str,
    seen: &mut Vec<std::path::PathBuf>,
) -> Result<DepSpec> {
    let mut spec = DepSpec::new(SpecKind::RequirementsTxt, "requirements.txt");
    let mut problems = Vec::new();
    read_requirements(root, rel, text, seen, &mut spec, &mut problems)?;
    problems.extend(conflicting_pins(&spec));
    refusals(&rel.display().to_string(), problems)?;
    Ok(spec)
}

fn read_requirements(
    root: &Path,
    rel: &Path,
    text: &str,
    seen: &mut Vec<std::path::PathBuf>,
    spec: &mut DepSpec,
    problems: &mut Vec<String>,
) -> Result<()> {
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
        match classify(entry, &origin, true) {
            Entry::Include(arg) => {
                let inc = rel.parent().unwrap_or(Path::new("")).join(arg);
                match read_inside(root, &inc) {
                    Ok(text) => read_requirements(root, &inc, &text, seen, spec, problems)?,
                    Err(e) => problems.push(format!("{origin}: {e:#}")),
                }
            }
            Entry::Req(r) => spec.push(r, origin),
            Entry::Editable(path) => spec.editables.push(format!("{origin}: -e {path}")),
            Entry::IndexUrl(u) => spec.index_url = Some(u),
            Entry::ExtraIndexUrl(u) => spec.extra_index_urls.push(u),
            Entry::Ignored(opt) => {
                tracing::warn!("{origin}: option {opt} ignored");
                spec.notes.push(format!("{origin}: option {opt} ignored"));
            }
            Entry::Refused(why) => problems.push(why),
        }
    }
    Ok(())
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

/// `pyproject.toml`: PEP 621 `[project].dependencies`, else Poetry's
/// `[tool.poetry.dependencies]`; neither (only tool settings, or dynamic dependencies) is
/// [`Loaded::Empty`] so the next spec file is read.
pub fn parse_pyproject(text: &str) -> Result<Loaded> {
    let file = "pyproject.toml";
    let doc: toml::Table = toml::from_str(text).map_err(|e| toml_error(file, text, &e))?;
    let project = doc.get("project").and_then(|p| p.as_table());
    let poetry = doc
        .get("tool")
        .and_then(|t| t.get("poetry"))
        .and_then(|p| p.as_table());
    let dynamic = project
        .and_then(|p| p.get("dynamic"))
        .and_then(|d| d.as_array())
        .is_some_and(|d| d.iter().any(|x| x.as_str() == Some("dependencies")));
    let mut spec = DepSpec::new(SpecKind::PyprojectToml, file);
    spec.python = project
        .and_then(|p| p.get("requires-python"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    if let Some(deps) = project
        .and_then(|p| p.get("dependencies"))
        .and_then(|d| d.as_array())
    {
        let mut problems = Vec::new();
        for d in deps {
            let Some(s) = d.as_str() else {
                problems.push(format!("{file}: a dependency is not a string: {d}"));
                continue;
            };
            add_entry(
                &mut spec,
                s,
                &format!("{file} [project] `{s}`"),
                &mut problems,
            );
        }
        problems.extend(conflicting_pins(&spec));
        refusals(file, problems)?;
        return Ok(Loaded::Spec(Box::new(spec)));
    }
    if let Some(deps) = poetry
        .and_then(|p| p.get("dependencies"))
        .and_then(|d| d.as_table())
    {
        crate::spec::poetry::read(file, poetry.expect("poetry table"), deps, &mut spec)?;
        return Ok(Loaded::Spec(Box::new(spec)));
    }
    let what: Vec<String> = doc
        .iter()
        .flat_map(|(k, v)| match (k.as_str(), v.as_table()) {
            ("tool", Some(t)) => t.keys().map(|k| format!("[tool.{k}]")).collect(),
            _ => vec![format!("[{k}]")],
        })
        .collect();
    Ok(Loaded::Empty(if dynamic {
        format!("{file}: [project].dependencies is dynamic (computed by a build backend, which the builder never runs)")
    } else {
        format!(
            "{file} declares no dependencies (no [project].dependencies or [tool.poetry.dependencies]; it has {})",
            if what.is_empty() { "nothing".to_string() } else { what.join(", ") }
        )
    }))
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
    let mut spec = DepSpec::new(SpecKind::PylockToml, file);
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
            spec.push(requirement(&format!("{n}=={v}"), file)?, file.to_string());
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
    fn conda_exports_as_they_exist_in_the_wild() {
        let y = "name: research\nchannels:\n  - pytorch\n  - conda-forge\ndependencies:\n  - conda-forge::numpy=1.26.4=py311h64a7726_0\n  - pytorch::pytorch=2.1.0=py3.11_cpu_0\n  - wavio >=0.0.5\n  - scipy 1.11.4 py311h64a7726_0\n  - python=3.11.5=hab00c5b_0_cpython\n  - pip:\n    # a comment inside the pip list\n    - tqdm==4.66.1  # trailing comment\n    - -e .\n    - --extra-index-url https://download.pytorch.org/whl/cpu\n";
        let s = parse_conda_file("environment.yml", y).unwrap();
        assert_eq!(s.python.as_deref(), Some("3.11.5=hab00c5b_0_cpython"));
        let conda: Vec<(String, Option<String>)> = s
            .conda
            .iter()
            .map(|d| (d.name.clone(), d.version.clone()))
            .collect();
        assert_eq!(
            conda,
            [
                (
                    "numpy".to_string(),
                    Some("=1.26.4=py311h64a7726_0".to_string())
                ),
                ("pytorch".into(), Some("=2.1.0=py3.11_cpu_0".into())),
                ("wavio".into(), Some(">=0.0.5".into())),
                ("scipy".into(), Some("=1.11.4".into())),
            ]
        );
        assert_eq!(s.requirements[0].to_string(), "tqdm==4.66.1");
        assert_eq!(s.editables.len(), 1);
        assert_eq!(s.extra_index_urls, ["https://download.pytorch.org/whl/cpu"]);
    }

    #[test]
    fn malformed_yaml_names_file_and_line() {
        let e = parse_conda("dependencies:\n- numpy\n  - : [\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("conda.yaml: invalid YAML at line"), "{e}");
    }

    fn reqs(text: &str) -> Result<DepSpec> {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("base.txt"), "numpy>=1.24 # numbers\n").unwrap();
        parse_requirements(d.path(), Path::new("requirements.txt"), text, &mut vec![])
    }

    #[test]
    fn requirements_txt_features() {
        let text = "# comment\n-r base.txt\n--index-url https://pypi.org/simple\nscikit-learn~=1.4 \\\n  ; python_version >= '3.9'\nrequests[socks]==2.31.0 --hash=sha256:abc\ntorch>=2,<3; platform_machine == 'x86_64'\n-e .\n";
        let s = reqs(text).unwrap();
        let names: Vec<String> = s.requirements.iter().map(|r| r.name.to_string()).collect();
        assert_eq!(names, ["numpy", "scikit-learn", "requests", "torch"]);
        assert_eq!(s.index_url.as_deref(), Some("https://pypi.org/simple"));
        assert_eq!(s.requirements[2].extras.len(), 1);
        assert_eq!(s.origins[0], "base.txt line 1");
        assert_eq!(s.editables, ["requirements.txt line 8: -e ."]);
    }

    #[test]
    fn every_uninstallable_line_in_one_error() {
        let text = "numpy==1.26.4\nfile:///home/me/pkg-1.0-py3-none-any.whl\ngit+https://github.com/someone/lib.git\n-f https://download.pytorch.org/whl/torch_stable.html\ntorch==1.9.0+cu111\nnumpy==1.24.0\n-e ../elsewhere\npkg @ https://x.example/p.whl\n";
        let e = reqs(text).unwrap_err().to_string();
        assert!(e.starts_with("requirements.txt: 7 entries cannot be installed from a package index:\n  requirements.txt line 2: `file:///"), "{e}");
        for needle in [
            "line 3: `git+https://github.com/someone/lib.git`: a git URL",
            "line 4: `-f https://download.pytorch.org/whl/torch_stable.html`: find-links",
            "line 5: torch pins the local version 1.9.0+cu111",
            "pin torch==1.9.0",
            "line 7: `-e ../elsewhere`",
            "line 8: pkg points to a URL",
            "numpy: `numpy==1.26.4` (requirements.txt line 1) and `numpy==1.24.0` (requirements.txt line 6) are conflicting pins",
        ] {
            assert!(e.contains(needle), "{needle:?} missing in {e}");
        }
        assert_eq!(e.lines().count(), 8, "{e}");
    }

    #[test]
    fn requirements_txt_refusals() {
        for (text, needle) in [
            (
                "-e git+https://x.example/a.git#egg=a\n",
                "outside the repository",
            ),
            ("-r ../../etc/passwd\n", "outside the repository"),
            ("numpy===\n", "line 1: invalid requirement"),
        ] {
            let e = reqs(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn pyproject_dependencies_and_fall_through() {
        let Loaded::Spec(s) = parse_pyproject("[project]\nname='x'\nrequires-python='>=3.10'\ndependencies=['numpy>=1.26', 'flwr==1.8.0']\n").unwrap() else {
            panic!("no spec")
        };
        assert_eq!(s.python.as_deref(), Some(">=3.10"));
        assert_eq!(s.requirements.len(), 2);
        let e = parse_pyproject("[project\n").unwrap_err().to_string();
        assert!(
            e.starts_with("pyproject.toml: invalid TOML at line 1"),
            "{e}"
        );
        let Loaded::Empty(why) = parse_pyproject("[tool.black]\nline-length = 100\n").unwrap()
        else {
            panic!("a black-only pyproject declares nothing")
        };
        assert!(why.contains("it has [tool.black]"), "{why}");
        let Loaded::Empty(why) =
            parse_pyproject("[project]\nname='x'\ndynamic=['dependencies']\n").unwrap()
        else {
            panic!("dynamic dependencies are not readable")
        };
        assert!(why.contains("dynamic"), "{why}");
    }
}
