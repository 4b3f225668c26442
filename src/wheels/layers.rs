//! Dependency layers, designed for sharing: the largest wheels get a layer each (same wheel,
//! platform and prefix ⇒ byte-identical layer ⇒ same digest in every image that uses it), the
//! rest share one layer, within a budget (`--max-dep-layers`).
//!
//! Each layer's descriptor carries its cache key (wheel sha256s + platform + prefix + layer
//! format) and diff_id as annotations, so a builder with an empty disk can find reusable layers
//! in the manifests already in the target repository, without downloading anything.

use crate::oci::blobstore::BlobStore;
use crate::oci::image::{is_index, Descriptor, Index, Manifest};
use crate::oci::layer::{Compression, Layer, LayerWriter, LAYER_FORMAT_VERSION};
use crate::oci::registry::Registry;
use crate::wheels::bytecode::WheelPyc;
use crate::wheels::install::{install, Prefix};
use crate::wheels::pylock::Selected;
use anyhow::Result;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;

pub const KEY_ANNOTATION: &str = "io.oakestra.flops.deps.key";
pub const DIFF_ID_ANNOTATION: &str = "io.oakestra.flops.deps.diff-id";
pub const PACKAGES_ANNOTATION: &str = "io.oakestra.flops.deps.packages";
/// Previous tags read when looking for reusable layers (bounds the work on big repositories).
pub const MAX_TAGS_SCANNED: usize = 50;

#[derive(Debug, Clone)]
pub struct DepLayer {
    pub wheels: Vec<Selected>,
    pub key: String,
}

impl DepLayer {
    pub fn packages(&self) -> String {
        self.wheels
            .iter()
            .map(|w| format!("{}=={}", w.name, w.version))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Splits the selected wheels into at most `max_layers` layers: the largest alone, largest
/// first, the rest together in the last. Deterministic for a given lock.
pub fn plan(
    selected: &[Selected],
    max_layers: usize,
    platform: &str,
    prefix: &Prefix,
    compression: Compression,
) -> Vec<DepLayer> {
    let max_layers = max_layers.max(1);
    let mut order: Vec<&Selected> = selected.iter().collect();
    order.sort_by(|a, b| {
        b.wheel
            .size
            .unwrap_or(0)
            .cmp(&a.wheel.size.unwrap_or(0))
            .then(a.name.cmp(&b.name))
    });
    let alone = if order.len() <= max_layers {
        order.len()
    } else {
        max_layers - 1
    };
    // Largest first, right above the base: the layers most expensive to unpack then sit on the
    // same parents in every image that has them (the learner, the aggregator, the model
    // server, other projects), so a node's containerd unpacks each once (snapshots are keyed
    // by the chain of layers below).
    let mut groups: Vec<Vec<Selected>> =
        order[..alone].iter().map(|w| vec![(*w).clone()]).collect();
    if alone < order.len() {
        let mut rest: Vec<Selected> = order[alone..].iter().map(|w| (*w).clone()).collect();
        rest.sort_by(|a, b| a.name.cmp(&b.name));
        groups.push(rest);
    }
    groups
        .into_iter()
        .map(|wheels| {
            let mut h = Sha256::new();
            h.update(format!(
                "flops-deps v{LAYER_FORMAT_VERSION}\n{platform}\n{}\n{}\n{}\n",
                prefix.root,
                prefix.python,
                crate::oci::layer::compression_key(compression)
            ));
            let mut shas: Vec<&str> = wheels.iter().map(|w| w.sha256.as_str()).collect();
            shas.sort();
            h.update(shas.join("\n"));
            // Layers without bytecode keep the keys they had before bytecode existed; `v2`:
            // compiled per wheel (`wheels::compiled`), not per layer.
            if let Some(b) = &prefix.bytecode {
                h.update(format!("\nbytecode v2 {} {}", b.tag, b.version));
            }
            DepLayer {
                wheels,
                key: hex::encode(h.finalize()),
            }
        })
        .collect()
}

/// The descriptor of a built dependency layer, annotated for reuse.
pub fn descriptor(layer: &Layer, dep: &DepLayer) -> Descriptor {
    let mut d = layer.descriptor();
    d.annotations.insert(KEY_ANNOTATION.into(), dep.key.clone());
    d.annotations
        .insert(DIFF_ID_ANNOTATION.into(), layer.diff_id.clone());
    d.annotations
        .insert(PACKAGES_ANNOTATION.into(), dep.packages());
    d
}

/// (cache key, layer) of a descriptor written by [`descriptor`]; None for other layers.
pub fn annotated(d: &Descriptor) -> Option<(String, Layer)> {
    let key = d.annotations.get(KEY_ANNOTATION)?.clone();
    let diff_id = d.annotations.get(DIFF_ID_ANNOTATION)?.clone();
    Some((
        key,
        Layer {
            digest: d.digest.clone(),
            diff_id,
            size: d.size,
            media_type: d.media_type.clone(),
            // eStargz layers keep their TOC digest and size wherever they are reused from.
            annotations: d
                .annotations
                .iter()
                .filter(|(k, _)| {
                    [
                        crate::oci::estargz::TOC_DIGEST_ANNOTATION,
                        crate::oci::estargz::UNCOMPRESSED_SIZE_ANNOTATION,
                    ]
                    .contains(&k.as_str())
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        },
    ))
}

/// A layer found in the local cache (its blob present) by key.
pub fn local_cached(store: &BlobStore, key: &str) -> Option<Layer> {
    crate::oci::layer::cached_layer(store, &format!("deps-{key}"))
}

/// The cache entry of a dependency layer's record (what its [`EntryLock`] locks).
///
/// [`EntryLock`]: crate::oci::blobstore::EntryLock
pub fn local_entry(store: &BlobStore, key: &str) -> PathBuf {
    store.root().join("layers").join(format!("deps-{key}"))
}

/// Installs the wheels (paths in the same order as `dep.wheels`) into a new layer; mtime 0 so
/// the layer is the same whichever repo uses it.
pub fn build(
    store: &BlobStore,
    dep: &DepLayer,
    paths: &[PathBuf],
    pycs: &[Option<WheelPyc>],
    prefix: &Prefix,
    compression: Compression,
) -> Result<Layer> {
    // Dependency layers are built one per core at once: one zstd worker each; gzip copies the
    // wheels' DEFLATE streams instead of compressing again.
    let mut w = LayerWriter::for_wheels(store, compression)?;
    install(&mut w, prefix, paths, pycs)?;
    let layer = w.finish(store)?;
    crate::oci::layer::remember_layer(store, &format!("deps-{}", dep.key), &layer);
    Ok(layer)
}

/// Annotated dependency layers in the manifests already in `repo` (its previous tags):
/// key → layer. Best effort: a registry that refuses listing just yields nothing.
pub async fn registry_cache(reg: &Registry, repo: &str) -> HashMap<String, Layer> {
    let mut found = HashMap::new();
    let tags = match reg.list_tags(repo).await {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!("no layer reuse from {repo}: {e:#}");
            return found;
        }
    };
    for tag in tags.iter().rev().take(MAX_TAGS_SCANNED) {
        let Ok((bytes, mt, _)) = reg.get_manifest(repo, tag).await else {
            continue;
        };
        let manifests: Vec<Vec<u8>> = if is_index(&mt) {
            let Ok(idx) = serde_json::from_slice::<Index>(&bytes) else {
                continue;
            };
            let mut v = Vec::new();
            for m in idx.manifests {
                if let Ok((b, _, _)) = reg.get_manifest(repo, &m.digest).await {
                    v.push(b);
                }
            }
            v
        } else {
            vec![bytes]
        };
        for m in manifests
            .iter()
            .filter_map(|b| serde_json::from_slice::<Manifest>(b).ok())
        {
            for (key, layer) in m.layers.iter().filter_map(annotated) {
                found.entry(key).or_insert(layer);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wheels::pylock::Wheel;

    fn sel(name: &str, size: u64) -> Selected {
        Selected {
            name: name.into(),
            version: "1".into(),
            file: format!("{name}-1-py3-none-any.whl"),
            wheel: Wheel {
                name: None,
                url: None,
                path: None,
                size: Some(size),
                hashes: Default::default(),
            },
            sha256: format!("{name}-sha"),
            sdist: false,
            built_from: None,
        }
    }

    #[test]
    fn largest_alone_rest_grouped_and_keys_stable() {
        let p = Prefix::new("/opt/flops", "/usr/bin/python3");
        let wheels = vec![
            sel("a", 10),
            sel("mid", 500),
            sel("big", 1000),
            sel("b", 20),
        ];
        let plan3 = plan(&wheels, 3, "linux/amd64", &p, Compression::Gzip(6));
        let names: Vec<String> = plan3.iter().map(|l| l.packages()).collect();
        assert_eq!(
            names,
            ["big==1", "mid==1", "a==1,b==1"],
            "largest first, the rest last"
        );
        let plan4 = plan(
            &[sel("zed", 900), sel("alpha", 800), sel("c", 1)],
            3,
            "linux/amd64",
            &p,
            Compression::Gzip(6),
        );
        let names: Vec<String> = plan4.iter().map(|l| l.packages()).collect();
        assert_eq!(names, ["zed==1", "alpha==1", "c==1"]);
        let one = plan(&wheels, 1, "linux/amd64", &p, Compression::Gzip(6));
        assert_eq!(one.len(), 1);
        // The numpy layer of one repo is the numpy layer of another: same key.
        let other = plan(
            &[sel("big", 1000), sel("zzz", 1)],
            12,
            "linux/amd64",
            &p,
            Compression::Gzip(6),
        );
        assert_eq!(other[0].key, plan3[0].key);
        let arm = plan(&wheels, 3, "linux/arm64", &p, Compression::Gzip(6));
        assert_ne!(arm[0].key, plan3[0].key);
    }
}
