//! Plan `trained_model`: an image serving an MLflow model (from a tracking server run, MLflow
//! 3's logged models, or a local model directory) with MLflow's scoring server on port 8080:
//! base + dependency layers (shared with the FL images where the packages match) + the model
//! at `/opt/ml/model` in its own layer, tags last.

use super::base::Finder;
use super::fl_actors::base_pulls;
use super::image::{assemble_image, env, labels, ImageSpec};
use super::source::CheckReport;
use super::{deps, lazy_base, lock, push, sbom, target, Options, Session, DEPS_PREFIX};
use crate::error::bad_input;
use crate::model::{self, mlmodel, ModelSource};
use crate::notify::Notifier;
use crate::oci::append::Report;
use crate::oci::image::{rfc3339, ConfigChanges};
use crate::oci::layer::Layer;
use crate::oci::reference::Reference;
use crate::repo::augment::{self, Runtime};
use crate::repo::naming::trained_model_image;
use crate::spec::doctor::{doctor, Facts};
use crate::spec::{self, Loaded, SpecKind};
use anyhow::Result;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// Where the model goes in the image, and the port it is served on.
pub const MODEL_DIR: &str = "/opt/ml/model";
pub const PORT: u16 = 8080;
/// The scoring server's user: no root, and no name the base must know.
pub const USER: &str = "65532:65532";

#[derive(Debug, Clone)]
pub struct ModelRequest {
    pub source: ModelSource,
    /// The FLOps customer the image belongs to (lowercased into the repository name).
    pub customer_id: String,
    pub opts: Options,
}

#[derive(Debug, Serialize)]
pub struct ModelReport {
    pub image: Report,
    pub run_id: Option<String>,
    /// `run artifacts`, `logged model <id>` or `local directory`.
    pub model_origin: String,
    pub flavors: Vec<String>,
    pub mlflow_version: Option<String>,
    #[serde(flatten)]
    pub deps: super::DepsReport,
}

/// The site hook only: a model image has no runtime files of ours.
const SERVING: Runtime = Runtime {
    name: "mlflow-serving",
    files: &[],
    requirements: "",
};

pub async fn build(req: &ModelRequest, notifier: &Notifier) -> Result<ModelReport> {
    let sess = Session::new(&req.opts, notifier)?;
    let opts = &req.opts;
    let target = target_of(req)?;
    // Push access first: a bad credential fails before the model is downloaded.
    let reg = target::connect(&sess, &[&target], &base_pulls(opts, &target)).await?;
    let (fetched, ml) = fetch(&sess, &req.source).await?;
    let runtime = ml.serving_requirements();
    let check = model_check(&fetched.dir, &ml, &runtime, &target)?;
    for f in &check.doctor {
        sess.observe(&format!("dependency doctor [{}]: {}", f.rule, f.detail))
            .await;
    }
    let finder = Finder::new(opts, &target, &reg);
    let sets = [("trained_model", runtime)];
    let (base, locked) = lock::base_and_lock(
        &sess,
        &finder,
        &check,
        &fetched.dir,
        &sets,
        opts.strict_python,
    )
    .await?;
    let base = lazy_base::lazy_base(&sess, base).await?;
    let home = [target.repository.clone()];
    let groups = ["trained_model"];
    let deps =
        deps::dependency_layers(&sess, &reg, &base, &locked, &groups, &home, &fetched.dir).await?;
    let layers = {
        let (store, c, dir, epoch) = (
            sess.store.clone(),
            opts.compression,
            fetched.dir.clone(),
            fetched.epoch,
        );
        tokio::task::spawn_blocking(move || own_layers(&store, c, &dir, epoch)).await??
    };
    let spec = image_spec(req, &fetched, &base, &target, layers)?;
    let assembled = assemble_image(&sess, &base, &deps, &spec)?;
    let built = [(spec, assembled)];
    let described = [built[0].0.described()];
    let sboms = sbom::documents(&sess, &base, &deps.groups(), &described).await?;
    let mut reports = push::push_all(&sess, &reg, &base, &deps, &built, &sboms, &home).await?;
    let image = reports.remove(0);
    sess.observe(&format!("pushed {}", image.reference)).await;
    Ok(ModelReport {
        image,
        run_id: fetched.run_id.clone(),
        model_origin: fetched.origin.clone(),
        flavors: ml.flavors.clone(),
        mlflow_version: ml.mlflow_version.clone(),
        deps: super::DepsReport::new(&check, &base, &locked, deps),
    })
}

/// `<registry>/<customer>/trained_model:<run id>` (a model directory: the first `--tag`).
fn target_of(req: &ModelRequest) -> Result<Reference> {
    let opts = &req.opts;
    let tag = match &req.source {
        ModelSource::Run { run_id, .. } => run_id.clone(),
        ModelSource::Dir(_) => opts.extra_tags.first().cloned().ok_or_else(|| {
            crate::error::usage(
                "a model directory needs --tag (the image's tag; a run gives its id)",
            )
        })?,
    };
    let scheme = if opts.registry.starts_with("http://") {
        "http://"
    } else {
        ""
    };
    Reference::parse(&format!(
        "{scheme}{}",
        trained_model_image(&opts.registry, &req.customer_id, &tag)?
    ))
}

/// The model, downloaded (or a local directory), and its MLmodel.
async fn fetch(
    sess: &Session<'_>,
    source: &ModelSource,
) -> Result<(model::Fetched, mlmodel::MlModel)> {
    let t = Instant::now();
    let fetched = model::fetch(source, sess.store.root()).await?;
    let ml = mlmodel::read(&fetched.dir)?;
    sess.done("model", t);
    sess.observe(&format!(
        "model fetched ({}): flavors {}, saved by MLflow {}",
        fetched.origin,
        ml.flavors.join(", "),
        ml.mlflow_version.as_deref().unwrap_or("?")
    ))
    .await;
    Ok((fetched, ml))
}

/// The serving image: the site hook and the model in their own layers, MLflow's scoring
/// server as the entrypoint (no root), labels naming the run.
fn image_spec(
    req: &ModelRequest,
    fetched: &model::Fetched,
    base: &super::base::Base,
    target: &Reference,
    (site, model_layer): (Layer, Layer),
) -> Result<ImageSpec> {
    let opts = &req.opts;
    let mut tags = vec![target.tag.clone().unwrap_or_default()];
    tags.extend(opts.extra_tags.iter().skip(1).cloned());
    tags.dedup();
    Ok(ImageSpec {
        role: "trained_model",
        target: target.clone(),
        tags,
        // A run's model image follows the builder (a newer one may serve it better).
        fixed_tag: false,
        level: 0,
        top: vec![
            (
                site,
                "flops-image-builder: site hook of the dependency prefix".into(),
            ),
            (
                model_layer,
                format!(
                    "flops-image-builder: COPY model ({}) {MODEL_DIR}",
                    fetched.origin
                ),
            ),
        ],
        changes: ConfigChanges {
            // HOME: the scoring server's user has no home directory in the base.
            env: env(base, &[("HOME", "/tmp".to_string())]),
            // Writable for the server user (MLflow tracing writes ./mlruns there).
            workdir: Some("/tmp".into()),
            entrypoint: Some(serve_command()),
            user: Some(USER.into()),
            exposed_ports: vec![format!("{PORT}/tcp")],
            labels: labels(&model_labels(req, fetched)),
            created: rfc3339(fetched.epoch),
            ..Default::default()
        },
        parts: sbom::Parts {
            source: None,
            model: Some((
                "mlflow-model".into(),
                fetched
                    .run_id
                    .clone()
                    .unwrap_or_else(|| target.tag.clone().unwrap_or_default()),
                fetched.origin.clone(),
            )),
            files: Some((
                format!("flops-{}", SERVING.name),
                augment::runtime_files(&SERVING, "/opt/ml", DEPS_PREFIX)?
                    .into_iter()
                    .map(|(p, b)| (format!("/{p}"), b))
                    .collect(),
            )),
        },
    })
}

/// The site hook's layer and the model's (the run's start time as every mtime: the same run
/// gives the same digest).
fn own_layers(
    store: &crate::oci::blobstore::BlobStore,
    c: crate::oci::layer::Compression,
    dir: &Path,
    epoch: u64,
) -> Result<(Layer, Layer)> {
    let site = augment::runtime_layer(store, &SERVING, "/opt/ml", DEPS_PREFIX, c)?;
    let (model, _) = crate::oci::layer::tree_layer(store, dir, MODEL_DIR, &[], c, epoch)?;
    Ok((site, model))
}

/// The labels of a model image: its origin, creation time, and the run it serves.
fn model_labels(req: &ModelRequest, fetched: &model::Fetched) -> Vec<(&'static str, String)> {
    let mut labels = vec![
        ("io.oakestra.flops.model.origin", fetched.origin.clone()),
        ("org.opencontainers.image.created", rfc3339(fetched.epoch)),
    ];
    if let ModelSource::Run {
        tracking_uri,
        run_id,
        artifact_path,
    } = &req.source
    {
        labels.push(("io.oakestra.flops.mlflow.run-id", run_id.clone()));
        labels.push((
            "io.oakestra.flops.mlflow.tracking-uri",
            model::mlflow::shown(tracking_uri),
        ));
        labels.push((
            "io.oakestra.flops.mlflow.artifact-path",
            artifact_path.clone(),
        ));
    }
    labels
}

/// `mlflow models serve` of the model on every interface, port [`PORT`], in the image's
/// environment (no conda, no virtualenv).
fn serve_command() -> Vec<String> {
    [
        &format!("{DEPS_PREFIX}/bin/mlflow"),
        "models",
        "serve",
        "-m",
        MODEL_DIR,
        "--env-manager",
        "local",
        "-h",
        "0.0.0.0",
        "-p",
        &PORT.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The model's dependencies (its requirements.txt, else conda.yaml) through the doctor, as
/// the report a repo's `check` gives: Python from MLmodel, no code to scan.
fn model_check(
    dir: &Path,
    ml: &mlmodel::MlModel,
    runtime: &str,
    target: &Reference,
) -> Result<CheckReport> {
    let (file, kind) = [
        ("requirements.txt", SpecKind::RequirementsTxt),
        ("conda.yaml", SpecKind::CondaYaml),
    ]
    .into_iter()
    .find(|(f, _)| dir.join(f).is_file())
    .ok_or_else(|| bad_input("the model has neither requirements.txt nor conda.yaml (MLflow writes both when it logs a model)"))?;
    let mut dep = match spec::load(dir, file, kind)? {
        Loaded::Spec(s) => *s,
        Loaded::Empty(why) => return Err(bad_input(why)),
    };
    if let Some(p) = &ml.python {
        dep.python = Some(p.clone());
    }
    let facts = Facts {
        code_scanned: false,
        runtime: runtime.to_string(),
        serving: true,
        ..Default::default()
    };
    let d = doctor(&dep, &facts)?;
    let (constraints, note) = training_environment(dir, &d.requirements, runtime)?;
    let mut notes = dep.notes.clone();
    notes.extend(note);
    Ok(CheckReport {
        source: dir.display().to_string(),
        commit: String::new(),
        commit_time: 0,
        shallow: false,
        image: target.to_string(),
        aggregator_image: None,
        spec: dep.file,
        ignored_specs: Vec::new(),
        notes,
        python: d.python,
        python_constraint: d.python_constraint,
        requirements: d.requirements.iter().map(|r| r.to_string()).collect(),
        doctor: d.fired,
        warnings: d.warnings,
        phases_ms: Default::default(),
        resolved: None,
        sboms: Default::default(),
        unverified: d.unverified,
        unprovided: d.unprovided,
        index_url: dep.index_url.clone(),
        extra_index_urls: dep.extra_index_urls.clone(),
        constraints,
        replaced_by_runtime: Vec::new(),
        repo: None,
        imports: Default::default(),
    })
}

/// The file our aggregator logs beside the model: `name==version` of every distribution it
/// trained and logged the model with.
pub const TRAINING_ENVIRONMENT: &str = "flops-environment.txt";

/// Constraints from the training environment for what the model's requirements leave open
/// (MLflow infers `torch` but not the NumPy it ran with), so the model is served with the
/// versions it was trained with; none for packages the requirements or the scoring server pin
/// exactly. Returns the constraints and a note for the report.
fn training_environment(
    dir: &Path,
    requirements: &[pep508_rs::Requirement],
    runtime: &str,
) -> Result<(Vec<String>, Option<String>)> {
    use crate::spec::imports::normalize;
    let Ok(text) = std::fs::read_to_string(dir.join(TRAINING_ENVIRONMENT)) else {
        return Ok((Vec::new(), None));
    };
    // Exact pins of the model's requirements and of the scoring server's stay theirs.
    let from_runtime = runtime.lines().filter_map(|l| {
        l.split('#')
            .next()?
            .trim()
            .parse::<pep508_rs::Requirement>()
            .ok()
    });
    let pinned: std::collections::BTreeSet<String> = requirements
        .iter()
        .cloned()
        .chain(from_runtime)
        .filter(|r| r.to_string().contains("=="))
        .map(|r| normalize(r.name.as_ref()))
        .collect();
    let constraints: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().parse::<pep508_rs::Requirement>().ok())
        .filter(|r| r.to_string().contains("==") && !pinned.contains(&normalize(r.name.as_ref())))
        .map(|r| r.to_string())
        .collect();
    let note = format!(
        "{TRAINING_ENVIRONMENT}: {} package versions of the training environment keep what the model's requirements leave open (e.g. {})",
        constraints.len(),
        constraints.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
    );
    tracing::info!("{note}");
    Ok((constraints, Some(note)))
}
