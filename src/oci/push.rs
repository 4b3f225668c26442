//! Pushing an assembled image: blobs first (HEAD-skip, mount, stream or upload; bounded
//! concurrency, deduplicated by digest), then per-platform manifests by digest, then the tags.

use crate::oci::assemble::Assembled;
use crate::oci::blobstore::BlobStore;
use crate::oci::image::Descriptor;
use crate::oci::registry::{BlobStatus, Registry};
use crate::oci::{human_bytes, short};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Uploads at once; the distribution spec's implementations handle this comfortably.
pub const CONCURRENCY: usize = 4;

/// Where the base image's layers can be read from.
#[derive(Clone)]
pub struct BaseSource {
    pub registry: Arc<Registry>,
    pub repository: String,
}

pub struct Pushed {
    pub statuses: BTreeMap<String, BlobStatus>,
    pub bytes_uploaded: u64,
}

enum Source {
    Local,
    /// Readable from a repository (the base image's, or the shared dependency-layer pool).
    Remote(BaseSource),
}

/// Pushes everything, tags last. Nothing is tagged if any blob or manifest fails.
pub async fn push(
    target: &Arc<Registry>,
    repo: &str,
    tags: &[String],
    base: &BaseSource,
    image: &Assembled,
    store: &BlobStore,
    remote: &std::collections::HashMap<String, BaseSource>,
) -> Result<Pushed> {
    let mut blobs: BTreeMap<String, (Descriptor, Source)> = BTreeMap::new();
    for img in &image.images {
        blobs
            .entry(img.config.digest.clone())
            .or_insert((img.config.clone(), Source::Local));
        for l in &img.base_layers {
            // A base layer the builder wrote again (as eStargz) is in the store, not the base's.
            let written = l
                .annotations
                .contains_key(crate::oci::estargz::TOC_DIGEST_ANNOTATION)
                && store.path(&l.digest).exists();
            let source = if written {
                Source::Local
            } else {
                Source::Remote(base.clone())
            };
            blobs.entry(l.digest.clone()).or_insert((l.clone(), source));
        }
        for l in &img.new_layers {
            let source = remote
                .get(&l.digest)
                .map_or(Source::Local, |r| Source::Remote(r.clone()));
            blobs.entry(l.digest.clone()).or_insert((l.clone(), source));
        }
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (digest, (desc, source)) in blobs {
        let (target, sem, repo) = (target.clone(), sem.clone(), repo.to_string());
        let path = store.path(&digest);
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore");
            let t0 = Instant::now();
            let status = push_blob(&target, &repo, &desc, source, &path).await?;
            if status != BlobStatus::Skipped {
                tracing::info!(
                    "blob {} {:?} ({}, {:.1}s)",
                    short(&digest),
                    status,
                    human_bytes(desc.size),
                    t0.elapsed().as_secs_f64()
                );
            }
            anyhow::Ok((digest, status))
        });
    }
    let mut statuses = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        match r.context("upload task")? {
            Ok((d, s)) => {
                statuses.insert(d, s);
            }
            Err(e) => {
                tasks.abort_all();
                return Err(e);
            }
        }
    }
    // Per-platform manifests by digest, so the index (or tag) never points at something missing.
    if image.images.len() > 1 || image.top.media_type != image.images[0].manifest.media_type {
        for img in &image.images {
            target
                .put_manifest(
                    repo,
                    &img.manifest.digest,
                    &img.manifest.media_type,
                    &img.manifest_bytes,
                )
                .await?;
        }
    }
    target
        .put_manifest(
            repo,
            &image.top.digest,
            &image.top.media_type,
            &image.top_bytes,
        )
        .await?;
    tag(target, repo, tags, image).await?;
    let bytes_uploaded = target.uploaded.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Pushed {
        statuses,
        bytes_uploaded,
    })
}

/// Points `tags` at the image's top manifest (or index), which must already be pushed.
pub async fn tag(target: &Registry, repo: &str, tags: &[String], image: &Assembled) -> Result<()> {
    for tag in tags {
        target
            .put_manifest(repo, tag, &image.top.media_type, &image.top_bytes)
            .await?;
    }
    Ok(())
}

async fn push_blob(
    target: &Registry,
    repo: &str,
    desc: &Descriptor,
    source: Source,
    path: &std::path::Path,
) -> Result<BlobStatus> {
    if target.blob_exists(repo, &desc.digest).await? {
        return Ok(BlobStatus::Skipped);
    }
    match source {
        Source::Local => {
            target
                .upload_file(repo, &desc.digest, path, desc.size, None)
                .await?;
            Ok(BlobStatus::Uploaded)
        }
        Source::Remote(base) => {
            let mut session = None;
            if base.registry.host == target.host && base.repository != repo {
                match target.mount(repo, &desc.digest, &base.repository).await {
                    Ok(None) => return Ok(BlobStatus::Mounted),
                    Ok(Some(s)) => session = Some(s),
                    Err(e) => tracing::debug!(
                        "mount of {} failed ({e:#}); copying instead",
                        short(&desc.digest)
                    ),
                }
            }
            target
                .copy_blob_from(
                    repo,
                    &desc.digest,
                    desc.size,
                    &base.registry,
                    &base.repository,
                    session,
                )
                .await?;
            Ok(BlobStatus::Streamed)
        }
    }
}
