//! The files of a dependency layer that a lazy node prefetches: eStargz's prioritized files,
//! before the layer's `.prefetch.landmark` (stargz-snapshotter's `docs/estargz.md`).
//!
//! Chosen statically, from the layer alone (its bytes, and so its digest and cache key, stay a
//! function of its wheels: the same layer is shared by every image and project that has it):
//! what importing the layer's public packages reads. That is the import closure, over the
//! layer's own modules, of each public package (every component without a leading `_`, no test
//! suites) and each top-level module — module-level imports only, as
//! [`crate::spec::imports::module_imports`] finds them — with those modules' bytecode, the
//! extension modules they import, every shared library the layer carries (what the extension
//! modules load; which one is not known without reading ELF headers) and each distribution's
//! METADATA (read by `importlib.metadata` at import by many packages).
//!
//! Measured on the sklearn learner of `fixtures/sklearn-conda`: 2,661 of its 4,565 modules,
//! covering 1,847 of the 2,116 that its start really imports (a `sys.modules` dump in a chroot).

use crate::spec::imports::module_imports;
use crate::wheels::bytecode::pyc_path;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Path components that mark test suites and examples: never prioritized.
const NOT_STARTED: &[&str] = &["tests", "test", "testing", "benchmarks", "examples"];

/// A module of the layer: its file and whether it is Python source.
struct Module<'a> {
    path: &'a str,
    source: bool,
}

/// The prioritized files among `paths` (the layer's files, paths in the image without a
/// leading `/`), whose Python modules live under `site`; `pyc_tag` (e.g. `cpython-311`) when
/// the layer carries bytecode. `source(path)` gives a module's text (None: unreadable, then
/// its imports are not followed).
pub fn start_set<'a>(
    paths: &[&'a str],
    site: &str,
    pyc_tag: Option<&str>,
    mut source: impl FnMut(&str) -> Option<Vec<u8>>,
) -> BTreeSet<&'a str> {
    let (modules, libs, metadata) = index(paths, site);
    let present: BTreeSet<&str> = paths.iter().copied().collect();
    let mut chosen: BTreeSet<&'a str> = libs.into_iter().chain(metadata).collect();
    let mut seen = BTreeSet::new();
    let mut todo: VecDeque<String> = modules
        .iter()
        .filter(|(name, m)| root(name, m))
        .map(|(name, _)| name.clone())
        .collect();
    while let Some(name) = todo.pop_front() {
        if !seen.insert(name.clone()) {
            continue;
        }
        // Importing a.b.c imports a and a.b first.
        let mut at = name.as_str();
        while let Some((parent, _)) = at.rsplit_once('.') {
            todo.push_back(parent.to_string());
            at = parent;
        }
        let Some(m) = modules.get(&name) else {
            continue;
        };
        chosen.insert(m.path);
        if !m.source {
            continue;
        }
        if let Some(pyc) = pyc_tag.map(|t| pyc_path(m.path, t)) {
            if let Some(p) = present.get(pyc.as_str()) {
                chosen.insert(p);
            }
        }
        let package = if m.path.ends_with("/__init__.py") {
            name.as_str()
        } else {
            name.rsplit_once('.').map_or("", |(p, _)| p)
        };
        let Some(text) = source(m.path) else {
            continue;
        };
        for imported in module_imports(&String::from_utf8_lossy(&text), package) {
            if modules.contains_key(&imported) || imported.contains('.') {
                todo.push_back(imported);
            }
        }
    }
    chosen
}

/// Whether a module is a root: a public package, or a public top-level module.
fn root(name: &str, m: &Module) -> bool {
    (m.path.ends_with("/__init__.py") || !name.contains('.'))
        && name
            .split('.')
            .all(|c| !c.starts_with('_') && !NOT_STARTED.contains(&c))
}

/// The layer's modules by dotted name (Python source first, then extension modules), its shared
/// libraries, and its distributions' METADATA files.
fn index<'a>(
    paths: &[&'a str],
    site: &str,
) -> (BTreeMap<String, Module<'a>>, Vec<&'a str>, Vec<&'a str>) {
    let (mut modules, mut libs, mut metadata) = (BTreeMap::new(), Vec::new(), Vec::new());
    let prefix = format!("{site}/");
    for &path in paths {
        let Some(rel) = path.strip_prefix(&prefix) else {
            if is_shared_library(path) {
                libs.push(path);
            }
            continue;
        };
        let (dir, file) = rel.rsplit_once('/').unwrap_or(("", rel));
        if dir.ends_with(".dist-info") && file == "METADATA" {
            metadata.push(path);
            continue;
        }
        let dotted_dir = || (!dir.is_empty()).then(|| dir.replace('/', "."));
        let identifiers = dir.split('/').all(|c| dir.is_empty() || identifier(c));
        if let Some(stem) = file
            .strip_suffix(".py")
            .filter(|s| identifier(s) && identifiers)
        {
            let name = match (dotted_dir(), stem) {
                (Some(d), "__init__") => d,
                (Some(d), s) => format!("{d}.{s}"),
                (None, s) => s.to_string(),
            };
            modules.insert(name, Module { path, source: true });
        } else if is_shared_library(file) {
            let stem = file.split('.').next().unwrap_or("");
            let extension = identifiers && identifier(stem) && file.ends_with(".so");
            if !extension {
                libs.push(path);
                continue;
            }
            let name = dotted_dir().map_or(stem.to_string(), |d| format!("{d}.{stem}"));
            modules.entry(name).or_insert(Module {
                path,
                source: false,
            });
        }
    }
    (modules, libs, metadata)
}

fn identifier(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_alphanumeric() || c == '_')
}

fn is_shared_library(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.ends_with(".so") || file.contains(".so.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_importing_the_public_packages_reads() {
        let site = "opt/flops/site-packages";
        let files: Vec<(String, &str)> = [
            ("pkg/__init__.py", "from . import core\nfrom ._native import f\n"),
            ("pkg/core.py", "import numpy as np\nfrom .util import helper\ndef later():\n    from . import slow\n"),
            ("pkg/util.py", ""),
            ("pkg/slow.py", ""),
            ("pkg/_private.py", ""),
            ("pkg/_native.cpython-311-x86_64-linux-gnu.so", ""),
            ("pkg/_unused.cpython-311-x86_64-linux-gnu.so", ""),
            ("pkg/tests/__init__.py", "import pkg.slow\n"),
            ("pkg/__pycache__/core.cpython-311.pyc", ""),
            ("pkg/__pycache__/slow.cpython-311.pyc", ""),
            ("pkg/data.json", ""),
            ("pkg.libs/libopenblas-1a2b.so.0.3", ""),
            ("pkg-1.0.dist-info/METADATA", ""),
            ("pkg-1.0.dist-info/RECORD", ""),
            ("six.py", ""),
        ]
        .iter()
        .map(|(p, src)| (format!("{site}/{p}"), *src))
        .collect();
        let mut paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        paths.push("opt/flops/bin/tool");
        let sources: BTreeMap<&str, &str> = files.iter().map(|(p, s)| (p.as_str(), *s)).collect();
        let got = start_set(&paths, site, Some("cpython-311"), |p| {
            sources.get(p).map(|s| s.as_bytes().to_vec())
        });
        let got: Vec<&str> = got
            .iter()
            .map(|p| p.strip_prefix("opt/flops/site-packages/").unwrap())
            .collect();
        assert_eq!(
            got,
            [
                "pkg-1.0.dist-info/METADATA",
                "pkg.libs/libopenblas-1a2b.so.0.3",
                "pkg/__init__.py",
                "pkg/__pycache__/core.cpython-311.pyc",
                "pkg/_native.cpython-311-x86_64-linux-gnu.so",
                "pkg/core.py",
                "pkg/util.py",
                "six.py",
            ]
        );
    }
}
