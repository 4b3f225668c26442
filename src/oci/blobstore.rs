//! Content-addressed blob store on disk (`<root>/blobs/sha256/<hex>`). Layers are written here
//! once and every upload retry replays from the file, never from memory.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    pub fn open(root: &Path) -> Result<Self> {
        for sub in ["blobs/sha256", "tmp", "layers"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create cache directory {}", dir.display()))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root.join("blobs/sha256").join(hex)
    }

    pub fn has(&self, digest: &str, size: u64) -> bool {
        std::fs::metadata(self.path(digest)).is_ok_and(|m| m.len() == size)
    }

    /// A temporary file on the same filesystem, so committing it is a rename.
    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile> {
        tempfile::NamedTempFile::new_in(self.root.join("tmp"))
            .with_context(|| format!("cannot create a file in {}", self.root.display()))
    }

    pub fn commit(&self, tmp: tempfile::NamedTempFile, digest: &str) -> Result<PathBuf> {
        let dest = self.path(digest);
        tmp.persist(&dest)
            .with_context(|| format!("cannot store blob {}", dest.display()))?;
        Ok(dest)
    }

    /// Stores small bytes (configs, manifests) under their digest and returns the digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<String> {
        let digest = crate::oci::sha256_digest(bytes);
        if !self.has(&digest, bytes.len() as u64) {
            let mut tmp = self.temp_file()?;
            std::io::Write::write_all(&mut tmp, bytes)?;
            self.commit(tmp, &digest)?;
        }
        Ok(digest)
    }
}

/// Default cache root: `$XDG_CACHE_HOME/flops-image-builder`, else `~/.cache/...`, else /tmp.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("flops-image-builder")
}
