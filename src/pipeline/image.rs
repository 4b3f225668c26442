//! Phase 6, image assembly: per platform, base layers + the image's dependency layers + its
//! own layers (runtime, code or model) → config + manifest, and an index for several platforms.

use super::base::Base;
use super::deps::DepLayers;
use super::Session;
use crate::oci::assemble::{assemble, Assembled};
use crate::oci::image::{self, AddedLayer, ConfigChanges};
use crate::oci::layer::Layer;
use crate::oci::reference::Reference;
use anyhow::Result;
use std::collections::BTreeMap;

/// One image of a plan.
pub struct ImageSpec {
    /// `learner`, `aggregator`, `trained_model`.
    pub role: &'static str,
    /// Repository and first tag.
    pub target: Reference,
    /// All tags, the plan's own first; written last, after every image of the plan is pushed.
    pub tags: Vec<String>,
    /// The plan's own tag names one image for good (a commit's FL images): it is not moved to
    /// another digest unless `--refresh-lock` asks for it.
    pub fixed_tag: bool,
    /// Dependency groups `0..=level` go into this image.
    pub level: usize,
    /// Layers on top of the dependencies, with their history lines.
    pub top: Vec<(Layer, String)>,
    pub changes: ConfigChanges,
    /// What the image holds besides its dependencies, for its SBOM.
    pub parts: super::sbom::Parts,
}

/// The environment every image built here has: the dependency prefix on PYTHONPATH and PATH
/// (before the base's PATH), and Flower's telemetry off.
pub fn env(base: &Base, extra: &[(&str, String)]) -> Vec<(String, String)> {
    let prefix = super::DEPS_PREFIX;
    let path = image::config_env(&base.images[0].config, "PATH")
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let mut env = vec![
        ("FLWR_TELEMETRY_ENABLED".to_string(), "0".to_string()),
        ("PYTHONPATH".into(), format!("{prefix}/site-packages")),
        ("PATH".into(), format!("{prefix}/bin:{path}")),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    env
}

/// The OCI labels every image gets, plus `extra`.
pub fn labels(extra: &[(&str, String)]) -> BTreeMap<String, String> {
    std::iter::once((
        "io.oakestra.flops.image-builder.version",
        env!("CARGO_PKG_VERSION").to_string(),
    ))
    .chain(extra.iter().map(|(k, v)| (*k, v.clone())))
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Config and manifest per platform (and the index) of `spec`, written to the local store.
pub fn assemble_image(
    sess: &Session<'_>,
    base: &Base,
    deps: &DepLayers,
    spec: &ImageSpec,
) -> Result<Assembled> {
    let added = |p: &image::PlatformSpec| {
        let mut v: Vec<AddedLayer> =
            deps.for_image(&format!("{}/{}", p.os, p.architecture), spec.level);
        for (l, created_by) in &spec.top {
            v.push(AddedLayer {
                descriptor: l.descriptor(),
                diff_id: l.diff_id.clone(),
                created_by: created_by.clone(),
            });
        }
        v
    };
    assemble(
        &sess.store,
        &base.images,
        added,
        &spec.changes,
        sess.opts.platforms.len() > 1,
    )
}

impl ImageSpec {
    /// The image as its SBOM names it.
    pub fn described(&self) -> super::sbom::Described {
        super::sbom::Described {
            image: format!("{}:{}", self.target.repository, self.tags[0]),
            level: self.level,
            created: self.changes.created.clone(),
            parts: self.parts.clone(),
        }
    }
}
