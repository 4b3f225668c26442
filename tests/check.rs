//! `check`: clone (file://, local path, smart HTTP with and without auth), verify, doctor.
mod common;
use common::*;
use serde_json::Value;

fn check(args: &[&str], tmp: &std::path::Path) -> Run {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    // Clones go to TMPDIR: pointing it at an empty dir lets the test see that nothing is left.
    run_env(&all, &[("TMPDIR", tmp.to_str().unwrap())])
}

fn assert_clean(tmp: &std::path::Path) {
    let left: Vec<_> = std::fs::read_dir(tmp).unwrap().collect();
    assert!(left.is_empty(), "temporary clone left behind: {left:?}");
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn mlflow_style_repo_over_file_url_and_local_path() {
    let d = tempfile::tempdir().unwrap();
    let repo = git_repo("sklearn-conda", &d.path().join("team"), "Sklearn-Demo");
    let sha = git(&repo, "rev-parse HEAD").trim().to_string();
    let tmp = tempfile::tempdir().unwrap();
    for source in [
        format!("file://{}", repo.display()),
        repo.display().to_string(),
    ] {
        let r = check(
            &[&source, "--registry", "http://127.0.0.1:5000", "--json"],
            tmp.path(),
        )
        .ok()
        .json();
        assert_eq!(r["commit"], sha.as_str());
        assert_eq!(
            r["image"],
            format!("127.0.0.1:5000/team/sklearn-demo/learner:{sha}")
        );
        assert_eq!(r["spec"], "conda.yaml");
        assert_eq!(r["python"], "3.11");
        assert_eq!(
            strs(&r["requirements"]),
            [
                "cloudpickle==3.0.0",
                "numpy==1.26.4",
                "scikit-learn==1.4.2",
                "setuptools<82"
            ]
        );
        let rules: Vec<&str> = r["doctor"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["rule"].as_str().unwrap())
            .collect();
        assert_eq!(
            rules,
            [
                "conda-env-name",
                "python-patch-pin",
                "drop-pip-pin",
                "mlflow",
                "implicit-setuptools"
            ]
        );
        assert!(r["doctor"][3]["detail"]
            .as_str()
            .unwrap()
            .contains("dropped mlflow==2.11.1"));
        assert_clean(tmp.path());
    }
    // The human report names the same things.
    let text = check(&[&repo.display().to_string()], tmp.path())
        .ok()
        .stdout;
    assert!(
        text.contains(&format!("commit     {sha}"))
            && text.contains("[mlflow] dropped mlflow==2.11.1"),
        "{text}"
    );
    assert!(
        text.contains(&format!("<registry>/team/sklearn-demo/learner:{sha}")),
        "{text}"
    );
}

#[test]
fn code_importing_mlflow_gets_mlflow_skinny() {
    let d = tempfile::tempdir().unwrap();
    let repo = git_repo("sklearn-conda", d.path(), "uses-mlflow");
    write(
        &repo.join("tracking.py"),
        "import mlflow\nmlflow.autolog()\n",
    );
    // A repo's own main.py gives way to the learner runtime's, with a warning.
    write(&repo.join("main.py"), "print('my own entry point')\n");
    commit_all(&repo, "use mlflow");
    let tmp = tempfile::tempdir().unwrap();
    let r = check(&[&repo.display().to_string(), "--json"], tmp.path())
        .ok()
        .json();
    assert!(
        strs(&r["requirements"]).contains(&"mlflow-skinny==2.11.1".to_string()),
        "{r}"
    );
    assert_eq!(
        strs(&r["warnings"]),
        vec!["the repo's main.py is replaced by the FL runtime's main.py"],
        "{r}"
    );
}

#[test]
fn requirements_and_pyproject_repos_and_precedence() {
    let d = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let req = git_repo("requirements-repo", d.path(), "req");
    let r = check(&[&req.display().to_string(), "--json"], tmp.path())
        .ok()
        .json();
    assert_eq!(r["spec"], "requirements.txt");
    assert_eq!(
        strs(&r["requirements"]),
        [
            "numpy>=1.26,<2",
            "cloudpickle==3.0.0",
            "scikit-learn~=1.4.2 ; python_full_version >= '3.9'",
            "setuptools<82"
        ]
    );

    let py = git_repo("pyproject-repo", d.path(), "py");
    let r = check(&[&py.display().to_string(), "--json"], tmp.path())
        .ok()
        .json();
    assert_eq!(r["spec"], "pyproject.toml");
    assert_eq!(r["python_constraint"], ">=3.10");
    assert_eq!(
        strs(&r["requirements"]),
        ["numpy>=1.26,<2", "scikit-learn==1.4.2", "setuptools<82"]
    );

    // A ready lock beats everything and is used as written: no doctor rule touches it.
    let locked = git_repo("requirements-repo", d.path(), "locked");
    write(&locked.join("pylock.toml"), "lock-version = \"1.0\"\nrequires-python = \">=3.11\"\ncreated-by = \"test\"\n[[packages]]\nname = \"numpy\"\nversion = \"1.26.4\"\n");
    commit_all(&locked, "lock");
    let r = check(&[&locked.display().to_string(), "--json"], tmp.path())
        .ok()
        .json();
    assert_eq!(r["spec"], "pylock.toml");
    assert_eq!(strs(&r["ignored_specs"]), ["requirements.txt"]);
    assert_eq!(strs(&r["requirements"]), ["numpy==1.26.4"]);
    assert!(r["doctor"].as_array().unwrap().is_empty());

    // conda.yaml beats requirements.txt, and the report says which was used.
    std::fs::copy(req.join("requirements.txt"), py.join("requirements.txt")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sklearn-conda/conda.yaml"),
        py.join("conda.yaml"),
    )
    .unwrap();
    commit_all(&py, "more specs");
    let r = check(&[&py.display().to_string(), "--json"], tmp.path())
        .ok()
        .json();
    assert_eq!(r["spec"], "conda.yaml");
    assert_eq!(
        strs(&r["ignored_specs"]),
        ["pyproject.toml", "requirements.txt"]
    );
}
use std::path::Path;

#[test]
fn refs_over_smart_http() {
    let d = tempfile::tempdir().unwrap();
    let repo = git_repo("sklearn-conda", d.path(), "repo");
    let first = git(&repo, "rev-parse HEAD").trim().to_string();
    git(&repo, "tag v1");
    git(&repo, "checkout -q -b feature");
    write(
        &repo.join("model_manager.py"),
        "class ModelManager:\n    pass\n",
    );
    let feature = commit_all(&repo, "feature");
    git(&repo, "checkout -q main");
    write(&repo.join("extra.py"), "X = 1\n");
    let main = commit_all(&repo, "main moves on");
    let root = d.path().join("served");
    std::fs::create_dir_all(&root).unwrap();
    bare(&repo, &root, "repo");
    let server = GitServer::start(&root, None);
    let url = server.url("repo");
    let tmp = tempfile::tempdir().unwrap();
    for (git_ref, want) in [
        (None, &main),
        (Some("feature"), &feature),
        (Some("v1"), &first),
        (Some(first.as_str()), &first),
    ] {
        let mut args = vec![url.as_str(), "--json"];
        if let Some(r) = git_ref {
            args.extend(["--ref", r]);
        }
        let r = check(&args, tmp.path()).ok().json();
        assert_eq!(r["commit"], want.as_str(), "ref {git_ref:?}");
        if git_ref.is_none() || git_ref == Some("feature") {
            assert_eq!(
                r["shallow"], true,
                "smart HTTP allows a depth-1 clone of a branch"
            );
        }
        assert_clean(tmp.path());
    }
    let r = check(&[&url, "--ref", "no-such-branch"], tmp.path());
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("unknown ref \"no-such-branch\""),
        "{}",
        r.stderr
    );
    assert_clean(tmp.path());
}

#[test]
fn private_repo_credentials_are_used_and_never_shown() {
    let d = tempfile::tempdir().unwrap();
    let repo = git_repo("sklearn-conda", d.path(), "private");
    let root = d.path().join("served");
    std::fs::create_dir_all(&root).unwrap();
    bare(&repo, &root, "private");
    let server = GitServer::start(&root, Some("bot:s3cret-token-123"));
    let url = server.url("private");
    let tmp = tempfile::tempdir().unwrap();
    let tmps = tmp.path().to_str().unwrap();

    let r = run_env(&["check", &url], &[("TMPDIR", tmps)]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("authentication failed"), "{}", r.stderr);

    let r = run_env(
        &["check", &url, "--json"],
        &[
            ("TMPDIR", tmps),
            ("GIT_TOKEN", "s3cret-token-123"),
            ("GIT_USERNAME", "bot"),
        ],
    )
    .ok();
    assert_eq!(r.json()["source"], url.as_str());
    assert!(!r.stdout.contains("s3cret") && !r.stderr.contains("s3cret"));

    let with_creds = url.replace("http://", "http://bot:s3cret-token-123@");
    let r = run_env(&["check", &with_creds, "--json"], &[("TMPDIR", tmps)]).ok();
    assert_eq!(r.json()["source"], url.as_str());
    assert!(!r.stdout.contains("s3cret") && !r.stderr.contains("s3cret"));

    let wrong = url.replace("http://", "http://bot:wrong-s3cret@");
    let r = run_env(&["check", &wrong], &[("TMPDIR", tmps)]);
    assert_eq!(r.code, 3);
    assert!(!r.stderr.contains("wrong-s3cret"), "{}", r.stderr);
    assert_clean(tmp.path());
}

#[test]
fn bad_repos_fail_with_one_clear_line_and_clean_up() {
    let d = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let expect = |source: &str, extra: &[&str], needle: &str| {
        let mut args = vec![source];
        args.extend_from_slice(extra);
        let r = check(&args, tmp.path());
        expect_error(&r, 3, needle);
        assert_clean(tmp.path());
    };
    let missing = git_repo("missing-model-manager", d.path(), "missing");
    expect(
        &missing.display().to_string(),
        &[],
        "model_manager.py is missing",
    );
    let malformed = git_repo("malformed-conda", d.path(), "malformed");
    expect(
        &malformed.display().to_string(),
        &[],
        "conda.yaml: invalid YAML at line 6",
    );
    let nospec = git_repo("missing-model-manager", d.path(), "nospec");
    write(
        &nospec.join("model_manager.py"),
        "class ModelManager:\n    pass\n",
    );
    std::fs::remove_file(nospec.join("conda.yaml")).unwrap();
    commit_all(&nospec, "no spec");
    expect(&nospec.display().to_string(), &[], "no dependency spec");
    // Nothing listens there: the network's failure (exit 4), not the input's.
    let r = check(&["http://127.0.0.1:1/nothing.git"], tmp.path());
    expect_error(&r, 4, "cannot clone http://127.0.0.1:1/nothing.git");
    assert_clean(tmp.path());
    expect(
        &d.path().join("not-a-repo").display().to_string(),
        &[],
        "cannot clone",
    );

    let big = git_repo("sklearn-conda", d.path(), "big");
    sh(&format!(
        "head -c 3000000 /dev/urandom > {}/weights.bin",
        big.display()
    ));
    commit_all(&big, "weights");
    expect(
        &big.display().to_string(),
        &["--max-repo-size", "1"],
        "larger than the limit of 1 MB",
    );

    let escape = git_repo("sklearn-conda", d.path(), "escape");
    std::fs::remove_file(escape.join("model_manager.py")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", escape.join("model_manager.py")).unwrap();
    commit_all(&escape, "symlink out");
    expect(
        &escape.display().to_string(),
        &[],
        "model_manager.py is a symlink that points outside the repository",
    );

    // A symlink elsewhere that leaves the repo is a warning, not a failure (kept, never followed).
    let link = git_repo("sklearn-conda", d.path(), "link");
    std::os::unix::fs::symlink("/etc", link.join("etc-link")).unwrap();
    write(&link.join("model_manager.py"), "class NotIt:\n    pass\n");
    commit_all(&link, "link");
    let r = check(&[&link.display().to_string(), "--json"], tmp.path())
        .ok()
        .json();
    let w = strs(&r["warnings"]).join("\n");
    assert!(
        w.contains("etc-link is a symlink to /etc outside the repository")
            && w.contains("does not define class ModelManager"),
        "{w}"
    );
}

/// `check` resolves as `build` would (issue 32): a repo's CI that runs it catches a package
/// the index does not have and a version that does not exist, all named in one error, exit 3
/// like the build; `--offline` keeps the intake-only check, which passes the same repo.
#[test]
fn check_resolves_as_the_build_would() {
    require_uv();
    let d = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = git_repo(
        "requirements-repo",
        &d.path().join(unique("resolve").replace('/', "-")),
        "typo",
    );
    write(
        &repo.join("requirements.txt"),
        "# runtime deps of the model\n-r requirements/base.txt\nscikit-learn~=1.4.2 ; python_version >= \"3.9\"\nsklearn-utilz==0.3  # a typo'd name\nnumpy==1.99.0\n",
    );
    commit_all(&repo, "typos");
    let cache = d.path().join("cache");
    let started = std::time::Instant::now();
    let r = check(
        &[
            repo.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
        tmp.path(),
    );
    let took = started.elapsed();
    expect_error(
        &r,
        3,
        "requirements.txt: requirements the package index cannot satisfy",
    );
    for named in ["sklearn-utilz: not on", "numpy==1.99.0: no such version"] {
        assert!(r.stderr.contains(named), "{named}: {}", r.stderr);
    }
    let offline = check(&[repo.to_str().unwrap(), "--offline", "--json"], tmp.path());
    let c = offline.ok().json();
    assert!(c.get("resolved").is_none(), "{c}");
    // The fixture as published resolves; the lock is reported and kept for the build.
    let good = git_repo(
        "requirements-repo",
        &d.path().join(unique("resolve").replace('/', "-")),
        "good",
    );
    let c = check(
        &[
            good.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--json",
        ],
        tmp.path(),
    )
    .ok()
    .json();
    assert!(c["resolved"]["packages"].as_u64().unwrap() > 20, "{c}");
    assert_eq!(c["resolved"]["python"], "3.11");
    println!(
        "check with two typos: exit 2 in {took:?}; {}",
        r.stderr.trim()
    );
}

/// A local repo is one source however its path is spelled (`a/../a/repo`, a symlink, `./repo`):
/// the report, the image's labels and its SBOM name the path the filesystem gives, so one
/// commit gives one image digest from any working directory (found by a newcomer: two
/// spellings made two digests, and the second build was refused with exit 5).
#[test]
fn a_local_repo_is_one_source_however_its_path_is_spelled() {
    let d = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = git_repo("sklearn-conda", &d.path().join("team"), "spelled");
    let link = d.path().join("link");
    std::os::unix::fs::symlink(&repo, &link).unwrap();
    let spellings = [
        repo.display().to_string(),
        format!("{}/../team/spelled", d.path().join("team").display()),
        link.display().to_string(),
    ];
    let sources: Vec<String> = spellings
        .iter()
        .map(|s| {
            let r = check(&[s.as_str(), "--offline", "--json"], tmp.path())
                .ok()
                .json();
            r["source"].as_str().unwrap().to_string()
        })
        .collect();
    let canonical = std::fs::canonicalize(&repo).unwrap().display().to_string();
    assert!(sources.iter().all(|s| *s == canonical), "{sources:?}");
}
