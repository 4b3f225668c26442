//! The resolver the builder runs, brought by the builder itself: the pinned uv
//! (`base-layers/uv-version`) from PATH when it is that version, else its wheel from the package
//! index, checked against the sha256 pinned in `base-layers/uv-wheels` and unpacked into the
//! cache (`<cache>/tools/uv-<version>/uv`), so that the binary and a registry are all a first
//! build needs. `--uv PATH` always wins.

use crate::error::bad_input;
use crate::resolve::UV_VERSION;
use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Machine, wheel file name and sha256 of the pinned uv's wheels.
const WHEELS: &str = include_str!("../../base-layers/uv-wheels");

/// The uv this process obtained ([`ensure`]), for later callers that only know `--uv`.
static OBTAINED: OnceLock<PathBuf> = OnceLock::new();

/// The uv obtained by [`ensure`] in this process, if any.
pub fn obtained() -> Option<PathBuf> {
    OBTAINED.get().cloned()
}

/// The pinned wheel for this machine: (file name, sha256 hex).
fn pinned_wheel() -> Option<(&'static str, &'static str)> {
    WHEELS
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?, f.next()?))
        })
        .find(|(arch, _, _)| *arch == std::env::consts::ARCH)
        .map(|(_, file, sha)| (file, sha))
}

/// The `uv` on PATH if it is the pinned version.
fn pinned_on_path() -> Option<PathBuf> {
    let uv = crate::wheels::bytecode::which("uv")?;
    (super::uv_version(&uv).ok()? == UV_VERSION.trim()).then_some(uv)
}

/// Makes sure a uv is there for resolving: `explicit` (`--uv`), the pinned uv on PATH, the one
/// kept in `cache`, or the pinned wheel fetched from `index` (a PEP 691 simple index) now.
/// Returns None when `explicit` is given or a uv of another version is on PATH and the index
/// cannot be reached (the caller then uses it, with a warning, as before).
///
/// Errors: no uv anywhere and the wheel cannot be fetched (naming the index and the file), or
/// the fetched wheel does not match its pinned sha256.
pub async fn ensure(
    explicit: Option<&Path>,
    cache: &Path,
    index: &str,
    http: &reqwest::Client,
) -> Result<Option<PathBuf>> {
    if explicit.is_some() {
        return Ok(None);
    }
    if let Some(uv) = OBTAINED.get() {
        return Ok(Some(uv.clone()));
    }
    let found = tokio::task::spawn_blocking(pinned_on_path).await?;
    let uv = match found {
        Some(uv) => uv,
        None => match obtain(cache, index, http).await {
            Ok(uv) => uv,
            Err(e) if super::find_uv(None).is_ok() => {
                tracing::warn!("{e:#}; using the uv on PATH");
                return Ok(None);
            }
            Err(e) => return Err(e),
        },
    };
    Ok(Some(OBTAINED.get_or_init(|| uv).clone()))
}

/// The cached pinned uv, or its wheel fetched from `index` and unpacked into the cache.
async fn obtain(cache: &Path, index: &str, http: &reqwest::Client) -> Result<PathBuf> {
    let pin = UV_VERSION.trim();
    let dir = cache.join("tools").join(format!("uv-{pin}"));
    let uv = dir.join("uv");
    if uv.is_file() {
        return Ok(uv);
    }
    let (file, sha) = pinned_wheel().ok_or_else(|| {
        anyhow::anyhow!(
            "no uv on PATH, and no pinned uv wheel for {} (base-layers/uv-wheels): install uv {pin} or pass --uv PATH",
            std::env::consts::ARCH
        )
    })?;
    tracing::info!("fetching uv {pin} ({file}) from {index}");
    let url = wheel_url(http, index, file).await?;
    let bytes = http
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("fetching {url}"))?
        .bytes()
        .await
        .with_context(|| format!("fetching {url}"))?;
    let got = hex::encode(Sha256::digest(&bytes));
    if got != sha {
        return Err(bad_input(format!(
            "{url}: sha256 {got}, but base-layers/uv-wheels pins {sha} for {file}; not using it"
        )));
    }
    let dir2 = dir.clone();
    tokio::task::spawn_blocking(move || unpack(&bytes, &dir2, pin)).await??;
    Ok(uv)
}

/// The wheel's URL on the index's project page for `uv` (PEP 691 JSON).
async fn wheel_url(http: &reqwest::Client, index: &str, file: &str) -> Result<String> {
    let page_url = format!("{}/uv/", index.trim_end_matches('/'));
    let no = |why: String| {
        anyhow::anyhow!(
            "no uv on PATH, and the pinned uv wheel {file} could not be found on {page_url}: {why} (install uv {} or pass --uv PATH)",
            UV_VERSION.trim()
        )
    };
    let page: serde_json::Value = http
        .get(&page_url)
        .header("Accept", "application/vnd.pypi.simple.v1+json")
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| no(e.to_string()))?
        .json()
        .await
        .map_err(|e| no(format!("not a PEP 691 JSON page ({e})")))?;
    let url = page["files"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["filename"] == file)
        .and_then(|f| f["url"].as_str())
        .ok_or_else(|| no("the page does not list it".into()))?;
    // Relative file URLs are relative to the project page.
    let base = reqwest::Url::parse(&page_url).map_err(|e| no(e.to_string()))?;
    Ok(base.join(url).map_err(|e| no(e.to_string()))?.to_string())
}

/// Writes the wheel's `uv-<pin>.data/scripts/uv` as `dir/uv` (mode 755), atomically.
fn unpack(wheel: &[u8], dir: &Path, pin: &str) -> Result<()> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(wheel))
        .map_err(|e| bad_input(format!("the uv {pin} wheel is not a zip: {e}")))?;
    let member = format!("uv-{pin}.data/scripts/uv");
    let mut binary = Vec::new();
    zip.by_name(&member)
        .map_err(|e| bad_input(format!("the uv {pin} wheel has no {member}: {e}")))?
        .read_to_end(&mut binary)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(tmp.path(), &binary)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    tmp.persist(dir.join("uv"))
        .with_context(|| format!("keeping uv in {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_wheels_are_the_pinned_version_for_both_machines() {
        let pin = UV_VERSION.trim();
        for arch in ["x86_64", "aarch64"] {
            let line = WHEELS
                .lines()
                .find(|l| l.starts_with(&format!("{arch} ")))
                .unwrap_or_else(|| panic!("no {arch} line in base-layers/uv-wheels"));
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(f[1].starts_with(&format!("uv-{pin}-")), "{line}");
            assert_eq!(f[2].len(), 64, "{line}");
        }
        assert!(pinned_wheel().is_some());
    }
}
