//! Phase 6½, bills of materials: one SPDX document per platform image (see [`crate::sbom`]),
//! written after assembly and attached by the push phase as OCI referrers before any tag.

use super::base::Base;
use super::deps::DepLayers;
use super::image::ImageSpec;
use super::Session;
use crate::oci::assemble::Assembled;
use crate::sbom::{self, license, BasePackage, Contents};
use anyhow::Result;
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

/// One document per image and platform (in the assembled images' order); none with
/// `--sbom none`.
pub async fn documents(
    sess: &Session<'_>,
    base: &Base,
    deps: &DepLayers,
    images: &[(ImageSpec, Assembled)],
) -> Result<Vec<Vec<Vec<u8>>>> {
    if !sess.opts.sbom {
        return Ok(vec![Vec::new(); images.len()]);
    }
    let t = Instant::now();
    let wheels: Vec<_> = deps
        .platforms
        .iter()
        .flat_map(|p| p.groups.iter().flatten().flat_map(|l| &l.wheels))
        .collect();
    let licenses = license::licenses(sess.store.root(), &wheels).await?;
    let mut out = Vec::new();
    for (spec, assembled) in images {
        let mut docs = Vec::new();
        for (img, base_img) in assembled.images.iter().zip(&base.images) {
            let platform = format!("{}/{}", img.platform.os, img.platform.architecture);
            let p = deps
                .platforms
                .iter()
                .find(|p| p.platform == platform)
                .expect("every image platform has dependency layers");
            let packages = p.groups[..=spec.level.min(p.groups.len() - 1)]
                .iter()
                .flatten()
                .flat_map(|l| &l.wheels)
                .map(|w| (w, licenses[&w.sha256].clone()))
                .collect();
            let contents = Contents {
                image: format!("{}:{}", spec.target.repository, spec.tags[0]),
                platform,
                created: spec.changes.created.clone(),
                base: BasePackage {
                    repository_url: format!(
                        "{}/{}",
                        base.reference.registry, base.reference.repository
                    ),
                    tag: base.reference.tag.clone().unwrap_or_default(),
                    digest: base_img.digest.clone(),
                },
                source: spec.parts.source.clone(),
                model: spec.parts.model.clone(),
                files: spec.parts.files.clone(),
                packages,
            };
            docs.push(sbom::document(&contents));
        }
        out.push(docs);
    }
    sess.done("sbom", t);
    Ok(out)
}
