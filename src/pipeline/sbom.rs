//! Phase 6½, bills of materials: one SPDX document per platform image (see [`crate::sbom`]),
//! written after assembly and attached by the push phase as OCI referrers before any tag;
//! [`preview`] writes the same documents without building or pushing (`check --sbom`).

use super::base::{Base, Finder};
use super::{deps, fl_actors, lock, target, CheckReport, Options, Session};
use crate::notify::Notifier;
use crate::repo::augment::Runtime;
use crate::sbom::{self, license, BasePackage, Contents};
use crate::wheels::pylock::Selected;
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// What an image holds besides its dependencies: the repo at a commit or a served model, and
/// the files the builder placed (path in the image, bytes).
#[derive(Clone, Default)]
pub struct Parts {
    pub source: Option<(String, String)>,
    pub model: Option<(String, String, String)>,
    /// The package name of the files (`flops-fl-learner`).
    pub files: Option<crate::sbom::PlacedFiles<'static>>,
}

/// One image as its SBOM names it.
pub struct Described {
    /// `repository:tag`, without the registry host.
    pub image: String,
    /// Dependency groups `0..=level` are in it.
    pub level: usize,
    /// RFC 3339.
    pub created: String,
    pub parts: Parts,
}

/// One document per image and platform (`base.images`' order, which is the assembled
/// images'); `groups` holds each platform's wheels per dependency group. None with
/// `--sbom none`.
pub async fn documents(
    sess: &Session<'_>,
    base: &Base,
    groups: &[(String, Vec<Vec<Selected>>)],
    images: &[Described],
) -> Result<Vec<Vec<Vec<u8>>>> {
    if !sess.opts.sbom {
        return Ok(vec![Vec::new(); images.len()]);
    }
    let t = Instant::now();
    let wheels: Vec<&Selected> = groups
        .iter()
        .flat_map(|(_, g)| g.iter().flatten())
        .collect();
    let licenses = license::licenses(sess.store.root(), &wheels).await?;
    let mut out = Vec::new();
    for img in images {
        let mut docs = Vec::new();
        for b in &base.images {
            let platform = format!("{}/{}", b.platform.os, b.platform.architecture);
            let (_, g) = groups
                .iter()
                .find(|(p, _)| *p == platform)
                .expect("every base platform has a selection");
            let packages = g[..=img.level.min(g.len() - 1)]
                .iter()
                .flatten()
                .map(|w| (w, licenses[&w.sha256].clone()))
                .collect();
            let contents = Contents {
                image: img.image.clone(),
                platform,
                created: img.created.clone(),
                base: BasePackage {
                    repository_url: format!(
                        "{}/{}",
                        base.reference.registry, base.reference.repository
                    ),
                    tag: base.reference.tag.clone().unwrap_or_default(),
                    digest: b.digest.clone(),
                },
                source: img.parts.source.clone(),
                model: img.parts.model.clone(),
                files: img.parts.files.clone(),
                packages,
            };
            docs.push(sbom::document(&contents));
        }
        out.push(docs);
    }
    sess.done("sbom", t);
    Ok(out)
}

/// The SBOMs `build` would attach to the FL images of a checked-out commit, without building
/// or pushing: role → platform → document. The base and the lock are found as a build finds
/// them (pull access to `opts.registry` only); packages locked only as an sdist are described
/// as locked, and their license is known only once a build made their wheel.
pub async fn preview(
    opts: &Options,
    check: &CheckReport,
    root: &Path,
    images: &[(&'static str, &Runtime)],
) -> Result<BTreeMap<String, BTreeMap<String, serde_json::Value>>> {
    let notifier = Notifier::disabled();
    let sess = Session::new(opts, &notifier)?;
    let (_, sets) = fl_actors::fl_sets();
    let targets = fl_actors::targets(opts, check, images)?;
    let refs: Vec<_> = targets.iter().collect();
    let reg = target::connect_pull(&sess, &refs, &fl_actors::base_pulls(opts, &targets[0])).await?;
    let finder = Finder::new(opts, &targets[0], &reg);
    let (base, locked) =
        lock::base_and_lock(&sess, &finder, check, root, &sets, opts.strict_python).await?;
    let roles: Vec<&str> = images.iter().map(|(r, _)| *r).collect();
    let subsets = deps::subsets(&locked, &roles);
    let mut groups = Vec::new();
    for b in &base.images {
        let (platform, selected) = deps::select(opts, &base, b, &locked)?;
        groups.push((platform, deps::split(selected, &subsets)));
    }
    let described: Vec<Described> = images
        .iter()
        .zip(&targets)
        .enumerate()
        .map(|(level, ((_, rt), t))| {
            Ok(Described {
                image: format!("{}:{}", t.repository, check.commit),
                level,
                created: crate::oci::image::rfc3339(check.commit_time.max(0) as u64),
                parts: fl_actors::parts(opts, check, rt)?,
            })
        })
        .collect::<Result<_>>()?;
    let docs = documents(&sess, &base, &groups, &described).await?;
    let mut out = BTreeMap::new();
    for ((role, _), per_platform) in images.iter().zip(docs) {
        let mut m = BTreeMap::new();
        for ((platform, _), doc) in groups.iter().zip(per_platform) {
            m.insert(platform.clone(), serde_json::from_slice(&doc)?);
        }
        out.insert(role.to_string(), m);
    }
    Ok(out)
}
