//! Verification: the repo has what FLOps needs — `model_manager.py` and a dependency spec — and
//! facts about its code that the dependency doctor uses (what it imports, what it provides).

use crate::error::bad_input;
use crate::paths::read_inside;
use crate::spec::imports::{scan_source, Imports};
use crate::spec::{self, DepSpec, Loaded};
use anyhow::Result;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct Verified {
    pub spec: DepSpec,
    /// Other spec files present but not used (lower precedence).
    pub ignored_specs: Vec<&'static str>,
    /// Top-level modules imported by the repo's `.py` files, with the files importing them.
    pub imports: Imports,
    /// Names the repo provides itself: its `.py` files and directories, anywhere in it.
    pub local_modules: BTreeSet<String>,
    pub warnings: Vec<String>,
    /// Spec files skipped because they declare no dependencies the builder reads, and why.
    pub notes: Vec<String>,
}

pub fn verify(root: &Path) -> Result<Verified> {
    let mut warnings = Vec::new();
    if root.join("model_manager.py").symlink_metadata().is_err() {
        return Err(bad_input("model_manager.py is missing at the repository root (FLOps loads class ModelManager from it)"));
    }
    let mm = read_inside(root, Path::new("model_manager.py"))?;
    if !defines_class(&mm, "ModelManager") {
        warnings.push(
            "model_manager.py does not define class ModelManager; the learner will fail to start"
                .to_string(),
        );
    }
    let present = spec::present(root);
    if present.is_empty() {
        return Err(bad_input("no dependency spec at the repository root: add conda.yaml (or environment.yml), requirements.txt, pyproject.toml or pylock.toml"));
    }
    let mut notes = Vec::new();
    let mut chosen = None;
    for (i, (file, kind)) in present.iter().enumerate() {
        match spec::load(root, file, *kind)? {
            Loaded::Spec(s) => {
                chosen = Some((*s, i));
                break;
            }
            Loaded::Empty(why) => notes.push(why),
        }
    }
    let Some((spec, i)) = chosen else {
        return Err(bad_input(format!(
            "no dependency spec declares dependencies: {}",
            notes.join("; ")
        )));
    };
    if !notes.is_empty() {
        notes
            .last_mut()
            .expect("a note")
            .push_str(&format!("; using {}", spec.file));
    }
    for n in &notes {
        tracing::info!("{n}");
    }
    let mut found = Scan::default();
    scan(root, root, &mut found)?;
    warnings.extend(found.warnings);
    Ok(Verified {
        spec,
        ignored_specs: present[i + 1..].iter().map(|(f, _)| *f).collect(),
        imports: found.imports,
        local_modules: found.local,
        warnings,
        notes,
    })
}

/// `class ModelManager…` here, or `from <module> import …ModelManager…` (defined elsewhere).
fn defines_class(src: &str, name: &str) -> bool {
    src.lines().any(|l| {
        let defined = l
            .strip_prefix("class ")
            .and_then(|r| r.strip_prefix(name))
            .is_some_and(|r| r.starts_with(['(', ':', ' ']));
        let imported = l.starts_with("from ")
            && l.split_once(" import ")
                .is_some_and(|(_, names)| names.split([',', ' ', '(', ')']).any(|n| n == name));
        defined || imported
    })
}

#[derive(Default)]
struct Scan {
    imports: Imports,
    local: BTreeSet<String>,
    warnings: Vec<String>,
}

/// Walks the checkout (not `.git`): imports of every `.py` file, the names the repo provides,
/// and symlinks leading outside.
fn scan(root: &Path, dir: &Path, found: &mut Scan) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    entries.sort();
    for p in entries {
        let rel = p.strip_prefix(root).unwrap_or(&p);
        if rel == Path::new(".git") {
            continue;
        }
        let m = p.symlink_metadata()?;
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if m.is_symlink() {
            let target = std::fs::read_link(&p)?;
            let resolved = rel.parent().unwrap_or(Path::new("")).join(&target);
            if target.is_absolute() || !crate::paths::lexical_inside(&resolved) {
                found.warnings.push(format!("{} is a symlink to {} outside the repository; it is kept as a symlink and never followed", rel.display(), target.display()));
            }
        } else if m.is_dir() {
            found.local.insert(stem);
            scan(root, &p, found)?;
        } else if p.extension().is_some_and(|e| e == "py") {
            found.local.insert(stem);
            if let Ok(src) = std::fs::read_to_string(&p) {
                for module in scan_source(&src) {
                    found
                        .imports
                        .entry(module)
                        .or_default()
                        .insert(rel.display().to_string());
                }
            }
        } else if p.extension().is_some_and(|e| e == "so" || e == "pyd") {
            // A compiled module shipped in the repo (`fastmath.cpython-311-x86_64-linux-gnu.so`).
            found
                .local
                .insert(stem.split('.').next().unwrap_or(&stem).to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_detection() {
        assert!(defines_class(
            "import x\nclass ModelManager(ModelManagerTemplate):\n",
            "ModelManager"
        ));
        assert!(!defines_class("class ModelManagerX:\n", "ModelManager"));
        assert!(defines_class(
            "from image_model import ModelManager  # noqa\n",
            "ModelManager"
        ));
        assert!(!defines_class(
            "from x import ModelManagerTemplate\n",
            "ModelManager"
        ));
    }

    #[test]
    fn imports_and_local_modules_of_a_repo() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("model_manager.py"),
            "import numpy\nfrom helpers.io import read\nclass ModelManager:\n    pass\n",
        )
        .unwrap();
        std::fs::create_dir(d.path().join("helpers")).unwrap();
        std::fs::write(d.path().join("helpers/io.py"), "import mlflow.sklearn\n").unwrap();
        std::fs::write(d.path().join("requirements.txt"), "numpy\n").unwrap();
        std::fs::write(d.path().join("pyproject.toml"), "[tool.black]\n").unwrap();
        let v = verify(d.path()).unwrap();
        assert_eq!(v.spec.file, "requirements.txt");
        assert_eq!(v.notes.len(), 1);
        assert!(
            v.notes[0].ends_with("; using requirements.txt"),
            "{:?}",
            v.notes
        );
        let mods: Vec<&str> = v.imports.keys().map(String::as_str).collect();
        assert_eq!(mods, ["helpers", "mlflow", "numpy"]);
        assert!(v.imports["mlflow"].contains("helpers/io.py"));
        assert!(v.local_modules.contains("helpers") && v.local_modules.contains("io"));
    }
}
