//! One learner image per commit, whatever the plan: `build` and `build --aggregator
//! --model-flavor sklearn` of one commit, each resolving its own lock into its own empty
//! registry, push the same learner digest; and a commit's tag never moves to another image
//! unless `--refresh-lock` asks for it (the report then says from what to what).
mod common;
use common::*;
use serde_json::Value;

/// The digest `reference` names now, as skopeo (not our client) reads it.
fn tag_digest(reference: &str) -> String {
    sh(&format!(
        "skopeo inspect --raw --tls-verify=false docker://{reference} | sha256sum | cut -d' ' -f1"
    ))
    .trim()
    .to_string()
}

/// The image's environment (`KEY=VALUE`), from its config.
fn config_env(reference: &str) -> Vec<String> {
    let config: Value = serde_json::from_str(&sh(&format!(
        "skopeo inspect --config --tls-verify=false docker://{reference}"
    )))
    .unwrap();
    config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect()
}

fn learner(report: &Value) -> (String, String) {
    let image = &report["image"];
    let reference = image["reference"].as_str().unwrap();
    let name = reference.split('@').next().unwrap().to_string();
    (name, image["digest"].as_str().unwrap().to_string())
}

#[test]
fn one_learner_image_per_commit_whatever_the_plan() {
    require_rig();
    require_uv();
    require_mirror();
    let d = tempfile::tempdir().unwrap();
    let owner = unique("plans").replace('/', "-");
    let repo = git_repo("sklearn-conda", &d.path().join(&owner), "sklearn-conda");
    let (one, two) = (FreshRegistry::start(), FreshRegistry::start());
    let (cache1, cache2) = (d.path().join("cache-1"), d.path().join("cache-2"));

    // Two independent resolutions (no lock shared: the lock is what differed). The second
    // cache gets the first's wheels only, to spare a second download: wheels are checked
    // against the lock's hashes and cannot change what the lock says.
    let alone = build_into(&repo, &one.url(), &cache1, &[]).ok().json();
    std::fs::create_dir_all(&cache2).unwrap();
    sh(&format!(
        "cp -al {}/wheels {}/",
        cache1.display(),
        cache2.display()
    ));
    let fl = &["--aggregator", "--model-flavor", "sklearn"];
    let both = build_into(&repo, &two.url(), &cache2, fl).ok().json();
    for r in [&alone, &both] {
        assert_eq!(r["lock_source"], "resolved", "{}", r["lock_source"]);
    }
    let (name1, digest1) = learner(&alone);
    let (name2, digest2) = learner(&both);
    assert_eq!(
        digest1, digest2,
        "`build` and `build --aggregator` pushed different learners ({name1} vs {name2})"
    );
    assert!(both["images"]["aggregator"]["digest"].is_string(), "{both}");

    // Only the aggregator carries the flavor (it logs the model with it).
    assert!(
        !config_env(&name2)
            .iter()
            .any(|e| e.starts_with("ML_MODEL_FLAVOR=")),
        "the learner carries ML_MODEL_FLAVOR"
    );
    let aggregator = name2.replace("/learner:", "/aggregator:");
    assert!(config_env(&aggregator).contains(&"ML_MODEL_FLAVOR=sklearn".to_string()));

    // The second plan into the first registry leaves learner:<sha> where the first put it.
    let again = build_into(&repo, &one.url(), &cache2, fl).ok().json();
    assert_eq!(learner(&again).1, digest1);
    assert!(again["image"].get("moved").is_none(), "{}", again["image"]);
    assert_eq!(format!("sha256:{}", tag_digest(&name1)), digest1);

    // Someone else moves the tag: the next build refuses to move it back (exit 5, both digests
    // named, nothing tagged) unless --refresh-lock asks for it.
    sh(&format!(
        "skopeo copy -q --src-tls-verify=false --dest-tls-verify=false \
         docker://{PLAIN}/library/python:3.11-slim-amd64 docker://{name1}"
    ));
    let foreign = format!("sha256:{}", tag_digest(&name1));
    assert_ne!(foreign, digest1);
    let refused = build_into(&repo, &one.url(), &cache2, fl);
    expect_error(&refused, 5, "already names");
    for needle in [&foreign, &digest1, &"--refresh-lock".to_string()] {
        assert!(
            refused.stderr.contains(needle.as_str()),
            "{}",
            refused.stderr
        );
    }
    assert_eq!(format!("sha256:{}", tag_digest(&name1)), foreign);

    let mut args = fl.to_vec();
    args.push("--refresh-lock");
    let moved = build_into(&repo, &one.url(), &cache2, &args).ok();
    let report = moved.json();
    let (_, now) = learner(&report);
    assert_eq!(
        report["image"]["moved"]["from"],
        foreign.as_str(),
        "{report}"
    );
    assert_eq!(report["image"]["moved"]["to"], now.as_str());
    assert!(
        moved.stderr.contains(&format!("from {foreign} to {now}")),
        "{}",
        moved.stderr
    );
    assert_eq!(format!("sha256:{}", tag_digest(&name1)), now);
}
