//! Content-addressed blob store on disk (`<root>/blobs/sha256/<hex>`), the root of the cache
//! (`--cache-dir`) that several builders on one node may share. Layers are written here once
//! and every upload retry replays from the file, never from memory.
//!
//! Sharing rules, for every entry under the root (blobs, layer records, locks, wheels):
//! - writes are atomic: a temporary file in the same directory, then a rename, so a reader
//!   sees a whole entry or none;
//! - blobs reused from an earlier build are verified by digest; a damaged one is removed;
//! - builders that would make the same entry take its [`EntryLock`] first and look again once
//!   they hold it, so the entry is made once and the other builder reuses it.

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};
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

    /// [`BlobStore::has`], and its bytes hash to `digest`; a blob that does not is removed (it
    /// was damaged on disk: the caller makes or fetches it again). Hashes the whole file.
    pub fn has_verified_blocking(&self, digest: &str, size: u64) -> bool {
        if !self.has(digest, size) {
            return false;
        }
        let path = self.path(digest);
        if verify_file_digest(&path, digest).is_ok() {
            return true;
        }
        tracing::warn!(
            "cache: {} does not match its digest; removed",
            path.display()
        );
        let _ = std::fs::remove_file(&path);
        false
    }

    /// [`BlobStore::has_verified_blocking`] on a blocking thread.
    pub async fn has_verified(&self, digest: &str, size: u64) -> Result<bool> {
        let (s, d) = (self.clone(), digest.to_string());
        Ok(tokio::task::spawn_blocking(move || s.has_verified_blocking(&d, size)).await?)
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

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, renamed over
/// `path`, so a concurrent reader never sees a part of it. Creates the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("a cache entry has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// An exclusive lock on one cache entry (`<entry>.lock`, an OS file lock: `flock` on Linux),
/// held until dropped, and released by the kernel if the builder dies. Builders that would
/// make the same entry wait for each other instead of both making it.
///
/// The standard library's `File::lock` (Rust 1.89) rather than the `fs4` crate: the same call,
/// with nothing to add to the dependency tree.
#[derive(Debug)]
pub struct EntryLock {
    _file: std::fs::File,
}

impl EntryLock {
    /// Blocks until the lock on `entry` is ours.
    pub fn acquire_blocking(entry: &Path) -> Result<Self> {
        let mut name = entry.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open the lock {}", path.display()))?;
        if file.try_lock().is_err() {
            tracing::info!(
                "cache: waiting for another builder to finish {}",
                entry.display()
            );
            file.lock()
                .with_context(|| format!("cannot lock {}", path.display()))?;
        }
        Ok(Self { _file: file })
    }

    /// [`EntryLock::acquire_blocking`] on a blocking thread.
    pub async fn acquire(entry: &Path) -> Result<Self> {
        let entry = entry.to_path_buf();
        tokio::task::spawn_blocking(move || Self::acquire_blocking(&entry)).await?
    }
}

/// Checks a blob file is what its digest says (a cache entry before reuse).
pub fn verify_file_digest(path: &Path, digest: &str) -> Result<()> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    let got = format!("sha256:{}", hex::encode(h.finalize()));
    if got != digest {
        anyhow::bail!("{} has digest {got}, expected {digest}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_blob_is_not_reused_and_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let store = BlobStore::open(d.path()).unwrap();
        let digest = store.put_bytes(b"hello").unwrap();
        assert!(store.has_verified_blocking(&digest, 5));
        std::fs::write(store.path(&digest), b"hellO").unwrap();
        assert!(store.has(&digest, 5), "same size: only the hash can tell");
        assert!(!store.has_verified_blocking(&digest, 5));
        assert!(!store.path(&digest).exists());
    }

    #[test]
    fn entry_locks_exclude_each_other_across_open_files() {
        let d = tempfile::tempdir().unwrap();
        let entry = d.path().join("layers/deps-x");
        let first = EntryLock::acquire_blocking(&entry).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let e2 = entry.clone();
        let t = std::thread::spawn(move || {
            let _second = EntryLock::acquire_blocking(&e2).unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "a second lock must wait for the first"
        );
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn atomic_writes_replace_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("locks/pylock.x.toml");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
