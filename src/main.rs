use clap::{Args, Parser, Subcommand};
use flops_image_builder::deps::sandbox;
use flops_image_builder::error::{bad_input, kind_of, one_line};
use flops_image_builder::notify::{
    Endpoint, Notifier, DEFAULT_MQTT_PORT, DEFAULT_OBSERVER_PORT, DEFAULT_TOPIC_PREFIX,
};
use flops_image_builder::oci::append::{self, AppendRequest, Output};
use flops_image_builder::oci::blobstore::default_cache_dir;
use flops_image_builder::oci::image::ConfigChanges;
use flops_image_builder::oci::layer::Compression;
use flops_image_builder::oci::reference::Platform;
use flops_image_builder::oci::registry;
use flops_image_builder::pipeline;
use flops_image_builder::repo::clone::CloneOptions;
use std::path::PathBuf;
use std::process::ExitCode;

const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FLOPS_GIT_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "flops-image-builder",
    version = VERSION,
    args_override_self = true,
    about = "Daemonless OCI image assembler for Oakestra FLOps: learner and aggregator images of an ML repo, and images serving a trained MLflow model",
    after_help = "FLOps manager forms (rewritten to `build --aggregator` / `model`):\n  flops-image-builder <registry_url> <flops_project_id> <mqtt_ip> <project_observer_ip> [--supported_platforms=P1[,P2]] [--deactivate-notifications] fl_actors <repo_url> <ml_model_flavor> [--use-devel-base-images]\n  flops-image-builder <registry_url> <flops_project_id> <mqtt_ip> <project_observer_ip> [--supported_platforms=P1[,P2]] [--deactivate-notifications] trained_model <customer_id> <tracking_server_uri> <run_id>\nSeed form (the first FLOps builder):\n  flops-image-builder <repo_url> <registry_url> <project_id> <mqtt_ip> <mqtt_port> <observer_ip>"
)]
struct Cli {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Append local directories as layers onto a base image and push it (like `crane append`).
    #[command(
        after_help = "Example:\n  flops-image-builder append --base http://127.0.0.1:5000/library/python:3.11-slim \\\n      --tag http://127.0.0.1:5000/demo/app:v1 --dir ./app:/app --workdir /app --cmd python3 --cmd main.py"
    )]
    Append(Box<AppendArgs>),
    /// Build the FLOps learner image of an ML repo (with `--aggregator` also the aggregator
    /// image: FLOps' `fl_actors` plan) and push it.
    #[command(
        after_help = "Example:\n  flops-image-builder build https://github.com/Malyuk-A/flops-ml-repo-sklearn --registry http://127.0.0.1:5000 --platform linux/amd64,linux/arm64"
    )]
    Build(Box<BuildArgs>),
    /// Build an image serving a trained MLflow model (FLOps' `trained_model` plan) and push it.
    #[command(
        after_help = "Examples:\n  flops-image-builder model --tracking-uri http://mlflow:5000 --run-id 0a1b2c3d --registry http://127.0.0.1:5000 --customer-id acme\n  flops-image-builder model --model-dir ./mlruns/0/0a1b2c3d/artifacts/model --tag v1 --registry http://127.0.0.1:5000"
    )]
    Model(Box<ModelArgs>),
    /// Clone, verify and doctor an ML repo without building: a dry run for CI.
    #[command(
        after_help = "Example:\n  flops-image-builder check https://github.com/Malyuk-A/flops-ml-repo-sklearn --registry 192.168.1.10:5073"
    )]
    Check(CheckArgs),
}

/// Flags shared by every command that builds and pushes an image.
#[derive(Args)]
struct ImageArgs {
    /// Registry to push to; `http://` selects plain HTTP.
    #[arg(long)]
    registry: String,
    /// Platforms, comma separated; several give an image index.
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    /// Base image [default: python:<python>-slim from the target registry, else Docker Hub
    /// through the mirrors].
    #[arg(long)]
    base_image: Option<String>,
    /// Registry mirror for pulling bases, REGISTRY=[http://]HOST[:PORT] (repeatable or comma
    /// separated); registries.conf mirrors ($CONTAINERS_REGISTRIES_CONF or
    /// /etc/containers/registries.conf) are used too.
    #[arg(
        long = "registry-mirror",
        env = "FLOPS_REGISTRY_MIRRORS",
        value_name = "REGISTRY=HOST"
    )]
    registry_mirror: Vec<String>,
    /// Fail when no base exists for the spec's Python instead of using the nearest newer one.
    #[arg(long)]
    strict_python: bool,
    /// More tags besides the plan's own (repeatable).
    #[arg(long)]
    tag: Vec<String>,
    /// Registry (HOST:PORT) that may use plain HTTP or a self-signed certificate (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
    /// Layer compression: gzip or zstd.
    #[arg(long, default_value = "gzip")]
    compression: String,
    /// Compression level (gzip 0-9, default 6; zstd 1-19, default 3).
    #[arg(long)]
    compression_level: Option<i32>,
    /// Most dependency layers per image: the largest packages alone, the rest together.
    #[arg(long, default_value_t = 12)]
    max_dep_layers: usize,
    /// Layers built at once, each on one thread [default: the number of cores]. The layers'
    /// bytes do not depend on it.
    #[arg(long, short = 'j', env = "FLOPS_JOBS", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// Cache directory (wheels, layers, blobs) [default: $XDG_CACHE_HOME/flops-image-builder].
    #[arg(long, env = "FLOPS_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// uv binary for resolving [default: uv on PATH].
    #[arg(long)]
    uv: Option<PathBuf>,
    /// Package index URL (uv also reads UV_INDEX_URL / PIP_INDEX_URL).
    #[arg(long)]
    index_url: Option<String>,
    /// Never build a package from an sdist (no package code runs; sdist-only packages fail).
    #[arg(long)]
    no_build: bool,
    /// A pin the code imports that conflicts with the FL runtime (or the scoring server) fails
    /// the build, instead of moving to the nearest version of its major that fits both.
    #[arg(long)]
    strict_pins: bool,
    /// Software bill of materials attached to every image as an OCI referrer: spdx (SPDX 2.3
    /// JSON per platform, from the lock) or none.
    #[arg(long, default_value = "spdx", value_parser = ["spdx", "none"])]
    sbom: String,
    /// glibc version of the base image (bounds manylinux wheels).
    #[arg(long, default_value = "2.28")]
    glibc: String,
    /// Interpreter for scripts' shebangs inside the image.
    #[arg(long, default_value = "/usr/bin/env python3")]
    python: String,
    /// Working directory of the image (repo code goes here).
    #[arg(long, default_value = "/app")]
    workdir: String,
    /// Resolve the dependencies again even if a lock of the same inputs exists (picks up new
    /// releases of unpinned packages; the image digest may change).
    #[arg(long)]
    refresh_lock: bool,
    /// A package that one platform gets and another does not is an error, not a warning.
    #[arg(long)]
    strict_platforms: bool,
    #[command(flatten)]
    notify: NotifyArgs,
    /// Print a JSON report on stdout.
    #[arg(long)]
    json: bool,
}

/// Where progress messages go (FLOps manager over MQTT, project observer over TCP).
#[derive(Args)]
struct NotifyArgs {
    /// FLOps project id, sent in every MQTT message.
    #[arg(long, default_value = "")]
    project_id: String,
    /// MQTT broker of the FLOps manager, HOST[:PORT] (default port 9027).
    #[arg(long, value_name = "HOST[:PORT]")]
    mqtt: Option<String>,
    /// Project observer, HOST[:PORT] (default port 2727): one text message per phase.
    #[arg(long, value_name = "HOST[:PORT]")]
    observer: Option<String>,
    /// MQTT topic prefix: <prefix>/started, /success, /failed [default: the plan's FLOps
    /// subject, flops_manager/fl_actors_image_builder or .../trained_model_image_builder].
    #[arg(long)]
    topic_prefix: Option<String>,
    /// Send no MQTT or observer messages.
    #[arg(long, alias = "deactivate-notifications")]
    no_notify: bool,
    /// Seconds to wait for the broker or observer per attempt (3 attempts, then a warning).
    #[arg(long, default_value_t = 2.0)]
    notify_timeout: f64,
}

#[derive(Args)]
struct BuildArgs {
    /// Git URL (https, http, file://) or local path of the ML repo.
    repo: String,
    /// Branch, tag or commit [default: the default branch].
    #[arg(long = "ref")]
    git_ref: Option<String>,
    /// Also build the aggregator image (FLOps' `fl_actors` plan): learner and aggregator from
    /// one lock.
    #[arg(long)]
    aggregator: bool,
    /// ML_MODEL_FLAVOR of the images: sklearn, pytorch, tensorflow or keras (required with
    /// --aggregator, which saves the model with it).
    #[arg(long)]
    model_flavor: Option<String>,
    /// Accepted for FLOps' command line and ignored: layer reuse replaces prebuilt bases.
    #[arg(long, hide = true)]
    use_devel_base_images: bool,
    /// Refuse repositories larger than this many MB.
    #[arg(long, default_value_t = 500)]
    max_repo_size: u64,
    #[command(flatten)]
    image: ImageArgs,
}

#[derive(Args)]
struct ModelArgs {
    /// MLflow tracking server (`http(s)://`; credentials in the URL, MLFLOW_TRACKING_TOKEN or
    /// MLFLOW_TRACKING_USERNAME/PASSWORD) or `file://` tracking store holding the run.
    #[arg(long, requires = "run_id", conflicts_with = "model_dir")]
    tracking_uri: Option<String>,
    /// The run whose model is served (also the image's tag).
    #[arg(long, requires = "tracking_uri")]
    run_id: Option<String>,
    /// Artifact path of the model in the run (or the name of its MLflow 3 logged model).
    #[arg(long, default_value = "logged_model_artifact")]
    artifact_path: String,
    /// A local MLflow model directory (MLmodel at its top) instead of a run; needs --tag.
    #[arg(long, required_unless_present = "tracking_uri")]
    model_dir: Option<PathBuf>,
    /// The customer the image belongs to: `<registry>/<customer>/trained_model:<run id>`.
    #[arg(long, default_value = "local")]
    customer_id: String,
    #[command(flatten)]
    image: ImageArgs,
}

#[derive(Args)]
struct CheckArgs {
    /// Git URL (https, http, file://) or local path of the ML repo. Credentials: in the URL or GIT_TOKEN.
    repo: String,
    /// Branch, tag or commit to check out [default: the default branch].
    #[arg(long = "ref")]
    git_ref: Option<String>,
    /// Registry the image would be pushed to (only used to print the image name).
    #[arg(long)]
    registry: Option<String>,
    /// Refuse repositories larger than this many MB.
    #[arg(long, default_value_t = 500)]
    max_repo_size: u64,
    /// Doctor for the learner and the aggregator image (their runtimes' requirements).
    #[arg(long)]
    aggregator: bool,
    /// Platforms the image would have: packages some of them would lack are reported.
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    /// Also write the SPDX SBOMs `build` would attach (role → platform → document, in the JSON
    /// report's `sboms`): finds the base and the lock as a build does, with pull access to
    /// --registry; nothing is built or pushed.
    #[arg(long, requires = "registry")]
    sbom: bool,
    /// Cache directory (locks, licenses) [default: $XDG_CACHE_HOME/flops-image-builder].
    #[arg(long, env = "FLOPS_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Print a JSON report on stdout.
    #[arg(long)]
    json: bool,
}

/// `build`'s defaults, for what `check` does as a build would.
#[derive(clap::Parser)]
struct ImageDefaults {
    #[command(flatten)]
    image: ImageArgs,
}

#[derive(Args)]
struct AppendArgs {
    /// Base image reference; `http://` selects plain HTTP.
    #[arg(long)]
    base: String,
    /// Reference to push (with --output oci-layout: the tag names the image in the layout).
    #[arg(long)]
    tag: String,
    /// LOCAL_DIR:/path/in/image — one layer each, in order.
    #[arg(long = "dir", required = true)]
    dirs: Vec<String>,
    /// Environment variable for the image config (repeatable).
    #[arg(long, value_name = "K=V")]
    env: Vec<String>,
    /// Working directory of the image.
    #[arg(long)]
    workdir: Option<String>,
    /// Command of the image, one argument per flag (repeatable).
    #[arg(long = "cmd", value_name = "ARG", allow_hyphen_values = true)]
    cmd: Vec<String>,
    /// Entrypoint of the image, one argument per flag (repeatable).
    #[arg(long = "entrypoint", value_name = "ARG", allow_hyphen_values = true)]
    entrypoint: Vec<String>,
    /// User the image runs as (`UID[:GID]` or a name the base knows).
    #[arg(long)]
    user: Option<String>,
    /// Label for the image config (repeatable).
    #[arg(long, value_name = "K=V")]
    label: Vec<String>,
    /// Platforms to build, comma separated; several give an image index [default: the base's, linux/amd64 for an index].
    #[arg(long)]
    platform: Option<String>,
    /// Registry (HOST:PORT) that may use plain HTTP or a self-signed certificate (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
    /// Where the image goes: `registry`, or `oci-layout:DIR`.
    #[arg(long, default_value = "registry")]
    output: String,
    /// Layer compression: gzip or zstd.
    #[arg(long, default_value = "gzip")]
    compression: String,
    /// Compression level (gzip 0-9, default 6; zstd 1-19, default 3).
    #[arg(long)]
    compression_level: Option<i32>,
    /// Cache directory (blobs and built layers) [default: $XDG_CACHE_HOME/flops-image-builder].
    #[arg(long, env = "FLOPS_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Print a JSON report on stdout instead of the reference.
    #[arg(long)]
    json: bool,
}

fn key_values(flag: &str, items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(bad_input(format!("invalid {flag} {kv:?}: use KEY=VALUE"))),
        })
        .collect()
}

fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v
            .trim()
            .parse()
            .map_err(|_| bad_input(format!("SOURCE_DATE_EPOCH={v:?} is not a Unix time"))),
        _ => Ok(0),
    }
}

async fn run_append(a: AppendArgs) -> anyhow::Result<()> {
    let req = AppendRequest {
        base: a.base,
        tag: a.tag,
        dirs: a.dirs,
        changes: ConfigChanges {
            env: key_values("--env", &a.env)?,
            workdir: a.workdir,
            cmd: (!a.cmd.is_empty()).then_some(a.cmd),
            entrypoint: (!a.entrypoint.is_empty()).then_some(a.entrypoint),
            user: a.user,
            labels: key_values("--label", &a.label)?.into_iter().collect(),
            ..Default::default()
        },
        platforms: a
            .platform
            .as_deref()
            .map(Platform::parse_list)
            .transpose()?
            .unwrap_or_default(),
        registry: registry::Options {
            insecure: a.insecure_registry,
        },
        output: Output::parse(&a.output)?,
        compression: Compression::parse(&a.compression, a.compression_level)?,
        epoch: source_date_epoch()?,
        cache_dir: a.cache_dir.unwrap_or_else(default_cache_dir),
    };
    let report = append::run(req).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.reference);
    }
    Ok(())
}

async fn run_check(a: CheckArgs) -> anyhow::Result<()> {
    let opts = CloneOptions {
        git_ref: a.git_ref.clone(),
        max_bytes: a.max_repo_size * 1_000_000,
    };
    let platforms = Platform::parse_list(&a.platform)?;
    let (runtime, aggregator) = (runtime_requirements(a.aggregator), a.aggregator);
    let (repo, registry) = (a.repo.clone(), a.registry.clone());
    let (mut report, checkout) = tokio::task::spawn_blocking(move || {
        pipeline::check(&repo, &opts, registry.as_deref(), &runtime)
    })
    .await??;
    report
        .warnings
        .extend(pipeline::source::platform_warnings(&report, &platforms)?);
    if aggregator {
        // Named as fl_actors names it: the learner's repository with the role swapped.
        report.aggregator_image = report
            .image
            .rsplit_once("/learner:")
            .map(|(repo, tag)| format!("{repo}/aggregator:{tag}"));
    }
    if a.sbom {
        report.sboms = check_sboms(&a, &report, checkout.root()).await?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

/// `check --sbom`: the documents `build` would attach, with `build`'s defaults.
async fn check_sboms(
    a: &CheckArgs,
    report: &pipeline::CheckReport,
    root: &std::path::Path,
) -> anyhow::Result<
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, serde_json::Value>>,
> {
    use flops_image_builder::repo::augment::{AGGREGATOR, LEARNER};
    let registry = a.registry.clone().unwrap_or_default();
    let mut args = vec!["check", "--registry", &registry, "--platform", &a.platform];
    let cache = a.cache_dir.as_ref().map(|c| c.display().to_string());
    if let Some(c) = &cache {
        args.extend(["--cache-dir", c]);
    }
    let d = <ImageDefaults as clap::Parser>::try_parse_from(args)?;
    let opts = options(&d.image, None)?;
    let mut images: Vec<(&'static str, &flops_image_builder::repo::augment::Runtime)> =
        vec![("learner", &LEARNER)];
    if a.aggregator {
        images.push(("aggregator", &AGGREGATOR));
    }
    pipeline::sbom::preview(&opts, report, root, &images).await
}

/// The requirements the FL runtimes add: the learner's, and the aggregator's with it.
fn runtime_requirements(aggregator: bool) -> String {
    use flops_image_builder::repo::augment::{AGGREGATOR, LEARNER};
    let mut r = LEARNER.requirements.to_string();
    if aggregator {
        r.push_str(AGGREGATOR.requirements);
    }
    r
}

fn notifier(n: &NotifyArgs, default_prefix: &str) -> anyhow::Result<Notifier> {
    if n.no_notify {
        return Ok(Notifier::disabled());
    }
    let mqtt = n
        .mqtt
        .as_deref()
        .map(|m| Endpoint::parse(m, DEFAULT_MQTT_PORT))
        .transpose()?;
    let observer = n
        .observer
        .as_deref()
        .map(|o| Endpoint::parse(o, DEFAULT_OBSERVER_PORT))
        .transpose()?;
    Ok(Notifier::new(
        &n.project_id,
        mqtt,
        observer,
        n.topic_prefix.as_deref().unwrap_or(default_prefix),
        std::time::Duration::from_secs_f64(n.notify_timeout.max(0.1)),
    ))
}

/// Runs a plan between `started` and exactly one `success` or `failed` message.
async fn notified<R: serde::Serialize>(
    notifier: &Notifier,
    what: &str,
    started: serde_json::Value,
    json: bool,
    reference: impl Fn(&R) -> String,
    plan: impl std::future::Future<Output = anyhow::Result<R>>,
) -> anyhow::Result<()> {
    notifier.started(what, started).await;
    match plan.await {
        Ok(report) => {
            notifier.success(serde_json::to_value(&report)?).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", reference(&report));
            }
            Ok(())
        }
        Err(e) => {
            // Exactly one failed message per failed build, whatever the phase.
            notifier.failed(&one_line(&e)).await;
            Err(e)
        }
    }
}

async fn run_build(a: BuildArgs) -> anyhow::Result<()> {
    let notifier = notifier(&a.image.notify, DEFAULT_TOPIC_PREFIX)?;
    if let Err(e) = validate_build(&a) {
        notifier.failed(&one_line(&e)).await;
        return Err(e);
    }
    if a.use_devel_base_images {
        tracing::warn!("--use-devel-base-images is ignored: dependency layers are reused from the registry instead of prebuilt development bases");
    }
    let source = flops_image_builder::repo::naming::split_credentials(&a.repo).0;
    let json = a.image.json;
    let aggregator = a.aggregator;
    let started = serde_json::json!({ "repo_url": source });
    let req = pipeline::fl_actors::BuildRequest {
        repo: a.repo.clone(),
        clone: CloneOptions {
            git_ref: a.git_ref.clone(),
            max_bytes: a.max_repo_size * 1_000_000,
        },
        opts: options(&a.image, a.model_flavor.clone())?,
    };
    let reference = |r: &pipeline::fl_actors::FlReport| {
        if r.images.is_empty() {
            r.image.reference.clone()
        } else {
            r.images
                .values()
                .map(|i| i.reference.clone())
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let plan = async {
        if aggregator {
            pipeline::fl_actors::build(&req, &notifier).await
        } else {
            pipeline::learner::build(&req, &notifier).await
        }
    };
    notified(&notifier, &source, started, json, reference, plan).await
}

async fn run_model(a: ModelArgs) -> anyhow::Result<()> {
    use flops_image_builder::model::ModelSource;
    use flops_image_builder::notify::MODEL_TOPIC_PREFIX;
    let notifier = notifier(&a.image.notify, MODEL_TOPIC_PREFIX)?;
    let source = match (&a.tracking_uri, &a.run_id, &a.model_dir) {
        (Some(t), Some(r), _) => ModelSource::Run {
            tracking_uri: t.clone(),
            run_id: r.clone(),
            artifact_path: a.artifact_path.clone(),
        },
        (_, _, Some(d)) => ModelSource::Dir(d.clone()),
        _ => unreachable!("clap requires a run or a directory"),
    };
    let (what, started) = match &source {
        ModelSource::Run {
            tracking_uri,
            run_id,
            ..
        } => {
            let shown = flops_image_builder::model::mlflow::shown(tracking_uri);
            (
                format!("the model of run {run_id} ({shown})"),
                serde_json::json!({ "run_id": run_id, "tracking_uri": shown }),
            )
        }
        ModelSource::Dir(d) => (
            format!("the model in {}", d.display()),
            serde_json::json!({ "model_dir": d }),
        ),
    };
    let req = pipeline::trained_model::ModelRequest {
        source,
        customer_id: a.customer_id.clone(),
        opts: options(&a.image, None)?,
    };
    notified(
        &notifier,
        &what,
        started,
        a.image.json,
        |r: &pipeline::trained_model::ModelReport| r.image.reference.clone(),
        pipeline::trained_model::build(&req, &notifier),
    )
    .await
}

/// Command-line checks that need no network: the flavor FLOps accepts.
fn validate_build(a: &BuildArgs) -> anyhow::Result<()> {
    match &a.model_flavor {
        Some(f) => pipeline::check_flavor(f),
        None if a.aggregator => Err(flops_image_builder::error::usage(format!(
            "--aggregator needs --model-flavor (one of {}): the aggregator saves the model with it",
            pipeline::MODEL_FLAVORS.join(", ")
        ))),
        None => Ok(()),
    }
}

fn options(a: &ImageArgs, model_flavor: Option<String>) -> anyhow::Result<pipeline::Options> {
    let glibc = a
        .glibc
        .split_once('.')
        .and_then(|(x, y)| Some((x.parse().ok()?, y.parse().ok()?)))
        .ok_or_else(|| bad_input(format!("invalid --glibc {:?}: use MAJOR.MINOR", a.glibc)))?;
    let conf = flops_image_builder::oci::mirrors::Mirrors::default_conf();
    Ok(pipeline::Options {
        registry: a.registry.clone(),
        platforms: Platform::parse_list(&a.platform)?,
        base_image: a.base_image.clone(),
        model_flavor,
        extra_tags: a.tag.clone(),
        registry_opts: registry::Options {
            insecure: a.insecure_registry.clone(),
        },
        compression: Compression::parse(&a.compression, a.compression_level)?,
        cache_dir: a.cache_dir.clone().unwrap_or_else(default_cache_dir),
        max_dep_layers: a.max_dep_layers,
        jobs: a.jobs.map_or_else(
            || std::thread::available_parallelism().map_or(2, |n| n.get()),
            usize::from,
        ),
        resolve: flops_image_builder::deps::resolve::ResolveOptions {
            uv: a.uv.clone(),
            index_url: a.index_url.clone(),
            extra_index_urls: Vec::new(),
            no_build: a.no_build,
            strict_pins: a.strict_pins,
            constraints: Vec::new(),
        },
        glibc,
        python: a.python.clone(),
        workdir: a.workdir.clone(),
        refresh_lock: a.refresh_lock,
        strict_platforms: a.strict_platforms,
        strict_python: a.strict_python,
        sbom: a.sbom == "spdx",
        mirrors: flops_image_builder::oci::mirrors::Mirrors::load(
            &a.registry_mirror,
            conf.as_deref(),
        )?,
    })
}

/// Upstream's positional form, `<repo_url> <registry_url> <project_id> <mqtt_ip> <mqtt_port>
/// <observer_ip>`, rewritten to `build`. Upstream pushed with TLS verification off, so the
/// registry host is treated as insecure (self-signed or plain HTTP) here too.
fn seed_args(args: Vec<String>) -> Vec<String> {
    let subcommand = <Cli as clap::CommandFactory>::command()
        .get_subcommands()
        .any(|c| c.get_name() == args[1])
        || args[1] == "help";
    if args.len() == 7 && !args[1].starts_with('-') && !subcommand {
        let host = flops_image_builder::repo::naming::registry_host(&args[2]);
        let mut v: Vec<String> = vec![
            args[0].clone(),
            "build".into(),
            args[1].clone(),
            "--registry".into(),
            args[2].clone(),
        ];
        v.extend([
            "--project-id".into(),
            args[3].clone(),
            "--mqtt".into(),
            format!("{}:{}", args[4], args[5]),
            "--observer".into(),
            args[6].clone(),
        ]);
        v.extend(["--insecure-registry".into(), host]);
        return v;
    }
    args
}

/// Today's FLOps manager form, rewritten to the named commands:
/// `<registry_url> <flops_project_id> <mqtt_ip> <project_observer_ip>
/// [--supported_platforms=P1[,P2]] [--deactivate-notifications] <plan> <plan args...>` with
/// plan `fl_actors <repo_url> <ml_model_flavor> [--use-devel-base-images]` (→ `build
/// --aggregator`) or `trained_model <customer_id> <tracking_server_uri> <run_id>` (→ `model`).
/// As upstream pushed with TLS verification off, the registry host is `--insecure-registry`.
/// `Err` is a usage message for a form that names a plan but lacks its arguments.
fn manager_args(args: &[String]) -> Option<Result<Vec<String>, String>> {
    let plan_at = args
        .iter()
        .position(|a| a == "fl_actors" || a == "trained_model")?;
    let mut positional = Vec::new();
    let mut platforms = None;
    let mut quiet = false;
    let mut extra = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        if let Some(p) = a.strip_prefix("--supported_platforms=") {
            platforms = Some(p.to_string());
        } else if a == "--supported_platforms" {
            i += 1;
            platforms = args.get(i).cloned();
        } else if a == "--deactivate-notifications" {
            quiet = true;
        } else if a == "--use-devel-base-images" {
            extra.push(a.clone());
        } else if i != plan_at {
            positional.push(a.clone());
        }
        i += 1;
    }
    let plan = args[plan_at].as_str();
    let want = if plan == "fl_actors" { 6 } else { 7 };
    if positional.len() != want {
        return Some(Err(format!(
            "usage: <registry_url> <flops_project_id> <mqtt_ip> <project_observer_ip> [--supported_platforms=P1[,P2]] [--deactivate-notifications] {}",
            if plan == "fl_actors" {
                "fl_actors <repo_url> <ml_model_flavor> [--use-devel-base-images]"
            } else {
                "trained_model <customer_id> <tracking_server_uri> <run_id>"
            }
        )));
    }
    let [reg, project, mqtt, observer] = [0, 1, 2, 3].map(|k| positional[k].clone());
    let host = flops_image_builder::repo::naming::registry_host(&reg);
    let mut v: Vec<String> = vec![args[0].clone()];
    if plan == "fl_actors" {
        v.extend([
            "build".into(),
            "--aggregator".into(),
            positional[4].clone(),
            "--model-flavor".into(),
            positional[5].clone(),
        ]);
    } else {
        v.extend([
            "model".into(),
            "--customer-id".into(),
            positional[4].clone(),
            "--tracking-uri".into(),
            positional[5].clone(),
            "--run-id".into(),
            positional[6].clone(),
        ]);
    }
    v.extend([
        "--registry".into(),
        reg,
        "--insecure-registry".into(),
        host,
        "--project-id".into(),
        project,
        "--mqtt".into(),
        mqtt,
        "--observer".into(),
        observer,
    ]);
    if let Some(p) = platforms {
        v.extend(["--platform".into(), p]);
    }
    if quiet {
        v.push("--no-notify".into());
    }
    v.extend(extra);
    Some(Ok(v))
}

fn main() -> ExitCode {
    // The package-code launcher (src/deps/sandbox.rs): restrict, then exec; before anything else.
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if raw.get(1).is_some_and(|a| a == sandbox::SANDBOX_ARG) {
        return ExitCode::from(sandbox::launcher_main(&raw[2..]) as u8);
    }
    let args: Vec<String> = std::env::args().collect();
    let args = match manager_args(&args) {
        Some(Ok(v)) => v,
        Some(Err(usage)) => {
            eprintln!("error: {usage}");
            return ExitCode::from(2);
        }
        None => seed_args(args),
    };
    let cli = Cli::parse_from(args);
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "info",
        (_, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOPS_LOG")
        .unwrap_or_else(|_| format!("warn,flops_image_builder={level}").into());
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    // Bars only for a person at a terminal; logs (containerd, CI) get plain timestamped lines.
    flops_image_builder::progress::init(!cli.quiet && terminal);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        match cli.command {
            Command::Append(a) => run_append(*a).await,
            Command::Check(a) => run_check(a).await,
            Command::Build(a) => run_build(*a).await,
            Command::Model(a) => run_model(*a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", flops_image_builder::error::full(&e));
            ExitCode::from(kind_of(&e).exit_code() as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn managers_fl_actors_form() {
        let got = manager_args(&args("main.py http://reg:5073 p1 10.0.0.1 10.0.0.2 --supported_platforms=linux/amd64,linux/arm64 fl_actors https://github.com/O/R sklearn --use-devel-base-images")).unwrap().unwrap();
        assert_eq!(got, args("main.py build --aggregator https://github.com/O/R --model-flavor sklearn --registry http://reg:5073 --insecure-registry reg:5073 --project-id p1 --mqtt 10.0.0.1 --observer 10.0.0.2 --platform linux/amd64,linux/arm64 --use-devel-base-images"));
        let cli = Cli::try_parse_from(got).unwrap();
        assert!(
            matches!(cli.command, Command::Build(b) if b.aggregator && b.use_devel_base_images)
        );
        let quiet = manager_args(&args(
            "m r p q o --deactivate-notifications fl_actors u keras",
        ))
        .unwrap()
        .unwrap();
        assert!(quiet.contains(&"--no-notify".to_string()));
    }

    #[test]
    fn managers_trained_model_form() {
        let got = manager_args(&args("main.py 192.168.1.5:5073 p1 10.0.0.1 10.0.0.2 --supported_platforms linux/arm64 trained_model Customer-1 http://10.0.0.3:7027 0a1b2c")).unwrap().unwrap();
        assert_eq!(got, args("main.py model --customer-id Customer-1 --tracking-uri http://10.0.0.3:7027 --run-id 0a1b2c --registry 192.168.1.5:5073 --insecure-registry 192.168.1.5:5073 --project-id p1 --mqtt 10.0.0.1 --observer 10.0.0.2 --platform linux/arm64"));
        assert!(manager_args(&args("main.py r p q trained_model c u"))
            .unwrap()
            .is_err());
        assert!(manager_args(&args("main.py build . --registry r")).is_none());
    }
}
