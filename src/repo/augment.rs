//! The runtimes' layers: the repo augmented with an FL runtime (`base-layers/fl-learner/`,
//! `base-layers/fl-aggregator/`) and the dependency prefix's site hook
//! (`base-layers/site-packages/`).
//!
//! The runtimes' files are compiled into the binary, so a builder always ships the runtime it
//! was tested with and needs no files beside it (the builder image, CI, a laptop alike).

use crate::oci::blobstore::BlobStore;
use crate::oci::layer::{image_path, parent_dirs, Compression, Layer, LayerWriter};
use anyhow::Result;
use std::collections::BTreeSet;
use std::path::Path;

/// A runtime: files placed in the image's working directory, and the requirements the
/// builder adds to the lock for it.
#[derive(Debug, Clone, Copy)]
pub struct Runtime {
    /// `fl-learner`, `fl-aggregator`.
    pub name: &'static str,
    /// (file name, bytes), sorted by name.
    pub files: &'static [(&'static str, &'static [u8])],
    /// requirements.txt text.
    pub requirements: &'static str,
}

pub const LEARNER: Runtime = Runtime {
    name: "fl-learner",
    files: &[
        (
            "data_loading.py",
            include_bytes!("../../base-layers/fl-learner/data_loading.py"),
        ),
        (
            "flops_input_schema.py",
            include_bytes!("../../base-layers/fl-learner/flops_input_schema.py"),
        ),
        (
            "main.py",
            include_bytes!("../../base-layers/fl-learner/main.py"),
        ),
    ],
    requirements: include_str!("../../base-layers/fl-learner/requirements.txt"),
};

pub const AGGREGATOR: Runtime = Runtime {
    name: "fl-aggregator",
    files: &[
        (
            "flops_signature.py",
            include_bytes!("../../base-layers/fl-aggregator/flops_signature.py"),
        ),
        (
            "main.py",
            include_bytes!("../../base-layers/fl-aggregator/main.py"),
        ),
    ],
    requirements: include_str!("../../base-layers/fl-aggregator/requirements.txt"),
};

/// Files placed in the dependency prefix's site-packages: `sitecustomize.py` makes the prefix
/// (which is on PYTHONPATH) a real site directory, so packages' `.pth` files run.
pub const SITE_FILES: &[(&str, &[u8])] = &[(
    "sitecustomize.py",
    include_bytes!("../../base-layers/site-packages/sitecustomize.py"),
)];

/// Top-level repo entries that a runtime replaces (the runtime wins: the manager runs our
/// `main.py`, and `flops_utils` imports our `data_loading`).
pub fn clashes(repo_root: &Path) -> Vec<&'static str> {
    let names: BTreeSet<&'static str> = LEARNER
        .files
        .iter()
        .chain(AGGREGATOR.files)
        .map(|(n, _)| *n)
        .collect();
    names
        .into_iter()
        .filter(|name| std::fs::symlink_metadata(repo_root.join(name)).is_ok())
        .collect()
}

/// The warning for a replaced repo file.
pub fn clash_warning(name: &str) -> String {
    format!("the repo's {name} is replaced by the FL runtime's {name}")
}

/// The files a runtime places: (path in the image without the leading `/`, bytes), sorted.
pub fn runtime_files(
    runtime: &Runtime,
    workdir: &str,
    prefix: &str,
) -> Result<Vec<(String, &'static [u8])>> {
    let at = |dir: &str, name: &str| -> Result<String> {
        let d = image_path(dir)?;
        Ok(if d.is_empty() {
            name.to_string()
        } else {
            format!("{d}/{name}")
        })
    };
    let mut files: Vec<(String, &'static [u8])> = Vec::new();
    for (name, bytes) in runtime.files {
        files.push((at(workdir, name)?, bytes));
    }
    for (name, bytes) in SITE_FILES {
        files.push((at(&format!("{prefix}/site-packages"), name)?, bytes));
    }
    files.sort();
    Ok(files)
}

/// The runtime layer: `workdir` holding the runtime's files, and the site hook in
/// `<prefix>/site-packages`. Its mtime is 0, not the commit time, so its bytes change only
/// with the builder and a new commit re-uses the blob.
pub fn runtime_layer(
    store: &BlobStore,
    runtime: &Runtime,
    workdir: &str,
    prefix: &str,
    compression: Compression,
) -> Result<Layer> {
    let files = runtime_files(runtime, workdir, prefix)?;
    let dirs: BTreeSet<String> = files.iter().flat_map(|(p, _)| parent_dirs(p)).collect();
    let mut w = LayerWriter::with_workers(store, compression, 0, 1)?;
    // Tar order: every path sorted, each directory before what it holds.
    let mut entries: Vec<(String, Option<&[u8]>)> = dirs.into_iter().map(|d| (d, None)).collect();
    entries.extend(files.into_iter().map(|(p, b)| (p, Some(b))));
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, bytes) in entries {
        match bytes {
            None => w.dir(&path)?,
            Some(b) => w.file(&path, false, b.len() as u64, b)?,
        }
    }
    // The runtime: read whole at every start.
    w.prefetch_landmark()?;
    w.finish(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every runtime module is embedded (tests and requirements are not).
    #[test]
    fn every_runtime_file_is_embedded() {
        for (dir, files) in [
            ("fl-learner", LEARNER.files),
            ("fl-aggregator", AGGREGATOR.files),
            ("site-packages", SITE_FILES),
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("base-layers")
                .join(dir);
            let mut on_disk: Vec<String> = std::fs::read_dir(path)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".py"))
                .collect();
            on_disk.sort();
            let embedded: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
            assert_eq!(on_disk, embedded, "{dir}");
        }
    }

    #[test]
    fn clashes_are_top_level_names() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("main.py"), "print()").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/data_loading.py"), "").unwrap();
        assert_eq!(clashes(d.path()), vec!["main.py"]);
    }

    #[test]
    fn runtime_layer_is_the_same_bytes_every_time() {
        let d = tempfile::tempdir().unwrap();
        let store = BlobStore::open(d.path()).unwrap();
        let gz = Compression::Gzip(6);
        let a = runtime_layer(&store, &LEARNER, "/app", "/opt/flops", gz).unwrap();
        let b = runtime_layer(&store, &LEARNER, "app/", "/opt/flops", gz).unwrap();
        assert_eq!(a.digest, b.digest);
        let c = runtime_layer(&store, &LEARNER, "/srv/app", "/opt/flops", gz).unwrap();
        assert_ne!(a.digest, c.digest);
        let agg = runtime_layer(&store, &AGGREGATOR, "/app", "/opt/flops", gz).unwrap();
        assert_ne!(a.digest, agg.digest);
    }
}
