//! SBOMs: every platform image of a push carries an SPDX 2.3 document as an OCI 1.1 referrer.
//! Found here as an operator would on the CNCF registry 2.8 (no referrers API): the referrers
//! tag `sha256-<hex>` read with skopeo, the document's blob with curl, validated by the SPDX
//! project's own `pyspdxtools`, and compared with the lock and the dependency layers.
mod common;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const SPDX_TOOLS: &str = "/var/lib/flops-rig/tools/bin/pyspdxtools";

fn require_spdx_tools() {
    assert!(
        Path::new(SPDX_TOOLS).exists(),
        "{SPDX_TOOLS} is missing: run `sudo scripts/rig.sh pyenv`"
    );
}

fn build(repo: &Path, cache: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "build",
        repo.to_str().unwrap(),
        "--aggregator",
        "--model-flavor",
        "sklearn",
        "--registry",
        "http://127.0.0.1:5000",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--platform",
        "linux/amd64,linux/arm64",
        "--json",
    ];
    args.extend_from_slice(extra);
    run(&args).ok().json()
}

fn sbom_of(repository: &str, manifest: &str, artifact: &str) -> Vec<u8> {
    let (found, doc) = referrer_sbom(PLAIN, repository, manifest);
    assert_eq!(found, artifact);
    doc
}

/// Every (name, sha256) of the lock's wheels and sdists.
fn lock_hashes(lock: &str) -> BTreeSet<(String, String)> {
    let lock: toml::Table = std::fs::read_to_string(lock).unwrap().parse().unwrap();
    let mut out = BTreeSet::new();
    for p in lock["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap().to_lowercase().replace('_', "-");
        let files = p
            .get("wheels")
            .and_then(|w| w.as_array())
            .cloned()
            .unwrap_or_default();
        for f in files.iter().chain(p.get("sdist")) {
            if let Some(h) = f.get("hashes").and_then(|h| h.get("sha256")) {
                out.insert((name.clone(), h.as_str().unwrap().to_string()));
            }
        }
    }
    out
}

#[test]
fn every_platform_image_has_a_valid_spdx_sbom_with_every_locked_package() {
    require_rig();
    require_uv();
    require_spdx_tools();
    let d = tempfile::tempdir().unwrap();
    let owner = unique("sbom").replace('/', "-");
    let repo = git_repo("sklearn-conda", &d.path().join(&owner), "sklearn-conda");
    // Wheels shared with tests/build.rs (downloads once per machine).
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("build-cache");
    let r = build(&repo, &cache, &[]);
    let hashes = lock_hashes(r["lock"].as_str().unwrap());
    let mut sboms = BTreeMap::new();
    let mut documents: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for (role, groups) in [
        ("learner", vec!["learner"]),
        ("aggregator", vec!["learner", "aggregator"]),
    ] {
        let image = &r["images"][role];
        let name = tagged_name(image);
        let repository = name.split_once('/').unwrap().1.rsplit_once(':').unwrap().0;
        for p in image["platforms"].as_array().unwrap() {
            let platform = p["platform"].as_str().unwrap();
            // The layers' platform has no variant (`linux/arm64` for `linux/arm64/v8`).
            let os_arch: String = platform.split('/').take(2).collect::<Vec<_>>().join("/");
            let artifact = p["sbom"].as_str().expect("the report names the SBOM");
            let doc_bytes = sbom_of(repository, p["manifest"].as_str().unwrap(), artifact);
            let file = d
                .path()
                .join(format!("{role}-{}.spdx.json", platform.replace('/', "-")));
            std::fs::write(&file, &doc_bytes).unwrap();
            let (valid, out) = sh_status(&format!("{SPDX_TOOLS} -i {}", file.display()));
            assert!(valid && out.trim().is_empty(), "pyspdxtools: {out}");
            let doc: Value = serde_json::from_slice(&doc_bytes).unwrap();
            assert_eq!(doc["spdxVersion"], "SPDX-2.3");
            assert_eq!(doc["packages"][0]["name"], repository);
            // Every package of the image's dependency layers, with a sha256 of the lock.
            let mut in_layers = BTreeSet::new();
            for l in r["dependency_layers"].as_array().unwrap() {
                if l["platform"] == os_arch.as_str()
                    && groups.contains(&l["group"].as_str().unwrap())
                {
                    for pkg in l["packages"].as_str().unwrap().split(',') {
                        let (n, v) = pkg.split_once("==").unwrap();
                        in_layers.insert((n.to_lowercase().replace('_', "-"), v.to_string()));
                    }
                }
            }
            let mut in_sbom = BTreeSet::new();
            for pkg in doc["packages"].as_array().unwrap() {
                let purl = pkg["externalRefs"][0]["referenceLocator"]
                    .as_str()
                    .unwrap_or("");
                if !purl.starts_with("pkg:pypi/") {
                    continue;
                }
                let name = pkg["name"]
                    .as_str()
                    .unwrap()
                    .to_lowercase()
                    .replace('_', "-");
                let sha = pkg["checksums"][0]["checksumValue"]
                    .as_str()
                    .unwrap()
                    .to_string();
                assert!(
                    hashes.contains(&(name.clone(), sha.clone())),
                    "{name} {sha} is not in the lock"
                );
                in_sbom.insert((name, pkg["versionInfo"].as_str().unwrap().to_string()));
            }
            assert_eq!(in_sbom, in_layers, "{role} {platform}");
            assert!(
                in_sbom.iter().any(|(n, _)| n == "scikit-learn"),
                "{in_sbom:?}"
            );
            // The base by digest, the repo at its commit, the runtime's files.
            let text = String::from_utf8_lossy(&doc_bytes);
            assert!(text.contains("pkg:oci/python@sha256%3A"), "{text}");
            assert!(text.contains(r["commit"].as_str().unwrap()));
            assert!(text.contains("./app/main.py"));
            sboms.insert(format!("{role} {platform}"), artifact.to_string());
            documents
                .entry(role.to_string())
                .or_default()
                .insert(os_arch.clone(), doc.clone());
            // Some licenses are known (PEP 639 expressions, SPDX `License` fields, classifiers).
            let licensed = doc["packages"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["licenseDeclared"] != "NOASSERTION")
                .count();
            assert!(
                licensed >= 10,
                "only {licensed} packages have a declared license"
            );
        }
    }
    assert_eq!(sboms.len(), 4);

    // `check --sbom` prints the same documents without building or pushing.
    let preview = run(&[
        "check",
        repo.to_str().unwrap(),
        "--aggregator",
        "--sbom",
        "--registry",
        "http://127.0.0.1:5000",
        "--platform",
        "linux/amd64,linux/arm64",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--json",
    ])
    .ok()
    .json();
    for (role, pushed) in &documents {
        for (platform, doc) in pushed {
            assert_eq!(
                &preview["sboms"][role][platform], doc,
                "check --sbom: {role} {platform}"
            );
        }
    }

    // The same commit on a fresh node (empty cache): the same SBOMs, byte for byte, and still
    // one referrer per manifest.
    let fresh = tempfile::tempdir().unwrap();
    let again = build(&repo, fresh.path(), &[]);
    for role in ["learner", "aggregator"] {
        for p in again["images"][role]["platforms"].as_array().unwrap() {
            let key = format!("{role} {}", p["platform"].as_str().unwrap());
            assert_eq!(p["sbom"].as_str(), Some(sboms[&key].as_str()), "{key}");
        }
    }
    let name = tagged_name(&again["images"]["learner"]);
    let repository = name.split_once('/').unwrap().1.rsplit_once(':').unwrap().0;
    let p = &again["images"]["learner"]["platforms"][0];
    sbom_of(
        repository,
        p["manifest"].as_str().unwrap(),
        p["sbom"].as_str().unwrap(),
    );

    // --sbom none: no referrer at all.
    let owner2 = unique("nosbom").replace('/', "-");
    let repo2 = git_repo("sklearn-conda", &d.path().join(&owner2), "sklearn-conda");
    let none = build(&repo2, &cache, &["--sbom", "none"]);
    let p = &none["images"]["learner"]["platforms"][0];
    assert!(p.get("sbom").is_none(), "{p}");
    let name = tagged_name(&none["images"]["learner"]);
    let repository = name.split_once('/').unwrap().1.rsplit_once(':').unwrap().0;
    let tag = p["manifest"].as_str().unwrap().replace(':', "-");
    let (exists, _) = sh_status(&format!(
        "skopeo inspect --raw --tls-verify=false docker://{PLAIN}/{repository}:{tag}"
    ));
    assert!(!exists, "--sbom none pushed a referrers index");
}

/// Edge deployments clone from IP hosts: a repo served by `git daemon` on 127.0.0.1 gets an SBOM
/// that the SPDX validator accepts (its download-location grammar has no IP form: NOASSERTION),
/// and the exact URL and commit in the source package's `sourceInfo`.
#[test]
fn a_repo_cloned_from_a_git_ip_url_gets_a_valid_sbom() {
    require_rig();
    require_uv();
    require_spdx_tools();
    let d = tempfile::tempdir().unwrap();
    let owner = unique("sbom-git").replace('/', "-");
    let served = d.path().join("served");
    git_repo("sklearn-conda", &served.join(&owner), "sklearn-conda");
    let port = free_port();
    let mut daemon = std::process::Command::new("git");
    daemon
        .arg("daemon")
        .arg("--export-all")
        .arg("--reuseaddr")
        .arg("--listen=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", served.display()))
        .arg(&served);
    let _daemon = Bg::start(&format!("git-daemon-{port}"), daemon, d.path());
    wait_port(port);
    let url = format!("git://127.0.0.1:{port}/{owner}/sklearn-conda");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("build-cache");
    let r = run(&[
        "build",
        &url,
        "--registry",
        "http://127.0.0.1:5000",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--no-notify",
        "--json",
    ])
    .ok()
    .json();
    let image = &r["image"];
    let name = tagged_name(image);
    let repository = name.split_once('/').unwrap().1.rsplit_once(':').unwrap().0;
    let p = &image["platforms"][0];
    let doc_bytes = sbom_of(
        repository,
        p["manifest"].as_str().unwrap(),
        p["sbom"].as_str().unwrap(),
    );
    let file = d.path().join("learner.spdx.json");
    std::fs::write(&file, &doc_bytes).unwrap();
    let (valid, out) = sh_status(&format!("{SPDX_TOOLS} -i {}", file.display()));
    assert!(valid && out.trim().is_empty(), "pyspdxtools: {out}");
    let doc: Value = serde_json::from_slice(&doc_bytes).unwrap();
    let source = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["SPDXID"] == "SPDXRef-Source")
        .expect("a source package");
    assert_eq!(source["downloadLocation"], "NOASSERTION");
    let info = source["sourceInfo"].as_str().unwrap();
    assert!(
        info.starts_with(&format!("cloned from {url} at commit ")),
        "{info}"
    );
    println!("{url}: pyspdxtools accepts the SBOM; sourceInfo: {info}");
}
