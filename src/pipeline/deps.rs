//! Phase 5, dependency layers per platform: select each platform's wheels from the lock,
//! split them into groups (the smallest image's packages first, then what each bigger image
//! adds), plan layers per group, reuse what exists (this repository's earlier images, the
//! registry's shared pool, the local cache) and fetch + build + upload only the rest.

use super::Session;
use crate::error::bad_input;
use crate::oci::blobstore::EntryLock;
use crate::oci::layer::Layer;
use crate::oci::push::BaseSource;
use crate::oci::registry::Registry;
use crate::pool;
use crate::resolve::sdist;
use crate::wheels::bytecode::Bytecode;
use crate::wheels::bytecode::WheelPyc;
use crate::wheels::compiled;
use crate::wheels::install::Prefix;
use crate::wheels::pylock::{self, Selected};
use crate::wheels::{fetch, layers, tags as wheel};
use anyhow::Result;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct DepLayerReport {
    pub platform: String,
    /// The image group: the smallest image's name, or the bigger image that adds it.
    pub group: &'static str,
    pub packages: String,
    pub digest: String,
    pub size: u64,
    /// `built`, `cache` (local), `registry` (an earlier image of this repository) or `pool`
    /// (the registry's shared dependency-layer pool).
    pub source: &'static str,
}

/// One platform's dependency layers, by group.
pub struct PlatformDeps {
    /// `linux/amd64`.
    pub platform: String,
    pub groups: Vec<Vec<layers::DepLayer>>,
}

pub struct DepLayers {
    pub platforms: Vec<PlatformDeps>,
    /// Cache key → (layer, where it came from).
    pub ready: HashMap<String, (Layer, &'static str)>,
    /// Layers to mount from the pool when pushing (digest → source).
    pub mount_from: HashMap<String, BaseSource>,
    /// Per group: digests uploaded while building, and their bytes.
    pub uploaded_early: Vec<(HashSet<String>, u64)>,
    /// Layers to add to the shared pool after the push.
    pub new_in_pool: Vec<(layers::DepLayer, Layer)>,
    pub reports: Vec<DepLayerReport>,
    /// Packages one platform has and another lacks.
    pub warnings: Vec<String>,
    /// Packages that had only an sdist, and where their wheel came from.
    pub sdists: Vec<sdist::Built>,
    /// What compiled the bytecode, or `none: <why>` (the report's `bytecode`).
    pub bytecode: String,
}

impl DepLayers {
    /// Per platform, the wheels of each group (what each image adds), as installed.
    pub fn groups(&self) -> Vec<(String, Vec<Vec<Selected>>)> {
        self.platforms
            .iter()
            .map(|p| {
                let groups = p
                    .groups
                    .iter()
                    .map(|g| g.iter().flat_map(|l| l.wheels.iter().cloned()).collect())
                    .collect();
                (p.platform.clone(), groups)
            })
            .collect()
    }

    /// The layers of an image using groups `0..=level` on `platform`, with their descriptors.
    pub fn for_image(&self, platform: &str, level: usize) -> Vec<crate::oci::image::AddedLayer> {
        let p = self
            .platforms
            .iter()
            .find(|p| p.platform == platform)
            .expect("every base platform has dependency layers");
        p.groups[..=level.min(p.groups.len() - 1)]
            .iter()
            .flatten()
            .map(|dep| {
                let l = &self.ready[&dep.key].0;
                crate::oci::image::AddedLayer {
                    descriptor: layers::descriptor(l, dep),
                    diff_id: l.diff_id.clone(),
                    created_by: format!("flops-image-builder: pip install {}", dep.packages()),
                }
            })
            .collect()
    }
}

/// The package-name sets of `groups` (cumulative: `["learner", "aggregator"]`): each the
/// lock's subset of that name, or everything (`None`) for the lock's whole set and for a lock
/// without subsets (a repo's own `pylock.toml`, a model's). A plan building fewer images than
/// the lock was made for (the learner of a learner + aggregator lock) takes only its own.
pub fn subsets(locked: &super::lock::Locked, groups: &[&str]) -> Vec<Option<BTreeSet<String>>> {
    groups.iter().map(|g| locked.lock.subset(g)).collect()
}

/// One base platform's wheels from the lock (sdists still as locked): `(linux/amd64, …)`.
pub fn select(
    opts: &super::Options,
    base: &super::base::Base,
    b: &crate::oci::assemble::BaseImage,
    locked: &super::lock::Locked,
) -> Result<(String, Vec<Selected>)> {
    let target = wheel::Target::new(
        &b.platform.architecture,
        &base.python_full,
        wheel::Libc::Glibc(opts.glibc.0, opts.glibc.1),
    )?;
    let platform = format!("{}/{}", b.platform.os, b.platform.architecture);
    Ok((platform, pylock::select(&locked.lock, &target)?))
}

/// Splits a platform's selection into the groups of `subsets` (cumulative package-name sets,
/// `None` for everything): each package goes to the first group that has it; one no group has
/// (another image's, when a plan builds fewer images than its lock serves) is left out.
pub fn split(selected: Vec<Selected>, subsets: &[Option<BTreeSet<String>>]) -> Vec<Vec<Selected>> {
    let mut groups: Vec<Vec<Selected>> = vec![Vec::new(); subsets.len()];
    for s in selected {
        let norm = crate::spec::imports::normalize(&s.name);
        if let Some(g) = subsets
            .iter()
            .position(|set| set.as_ref().is_none_or(|set| set.contains(&norm)))
        {
            groups[g].push(s);
        }
    }
    groups
}

/// Packages some platforms have and others lack (a marker such as
/// `platform_machine == "x86_64"`): one line per package and platform.
fn platform_gaps(selections: &[(String, Vec<Selected>)]) -> Vec<String> {
    let mut out = Vec::new();
    for (p, sel) in selections {
        for (other, osel) in selections {
            for s in osel {
                if !sel.iter().any(|x| x.name == s.name) {
                    out.push(format!(
                        "{p} has no {} ({other} has {} {}): a marker in the lock leaves it out there",
                        s.name, s.name, s.version
                    ));
                }
            }
        }
    }
    out
}

/// Plans, reuses and builds the dependency layers of every platform. `groups` names the
/// cumulative requirement sets (`["learner", "aggregator"]`) and `home` the repository each
/// group's new layers are uploaded to (its first image's).
pub async fn dependency_layers(
    sess: &Session<'_>,
    reg: &Arc<Registry>,
    base: &super::base::Base,
    locked: &super::lock::Locked,
    groups: &[&'static str],
    home: &[String],
    lock_dir: &std::path::Path,
) -> Result<DepLayers> {
    let http = fetch::http_client()?;
    let subsets = subsets(locked, groups);
    let (selections, sdists) =
        selections(sess, reg, base, locked, &subsets, lock_dir, &http).await?;
    let warnings = platform_gaps(&selections);
    if sess.opts.strict_platforms && !warnings.is_empty() {
        return Err(bad_input(crate::error::listed(
            "--strict-platforms: the platforms do not get the same packages",
            &warnings,
        )));
    }
    let (prefix, bytecode) = deps_prefix(sess, &base.python);
    let platforms = plan_platforms(sess, &prefix, selections, &subsets);
    let t = Instant::now();
    let Reusable {
        mut ready,
        mount_from,
        to_build,
        pooled,
    } = reusable(sess, reg, home, &platforms).await;
    let making = Making {
        http: &http,
        prefix: &prefix,
        lock_dir,
    };
    let built = build_all(sess, reg, home, to_build, making, t).await?;
    let mut uploaded_early = vec![(HashSet::new(), 0u64); groups.len()];
    for (g, key, layer, uploaded) in built {
        if uploaded {
            uploaded_early[g].0.insert(layer.digest.clone());
            uploaded_early[g].1 += layer.size;
        }
        ready.insert(key, (layer, "built"));
    }
    let (reports, new_in_pool) = layer_reports(&platforms, &ready, &pooled, groups);
    let n = ready.len();
    let n_built = ready.values().filter(|(_, s)| *s == "built").count();
    sess.observe(&format!(
        "dependency layers ready: {n} ({n_built} built, {} reused)",
        n - n_built
    ))
    .await;
    Ok(DepLayers {
        platforms,
        ready,
        mount_from,
        uploaded_early,
        new_in_pool,
        reports,
        warnings,
        sdists,
        bytecode,
    })
}

/// Each wheel's bytecode (None without `--bytecode`), compiled at most `compiles` at once, in
/// the cache `cache` or found there.
async fn compile_all(
    prefix: &Prefix,
    wheels: &[Selected],
    paths: &[std::path::PathBuf],
    cache: &std::path::Path,
    compiles: &Arc<tokio::sync::Semaphore>,
) -> Result<Vec<Option<WheelPyc>>> {
    let mut tasks = Vec::new();
    for (w, path) in wheels.iter().zip(paths) {
        let (prefix, path, sha, cache) = (
            prefix.clone(),
            path.clone(),
            w.sha256.clone(),
            cache.to_path_buf(),
        );
        let permit = compiles.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit.acquire_owned().await.expect("semaphore open");
            tokio::task::spawn_blocking(move || {
                compiled::wheel_bytecode(&prefix, &path, &sha, &cache)
            })
            .await?
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// Where the wheels go in the image, with the bytecode `--bytecode` asks for and the
/// builder can compile for Python `minor` (`3.11`); and how the report says it.
fn deps_prefix(sess: &Session<'_>, minor: &str) -> (Prefix, String) {
    let prefix = Prefix::new(super::DEPS_PREFIX, &sess.opts.python);
    if !sess.opts.bytecode {
        return (prefix, "none: --bytecode none".into());
    }
    match Bytecode::find(minor) {
        Ok(b) => {
            let said = b.describe();
            (prefix.with_bytecode(Some(b)), said)
        }
        Err(why) => {
            tracing::warn!("no bytecode in the dependency layers: {why} (containers compile their modules at every start)");
            (prefix, format!("none: {why}"))
        }
    }
}

/// Each base platform's wheels from the lock that one of `subsets` holds, with packages locked
/// only as an sdist turned into wheels (built, or found built in the cache or the pool); and
/// those sdists, once each.
async fn selections(
    sess: &Session<'_>,
    reg: &Arc<Registry>,
    base: &super::base::Base,
    locked: &super::lock::Locked,
    subsets: &[Option<BTreeSet<String>>],
    lock_dir: &std::path::Path,
    http: &reqwest::Client,
) -> Result<(Vec<(String, Vec<Selected>)>, Vec<sdist::Built>)> {
    let mut selections = Vec::new();
    let mut sdists = Vec::new();
    let policy = sdist::BuildPolicy {
        uv: sess.opts.resolve.uv.clone(),
        no_build: sess.opts.resolve.no_build,
        index_url: Some(sess.opts.resolve.effective_index()),
    };
    for b in &base.images {
        let (platform, mut selected) = select(sess.opts, base, b, locked)?;
        // Another image's packages (a learner-only plan of a learner + aggregator lock).
        selected.retain(|s| {
            let norm = crate::spec::imports::normalize(&s.name);
            subsets
                .iter()
                .any(|set| set.as_ref().is_none_or(|set| set.contains(&norm)))
        });
        for b in sdist::materialize(
            &mut selected,
            &platform,
            http,
            reg,
            pool::POOL_REPO,
            &sess.store,
            lock_dir,
            &policy,
        )
        .await?
        {
            if !sdists
                .iter()
                .any(|x: &sdist::Built| x.name == b.name && x.version == b.version)
            {
                sdists.push(b);
            }
        }
        selections.push((platform, selected));
    }
    Ok((selections, sdists))
}

/// Each platform's groups split into layers (extra groups, small, get a smaller budget).
fn plan_platforms(
    sess: &Session<'_>,
    prefix: &Prefix,
    selections: Vec<(String, Vec<Selected>)>,
    subsets: &[Option<BTreeSet<String>>],
) -> Vec<PlatformDeps> {
    selections
        .into_iter()
        .map(|(platform, selected)| {
            let groups = split(selected, subsets)
                .into_iter()
                .enumerate()
                .map(|(i, g)| {
                    // Extra groups are small (the aggregator's MLflow): a smaller layer budget.
                    let budget = if i == 0 {
                        sess.opts.max_dep_layers
                    } else {
                        (sess.opts.max_dep_layers / 3).max(1)
                    };
                    layers::plan(&g, budget, &platform, prefix, sess.opts.compression)
                })
                .collect();
            PlatformDeps { platform, groups }
        })
        .collect()
}

/// Layers found made, and what is left to build.
struct Reusable {
    /// Cache key → (layer, `registry`, `pool` or `cache`).
    ready: HashMap<String, (Layer, &'static str)>,
    /// Pool layers to mount when pushing.
    mount_from: HashMap<String, BaseSource>,
    /// (group, layer) of what none of them has.
    to_build: Vec<(usize, layers::DepLayer)>,
    /// Every key the pool has.
    pooled: HashMap<String, Layer>,
}

/// Reuse, cheapest first: this plan's repositories' earlier images, the shared layer pool
/// (mounted), the local cache; only what none of them has is left to build.
async fn reusable(
    sess: &Session<'_>,
    reg: &Arc<Registry>,
    home: &[String],
    platforms: &[PlatformDeps],
) -> Reusable {
    let mut remote = HashMap::new();
    for repo in home {
        remote.extend(layers::registry_cache(reg, repo).await);
    }
    let missing: Vec<String> = platforms
        .iter()
        .flat_map(|p| p.groups.iter().flatten().map(|d| d.key.clone()))
        .filter(|k| !remote.contains_key(k))
        .collect();
    let pooled = pool::pool_lookup(reg, pool::POOL_REPO, &missing).await;
    let pool_src = BaseSource {
        registry: reg.clone(),
        repository: pool::POOL_REPO.to_string(),
    };
    let mut found = Reusable {
        ready: HashMap::new(),
        mount_from: HashMap::new(),
        to_build: Vec::new(),
        pooled: HashMap::new(),
    };
    for p in platforms {
        for (g, dep) in p
            .groups
            .iter()
            .enumerate()
            .flat_map(|(g, l)| l.iter().map(move |d| (g, d)))
        {
            let known = found.ready.contains_key(&dep.key)
                || found.to_build.iter().any(|(_, d)| d.key == dep.key);
            if known {
                continue;
            }
            if let Some(l) = remote.get(&dep.key) {
                found.ready.insert(dep.key.clone(), (l.clone(), "registry"));
            } else if let Some(l) = pooled.get(&dep.key) {
                found.mount_from.insert(l.digest.clone(), pool_src.clone());
                found.ready.insert(dep.key.clone(), (l.clone(), "pool"));
            } else if let Some(l) = layers::local_cached(&sess.store, &dep.key) {
                found.ready.insert(dep.key.clone(), (l, "cache"));
            } else {
                found.to_build.push((g, dep.clone()));
            }
        }
    }
    found.pooled = pooled;
    found
}

/// One report line per platform, group and layer; and the layers the pool lacks (each once).
fn layer_reports(
    platforms: &[PlatformDeps],
    ready: &HashMap<String, (Layer, &'static str)>,
    pooled: &HashMap<String, Layer>,
    groups: &[&'static str],
) -> (Vec<DepLayerReport>, Vec<(layers::DepLayer, Layer)>) {
    let mut reports = Vec::new();
    let mut seen = HashSet::new();
    let mut new_in_pool = Vec::new();
    for p in platforms {
        for (g, group) in p.groups.iter().enumerate() {
            for dep in group {
                let (l, src) = &ready[&dep.key];
                reports.push(DepLayerReport {
                    platform: p.platform.clone(),
                    group: groups[g],
                    packages: dep.packages(),
                    digest: l.digest.clone(),
                    size: l.size,
                    source: src,
                });
                if !pooled.contains_key(&dep.key) && seen.insert(dep.key.clone()) {
                    new_in_pool.push((dep.clone(), l.clone()));
                }
            }
        }
    }
    (reports, new_in_pool)
}

/// What layers are made with: the wheels' client and lock dir, where they are installed.
struct Making<'a> {
    http: &'a reqwest::Client,
    prefix: &'a Prefix,
    lock_dir: &'a std::path::Path,
}

/// One task per missing dependency layer: fetch its wheels, build when a core is free, upload
/// the blob to its group's repository right away. Downloads, builds and uploads of different
/// layers overlap; downloads and builds are bounded (network slots; one build per core, since
/// `--jobs`; more only adds codec buffers). Returns (group, key, layer, uploaded now).
async fn build_all(
    sess: &Session<'_>,
    reg: &Arc<Registry>,
    home: &[String],
    to_build: Vec<(usize, layers::DepLayer)>,
    with: Making<'_>,
    t: Instant,
) -> Result<Vec<(usize, String, Layer, bool)>> {
    let Making {
        http,
        prefix,
        lock_dir,
    } = with;
    let downloads = Arc::new(tokio::sync::Semaphore::new(fetch::CONCURRENCY));
    let slots = Arc::new(tokio::sync::Semaphore::new(sess.opts.jobs.max(1)));
    // Compiler processes at once: one per core, beside the layers' own threads (which mostly
    // wait for downloads or copy DEFLATE streams).
    let compiles = Arc::new(tokio::sync::Semaphore::new(sess.opts.jobs.max(1)));
    let fetched_at = Arc::new(std::sync::Mutex::new(t));
    let spin = crate::progress::Bar::spinner("installing wheels into layers");
    let mut tasks = Vec::new();
    for (g, dep) in to_build {
        let (store, prefix, c) = (sess.store.clone(), prefix.clone(), sess.opts.compression);
        let (http, downloads, slots, compiles, fetched_at) = (
            http.clone(),
            downloads.clone(),
            slots.clone(),
            compiles.clone(),
            fetched_at.clone(),
        );
        let (reg, repo, lock_dir) = (reg.clone(), home[g].clone(), lock_dir.to_path_buf());
        tasks.push(tokio::spawn(async move {
            // Another builder sharing the cache may be making this very layer: wait for it and
            // take its result rather than making it twice.
            let _entry = EntryLock::acquire(&layers::local_entry(&store, &dep.key)).await?;
            let (s, k) = (store.clone(), dep.key.clone());
            let cached = tokio::task::spawn_blocking(move || layers::local_cached(&s, &k)).await?;
            let layer = match cached {
                Some(layer) => layer,
                None => {
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
                    let pycs =
                        compile_all(&prefix, &dep.wheels, &paths, store.root(), &compiles).await?;
                    let _slot = slots.acquire_owned().await.expect("semaphore open");
                    let (s, d) = (store.clone(), dep.clone());
                    tokio::task::spawn_blocking(move || {
                        layers::build(&s, &d, &paths, &pycs, &prefix, c)
                    })
                    .await??
                }
            };
            let uploaded = !reg.blob_exists(&repo, &layer.digest).await?;
            if uploaded {
                reg.upload_file(
                    &repo,
                    &layer.digest,
                    &store.path(&layer.digest),
                    layer.size,
                    None,
                )
                .await?;
            }
            anyhow::Ok((g, dep.key.clone(), layer, uploaded))
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await??);
    }
    spin.done();
    // Phases overlap: "fetch" ends with the last download, "layers" with the last layer (its
    // upload included).
    let last_fetch = *fetched_at.lock().expect("not poisoned");
    sess.record("fetch", last_fetch.duration_since(t).as_millis() as u64);
    sess.done("layers", t);
    Ok(out)
}
