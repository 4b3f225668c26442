//! Packages that ship only an sdist (antlr4-python3-runtime for hydra-core, …): built once per
//! fleet into a wheel with uv (pinned), in a temporary directory, in an isolated build
//! environment, bounded in time — and accepted only when the wheel is pure Python
//! (`py3-none-any`), so it fits every platform and no compiler output enters an image.
//!
//! Built wheels are content-addressed by the sdist's sha256 and kept in the local cache and in
//! the registry's shared pool (`flops-cache/deps:wheel-<sdist sha256>`), so another node with
//! an empty disk downloads the wheel instead of building it. `--no-build` forbids building.

use crate::error::bad_input;
use crate::oci::blobstore::{write_atomic, BlobStore, EntryLock};
use crate::oci::image::{Descriptor, Manifest};
use crate::oci::registry::Registry;
use crate::wheels::fetch;
use crate::wheels::pylock::{Selected, Wheel};
use crate::wheels::tags::WheelName;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Longest an sdist build may take.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(300);
const WHEEL_MEDIA_TYPE: &str = "application/vnd.oakestra.flops.wheel.v1+zip";
const TITLE: &str = "org.opencontainers.image.title";
/// Zip timestamps of built wheels (1980-01-01, the earliest zip allows): reproducible bytes.
const SOURCE_DATE_EPOCH: &str = "315532800";

/// A wheel built from an sdist, and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct Built {
    pub name: String,
    pub version: String,
    /// The built wheel's file name.
    pub wheel: String,
    /// `built`, `cache` (local) or `pool` (built by another node).
    pub source: &'static str,
}

#[derive(Serialize, Deserialize)]
struct Record {
    file: String,
    sha256: String,
    size: u64,
}

fn record_path(store: &BlobStore, sdist_sha: &str) -> PathBuf {
    store.root().join("built").join(format!("{sdist_sha}.json"))
}

fn as_selected(s: &Selected, r: &Record) -> Selected {
    Selected {
        name: s.name.clone(),
        version: s.version.clone(),
        file: r.file.clone(),
        wheel: Wheel {
            name: Some(r.file.clone()),
            url: None,
            path: None,
            size: Some(r.size),
            hashes: [("sha256".to_string(), r.sha256.clone())].into(),
        },
        sha256: r.sha256.clone(),
        sdist: false,
        built_from: Some(Box::new(s.clone())),
    }
}

/// Puts a wheel file where the fetch phase finds it (`<cache>/wheels/<sha256>/<file>`) and
/// remembers it for the sdist.
fn keep(store: &BlobStore, sdist_sha: &str, file: &Path) -> Result<Record> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .context("wheel file name")?
        .to_string();
    let bytes = std::fs::read(file)?;
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let dest = store.root().join("wheels").join(&sha).join(&name);
    write_atomic(&dest, &bytes)?;
    let r = Record {
        file: name,
        sha256: sha,
        size: bytes.len() as u64,
    };
    write_atomic(&record_path(store, sdist_sha), &serde_json::to_vec(&r)?)?;
    Ok(r)
}

fn local(store: &BlobStore, sdist_sha: &str) -> Option<Record> {
    let r: Record =
        serde_json::from_slice(&std::fs::read(record_path(store, sdist_sha)).ok()?).ok()?;
    store
        .root()
        .join("wheels")
        .join(&r.sha256)
        .join(&r.file)
        .exists()
        .then_some(r)
}

fn pool_tag(sdist_sha: &str) -> String {
    format!("wheel-{sdist_sha}")
}

async fn from_pool(
    reg: &Registry,
    pool: &str,
    store: &BlobStore,
    sdist_sha: &str,
) -> Option<Record> {
    let (bytes, _, _) = reg.get_manifest(pool, &pool_tag(sdist_sha)).await.ok()?;
    let m: Manifest = serde_json::from_slice(&bytes).ok()?;
    let l = m
        .layers
        .first()
        .filter(|l| l.media_type == WHEEL_MEDIA_TYPE)?;
    let file = l.annotations.get(TITLE)?.clone();
    let tmp = tempfile::tempdir().ok()?;
    reg.download_blob(pool, &l.digest, l.size, store)
        .await
        .ok()?;
    let path = tmp.path().join(&file);
    std::fs::copy(store.path(&l.digest), &path).ok()?;
    keep(store, sdist_sha, &path).ok()
}

async fn to_pool(reg: &Registry, pool: &str, store: &BlobStore, sdist_sha: &str, r: &Record) {
    let result: Result<()> = async {
        let path = store.root().join("wheels").join(&r.sha256).join(&r.file);
        let digest = format!("sha256:{}", r.sha256);
        if !reg.blob_exists(pool, &digest).await? {
            reg.upload_file(pool, &digest, &path, r.size, None).await?;
        }
        let mut layer = Descriptor::new(WHEEL_MEDIA_TYPE, &digest, r.size);
        layer.annotations.insert(TITLE.into(), r.file.clone());
        crate::pool::put_pool_blob_manifest(reg, pool, &pool_tag(sdist_sha), store, layer).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(
            "could not add the built wheel {} to the shared pool: {e:#}",
            r.file
        );
    }
}

/// What building is allowed to do.
#[derive(Debug, Clone)]
pub struct BuildPolicy {
    pub uv: Option<PathBuf>,
    pub no_build: bool,
    pub index_url: Option<String>,
}

/// Replaces every sdist entry of `selected` by a pure wheel (cache, pool, or built now); the
/// built ones are reported. Several sdists that may not be built fail in one error.
#[allow(clippy::too_many_arguments)]
pub async fn materialize(
    selected: &mut [Selected],
    platform: &str,
    http: &reqwest::Client,
    reg: &Arc<Registry>,
    pool: &str,
    store: &BlobStore,
    lock_dir: &Path,
    policy: &BuildPolicy,
) -> Result<Vec<Built>> {
    let sdists: Vec<usize> = (0..selected.len()).filter(|i| selected[*i].sdist).collect();
    if sdists.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for i in sdists {
        let s = selected[i].clone();
        // One build per sdist on this node, however many builders share the cache.
        let _entry = EntryLock::acquire(&record_path(store, &s.sha256)).await?;
        let (record, source) = if let Some(r) = local(store, &s.sha256) {
            (r, "cache")
        } else if let Some(r) = from_pool(reg, pool, store, &s.sha256).await {
            (r, "pool")
        } else if policy.no_build {
            refused.push(format!(
                "{} {} (only an sdist: {})",
                s.name, s.version, s.file
            ));
            continue;
        } else {
            if let Some(index) = &policy.index_url {
                // A lock from the pool needs no resolver, but a build from an sdist does.
                crate::resolve::uv::ensure(policy.uv.as_deref(), store.root(), index, http).await?;
            }
            let slots = Arc::new(tokio::sync::Semaphore::new(1));
            let path = fetch::fetch_all(
                http,
                store.root(),
                Some(lock_dir),
                std::slice::from_ref(&s),
                &slots,
            )
            .await?
            .remove(0);
            let (pol, sd, what) = (
                policy.clone(),
                path.clone(),
                format!("{} {} for {platform}", s.name, s.version),
            );
            crate::resolve::sandbox::count_runs(&s.name, 1);
            let wheel = tokio::task::spawn_blocking(move || build(&sd, &pol, &what)).await??;
            let r = keep(store, &s.sha256, &wheel.0)?;
            drop(wheel);
            to_pool(reg, pool, store, &s.sha256, &r).await;
            (r, "built")
        };
        tracing::info!("{} {}: wheel {} ({source})", s.name, s.version, record.file);
        out.push(Built {
            name: s.name.clone(),
            version: s.version.clone(),
            wheel: record.file.clone(),
            source,
        });
        selected[i] = as_selected(&s, &record);
    }
    if !refused.is_empty() {
        return Err(bad_input(format!(
            "--no-build: these packages ship only an sdist for {platform}, and building them is turned off: {}",
            refused.join(", ")
        )));
    }
    Ok(out)
}

/// `uv build --wheel` of one sdist in a temporary directory; returns the wheel (kept alive
/// with its directory) when it is pure.
fn build(sdist: &Path, policy: &BuildPolicy, what: &str) -> Result<(PathBuf, tempfile::TempDir)> {
    let uv = crate::resolve::find_uv(policy.uv.as_deref())?;
    let dir = tempfile::Builder::new().prefix("flops-sdist-").tempdir()?;
    let out = dir.path().join("dist");
    tracing::info!(
        "building {what} from its sdist with uv (isolated, at most {} s)",
        BUILD_TIMEOUT.as_secs()
    );
    // Package code: in the sandbox, reading the sdist, writing only its own directory.
    let sandbox = crate::resolve::sandbox::Sandbox::new()?;
    let sdist_dir = sdist.parent().unwrap_or(Path::new("/"));
    let mut cmd = sandbox.command(&uv, &[sdist_dir], &[dir.path()]);
    cmd.args(["build", "--wheel", "--quiet", "--system-certs", "--out-dir"])
        .arg(&out)
        .arg(sdist)
        .current_dir(dir.path())
        .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(i) = &policy.index_url {
        cmd.args(["--index-url", i]);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", uv.display()))?;
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if started.elapsed() > BUILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(bad_input(format!("{what}: building the sdist took longer than {} s; pin a version that ships a wheel", BUILD_TIMEOUT.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    if !status.success() {
        let last: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = last[last.len().saturating_sub(3)..].join(" ");
        return Err(bad_input(format!("{what}: building its sdist failed (it may need a compiler or system libraries): {tail}")));
    }
    let wheel = std::fs::read_dir(&out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| bad_input(format!("{what}: building its sdist produced no wheel")))?;
    let file = wheel
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_string();
    let parsed = WheelName::parse(&file)?;
    if !is_pure(&parsed) {
        return Err(bad_input(format!("{what}: its sdist builds a compiled wheel ({file}), which would only fit the builder's own machine; pin a version that ships wheels for this platform")));
    }
    Ok((wheel, dir))
}

/// `py3-none-any` (or `py2.py3-none-any`): pure Python, fits every platform.
fn is_pure(w: &WheelName) -> bool {
    w.tags.iter().all(|t| {
        let mut parts = t.split('-');
        let (py, abi, plat) = (parts.next(), parts.next(), parts.next());
        py.is_some_and(|p| p.starts_with("py")) && abi == Some("none") && plat == Some("any")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pure_wheels_are_accepted() {
        for (file, pure) in [
            ("antlr4_python3_runtime-4.9.3-py3-none-any.whl", true),
            ("six-1.16.0-py2.py3-none-any.whl", true),
            ("fastmath-0.1-cp311-cp311-linux_x86_64.whl", false),
            ("abi-1.0-cp311-abi3-any.whl", false),
        ] {
            assert_eq!(is_pure(&WheelName::parse(file).unwrap()), pure, "{file}");
        }
    }
}
