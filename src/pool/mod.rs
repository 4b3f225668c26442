//! The pool: the fleet's shared cache in the target registry, in one repository
//! ([`POOL_REPO`]) of small tagged manifests (empty config, one blob each) — dependency layers
//! (`deps-<cache key>`), locks (`lock-<input key>`) and wheels built from sdists — so that any
//! build, on any node, for any ML repo, mounts or downloads what another already made instead
//! of making it again. Every write is best effort: a registry that refuses only costs later
//! builds their reuse.

use crate::oci::blobstore::BlobStore;
use crate::oci::image::{Descriptor, Manifest};
use crate::oci::layer::Layer;
use crate::oci::referrers::{ensure_blob, EMPTY_CONFIG, EMPTY_MEDIA_TYPE};
use crate::oci::registry::Registry;
use crate::wheels::layers::{annotated, descriptor, DepLayer};
use anyhow::Result;
use std::collections::HashMap;

/// Repository of the shared dependency-layer pool in the target registry: one small manifest
/// per layer, tagged `deps-<cache key>`. Any build, on any node, for any ML repo, finds layers
/// there and mounts them instead of uploading.
pub const POOL_REPO: &str = "flops-cache/deps";

fn pool_tag(key: &str) -> String {
    format!("deps-{key}")
}

/// Makes sure the pool has the empty config blob its manifests point at; returns its digest.
async fn pool_config(reg: &Registry, pool: &str, store: &BlobStore) -> Result<String> {
    ensure_blob(reg, pool, store, EMPTY_CONFIG).await
}

/// PUTs a one-layer pool manifest (empty config) under `tag`.
async fn put_pool_manifest(
    reg: &Registry,
    pool: &str,
    tag: &str,
    config: &str,
    layer: Descriptor,
) -> Result<()> {
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(crate::oci::image::OCI_MANIFEST.into()),
        artifact_type: None,
        config: Descriptor::new(EMPTY_MEDIA_TYPE, config, EMPTY_CONFIG.len() as u64),
        layers: vec![layer],
        subject: None,
        annotations: Default::default(),
    };
    reg.put_manifest(
        pool,
        tag,
        crate::oci::image::OCI_MANIFEST,
        &serde_json::to_vec(&manifest)?,
    )
    .await
}

/// Layers of the pool for the given keys (missing keys are simply absent).
pub async fn pool_lookup(
    reg: &std::sync::Arc<Registry>,
    pool: &str,
    keys: &[String],
) -> HashMap<String, Layer> {
    let mut tasks = tokio::task::JoinSet::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    for key in keys {
        let (reg, pool, key, sem) = (reg.clone(), pool.to_string(), key.clone(), sem.clone());
        tasks.spawn(async move {
            let _p = sem.acquire_owned().await.ok()?;
            let (bytes, _, _) = reg.get_manifest(&pool, &pool_tag(&key)).await.ok()?;
            let m: Manifest = serde_json::from_slice(&bytes).ok()?;
            annotated(m.layers.first()?).filter(|(k, _)| *k == key)
        });
    }
    let mut found = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some((k, l))) = r {
            found.insert(k, l);
        }
    }
    found
}

/// Adds layers to the pool: blobs mounted from `from_repo` (where they were just pushed), or
/// uploaded from the local store, then one manifest per layer. Best effort: a registry that
/// refuses only costs later builds their reuse, so failures are warnings.
pub async fn pool_publish(
    reg: &std::sync::Arc<Registry>,
    pool: &str,
    from_repo: &str,
    store: &BlobStore,
    layers: &[(DepLayer, Layer)],
) {
    let result: Result<()> = async {
        let config_digest = pool_config(reg, pool, store).await?;
        for (dep, layer) in layers {
            if !reg.blob_exists(pool, &layer.digest).await? {
                let session = match reg.mount(pool, &layer.digest, from_repo).await {
                    Ok(None) => None,
                    Ok(Some(s)) => Some(Some(s)),
                    Err(_) => Some(None),
                };
                if let Some(session) = session {
                    reg.upload_file(
                        pool,
                        &layer.digest,
                        &store.path(&layer.digest),
                        layer.size,
                        session,
                    )
                    .await?;
                }
            }
            put_pool_manifest(
                reg,
                pool,
                &pool_tag(&dep.key),
                &config_digest,
                descriptor(layer, dep),
            )
            .await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!("could not add dependency layers to the shared pool {pool}: {e:#}");
    }
}

const LOCK_MEDIA_TYPE: &str = "application/vnd.oakestra.flops.pylock.v1+toml";

/// A lock stored in the pool under its input key (`lock-<key>`), if any.
pub async fn pool_lock(reg: &Registry, pool: &str, key: &str) -> Option<String> {
    let (bytes, _, _) = reg.get_manifest(pool, &format!("lock-{key}")).await.ok()?;
    let m: Manifest = serde_json::from_slice(&bytes).ok()?;
    let l = m
        .layers
        .first()
        .filter(|l| l.media_type == LOCK_MEDIA_TYPE)?;
    String::from_utf8(reg.get_blob_bytes(pool, &l.digest).await.ok()?).ok()
}

/// Stores a lock in the pool under its input key. Best effort, like [`pool_publish`].
pub async fn pool_put_lock(reg: &Registry, pool: &str, key: &str, store: &BlobStore, lock: &str) {
    let result: Result<()> = async {
        let blob = ensure_blob(reg, pool, store, lock.as_bytes()).await?;
        let layer = Descriptor::new(LOCK_MEDIA_TYPE, &blob, lock.len() as u64);
        put_pool_blob_manifest(reg, pool, &format!("lock-{key}"), store, layer).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!("could not store the lock in the shared pool {pool}: {e:#}");
    }
}

/// Tags a one-blob manifest (empty config) in the pool; the blob must already be there.
pub async fn put_pool_blob_manifest(
    reg: &Registry,
    pool: &str,
    tag: &str,
    store: &BlobStore,
    blob: Descriptor,
) -> Result<()> {
    let config = pool_config(reg, pool, store).await?;
    put_pool_manifest(reg, pool, tag, &config, blob).await
}
