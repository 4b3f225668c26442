//! Step 4: augment the repo with the FL learner runtime (`base-layers/fl-learner/`).
//!
//! The runtime's files are compiled into the binary, so a builder always ships the runtime it
//! was tested with and needs no files beside it (the builder image, CI, a laptop alike).

use crate::oci::blobstore::BlobStore;
use crate::oci::layer::{image_path, parent_dirs, Compression, Layer, LayerWriter};
use anyhow::Result;
use std::path::Path;

/// The runtime's files, placed in the image's working directory, sorted by name.
pub const FILES: &[(&str, &[u8])] = &[
    (
        "data_loading.py",
        include_bytes!("../../base-layers/fl-learner/data_loading.py"),
    ),
    (
        "main.py",
        include_bytes!("../../base-layers/fl-learner/main.py"),
    ),
];

/// Top-level repo entries that the runtime replaces (the runtime wins: the manager runs our
/// `main.py`, and `flops_utils` imports our `data_loading`).
pub fn clashes(repo_root: &Path) -> Vec<&'static str> {
    FILES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| std::fs::symlink_metadata(repo_root.join(name)).is_ok())
        .collect()
}

/// The warning for a replaced repo file.
pub fn clash_warning(name: &str) -> String {
    format!("the repo's {name} is replaced by the FL learner runtime's {name}")
}

/// The runtime layer: `workdir` (and its parents) holding [`FILES`]. Its mtime is 0, not the
/// commit time, so its bytes change only with the builder and a new commit re-uses the blob.
pub fn runtime_layer(store: &BlobStore, workdir: &str, compression: Compression) -> Result<Layer> {
    let dest = image_path(workdir)?;
    let path_of = |name: &str| {
        if dest.is_empty() {
            name.to_string()
        } else {
            format!("{dest}/{name}")
        }
    };
    let mut w = LayerWriter::with_workers(store, compression, 0, 1)?;
    // The working directory and its parents: those above any one of the files.
    for dir in parent_dirs(&path_of(FILES[0].0)) {
        w.dir(&dir)?;
    }
    for (name, bytes) in FILES {
        w.file(&path_of(name), false, bytes.len() as u64, *bytes)?;
    }
    w.finish(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every runtime module in base-layers/fl-learner is embedded (tests and requirements are not).
    #[test]
    fn every_runtime_file_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("base-layers/fl-learner");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".py"))
            .collect();
        on_disk.sort();
        let embedded: Vec<&str> = FILES.iter().map(|(n, _)| *n).collect();
        assert_eq!(on_disk, embedded);
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
        let a = runtime_layer(&store, "/app", Compression::Gzip(6)).unwrap();
        let b = runtime_layer(&store, "app/", Compression::Gzip(6)).unwrap();
        assert_eq!(a.digest, b.digest);
        let c = runtime_layer(&store, "/srv/app", Compression::Gzip(6)).unwrap();
        assert_ne!(a.digest, c.digest);
    }
}
