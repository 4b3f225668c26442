//! Package code never sees the builder's secrets (issue 22). A package index on loopback
//! (tests/support/hostile_index.py) serves an sdist-only package whose setup.py gathers every
//! secret it can reach (environment, auth files, its ancestors' /proc environ) and sends it
//! back to the index; the builder holds push credentials (DOCKER_CONFIG, REGISTRY_AUTH_FILE)
//! and tokens in its environment. The hostile code runs (it reports in), sees none of them,
//! and runs at most three times on a cold fleet (metadata for the FL lock and for the
//! learner's share of it, build), never on a warm one. Wheels with
//! zip-slip or absolute-path members from that index stay refused, named, with nothing written.
mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SECRET_PASSWORD: &str = "pw-must-not-leak-7f3a";
const SECRET_TOKEN: &str = "tok-must-not-leak-91c2";

struct Index {
    _bg: Bg,
    url: String,
    records: PathBuf,
}

impl Index {
    fn start(work: &Path, auth_files: &[&Path]) -> Self {
        let port = free_port();
        let records = work.join("records.jsonl");
        let mut cmd = Command::new("python3");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/hostile_index.py"))
            .args(["--port", &port.to_string(), "--records"])
            .arg(&records);
        for f in auth_files {
            cmd.arg("--auth-file").arg(f);
        }
        let mut bg = Bg::start("hostile-index", cmd, work);
        bg.wait_for_output("ready", Duration::from_secs(20));
        Index {
            _bg: bg,
            url: format!("http://127.0.0.1:{port}/simple/"),
            records: records.clone(),
        }
    }

    /// What the hostile code saw, one record per run of it.
    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.records)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The builder's secrets: a docker config and a containers auth file with a password, and
/// tokens in the environment.
struct Secrets {
    docker: PathBuf,
    auth_file: PathBuf,
}

impl Secrets {
    fn write(dir: &Path) -> Self {
        let auth = sh(&format!("printf 'rig:{SECRET_PASSWORD}' | base64 -w0"));
        let body = format!(
            "{{\"auths\": {{\"{PLAIN}\": {{\"auth\": \"{}\"}}}}}}",
            auth.trim()
        );
        let docker = dir.join("docker");
        write(&docker.join("config.json"), &body);
        let auth_file = dir.join("containers/auth.json");
        write(&auth_file, &body);
        Secrets { docker, auth_file }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DOCKER_CONFIG", self.docker.display().to_string()),
            ("REGISTRY_AUTH_FILE", self.auth_file.display().to_string()),
            ("FLOPS_TEST_TOKEN", SECRET_TOKEN.to_string()),
            ("GITHUB_TOKEN", SECRET_TOKEN.to_string()),
            ("MQTT_PASSWORD", SECRET_TOKEN.to_string()),
        ]
    }
}

/// A repo (requirements-repo's model) that requires `extra` from the hostile index.
fn repo_requiring(d: &Path, index: &Index, extra: &str) -> PathBuf {
    let repo = git_repo(
        "requirements-repo",
        &d.join(unique("pc").replace('/', "-")),
        "requirements-repo",
    );
    write(
        &repo.join("requirements.txt"),
        &format!(
            "--extra-index-url {}\n-r requirements/base.txt\nscikit-learn~=1.4.2\n{extra}\n",
            index.url
        ),
    );
    commit_all(&repo, "a package from the loopback index");
    repo
}

/// A builder cache dir of its own whose wheels are shared with the other tests of this file
/// (so the PyPI wheels are downloaded once), while locks, layers and built sdists are its own.
fn cache(d: &Path) -> PathBuf {
    let shared = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package-code-wheels");
    std::fs::create_dir_all(&shared).unwrap();
    let c = d.join(unique("cache").replace('/', "-"));
    std::fs::create_dir_all(&c).unwrap();
    std::os::unix::fs::symlink(&shared, c.join("wheels")).unwrap();
    c
}

fn build(repo: &Path, registry: &str, cache: &Path, env: &[(&str, String)]) -> Run {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_env(
        &[
            "build",
            repo.to_str().unwrap(),
            "--registry",
            registry,
            "--cache-dir",
            cache.to_str().unwrap(),
            "--registry-mirror",
            MIRROR_FLAG,
            "--no-notify",
            "--json",
        ],
        &env,
    )
}

/// Asserts one record of the hostile code holds no secret and reached no credential file.
fn saw_nothing(record: &Value) {
    let text = record.to_string();
    for s in [SECRET_PASSWORD, SECRET_TOKEN] {
        assert!(!text.contains(s), "the hostile code saw {s}: {text}");
    }
    // The base64 form of the password (as it stands in the auth files).
    let b64 = sh(&format!("printf 'rig:{SECRET_PASSWORD}' | base64 -w0"));
    assert!(
        !text.contains(b64.trim()),
        "the hostile code read an auth file: {text}"
    );
    let env = record["env"].as_object().unwrap();
    for k in [
        "DOCKER_CONFIG",
        "REGISTRY_AUTH_FILE",
        "FLOPS_TEST_TOKEN",
        "GITHUB_TOKEN",
        "MQTT_PASSWORD",
    ] {
        assert!(!env.contains_key(k), "{k} reached package code: {env:?}");
    }
    assert!(
        env["HOME"]
            .as_str()
            .unwrap()
            .contains("flops-package-code-"),
        "HOME is not the temporary one: {env:?}"
    );
    for (pid, environ) in record["proc"].as_object().unwrap() {
        let environ = environ.as_str().unwrap();
        assert!(
            environ.starts_with("denied") || !environ.contains("DOCKER_CONFIG"),
            "the builder's environment was readable through /proc/{pid}/environ"
        );
    }
}

#[test]
fn hostile_sdist_runs_sandboxed_and_sees_no_secret() {
    require_rig();
    require_uv();
    let d = tempfile::tempdir().unwrap();
    let secrets = Secrets::write(d.path());
    let index = Index::start(
        d.path(),
        &[&secrets.docker.join("config.json"), &secrets.auth_file],
    );
    let repo = repo_requiring(d.path(), &index, "hostile-pkg==1.0");
    let reg = FreshRegistry::start();
    let mut env = secrets.env();
    // A cold uv cache: the sdist's metadata must be prepared by running its code.
    env.push((
        "UV_CACHE_DIR",
        d.path().join("uv-cache").display().to_string(),
    ));

    let r = build(&repo, &reg.url(), &cache(d.path()), &env).ok().json();
    let records = index.records();
    assert!(
        !records.is_empty(),
        "the hostile code never ran: nothing was tested"
    );
    for rec in &records {
        saw_nothing(rec);
    }
    let pc = &r["package_code"];
    assert_eq!(pc["sandbox"], "landlock", "this kernel has Landlock: {pc}");
    assert_eq!(pc["packages"], serde_json::json!(["hostile-pkg"]), "{pc}");
    let runs = pc["runs"].as_u64().unwrap();
    // At most: the metadata for the lock of every FL image's requirements, again for the
    // learner's share of it (uv's cache is read-only to package code, so a second resolve
    // prepares it again), and the wheel build.
    assert!(
        (1..=3).contains(&runs),
        "cold fleet: {runs} runs of package code: {pc}"
    );
    // Each counted run (a metadata preparation, a wheel build) calls two PEP 517 hooks, and
    // setuptools' legacy backend executes setup.py for each.
    assert!(
        (runs as usize..=2 * runs as usize).contains(&records.len()),
        "{runs} runs counted, setup.py executed {} times",
        records.len()
    );
    assert_eq!(r["sdists"][0]["source"], "built", "{r}");
    // The SBOM reports the sdist as locked (its sha256), not the local build's bytes.
    let sbom = |report: &Value| {
        let p = &report["image"]["platforms"][0];
        let name = tagged_name(&report["image"]);
        let repository = name.split_once('/').unwrap().1.rsplit_once(':').unwrap().0;
        let (artifact, doc) = referrer_sbom(&reg.addr, repository, p["manifest"].as_str().unwrap());
        assert_eq!(p["sbom"].as_str(), Some(artifact.as_str()));
        (artifact, serde_json::from_slice::<Value>(&doc).unwrap())
    };
    let (first_sbom, doc) = sbom(&r);
    let hostile = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "hostile-pkg")
        .expect("hostile-pkg is in the SBOM")
        .clone();
    let lock = std::fs::read_to_string(r["lock"].as_str().unwrap()).unwrap();
    let sha = hostile["checksums"][0]["checksumValue"].as_str().unwrap();
    assert!(
        hostile["packageFileName"]
            .as_str()
            .unwrap()
            .ends_with(".tar.gz"),
        "{hostile}"
    );
    assert!(lock.contains(sha), "{sha} is not the lock's");
    assert!(
        hostile["comment"].as_str().unwrap().contains("sdist"),
        "{hostile}"
    );

    // Another node of the same fleet (a new cache dir, the same registry): the lock and the
    // built wheel come from the pool, and package code does not run at all.
    let again = build(&repo, &reg.url(), &cache(d.path()), &env).ok().json();
    assert_eq!(
        again["package_code"]["runs"], 0,
        "{}",
        again["package_code"]
    );
    assert_eq!(index.records().len(), records.len());
    assert_eq!(sbom(&again).0, first_sbom, "another node's SBOM differs");
}

#[test]
fn zip_slip_and_absolute_path_wheels_from_the_index_stay_refused() {
    require_rig();
    require_uv();
    let d = tempfile::tempdir().unwrap();
    let index = Index::start(d.path(), &[]);
    for (pkg, member, written) in [
        (
            "slip-pkg",
            "../../../tmp/slip-pkg-pwned",
            "/tmp/slip-pkg-pwned",
        ),
        ("abs-pkg", "/tmp/abs-pkg-pwned", "/tmp/abs-pkg-pwned"),
    ] {
        let _ = std::fs::remove_file(written);
        let repo = repo_requiring(d.path(), &index, &format!("{pkg}==1.0"));
        let e = build(&repo, "http://127.0.0.1:5000", &cache(d.path()), &[]);
        expect_error(&e, 3, &format!("unsafe path \"{member}\""));
        assert!(
            e.stderr.contains(&pkg.replace('-', "_")) || e.stderr.contains(pkg),
            "{}",
            e.stderr
        );
        assert!(!Path::new(written).exists(), "{pkg} wrote {written}");
    }
}

#[test]
fn inside_the_builder_image_as_an_unprivileged_read_only_task() {
    require_rig();
    require_uv();
    require_containerd();
    let d = tempfile::tempdir().unwrap();
    let image = format!("{PLAIN}/{}:self", unique("sandboxed-builder"));
    let out = sh(&format!(
        "BIN={} {}/scripts/self-package.sh {image} 2>&1",
        bin(),
        env!("CARGO_MANIFEST_DIR")
    ));
    assert!(
        out.lines()
            .last()
            .unwrap()
            .starts_with(&format!("{image}@sha256:")),
        "{out}"
    );
    sh(&ctr(&format!(
        "images pull --plain-http {image} >/dev/null"
    )));

    // The secrets, mounted read-only where the task's user (65532) can read them.
    let secrets = Secrets::write(&d.path().join("secrets"));
    sh(&format!(
        "chmod -R a+rX {}",
        d.path().join("secrets").display()
    ));
    let index = Index::start(
        d.path(),
        &[
            Path::new("/secrets/docker/config.json"),
            Path::new("/secrets/containers/auth.json"),
        ],
    );
    let repo = repo_requiring(d.path(), &index, "hostile-pkg==1.0");
    let served = d.path().join("served");
    bare(&repo, &served, "hostile");
    let git = GitServer::start(&served, None);
    let mount = format!(
        "type=bind,src={},dst=/secrets,options=rbind:ro",
        d.path().join("secrets").display()
    );
    let mut extra = vec!["--mount".to_string(), mount];
    for (k, v) in secrets.env() {
        let v = v.replace(&d.path().join("secrets").display().to_string(), "/secrets");
        extra.extend(["--env".to_string(), format!("{k}={v}")]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let id = unique("sandboxed").replace(['/', '.'], "-");
    let (ok, stdout, out) = run_task(
        &image,
        &id,
        &extra,
        &[
            "/usr/local/bin/flops-image-builder",
            "build",
            &git.url("hostile"),
            "--registry",
            &format!("http://{PLAIN}"),
            "--no-notify",
            "--json",
        ],
    );
    assert!(ok, "the builder failed as a containerd task:\n{out}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["package_code"]["sandbox"], "landlock", "{out}");
    assert!(
        report["package_code"]["runs"].as_u64().unwrap() >= 1,
        "{out}"
    );
    let records = index.records();
    assert!(
        !records.is_empty(),
        "the hostile code never ran in the task: nothing was tested"
    );
    for rec in &records {
        saw_nothing(rec);
    }
}

/// `--no-build` runs no package code: a pinned sdist-only version fails, named, instead of
/// being relaxed to a version that ships a wheel.
#[test]
fn no_build_refuses_a_pinned_sdist_only_version() {
    require_rig();
    require_uv();
    let d = tempfile::tempdir().unwrap();
    let repo = git_repo(
        "requirements-repo",
        &d.path().join(unique("nb").replace('/', "-")),
        "requirements-repo",
    );
    write(
        &repo.join("requirements.txt"),
        "-r requirements/base.txt\nscikit-learn~=1.4.2\nantlr4-python3-runtime==4.9.3\n",
    );
    commit_all(&repo, "an sdist-only pin");
    let r = run(&[
        "build",
        repo.to_str().unwrap(),
        "--registry",
        "http://127.0.0.1:5000",
        "--cache-dir",
        cache(d.path()).to_str().unwrap(),
        "--no-build",
        "--no-notify",
    ]);
    expect_error(
        &r,
        3,
        "--no-build: these packages ship only an sdist for linux/amd64, and building them is turned off: antlr4-python3-runtime==4.9.3",
    );
}
