//! The builder's phases tied together, each timed. `check` = clone → verify → doctor.

use crate::deps::doctor::{doctor, Facts, Fired};
use crate::oci::append::Phases;
use crate::repo::clone::{clone, Checkout, CloneOptions};
use crate::repo::naming::{learner_image, repo_id};
use crate::repo::verify::verify;
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub source: String,
    pub commit: String,
    pub commit_time: i64,
    /// Whether the server allowed a shallow (depth 1) clone.
    pub shallow: bool,
    /// The image `build` would push (`<registry>` when no registry was given).
    pub image: String,
    pub spec: &'static str,
    pub ignored_specs: Vec<&'static str>,
    pub python: Option<String>,
    pub python_constraint: Option<String>,
    pub requirements: Vec<String>,
    pub doctor: Vec<Fired>,
    pub warnings: Vec<String>,
    pub phases_ms: std::collections::BTreeMap<String, u64>,
    /// Top-level repo files the FL runtime replaces (left out of the code layer; each also
    /// has a warning above).
    #[serde(skip)]
    pub replaced_by_runtime: Vec<&'static str>,
}

/// Clones, verifies and doctors; the checkout (a temp dir) lives as long as the returned value.
pub fn check(
    source: &str,
    opts: &CloneOptions,
    registry: Option<&str>,
) -> Result<(CheckReport, Checkout)> {
    let mut phases = Phases::default();
    let id = repo_id(source)?;
    let t = Instant::now();
    let co = clone(source, opts)?;
    phases.done("clone", t);
    tracing::info!("cloned {} at {}", co.source, co.sha);
    let t = Instant::now();
    let v = verify(co.root())?;
    // Only the repository part is validated; the host is shown as given (or a placeholder).
    let image = learner_image(registry.unwrap_or("<registry>"), &id, &co.sha)?;
    phases.done("verify", t);
    let t = Instant::now();
    let d = doctor(
        &v.spec,
        &Facts {
            imports_mlflow: v.imports_mlflow,
        },
    )?;
    phases.done("doctor", t);
    let replaced_by_runtime = crate::repo::augment::clashes(co.root());
    let mut warnings = v.warnings;
    warnings.extend(
        replaced_by_runtime
            .iter()
            .map(|name| crate::repo::augment::clash_warning(name)),
    );
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let report = CheckReport {
        source: co.source.clone(),
        commit: co.sha.clone(),
        commit_time: co.commit_time,
        shallow: co.shallow,
        image,
        spec: v.spec.kind.file_name(),
        ignored_specs: v.ignored_specs.iter().map(|k| k.file_name()).collect(),
        python: d.python,
        python_constraint: d.python_constraint,
        requirements: d.requirements.iter().map(|r| r.to_string()).collect(),
        doctor: d.fired,
        warnings,
        phases_ms: phases.0,
        replaced_by_runtime,
    };
    Ok((report, co))
}

impl CheckReport {
    /// The human summary `check` prints.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: &str| s.push_str(&format!("{k:<10} {v}\n"));
        line("source", &self.source);
        line("commit", &self.commit);
        line("image", &self.image);
        let ignored = if self.ignored_specs.is_empty() {
            String::new()
        } else {
            format!(
                " (also present, ignored: {})",
                self.ignored_specs.join(", ")
            )
        };
        line("spec", &format!("{}{ignored}", self.spec));
        let py = match (&self.python, &self.python_constraint) {
            (Some(p), _) => p.clone(),
            (None, Some(c)) => format!("{c} (from the spec; the base image decides)"),
            (None, None) => "not pinned (the base image decides)".into(),
        };
        line("python", &py);
        for (i, f) in self.doctor.iter().enumerate() {
            line(
                if i == 0 { "doctor" } else { "" },
                &format!("[{}] {}", f.rule, f.detail),
            );
        }
        if self.doctor.is_empty() {
            line("doctor", "no fixes needed");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            line(if i == 0 { "deps" } else { "" }, r);
        }
        for (i, w) in self.warnings.iter().enumerate() {
            line(if i == 0 { "warnings" } else { "" }, w);
        }
        s
    }
}

/// Where dependencies go in the image.
pub const DEPS_PREFIX: &str = "/opt/flops";

#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub repo: String,
    pub clone: CloneOptions,
    /// Registry URL (`http://host:port` for plain HTTP) the learner image is pushed to.
    pub registry: String,
    pub platforms: Vec<crate::oci::reference::Platform>,
    pub base_image: Option<String>,
    pub model_flavor: Option<String>,
    pub extra_tags: Vec<String>,
    pub registry_opts: crate::oci::registry::Options,
    pub compression: crate::oci::layer::Compression,
    pub cache_dir: std::path::PathBuf,
    pub max_dep_layers: usize,
    pub resolve: crate::deps::resolve::ResolveOptions,
    /// glibc of the base image, bounding manylinux wheels.
    pub glibc: (u32, u32),
    /// Interpreter for script shebangs inside the image.
    pub python: String,
    pub workdir: String,
    /// Resolve again even when a lock of the same inputs exists.
    pub refresh_lock: bool,
}

#[derive(Debug, Serialize)]
pub struct DepLayerReport {
    pub platform: String,
    pub packages: String,
    pub digest: String,
    pub size: u64,
    /// `built`, `cache` (local), `registry` (an earlier image of this repository) or `pool`
    /// (the registry's shared dependency-layer pool).
    pub source: &'static str,
}

#[derive(Debug, Serialize)]
pub struct BuildReport {
    pub image: crate::oci::append::Report,
    pub commit: String,
    pub spec: &'static str,
    pub python: String,
    pub doctor: Vec<Fired>,
    pub warnings: Vec<String>,
    pub dependency_layers: Vec<DepLayerReport>,
    /// The lock the image was built from (kept in the cache, by content).
    pub lock: std::path::PathBuf,
    /// `repo` (its pylock.toml), `cache`, `registry` (the pool) or `resolved` (uv ran).
    pub lock_source: &'static str,
}

fn scheme_of(registry: &str) -> &'static str {
    if registry.starts_with("http://") {
        "http://"
    } else {
        ""
    }
}

/// clone → verify → doctor → resolve → fetch → layers → push, each phase timed.
pub async fn build(req: BuildRequest, notifier: &crate::notify::Notifier) -> Result<BuildReport> {
    use crate::deps::{fetch, install::Prefix, layers, pylock, resolve, wheel};
    use crate::error::bad_input;
    use crate::oci::{
        append, assemble, blobstore::BlobStore, image, layer, push, reference::Reference,
    };
    use std::collections::{BTreeMap, HashMap};

    let total = Instant::now();
    let store = BlobStore::open(&req.cache_dir)?;
    let (source, clone_opts, registry) =
        (req.repo.clone(), req.clone.clone(), req.registry.clone());
    let (check, checkout) =
        tokio::task::spawn_blocking(move || check(&source, &clone_opts, Some(&registry))).await??;
    let mut phases = append::Phases(check.phases_ms.clone());
    notifier
        .observe(&format!(
            "image builder: repo cloned and verified: {} at {} ({})",
            check.source, check.commit, check.spec
        ))
        .await;
    for f in &check.doctor {
        notifier
            .observe(&format!(
                "image builder: dependency doctor [{}]: {}",
                f.rule, f.detail
            ))
            .await;
    }
    for w in &check.warnings {
        notifier
            .observe(&format!("image builder: warning: {w}"))
            .await;
    }
    let target = Reference::parse(&format!("{}{}", scheme_of(&req.registry), check.image))?;
    let spec_python = check.python.clone();
    let base_ref = match &req.base_image {
        Some(b) => b.clone(),
        None => format!(
            "{}{}/library/python:{}-slim",
            scheme_of(&req.registry),
            target.registry,
            spec_python.as_deref().unwrap_or("3.11")
        ),
    };
    let base = Reference::parse(&base_ref)?;

    let t = Instant::now();
    let spin = crate::progress::Bar::spinner("resolving base image and dependencies");
    let (base_reg, target_reg) = append::connect(
        &base,
        Some(&target),
        &[layers::POOL_REPO],
        &req.registry_opts,
    )
    .await?;
    let target_reg = target_reg.expect("registry output");
    let bases = assemble::resolve_base(&base_reg, &base, &req.platforms).await?;
    // The base image's Python decides: PYTHON_VERSION from its config, else the spec's pin.
    let python_full = image::config_env(&bases[0].config, "PYTHON_VERSION")
        .map(str::to_string)
        .or_else(|| spec_python.as_ref().map(|p| format!("{p}.0")))
        .unwrap_or_else(|| "3.11.0".into());
    let python_mm = python_full.split('.').take(2).collect::<Vec<_>>().join(".");
    if let Some(p) = &spec_python {
        if *p != python_mm {
            return Err(bad_input(format!("{} pins Python {p} but base image {base} has Python {python_full}; pass --base-image with a Python {p} image", check.spec)));
        }
    }
    // A repo's own lock is used as is; otherwise an earlier lock of the same inputs (local
    // cache, then the registry's pool), else uv resolves.
    let (lock_text, lock_source) = if check.spec == "pylock.toml" {
        (
            crate::repo::read_inside(checkout.root(), std::path::Path::new("pylock.toml"))?,
            "repo",
        )
    } else {
        let input = resolve::lock_input(&check.requirements);
        let key = resolve::lock_key(&input, &python_mm, &req.resolve);
        let local = store
            .root()
            .join("locks")
            .join(format!("pylock.{key}.toml"));
        let cached = if req.refresh_lock {
            None
        } else {
            std::fs::read_to_string(&local).ok()
        };
        let pooled = match (&cached, req.refresh_lock) {
            (None, false) => layers::pool_lock(&target_reg, layers::POOL_REPO, &key).await,
            _ => None,
        };
        let (text, source) = match (cached, pooled) {
            (Some(t), _) => (t, "cache"),
            (None, Some(t)) => (t, "registry"),
            (None, None) => {
                let (mm, opts) = (python_mm.clone(), req.resolve.clone());
                let text =
                    tokio::task::spawn_blocking(move || resolve::resolve(&input, &mm, &opts))
                        .await??;
                layers::pool_put_lock(&target_reg, layers::POOL_REPO, &key, &store, &text).await;
                (text, "resolved")
            }
        };
        std::fs::create_dir_all(local.parent().expect("parent"))?;
        std::fs::write(&local, &text)?;
        (text, source)
    };
    let lock = pylock::parse(&lock_text)?;
    let lock_path = store.root().join("locks").join(format!(
        "pylock.{}.toml",
        crate::oci::short(&crate::oci::sha256_digest(lock_text.as_bytes()))
    ));
    std::fs::create_dir_all(lock_path.parent().expect("parent"))?;
    std::fs::write(&lock_path, &lock_text)?;
    phases.done("resolve", t);
    spin.done();
    notifier
        .observe(&format!(
            "image builder: dependencies locked: {} packages for Python {python_full}",
            lock.packages.len()
        ))
        .await;

    // Plan every platform's dependency layers, then find what already exists.
    let prefix = Prefix::new(DEPS_PREFIX, &req.python);
    let mut plans = Vec::new();
    for b in &bases {
        let target_platform = wheel::Target::new(
            &b.platform.architecture,
            &python_full,
            wheel::Libc::Glibc(req.glibc.0, req.glibc.1),
        )?;
        let platform = format!("{}/{}", b.platform.os, b.platform.architecture);
        let selected = pylock::select(&lock, &target_platform)?;
        plans.push((
            platform.clone(),
            layers::plan(
                &selected,
                req.max_dep_layers,
                &platform,
                &prefix,
                req.compression,
            ),
        ));
    }
    let t = Instant::now();
    // Reuse, cheapest first: this repository's earlier images, the shared layer pool (mounted),
    // the local cache; only what none of them has is fetched and built.
    let remote = layers::registry_cache(&target_reg, &target.repository).await;
    let missing: Vec<String> = plans
        .iter()
        .flat_map(|(_, p)| p.iter().map(|d| d.key.clone()))
        .filter(|k| !remote.contains_key(k))
        .collect();
    let pooled = layers::pool_lookup(&target_reg, layers::POOL_REPO, &missing).await;
    let pool_src = push::BaseSource {
        registry: target_reg.clone(),
        repository: layers::POOL_REPO.to_string(),
    };
    let mut mount_from: HashMap<String, push::BaseSource> = HashMap::new();
    let mut ready: HashMap<String, (layer::Layer, &'static str)> = HashMap::new();
    let mut to_build: Vec<layers::DepLayer> = Vec::new();
    for (_, plan) in &plans {
        for dep in plan {
            if ready.contains_key(&dep.key) || to_build.iter().any(|d| d.key == dep.key) {
                continue;
            }
            if let Some(l) = remote.get(&dep.key) {
                ready.insert(dep.key.clone(), (l.clone(), "registry"));
            } else if let Some(l) = pooled.get(&dep.key) {
                mount_from.insert(l.digest.clone(), pool_src.clone());
                ready.insert(dep.key.clone(), (l.clone(), "pool"));
            } else if let Some(l) = layers::local_cached(&store, &dep.key) {
                ready.insert(dep.key.clone(), (l, "cache"));
            } else {
                to_build.push(dep.clone());
            }
        }
    }
    // One task per dependency layer: fetch its wheels, build when a core is free, upload the
    // blob right away. Downloads, installs/compression and uploads of different layers overlap;
    // downloads and builds are bounded (network slots; one build per core, since more only adds
    // codec buffers).
    let http = fetch::http_client()?;
    let downloads = std::sync::Arc::new(tokio::sync::Semaphore::new(fetch::CONCURRENCY));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(cores));
    let fetched_at = std::sync::Arc::new(std::sync::Mutex::new(t));
    let spin = crate::progress::Bar::spinner("installing wheels into layers");
    let mut builds = Vec::new();
    for dep in to_build {
        let (store, prefix, c) = (store.clone(), prefix.clone(), req.compression);
        let (http, downloads, slots, fetched_at) = (
            http.clone(),
            downloads.clone(),
            slots.clone(),
            fetched_at.clone(),
        );
        let (reg, repo, lock_dir) = (
            target_reg.clone(),
            target.repository.clone(),
            checkout.root().to_path_buf(),
        );
        builds.push(tokio::spawn(async move {
            let paths = fetch::fetch_all(
                &http,
                store.root(),
                Some(&lock_dir),
                &dep.wheels,
                &downloads,
            )
            .await?;
            {
                let mut at = fetched_at.lock().expect("not poisoned");
                *at = (*at).max(Instant::now());
            }
            let slot = slots.acquire_owned().await.expect("semaphore open");
            let (s, d) = (store.clone(), dep.clone());
            let layer =
                tokio::task::spawn_blocking(move || layers::build(&s, &d, &paths, &prefix, c))
                    .await??;
            drop(slot);
            if !reg.blob_exists(&repo, &layer.digest).await? {
                reg.upload_file(
                    &repo,
                    &layer.digest,
                    &store.path(&layer.digest),
                    layer.size,
                    None,
                )
                .await?;
            }
            anyhow::Ok((dep.key.clone(), layer))
        }));
    }
    let epoch = checkout.commit_time.max(0) as u64;
    // The runtime layer (same bytes for every commit) and the code layer, which leaves out
    // `.git` and the repo files the runtime replaces.
    let code = {
        let (store, root, dest, c) = (
            store.clone(),
            checkout.root().to_path_buf(),
            req.workdir.clone(),
            req.compression,
        );
        let mut skip = vec![".git"];
        skip.extend(&check.replaced_by_runtime);
        tokio::task::spawn_blocking(move || {
            let runtime = crate::repo::augment::runtime_layer(&store, &dest, c)?;
            let (code, _) = layer::tree_layer(&store, &root, &dest, &skip, c, epoch)?;
            anyhow::Ok((runtime, code))
        })
    };
    let mut uploaded_early = std::collections::HashSet::new();
    for b in builds {
        let (key, l) = b.await??;
        uploaded_early.insert(l.digest.clone());
        ready.insert(key, (l, "built"));
    }
    let (runtime_layer, code_layer) = code.await??;
    // Phases overlap now: "fetch" ends with the last download, "layers" with the last layer
    // (its upload included); "push" is what remains.
    let last_fetch = *fetched_at.lock().expect("not poisoned");
    phases.0.insert(
        "fetch".into(),
        last_fetch.duration_since(t).as_millis() as u64,
    );
    phases.done("layers", t);
    spin.done();
    let built = ready.values().filter(|(_, s)| *s == "built").count();
    notifier.observe(&format!("image builder: layers ready: {} dependency layers ({built} built, {} reused), the FL runtime and the code layer", ready.len(), ready.len() - built)).await;

    let mut env = vec![
        ("FLWR_TELEMETRY_ENABLED".to_string(), "0".to_string()),
        ("PYTHONPATH".into(), format!("{DEPS_PREFIX}/site-packages")),
        (
            "PATH".into(),
            format!(
                "{DEPS_PREFIX}/bin:{}",
                image::config_env(&bases[0].config, "PATH")
                    .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            ),
        ),
    ];
    if let Some(f) = &req.model_flavor {
        env.push(("ML_MODEL_FLAVOR".into(), f.clone()));
    }
    let labels: BTreeMap<String, String> = [
        ("org.opencontainers.image.source", check.source.clone()),
        ("org.opencontainers.image.revision", check.commit.clone()),
        ("org.opencontainers.image.created", image::rfc3339(epoch)),
        (
            "io.oakestra.flops.image-builder.version",
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let changes = image::ConfigChanges {
        env,
        workdir: Some(req.workdir.clone()),
        labels,
        created: image::rfc3339(epoch),
        ..Default::default()
    };
    let mut dep_reports = Vec::new();
    let plan_of: HashMap<String, &Vec<layers::DepLayer>> =
        plans.iter().map(|(p, l)| (p.clone(), l)).collect();
    for (platform, plan) in &plans {
        for dep in plan {
            let (l, src) = &ready[&dep.key];
            dep_reports.push(DepLayerReport {
                platform: platform.clone(),
                packages: dep.packages(),
                digest: l.digest.clone(),
                size: l.size,
                source: src,
            });
        }
    }
    let added = |p: &image::PlatformSpec| {
        let plan = plan_of[&format!("{}/{}", p.os, p.architecture)];
        let mut v: Vec<image::AddedLayer> = plan
            .iter()
            .map(|dep| {
                let l = &ready[&dep.key].0;
                image::AddedLayer {
                    descriptor: layers::descriptor(l, dep),
                    diff_id: l.diff_id.clone(),
                    created_by: format!("flops-image-builder: pip install {}", dep.packages()),
                }
            })
            .collect();
        for (l, created_by) in [
            (
                &runtime_layer,
                format!(
                    "flops-image-builder: COPY base-layers/fl-learner {}",
                    req.workdir
                ),
            ),
            (
                &code_layer,
                format!("flops-image-builder: COPY {} {}", check.source, req.workdir),
            ),
        ] {
            v.push(image::AddedLayer {
                descriptor: image::Descriptor::new(&l.media_type, &l.digest, l.size),
                diff_id: l.diff_id.clone(),
                created_by,
            });
        }
        v
    };
    let assembled = assemble::assemble(&store, &bases, added, &changes, req.platforms.len() > 1)?;
    let t = Instant::now();
    let mut tags = vec![target.tag.clone().expect("learner images are tagged")];
    tags.extend(req.extra_tags.iter().cloned());
    let base_src = push::BaseSource {
        registry: base_reg,
        repository: base.repository.clone(),
    };
    let mut pushed = push::push(
        &target_reg,
        &target.repository,
        &tags,
        &base_src,
        &assembled,
        &store,
        &mount_from,
    )
    .await?;
    let new_in_pool: Vec<(layers::DepLayer, layer::Layer)> = plans
        .iter()
        .flat_map(|(_, p)| p.iter())
        .filter(|d| !pooled.contains_key(&d.key))
        .map(|d| (d.clone(), ready[&d.key].0.clone()))
        .collect();
    for d in &uploaded_early {
        if let Some(st) = pushed.statuses.get_mut(d) {
            *st = crate::oci::registry::BlobStatus::Uploaded;
        }
    }
    layers::pool_publish(
        &target_reg,
        layers::POOL_REPO,
        &target.repository,
        &store,
        &new_in_pool,
    )
    .await;
    phases.done("push", t);
    phases.done("total", total);
    let name = format!("{}/{}:{}", target.registry, target.repository, tags[0]);
    let report = append::report(
        &name,
        &assembled,
        &pushed.statuses,
        "skipped",
        pushed.bytes_uploaded,
        phases,
    );
    Ok(BuildReport {
        image: report,
        commit: check.commit,
        spec: check.spec,
        python: python_full,
        doctor: check.doctor,
        warnings: check.warnings,
        dependency_layers: dep_reports,
        lock: lock_path,
        lock_source,
    })
}
