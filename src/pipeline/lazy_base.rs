//! Phase 3b, `--compression estargz` only: the base's layers written again as eStargz. A lazy
//! node (the stargz snapshotter) mounts an image without fetching it only when its bottom
//! layers are eStargz too: containerd fetches every layer above the first one it has to fetch,
//! so a plain gzip base would make the node download the whole image. Each base layer is
//! downloaded once, converted once (the same blob gives the same bytes) and kept in the cache
//! by its digest; the converted layers are pushed like the builder's own.

use super::base::Base;
use super::Session;
use crate::oci::convert;
use crate::oci::estargz::TOC_DIGEST_ANNOTATION;
use crate::oci::layer::{cached_layer, remember_layer, Compression, Layer};
use anyhow::{Context, Result};
use serde_json::Value;
use std::time::Instant;

/// The base with every layer that is not eStargz yet replaced by its eStargz form (manifest
/// descriptors and the config's diff_ids alike); unchanged for other compressions.
pub async fn lazy_base(sess: &Session<'_>, mut base: Base) -> Result<Base> {
    let Compression::Estargz(level) = sess.opts.compression else {
        return Ok(base);
    };
    let t = Instant::now();
    let repo = base.reference.repository.clone();
    for img in &mut base.images {
        for (i, desc) in img.manifest.layers.iter_mut().enumerate() {
            if desc.annotations.contains_key(TOC_DIGEST_ANNOTATION) {
                continue;
            }
            let layer = converted(sess, &base.registry, &repo, desc, level).await?;
            if let Some(id) = img
                .config
                .pointer_mut("/rootfs/diff_ids")
                .and_then(Value::as_array_mut)
                .and_then(|ids| ids.get_mut(i))
            {
                *id = Value::String(layer.diff_id.clone());
            }
            *desc = layer.descriptor();
        }
    }
    sess.done("base-estargz", t);
    Ok(base)
}

/// One base layer as eStargz: from the cache, else downloaded and converted.
async fn converted(
    sess: &Session<'_>,
    reg: &crate::oci::registry::Registry,
    repo: &str,
    desc: &crate::oci::image::Descriptor,
    level: u32,
) -> Result<Layer> {
    let name = format!(
        "estargz-v{}-base-{level}-{}",
        crate::oci::estargz::FORMAT_VERSION,
        desc.digest.trim_start_matches("sha256:")
    );
    if let Some(l) = cached_layer(&sess.store, &name) {
        return Ok(l);
    }
    tracing::info!(
        "base layer {} ({}): writing it as eStargz, for lazy nodes",
        crate::oci::short(&desc.digest),
        crate::oci::human_bytes(desc.size)
    );
    reg.download_blob(repo, &desc.digest, desc.size, &sess.store)
        .await
        .with_context(|| format!("downloading base layer {}", desc.digest))?;
    let (store, blob) = (sess.store.clone(), sess.store.path(&desc.digest));
    let layer = tokio::task::spawn_blocking(move || convert::to_estargz(&store, &blob, level))
        .await?
        .with_context(|| format!("writing base layer {} as eStargz", desc.digest))?;
    remember_layer(&sess.store, &name, &layer);
    Ok(layer)
}
