//! The `append` verb: base image + one layer per local directory → pushed image or OCI layout.

use crate::error::bad_input;
use crate::oci::assemble::{assemble, resolve_base, Assembled};
use crate::oci::blobstore::BlobStore;
use crate::oci::image::{rfc3339, AddedLayer, ConfigChanges, Descriptor};
use crate::oci::layer::{tree_layer, Compression, Layer};
use crate::oci::push::{push, BaseSource};
use crate::oci::reference::{Platform, Reference};
use crate::oci::registry::{self, BlobStatus, Registry};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Registry,
    OciLayout(PathBuf),
}

impl Output {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "registry" => Ok(Output::Registry),
            _ => match s.strip_prefix("oci-layout:") {
                Some(dir) if !dir.is_empty() => Ok(Output::OciLayout(dir.into())),
                _ => Err(bad_input(format!(
                    "invalid --output {s:?}: use registry or oci-layout:DIR"
                ))),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub base: String,
    pub tag: String,
    /// `LOCAL:PATH_IN_IMAGE`
    pub dirs: Vec<String>,
    pub changes: ConfigChanges,
    pub platforms: Vec<Platform>,
    pub registry: registry::Options,
    pub output: Output,
    pub compression: Compression,
    pub epoch: u64,
    pub cache_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub status: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlatformReport {
    pub platform: String,
    pub manifest: String,
    pub config: LayerReport,
    pub layers: Vec<LayerReport>,
    /// The SPDX SBOM attached to this manifest as an OCI referrer (the artifact manifest's
    /// digest), when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sbom: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub reference: String,
    pub digest: String,
    pub media_type: String,
    pub platforms: Vec<PlatformReport>,
    pub bytes_uploaded: u64,
    pub phases_ms: BTreeMap<String, u64>,
    /// The plan's own tag named another image before this build moved it (`--refresh-lock`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved: Option<TagMove>,
}

/// A tag that this build moved from one image to another.
#[derive(Debug, Clone, Serialize)]
pub struct TagMove {
    pub tag: String,
    /// The digest the tag named before (`sha256:…`).
    pub from: String,
    /// The digest it names now.
    pub to: String,
}

/// Phase timer: records how long each named phase took.
#[derive(Default)]
pub struct Phases(pub BTreeMap<String, u64>);

impl Phases {
    pub fn done(&mut self, name: &str, since: Instant) {
        self.0
            .insert(name.to_string(), since.elapsed().as_millis() as u64);
    }
}

fn parse_dir(spec: &str) -> Result<(PathBuf, String)> {
    let (local, dest) = spec
        .rsplit_once(':')
        .filter(|(l, d)| !l.is_empty() && d.starts_with('/'))
        .ok_or_else(|| {
            bad_input(format!(
                "invalid --dir {spec:?}: use LOCAL_DIR:/path/in/image"
            ))
        })?;
    let local = PathBuf::from(local);
    if std::fs::symlink_metadata(&local).is_err() {
        return Err(bad_input(format!(
            "--dir {spec}: {} does not exist",
            local.display()
        )));
    }
    Ok((local, dest.to_string()))
}

/// Registry clients for the base and the target; one shared client when they are the same
/// registry (one token covering both repositories, and mounts possible).
/// `extra` names more repositories of the target registry to push to (the layer pool).
pub async fn connect(
    base: &Reference,
    target: Option<&Reference>,
    extra: &[&str],
    opts: &registry::Options,
) -> Result<(Arc<Registry>, Option<Arc<Registry>>)> {
    let pull = |r: &Reference| format!("repository:{}:pull", r.repository);
    let push_scopes = |t: &Reference| {
        std::iter::once(t.repository.as_str())
            .chain(extra.iter().copied())
            .map(|r| format!("repository:{r}:pull,push"))
            .collect::<Vec<_>>()
    };
    match target {
        Some(t) if t.registry == base.registry => {
            let mut scopes = push_scopes(t);
            scopes.push(pull(base));
            let reg = Registry::connect(
                &t.registry,
                t.api_host(),
                t.plain_http || base.plain_http,
                opts,
                scopes,
            )
            .await?;
            Ok((reg.clone(), Some(reg)))
        }
        Some(t) => {
            let (b, t) = tokio::try_join!(
                Registry::connect(
                    &base.registry,
                    base.api_host(),
                    base.plain_http,
                    opts,
                    vec![pull(base)]
                ),
                Registry::connect(
                    &t.registry,
                    t.api_host(),
                    t.plain_http,
                    opts,
                    push_scopes(t)
                ),
            )?;
            Ok((b, Some(t)))
        }
        None => Ok((
            Registry::connect(
                &base.registry,
                base.api_host(),
                base.plain_http,
                opts,
                vec![pull(base)],
            )
            .await?,
            None,
        )),
    }
}

/// Builds the report of an assembled image.
pub fn report(
    target: &str,
    image: &Assembled,
    statuses: &BTreeMap<String, BlobStatus>,
    default_status: &str,
    bytes_uploaded: u64,
    phases: Phases,
) -> Report {
    let blob = |d: &Descriptor| LayerReport {
        digest: d.digest.clone(),
        size: d.size,
        media_type: d.media_type.clone(),
        status: statuses
            .get(&d.digest)
            .map_or(default_status.to_string(), |s| {
                format!("{s:?}").to_lowercase()
            }),
    };
    Report {
        reference: format!("{target}@{}", image.top.digest),
        digest: image.top.digest.clone(),
        media_type: image.top.media_type.clone(),
        platforms: image
            .images
            .iter()
            .map(|i| PlatformReport {
                platform: format!(
                    "{}/{}{}",
                    i.platform.os,
                    i.platform.architecture,
                    i.platform
                        .variant
                        .as_ref()
                        .map(|v| format!("/{v}"))
                        .unwrap_or_default()
                ),
                manifest: i.manifest.digest.clone(),
                config: blob(&i.config),
                layers: i
                    .base_layers
                    .iter()
                    .chain(&i.new_layers)
                    .map(blob)
                    .collect(),
                sbom: None,
            })
            .collect(),
        bytes_uploaded,
        phases_ms: phases.0,
        moved: None,
    }
}

/// `append`: the base + one layer per directory → pushed (tag last) or written as an
/// oci-layout.
pub async fn run(req: AppendRequest) -> Result<Report> {
    let total = Instant::now();
    let mut phases = Phases::default();
    let base_ref = Reference::parse(&req.base)?;
    let target = Reference::parse(&req.tag)?;
    let dirs = req
        .dirs
        .iter()
        .map(|d| parse_dir(d))
        .collect::<Result<Vec<_>>>()?;
    let store = BlobStore::open(&req.cache_dir)?;

    // Layers depend only on local files: build them (one blocking task each, in parallel)
    // while the registries are contacted and the base is resolved.
    let t_layers = Instant::now();
    let builds = start_layers(&req, &store, &dirs);
    let t = Instant::now();
    let to_registry = req.output == Output::Registry;
    let (base_reg, target_reg) = connect(
        &base_ref,
        to_registry.then_some(&target),
        &[],
        &req.registry,
    )
    .await?;
    let bases = resolve_base(&base_reg, &base_ref, &req.platforms).await?;
    phases.done("resolve", t);
    let layers = finish_layers(builds, &dirs).await?;
    phases.done("layers", t_layers);

    let mut changes = req.changes.clone();
    changes.created = rfc3339(req.epoch);
    let added = |_: &crate::oci::image::PlatformSpec| {
        layers
            .iter()
            .map(|(l, dest)| AddedLayer {
                descriptor: l.descriptor(),
                diff_id: l.diff_id.clone(),
                created_by: format!("flops-image-builder append {dest}"),
            })
            .collect()
    };
    let image = assemble(&store, &bases, added, &changes, req.platforms.len() > 1)?;
    let base_src = BaseSource {
        registry: base_reg,
        repository: base_ref.repository.clone(),
    };
    let t = Instant::now();
    let (statuses, uploaded, default_status) = match (&req.output, target_reg) {
        (Output::Registry, Some(reg)) => {
            let tag = target.tag.clone().into_iter().collect::<Vec<_>>();
            let pushed = push(
                &reg,
                &target.repository,
                &tag,
                &base_src,
                &image,
                &store,
                &Default::default(),
            )
            .await?;
            phases.done("push", t);
            (pushed.statuses, pushed.bytes_uploaded, "skipped")
        }
        (Output::OciLayout(dir), _) => {
            let name = target.tag.clone().unwrap_or_else(|| "latest".into());
            crate::oci::layout::write(dir, &name, &image, &store, &base_src).await?;
            phases.done("write", t);
            (BTreeMap::new(), 0, "written")
        }
        (Output::Registry, None) => unreachable!("registry output always connects the target"),
    };
    phases.done("total", total);
    let name = output_name(&req.output, &target);
    Ok(report(
        &name,
        &image,
        &statuses,
        default_status,
        uploaded,
        phases,
    ))
}

type LayerTask = tokio::task::JoinHandle<Result<(Layer, bool)>>;

/// One blocking task per directory, building its layer.
fn start_layers(
    req: &AppendRequest,
    store: &BlobStore,
    dirs: &[(PathBuf, String)],
) -> Vec<LayerTask> {
    dirs.iter()
        .map(|(local, dest)| {
            let (store, local, dest, c, e) = (
                store.clone(),
                local.clone(),
                dest.clone(),
                req.compression,
                req.epoch,
            );
            tokio::task::spawn_blocking(move || tree_layer(&store, &local, &dest, &[], c, e))
        })
        .collect()
}

/// The layers of [`start_layers`], in order, each with its destination.
async fn finish_layers(
    builds: Vec<LayerTask>,
    dirs: &[(PathBuf, String)],
) -> Result<Vec<(Layer, String)>> {
    let mut layers = Vec::new();
    for (b, (local, dest)) in builds.into_iter().zip(dirs) {
        let (layer, cached) = b
            .await
            .context("layer task")?
            .with_context(|| format!("building the layer for {}", local.display()))?;
        tracing::info!(
            "layer {dest} from {}: {} ({}{})",
            local.display(),
            crate::oci::short(&layer.digest),
            crate::oci::human_bytes(layer.size),
            if cached { ", cached" } else { "" }
        );
        layers.push((layer, dest.clone()));
    }
    Ok(layers)
}

/// `registry/repository:tag`, or `oci:<dir>:<tag>`.
fn output_name(output: &Output, target: &Reference) -> String {
    match output {
        Output::Registry => format!(
            "{}/{}{}",
            target.registry,
            target.repository,
            target
                .tag
                .as_ref()
                .map(|t| format!(":{t}"))
                .unwrap_or_default()
        ),
        Output::OciLayout(dir) => format!(
            "oci:{}:{}",
            dir.display(),
            target.tag.clone().unwrap_or_else(|| "latest".into())
        ),
    }
}
