//! Plan `fl_actors`: the learner and the aggregator image of one ML repo commit, from one
//! clone, one doctor run and one lock; the aggregator adds only its own layers (MLflow, its
//! runtime) on top of the learner's dependency layers. [`build_fl`] is the FL images' flow;
//! the learner-only plan is the same flow with one image.

use super::base::Finder;
use super::image::{assemble_image, env, labels, ImageSpec};
use super::{deps, lazy_base, lock, push, sbom, source, target, Options, Session, DEPS_PREFIX};
use crate::notify::Notifier;
use crate::oci::append::Report;
use crate::oci::image::{rfc3339, ConfigChanges};
use crate::oci::layer::Layer;
use crate::oci::reference::Reference;
use crate::repo::augment::{self, Runtime};
use crate::repo::clone::CloneOptions;
use crate::repo::naming::image_name;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// Git URL or local path of the ML repo.
    pub repo: String,
    pub clone: CloneOptions,
    pub opts: Options,
}

#[derive(Debug, Serialize)]
pub struct FlReport {
    /// The first image (the learner).
    pub image: Report,
    /// Every image of the plan by role, when there are several.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<&'static str, Report>,
    pub commit: String,
    pub spec: &'static str,
    #[serde(flatten)]
    pub deps: super::DepsReport,
}

/// Every FL image of a commit, in lock order: each role's runtime adds its requirements to the
/// previous roles'.
pub const FL_IMAGES: [(&str, &Runtime); 2] = [
    ("learner", &augment::LEARNER),
    ("aggregator", &augment::AGGREGATOR),
];

/// The learner and the aggregator image of a commit.
pub async fn build(req: &BuildRequest, notifier: &Notifier) -> Result<FlReport> {
    build_fl(req, notifier, &FL_IMAGES).await
}

/// FL images of one commit (a prefix of [`FL_IMAGES`]): each gets its runtime's files beside
/// the repo's code and its share of one lock. The lock is always that of every FL image, so
/// a commit's learner is the same image whichever plan built it.
pub async fn build_fl(
    req: &BuildRequest,
    notifier: &Notifier,
    images: &[(&'static str, &Runtime)],
) -> Result<FlReport> {
    let sess = Session::new(&req.opts, notifier)?;
    let opts = &req.opts;
    let (runtime, sets) = fl_sets();
    let src = source::source(&sess, &req.repo, &req.clone, &runtime).await?;
    let (check, root) = (&src.check, src.checkout.root());
    let targets = targets(opts, check, images)?;
    let refs: Vec<&Reference> = targets.iter().collect();
    let reg = target::connect(&sess, &refs, &base_pulls(opts, &targets[0])).await?;
    let finder = Finder::new(opts, &targets[0], &reg);
    let (base, locked) =
        lock::base_and_lock(&sess, &finder, check, root, &sets, opts.strict_python).await?;
    let base = lazy_base::lazy_base(&sess, base).await?;
    // Runtime and code layers are built while the dependency layers are.
    let own = own_layers(&sess, &src, images);
    let home: Vec<String> = targets.iter().map(|t| t.repository.clone()).collect();
    let roles: Vec<&'static str> = images.iter().map(|(r, _)| *r).collect();
    let deps = deps::dependency_layers(&sess, &reg, &base, &locked, &roles, &home, root).await?;
    let (runtime_layers, code) = own.await??;
    let specs = image_specs(opts, &src, &base, images, &targets, &runtime_layers, &code)?;
    let mut built = Vec::new();
    for spec in specs {
        let assembled = assemble_image(&sess, &base, &deps, &spec)?;
        built.push((spec, assembled));
    }
    let described: Vec<_> = built.iter().map(|(spec, _)| spec.described()).collect();
    let sboms = sbom::documents(&sess, &base, &deps.groups(), &described).await?;
    let reports = push::push_all(&sess, &reg, &base, &deps, &built, &sboms, &home).await?;
    for r in &reports {
        sess.observe(&format!("pushed {}", r.reference)).await;
    }
    Ok(fl_report(check, &base, &locked, deps, &roles, reports))
}

/// The runtime layer of each image and the code layer, built on a blocking thread.
fn own_layers(
    sess: &Session<'_>,
    src: &source::Source,
    images: &[(&'static str, &Runtime)],
) -> tokio::task::JoinHandle<Result<(Vec<Layer>, Layer)>> {
    let opts = sess.opts;
    let (store, root, workdir, c) = (
        sess.store.clone(),
        src.checkout.root().to_path_buf(),
        opts.workdir.clone(),
        opts.compression,
    );
    let epoch = src.checkout.commit_time.max(0) as u64;
    let runtimes: Vec<Runtime> = images.iter().map(|(_, rt)| **rt).collect();
    let mut skip = vec![".git"];
    skip.extend(&src.check.replaced_by_runtime);
    tokio::task::spawn_blocking(move || {
        let rts = runtimes
            .iter()
            .map(|rt| augment::runtime_layer(&store, rt, &workdir, DEPS_PREFIX, c))
            .collect::<Result<Vec<_>>>()?;
        let (code, _) = crate::oci::layer::tree_layer(&store, &root, &workdir, &skip, c, epoch)?;
        Ok((rts, code))
    })
}

/// One image spec per role: its dependency level, its runtime and the code on top, the
/// config every FL image shares (env, labels, creation time = the commit's).
fn image_specs(
    opts: &Options,
    src: &source::Source,
    base: &super::base::Base,
    images: &[(&'static str, &Runtime)],
    targets: &[Reference],
    runtime_layers: &[Layer],
    code: &Layer,
) -> Result<Vec<ImageSpec>> {
    let check = &src.check;
    let epoch = src.checkout.commit_time.max(0) as u64;
    let changes = ConfigChanges {
        env: env(base, &[]),
        workdir: Some(opts.workdir.clone()),
        labels: labels(&[
            ("org.opencontainers.image.source", check.source.clone()),
            ("org.opencontainers.image.revision", check.commit.clone()),
            ("org.opencontainers.image.created", rfc3339(epoch)),
        ]),
        created: rfc3339(epoch),
        ..Default::default()
    };
    let mut tags = vec![check.commit.clone()];
    tags.extend(opts.extra_tags.iter().cloned());
    let copy = |what: &str| format!("flops-image-builder: COPY {what} {}", opts.workdir);
    images
        .iter()
        .zip(targets)
        .enumerate()
        .map(|(i, ((role, rt), target))| {
            Ok(ImageSpec {
                role,
                target: target.clone(),
                tags: tags.clone(),
                fixed_tag: true,
                level: i,
                top: vec![
                    (
                        runtime_layers[i].clone(),
                        copy(&format!("base-layers/{}", rt.name)),
                    ),
                    (code.clone(), copy(&check.source)),
                ],
                changes: role_changes(opts, role, &changes),
                parts: parts(opts, check, rt)?,
            })
        })
        .collect()
}

/// The report: every image by role (the first also as `image`), and what the doctor, the lock
/// and the dependency layers found.
fn fl_report(
    check: &super::CheckReport,
    base: &super::base::Base,
    locked: &lock::Locked,
    deps: deps::DepLayers,
    roles: &[&'static str],
    reports: Vec<Report>,
) -> FlReport {
    let mut by_role: BTreeMap<&'static str, Report> = roles.iter().copied().zip(reports).collect();
    let first = by_role.remove(roles[0]).expect("one image at least");
    let images = if roles.len() > 1 {
        let mut m = BTreeMap::new();
        m.insert(roles[0], first.clone());
        m.extend(by_role);
        m
    } else {
        BTreeMap::new()
    };
    FlReport {
        image: first,
        images,
        commit: check.commit.clone(),
        spec: check.spec,
        deps: super::DepsReport::new(check, base, locked, deps),
    }
}

/// What an FL image holds besides its dependencies, for its SBOM: the repo at its commit and
/// the runtime's files.
pub fn parts(opts: &Options, check: &super::CheckReport, rt: &Runtime) -> Result<sbom::Parts> {
    Ok(sbom::Parts {
        source: Some((check.source.clone(), check.commit.clone())),
        model: None,
        files: Some((
            format!("flops-{}", rt.name),
            augment::runtime_files(rt, &opts.workdir, DEPS_PREFIX)?
                .into_iter()
                .map(|(p, b)| (format!("/{p}"), b))
                .collect(),
        )),
    })
}

/// The config of `role`'s image: only the aggregator reads `ML_MODEL_FLAVOR` (it logs the
/// model with that MLflow flavor), so only it carries it; the learner stays one image per
/// commit whatever flavor a plan names.
fn role_changes(opts: &Options, role: &str, shared: &ConfigChanges) -> ConfigChanges {
    let mut changes = shared.clone();
    if let (Some(f), "aggregator") = (&opts.model_flavor, role) {
        changes.env.push(("ML_MODEL_FLAVOR".into(), f.clone()));
    }
    changes
}

/// The requirements the FL runtimes add (each role's runtime on top of the previous roles'):
/// all of them, and the cumulative set per role of [`FL_IMAGES`]. Every FL plan locks these
/// same sets (the learner-only `build` too): a lock of the learner's set alone would pick
/// other versions of shared packages than the learner + aggregator lock (`packaging`, say),
/// and the commit's `learner` tag would name another image depending on the plan.
pub fn fl_sets() -> (String, Vec<(&'static str, String)>) {
    let mut sets = Vec::new();
    let mut runtime = String::new();
    for (role, rt) in FL_IMAGES {
        runtime.push_str(rt.requirements);
        sets.push((role, runtime.clone()));
    }
    (runtime, sets)
}

/// The image references of a commit, one per role (`<registry>/<repo id>/<role>:<commit>`).
pub fn targets(
    opts: &Options,
    check: &super::CheckReport,
    images: &[(&'static str, &Runtime)],
) -> Result<Vec<Reference>> {
    let id = check.repo.clone().expect("a checked repo has an id");
    let scheme = if opts.registry.starts_with("http://") {
        "http://"
    } else {
        ""
    };
    images
        .iter()
        .map(|(role, _)| {
            Reference::parse(&format!(
                "{scheme}{}",
                image_name(&opts.registry, &id, role, &check.commit)?
            ))
        })
        .collect()
}

/// Repositories of the target registry a base may be pulled from: `library/python`, and an
/// explicit `--base-image` on the same registry.
pub fn base_pulls(opts: &Options, target: &Reference) -> Vec<String> {
    let mut pulls = vec!["library/python".to_string()];
    if let Some(b) = opts
        .base_image
        .as_deref()
        .and_then(|b| Reference::parse(b).ok())
    {
        if b.registry == target.registry {
            pulls.push(b.repository);
        }
    }
    pulls
}
