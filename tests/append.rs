//! `append` against the real rig: push, verify with skopeo/umoci, run with chroot.
mod common;
use common::*;
use serde_json::Value;

/// `append --base B --tag T --dir D --cache-dir C <extra…>`, the shape every test here uses.
fn append(base: &str, tag: &str, dir: &str, cache: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "append",
        "--base",
        base,
        "--tag",
        tag,
        "--dir",
        dir,
        "--cache-dir",
        cache,
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn app_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("main.py"),
        "import helper\nprint('appended layer says', helper.VALUE)\n",
    );
    write(&d.path().join("helper.py"), "VALUE = 42\n");
    std::os::unix::fs::symlink("/etc/hostname", d.path().join("outside-link")).unwrap();
    d
}

#[test]
fn append_push_inspect_unpack_and_run() {
    require_rig();
    let app = app_dir();
    let cache = tempfile::tempdir().unwrap();
    let repo = unique("append");
    let target = format!("http://{PLAIN}/{repo}:v1");
    let dir = format!("{}:/srv/app", app.path().display());
    let r = append(
        BASE,
        &target,
        &dir,
        cache.path().to_str().unwrap(),
        &[
            "--workdir",
            "/srv/app",
            "--cmd",
            "python3",
            "--cmd",
            "main.py",
            "--env",
            "APP_MODE=test",
            "--label",
            "org.example=1",
        ],
    )
    .ok();
    // Last stdout line: the reference with its digest.
    let line = r.last_line();
    assert!(
        line.starts_with(&format!("{PLAIN}/{repo}:v1@sha256:")),
        "{line}"
    );

    let inspect: serde_json::Value = serde_json::from_str(&sh(&format!(
        "skopeo inspect --tls-verify=false docker://{PLAIN}/{repo}:v1"
    )))
    .unwrap();
    let base_layers = skopeo_raw(&format!("{PLAIN}/library/python:3.11-slim-amd64"), "")["layers"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), base_layers + 1);
    assert_eq!(inspect["Labels"]["org.example"], "1");
    assert!(inspect["Env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "APP_MODE=test"));
    assert_eq!(
        format!("{PLAIN}/{repo}:v1@{}", inspect["Digest"].as_str().unwrap()),
        line
    );

    let work = tempfile::tempdir().unwrap();
    let rootfs = unpack(&format!("{PLAIN}/{repo}:v1"), work.path(), "");
    let out = sh(&format!(
        "cd /srv 2>/dev/null; chroot {} sh -c 'cd /srv/app && python3 main.py'",
        rootfs.display()
    ));
    assert_eq!(out.trim(), "appended layer says 42");
    // The symlink is stored as a symlink, never followed.
    assert_eq!(
        std::fs::read_link(rootfs.join("srv/app/outside-link")).unwrap(),
        std::path::Path::new("/etc/hostname")
    );
    let cfg: serde_json::Value = serde_json::from_str(&sh(&format!(
        "skopeo inspect --config --tls-verify=false docker://{PLAIN}/{repo}:v1"
    )))
    .unwrap();
    assert_eq!(cfg["config"]["WorkingDir"], "/srv/app");
    assert_eq!(
        cfg["config"]["Cmd"],
        serde_json::json!(["python3", "main.py"])
    );
}

#[test]
fn second_identical_run_is_reproducible_and_uploads_nothing() {
    require_rig();
    let app = app_dir();
    let repo = unique("repro");
    let target = format!("http://{PLAIN}/{repo}:v1");
    let dir = format!("{}:/app", app.path().display());
    let go = |cache: &std::path::Path| {
        append(BASE, &target, &dir, cache.to_str().unwrap(), &["--json"])
            .ok()
            .json()
    };
    let cache = tempfile::tempdir().unwrap();
    let first = go(cache.path());
    assert!(first["bytes_uploaded"].as_u64().unwrap() > 0);
    let layers = first["platforms"][0]["layers"].as_array().unwrap();
    // The base layer lives in another repository of the same registry: mounted, not copied.
    assert_eq!(layers[0]["status"], "mounted");
    assert_eq!(layers.last().unwrap()["status"], "uploaded");

    let second = go(cache.path());
    assert_eq!(first["digest"], second["digest"]);
    assert_eq!(second["bytes_uploaded"], 0);
    assert!(
        second["platforms"][0]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["status"] == "skipped"),
        "{second}"
    );

    // A fresh cache (another machine) yields the same bytes.
    let other = tempfile::tempdir().unwrap();
    assert_eq!(go(other.path())["digest"], first["digest"]);
}

#[test]
fn multi_platform_append_produces_an_index() {
    require_rig();
    let app = app_dir();
    let repo = unique("multi");
    let dir = format!("{}:/app", app.path().display());
    let cache = tempfile::tempdir().unwrap();
    append(
        BASE,
        &format!("http://{PLAIN}/{repo}:v1"),
        &dir,
        cache.path().to_str().unwrap(),
        &["--platform", "linux/amd64,linux/arm64"],
    )
    .ok();
    let idx = skopeo_raw(&format!("{PLAIN}/{repo}:v1"), "");
    assert_eq!(idx["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(index_architectures(&idx), ["amd64", "arm64"]);
    // Each platform's manifest sits on that platform's base layers.
    for arch in ["amd64", "arm64"] {
        let base = skopeo_raw(&format!("{PLAIN}/library/python:3.11-slim-{arch}"), "");
        let ours = skopeo_raw(
            &format!("{PLAIN}/{repo}:v1"),
            &format!("--override-arch {arch}"),
        );
        let ours = if ours.get("manifests").is_some() {
            let d = ours["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["platform"]["architecture"] == arch)
                .unwrap()["digest"]
                .as_str()
                .unwrap()
                .to_string();
            skopeo_raw(&format!("{PLAIN}/{repo}@{d}"), "")
        } else {
            ours
        };
        assert_eq!(
            ours["layers"][0]["digest"], base["layers"][0]["digest"],
            "{arch}"
        );
        let cfg: serde_json::Value = serde_json::from_str(&sh(&format!("skopeo inspect --config --tls-verify=false --override-arch {arch} docker://{PLAIN}/{repo}:v1"))).unwrap();
        assert_eq!(cfg["architecture"], arch);
    }
}

#[test]
fn docker_schema2_base_is_accepted_and_converted_to_oci() {
    require_rig();
    let app = app_dir();
    let repo = unique("docker-base");
    let cache = tempfile::tempdir().unwrap();
    append(
        &format!("http://{PLAIN}/library/python:3.11-slim-docker"),
        &format!("http://{PLAIN}/{repo}:v1"),
        &format!("{}:/app", app.path().display()),
        cache.path().to_str().unwrap(),
        &[],
    )
    .ok();
    let m = skopeo_raw(&format!("{PLAIN}/{repo}:v1"), "");
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    for l in m["layers"].as_array().unwrap() {
        assert!(
            l["mediaType"]
                .as_str()
                .unwrap()
                .starts_with("application/vnd.oci.image.layer.v1"),
            "{l}"
        );
    }
}

#[test]
fn tls_registry_with_basic_auth_and_a_wrong_password() {
    require_rig();
    let app = app_dir();
    let repo = unique("tls");
    let dir = format!("{}:/app", app.path().display());
    let cache = tempfile::tempdir().unwrap();
    let cfg = tempfile::tempdir().unwrap();
    let write_cfg = |pass: &str| {
        let auth = base64_encode(&format!("rig:{pass}"));
        std::fs::write(
            cfg.path().join("config.json"),
            format!(r#"{{"auths":{{"{TLS}":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
    };
    let env = [("DOCKER_CONFIG", cfg.path().to_str().unwrap())];
    let target = format!("{TLS}/{repo}:v1");
    let args = [
        "append",
        "--base",
        BASE,
        "--tag",
        &target,
        "--dir",
        &dir,
        "--insecure-registry",
        TLS,
        "--json",
        "--cache-dir",
        cache.path().to_str().unwrap(),
    ];

    write_cfg("rigpass");
    let r = run_env(&args, &env).ok().json();
    // Another registry: base layers are streamed registry-to-registry, never stored locally.
    assert_eq!(r["platforms"][0]["layers"][0]["status"], "streamed");
    let base_digest = r["platforms"][0]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !cache
            .path()
            .join("blobs/sha256")
            .join(base_digest.trim_start_matches("sha256:"))
            .exists(),
        "base layer was downloaded"
    );
    let inspected = sh(&format!(
        "skopeo inspect --raw --tls-verify=false --creds rig:rigpass docker://{target}"
    ));
    assert!(inspected.contains(&base_digest));

    // Without --insecure-registry the self-signed certificate is refused, with a hint.
    let strict: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != "--insecure-registry" && *a != TLS)
        .collect();
    let r = run_env(&strict, &env);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr.contains("--insecure-registry 127.0.0.1:5443"),
        "{}",
        r.stderr
    );

    write_cfg("wrong-secret-xyz");
    let wrong_target = format!("{TLS}/{repo}:v2");
    let mut bad_args = args.to_vec();
    bad_args[4] = &wrong_target;
    let r = run_env(&bad_args, &env);
    assert_eq!(r.code, 4, "{}", r.stderr);
    let err: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(err.len(), 1, "{}", r.stderr);
    assert!(
        err[0].contains("127.0.0.1:5443") && err[0].contains("401"),
        "{}",
        err[0]
    );
    assert!(!r.stderr.contains("wrong-secret-xyz") && !r.stdout.contains("wrong-secret-xyz"));
    let (tagged, _) = sh_status(&format!(
        "skopeo inspect --raw --tls-verify=false --creds rig:rigpass docker://{wrong_target}"
    ));
    assert!(!tagged, "a failed push left a tag");
}

fn base64_encode(s: &str) -> String {
    sh(&format!("printf %s '{s}' | base64 -w0"))
}

#[test]
fn oci_layout_output_is_accepted_by_skopeo() {
    require_rig();
    let app = app_dir();
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("layout");
    let r = append(
        BASE,
        "demo/app:v3",
        &format!("{}:/app", app.path().display()),
        cache.path().to_str().unwrap(),
        &[
            "--output",
            &format!("oci-layout:{}", layout.display()),
            "--json",
        ],
    )
    .ok()
    .json();
    let digest = r["digest"].as_str().unwrap();
    assert!(layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
        .exists());
    let repo = unique("layout");
    sh(&format!(
        "skopeo copy -q --dest-tls-verify=false oci:{}:v3 docker://{PLAIN}/{repo}:v3",
        layout.display()
    ));
    let work = tempfile::tempdir().unwrap();
    let rootfs = unpack(&format!("{PLAIN}/{repo}:v3"), work.path(), "");
    assert_eq!(
        sh(&format!("chroot {} python3 /app/main.py", rootfs.display())).trim(),
        "appended layer says 42"
    );
    // Base layers went to the content-addressed cache, and a second run reuses them.
    let base_layer = r["platforms"][0]["layers"][0]["digest"].as_str().unwrap();
    assert!(cache
        .path()
        .join("blobs/sha256")
        .join(base_layer.trim_start_matches("sha256:"))
        .exists());
}

/// The layer `append` put on top (the last one of the first platform).
fn added_layer(report: &Value) -> Value {
    report["platforms"][0]["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone()
}

#[test]
fn large_layer_goes_up_in_chunks_and_zstd_works() {
    require_rig();
    let d = tempfile::tempdir().unwrap();
    // 70 MB of incompressible data at level 0: over the 64 MiB single-PUT limit.
    sh(&format!(
        "head -c 70000000 /dev/urandom > {}/blob.bin",
        d.path().display()
    ));
    let cache = tempfile::tempdir().unwrap();
    let repo = unique("chunked");
    let r = append(
        BASE,
        &format!("http://{PLAIN}/{repo}:v1"),
        &format!("{}:/data", d.path().display()),
        cache.path().to_str().unwrap(),
        &["--compression-level", "0", "--json"],
    )
    .ok()
    .json();
    let layer = added_layer(&r);
    assert!(layer["size"].as_u64().unwrap() > 64 << 20);
    assert_eq!(layer["status"], "uploaded");
    // skopeo verifies every blob digest while copying.
    let work = tempfile::tempdir().unwrap();
    sh(&format!(
        "skopeo copy -q --src-tls-verify=false docker://{PLAIN}/{repo}:v1 dir:{}",
        work.path().display()
    ));

    let small = app_dir();
    let repo = unique("zstd");
    let r = append(
        BASE,
        &format!("http://{PLAIN}/{repo}:v1"),
        &format!("{}:/app", small.path().display()),
        cache.path().to_str().unwrap(),
        &["--compression", "zstd", "--json"],
    )
    .ok()
    .json();
    let layer = added_layer(&r);
    assert_eq!(
        layer["media_type"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let blob = cache.path().join("blobs/sha256").join(
        layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let listing = sh(&format!("zstd -dc {} | tar -tv", blob.display()));
    assert!(
        listing.contains("app/main.py") && listing.contains(" 0/0 "),
        "{listing}"
    );
}

#[test]
fn bad_inputs_fail_with_one_line_and_nothing_tagged() {
    require_rig();
    let app = app_dir();
    let dir = format!("{}:/app", app.path().display());
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    let check = |args: &[&str], code: i32, needle: &str| expect_error(&run(args), code, needle);
    let repo = unique("bad");
    let target = format!("http://{PLAIN}/{repo}:v1");
    check(
        &[
            "append",
            "--base",
            "http://127.0.0.1:1/library/python:3.11-slim",
            "--tag",
            "http://127.0.0.1:1/x/y:1",
            "--dir",
            &dir,
            "--cache-dir",
            c,
        ],
        4,
        "cannot reach registry 127.0.0.1:1",
    );
    check(
        &[
            "append",
            "--base",
            &format!("http://{PLAIN}/library/python:no-such-tag"),
            "--tag",
            &target,
            "--dir",
            &dir,
            "--cache-dir",
            c,
        ],
        3,
        "127.0.0.1:5000/library/python:no-such-tag",
    );
    check(
        &[
            "append",
            "--base",
            BASE,
            "--tag",
            &target,
            "--dir",
            &dir,
            "--platform",
            "linux/s390x",
            "--cache-dir",
            c,
        ],
        3,
        "has no linux/s390x (it has: linux/amd64, linux/arm64/v8)",
    );
    check(
        &[
            "append",
            "--base",
            BASE,
            "--tag",
            &target,
            "--dir",
            "/does/not/exist:/app",
            "--cache-dir",
            c,
        ],
        3,
        "/does/not/exist does not exist",
    );
    sh(&format!("mkfifo {}/pipe", app.path().display()));
    check(
        &[
            "append",
            "--base",
            BASE,
            "--tag",
            &target,
            "--dir",
            &dir,
            "--cache-dir",
            c,
        ],
        3,
        "pipe is a fifo",
    );
    check(
        &[
            "append",
            "--base",
            BASE,
            "--tag",
            "http://127.0.0.1:5000/Bad/Name:1",
            "--dir",
            &dir,
            "--cache-dir",
            c,
        ],
        3,
        "invalid image reference",
    );
    let (tagged, _) = sh_status(&format!(
        "skopeo inspect --raw --tls-verify=false docker://{PLAIN}/{repo}:v1"
    ));
    assert!(!tagged, "a failed run left a tag");
}
