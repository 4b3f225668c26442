//! OCI manifest, index and config assembly.
//!
//! Our own serde types instead of the `oci-spec` crate: oci-spec keeps annotations in a
//! `HashMap`, so a manifest with two or more annotations serialises in a random order and its
//! digest changes from run to run. Here maps are `BTreeMap`s and the config stays a JSON value,
//! so every field of the base config (Docker's too) survives untouched.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// What we accept when reading a base image.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    /// OCI 1.1: the artifact type of a referrer, in a referrers index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformSpec>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: &str, size: u64) -> Self {
        Self {
            media_type: media_type.to_string(),
            digest: digest.to_string(),
            size,
            artifact_type: None,
            urls: None,
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformSpec {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// OCI 1.1 artifacts (an SBOM): what the manifest holds, when it is not an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// OCI 1.1: the manifest this one refers to (an SBOM's image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// Docker layer media types → their OCI twins (same bytes), so one image never mixes the two.
pub fn oci_layer_media_type(mt: &str) -> String {
    match mt {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip".into()
        }
        "application/vnd.docker.image.rootfs.diff.tar" => {
            "application/vnd.oci.image.layer.v1.tar".into()
        }
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip".into()
        }
        other => other.to_string(),
    }
}

/// A layer appended to the base, with the history line that explains it.
pub struct AddedLayer {
    pub descriptor: Descriptor,
    pub diff_id: String,
    pub created_by: String,
}

/// Changes to apply on top of the base config.
#[derive(Debug, Default, Clone)]
pub struct ConfigChanges {
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `8080/tcp`-style ports the image's process listens on (`ExposedPorts`).
    pub exposed_ports: Vec<String>,
    /// RFC 3339 creation time (from SOURCE_DATE_EPOCH / the commit).
    pub created: String,
}

/// Base config + our layers and changes. Unknown fields of the base are kept as they are.
pub fn derive_config(base: &Value, layers: &[AddedLayer], ch: &ConfigChanges) -> Value {
    let mut cfg = base.clone();
    if !cfg.is_object() {
        cfg = json!({});
    }
    let root = cfg.as_object_mut().expect("object");
    root.insert("created".into(), json!(ch.created));
    let rootfs = root
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    if let Some(ids) = rootfs.get_mut("diff_ids").and_then(Value::as_array_mut) {
        ids.extend(layers.iter().map(|l| json!(l.diff_id)));
    }
    let history = root.entry("history").or_insert_with(|| json!([]));
    if let Some(h) = history.as_array_mut() {
        h.extend(
            layers
                .iter()
                .map(|l| json!({"created": ch.created, "created_by": l.created_by})),
        );
    }
    let c = root.entry("config").or_insert_with(|| json!({}));
    if !c.is_object() {
        *c = json!({});
    }
    let c = c.as_object_mut().expect("object");
    if !ch.env.is_empty() {
        let mut env: Vec<String> = c
            .get("Env")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for (k, v) in &ch.env {
            let kv = format!("{k}={v}");
            match env
                .iter_mut()
                .find(|e| e.split_once('=').map_or(e.as_str(), |p| p.0) == k)
            {
                Some(slot) => *slot = kv,
                None => env.push(kv),
            }
        }
        c.insert("Env".into(), json!(env));
    }
    if let Some(w) = &ch.workdir {
        c.insert("WorkingDir".into(), json!(w));
    }
    if let Some(cmd) = &ch.cmd {
        c.insert("Cmd".into(), json!(cmd));
    }
    if let Some(ep) = &ch.entrypoint {
        c.insert("Entrypoint".into(), json!(ep));
        // As in a Dockerfile: a new ENTRYPOINT drops the base's CMD (it was the old one's args).
        if ch.cmd.is_none() {
            c.remove("Cmd");
        }
    }
    if let Some(u) = &ch.user {
        c.insert("User".into(), json!(u));
    }
    if !ch.exposed_ports.is_empty() {
        let ports = c.entry("ExposedPorts").or_insert_with(|| json!({}));
        if let Some(p) = ports.as_object_mut() {
            for port in &ch.exposed_ports {
                p.insert(port.clone(), json!({}));
            }
        }
    }
    if !ch.labels.is_empty() {
        let labels = c.entry("Labels").or_insert_with(|| json!({}));
        if !labels.is_object() {
            *labels = json!({});
        }
        let labels = labels.as_object_mut().expect("object");
        for (k, v) in &ch.labels {
            labels.insert(k.clone(), json!(v));
        }
    }
    cfg
}

/// The value of `VAR` in a config's Env, if set.
pub fn config_env<'a>(cfg: &'a Value, var: &str) -> Option<&'a str> {
    cfg.pointer("/config/Env")?
        .as_array()?
        .iter()
        .find_map(|e| {
            let (k, v) = e.as_str()?.split_once('=')?;
            (k == var).then_some(v)
        })
}

/// RFC 3339 UTC for a Unix time, without pulling in a date crate.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn config_keeps_base_and_applies_changes() {
        let base = json!({"architecture": "amd64", "os": "linux", "weird": 1,
            "config": {"Env": ["PATH=/usr/bin", "A=1"], "Cmd": ["python3"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:aa"]}, "history": [{"created_by": "base"}]});
        let l = AddedLayer {
            descriptor: Descriptor::new("x", "sha256:bb", 1),
            diff_id: "sha256:cc".into(),
            created_by: "append app".into(),
        };
        let ch = ConfigChanges {
            env: vec![("A".into(), "2".into()), ("B".into(), "3".into())],
            workdir: Some("/app".into()),
            labels: [("k".into(), "v".into())].into(),
            created: rfc3339(0),
            ..Default::default()
        };
        let c = derive_config(&base, &[l], &ch);
        assert_eq!(c["weird"], 1);
        assert_eq!(c["config"]["Env"], json!(["PATH=/usr/bin", "A=2", "B=3"]));
        assert_eq!(c["config"]["Cmd"], json!(["python3"]));
        assert_eq!(c["rootfs"]["diff_ids"], json!(["sha256:aa", "sha256:cc"]));
        assert_eq!(c["history"][1]["created_by"], "append app");
        assert_eq!(config_env(&c, "B"), Some("3"));
        assert_eq!(c["config"]["Labels"]["k"], "v");
    }

    #[test]
    fn annotations_serialise_in_a_stable_order() {
        let mut d = Descriptor::new(OCI_MANIFEST, "sha256:00", 1);
        for k in ["z", "a", "m"] {
            d.annotations.insert(k.into(), k.into());
        }
        let s = serde_json::to_string(&d).unwrap();
        assert!(
            s.find("\"a\"").unwrap() < s.find("\"m\"").unwrap()
                && s.find("\"m\"").unwrap() < s.find("\"z\"").unwrap()
        );
    }
}
