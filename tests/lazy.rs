//! eStargz images (`--compression estargz`) on a lazy node: the rig's second containerd, whose
//! snapshotter is the real stargz snapshotter (`scripts/rig.sh lazy`). A learner pulled with
//! `ctr-remote images rpull` starts with none of the builder's layers in the content store and
//! runs its runtime's imports from the lazy mounts; the same image runs on the plain node; a
//! chunk with one flipped byte is refused by the snapshotter's verification; two cold builds
//! give the same digests.
mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

const IMPORTS: &str =
    "import numpy, sklearn.linear_model, flwr, flops_utils, datasets, pyarrow.flight; \
    import main, model_manager; print('imports ok')";

fn build(repo: &Path, registry: &str, cache: &Path) -> Value {
    build_into(repo, registry, cache, &["--compression", "estargz"])
        .ok()
        .json()
}

fn layer_digests(report: &Value) -> Vec<String> {
    report["image"]["platforms"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn estargz_learner_starts_lazily_and_refuses_a_flipped_chunk() {
    require_rig();
    require_uv();
    require_mirror();
    require_containerd();
    require_lazy_node();
    let d = tempfile::tempdir().unwrap();
    let owner = unique("lazy").replace('/', "-");
    let repo = git_repo("sklearn-conda", &d.path().join(&owner), "sklearn-conda");
    // Model weights as a repo may ship them: incompressible, so deflate stores them and a
    // byte of them can be flipped in the blob without breaking the gzip stream.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let weights: Vec<u8> = (0..65_536)
        .map(|_| {
            // xorshift64: bytes deflate cannot shrink.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    std::fs::write(repo.join("weights.bin"), &weights).unwrap();
    git(&repo, "add weights.bin");
    commit_all(&repo, "weights");
    let cache1 = d.path().join("cache-1");
    let report = build(&repo, &format!("http://{PLAIN}"), &cache1);
    let name = tagged_name(&report["image"]);

    // Every layer the builder wrote carries the TOC digest and the uncompressed size; the
    // base's (a plain gzip image's) do not.
    let manifest = skopeo_raw(&name, "");
    let base = skopeo_raw(&format!("{PLAIN}/library/python:3.11-slim-amd64"), "");
    let base_digests: Vec<&Value> = base["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["digest"])
        .collect();
    let own: Vec<&Value> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| !base_digests.contains(&&l["digest"]))
        .collect();
    assert!(own.len() >= 3, "{manifest}");
    for l in &own {
        let a = &l["annotations"];
        assert!(
            a["containerd.io/snapshot/stargz/toc.digest"]
                .as_str()
                .is_some_and(|t| t.starts_with("sha256:")),
            "no TOC digest on {l}"
        );
        assert!(
            a["io.containers.estargz.uncompressed-size"]
                .as_str()
                .is_some(),
            "{l}"
        );
    }
    let own_digests: Vec<String> = own
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();

    // The lazy node: manifest and config only in its content store, and the imports run.
    lazy_rpull(&name);
    let content = sh(&lazy_ctr("content ls -q"));
    for digest in &own_digests {
        assert!(
            !content.contains(digest.as_str()),
            "{digest} was downloaded:\n{content}"
        );
    }
    let id = format!("lazy-{}", std::process::id());
    let out = lazy_ctr_run(&["--net-host", &name, &id, "python3", "-c", IMPORTS])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("imports ok"),
        "lazy node: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The plain node (overlayfs) runs the same image: eStargz is gzip.
    sh(&ctr(&format!("images pull --plain-http {name} >/dev/null")));
    let out = ctr_run(&[&name, &format!("{id}-plain"), "python3", "-c", IMPORTS])
        .output()
        .unwrap();
    sh(&ctr(&format!("images rm {name} >/dev/null")));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("imports ok"),
        "plain node: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One flipped byte in the weights' chunk (the gzip stream still valid, the TOC the
    // original's): the lazy node mounts the image, but reading the file fails.
    let (repository, tag) = name
        .strip_prefix(&format!("{PLAIN}/"))
        .unwrap()
        .rsplit_once(':')
        .unwrap();
    sh(&format!(
        "python3 {}/tests/support/flip_chunk.py {PLAIN} {repository} {tag} app/weights.bin flipped",
        env!("CARGO_MANIFEST_DIR")
    ));
    let flipped = format!("{PLAIN}/{repository}:flipped");
    lazy_rpull(&flipped);
    let read =
        "import hashlib; print(hashlib.sha256(open('/app/weights.bin','rb').read()).hexdigest())";
    let out = lazy_ctr_run(&[
        "--net-host",
        &flipped,
        &format!("{id}-flip"),
        "python3",
        "-c",
        read,
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a flipped chunk was read: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("Input/output error"), "{stderr}");
    let _ = sh_status(&lazy_ctr(&format!("images rm {name} {flipped}")));

    // Reproducible: two cold builds (fresh registries, nothing of the first in the second's
    // cache but its wheels and lock) give the same digests, converted base layers included.
    let (r1, r2) = (FreshRegistry::start(), FreshRegistry::start());
    let (cache3, cache4) = (d.path().join("cache-3"), d.path().join("cache-4"));
    let a = build(&repo, &r1.url(), &cache3);
    std::fs::create_dir_all(&cache4).unwrap();
    sh(&format!(
        "cp -al {0}/wheels {0}/locks {1}/",
        cache3.display(),
        cache4.display()
    ));
    let b = build(&repo, &r2.url(), &cache4);
    assert_eq!(layer_digests(&a), layer_digests(&b));
    assert_eq!(a["image"]["digest"], b["image"]["digest"]);
}
