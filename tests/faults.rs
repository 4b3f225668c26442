//! Builds that survive flaky registries and each other (issue 23): a fault-injecting proxy on
//! loopback (tests/support/fault_proxy.py) in front of a fresh CNCF registry answers 429 and
//! 503, resets connections after the registry acted, cuts uploads mid-body and stalls; every
//! image that comes out is verified whole with skopeo + umoci. A mix too heavy to survive fails
//! with one line, exit 4, one MQTT `failed` and no tag. Two builders at once, sharing one cache
//! dir or not, both succeed with one digest.
mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

const FIXTURE: &str = "sklearn-conda";

/// A fault proxy in front of `upstream`; stopped on drop.
struct Proxy {
    _bg: Bg,
    addr: String,
    stats: PathBuf,
}

impl Proxy {
    fn start(upstream: &str, faults: &[&str], work: &Path) -> Self {
        let port = free_port();
        let stats = work.join(format!("faults-{port}.json"));
        let mut cmd = Command::new("python3");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/fault_proxy.py"))
            .args(["--port", &port.to_string(), "--upstream", upstream])
            .arg("--stats")
            .arg(&stats)
            .args(faults);
        let mut bg = Bg::start(&format!("proxy-{port}"), cmd, work);
        bg.wait_for_output("ready", Duration::from_secs(20));
        Proxy {
            _bg: bg,
            addr: format!("127.0.0.1:{port}"),
            stats,
        }
    }

    /// (requests seen, faults injected).
    fn counts(&self) -> (u64, u64) {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(&self.stats).unwrap()).unwrap();
        let injected = v["injected"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        (v["requests"].as_u64().unwrap(), injected)
    }
}

/// The fixture's repo, made once for the whole file (one commit, so one set of digests).
fn fixture_repo() -> PathBuf {
    static REPO: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut r = REPO.lock().unwrap();
    r.get_or_insert_with(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("faults").replace('/', "-"));
        git_repo(FIXTURE, &dir, FIXTURE)
    })
    .clone()
}

/// A cache dir whose wheels are downloaded (one build without faults, once for the file), so
/// that fault runs spend their time on the registry, not on PyPI.
fn warm_cache() -> PathBuf {
    static WARM: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut w = WARM.lock().unwrap();
    w.get_or_insert_with(|| {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-cache");
        let reg = FreshRegistry::start();
        build(
            &reg.url(),
            &cache,
            &["--platform", "linux/amd64,linux/arm64"],
        )
        .ok();
        cache
    })
    .clone()
}

/// A new cache dir holding only the warm cache's wheels (hard links): locks, layers and blobs
/// are made again, as on a node whose builders share only what PyPI sent.
fn cache_with_wheels(dir: &Path) -> PathBuf {
    let cache = dir.join(unique("cache").replace('/', "-"));
    std::fs::create_dir_all(&cache).unwrap();
    sh(&format!(
        "cp -al {}/wheels {}/wheels",
        warm_cache().display(),
        cache.display()
    ));
    cache
}

fn build(registry: &str, cache: &Path, extra: &[&str]) -> Run {
    let mut extra = extra.to_vec();
    extra.push("--no-notify");
    build_into(&fixture_repo(), registry, cache, &extra)
}

/// The image is whole: skopeo reads the index, and every platform unpacks with umoci and
/// holds the model manager and the learner runtime.
fn verify_whole(reference: &str, arches: &[&str], work: &Path) {
    let name = reference.split('@').next().unwrap();
    let raw = skopeo_raw(name, "");
    if raw.get("manifests").is_some() {
        let mut found = index_architectures(&raw);
        found.sort();
        assert_eq!(found, arches, "{raw}");
    } else {
        assert_eq!(arches, ["amd64"], "a single manifest: {raw}");
    }
    for arch in arches {
        let rootfs = unpack(
            name,
            &work.join(format!("{arch}-{}", free_port())),
            &format!("--override-arch {arch}"),
        );
        for f in ["app/model_manager.py", "app/main.py", "app/data_loading.py"] {
            assert!(rootfs.join(f).exists(), "{arch}: {f} missing");
        }
    }
}

/// Builds (`FLOPS_FAULT_BUILDS`, default 1; bench/faults.sh asks for more) through a proxy
/// injecting `faults`, each into a fresh registry; every one must succeed with at least
/// `min_faults` injected, and its image must be whole. Prints one `faults:` line for the bench.
fn faulty_builds_survive(faults: &[&str], min_faults: u64) {
    require_rig();
    require_uv();
    require_mirror();
    let builds: usize = std::env::var("FLOPS_FAULT_BUILDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let d = tempfile::tempdir().unwrap();
    let (mut requests, mut injected) = (0, 0);
    let started = std::time::Instant::now();
    for _ in 0..builds {
        let reg = FreshRegistry::start();
        let proxy = Proxy::start(&reg.addr, faults, d.path());
        let cache = cache_with_wheels(d.path());
        let r = build(
            &format!("http://{}", proxy.addr),
            &cache,
            &["--platform", "linux/amd64,linux/arm64"],
        );
        let (n, f) = proxy.counts();
        (requests, injected) = (requests + n, injected + f);
        assert_eq!(
            r.code, 0,
            "{faults:?}: {f} faults in {n} requests broke the build: {}",
            r.stderr
        );
        assert!(
            f >= min_faults,
            "{faults:?}: only {f} faults in {n} requests"
        );
        // Verified behind the proxy's back: what the registry itself holds.
        let reference = r.json()["image"]["reference"]
            .as_str()
            .unwrap()
            .replace(&proxy.addr, &reg.addr);
        verify_whole(&reference, &["amd64", "arm64"], d.path());
    }
    println!(
        "faults: {} | builds {builds} | survived {builds} | requests {requests} | injected {injected} | {:.0} s",
        faults.join(" "),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn survives_429_with_retry_after() {
    faulty_builds_survive(&["--rate", "429=0.15"], 3);
}

#[test]
fn survives_resets_after_the_registry_acted() {
    faulty_builds_survive(&["--rate", "reset=0.2"], 3);
}

#[test]
fn survives_uploads_cut_mid_body() {
    faulty_builds_survive(&["--rate", "cut=0.2"], 3);
}

#[test]
fn survives_stalls_and_503() {
    faulty_builds_survive(&["--rate", "stall=0.2", "--rate", "503=0.05"], 3);
}

#[test]
fn a_503_on_the_first_request_is_retried() {
    faulty_builds_survive(&["--first", "503"], 1);
}

#[test]
fn a_registry_gone_for_good_fails_with_one_line_and_no_tag() {
    require_rig();
    require_uv();
    require_mirror();
    require_broker();
    let d = tempfile::tempdir().unwrap();
    let reg = FreshRegistry::start();
    // The access check and the first requests pass; then every request gets 503.
    let proxy = Proxy::start(&reg.addr, &["--after", "6", "--rate", "all=1"], d.path());
    let cache = cache_with_wheels(d.path());
    let prefix = format!("test/{}", unique("faults").replace('/', "-"));
    let sub = Sub::start(&prefix);
    let registry = format!("http://{}", proxy.addr);
    let repo = fixture_repo();
    let e = run(&[
        "build",
        repo.to_str().unwrap(),
        "--registry",
        &registry,
        "--registry-mirror",
        MIRROR_FLAG,
        "--cache-dir",
        cache.to_str().unwrap(),
        "--project-id",
        "p-faults",
        "--mqtt",
        BROKER,
        "--topic-prefix",
        &prefix,
    ]);
    expect_error(&e, 4, "503");
    let failed = sub.failed();
    assert_eq!(failed.len(), 1, "{failed:?}");
    // No image tag anywhere in the registry (the pool's own entries are not images).
    let catalog: Value =
        serde_json::from_str(&sh(&format!("curl -sf http://{}/v2/_catalog", reg.addr))).unwrap();
    for repo in catalog["repositories"].as_array().unwrap() {
        let repo = repo.as_str().unwrap();
        if repo.starts_with("flops-cache/") {
            continue;
        }
        let tags: Value = serde_json::from_str(&sh(&format!(
            "curl -s http://{}/v2/{repo}/tags/list",
            reg.addr
        )))
        .unwrap();
        assert!(
            tags["tags"].as_array().is_none_or(|t| t.is_empty()),
            "{repo} was tagged: {tags}"
        );
    }
    println!("heavy: 503 to every request after the first 6 | exit 4, one error line, one MQTT failed, no tag");
}

/// A typo'd port: the first contact is refused, and the build says so at once, naming the
/// registry, instead of retrying for 15–20 s (retries are for a registry that answered before).
#[test]
fn a_registry_port_where_nothing_listens_fails_at_once_naming_it() {
    require_rig();
    let port = free_port();
    let repo = fixture_repo();
    let started = std::time::Instant::now();
    let e = run(&[
        "build",
        repo.to_str().unwrap(),
        "--registry",
        &format!("http://127.0.0.1:{port}"),
        "--no-notify",
    ]);
    let took = started.elapsed();
    expect_error(&e, 4, &format!("127.0.0.1:{port}"));
    assert!(
        !e.stderr.contains("retrying"),
        "a refused first contact is not retried: {}",
        e.stderr
    );
    assert!(took < Duration::from_secs(3), "took {took:?}: {}", e.stderr);
    println!(
        "nothing on 127.0.0.1:{port} | exit 4 in {took:?}: {}",
        e.stderr.trim()
    );
}

/// The commit's tag already names an image, and the registry does not answer the request that
/// reads it (every HEAD of the learner tag gets 503): the build fails naming the tag (exit 4),
/// instead of taking the silence for "no tag yet" and moving a tag someone else set.
#[test]
fn a_tag_the_registry_will_not_show_is_never_moved() {
    require_rig();
    require_uv();
    require_mirror();
    let d = tempfile::tempdir().unwrap();
    let reg = FreshRegistry::start();
    let cache = warm_cache();
    let first = build(&reg.url(), &cache, &[]).ok().json();
    let tagged = first["image"]["reference"].as_str().unwrap().to_string();
    let (name, digest) = tagged.split_once('@').unwrap();
    let proxy = Proxy::start(
        &reg.addr,
        &[
            "--only",
            "^HEAD /v2/.*/learner/manifests/[0-9a-f]{40}$",
            "--rate",
            "all=1",
        ],
        d.path(),
    );
    // Other inputs (zstd layers): another image for the same commit.
    let e = build(
        &format!("http://{}", proxy.addr),
        &cache,
        &["--compression", "zstd"],
    );
    let tag = name.rsplit_once(':').unwrap().1;
    expect_error(&e, 4, tag);
    assert!(proxy.counts().1 >= 1, "no fault was injected");
    let (repo_path, _) = name.split_once('/').unwrap().1.rsplit_once(':').unwrap();
    let now = sh(&format!(
        "curl -sfI -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.oci.image.index.v1+json' http://{}/v2/{repo_path}/manifests/{tag} | tr -d '\\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p'",
        reg.addr
    ));
    assert_eq!(now.trim(), digest, "the tag moved");
    println!("HEAD of {name} answered 503: exit 4, the tag still names {digest}");
}

/// Two builders started together into one registry; returns both image references.
fn two_at_once(registry: &str, caches: [&Path; 2]) -> [String; 2] {
    let repo = fixture_repo();
    let children: Vec<_> = caches
        .iter()
        .map(|cache| {
            Command::new(bin())
                .args(["build", repo.to_str().unwrap(), "--registry", registry])
                .args(["--registry-mirror", MIRROR_FLAG, "--cache-dir"])
                .arg(cache)
                .args(["--no-notify", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let refs: Vec<String> = outs
        .iter()
        .map(|o| {
            assert!(
                o.status.success(),
                "a concurrent build failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            v["image"]["reference"].as_str().unwrap().to_string()
        })
        .collect();
    [refs[0].clone(), refs[1].clone()]
}

fn concurrent_runs(shared: bool) {
    require_rig();
    require_uv();
    require_mirror();
    // CI runs a few; FLOPS_CONCURRENT_RUNS=10 is the acceptance (bench/faults.sh).
    let runs: usize = std::env::var("FLOPS_CONCURRENT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let d = tempfile::tempdir().unwrap();
    let mut digests = std::collections::BTreeSet::new();
    for run in 0..runs {
        let reg = FreshRegistry::start();
        let one = cache_with_wheels(d.path());
        let two = if shared {
            one.clone()
        } else {
            cache_with_wheels(d.path())
        };
        let [a, b] = two_at_once(&reg.url(), [&one, &two]);
        assert_eq!(a, b, "run {run}: two builders, two images");
        digests.insert(a.split('@').nth(1).unwrap().to_string());
        if run == 0 {
            verify_whole(&a, &["amd64"], d.path());
        }
    }
    assert_eq!(digests.len(), 1, "{runs} runs gave {digests:?}");
    println!(
        "concurrent: {} cache dir | runs {runs} | failures 0 | digests 1",
        if shared {
            "one shared"
        } else {
            "one per builder"
        }
    );
}

#[test]
fn two_builders_sharing_one_cache_dir() {
    concurrent_runs(true);
}

#[test]
fn two_builders_with_their_own_cache_dirs() {
    concurrent_runs(false);
}
