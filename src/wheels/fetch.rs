//! Fetching the locked wheels: concurrent (bounded), resumable after a dropped connection
//! (HTTP Range), size- and sha256-verified, into a content-addressed cache
//! (`<cache>/wheels/<sha256>/<file name>`) so a second build downloads nothing. A cached file
//! is verified again before use; a damaged one is deleted and downloaded again (a download that
//! does not match the lock fails loudly). Builders sharing the cache download each wheel once
//! (an entry lock per wheel).

use crate::error::{bad_input, registry as net_err};
use crate::wheels::pylock::Selected;
use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub const CONCURRENCY: usize = 4;
const ATTEMPTS: u32 = 5;

pub fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("flops-image-builder/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(20))
        .read_timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")
}

fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// Where a wheel lives in the cache.
pub fn cache_path(cache: &Path, w: &Selected) -> PathBuf {
    cache.join("wheels").join(&w.sha256).join(&w.file)
}

fn verify(path: &Path, w: &Selected, what: &str) -> Result<()> {
    let (got, size) = sha256_file(path)?;
    let size_ok = w.wheel.size.is_none_or(|s| s == size);
    if got != w.sha256 || !size_ok {
        let _ = std::fs::remove_file(path);
        return Err(bad_input(format!(
            "{what}: {} has sha256 {got} ({size} bytes) but the lock says {} ({} bytes); the file was deleted",
            w.file,
            w.sha256,
            w.wheel.size.map_or("?".into(), |s| s.to_string())
        )));
    }
    Ok(())
}

/// Downloads (or finds in the cache) every wheel; returns their paths in the same order.
/// `lock_dir` resolves `path = …` wheels of a repo's own pylock.toml.
pub async fn fetch_all(
    http: &reqwest::Client,
    cache: &Path,
    lock_dir: Option<&Path>,
    wheels: &[Selected],
    slots: &Arc<tokio::sync::Semaphore>,
) -> Result<Vec<PathBuf>> {
    if wheels.is_empty() {
        return Ok(Vec::new());
    }
    let sem = slots.clone();
    let mut tasks = tokio::task::JoinSet::new();
    let bar = crate::progress::downloads().clone();
    bar.grow(wheels.iter().filter_map(|w| w.wheel.size).sum());
    for (i, w) in wheels.iter().enumerate() {
        let (http, cache, lock_dir, w, sem, bar) = (
            http.clone(),
            cache.to_path_buf(),
            lock_dir.map(Path::to_path_buf),
            w.clone(),
            sem.clone(),
            bar.clone(),
        );
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore");
            let r = fetch_one(&http, &cache, lock_dir.as_deref(), &w).await;
            bar.inc(w.wheel.size.unwrap_or(0));
            r.map(|p| (i, p))
        });
    }
    let mut out = vec![PathBuf::new(); wheels.len()];
    while let Some(r) = tasks.join_next().await {
        match r.context("download task")? {
            Ok((i, p)) => out[i] = p,
            Err(e) => {
                tasks.abort_all();
                return Err(e);
            }
        }
    }
    Ok(out)
}

async fn fetch_one(
    http: &reqwest::Client,
    cache: &Path,
    lock_dir: Option<&Path>,
    w: &Selected,
) -> Result<PathBuf> {
    let what = format!("{} {}", w.name, w.version);
    let dest = cache_path(cache, w);
    // One download per wheel, however many builders share the cache.
    let _entry = crate::oci::blobstore::EntryLock::acquire(&dest).await?;
    if dest.exists() {
        let (d, ww, wh) = (dest.clone(), w.clone(), what.clone());
        match tokio::task::spawn_blocking(move || verify(&d, &ww, &wh)).await? {
            Ok(()) => return Ok(dest),
            // A damaged cache entry (verify removed it): download it again. A repo's own
            // `path = …` wheel is not downloaded, so its mismatch stays an error.
            Err(e) if w.wheel.url.is_some() => tracing::warn!("cache: {e:#}; downloading again"),
            Err(e) => return Err(e),
        }
    }
    let dir = dest.parent().expect("has a parent");
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("creating {}", dir.display()))?;
    // Unique per process and task: concurrent downloads of one wheel (a pure wheel in two
    // platforms' layers, or two builds sharing a cache) never write the same partial file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let part = dir.join(format!("{}.part.{}.{n}", w.file, std::process::id()));
    match (&w.wheel.url, &w.wheel.path) {
        (Some(url), _) => download(http, url, &part, &what).await?,
        (None, Some(p)) => {
            let src = lock_dir.unwrap_or(Path::new(".")).join(p);
            tokio::fs::copy(&src, &part).await.map_err(|e| {
                bad_input(format!(
                    "{what}: wheel {} from pylock.toml: {e}",
                    src.display()
                ))
            })?;
        }
        (None, None) => {
            return Err(bad_input(format!(
                "pylock.toml: the wheel of {what} has neither url nor path"
            )))
        }
    }
    let (p, ww, wh) = (part.clone(), w.clone(), what.clone());
    tokio::task::spawn_blocking(move || verify(&p, &ww, &wh)).await??;
    tokio::fs::rename(&part, &dest).await?;
    tracing::debug!("downloaded {}", w.file);
    Ok(dest)
}

/// GET into `part`, resuming with `Range` after a dropped connection.
async fn download(http: &reqwest::Client, url: &str, part: &Path, what: &str) -> Result<()> {
    let mut attempt = 0;
    loop {
        let have = tokio::fs::metadata(part)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let mut rb = http.get(url);
        if have > 0 {
            rb = rb.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let result: Result<()> = async {
            let mut resp = rb.send().await?;
            let status = resp.status();
            if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
                // Already complete (or the server disagrees): the hash check decides.
                return Ok(());
            }
            if !status.is_success() {
                let e = net_err(format!(
                    "{what}: GET {url} answered HTTP {}",
                    status.as_u16()
                ));
                return Err(if status.is_client_error() {
                    bad_input(e.to_string())
                } else {
                    e
                });
            }
            let append = status == reqwest::StatusCode::PARTIAL_CONTENT;
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(part)
                .await?;
            while let Some(chunk) = resp.chunk().await? {
                f.write_all(&chunk).await?;
            }
            f.flush().await?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if crate::error::kind_of(&e) == crate::error::Kind::BadInput => return Err(e),
            Err(e) if attempt + 1 < ATTEMPTS => {
                tracing::warn!("{what}: download interrupted ({e:#}); resuming");
                tokio::time::sleep(Duration::from_millis(300 << attempt)).await;
                attempt += 1;
            }
            Err(e) => {
                let cause = e.chain().last().map(|c| c.to_string()).unwrap_or_default();
                return Err(net_err(format!("{what}: cannot download {url}: {cause}")));
            }
        }
    }
}
