use clap::{Args, Parser, Subcommand};
use flops_image_builder::error::{bad_input, kind_of, one_line};
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
    about = "Daemonless OCI image assembler for Oakestra FLOps learner images",
    after_help = "Seed-compatible form (upstream FLOps):\n  flops-image-builder <repo_url> <registry_url> <project_id> <mqtt_ip> <mqtt_port> <observer_ip>"
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
    /// Build the FLOps learner image of an ML repo and push it.
    #[command(
        after_help = "Example:\n  flops-image-builder build https://github.com/Malyuk-A/flops-ml-repo-sklearn --registry http://127.0.0.1:5000 --platform linux/amd64,linux/arm64"
    )]
    Build(Box<BuildArgs>),
    /// Clone, verify and doctor an ML repo without building: a dry run for CI.
    #[command(
        after_help = "Example:\n  flops-image-builder check https://github.com/Malyuk-A/flops-ml-repo-sklearn --registry 192.168.1.10:5073"
    )]
    Check(CheckArgs),
}

#[derive(Args)]
struct BuildArgs {
    /// Git URL (https, http, file://) or local path of the ML repo.
    repo: String,
    /// Registry to push to; `http://` selects plain HTTP.
    #[arg(long)]
    registry: String,
    /// Branch, tag or commit [default: the default branch].
    #[arg(long = "ref")]
    git_ref: Option<String>,
    /// Platforms, comma separated; several give an image index.
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    /// Base image [default: <registry>/library/python:<python>-slim].
    #[arg(long)]
    base_image: Option<String>,
    /// ML_MODEL_FLAVOR of the image (sklearn, pytorch, tensorflow, keras).
    #[arg(long)]
    model_flavor: Option<String>,
    /// More tags besides the commit sha (repeatable).
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
    /// Cache directory (wheels, layers, blobs) [default: $XDG_CACHE_HOME/flops-image-builder].
    #[arg(long, env = "FLOPS_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// uv binary for resolving [default: uv on PATH].
    #[arg(long)]
    uv: Option<PathBuf>,
    /// Package index URL (uv also reads UV_INDEX_URL / PIP_INDEX_URL).
    #[arg(long)]
    index_url: Option<String>,
    /// glibc version of the base image (bounds manylinux wheels).
    #[arg(long, default_value = "2.28")]
    glibc: String,
    /// Interpreter for scripts' shebangs inside the image.
    #[arg(long, default_value = "/usr/bin/env python3")]
    python: String,
    /// Working directory of the image (repo code goes here).
    #[arg(long, default_value = "/app")]
    workdir: String,
    /// Refuse repositories larger than this many MB.
    #[arg(long, default_value_t = 500)]
    max_repo_size: u64,
    /// Resolve the dependencies again even if a lock of the same inputs exists (picks up new
    /// releases of unpinned packages; the image digest may change).
    #[arg(long)]
    refresh_lock: bool,
    /// FLOps project id, sent in every MQTT message.
    #[arg(long, default_value = "")]
    project_id: String,
    /// MQTT broker of the FLOps manager, HOST[:PORT] (default port 9027).
    #[arg(long, value_name = "HOST[:PORT]")]
    mqtt: Option<String>,
    /// Project observer, HOST[:PORT] (default port 2727): one text message per phase.
    #[arg(long, value_name = "HOST[:PORT]")]
    observer: Option<String>,
    /// MQTT topic prefix: <prefix>/started, /success, /failed.
    #[arg(long, default_value = flops_image_builder::notify::DEFAULT_TOPIC_PREFIX)]
    topic_prefix: String,
    /// Send no MQTT or observer messages.
    #[arg(long, alias = "deactivate-notifications")]
    no_notify: bool,
    /// Seconds to wait for the broker or observer per attempt (3 attempts, then a warning).
    #[arg(long, default_value_t = 2.0)]
    notify_timeout: f64,
    /// Print a JSON report on stdout.
    #[arg(long)]
    json: bool,
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
    /// Print a JSON report on stdout.
    #[arg(long)]
    json: bool,
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
        git_ref: a.git_ref,
        max_bytes: a.max_repo_size * 1_000_000,
    };
    let (report, _checkout) =
        tokio::task::spawn_blocking(move || pipeline::check(&a.repo, &opts, a.registry.as_deref()))
            .await??;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

async fn run_build(a: BuildArgs) -> anyhow::Result<()> {
    use flops_image_builder::notify::{
        Endpoint, Notifier, DEFAULT_MQTT_PORT, DEFAULT_OBSERVER_PORT,
    };
    let notifier = if a.no_notify {
        Notifier::disabled()
    } else {
        let mqtt = a
            .mqtt
            .as_deref()
            .map(|m| Endpoint::parse(m, DEFAULT_MQTT_PORT))
            .transpose()?;
        let observer = a
            .observer
            .as_deref()
            .map(|o| Endpoint::parse(o, DEFAULT_OBSERVER_PORT))
            .transpose()?;
        Notifier::new(
            &a.project_id,
            mqtt,
            observer,
            &a.topic_prefix,
            std::time::Duration::from_secs_f64(a.notify_timeout.max(0.1)),
        )
    };
    let source = flops_image_builder::repo::naming::split_credentials(&a.repo).0;
    notifier.started(&source).await;
    let json = a.json;
    match build_with(a, &notifier).await {
        Ok(report) => {
            notifier.success(serde_json::to_value(&report)?).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report.image.reference);
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

async fn build_with(
    a: BuildArgs,
    notifier: &flops_image_builder::notify::Notifier,
) -> anyhow::Result<pipeline::BuildReport> {
    let glibc = a
        .glibc
        .split_once('.')
        .and_then(|(x, y)| Some((x.parse().ok()?, y.parse().ok()?)))
        .ok_or_else(|| bad_input(format!("invalid --glibc {:?}: use MAJOR.MINOR", a.glibc)))?;
    let req = pipeline::BuildRequest {
        repo: a.repo,
        clone: CloneOptions {
            git_ref: a.git_ref,
            max_bytes: a.max_repo_size * 1_000_000,
        },
        registry: a.registry,
        platforms: Platform::parse_list(&a.platform)?,
        base_image: a.base_image,
        model_flavor: a.model_flavor,
        extra_tags: a.tag,
        registry_opts: registry::Options {
            insecure: a.insecure_registry,
        },
        compression: Compression::parse(&a.compression, a.compression_level)?,
        cache_dir: a.cache_dir.unwrap_or_else(default_cache_dir),
        max_dep_layers: a.max_dep_layers,
        resolve: flops_image_builder::deps::resolve::ResolveOptions {
            uv: a.uv,
            index_url: a.index_url,
        },
        glibc,
        python: a.python,
        workdir: a.workdir,
        refresh_lock: a.refresh_lock,
    };
    pipeline::build(req, notifier).await
}

/// Upstream's positional form, `<repo_url> <registry_url> <project_id> <mqtt_ip> <mqtt_port>
/// <observer_ip>`, rewritten to `build`. Upstream pushed with TLS verification off, so the
/// registry host is treated as insecure (self-signed or plain HTTP) here too.
fn seed_args(args: Vec<String>) -> Vec<String> {
    let known = ["build", "check", "append", "help"];
    if args.len() == 7 && !args[1].starts_with('-') && !known.contains(&args[1].as_str()) {
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

fn main() -> ExitCode {
    let cli = Cli::parse_from(seed_args(std::env::args().collect()));
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "info",
        (_, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOPS_LOG")
        .unwrap_or_else(|_| format!("warn,flops_image_builder={level}").into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    // Bars only for a person at a terminal; logs (containerd, CI) get plain timestamped lines.
    flops_image_builder::progress::init(
        !cli.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        match cli.command {
            Command::Append(a) => run_append(*a).await,
            Command::Check(a) => run_check(a).await,
            Command::Build(a) => run_build(*a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(kind_of(&e).exit_code() as u8)
        }
    }
}
