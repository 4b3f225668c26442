//! Wheel layers as multi-member gzip (each wheel member's DEFLATE stream copied into a gzip
//! member of its own): they unpack with skopeo + umoci, run under containerd, and their bytes
//! depend only on the lock — two cold builds, with `--jobs 1` and `--jobs 2`, on empty layer
//! caches and fresh registries, give the same digests.
mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

/// Cold build of `repo` into `registry`, with the wheels and the lock of `seed` (no second
/// download, no second resolve) but no layers.
fn cold_build(
    repo: &Path,
    registry: &FreshRegistry,
    seed: &Path,
    cache: &Path,
    jobs: &str,
) -> Value {
    std::fs::create_dir_all(cache).unwrap();
    if seed.join("wheels").exists() {
        sh(&format!(
            "cp -al {0}/wheels {0}/locks {1}/",
            seed.display(),
            cache.display()
        ));
    }
    run(&[
        "build",
        repo.to_str().unwrap(),
        "--registry",
        &registry.url(),
        "--registry-mirror",
        MIRROR_FLAG,
        "--cache-dir",
        cache.to_str().unwrap(),
        "--jobs",
        jobs,
        "--json",
    ])
    .ok()
    .json()
}

fn layer_digests(report: &Value) -> Vec<String> {
    report["dependency_layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Counts the gzip members of a blob (Python's zlib, not our code).
const COUNT_MEMBERS: &str = r#"
import sys, zlib
data, n = open(sys.argv[1], "rb").read(), 0
while data:
    d = zlib.decompressobj(31)
    d.decompress(data)
    assert d.eof, "truncated gzip member"
    data, n = d.unused_data, n + 1
print(n)
"#;

#[test]
fn pass_through_layers_are_reproducible_unpack_and_run() {
    require_rig();
    require_uv();
    require_mirror();
    require_containerd();
    let d = tempfile::tempdir().unwrap();
    let owner = unique("pt").replace('/', "-");
    let repo = git_repo("sklearn-conda", &d.path().join(&owner), "sklearn-conda");
    let (one, two) = (FreshRegistry::start(), FreshRegistry::start());
    let (cache1, cache2) = (d.path().join("cache-1"), d.path().join("cache-2"));
    let a = cold_build(&repo, &one, Path::new("/nonexistent"), &cache1, "1");
    let b = cold_build(&repo, &two, &cache1, &cache2, "2");
    let layers = layer_digests(&a);
    assert!(layers.len() > 5, "{layers:?}");
    assert_eq!(layers, layer_digests(&b), "--jobs 1 and --jobs 2 differ");
    assert_eq!(a["image"]["digest"], b["image"]["digest"]);
    assert!(
        b["dependency_layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["source"] == "built"),
        "the second run did not build its layers: {}",
        b["dependency_layers"]
    );

    // The biggest dependency layer is made of many gzip members (the copied streams), and
    // every one is a complete gzip member.
    let name = tagged_name(&a["image"]);
    let dir = d.path().join("dir");
    sh(&format!(
        "skopeo copy -q --src-tls-verify=false docker://{name} dir:{}",
        dir.display()
    ));
    let biggest = a["dependency_layers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|l| l["size"].as_u64().unwrap())
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    std::fs::write(d.path().join("count.py"), COUNT_MEMBERS).unwrap();
    let members: usize = sh(&format!(
        "python3 {} {}",
        d.path().join("count.py").display(),
        dir.join(&biggest).display()
    ))
    .trim()
    .parse()
    .unwrap();
    assert!(members > 100, "only {members} gzip members in {biggest}");

    // umoci unpacks it (it checks every layer's diff_id), and the code imports.
    let rootfs = unpack(&name, &d.path().join("unpacked"), "");
    assert!(rootfs.join("opt/flops/site-packages/scipy").is_dir());

    // containerd pulls, unpacks and runs it: compiled extensions from copied streams load.
    sh(&ctr(&format!("images pull --plain-http {name} >/dev/null")));
    let id = format!("pt-{}", std::process::id());
    let out = ctr_run(&[
        &name,
        &id,
        "python3",
        "-c",
        "import numpy, scipy.linalg, pandas, pyarrow, sklearn.linear_model, datasets, flwr; \
         m = sklearn.linear_model.LogisticRegression().fit([[0.0], [1.0]], [0, 1]); \
         print(int(m.predict([[1.0]])[0]), pandas.__version__ != '', pyarrow.array([1]).to_pylist())",
    ])
    .output()
    .unwrap();
    sh(&ctr(&format!("images rm {name} >/dev/null")));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1 True [1]",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
