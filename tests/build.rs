//! `build`: the learner image with its dependency layers, pushed to the real registry,
//! checked with skopeo/umoci/chroot and against `uv pip install --target`.
mod common;
use common::*;
use std::path::{Path, PathBuf};

/// Wheels and layers shared by the tests of this file (downloads happen once per machine).
fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("build-cache")
}

fn build(repo: &Path, cache: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "build",
        repo.to_str().unwrap(),
        "--registry",
        "http://127.0.0.1:5000",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// `name==version ; marker` of every package of a lock's subset (the lock's
/// `[tool.flops-image-builder.subsets]`), for uv: `subset.py LOCK SUBSET`.
const LOCK_SUBSET: &str = r#"
import sys, tomllib
lock = tomllib.load(open(sys.argv[1], "rb"))
norm = lambda n: n.lower().replace("_", "-").replace(".", "-")
names = {norm(n) for n in lock["tool"]["flops-image-builder"]["subsets"][sys.argv[2]]}
for p in lock["packages"]:
    if norm(p["name"]) in names:
        marker = f" ; {p['marker']}" if p.get("marker") else ""
        print(f"{p['name']}=={p['version']}{marker}")
"#;

/// Python run inside the image: every RECORD row with a hash matches the installed file.
const CHECK_RECORDS: &str = r#"
import base64, csv, glob, hashlib, os, sys
site = "/opt/flops/site-packages"
n = 0
for rec in glob.glob(site + "/*.dist-info/RECORD"):
    for row in csv.reader(open(rec)):
        if not row[1]:
            continue
        data = open(os.path.normpath(os.path.join(site, row[0])), "rb").read()
        want = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert want == row[1] and len(data) == int(row[2]), rec + ": " + row[0]
        n += 1
print(n)
"#;

/// Files installed in a site-packages, without the ones installers differ on (and our site
/// hook, which is not a package's).
fn site_files(root: &Path) -> Vec<String> {
    let out = sh(&format!(
        "cd {} && find . -type f ! -path './bin/*' ! -path '*__pycache__*' ! -name INSTALLER ! -name RECORD ! -name REQUESTED ! -name direct_url.json ! -name uv_cache.json ! -path ./.lock ! -path ./sitecustomize.py | sort",
        root.display()
    ));
    out.lines().map(str::to_string).collect()
}

#[test]
fn multi_platform_learner_image_with_dependency_layers() {
    require_rig();
    require_uv();
    let d = tempfile::tempdir().unwrap();
    let owner = unique("b").replace('/', "-");
    let repo = git_repo("sklearn-conda", &d.path().join(&owner), "sklearn-conda");
    let cache = shared_cache();
    let r = build(&repo, &cache, &["--platform", "linux/amd64,linux/arm64"])
        .ok()
        .json();
    let name = tagged_name(&r["image"]);
    assert!(
        name.ends_with(&format!(
            "/sklearn-conda/learner:{}",
            r["commit"].as_str().unwrap()
        )),
        "{name}"
    );
    let idx = skopeo_raw(&name, "");
    assert_eq!(index_architectures(&idx), ["amd64", "arm64"]);
    // The doctor dropped mlflow; numpy and scikit-learn are in their own layers.
    let layers: Vec<String> = r["dependency_layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["packages"].as_str().unwrap().to_string())
        .collect();
    assert!(
        layers.iter().any(|l| l == "numpy==1.26.4")
            && layers.iter().any(|l| l == "scikit-learn==1.4.2")
    );
    assert!(!layers.iter().any(|l| l.contains("mlflow")), "{layers:?}");

    // amd64: the code and its dependencies import; a console script of a dependency runs;
    // every RECORD hash matches.
    let work = tempfile::tempdir().unwrap();
    let rootfs = unpack(&name, work.path(), "--override-arch amd64");
    {
        let _dev = DevMount::new(&rootfs);
        let chroot = format!(
            "chroot {} env PYTHONPATH=/opt/flops/site-packages PATH=/opt/flops/bin:/usr/bin:/bin",
            rootfs.display()
        );
        let out = sh(&format!("{chroot} sh -c 'cd /app && python3 -c \"import sklearn, flwr, flops_utils, model_manager; print(sklearn.__version__)\"'"));
        assert_eq!(out.trim(), "1.4.2");
        assert_eq!(sh(&format!("{chroot} f2py -v")).trim(), "1.26.4");
        std::fs::write(rootfs.join("tmp/check_records.py"), CHECK_RECORDS).unwrap();
        let n: usize = sh(&format!("{chroot} python3 /tmp/check_records.py"))
            .trim()
            .parse()
            .unwrap();
        assert!(n > 1000, "only {n} RECORD rows checked");
        // The layers carry the modules' bytecode: the imports read every dependency module
        // from its __pycache__ (`-B`: nothing written), none is compiled at start.
        let verbose = sh(&format!(
            "{chroot} sh -c 'python3 -B -v -c \"import sklearn, flwr, pandas\" 2>&1'"
        ));
        let loaded: Vec<&str> = verbose
            .lines()
            .filter_map(|l| l.strip_prefix("# code object from "))
            .map(|f| f.trim_matches('\''))
            .filter(|f| {
                f.starts_with("/opt/flops/site-packages/")
                    && *f != "/opt/flops/site-packages/sitecustomize.py"
            })
            .collect();
        let from_source: Vec<&&str> = loaded.iter().filter(|f| !f.ends_with(".pyc")).collect();
        assert!(
            loaded.len() > 500 && from_source.is_empty(),
            "{} modules loaded; compiled at start: {from_source:?}",
            loaded.len()
        );
    }
    assert!(
        r["bytecode"].as_str().unwrap().starts_with("cpython-311 "),
        "{}",
        r["bytecode"]
    );
    assert!(!rootfs.join("app/.git").exists(), "no .git in the image");
    // Same files and RECORD rows as uv installing the learner's share of the same lock (the
    // lock serves the learner and the aggregator) for the same platform.
    let uv_target = work.path().join("uv");
    let learner_reqs = work.path().join("learner-requirements.txt");
    std::fs::write(work.path().join("subset.py"), LOCK_SUBSET).unwrap();
    sh(&format!(
        "python3 {} {} learner >{}",
        work.path().join("subset.py").display(),
        r["lock"].as_str().unwrap(),
        learner_reqs.display()
    ));
    sh(&format!(
        "uv pip install -q --target {} --python-platform x86_64-manylinux_2_28 --python-version 3.11 --no-deps --no-compile -r {}",
        uv_target.display(),
        learner_reqs.display()
    ));
    let (ours, uv) = (
        site_files(&rootfs.join("opt/flops/site-packages")),
        site_files(&uv_target),
    );
    let only_ours: Vec<&String> = ours.iter().filter(|f| !uv.contains(f)).collect();
    let only_uv: Vec<&String> = uv.iter().filter(|f| !ours.contains(f)).collect();
    assert!(
        only_ours.is_empty() && only_uv.is_empty() && ours.len() > 1000,
        "only ours: {only_ours:?}; only uv: {only_uv:?}"
    );

    // arm64: every shared object is an aarch64 ELF (e_machine 183).
    let work_arm = tempfile::tempdir().unwrap();
    let arm = unpack(&name, work_arm.path(), "--override-arch arm64");
    let sos = sh(&format!(
        "find {}/opt/flops/site-packages -type f \\( -name '*.so' -o -name '*.so.[0-9]*' \\)",
        arm.display()
    ));
    assert!(sos.lines().count() > 20);
    for so in sos.lines() {
        let bytes = std::fs::read(so).unwrap();
        assert_eq!(&bytes[..4], b"\x7fELF", "{so}");
        assert_eq!(
            u16::from_le_bytes([bytes[18], bytes[19]]),
            183,
            "{so} is not aarch64"
        );
    }

    // Same commit again: same digest, nothing uploaded.
    let again = build(&repo, &cache, &["--platform", "linux/amd64,linux/arm64"])
        .ok()
        .json();
    assert_eq!(again["image"]["digest"], r["image"]["digest"]);
    assert_eq!(again["image"]["bytes_uploaded"], 0);

    // A code-only change on a fresh node (empty local cache): every dependency layer is found
    // in the registry; only the code layer, configs and manifests go up.
    write(
        &repo.join("model_manager.py"),
        &(std::fs::read_to_string(repo.join("model_manager.py")).unwrap() + "\n# tuned\n"),
    );
    commit_all(&repo, "tune");
    let empty = tempfile::tempdir().unwrap();
    let code_only = build(
        &repo,
        empty.path(),
        &["--platform", "linux/amd64,linux/arm64"],
    )
    .ok()
    .json();
    assert!(
        code_only["dependency_layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["source"] == "registry"),
        "{}",
        code_only["dependency_layers"]
    );
    let up = code_only["image"]["bytes_uploaded"].as_u64().unwrap();
    assert!(up > 0 && up < 1_000_000, "uploaded {up} bytes");
    assert!(
        !empty.path().join("wheels").exists(),
        "a code-only rebuild downloaded wheels"
    );
}

/// A repo whose dependencies are a pylock.toml (used as-is: no resolver, no network).
fn locked_repo(parent: &Path, name: &str, lock: &str) -> PathBuf {
    let repo = git_repo("requirements-repo", parent, name);
    std::fs::write(repo.join("pylock.toml"), lock).unwrap();
    commit_all(&repo, "lock");
    repo
}

fn wheel_lock(name: &str, file: &str, sha: &str) -> String {
    format!("lock-version = \"1.0\"\ncreated-by = \"test\"\n[[packages]]\nname = \"{name}\"\nversion = \"1.0\"\nwheels = [{{ path = \"wheels/{file}\", hashes = {{ sha256 = \"{sha}\" }} }}]\n")
}

fn expect_failure(r: &Run, needle: &str) {
    expect_error(r, 3, needle);
}

fn tagged(parent_owner: &str, name: &str) -> bool {
    let (ok, out) = sh_status(&format!(
        "skopeo list-tags --tls-verify=false docker://{PLAIN}/{parent_owner}/{name}/learner"
    ));
    ok && out.contains("\"Tags\": [\n        \"")
}

#[test]
fn bad_dependencies_fail_clearly_and_tag_nothing() {
    require_rig();
    let d = tempfile::tempdir().unwrap();
    let owner = unique("bad").replace('/', "-");
    let parent = d.path().join(&owner);
    let cache = tempfile::tempdir().unwrap();

    let sdist_only = "lock-version = \"1.0\"\ncreated-by = \"test\"\n[[packages]]\nname = \"legacy\"\nversion = \"0.1\"\nsdist = { url = \"https://files.example/legacy-0.1.tar.gz\", hashes = { sha256 = \"ff\" } }\n";
    let repo = locked_repo(&parent, "sdist", sdist_only);
    expect_failure(
        &build(&repo, cache.path(), &["--no-build"]),
        "--no-build: these packages ship only an sdist for linux/amd64, and building them is turned off: legacy 0.1 (only an sdist: legacy-0.1.tar.gz)",
    );
    assert!(!tagged(&owner, "sdist"));

    let wheels = d.path().join("w");
    let (evil, evil_sha) = make_wheel("evil", "1.0", &wheels, true);
    let repo = locked_repo(
        &parent,
        "zipslip",
        &wheel_lock("evil", "evil-1.0-py3-none-any.whl", &evil_sha),
    );
    std::fs::create_dir_all(repo.join("wheels")).unwrap();
    std::fs::copy(&evil, repo.join("wheels/evil-1.0-py3-none-any.whl")).unwrap();
    commit_all(&repo, "evil wheel");
    expect_failure(
        &build(&repo, cache.path(), &[]),
        "unsafe path \"../../../tmp/evil\"",
    );
    assert!(!tagged(&owner, "zipslip"));

    // A good local wheel builds; then the cached copy is tampered with.
    let (good, good_sha) = make_wheel("goodpkg", "1.0", &wheels, false);
    let lock = wheel_lock("goodpkg", "goodpkg-1.0-py3-none-any.whl", &good_sha);
    let repo = locked_repo(&parent, "good", &lock);
    std::fs::create_dir_all(repo.join("wheels")).unwrap();
    std::fs::copy(&good, repo.join("wheels/goodpkg-1.0-py3-none-any.whl")).unwrap();
    commit_all(&repo, "good wheel");
    let r = build(&repo, cache.path(), &[]).ok().json();
    assert_eq!(r["dependency_layers"][0]["packages"], "goodpkg==1.0");
    // A corrupted cache entry (a wheel never built before, so no layer exists anywhere): the
    // build verifies the cached file, deletes it and fails loudly.
    let (fresh, fresh_sha) = make_wheel("tamperpkg", "1.0", &wheels, false);
    let file = "tamperpkg-1.0-py3-none-any.whl";
    let cached = cache.path().join("wheels").join(&fresh_sha).join(file);
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    let mut bytes = std::fs::read(&fresh).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&cached, bytes).unwrap();
    let other = locked_repo(
        &parent,
        "tampered",
        &wheel_lock("tamperpkg", file, &fresh_sha),
    );
    std::fs::create_dir_all(other.join("wheels")).unwrap();
    std::fs::copy(&fresh, other.join("wheels").join(file)).unwrap();
    commit_all(&other, "wheel");
    expect_failure(
        &build(&other, cache.path(), &[]),
        "tamperpkg 1.0: tamperpkg-1.0-py3-none-any.whl has sha256",
    );
    assert!(!cached.exists(), "the tampered wheel was not deleted");
    assert!(!tagged(&owner, "tampered"));

    // Mistakes, not conflicts: two names the index does not know and a pin of a version that
    // does not exist are all named at once, and no pin is "relaxed" to hide them.
    let repo = git_repo("requirements-repo", &parent, "typos");
    write(
        &repo.join("requirements.txt"),
        "numpy==1.26.4\nsurely-not-a-real-pkg-xyz==1.0  # typo\nanother-fake-pkg-qqq-zzz>=2\nrequests==99.0\n",
    );
    commit_all(&repo, "typos");
    let r = build(&repo, cache.path(), &[]);
    expect_failure(
        &r,
        "requirements.txt: requirements the package index cannot satisfy",
    );
    for name in [
        "surely-not-a-real-pkg-xyz: not on",
        "another-fake-pkg-qqq-zzz: not on",
        "requests==99.0: no such version on",
    ] {
        assert!(
            r.stderr.contains(&format!("\n  {name}")),
            "{name}: {}",
            r.stderr
        );
    }
    assert!(!r.stderr.contains("relaxing"), "{}", r.stderr);
    assert!(!tagged(&owner, "typos"));
}

/// Issue 32: the binary and a registry are all a first build needs. With no `uv` anywhere on
/// PATH, an empty cache and an empty registry, the builder fetches the pinned uv's wheel from
/// the package index (checked against base-layers/uv-wheels), keeps it in the cache, and builds.
#[test]
fn a_first_build_needs_no_uv_on_path() {
    require_rig();
    require_mirror();
    let d = tempfile::tempdir().unwrap();
    let repo = git_repo(
        "sklearn-conda",
        &d.path().join(unique("no-uv").replace('/', "-")),
        "sklearn-conda",
    );
    let path: Vec<PathBuf> = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .filter(|dir| !dir.join("uv").exists())
        .collect();
    let path = std::env::join_paths(path).unwrap();
    let path = path.to_str().unwrap();
    assert!(
        sh_status(&format!("PATH={path} command -v uv"))
            .1
            .trim()
            .is_empty(),
        "uv is still on {path}"
    );
    let reg = FreshRegistry::start();
    let cache = d.path().join("cache");
    let r = run_env(
        &[
            "build",
            repo.to_str().unwrap(),
            "--registry",
            &reg.url(),
            "--registry-mirror",
            MIRROR_FLAG,
            "--cache-dir",
            cache.to_str().unwrap(),
            "--no-notify",
            "--json",
        ],
        &[("PATH", path)],
    );
    let stderr = r.stderr.clone();
    let report = r.ok().json();
    let uv = cache
        .join("tools")
        .join(format!(
            "uv-{}",
            include_str!("../base-layers/uv-version").trim()
        ))
        .join("uv");
    assert!(uv.is_file(), "no uv kept in the cache: {stderr}");
    assert!(stderr.contains("fetching uv"), "{stderr}");
    println!(
        "no uv on PATH: built {} with the uv fetched into {}",
        report["image"]["reference"],
        uv.display()
    );
}
