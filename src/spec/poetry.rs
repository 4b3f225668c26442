//! Poetry's `[tool.poetry.dependencies]` as PEP 508 requirements: caret (`^1.2`), tilde
//! (`~1.2`), wildcard (`1.2.*`, `*`) and comparison constraints become PEP 440 specifiers;
//! `python` becomes the Python constraint; extras, `markers`, per-dependency `python` and
//! `platform` become markers; multiple-constraint lists become one requirement each.
//! Optional dependencies (they belong to extras) and dependency groups are left out, as
//! `poetry install --only main` does for a deployable image; git, path and URL dependencies
//! are refused by name, all of them in one error.
//!
//! Hand-written: no maintained crate converts Poetry constraints to PEP 440 (the rules are
//! Poetry's documented ones, <https://python-poetry.org/docs/dependency-specification/>).

use super::parsed::{refusals, requirement, DepSpec};
use anyhow::Result;

/// Reads the main dependency table into `spec`.
pub fn read(
    file: &'static str,
    poetry: &toml::Table,
    deps: &toml::Table,
    spec: &mut DepSpec,
) -> Result<()> {
    let mut problems = Vec::new();
    for (name, value) in deps {
        if name == "python" {
            match value.as_str().map(constraint) {
                Some(Ok(c)) => spec.python = Some(c),
                _ => problems.push(format!(
                    "{file}: [tool.poetry.dependencies] python = {value}: not a version constraint"
                )),
            }
            continue;
        }
        let alternatives: Vec<&toml::Value> = match value {
            toml::Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for v in alternatives {
            match entry(name, v) {
                Ok(Some(pep508)) => {
                    let origin = format!("{file} [tool.poetry.dependencies] {name}");
                    match requirement(&pep508, &origin) {
                        Ok(r) => {
                            spec.requirements.push(r);
                            spec.origins.push(origin);
                        }
                        Err(e) => problems.push(e.to_string()),
                    }
                }
                Ok(None) => spec.notes.push(format!(
                    "{file}: optional dependency {name} left out (it belongs to an extra)"
                )),
                Err(why) => {
                    problems.push(format!("{file}: [tool.poetry.dependencies] {name}: {why}"))
                }
            }
        }
    }
    let groups: Vec<&String> = poetry
        .get("group")
        .and_then(|g| g.as_table())
        .map(|g| g.keys().collect())
        .unwrap_or_default();
    if !groups.is_empty() {
        let names: Vec<&str> = groups.iter().map(|s| s.as_str()).collect();
        spec.notes.push(format!(
            "{file}: Poetry dependency groups left out ({}): an image gets the main dependencies, as `poetry install --only main`",
            names.join(", ")
        ));
    }
    if poetry.contains_key("dev-dependencies") {
        spec.notes.push(format!(
            "{file}: [tool.poetry.dev-dependencies] left out (development tools)"
        ));
    }
    refusals(file, problems)
}

/// One dependency value as a PEP 508 string; `None` for optional ones.
fn entry(name: &str, v: &toml::Value) -> std::result::Result<Option<String>, String> {
    let table = match v {
        toml::Value::String(s) => return Ok(Some(format!("{name}{}", constraint(s)?))),
        toml::Value::Table(t) => t,
        other => return Err(format!("unsupported value {other}")),
    };
    for source in ["git", "path", "url"] {
        if let Some(loc) = table.get(source) {
            return Err(format!(
                "a {source} dependency ({}); only packages from an index can be installed (publish it, or vendor its code into the repo)",
                loc.as_str().unwrap_or("?")
            ));
        }
    }
    if table.get("optional").and_then(|o| o.as_bool()) == Some(true) {
        return Ok(None);
    }
    let spec = match table.get("version").and_then(|v| v.as_str()) {
        Some(c) => constraint(c)?,
        None => String::new(),
    };
    let extras = table
        .get("extras")
        .and_then(|e| e.as_array())
        .map(|e| {
            let names: Vec<&str> = e.iter().filter_map(|x| x.as_str()).collect();
            format!("[{}]", names.join(","))
        })
        .unwrap_or_default();
    let mut markers = Vec::new();
    if let Some(m) = table.get("markers").and_then(|m| m.as_str()) {
        markers.push(format!("({m})"));
    }
    if let Some(p) = table.get("python").and_then(|p| p.as_str()) {
        markers.push(format!("({})", python_marker(p)?));
    }
    if let Some(p) = table.get("platform").and_then(|p| p.as_str()) {
        markers.push(format!("sys_platform == '{p}'"));
    }
    let marker = if markers.is_empty() {
        String::new()
    } else {
        format!(" ; {}", markers.join(" and "))
    };
    Ok(Some(format!("{name}{extras}{spec}{marker}")))
}

/// The numeric release parts of a version (`1.2.3b1` → [1, 2, 3]) and their count as written.
fn release(v: &str) -> std::result::Result<Vec<u64>, String> {
    let nums: Vec<u64> = v
        .split('.')
        .map_while(|p| {
            let digits: String = p.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().ok()
        })
        .collect();
    if nums.is_empty() {
        return Err(format!("{v:?} is not a version"));
    }
    Ok(nums)
}

fn join(parts: &[u64]) -> String {
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// A Poetry constraint as a PEP 440 specifier set (`""` for any version).
pub fn constraint(c: &str) -> std::result::Result<String, String> {
    if c.contains("||") || c.contains('|') {
        return Err(format!(
            "{c:?} uses `||`, which PEP 440 cannot express; write one range"
        ));
    }
    let mut out = Vec::new();
    for clause in c.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let clause: String = clause.split_whitespace().collect();
        if clause == "*" {
            continue;
        }
        if let Some(v) = clause.strip_prefix('^') {
            let r = release(v)?;
            let i = r.iter().position(|&x| x != 0).unwrap_or(r.len() - 1);
            let mut upper = r[..=i].to_vec();
            upper[i] += 1;
            out.push(format!(">={v},<{}", join(&upper)));
        } else if clause.starts_with("~=") {
            out.push(clause);
        } else if let Some(v) = clause.strip_prefix('~') {
            let r = release(v)?;
            let upper = if r.len() == 1 {
                vec![r[0] + 1]
            } else {
                vec![r[0], r[1] + 1]
            };
            out.push(format!(">={v},<{}", join(&upper)));
        } else if clause.starts_with(['<', '>', '!']) || clause.starts_with("==") {
            out.push(clause);
        } else if let Some(v) = clause.strip_prefix('=') {
            out.push(format!("=={v}"));
        } else if clause.starts_with(|c: char| c.is_ascii_digit()) {
            out.push(format!("=={clause}"));
        } else {
            return Err(format!("{c:?} is not a Poetry version constraint"));
        }
    }
    Ok(out.join(","))
}

/// A Poetry Python constraint as a marker (`^3.8` → `python_version >= '3.8' and python_version < '4'`).
fn python_marker(c: &str) -> std::result::Result<String, String> {
    let spec = constraint(c)?;
    let clauses: Vec<String> = spec
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let op_len = s.find(|c: char| c.is_ascii_digit()).unwrap_or(0);
            let (op, v) = s.split_at(op_len);
            let var = if v.split('.').count() > 2 {
                "python_full_version"
            } else {
                "python_version"
            };
            format!("{var} {op} '{v}'")
        })
        .collect();
    Ok(clauses.join(" and "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{parse_pyproject, Loaded};

    #[test]
    fn constraints_as_poetry_documents_them() {
        for (poetry, pep440) in [
            ("^1.2.3", ">=1.2.3,<2"),
            ("^1.2", ">=1.2,<2"),
            ("^1", ">=1,<2"),
            ("^0.2.3", ">=0.2.3,<0.3"),
            ("^0.0.3", ">=0.0.3,<0.0.4"),
            ("^0.0", ">=0.0,<0.1"),
            ("^0", ">=0,<1"),
            ("~1.2.3", ">=1.2.3,<1.3"),
            ("~1.2", ">=1.2,<1.3"),
            ("~1", ">=1,<2"),
            ("~=1.4", "~=1.4"),
            ("*", ""),
            ("1.2.*", "==1.2.*"),
            ("1.2.3", "==1.2.3"),
            ("=1.2.3", "==1.2.3"),
            (">= 1.2, < 1.5", ">=1.2,<1.5"),
            ("!=1.2.5", "!=1.2.5"),
        ] {
            assert_eq!(constraint(poetry).unwrap(), pep440, "{poetry}");
        }
        assert!(constraint("^1.0 || ^2.0").unwrap_err().contains("||"));
    }

    #[test]
    fn a_poetry_project_as_ml_repos_write_them() {
        let text = r#"
[tool.poetry]
name = "fl-demo"
version = "0.1.0"

[tool.poetry.dependencies]
python = "^3.10"
numpy = "^1.26"
scikit-learn = "~1.4.2"
pandas = { version = ">=2.0,<2.2", extras = ["parquet"] }
tabulate = "*"
torch = [
  { version = "2.1.0", markers = "platform_machine == 'x86_64'" },
  { version = "2.2.0", python = ">=3.12" },
]
plotting = { version = "^3.8", optional = true }

[tool.poetry.group.dev.dependencies]
pytest = "^8"
"#;
        let Loaded::Spec(s) = parse_pyproject(text).unwrap() else {
            panic!("poetry deps are read")
        };
        assert_eq!(s.python.as_deref(), Some(">=3.10,<4"));
        let reqs: Vec<String> = s.requirements.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            reqs,
            [
                "numpy>=1.26,<2",
                "pandas[parquet]>=2.0,<2.2",
                "scikit-learn>=1.4.2,<1.5",
                "tabulate",
                "torch==2.1.0 ; platform_machine == 'x86_64'",
                "torch==2.2.0 ; python_full_version >= '3.12'",
            ]
        );
        assert!(s
            .notes
            .iter()
            .any(|n| n.contains("optional dependency plotting")));
        assert!(s.notes.iter().any(|n| n.contains("groups left out (dev)")));
    }

    #[test]
    fn git_path_and_url_dependencies_are_refused_by_name() {
        let text = "[tool.poetry.dependencies]\npython = \"^3.10\"\nmylib = { git = \"https://github.com/me/mylib.git\" }\nlocal = { path = \"../local\" }\nwheel = { url = \"https://x.example/w.whl\" }\nnumpy = \"^1.26\"\n";
        let e = parse_pyproject(text).unwrap_err().to_string();
        assert!(
            e.starts_with("pyproject.toml: 3 entries cannot be installed"),
            "{e}"
        );
        for name in [
            "local: a path dependency (../local)",
            "mylib: a git dependency",
            "wheel: a url dependency",
        ] {
            assert!(e.contains(name), "{name}: {e}");
        }
    }
}
