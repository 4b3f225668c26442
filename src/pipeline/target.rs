//! Phase 2, the target registry: one connection for every repository a plan pushes to (and
//! the shared layer pool), with push access proven before any dependency work, so a wrong
//! password or a read-only token fails in seconds, not after resolving and building.

use crate::oci::reference::Reference;
use crate::oci::registry::Registry;
use crate::pool::POOL_REPO;
use anyhow::Result;
use std::sync::Arc;
use std::time::Instant;

/// Connects to the registry of `images` (all on one registry) with push scopes for their
/// repositories and the pool, and pull scopes for `pulls` (a base image on the same registry).
pub async fn connect(
    sess: &super::Session<'_>,
    images: &[&Reference],
    pulls: &[String],
) -> Result<Arc<Registry>> {
    let t = Instant::now();
    let reg = open(sess, images, pulls, "pull,push").await?;
    for r in images {
        reg.check_push(&r.repository).await?;
    }
    sess.done("access", t);
    Ok(reg)
}

/// The same registry with pull scopes only, for what reads without pushing (`check --sbom`).
pub async fn connect_pull(
    sess: &super::Session<'_>,
    images: &[&Reference],
    pulls: &[String],
) -> Result<Arc<Registry>> {
    open(sess, images, pulls, "pull").await
}

async fn open(
    sess: &super::Session<'_>,
    images: &[&Reference],
    pulls: &[String],
    actions: &str,
) -> Result<Arc<Registry>> {
    let first = images[0];
    let mut scopes: Vec<String> = images
        .iter()
        .map(|r| r.repository.as_str())
        .chain([POOL_REPO])
        .map(|r| format!("repository:{r}:{actions}"))
        .collect();
    scopes.extend(pulls.iter().map(|r| format!("repository:{r}:pull")));
    Registry::connect(
        &first.registry,
        first.api_host(),
        first.plain_http,
        &sess.opts.registry_opts,
        scopes,
    )
    .await
}
