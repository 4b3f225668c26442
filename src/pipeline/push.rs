//! Phase 7, push: every image's blobs and manifests, then — only when all are in the
//! registry — every image's tags, then the shared layer pool. A later image mounts what an
//! earlier one of the plan pushed, so it uploads only its own layers.

use super::base::Base;
use super::deps::DepLayers;
use super::image::ImageSpec;
use super::Session;
use crate::oci::append::{self, Report};
use crate::oci::assemble::Assembled;
use crate::oci::push::{self as oci_push, BaseSource};
use crate::oci::referrers;
use crate::oci::registry::{BlobStatus, Registry};
use crate::pool;
use crate::sbom;
use anyhow::Result;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Pushes `images` (in order), then each platform manifest's SBOM (`sboms`: per image, per
/// platform, empty for none) as an OCI referrer, then the tags of all; returns one report per
/// image. `home` names the repository each dependency group's new layers were uploaded to.
pub async fn push_all(
    sess: &Session<'_>,
    reg: &Arc<Registry>,
    base: &Base,
    deps: &DepLayers,
    images: &[(ImageSpec, Assembled)],
    sboms: &[Vec<Vec<u8>>],
    home: &[String],
) -> Result<Vec<Report>> {
    let t = Instant::now();
    let base_src = BaseSource {
        registry: base.registry.clone(),
        repository: base.reference.repository.clone(),
    };
    let mut remote = deps.mount_from.clone();
    let mut pushed = Vec::new();
    for (spec, assembled) in images {
        pushed.push(
            push_one(
                sess,
                reg,
                &base_src,
                deps,
                home,
                spec,
                assembled,
                &mut remote,
            )
            .await?,
        );
    }
    let mut attached = Vec::new();
    for ((spec, assembled), docs) in images.iter().zip(sboms) {
        attached.push(attach_sboms(sess, reg, spec, assembled, docs).await?);
    }
    // Every fixed tag is checked before any tag is written: a refused move tags nothing.
    let mut moved = Vec::new();
    for (spec, assembled) in images {
        moved.push(fixed_tag_move(sess, reg, spec, assembled).await?);
    }
    for (spec, assembled) in images {
        oci_push::tag(reg, &spec.target.repository, &spec.tags, assembled).await?;
    }
    publish_to_pool(sess, reg, deps, home).await;
    sess.done("push", t);
    let phases = sess.timings();
    Ok(images
        .iter()
        .zip(pushed)
        .zip(attached)
        .zip(moved)
        .map(|((((spec, assembled), (statuses, bytes)), sboms), moved)| {
            let name = format!(
                "{}/{}:{}",
                spec.target.registry, spec.target.repository, spec.tags[0]
            );
            let mut r = append::report(
                &name,
                assembled,
                &statuses,
                "skipped",
                bytes,
                append::Phases(phases.0.clone()),
            );
            for (p, sbom) in r.platforms.iter_mut().zip(sboms) {
                p.sbom = Some(sbom);
            }
            r.moved = moved;
            r
        })
        .collect())
}

/// Where the image's fixed tag (a commit's) names another image already: with
/// `--refresh-lock` the move, said in the log and the report; else a conflict error naming
/// both digests, so that whoever built last does not decide what every node runs.
async fn fixed_tag_move(
    sess: &Session<'_>,
    reg: &Registry,
    spec: &ImageSpec,
    assembled: &Assembled,
) -> Result<Option<append::TagMove>> {
    let (repo, tag, to) = (
        &spec.target.repository,
        &spec.tags[0],
        &assembled.top.digest,
    );
    if !spec.fixed_tag {
        return Ok(None);
    }
    // A registry that does not answer fails the build here: taking it for "no tag yet" would
    // let this build move a tag it must not.
    let Some(from) = reg.tag_digest(repo, tag).await?.filter(|d| d != to) else {
        return Ok(None);
    };
    let name = format!("{}/{repo}:{tag}", spec.target.registry);
    if !sess.opts.refresh_lock {
        return Err(crate::error::conflict(format!(
            "{name} already names {from}, and this build made {to}: a commit's {} tag is not moved \
             (the images differ in their lock, builder version, options or source; nothing was tagged; \
             the new image is in the registry as {}/{repo}@{to}). Pass --refresh-lock to move it",
            spec.role, spec.target.registry
        )));
    }
    tracing::warn!("moving {name} from {from} to {to} (--refresh-lock)");
    sess.observe(&format!("moved {name} from {from} to {to}"))
        .await;
    Ok(Some(append::TagMove {
        tag: name,
        from,
        to: to.clone(),
    }))
}

/// One image's blobs and manifests (no tag): each blob's status, and the bytes uploaded for
/// it (dependency layers uploaded while they were built included). What it holds is added to
/// `remote`, so the next images of the plan mount it.
#[allow(clippy::too_many_arguments)]
async fn push_one(
    sess: &Session<'_>,
    reg: &Arc<Registry>,
    base_src: &BaseSource,
    deps: &DepLayers,
    home: &[String],
    spec: &ImageSpec,
    assembled: &Assembled,
    remote: &mut HashMap<String, BaseSource>,
) -> Result<(std::collections::BTreeMap<String, BlobStatus>, u64)> {
    let repo = &spec.target.repository;
    let before = reg.uploaded.load(Ordering::Relaxed);
    let mut result =
        oci_push::push(reg, repo, &[], base_src, assembled, &sess.store, remote).await?;
    let mut bytes = reg.uploaded.load(Ordering::Relaxed) - before;
    // Dependency layers this image's repository received while they were built.
    for (g, (digests, size)) in deps.uploaded_early.iter().enumerate() {
        if home.get(g) == Some(repo) && g <= spec.level {
            bytes += size;
            for d in digests {
                if let Some(st) = result.statuses.get_mut(d) {
                    *st = BlobStatus::Uploaded;
                }
            }
        }
    }
    let here = BaseSource {
        registry: reg.clone(),
        repository: repo.clone(),
    };
    for img in &assembled.images {
        for l in img.base_layers.iter().chain(&img.new_layers) {
            remote
                .entry(l.digest.clone())
                .or_insert_with(|| here.clone());
        }
    }
    Ok((result.statuses, bytes))
}

/// The dependency layers the pool lacks, published from the repository of their group's
/// first image (best effort).
async fn publish_to_pool(
    sess: &Session<'_>,
    reg: &Arc<Registry>,
    deps: &DepLayers,
    home: &[String],
) {
    let by_group: HashMap<String, usize> = deps
        .platforms
        .iter()
        .flat_map(|p| {
            p.groups
                .iter()
                .enumerate()
                .flat_map(|(g, l)| l.iter().map(move |d| (d.key.clone(), g)))
        })
        .collect();
    for (g, repo) in home.iter().enumerate() {
        let new: Vec<_> = deps
            .new_in_pool
            .iter()
            .filter(|(d, _)| by_group.get(&d.key) == Some(&g))
            .cloned()
            .collect();
        pool::pool_publish(reg, pool::POOL_REPO, repo, &sess.store, &new).await;
    }
}

/// Attaches one SBOM per platform manifest of an image; returns the artifact manifests'
/// digests.
async fn attach_sboms(
    sess: &Session<'_>,
    reg: &Registry,
    spec: &ImageSpec,
    assembled: &Assembled,
    docs: &[Vec<u8>],
) -> Result<Vec<String>> {
    let mut digests = Vec::new();
    for (img, doc) in assembled.images.iter().zip(docs) {
        let artifact = referrers::Artifact {
            artifact_type: sbom::MEDIA_TYPE,
            bytes: doc,
            annotations: [(
                "org.opencontainers.image.created".to_string(),
                spec.changes.created.clone(),
            )]
            .into(),
            title: "sbom.spdx.json",
        };
        let desc = referrers::attach(
            reg,
            &spec.target.repository,
            &sess.store,
            &artifact,
            &img.manifest,
        )
        .await?;
        tracing::info!(
            "SBOM of {} {}/{} attached: {}",
            spec.role,
            img.platform.os,
            img.platform.architecture,
            desc.digest
        );
        digests.push(desc.digest);
    }
    Ok(digests)
}
