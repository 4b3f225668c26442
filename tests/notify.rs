//! Notifications against a real mosquitto (127.0.0.1:9027) and a TCP observer, every failure
//! class, a broken broker, and the seed-compatible command line.
mod common;
use common::*;
use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A small repo whose dependency is one local wheel in its pylock.toml (fast, no network).
fn small_repo(parent: &Path, name: &str) -> PathBuf {
    let repo = git_repo("requirements-repo", parent, name);
    let (wheel, sha) = make_wheel("tinypkg", "1.0", &repo.join("wheels"), false);
    let file = wheel.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::write(repo.join("pylock.toml"), format!("lock-version = \"1.0\"\ncreated-by = \"test\"\n[[packages]]\nname = \"tinypkg\"\nversion = \"1.0\"\nwheels = [{{ path = \"wheels/{file}\", hashes = {{ sha256 = \"{sha}\" }} }}]\n")).unwrap();
    commit_all(&repo, "lock");
    repo
}

fn build_args<'a>(repo: &'a str, prefix: &'a str, obs: &'a str, cache: &'a str) -> Vec<&'a str> {
    vec![
        "build",
        repo,
        "--registry",
        "http://127.0.0.1:5000",
        "--project-id",
        "proj-42",
        "--mqtt",
        BROKER,
        "--observer",
        obs,
        "--topic-prefix",
        prefix,
        "--cache-dir",
        cache,
    ]
}

#[test]
fn success_publishes_started_then_success_and_tells_the_observer() {
    require_rig();
    require_broker();
    let d = tempfile::tempdir().unwrap();
    let owner = unique("n").replace('/', "-");
    let repo = small_repo(&d.path().join(&owner), "ok-model");
    let prefix = format!("test/{owner}");
    let (port, seen) = observer();
    let obs = format!("127.0.0.1:{port}");
    let cache = tempfile::tempdir().unwrap();
    let sub = Sub::start(&prefix);
    let r = run(&build_args(
        repo.to_str().unwrap(),
        &prefix,
        &obs,
        cache.path().to_str().unwrap(),
    ))
    .ok();
    let msgs = sub.messages();
    let events: Vec<&str> = msgs.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(events, ["started", "success"]);
    for (_, p) in &msgs {
        assert_eq!(p["flops_project_id"], "proj-42");
    }
    let ok = &msgs[1].1;
    assert_eq!(ok["image"]["reference"], r.last_line());
    assert!(
        ok["image"]["reference"]
            .as_str()
            .unwrap()
            .contains("/ok-model/learner:")
            && ok["image"]["digest"]
                .as_str()
                .unwrap()
                .starts_with("sha256:")
    );
    for phase in [
        "clone", "verify", "resolve", "fetch", "layers", "push", "total",
    ] {
        assert!(
            ok["image"]["phases_ms"][phase].is_u64(),
            "no {phase} in {}",
            ok["image"]["phases_ms"]
        );
    }
    let seen = seen.lock().unwrap().clone();
    assert!(seen[0].contains("started building"), "{seen:?}");
    assert!(
        seen.iter().any(|m| m.contains("repo cloned and verified")),
        "{seen:?}"
    );
    assert!(
        seen.last().unwrap().contains("pushed 127.0.0.1:5000/"),
        "{seen:?}"
    );
}

#[test]
fn every_failure_publishes_exactly_one_failed_message() {
    require_rig();
    require_broker();
    require_uv();
    let d = tempfile::tempdir().unwrap();
    let owner = unique("f").replace('/', "-");
    let parent = d.path().join(&owner);
    let cache = tempfile::tempdir().unwrap();
    let missing = git_repo("missing-model-manager", &parent, "missing");
    let good = small_repo(&parent, "good");
    let conflict = git_repo("requirements-repo", &parent, "conflict");
    std::fs::write(
        conflict.join("requirements.txt"),
        "numpy==1.26.4\nnumpy==2.0.0\n",
    )
    .unwrap();
    commit_all(&conflict, "conflict");
    let cases: Vec<(&Path, Vec<&str>, i32, &str)> = vec![
        (&missing, vec![], 3, "model_manager.py is missing"),
        (
            &good,
            vec!["--registry", "http://127.0.0.1:1"],
            4,
            "cannot reach registry 127.0.0.1:1",
        ),
        (
            &good,
            vec![
                "--base-image",
                "http://127.0.0.1:5000/library/no-such-base:1",
            ],
            3,
            "library/no-such-base:1",
        ),
        (&conflict, vec![], 3, "numpy"),
    ];
    for (i, (repo, extra, code, needle)) in cases.into_iter().enumerate() {
        let prefix = format!("test/{owner}/{i}");
        let sub = Sub::start(&prefix);
        let mut args = build_args(
            repo.to_str().unwrap(),
            &prefix,
            "127.0.0.1:1",
            cache.path().to_str().unwrap(),
        );
        // A later --registry wins over the default one in build_args.
        args.extend(extra);
        let r = run(&args);
        assert_eq!(r.code, code, "{needle}: {}", r.stderr);
        let msgs = sub.messages();
        let failed: Vec<&Value> = msgs
            .iter()
            .filter(|(e, _)| e == "failed")
            .map(|(_, p)| p)
            .collect();
        assert_eq!(failed.len(), 1, "{needle}: {msgs:?}");
        assert_eq!(msgs.iter().filter(|(e, _)| e == "success").count(), 0);
        assert_eq!(failed[0]["flops_project_id"], "proj-42");
        let msg = failed[0]["error_msg"].as_str().unwrap();
        assert!(msg.contains(needle), "{needle} not in {msg}");
        let err_line = r.stderr.lines().find(|l| l.starts_with("error: ")).unwrap();
        assert_eq!(err_line, format!("error: {msg}"));
    }
}

#[test]
fn large_payloads_reach_the_broker() {
    // A two-platform success report is tens of kB (rumqttc's default limit is 10 kB).
    require_broker();
    let prefix = format!("test/{}", unique("big").replace('/', "-"));
    // Exits by itself after one message (-C 1), so its buffered output is complete.
    let sub = Sub::with(&prefix, &["-C", "1", "-W", "20"]);
    let payload =
        serde_json::json!({ "flops_project_id": "p", "blob": "x".repeat(200_000) }).to_string();
    let ep = flops_image_builder::notify::Endpoint::parse(BROKER, 9027).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(flops_image_builder::notify::mqtt::publish(
        &ep,
        &format!("{prefix}/success"),
        &payload,
        Duration::from_secs(3),
        1,
    ))
    .unwrap();
    let out = sub.exited_output();
    let got: Value = serde_json::from_slice(&out).expect("one complete JSON message");
    assert_eq!(got["blob"].as_str().unwrap().len(), 200_000);
}

#[test]
fn a_dead_or_silent_broker_never_fails_or_hangs_the_build() {
    require_rig();
    let d = tempfile::tempdir().unwrap();
    let owner = unique("dead").replace('/', "-");
    let repo = small_repo(&d.path().join(&owner), "model");
    let cache = tempfile::tempdir().unwrap();
    // Silent: accepts connections, never answers (no CONNACK, never reads).
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let _keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    for broker in [
        "127.0.0.1:1".to_string(),
        format!("127.0.0.1:{silent_port}"),
    ] {
        let t = Instant::now();
        let r = run(&[
            "build",
            repo.to_str().unwrap(),
            "--registry",
            "http://127.0.0.1:5000",
            "--mqtt",
            &broker,
            "--observer",
            "127.0.0.1:1",
            "--notify-timeout",
            "1",
            "--cache-dir",
            cache.path().to_str().unwrap(),
        ]);
        let took = t.elapsed();
        assert_eq!(r.code, 0, "{broker}: {}", r.stderr);
        assert!(r.stderr.contains("the build goes on"), "{}", r.stderr);
        // 3 attempts of 1 s for the first message, then one attempt for the final one.
        assert!(took < Duration::from_secs(20), "{broker}: took {took:?}");
    }
}

#[test]
fn seed_command_line_builds_the_same_image_as_build() {
    require_rig();
    require_broker();
    let d = tempfile::tempdir().unwrap();
    let owner = unique("seed").replace('/', "-");
    let repo = small_repo(&d.path().join(&owner), "seed-model");
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    let seed = run_env(
        &[
            repo.to_str().unwrap(),
            "http://127.0.0.1:5000",
            "proj-7",
            "127.0.0.1",
            "9027",
            "127.0.0.1",
        ],
        &[("FLOPS_CACHE_DIR", c)],
    )
    .ok();
    let build = run(&[
        "build",
        repo.to_str().unwrap(),
        "--registry",
        "http://127.0.0.1:5000",
        "--no-notify",
        "--cache-dir",
        c,
    ])
    .ok();
    assert_eq!(seed.last_line(), build.last_line());
    assert!(seed.last_line().contains("/seed-model/learner:"));
    // --version names the commit the binary was built from.
    let v = run(&["--version"]).ok();
    assert!(
        v.stdout.starts_with("flops-image-builder ") && v.stdout.contains("(commit "),
        "{}",
        v.stdout
    );
}

#[test]
fn managers_command_line_with_a_bad_flavor_is_a_usage_error_published_as_failed() {
    require_rig();
    require_broker();
    let d = tempfile::tempdir().unwrap();
    let repo = small_repo(d.path(), "flavor");
    let project = unique("flavor").replace('/', "-");
    let (obs_port, observed) = observer();
    let sub = Sub::start("flops_manager/fl_actors_image_builder");
    let r = run(&[
        "http://127.0.0.1:5000",
        &project,
        "127.0.0.1",
        &format!("127.0.0.1:{obs_port}"),
        "--supported_platforms=linux/amd64",
        "fl_actors",
        repo.to_str().unwrap(),
        "scikit",
        "--use-devel-base-images",
    ]);
    expect_error(
        &r,
        2,
        "unknown ML model flavor \"scikit\": use one of sklearn, pytorch, tensorflow, keras",
    );
    let mine = sub.messages_of(&project);
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0].0, "failed");
    assert!(mine[0].1["error_msg"]
        .as_str()
        .unwrap()
        .contains("sklearn, pytorch"));
    assert!(observed
        .lock()
        .unwrap()
        .iter()
        .any(|m| m.contains("failed: unknown ML model flavor")));
    // A plan without its arguments says how the manager's form goes.
    let r = run(&[
        "http://127.0.0.1:5000",
        &project,
        "127.0.0.1",
        "127.0.0.1",
        "fl_actors",
    ]);
    expect_error(
        &r,
        2,
        "usage: <registry_url> <flops_project_id> <mqtt_ip> <project_observer_ip>",
    );
}
