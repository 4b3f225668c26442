//! Recipes users paste and scripts they copy work as written: the SBOM recipe of docs/sbom.md
//! (run verbatim with bash, only its `IMAGE=` value replaced) on a single-platform image and
//! on a multi-platform index, on the plain-HTTP registry of the README's first build; and the
//! CI smoke test of examples/ci/ (check, build, import the model code inside the images)
//! against a fresh registry, as a CI job's `registry:2` service starts.
mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Wheels and layers shared with the other tests (downloads happen once per machine).
fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("build-cache")
}

/// The fenced block after the line `<!-- recipe: NAME -->` of `doc`, verbatim but for the
/// value of its one `IMAGE=` line.
fn recipe(doc: &str, name: &str, image: &str) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(doc)).unwrap();
    let marker = format!("<!-- recipe: {name} -->");
    let mut lines = text.lines().skip_while(|l| l.trim() != marker.as_str());
    assert!(lines.next().is_some(), "{doc} has no line {marker}");
    let fence = lines.next().unwrap_or("");
    assert!(
        fence.starts_with("```"),
        "{marker} in {doc} is not followed by a code fence: {fence:?}"
    );
    let mut script = String::new();
    let mut images = 0;
    for line in lines.take_while(|l| !l.starts_with("```")) {
        if let Some(rest) = line.strip_prefix("IMAGE=") {
            images += 1;
            let comment = rest.find(char::is_whitespace).map_or("", |i| &rest[i..]);
            script.push_str(&format!("IMAGE={image}{comment}\n"));
        } else {
            script.push_str(line);
            script.push('\n');
        }
    }
    assert_eq!(
        images, 1,
        "the {name} recipe of {doc} must set IMAGE= on one line"
    );
    script
}

/// Runs `script` with bash in `dir` (no `ARCH` but `env`'s): (exit code, stdout, stderr).
fn bash(script: &str, dir: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let file = dir.join("recipe.sh");
    std::fs::write(&file, script).unwrap();
    let mut c = Command::new("bash");
    c.arg(file).current_dir(dir).env_remove("ARCH");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().expect("bash");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// The SBOM recipe on `image` (`host/repository:tag`), for `arch` when given, prints the SPDX
/// 2.3 document of that platform: the one attached to `manifest`.
fn check_sbom_recipe(image: &str, arch: Option<&str>, manifest: &str, dir: &Path) {
    let env: Vec<(&str, &str)> = arch.map(|a| ("ARCH", a)).into_iter().collect();
    let (code, out, err) = bash(&recipe("docs/sbom.md", "sbom", image), dir, &env);
    assert_eq!(
        code, 0,
        "the SBOM recipe failed on {image} ({arch:?}):\n{err}"
    );
    let doc: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("the SBOM recipe printed no JSON ({e}): {out}\n{err}"));
    assert_eq!(doc["spdxVersion"], "SPDX-2.3", "{out}");
    let name = image.split_once('/').unwrap().1;
    assert_eq!(
        doc["name"],
        format!("{name} linux/{}", arch.unwrap_or("amd64"))
    );
    let repository = name.rsplit_once(':').unwrap().0;
    let (_, attached) = referrer_sbom(PLAIN, repository, manifest);
    let attached: Value = serde_json::from_slice(&attached).unwrap();
    assert!(doc == attached, "not the SBOM of {manifest}: {out}");
}

#[test]
fn the_sbom_recipe_reads_a_single_platform_image_and_an_index() {
    require_rig();
    require_mirror();
    require_uv();
    let d = tempfile::tempdir().unwrap();
    let owner = d.path().join(unique("recipe").replace('/', "-"));
    let cache = shared_cache();
    let flags = ["--model-flavor", "sklearn", "--no-notify"];

    // The README's first build: one platform, a plain-HTTP registry.
    let single = git_repo("sklearn-conda", &owner, "single");
    let r = build_into(&single, "http://127.0.0.1:5000", &cache, &flags)
        .ok()
        .json();
    let image = tagged_name(&r["image"]);
    let platforms = r["image"]["platforms"].as_array().unwrap();
    assert_eq!(platforms.len(), 1, "{}", r["image"]);
    let manifest = platforms[0]["manifest"].as_str().unwrap();
    check_sbom_recipe(&image, None, manifest, d.path());

    // A multi-platform index: each platform's own document.
    let multi = git_repo("sklearn-conda", &owner, "multi");
    let mut extra = flags.to_vec();
    extra.extend(["--platform", "linux/amd64,linux/arm64"]);
    let r = build_into(&multi, "http://127.0.0.1:5000", &cache, &extra)
        .ok()
        .json();
    let image = tagged_name(&r["image"]);
    for arch in ["amd64", "arm64"] {
        let prefix = format!("linux/{arch}");
        let p = r["image"]["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["platform"].as_str().unwrap().starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {}", r["image"]));
        check_sbom_recipe(
            &image,
            Some(arch),
            p["manifest"].as_str().unwrap(),
            d.path(),
        );
    }

    // Nothing to read: an error and a non-zero exit status, never an empty success.
    let repository = image.rsplit_once(':').unwrap().0;
    for (bad, arch, needle) in [
        (format!("{repository}:missing"), None, "manifest unknown"),
        (image.clone(), Some("s390x"), "no linux/s390x manifest"),
        (repository.to_string(), None, "is not repository:tag"),
    ] {
        let env: Vec<(&str, &str)> = arch.map(|a| ("ARCH", a)).into_iter().collect();
        let (code, out, err) = bash(&recipe("docs/sbom.md", "sbom", &bad), d.path(), &env);
        assert_ne!(
            code, 0,
            "the SBOM recipe succeeded on {bad} ({arch:?}): {out}"
        );
        assert!(out.trim().is_empty(), "stdout on failure: {out}");
        assert!(err.contains(needle), "expected {needle:?} on stderr: {err}");
    }
}

#[test]
fn the_ci_smoke_script_builds_and_imports_the_model_code() {
    require_rig();
    require_mirror();
    require_uv();
    // What a CI job's registry:2 service starts as: empty, plain HTTP.
    let registry = FreshRegistry::start();
    let d = tempfile::tempdir().unwrap();
    let owner = unique("ci").replace('/', "-");
    let repo = git_repo("sklearn-conda", &d.path().join(&owner), "mnist");
    let o = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ci/smoke.sh"))
        .env("REGISTRY", &registry.addr)
        .env("REPO_DIR", repo)
        .env("FLOPS_IMAGE_BUILDER", bin())
        .env(
            "FLOPS_BUILD_ARGS",
            format!(
                "--registry-mirror {MIRROR_FLAG} --cache-dir {}",
                shared_cache().display()
            ),
        )
        .env_remove("MODEL_FLAVOR")
        .env_remove("SMOKE_WORK")
        .output()
        .expect("bash");
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "examples/ci/smoke.sh failed:\n{out}\n{err}"
    );
    for role in ["learner", "aggregator"] {
        let prefix = format!("smoke: {role} {}/{owner}/mnist/{role}:", registry.addr);
        let line = out
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no smoke import of the {role}:\n{out}\n{err}"));
        assert!(line.contains("imported model_manager from /app"), "{line}");
    }
    assert_eq!(out.lines().last(), Some("smoke: OK"), "{out}");
}

#[test]
fn the_ci_examples_run_the_smoke_script() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "examples/ci/github-actions.yml",
        "examples/ci/gitlab-ci.yml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            text.contains("bash examples/ci/smoke.sh"),
            "{file} does not run examples/ci/smoke.sh"
        );
        assert!(text.contains("registry:2"), "{file} starts no registry:2");
    }
    let smoke = std::fs::read_to_string(root.join("examples/ci/smoke.sh")).unwrap();
    for needle in [
        " check ",
        " build ",
        "--no-notify",
        "--aggregator",
        "chroot",
    ] {
        assert!(
            smoke.contains(needle),
            "examples/ci/smoke.sh lacks {needle:?}"
        );
    }
}

/// The README's first build, as written (only the binary's path is this build's), of a repo
/// holding the README's own `model_manager.py` and its one-line requirements.txt: both images
/// build, and the model code imports in the learner and answers as FLOps calls it.
#[test]
fn the_readme_first_build_of_the_readme_model_manager() {
    require_rig();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = |opening: &str, after: &str| -> String {
        let start = readme
            .find(after)
            .unwrap_or_else(|| panic!("README: no {after:?}"));
        let rest = &readme[start..];
        let open = rest
            .find(opening)
            .unwrap_or_else(|| panic!("README: no {opening} after {after:?}"));
        let body = &rest[open + opening.len()..];
        body[..body.find("\n```").unwrap()]
            .trim_start_matches('\n')
            .to_string()
    };
    let model_manager = block("```python\n", "## Your ML repo");
    assert!(
        readme.contains("`scikit-learn==1.4.2`"),
        "the README's requirements line changed"
    );
    let first_build = block("```\n", "## A first build");
    let command: String = first_build
        .lines()
        .skip_while(|l| !l.contains("flops-image-builder build"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("target/release/flops-image-builder", bin());
    assert!(command.contains("./my-ml-repo"), "{first_build}");
    let d = tempfile::tempdir().unwrap();
    let owner = d.path().join(unique("readme").replace('/', "-"));
    let repo = owner.join("my-ml-repo");
    std::fs::create_dir_all(&repo).unwrap();
    write(&repo.join("model_manager.py"), &model_manager);
    write(&repo.join("requirements.txt"), "scikit-learn==1.4.2\n");
    sh(&format!(
        "cd {} && git init -q -b main && git add -A && git -c user.name=u -c user.email=u@example.com commit -qm 'first'",
        repo.display()
    ));
    let (code, stdout, stderr) = bash(&command, &owner, &[]);
    assert_eq!(code, 0, "the README's first build failed: {stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let learner = tagged_name(&report["images"]["learner"]);
    assert!(
        report["images"]["aggregator"]["reference"].is_string(),
        "{report}"
    );
    let rootfs = import_model_manager(&learner, "amd64", d.path());
    let (ok, out) = python_in_image(
        &rootfs,
        "amd64",
        "import model_manager; m = model_manager.ModelManager(); print([p.shape for p in m.get_model_parameters()], m.get_model() is m.model)",
    );
    assert!(ok && out.contains("[(10, 784), (10,)] True"), "{out}");
    println!(
        "README first build: {learner}; ModelManager answers: {}",
        out.trim()
    );
}
