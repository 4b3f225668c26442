//! Base image resolution and per-platform image assembly (config, manifest, index).

use crate::error::bad_input;
use crate::oci::blobstore::BlobStore;
use crate::oci::image::*;
use crate::oci::reference::{Platform, Reference};
use crate::oci::registry::Registry;
use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;

/// One platform of the base image: its manifest and config (layers are never fetched here).
#[derive(Debug, Clone)]
pub struct BaseImage {
    pub platform: PlatformSpec,
    /// Digest of this platform's manifest (`sha256:…`).
    pub digest: String,
    pub manifest: Manifest,
    pub config: Value,
}

fn platform_of(cfg: &Value) -> PlatformSpec {
    let s = |k: &str| cfg.get(k).and_then(Value::as_str).map(str::to_string);
    PlatformSpec {
        architecture: s("architecture").unwrap_or_else(|| "amd64".into()),
        os: s("os").unwrap_or_else(|| "linux".into()),
        variant: s("variant"),
        os_version: None,
    }
}

fn spec_string(p: &PlatformSpec) -> String {
    Platform {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: p.variant.clone(),
    }
    .to_string()
}

/// Resolves the base reference to one manifest + config per requested platform (default
/// linux/amd64 when the base is an index and nothing was asked for).
pub async fn resolve_base(
    reg: &Registry,
    base: &Reference,
    platforms: &[Platform],
) -> Result<Vec<BaseImage>> {
    let repo = &base.repository;
    let (bytes, mt, top_digest) = reg
        .get_manifest(repo, base.manifest_ref())
        .await
        .with_context(|| format!("base image {base}"))?;
    let mut out = Vec::new();
    if is_index(&mt) {
        let idx: Index = serde_json::from_slice(&bytes)
            .map_err(|e| bad_input(format!("base image {base}: invalid index: {e}")))?;
        let wanted = if platforms.is_empty() {
            vec![Platform::parse("linux/amd64")?]
        } else {
            platforms.to_vec()
        };
        for p in &wanted {
            let entry = idx.manifests.iter().find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|pl| p.matches(&pl.os, &pl.architecture, pl.variant.as_deref()))
                    && is_manifest(&d.media_type)
            });
            let Some(entry) = entry else {
                let have: Vec<String> = idx
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .filter(|p| p.os != "unknown")
                    .map(spec_string)
                    .collect();
                return Err(bad_input(format!(
                    "base image {base} has no {p} (it has: {})",
                    have.join(", ")
                )));
            };
            let (mbytes, _, _) = reg
                .get_manifest(repo, &entry.digest)
                .await
                .with_context(|| format!("base image {base} ({p})"))?;
            let (manifest, config) = manifest_and_config(reg, base, &mbytes).await?;
            let mut platform = entry.platform.clone().expect("matched a platform");
            platform.os_version = None;
            out.push(BaseImage {
                platform,
                digest: entry.digest.clone(),
                manifest,
                config,
            });
        }
    } else if is_manifest(&mt) {
        let (manifest, config) = manifest_and_config(reg, base, &bytes).await?;
        let platform = platform_of(&config);
        match platforms {
            [] => {}
            [p] if p.matches(
                &platform.os,
                &platform.architecture,
                platform.variant.as_deref(),
            ) => {}
            _ => {
                let asked: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
                return Err(bad_input(format!(
                    "base image {base} is a single-platform image ({}); cannot build {}",
                    spec_string(&platform),
                    asked.join(", ")
                )));
            }
        }
        out.push(BaseImage {
            platform,
            digest: top_digest,
            manifest,
            config,
        });
    } else {
        return Err(bad_input(format!("base image {base}: unsupported manifest media type {mt:?} (Docker schema 1 is not supported)")));
    }
    Ok(out)
}

async fn manifest_and_config(
    reg: &Registry,
    base: &Reference,
    bytes: &[u8],
) -> Result<(Manifest, Value)> {
    let manifest: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| bad_input(format!("base image {base}: invalid manifest: {e}")))?;
    let cfg = reg
        .get_blob_bytes(&base.repository, &manifest.config.digest)
        .await
        .with_context(|| format!("config of base image {base}"))?;
    let config = serde_json::from_slice(&cfg)
        .map_err(|e| bad_input(format!("base image {base}: invalid config: {e}")))?;
    Ok((manifest, config))
}

/// A finished image for one platform; its blobs (config, manifest, new layers) are in the store.
#[derive(Debug, Clone)]
pub struct PlatformImage {
    pub platform: PlatformSpec,
    pub base_layers: Vec<Descriptor>,
    pub new_layers: Vec<Descriptor>,
    pub config: Descriptor,
    pub manifest: Descriptor,
    pub manifest_bytes: Vec<u8>,
}

/// The whole image: per-platform manifests and the top object (index, or the one manifest).
#[derive(Debug, Clone)]
pub struct Assembled {
    pub images: Vec<PlatformImage>,
    pub top: Descriptor,
    pub top_bytes: Vec<u8>,
}

/// Builds config + manifest per platform, and an index when there are several platforms.
pub fn assemble(
    store: &BlobStore,
    bases: &[BaseImage],
    layers: impl Fn(&PlatformSpec) -> Vec<AddedLayer>,
    changes: &ConfigChanges,
    force_index: bool,
) -> Result<Assembled> {
    let mut images = Vec::new();
    for base in bases {
        let added = layers(&base.platform);
        let config = derive_config(&base.config, &added, changes);
        let config_bytes = serde_json::to_vec(&config)?;
        let config_digest = store.put_bytes(&config_bytes)?;
        let config_desc = Descriptor::new(OCI_CONFIG, &config_digest, config_bytes.len() as u64);
        let base_layers: Vec<Descriptor> = base
            .manifest
            .layers
            .iter()
            .map(|d| Descriptor {
                media_type: oci_layer_media_type(&d.media_type),
                platform: None,
                ..d.clone()
            })
            .collect();
        let new_layers: Vec<Descriptor> = added.iter().map(|l| l.descriptor.clone()).collect();
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.into()),
            artifact_type: None,
            config: config_desc.clone(),
            layers: base_layers.iter().chain(&new_layers).cloned().collect(),
            subject: None,
            annotations: BTreeMap::new(),
        };
        let manifest_bytes = serde_json::to_vec(&manifest)?;
        let digest = store.put_bytes(&manifest_bytes)?;
        let mut desc = Descriptor::new(OCI_MANIFEST, &digest, manifest_bytes.len() as u64);
        desc.platform = Some(base.platform.clone());
        images.push(PlatformImage {
            platform: base.platform.clone(),
            base_layers,
            new_layers,
            config: config_desc,
            manifest: desc,
            manifest_bytes,
        });
    }
    let (top, top_bytes) = if images.len() == 1 && !force_index {
        let mut d = images[0].manifest.clone();
        d.platform = None;
        (d, images[0].manifest_bytes.clone())
    } else {
        let index = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: images.iter().map(|i| i.manifest.clone()).collect(),
            annotations: BTreeMap::new(),
        };
        let bytes = serde_json::to_vec(&index)?;
        let digest = store.put_bytes(&bytes)?;
        (
            Descriptor::new(OCI_INDEX, &digest, bytes.len() as u64),
            bytes,
        )
    };
    Ok(Assembled {
        images,
        top,
        top_bytes,
    })
}
