//! The command line: clap's definitions of the named commands ([`Cli`]), what each command
//! runs ([`run`]), and FLOps' two historic command-line forms rewritten to them ([`flops`]).

pub mod flops;
pub mod run;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

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
pub struct Cli {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
pub struct ImageArgs {
    /// Registry to push to; `http://` selects plain HTTP.
    #[arg(long)]
    pub registry: String,
    /// Platforms, comma separated; several give an image index.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// Base image [default: python:<python>-slim from the target registry, else Docker Hub
    /// through the mirrors].
    #[arg(long)]
    pub base_image: Option<String>,
    /// Registry mirror for pulling bases, REGISTRY=[http://]HOST[:PORT] (repeatable or comma
    /// separated); registries.conf mirrors ($CONTAINERS_REGISTRIES_CONF or
    /// /etc/containers/registries.conf) are used too.
    #[arg(
        long = "registry-mirror",
        env = "FLOPS_REGISTRY_MIRRORS",
        value_name = "REGISTRY=HOST"
    )]
    pub registry_mirror: Vec<String>,
    /// Fail when no base exists for the spec's Python instead of using the nearest newer one.
    #[arg(long)]
    pub strict_python: bool,
    /// More tags besides the plan's own (repeatable).
    #[arg(long)]
    pub tag: Vec<String>,
    /// Registry (HOST:PORT) that may use plain HTTP or a self-signed certificate (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registry: Vec<String>,
    /// Layer compression: gzip, estargz (gzip that lazy-pulling nodes mount before the layer is
    /// there: stargz-snapshotter's eStargz) or zstd.
    #[arg(long, env = "FLOPS_COMPRESSION", default_value = "gzip")]
    pub compression: String,
    /// Compression level (gzip and estargz 0-9, default 6; zstd 1-19, default 3).
    #[arg(long)]
    pub compression_level: Option<i32>,
    /// Most dependency layers per image: the largest packages alone, the rest together.
    #[arg(long, default_value_t = 12)]
    pub max_dep_layers: usize,
    /// Layers built at once, each on one thread [default: the number of cores]. The layers'
    /// bytes do not depend on it.
    #[arg(long, short = 'j', env = "FLOPS_JOBS", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
    /// Cache directory (wheels, layers, blobs) [default: $XDG_CACHE_HOME/flops-image-builder].
    #[arg(long, env = "FLOPS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// uv binary for resolving [default: uv on PATH].
    #[arg(long)]
    pub uv: Option<PathBuf>,
    /// Package index URL (uv also reads UV_INDEX_URL / PIP_INDEX_URL).
    #[arg(long)]
    pub index_url: Option<String>,
    /// Never build a package from an sdist (no package code runs; sdist-only packages fail).
    #[arg(long)]
    pub no_build: bool,
    /// A pin the code imports that conflicts with the FL runtime (or the scoring server) fails
    /// the build, instead of moving to the nearest version of its major that fits both.
    #[arg(long)]
    pub strict_pins: bool,
    /// Software bill of materials attached to every image as an OCI referrer: spdx (SPDX 2.3
    /// JSON per platform, from the lock) or none.
    #[arg(long, default_value = "spdx", value_parser = ["spdx", "none"])]
    pub sbom: String,
    /// Bytecode of the dependencies' modules, compiled into their layers so containers do not
    /// compile them at every start: auto (with the builder's `python3.X` of the image's Python,
    /// when it has one) or none.
    #[arg(long, default_value = "auto", value_parser = ["auto", "none"])]
    pub bytecode: String,
    /// glibc version of the base image (bounds manylinux wheels).
    #[arg(long, default_value = "2.28")]
    pub glibc: String,
    /// Interpreter for scripts' shebangs inside the image.
    #[arg(long, default_value = "/usr/bin/env python3")]
    pub python: String,
    /// Working directory of the image (repo code goes here).
    #[arg(long, default_value = "/app")]
    pub workdir: String,
    /// Resolve the dependencies again even if a lock of the same inputs exists (picks up new
    /// releases of unpinned packages; the image digest may change).
    #[arg(long)]
    pub refresh_lock: bool,
    /// A package that one platform gets and another does not is an error, not a warning.
    #[arg(long)]
    pub strict_platforms: bool,
    #[command(flatten)]
    pub notify: NotifyArgs,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Where progress messages go (FLOps manager over MQTT, project observer over TCP).
#[derive(Args)]
pub struct NotifyArgs {
    /// FLOps project id, sent in every MQTT message.
    #[arg(long, default_value = "")]
    pub project_id: String,
    /// MQTT broker of the FLOps manager, HOST[:PORT] (default port 9027).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub mqtt: Option<String>,
    /// Project observer, HOST[:PORT] (default port 2727): one text message per phase.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub observer: Option<String>,
    /// MQTT topic prefix: <prefix>/started, /success, /failed [default: the plan's FLOps
    /// subject, flops_manager/fl_actors_image_builder or .../trained_model_image_builder].
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// Send no MQTT or observer messages.
    #[arg(long, alias = "deactivate-notifications")]
    pub no_notify: bool,
    /// Seconds to wait for the broker or observer per attempt (3 attempts, then a warning).
    #[arg(long, default_value_t = 2.0)]
    pub notify_timeout: f64,
}

#[derive(Args)]
pub struct BuildArgs {
    /// Git URL (https, http, file://) or local path of the ML repo.
    pub repo: String,
    /// Branch, tag or commit [default: the default branch].
    #[arg(long = "ref")]
    pub git_ref: Option<String>,
    /// Also build the aggregator image (FLOps' `fl_actors` plan): learner and aggregator from
    /// one lock.
    #[arg(long)]
    pub aggregator: bool,
    /// ML_MODEL_FLAVOR of the images: sklearn, pytorch, tensorflow or keras (required with
    /// --aggregator, which saves the model with it).
    #[arg(long)]
    pub model_flavor: Option<String>,
    /// Accepted for FLOps' command line and ignored: layer reuse replaces prebuilt bases.
    #[arg(long, hide = true)]
    pub use_devel_base_images: bool,
    /// Refuse repositories larger than this many MB.
    #[arg(long, default_value_t = 500)]
    pub max_repo_size: u64,
    #[command(flatten)]
    pub image: ImageArgs,
}

#[derive(Args)]
pub struct ModelArgs {
    /// MLflow tracking server (`http(s)://`; credentials in the URL, MLFLOW_TRACKING_TOKEN or
    /// MLFLOW_TRACKING_USERNAME/PASSWORD) or `file://` tracking store holding the run.
    #[arg(long, requires = "run_id", conflicts_with = "model_dir")]
    pub tracking_uri: Option<String>,
    /// The run whose model is served (also the image's tag).
    #[arg(long, requires = "tracking_uri")]
    pub run_id: Option<String>,
    /// Artifact path of the model in the run (or the name of its MLflow 3 logged model).
    #[arg(long, default_value = "logged_model_artifact")]
    pub artifact_path: String,
    /// A local MLflow model directory (MLmodel at its top) instead of a run; needs --tag.
    #[arg(long, required_unless_present = "tracking_uri")]
    pub model_dir: Option<PathBuf>,
    /// The customer the image belongs to: `<registry>/<customer>/trained_model:<run id>`.
    #[arg(long, default_value = "local")]
    pub customer_id: String,
    #[command(flatten)]
    pub image: ImageArgs,
}

#[derive(Args)]
pub struct CheckArgs {
    /// Git URL (https, http, file://) or local path of the ML repo. Credentials: in the URL or GIT_TOKEN.
    pub repo: String,
    /// Branch, tag or commit to check out [default: the default branch].
    #[arg(long = "ref")]
    pub git_ref: Option<String>,
    /// Registry the image would be pushed to (the image name; with --sbom, where the base and
    /// the shared lock are looked up).
    #[arg(long)]
    pub registry: Option<String>,
    /// Refuse repositories larger than this many MB.
    #[arg(long, default_value_t = 500)]
    pub max_repo_size: u64,
    /// Doctor for the learner and the aggregator image (their runtimes' requirements).
    #[arg(long)]
    pub aggregator: bool,
    /// Platforms the image would have: packages some of them would lack are reported.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// Also write the SPDX SBOMs `build` would attach (role → platform → document, in the JSON
    /// report's `sboms`): finds the base and the lock as a build does, with pull access to
    /// --registry; nothing is built or pushed.
    #[arg(long, requires_all = ["registry", "json"])]
    pub sbom: bool,
    /// Cache directory (locks, licenses) [default: $XDG_CACHE_HOME/flops-image-builder].
    #[arg(long, env = "FLOPS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Only the intake (spec, doctor, imports): do not resolve the lock `build` would make
    /// (which asks the package index for metadata, and catches unknown packages, versions
    /// that do not exist and conflicts).
    #[arg(long)]
    pub offline: bool,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `build`'s defaults, for what `check` does as a build would.
#[derive(clap::Parser)]
pub struct ImageDefaults {
    #[command(flatten)]
    pub image: ImageArgs,
}

#[derive(Args)]
pub struct AppendArgs {
    /// Base image reference; `http://` selects plain HTTP.
    #[arg(long)]
    pub base: String,
    /// Reference to push (with --output oci-layout: the tag names the image in the layout).
    #[arg(long)]
    pub tag: String,
    /// LOCAL_DIR:/path/in/image — one layer each, in order.
    #[arg(long = "dir", required = true)]
    pub dirs: Vec<String>,
    /// Environment variable for the image config (repeatable).
    #[arg(long, value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory of the image.
    #[arg(long)]
    pub workdir: Option<String>,
    /// Command of the image, one argument per flag (repeatable).
    #[arg(long = "cmd", value_name = "ARG", allow_hyphen_values = true)]
    pub cmd: Vec<String>,
    /// Entrypoint of the image, one argument per flag (repeatable).
    #[arg(long = "entrypoint", value_name = "ARG", allow_hyphen_values = true)]
    pub entrypoint: Vec<String>,
    /// User the image runs as (`UID[:GID]` or a name the base knows).
    #[arg(long)]
    pub user: Option<String>,
    /// Label for the image config (repeatable).
    #[arg(long, value_name = "K=V")]
    pub label: Vec<String>,
    /// Platforms to build, comma separated; several give an image index [default: the base's, linux/amd64 for an index].
    #[arg(long)]
    pub platform: Option<String>,
    /// Registry (HOST:PORT) that may use plain HTTP or a self-signed certificate (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registry: Vec<String>,
    /// Where the image goes: `registry`, or `oci-layout:DIR`.
    #[arg(long, default_value = "registry")]
    pub output: String,
    /// Layer compression: gzip, estargz (gzip that lazy-pulling nodes mount before the layer is
    /// there: stargz-snapshotter's eStargz) or zstd.
    #[arg(long, env = "FLOPS_COMPRESSION", default_value = "gzip")]
    pub compression: String,
    /// Compression level (gzip and estargz 0-9, default 6; zstd 1-19, default 3).
    #[arg(long)]
    pub compression_level: Option<i32>,
    /// Cache directory (blobs and built layers) [default: $XDG_CACHE_HOME/flops-image-builder].
    #[arg(long, env = "FLOPS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print a JSON report on stdout instead of the reference.
    #[arg(long)]
    pub json: bool,
}
