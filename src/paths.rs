//! Files of a checkout (the ML repo, a model directory) read confined to its root: paths
//! with `..` that leave it, and symlinks that point out of it, are refused and named.

use crate::error::bad_input;
use anyhow::Result;
use std::path::{Component, Path};

/// Reads a text file of the checkout, refusing paths and symlinks that lead outside it
/// (a repo's symlinks are never followed out of the repo).
pub fn read_inside(root: &Path, rel: &Path) -> Result<String> {
    let shown = rel.display();
    if rel.components().any(|c| {
        matches!(
            c,
            Component::ParentDir | Component::RootDir | Component::Prefix(_)
        )
    }) {
        let lexical = lexical_inside(rel);
        if !lexical {
            return Err(bad_input(format!("{shown}: points outside the repository")));
        }
    }
    let full = root.join(rel);
    let real = std::fs::canonicalize(&full)
        .map_err(|_| bad_input(format!("{shown} does not exist in the repository")))?;
    let real_root = std::fs::canonicalize(root)?;
    if !real.starts_with(&real_root) {
        return Err(bad_input(format!(
            "{shown} is a symlink that points outside the repository; it is never followed"
        )));
    }
    let bytes = std::fs::read(&real).map_err(|e| bad_input(format!("cannot read {shown}: {e}")))?;
    String::from_utf8(bytes).map_err(|_| bad_input(format!("{shown} is not UTF-8 text")))
}

/// Whether a relative path stays inside its root when `..` are applied lexically.
pub(crate) fn lexical_inside(rel: &Path) -> bool {
    let mut depth: i32 = 0;
    for c in rel.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::RootDir | Component::Prefix(_) => return false,
            Component::CurDir => {}
        }
        if depth < 0 {
            return false;
        }
    }
    true
}
