//! Bases and builds a real cluster needs: a fresh target registry with no Python base gets the
//! base through the docker.io mirror (flag or registries.conf), streamed registry-to-registry;
//! every Python a repo pins (3.13 from trixie; 3.10, which no base has, on the nearest newer);
//! pure-Python sdists built once per fleet; bad credentials found before any dependency work.
mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn repo(fixture: &str, d: &Path) -> PathBuf {
    git_repo(fixture, &d.join(unique("b").replace('/', "-")), fixture)
}

fn build(repo: &Path, registry: &str, cache: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let mut args = vec![
        "build",
        repo.to_str().unwrap(),
        "--registry",
        registry,
        "--cache-dir",
        cache.to_str().unwrap(),
        "--no-notify",
        "--json",
    ];
    args.extend_from_slice(extra);
    run_env(&args, env)
}

fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("bases-cache")
}

fn base_layer_statuses(r: &Value) -> Vec<String> {
    // The base is the first layer of every platform (the rig's bases have one layer).
    r["image"]["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["layers"][0]["status"].as_str().unwrap().to_string())
        .collect()
}

/// A registries.conf that sends docker.io to the rig's mirror (no Docker Hub from tests).
fn conf_to_mirror(dir: &Path, extra_mirror: Option<&str>) -> PathBuf {
    let mirror = extra_mirror
        .map(|m| format!("[[registry.mirror]]\nlocation = \"{m}\"\ninsecure = true\n"))
        .unwrap_or_default();
    let path = dir.join("registries.conf");
    std::fs::write(
        &path,
        format!("unqualified-search-registries = [\"docker.io\"]\n\n[[registry]]\nprefix = \"docker.io\"\nlocation = \"{MIRROR}\"\ninsecure = true\n{mirror}"),
    )
    .unwrap();
    path
}

#[test]
fn default_base_from_the_mirror_streams_into_a_fresh_registry() {
    require_rig();
    require_uv();
    require_mirror();
    let d = tempfile::tempdir().unwrap();
    let fresh = FreshRegistry::start();
    let repo = repo("tools-only-pyproject", d.path());
    // Flag form: the fresh target has no library/python, the mirror has.
    let r = build(
        &repo,
        &fresh.url(),
        &shared_cache(),
        &[
            "--registry-mirror",
            MIRROR_FLAG,
            "--platform",
            "linux/amd64,linux/arm64",
        ],
        &[],
    )
    .ok()
    .json();
    assert_eq!(
        r["base"]["origin"],
        format!("mirror {MIRROR}"),
        "{}",
        r["base"]
    );
    assert_eq!(
        r["base"]["reference"],
        format!("{MIRROR}/library/python:3.11-slim")
    );
    assert_eq!(base_layer_statuses(&r), ["streamed", "streamed"], "{r}");
    let name = tagged_name(&r["image"]);
    import_model_manager(&name, "amd64", d.path());

    // registries.conf form, with a dead mirror first: logged, skipped, and the location used.
    let fresh2 = FreshRegistry::start();
    let conf = conf_to_mirror(d.path(), Some("127.0.0.1:1"));
    let run = build(
        &repo,
        &fresh2.url(),
        &shared_cache(),
        &[],
        &[("CONTAINERS_REGISTRIES_CONF", conf.to_str().unwrap())],
    )
    .ok();
    let r = run.json();
    assert_eq!(
        r["base"]["origin"],
        format!("origin {MIRROR}"),
        "{}",
        r["base"]
    );
    assert!(
        run.stderr
            .contains("base 127.0.0.1:1/library/python:3.11-slim"),
        "{}",
        run.stderr
    );
    assert_eq!(base_layer_statuses(&r), ["streamed"]);
}

#[test]
fn every_python_a_repo_pins() {
    require_rig();
    require_uv();
    require_mirror();
    let d = tempfile::tempdir().unwrap();
    let conf = conf_to_mirror(d.path(), None);
    let env = [("CONTAINERS_REGISTRIES_CONF", conf.to_str().unwrap())];
    // 3.13: the trixie base from the mirror and cp313 wheels.
    let py313 = repo("python313-pin", d.path());
    let r = build(&py313, "http://127.0.0.1:5000", &shared_cache(), &[], &env)
        .ok()
        .json();
    assert!(
        r["python"].as_str().unwrap().starts_with("3.13."),
        "{}",
        r["python"]
    );
    let rootfs = unpack(&tagged_name(&r["image"]), &d.path().join("313"), "");
    let (ok, out) = python_in_image(
        &rootfs,
        "amd64",
        "import sys, numpy, model_manager; print(sys.version_info[:2], numpy.__version__)",
    );
    assert!(ok && out.contains("(3, 13) 2.1.3"), "{out}");
    let so = sh(&format!(
        "find {}/opt/flops/site-packages/numpy -name '_multiarray_umath*.so'",
        rootfs.display()
    ));
    assert!(so.contains("cpython-313"), "{so}");

    // 3.10: no base anywhere (target, mirror, origin), so the nearest newer Python, reported.
    let py310 = repo("python310-pin", d.path());
    let r = build(&py310, "http://127.0.0.1:5000", &shared_cache(), &[], &env)
        .ok()
        .json();
    assert!(
        r["python"].as_str().unwrap().starts_with("3.11."),
        "{}",
        r["python"]
    );
    let detail = rule_detail(&r, "python-minor");
    assert!(
        detail.starts_with("python 3.10 (conda.yaml) → 3.11: no python:3.10-slim base in"),
        "{detail}"
    );
    import_model_manager(&tagged_name(&r["image"]), "amd64", d.path());
    // …unless --strict-python, which names 3.10.
    let e = build(
        &py310,
        "http://127.0.0.1:5000",
        &shared_cache(),
        &["--strict-python"],
        &env,
    );
    expect_error(&e, 3, "no python:3.10-slim base image for Python 3.10");
}

#[test]
fn pure_sdists_are_built_once_per_fleet() {
    require_rig();
    require_uv();
    require_mirror();
    let d = tempfile::tempdir().unwrap();
    let fresh = FreshRegistry::start();
    let repo = repo("hydra-sdist", d.path());
    let both = [
        "--registry-mirror",
        MIRROR_FLAG,
        "--platform",
        "linux/amd64,linux/arm64",
    ];
    let first_cache = tempfile::tempdir().unwrap();
    let r = build(&repo, &fresh.url(), first_cache.path(), &both, &[])
        .ok()
        .json();
    let sdists = r["sdists"].as_array().unwrap();
    assert_eq!(sdists.len(), 1, "{r}");
    assert_eq!(sdists[0]["name"], "antlr4-python3-runtime");
    assert_eq!(sdists[0]["source"], "built");
    assert_eq!(
        sdists[0]["wheel"],
        "antlr4_python3_runtime-4.9.3-py3-none-any.whl"
    );
    let name = tagged_name(&r["image"]);
    for arch in ["amd64", "arm64"] {
        let rootfs = unpack(
            &name,
            &d.path().join(arch),
            &format!("--override-arch {arch}"),
        );
        let (ok, out) = python_in_image(
            &rootfs,
            arch,
            "import hydra, antlr4, model_manager; print('ok', hydra.__version__)",
        );
        assert!(ok && out.contains("ok 1.3.2"), "{arch}: {out}");
    }
    // Another node with an empty disk: the built wheel comes from the registry's pool.
    let second_cache = tempfile::tempdir().unwrap();
    let again = build(&repo, &fresh.url(), second_cache.path(), &both, &[])
        .ok()
        .json();
    assert_eq!(again["sdists"][0]["source"], "pool", "{again}");
    assert_eq!(again["image"]["digest"], r["image"]["digest"]);
    // --no-build: no package code runs, and the sdist-only package is named.
    let third = tempfile::tempdir().unwrap();
    let e = build(
        &repo,
        &fresh.url(),
        third.path(),
        &["--registry-mirror", MIRROR_FLAG, "--no-build"],
        &[],
    );
    expect_error(&e, 3, "antlr4-python3-runtime");
}

#[test]
fn a_compiled_sdist_fails_naming_it() {
    require_rig();
    require_uv();
    let d = tempfile::tempdir().unwrap();
    let repo = repo("requirements-repo", d.path());
    let line = sh(&format!(
        "python3 {}/tests/support/make_sdist.py {}/vendor",
        env!("CARGO_MANIFEST_DIR"),
        repo.display()
    ));
    let (_, sha) = line.trim().split_once(' ').unwrap();
    write(&repo.join("pylock.toml"), &format!("lock-version = \"1.0\"\ncreated-by = \"test\"\n[[packages]]\nname = \"fastmath\"\nversion = \"0.1\"\nsdist = {{ path = \"vendor/fastmath-0.1.tar.gz\", hashes = {{ sha256 = \"{sha}\" }} }}\n"));
    commit_all(&repo, "compiled sdist");
    let cache = tempfile::tempdir().unwrap();
    let e = build(&repo, "http://127.0.0.1:5000", cache.path(), &[], &[]);
    expect_error(&e, 3, "fastmath 0.1 for linux/amd64: ");
    assert!(
        e.stderr.contains("compiled wheel") || e.stderr.contains("building its sdist failed"),
        "{}",
        e.stderr
    );
}

#[test]
fn bad_credentials_fail_before_any_dependency_work() {
    require_rig();
    require_broker();
    let d = tempfile::tempdir().unwrap();
    let repo = repo("sklearn-conda", d.path());
    let docker = d.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        format!(
            "{{\"auths\": {{\"{TLS}\": {{\"auth\": \"{}\"}}}}}}",
            base64_basic("rig", "wrong-password")
        ),
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let prefix = format!("test/{}", unique("auth").replace('/', "-"));
    let sub = Sub::start(&prefix);
    let args = [
        "build",
        repo.to_str().unwrap(),
        "--registry",
        &format!("https://{TLS}"),
        "--insecure-registry",
        TLS,
        "--cache-dir",
        cache.path().to_str().unwrap(),
        "--project-id",
        "p-auth",
        "--mqtt",
        BROKER,
        "--topic-prefix",
        &prefix,
    ];
    let e = run_env(&args, &[("DOCKER_CONFIG", docker.to_str().unwrap())]);
    expect_error(&e, 4, "registry 127.0.0.1:5443: not authorised");
    // Nothing was resolved, fetched or built: the check came first.
    for dir in ["locks", "wheels", "layers"] {
        let written = std::fs::read_dir(cache.path().join(dir)).map_or(0, |d| d.count());
        assert_eq!(written, 0, "{dir} was written before the access check");
    }
    let failed = sub.failed();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0]["error_msg"]
            .as_str()
            .unwrap()
            .contains("not authorised"),
        "{failed:?}"
    );
}

fn base64_basic(user: &str, pass: &str) -> String {
    sh(&format!("printf '%s' '{user}:{pass}' | base64 -w0"))
        .trim()
        .to_string()
}
