//! Step 2: the repo has what FLOps needs — `model_manager.py` and one dependency spec — and
//! facts about its code that the dependency doctor uses.

use crate::deps::spec::{self, DepSpec, SpecKind};
use crate::error::bad_input;
use crate::repo::read_inside;
use anyhow::Result;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct Verified {
    pub spec: DepSpec,
    /// Other spec files present but not used (lower precedence).
    pub ignored_specs: Vec<SpecKind>,
    pub imports_mlflow: bool,
    pub warnings: Vec<String>,
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
    let Some((&kind, rest)) = present.split_first() else {
        return Err(bad_input("no dependency spec at the repository root: add conda.yaml, requirements.txt, pyproject.toml or pylock.toml"));
    };
    let spec = spec::load(root, kind)?;
    let mut imports_mlflow = false;
    scan(root, root, &mut imports_mlflow, &mut warnings)?;
    Ok(Verified {
        spec,
        ignored_specs: rest.to_vec(),
        imports_mlflow,
        warnings,
    })
}

fn defines_class(src: &str, name: &str) -> bool {
    src.lines().any(|l| {
        l.strip_prefix("class ")
            .and_then(|r| r.strip_prefix(name))
            .is_some_and(|r| r.starts_with(['(', ':', ' ']))
    })
}

fn imports(src: &str, module: &str) -> bool {
    src.lines().map(str::trim_start).any(|l| {
        let rest = l
            .strip_prefix("import ")
            .or_else(|| l.strip_prefix("from "));
        rest.is_some_and(|r| {
            r.split([',', ' '])
                .any(|m| m == module || m.starts_with(&format!("{module}.")))
        })
    })
}

/// Walks the checkout (not `.git`): finds `import mlflow` and symlinks leading outside.
fn scan(
    root: &Path,
    dir: &Path,
    imports_mlflow: &mut bool,
    warnings: &mut Vec<String>,
) -> Result<()> {
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
        if m.is_symlink() {
            let target = std::fs::read_link(&p)?;
            let resolved = rel.parent().unwrap_or(Path::new("")).join(&target);
            if target.is_absolute() || !super::lexical_inside(&resolved) {
                warnings.push(format!("{} is a symlink to {} outside the repository; it is kept as a symlink and never followed", rel.display(), target.display()));
            }
        } else if m.is_dir() {
            scan(root, &p, imports_mlflow, warnings)?;
        } else if p.extension().is_some_and(|e| e == "py") && !*imports_mlflow {
            if let Ok(src) = std::fs::read_to_string(&p) {
                *imports_mlflow = imports(&src, "mlflow");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_and_import_detection() {
        assert!(defines_class(
            "import x\nclass ModelManager(ModelManagerTemplate):\n",
            "ModelManager"
        ));
        assert!(!defines_class("class ModelManagerX:\n", "ModelManager"));
        assert!(imports("  import mlflow.sklearn\n", "mlflow"));
        assert!(imports("from mlflow import log_metric\n", "mlflow"));
        assert!(!imports("import mlflowish\n# mlflow\n", "mlflow"));
    }
}
