//! What each command runs: options from the flags, the notifier, the plan, the report.

use super::{AppendArgs, BuildArgs, CheckArgs, ImageArgs, ImageDefaults, ModelArgs, NotifyArgs};
use flops_image_builder::error::{bad_input, one_line};
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

pub async fn run_append(a: AppendArgs) -> anyhow::Result<()> {
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

pub async fn run_check(a: CheckArgs) -> anyhow::Result<()> {
    let opts = CloneOptions {
        git_ref: a.git_ref.clone(),
        max_bytes: a.max_repo_size * 1_000_000,
    };
    let platforms = Platform::parse_list(&a.platform)?;
    let (runtime, _) = pipeline::fl_actors::fl_sets();
    let aggregator = a.aggregator;
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
    if !a.offline && report.spec != "pylock.toml" {
        let t = std::time::Instant::now();
        report.resolved = Some(check_resolution(&a, &report, &platforms).await?);
        report
            .phases_ms
            .insert("resolve".into(), t.elapsed().as_millis() as u64);
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

/// `check`'s resolution, with `build`'s defaults (index, glibc, uv).
async fn check_resolution(
    a: &CheckArgs,
    report: &pipeline::CheckReport,
    platforms: &[Platform],
) -> anyhow::Result<pipeline::source::CheckLock> {
    let d = <ImageDefaults as clap::Parser>::try_parse_from(["check", "--registry", ""])?;
    let opts = options(&d.image, None)?;
    let cache = a.cache_dir.clone().unwrap_or_else(default_cache_dir);
    // Every FL plan locks the learner's and the aggregator's sets together (one learner image
    // per commit, whatever the plan).
    let (_, sets) = pipeline::fl_actors::fl_sets();
    pipeline::check_lock::resolve_as_build(
        report,
        &sets,
        platforms,
        &opts.resolve,
        opts.glibc,
        &cache,
    )
    .await
}

/// `check --sbom`: the documents `build` would attach, with `build`'s defaults.
async fn check_sboms(
    a: &CheckArgs,
    report: &pipeline::CheckReport,
    root: &std::path::Path,
) -> anyhow::Result<
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, serde_json::Value>>,
> {
    let registry = a.registry.clone().unwrap_or_default();
    let mut args = vec!["check", "--registry", &registry, "--platform", &a.platform];
    let cache = a.cache_dir.as_ref().map(|c| c.display().to_string());
    if let Some(c) = &cache {
        args.extend(["--cache-dir", c]);
    }
    let d = <ImageDefaults as clap::Parser>::try_parse_from(args)?;
    let opts = options(&d.image, None)?;
    pipeline::sbom::preview(&opts, report, root, &fl_images(a.aggregator)).await
}

/// The FL images `build` makes: the learner, and with `--aggregator` the aggregator.
fn fl_images(
    aggregator: bool,
) -> Vec<(
    &'static str,
    &'static flops_image_builder::repo::augment::Runtime,
)> {
    let all = &pipeline::fl_actors::FL_IMAGES;
    all[..if aggregator { 2 } else { 1 }].to_vec()
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

pub async fn run_build(a: BuildArgs) -> anyhow::Result<()> {
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

pub async fn run_model(a: ModelArgs) -> anyhow::Result<()> {
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
        resolve: flops_image_builder::resolve::ResolveOptions {
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
        bytecode: a.bytecode == "auto",
        mirrors: flops_image_builder::oci::mirrors::Mirrors::load(
            &a.registry_mirror,
            conf.as_deref(),
        )?,
    })
}
