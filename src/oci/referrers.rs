//! OCI 1.1 referrers: an artifact (an SBOM) attached to an image manifest by its `subject`,
//! found by clients through the referrers API (distribution-spec 1.1 "Listing Referrers"), or
//! where a registry lacks it — CNCF distribution 2.8 — through the referrers tag schema: an
//! index tagged `<alg>-<hex>` of the subject's digest, which the pusher keeps up to date.

use crate::oci::blobstore::BlobStore;
use crate::oci::image::{Descriptor, Index, Manifest, OCI_INDEX, OCI_MANIFEST};
use crate::oci::registry::Registry;
use anyhow::Result;
use std::collections::BTreeMap;

/// The empty config of artifacts (OCI image-spec 1.1 "Guidance for an Empty Descriptor").
pub const EMPTY_CONFIG: &[u8] = b"{}";
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";

/// One artifact to attach: its type (also its one layer's media type), the bytes, and the
/// manifest annotations (`org.opencontainers.image.created`, a title).
pub struct Artifact<'a> {
    pub artifact_type: &'a str,
    pub bytes: &'a [u8],
    pub annotations: BTreeMap<String, String>,
    /// File name of the layer (`org.opencontainers.image.title`), e.g. `sbom.spdx.json`.
    pub title: &'a str,
}

/// Uploads `bytes` as a blob of `repo` unless the registry has it; returns its digest.
pub async fn ensure_blob(
    reg: &Registry,
    repo: &str,
    store: &BlobStore,
    bytes: &[u8],
) -> Result<String> {
    let digest = store.put_bytes(bytes)?;
    if !reg.blob_exists(repo, &digest).await? {
        reg.upload_file(
            repo,
            &digest,
            &store.path(&digest),
            bytes.len() as u64,
            None,
        )
        .await?;
    }
    Ok(digest)
}

/// The artifact manifest of `artifact` for `subject` (deterministic bytes).
pub fn manifest(
    store: &BlobStore,
    artifact: &Artifact<'_>,
    subject: &Descriptor,
) -> Result<(Descriptor, Vec<u8>)> {
    let config = store.put_bytes(EMPTY_CONFIG)?;
    let blob = store.put_bytes(artifact.bytes)?;
    let mut layer = Descriptor::new(artifact.artifact_type, &blob, artifact.bytes.len() as u64);
    layer.annotations.insert(
        "org.opencontainers.image.title".into(),
        artifact.title.into(),
    );
    let m = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        artifact_type: Some(artifact.artifact_type.into()),
        config: Descriptor::new(EMPTY_MEDIA_TYPE, &config, EMPTY_CONFIG.len() as u64),
        layers: vec![layer],
        subject: Some(Descriptor::new(
            &subject.media_type,
            &subject.digest,
            subject.size,
        )),
        annotations: artifact.annotations.clone(),
    };
    let bytes = serde_json::to_vec(&m)?;
    let digest = store.put_bytes(&bytes)?;
    let mut desc = Descriptor::new(OCI_MANIFEST, &digest, bytes.len() as u64);
    desc.artifact_type = m.artifact_type.clone();
    desc.annotations = m.annotations.clone();
    Ok((desc, bytes))
}

/// Pushes `artifact` for `subject` (an image manifest already in `repo`) and makes it
/// findable: through the registry's referrers API where it has one, else by adding it to the
/// referrers tag's index. Returns the artifact manifest's descriptor. Idempotent: the same
/// artifact pushed twice (two builders of one commit) leaves one entry.
pub async fn attach(
    reg: &Registry,
    repo: &str,
    store: &BlobStore,
    artifact: &Artifact<'_>,
    subject: &Descriptor,
) -> Result<Descriptor> {
    ensure_blob(reg, repo, store, EMPTY_CONFIG).await?;
    ensure_blob(reg, repo, store, artifact.bytes).await?;
    let (desc, bytes) = manifest(store, artifact, subject)?;
    reg.put_manifest(repo, &desc.digest, OCI_MANIFEST, &bytes)
        .await?;
    match reg.referrers(repo, &subject.digest).await? {
        Some(idx) if idx.manifests.iter().any(|d| d.digest == desc.digest) => {}
        // No API (or one that did not index our manifest): keep the tag schema's index.
        _ => add_to_tag_index(reg, repo, &subject.digest, &desc).await?,
    }
    Ok(desc)
}

/// The referrers tag of a subject digest: `sha256:ab…` → `sha256-ab…`.
pub fn referrers_tag(subject_digest: &str) -> String {
    subject_digest.replacen(':', "-", 1)
}

/// Adds `desc` to the index under the subject's referrers tag (made when missing), entries
/// sorted by digest so concurrent writers of the same set write the same bytes.
async fn add_to_tag_index(
    reg: &Registry,
    repo: &str,
    subject_digest: &str,
    desc: &Descriptor,
) -> Result<()> {
    let tag = referrers_tag(subject_digest);
    let mut idx = match reg.manifest_digest(repo, &tag).await {
        Some(_) => {
            let (bytes, _, _) = reg.get_manifest(repo, &tag).await?;
            serde_json::from_slice::<Index>(&bytes).unwrap_or_else(|_| empty_index())
        }
        None => empty_index(),
    };
    if idx.manifests.iter().any(|d| d.digest == desc.digest) {
        return Ok(());
    }
    idx.manifests.push(desc.clone());
    idx.manifests.sort_by(|a, b| a.digest.cmp(&b.digest));
    reg.put_manifest(repo, &tag, OCI_INDEX, &serde_json::to_vec(&idx)?)
        .await
}

fn empty_index() -> Index {
    Index {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests: Vec::new(),
        annotations: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_manifests_are_deterministic_and_point_at_their_subject() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let subject = Descriptor::new(OCI_MANIFEST, "sha256:ab", 7);
        let art = Artifact {
            artifact_type: "application/spdx+json",
            bytes: b"{\"spdxVersion\":\"SPDX-2.3\"}",
            annotations: BTreeMap::from([(
                "org.opencontainers.image.created".into(),
                "2026-01-01T00:00:00Z".into(),
            )]),
            title: "sbom.spdx.json",
        };
        let (d1, b1) = manifest(&store, &art, &subject).unwrap();
        let (d2, b2) = manifest(&store, &art, &subject).unwrap();
        assert_eq!((d1.digest.clone(), b1.clone()), (d2.digest, b2));
        let m: serde_json::Value = serde_json::from_slice(&b1).unwrap();
        assert_eq!(m["artifactType"], "application/spdx+json");
        assert_eq!(m["subject"]["digest"], "sha256:ab");
        assert_eq!(m["config"]["mediaType"], EMPTY_MEDIA_TYPE);
        assert_eq!(d1.artifact_type.as_deref(), Some("application/spdx+json"));
        assert_eq!(referrers_tag("sha256:ab"), "sha256-ab");
    }
}
