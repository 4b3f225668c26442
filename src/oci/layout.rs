//! OCI image layout output (`oci-layout`, `index.json`, `blobs/sha256/…`), for use without a
//! registry. The only path that downloads base layers, into the reusable blob store.

use crate::oci::assemble::Assembled;
use crate::oci::blobstore::BlobStore;
use crate::oci::image::{Descriptor, Index, OCI_INDEX};
use crate::oci::push::BaseSource;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub async fn write(
    dir: &Path,
    tag: &str,
    image: &Assembled,
    store: &BlobStore,
    base: &BaseSource,
) -> Result<()> {
    for img in &image.images {
        for l in &img.base_layers {
            base.registry
                .download_blob(&base.repository, &l.digest, l.size, store)
                .await?;
        }
    }
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let mut digests: Vec<&str> = vec![&image.top.digest];
    for img in &image.images {
        digests.push(&img.manifest.digest);
        digests.push(&img.config.digest);
        digests.extend(
            img.base_layers
                .iter()
                .chain(&img.new_layers)
                .map(|d| d.digest.as_str()),
        );
    }
    for d in digests {
        let dest = dir
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        if dest.exists() {
            continue;
        }
        let src = store.path(d);
        // A hard link when the cache is on the same filesystem: no copy of the bytes.
        if std::fs::hard_link(&src, &dest).is_err() {
            std::fs::copy(&src, &dest)
                .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
        }
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    // Keep other images already in the layout; replace the one with the same name.
    let index_path = dir.join("index.json");
    let mut index = match std::fs::read(&index_path) {
        Ok(b) => serde_json::from_slice::<Index>(&b)
            .with_context(|| format!("{} is not a valid OCI index", index_path.display()))?,
        Err(_) => Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: vec![],
            annotations: BTreeMap::new(),
        },
    };
    index
        .manifests
        .retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(tag));
    let mut top: Descriptor = image.top.clone();
    top.annotations.insert(REF_NAME.into(), tag.to_string());
    index.manifests.push(top);
    let tmp = index_path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&index)?)?;
    std::fs::rename(&tmp, &index_path)?;
    Ok(())
}
