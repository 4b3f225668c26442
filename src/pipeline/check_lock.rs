//! `check`'s resolution: the lock `build` would make, resolved the same way (the same
//! requirement sets, the spec's Python, the image's platforms), so that a repo's CI fails on
//! what the build would fail on: unknown packages, versions the index does not have, conflicts,
//! conda-only packages. Only metadata is downloaded; nothing is built or pushed. The lock is
//! kept in the cache under the key `build` looks for (when the base has the spec's Python).

use super::lock::{fresh, resolve_options, Sets};
use super::source::{CheckLock, CheckReport};
use crate::oci::blobstore::write_atomic;
use crate::oci::reference::Platform;
use crate::resolve::{self, ResolveOptions, ResolveTarget};
use crate::wheels::pylock;
use anyhow::Result;
use std::path::Path;

/// Resolves `check`'s requirements with the runtimes' `sets` for `platforms`, as `build` would.
///
/// Errors: every cause the build's resolution would give, in one error (exit code 2 for bad
/// input).
pub async fn resolve_as_build(
    check: &CheckReport,
    sets: &Sets<'_>,
    platforms: &[Platform],
    builder: &ResolveOptions,
    glibc: (u32, u32),
    cache: &Path,
) -> Result<CheckLock> {
    let python = check
        .python
        .clone()
        .unwrap_or_else(|| super::base::DEFAULT_PYTHON.to_string());
    let targets = platforms
        .iter()
        .map(|p| {
            let t = crate::wheels::tags::Target::new(
                &p.architecture,
                &format!("{python}.0"),
                crate::wheels::tags::Libc::Glibc(glibc.0, glibc.1),
            )?;
            Ok(ResolveTarget {
                platform: format!("{}/{}", p.os, p.architecture),
                arch: t.arch,
                glibc,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let opts = resolve_options(builder, check);
    let input: Vec<(&'static str, String)> = sets
        .iter()
        .map(|(n, rt)| (*n, resolve::lock_input(&check.requirements, &[rt])))
        .collect();
    let key = resolve::lock_key(&input, &python, &targets, &opts);
    let local = cache.join("locks").join(format!("pylock.{key}.toml"));
    let (text, cached) = match std::fs::read_to_string(&local) {
        Ok(text) => (text, true),
        Err(_) => {
            let text = fresh(check, sets, python.clone(), targets, opts, cache).await?;
            write_atomic(&local, text.as_bytes())?;
            (text, false)
        }
    };
    Ok(CheckLock {
        packages: pylock::parse(&text)?.packages.len(),
        python,
        cached,
    })
}
