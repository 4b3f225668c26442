//! The pushed learner image really trains: built from a git server on 127.0.0.1, pulled and run
//! by containerd as an Oakestra worker runs it (and, independently, from a umoci-unpacked rootfs
//! under chroot), it joins one Flower round served from the same image. Rebuilds are cheap:
//! the same commit uploads nothing, a code-only commit only the code layer and config.
mod common;
use common::*;
use serde_json::Value;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn require_learner_rig() {
    require_rig();
    require_uv();
    require_containerd();
    require_broker();
    assert!(
        Path::new(PYENV).exists(),
        "the runtime's Python test env is missing: run `sudo scripts/rig.sh pyenv`"
    );
    let agg = "127.0.0.1:8080".parse().unwrap();
    assert!(
        TcpStream::connect_timeout(&agg, Duration::from_millis(500)).is_err(),
        "127.0.0.1:8080 (the aggregator port of the learner contract) is taken by another process"
    );
}

/// The learner's environment for tests, as K=V for both `ctr run --env` and `env -i`: the
/// data server on 127.0.0.1, quick retries, and one session (the learner is a service).
fn learner_env(data_port: u16) -> [String; 4] {
    [
        "ML_DATA_SERVER_HOST=127.0.0.1".to_string(),
        format!("ML_DATA_SERVER_PORT={data_port}"),
        "FLOPS_LEARNER_RETRY_DELAY=1".to_string(),
        "FLOPS_LEARNER_MAX_SESSIONS=1".to_string(),
    ]
}

/// Tests here bind the aggregator contract's port 127.0.0.1:8080: one at a time.
static PORT_8080: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn flower_result(out: &str) -> Value {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("FLOWER_RESULT "))
        .unwrap_or_else(|| panic!("the Flower server printed no result:\n{out}"));
    serde_json::from_str(line).unwrap()
}

fn build(url: &str, cache: &Path) -> Value {
    let r = run(&[
        "build",
        url,
        "--registry",
        "http://127.0.0.1:5000",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--model-flavor",
        "sklearn",
        "--tag",
        "stable",
        "--no-notify",
        "--json",
    ])
    .ok();
    r.json()
}

/// Digests of the blobs (config included) the report says were uploaded.
fn uploaded(report: &Value) -> Vec<String> {
    let p = &report["image"]["platforms"][0];
    std::iter::once(&p["config"])
        .chain(p["layers"].as_array().unwrap())
        .filter(|b| b["status"] == "uploaded")
        .map(|b| b["digest"].as_str().unwrap().to_string())
        .collect()
}

/// The manager's exact command line, with the data server reachable on 127.0.0.1.
fn learner_command(project: &str) -> Vec<&str> {
    vec![
        "python",
        "main.py",
        project,
        "127.0.0.1",
        "127.0.0.1",
        "127.0.0.1",
        "images-a,images-b",
    ]
}

/// One round: the learner is started first (and must wait for the aggregator), then the server.
fn one_round(start_learner: impl FnOnce() -> Bg, start_server: impl FnOnce() -> Bg) {
    let mut learner = start_learner();
    learner.wait_for_output("unavailable (attempt 1)", Duration::from_secs(180));
    let mut server = start_server();
    let code = server.wait(Duration::from_secs(300));
    let out = server.output();
    assert_eq!(code, 0, "Flower server failed:\n{out}");
    let result = flower_result(&out);
    assert_eq!(result["fit"], 1, "{result}\n{}", learner.output());
    assert_eq!(result["evaluate"], 1, "{result}\n{}", learner.output());
    assert!(
        result["accuracy"].as_f64().unwrap() > 0.8,
        "the model did not learn: {result}"
    );
    let code = learner.wait(Duration::from_secs(120));
    assert_eq!(code, 0, "learner failed:\n{}", learner.output());
    assert!(learner.output().contains("training finished"));
}

/// Unpacks `image` (skopeo + umoci) and trains one round under chroot: learner first, then a
/// Flower server from the same image. Returns the rootfs.
fn chroot_round(image: &str, work: &Path, env: &[String], project: &str) -> PathBuf {
    let rootfs = unpack(image, work, "");
    let (mut image_env, cwd) = image_process(&rootfs);
    assert_eq!(cwd, "/app");
    for want in [
        "FLWR_TELEMETRY_ENABLED=0",
        "PYTHONPATH=/opt/flops/site-packages",
    ] {
        assert!(image_env.iter().any(|e| e == want), "{want}: {image_env:?}");
    }
    // Only the aggregator reads the flavor: the learner is the same image for every plan.
    assert!(
        !image_env.iter().any(|e| e.starts_with("ML_MODEL_FLAVOR=")),
        "{image_env:?}"
    );
    image_env.extend(env.iter().cloned());
    std::fs::copy(
        runtime_tests().join("flower_server.py"),
        rootfs.join("tmp/flower_server.py"),
    )
    .unwrap();
    let _dev = DevMount::new(&rootfs);
    let chroot = |argv: &[&str]| {
        let mut c = Command::new("chroot");
        c.arg(&rootfs)
            .args(["/usr/bin/env", "-i"])
            .args(&image_env)
            .args(["sh", "-c", &format!("cd {cwd} && exec \"$@\""), "sh"])
            .args(argv);
        c
    };
    one_round(
        || {
            Bg::start(
                &format!("{project}-learner"),
                chroot(&learner_command(project)),
                work,
            )
        },
        || {
            Bg::start(
                &format!("{project}-server"),
                chroot(&["python", "/tmp/flower_server.py", "127.0.0.1:8080"]),
                work,
            )
        },
    );
    rootfs
}

/// Repos as real users write them train a round on image data in their pushed images: one
/// whose code imports mlflow and turns on autologging (setuptools' pkg_resources), and one
/// that imports distutils (through setuptools' shim, which a .pth file installs: the prefix
/// is a real site directory).
#[test]
fn real_repos_train_a_round_on_image_data() {
    require_learner_rig();
    let _port = PORT_8080.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let work = d.path();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("learner-cache");
    let (data, port) = data_server(work);
    for fixture in ["mlflow-autolog", "distutils-shim"] {
        let repo = git_repo(fixture, &work.join(unique("rr").replace('/', "-")), fixture);
        let report = build(repo.to_str().unwrap(), &cache);
        let rules: Vec<&str> = report["doctor"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["rule"].as_str().unwrap())
            .collect();
        assert!(
            rules.contains(&"implicit-setuptools"),
            "{fixture}: {rules:?}"
        );
        let tagged = tagged_name(&report["image"]);
        let rootfs = chroot_round(&tagged, &work.join(fixture), &learner_env(port), fixture);
        if fixture == "distutils-shim" {
            let (ok, out) = python_in_image(
                &rootfs,
                "amd64",
                "import distutils.spawn; print(distutils.__file__)",
            );
            assert!(
                ok && out.contains("/opt/flops/site-packages/setuptools/_distutils/"),
                "distutils is not setuptools' shim: {out}"
            );
        } else {
            assert!(rules.contains(&"mlflow"), "{rules:?}");
            assert!(
                rootfs.join("app/mlruns").exists(),
                "autologging wrote no runs"
            );
        }
    }
    drop(data);
}

#[test]
fn learner_image_trains_one_flower_round_and_rebuilds_cheaply() {
    require_learner_rig();
    let _port = PORT_8080.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let work = d.path();
    let name = unique("learner").replace('/', "-");
    let repo = git_repo("sklearn-conda", &work.join("src"), "sklearn-conda");
    let served = work.join("git");
    std::fs::create_dir_all(&served).unwrap();
    bare(&repo, &served, &name);
    let server = GitServer::start(&served, None);
    let url = server.url(&name);
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("learner-cache");

    let first = build(&url, &cache);
    let reference = first["image"]["reference"].as_str().unwrap().to_string();
    let commit = first["commit"].as_str().unwrap();
    assert!(
        reference.contains(&format!("/learner:{commit}@sha256:")),
        "{reference}"
    );
    let tagged = reference.split('@').next().unwrap().to_string();
    // `--tag` adds a tag beside the commit sha, on the same manifest.
    let stable = format!("{}:stable", tagged.rsplit_once(':').unwrap().0);
    let digest_of = |r: &str| {
        sh(&format!(
            "skopeo inspect --raw --tls-verify=false docker://{r} | sha256sum | cut -d' ' -f1"
        ))
    };
    assert_eq!(
        format!("sha256:{}", digest_of(&stable).trim()),
        first["image"]["digest"].as_str().unwrap()
    );

    // The data the learner trains on, from a real Arrow Flight server on 127.0.0.1.
    let (data, port) = data_server(work);
    let env = learner_env(port);

    // 1. containerd, as an Oakestra worker runs the learner.
    sh(&ctr(&format!(
        "images pull --plain-http {tagged} >/dev/null"
    )));
    let id = name.replace('.', "-");
    let (learner_id, server_id) = (format!("{id}-learner"), format!("{id}-server"));
    let tests_mount = format!(
        "type=bind,src={},dst=/flops-test,options=rbind:ro",
        runtime_tests().display()
    );
    one_round(
        || {
            let mut args = vec!["--net-host"];
            for e in &env {
                args.extend(["--env", e.as_str()]);
            }
            args.extend([tagged.as_str(), learner_id.as_str()]);
            args.extend(learner_command("proj-ctr"));
            Bg::start("ctr-learner", ctr_run(&args), work)
        },
        || {
            let args = [
                "--net-host",
                "--mount",
                &tests_mount,
                &tagged,
                &server_id,
                "python",
                "/flops-test/flower_server.py",
                "0.0.0.0:8080",
            ];
            Bg::start("ctr-server", ctr_run(&args), work)
        },
    );
    sh(&ctr(&format!("images rm {tagged} >/dev/null")));

    // 2. The same, from skopeo copy + umoci unpack + chroot: no containerd quirk can hide a defect.
    let rootfs = chroot_round(&tagged, &work.join("unpacked"), &env, "proj-chroot");
    assert!(rootfs.join("app/main.py").exists() && rootfs.join("app/data_loading.py").exists());
    assert!(rootfs.join("app/model_manager.py").exists());
    assert!(!rootfs.join("app/.git").exists());
    drop(data);

    // 3. The same commit again: the same manifest digest, and not one blob uploaded.
    let again = build(&url, &cache);
    assert_eq!(again["image"]["digest"], first["image"]["digest"]);
    assert_eq!(uploaded(&again), Vec::<String>::new(), "{again}");
    assert_eq!(again["image"]["bytes_uploaded"], 0);

    // 4. A commit that only edits model_manager.py: only the code layer and config go up.
    let mm = repo.join("model_manager.py");
    let text = std::fs::read_to_string(&mm).unwrap();
    std::fs::write(&mm, text.replace("max_iter=20", "max_iter=30")).unwrap();
    commit_all(&repo, "tune");
    git(
        &repo,
        &format!("push -q {}/{name}.git HEAD:main", served.display()),
    );
    let code_only = build(&url, &cache);
    assert_ne!(code_only["commit"], first["commit"]);
    let p = &code_only["image"]["platforms"][0];
    let layers = p["layers"].as_array().unwrap();
    let code_layer = layers.last().unwrap();
    let mut want = vec![
        p["config"]["digest"].as_str().unwrap().to_string(),
        code_layer["digest"].as_str().unwrap().to_string(),
    ];
    want.sort();
    let mut got = uploaded(&code_only);
    got.sort();
    assert_eq!(got, want, "{code_only}");
    let digests = |layers: &[Value]| -> Vec<String> {
        layers
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    };
    let old_layers = first["image"]["platforms"][0]["layers"].as_array().unwrap();
    assert_eq!(
        digests(&layers[..layers.len() - 1]),
        digests(&old_layers[..old_layers.len() - 1]),
        "every layer but the code layer is unchanged"
    );
    assert_ne!(code_layer["digest"], old_layers.last().unwrap()["digest"]);
    // The extra tag follows the newest build.
    assert_eq!(
        format!("sha256:{}", digest_of(&stable).trim()),
        code_only["image"]["digest"].as_str().unwrap()
    );
}
