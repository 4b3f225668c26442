//! Real ML repos as their authors write them (specs, doctor, resolution, platforms): each
//! fixture is a small repo of one kind of real-world fault; `check --json` names the rule
//! that fired, `build` pushes to the rig's registry, and the pushed image imports the repo's
//! `model_manager` (chroot for amd64, qemu-user for arm64).
mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Wheels and layers shared by the tests of this file (downloads happen once per machine).
fn cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("real-repos-cache")
}

/// `fixtures/<name>` committed in a repo of its own (unique owner, so images never collide).
fn repo(fixture: &str, d: &Path) -> PathBuf {
    git_repo(fixture, &d.join(unique("r").replace('/', "-")), fixture)
}

fn check_run(repo: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["check", repo.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    run(&args)
}

fn check_json(repo: &Path, extra: &[&str]) -> Value {
    check_run(repo, extra).ok().json()
}

fn build_run(repo: &Path, extra: &[&str]) -> Run {
    let cache = cache();
    let mut args = vec![
        "build",
        repo.to_str().unwrap(),
        "--registry",
        "http://127.0.0.1:5000",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--no-notify",
        "--json",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn build_json(repo: &Path, extra: &[&str]) -> Value {
    build_run(repo, extra).ok().json()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn packages(report: &Value) -> Vec<String> {
    report["dependency_layers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| {
            l["packages"]
                .as_str()
                .unwrap()
                .split(',')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn setup() {
    require_rig();
    require_uv();
}

/// Item 5: pins that resolve for Python 3.11 only (pandas 2.1.4 needs numpy >= 1.26 on 3.12+).
#[test]
fn old_numpy_pins_resolve_for_the_images_python_only() {
    setup();
    let d = tempfile::tempdir().unwrap();
    let repo = repo("old-numpy-pins", d.path());
    let c = check_json(&repo, &[]);
    assert_eq!(c["python"], "3.11");
    assert!(rules(&c).contains(&"python-patch-pin".to_string()), "{c}");
    let r = build_json(&repo, &[]);
    let pkgs = packages(&r);
    assert!(
        pkgs.contains(&"numpy==1.23.5".to_string()) && pkgs.contains(&"pandas==2.1.4".to_string()),
        "{pkgs:?}"
    );
    let lock = std::fs::read_to_string(r["lock"].as_str().unwrap()).unwrap();
    assert!(lock.contains("requires-python = \"==3.11.*\""), "{lock}");
    import_model_manager(&tagged_name(&r["image"]), "amd64", d.path());
}

/// Item 6: MLflow writes every package it saw; pins the code never imports give way to the
/// FL runtime (statically for known constraints, by the resolver for the rest); the same pins
/// on imported packages fail naming both sides, and an untested flwr names both versions.
#[test]
fn incidental_pins_give_way_to_the_fl_runtime() {
    setup();
    let d = tempfile::tempdir().unwrap();
    let repo = repo("incidental-pins", d.path());
    let c = check_json(&repo, &[]);
    let detail = rule_detail(&c, "runtime-pin-conflict");
    assert!(
        detail.contains("protobuf==3.20.3 relaxed: no code imports protobuf"),
        "{c}"
    );
    let r = build_json(&repo, &[]);
    let detail = rule_detail(&r, "runtime-pin-conflict");
    for pin in ["protobuf==3.20.3", "grpcio==1.51.3"] {
        assert!(detail.contains(pin), "{pin} not relaxed: {detail}");
    }
    assert!(detail.contains("(locked: protobuf "), "{detail}");
    let pkgs = packages(&r);
    assert!(!pkgs.contains(&"protobuf==3.20.3".to_string()), "{pkgs:?}");
    assert!(
        pkgs.iter().any(|p| p.starts_with("absl-py==1.4.0")),
        "{pkgs:?}"
    );
    import_model_manager(&tagged_name(&r["image"]), "amd64", d.path());

    // The same pin on a package the code imports fails, naming the pin, the file and the runtime.
    let mm = repo.join("model_manager.py");
    let text = std::fs::read_to_string(&mm).unwrap();
    write(
        &mm,
        &format!("import google.protobuf  # noqa: F401\n{text}"),
    );
    commit_all(&repo, "use protobuf");
    let e = check_run(&repo, &[]);
    expect_error(
        &e,
        3,
        "protobuf==3.20.3 (conda.yaml; imported by model_manager.py) conflicts with the FL runtime (flwr) needs protobuf>=4.21.6",
    );
    write(&mm, &text);
    // A flwr version the runtime is not tested with names both versions.
    let conda = repo.join("conda.yaml");
    let spec = std::fs::read_to_string(&conda).unwrap();
    write(
        &conda,
        &spec.replace(
            "  - absl-py==1.4.0\n",
            "  - absl-py==1.4.0\n  - flwr==1.5.0\n",
        ),
    );
    commit_all(&repo, "pin flwr");
    let e = check_run(&repo, &[]);
    expect_error(
        &e,
        3,
        "flwr==1.5.0 (conda.yaml) is not a version the FL runtime is tested with (flwr>=",
    );
}

/// Item 7: imports no dependency provides: well-known ones are added, others named.
#[test]
fn imports_no_dependency_provides() {
    setup();
    let d = tempfile::tempdir().unwrap();
    let repo = repo("missing-imports", d.path());
    let c = check_json(&repo, &[]);
    let detail = rule_detail(&c, "missing-import");
    assert!(
        detail.contains("added tabulate: model_manager.py imports tabulate")
            && detail.contains("added python-dotenv: model_manager.py imports dotenv"),
        "{detail}"
    );
    let w = strs(&c["warnings"]).join("\n");
    assert!(
        w.contains(
            "scripts/plot_results.py imports mystery_plotting_lib, which no dependency provides"
        ),
        "{w}"
    );
    let r = build_json(&repo, &[]);
    let pkgs = packages(&r);
    assert!(
        pkgs.iter().any(|p| p.starts_with("tabulate=="))
            && pkgs.iter().any(|p| p.starts_with("python-dotenv==")),
        "{pkgs:?}"
    );
    import_model_manager(&tagged_name(&r["image"]), "amd64", d.path());
}

/// Item 8: conda's own file names are conda specs.
#[test]
fn environment_yml_is_a_conda_spec() {
    setup();
    let d = tempfile::tempdir().unwrap();
    let repo = repo("environment-yml", d.path());
    let c = check_json(&repo, &[]);
    assert_eq!(c["spec"], "environment.yml");
    assert_eq!(c["python"], "3.11");
    assert!(rules(&c).contains(&"conda-to-pypi".to_string()), "{c}");
    let r = build_json(&repo, &[]);
    assert_eq!(r["spec"], "environment.yml");
    import_model_manager(&tagged_name(&r["image"]), "amd64", d.path());
}

/// Item 9: a pyproject.toml without dependencies falls through; Poetry projects are read.
#[test]
fn pyproject_fall_through_and_poetry() {
    setup();
    let d = tempfile::tempdir().unwrap();
    let tools = repo("tools-only-pyproject", d.path());
    let c = check_json(&tools, &[]);
    assert_eq!(c["spec"], "requirements.txt");
    assert!(
        strs(&c["notes"])
            .join("\n")
            .contains("pyproject.toml declares no dependencies (no [project].dependencies or [tool.poetry.dependencies]; it has [tool.black], [tool.isort]); using requirements.txt"),
        "{c}"
    );
    let poetry = repo("poetry-repo", d.path());
    let c = check_json(&poetry, &[]);
    assert_eq!(c["spec"], "pyproject.toml");
    assert_eq!(c["python_constraint"], ">=3.10,<4");
    let reqs = strs(&c["requirements"]);
    for want in ["numpy>=1.26,<2", "scikit-learn>=1.4.2,<1.5", "tabulate"] {
        assert!(reqs.contains(&want.to_string()), "{want}: {reqs:?}");
    }
    assert!(
        !reqs
            .iter()
            .any(|r| r.starts_with("pytest") || r.starts_with("pandas")),
        "{reqs:?}"
    );
    let notes = strs(&c["notes"]).join("\n");
    assert!(
        notes.contains("groups left out (dev)") && notes.contains("optional dependency pandas"),
        "{notes}"
    );
    let r = build_json(&poetry, &[]);
    assert_eq!(
        r["python"]
            .as_str()
            .unwrap()
            .split('.')
            .take(2)
            .collect::<Vec<_>>(),
        ["3", "11"]
    );
    import_model_manager(&tagged_name(&r["image"]), "amd64", d.path());

    // git, path and URL dependencies are refused by name, all in one error.
    let py = poetry.join("pyproject.toml");
    let text = std::fs::read_to_string(&py).unwrap();
    write(&py, &text.replace("tabulate = \"*\"\n", "tabulate = \"*\"\nflcore = { git = \"https://github.com/example/flcore.git\", tag = \"v0.2\" }\nshared = { path = \"../shared\", develop = true }\n"));
    commit_all(&poetry, "git deps");
    let e = check_run(&poetry, &[]);
    expect_error(
        &e,
        3,
        "pyproject.toml: 2 entries cannot be installed from a package index",
    );
    for needle in [
        "flcore: a git dependency (https://github.com/example/flcore.git)",
        "shared: a path dependency (../shared)",
    ] {
        assert!(e.stderr.contains(needle), "{needle}: {}", e.stderr);
    }
}

/// Item 10: conda files exported from real environments.
#[test]
fn conda_exports_from_real_environments() {
    setup();
    let d = tempfile::tempdir().unwrap();
    let repo = repo("conda-export", d.path());
    let c = check_json(&repo, &[]);
    assert_eq!(c["spec"], "environment.yaml");
    assert_eq!(c["python"], "3.11");
    assert_eq!(
        rule_detail(&c, "conda-system-packages"),
        "dropped conda system packages _libgcc_mutex, _openmp_mutex, bzip2, ca-certificates, ld_impl_linux-64, libgcc-ng, libstdcxx-ng, openssl: toolchain and system libraries come with the base image or inside the wheels"
    );
    let to_pypi = rule_detail(&c, "conda-to-pypi");
    for needle in [
        "conda numpy=1.26.4=py311h64a7726_0 installed from PyPI as numpy==1.26.4.*",
        "conda toolz>=0.12 taken from the package index under the same name",
        "conda fsspec=2024.3.1 taken from the package index",
    ] {
        assert!(to_pypi.contains(needle), "{needle}: {to_pypi}");
    }
    assert!(
        strs(&c["requirements"]).contains(&"tabulate==0.9.0".to_string()),
        "{c}"
    );
    let r = build_json(&repo, &[]);
    let pkgs = packages(&r);
    assert!(
        pkgs.iter().any(|p| p.starts_with("toolz=="))
            && pkgs.contains(&"fsspec==2024.3.1".to_string()),
        "{pkgs:?}"
    );
    import_model_manager(&tagged_name(&r["image"]), "amd64", d.path());

    // Names the index does not know are an error naming every one of them.
    let env = repo.join("environment.yaml");
    let text = std::fs::read_to_string(&env).unwrap();
    write(
        &env,
        &text.replace(
            "  - toolz >=0.12\n",
            "  - toolz >=0.12\n  - flops-no-such-package-a\n  - flops-no-such-package-b=1.0\n",
        ),
    );
    commit_all(&repo, "unknown conda packages");
    let e = build_run(&repo, &[]);
    expect_error(&e, 3, "environment.yaml: conda packages that the package index https://pypi.org/simple does not know: flops-no-such-package-a, flops-no-such-package-b");
}

/// Item 11: `-e .` is the repo itself; lines an index cannot serve are all refused at once.
#[test]
fn editable_self_and_uninstallable_lines() {
    setup();
    let d = tempfile::tempdir().unwrap();
    let repo = repo("editable-self", d.path());
    let c = check_json(&repo, &[]);
    assert!(
        rule_detail(&c, "editable-self").contains("requirements.txt line 2: -e . dropped"),
        "{c}"
    );
    assert!(
        strs(&c["warnings"])
            .iter()
            .any(|w| w.starts_with("requirements.txt line 2: -e .: dropped")),
        "{c}"
    );
    let r = build_json(&repo, &[]);
    import_model_manager(&tagged_name(&r["image"]), "amd64", d.path());

    write(
        &repo.join("requirements.txt"),
        "-e .\nnumpy==1.26.4\nfile:///home/alice/wheels/flutils-0.1-py3-none-any.whl\ngit+https://github.com/alice/fl-tricks.git@main\n--find-links https://download.pytorch.org/whl/torch_stable.html\ntorch==1.9.0+cu111\nnumpy==1.24.4\n",
    );
    commit_all(&repo, "unindexable");
    let e = check_run(&repo, &[]);
    expect_error(
        &e,
        3,
        "requirements.txt: 5 entries cannot be installed from a package index:",
    );
    for needle in [
        "requirements.txt line 3: `file:///home/alice/wheels/flutils-0.1-py3-none-any.whl`: a local file URL",
        "requirements.txt line 4: `git+https://github.com/alice/fl-tricks.git@main`: a git URL of another project",
        "requirements.txt line 5: `--find-links https://download.pytorch.org/whl/torch_stable.html`: find-links",
        "requirements.txt line 6: torch pins the local version 1.9.0+cu111",
        "numpy: `numpy==1.26.4` (requirements.txt line 2) and `numpy==1.24.4` (requirements.txt line 7) are conflicting pins",
    ] {
        assert!(e.stderr.contains(needle), "{needle}:\n{}", e.stderr);
    }
}

/// Item 12: a package one platform lacks is a warning (an error with --strict-platforms).
#[test]
fn platforms_that_lack_a_package_are_named() {
    setup();
    let d = tempfile::tempdir().unwrap();
    let repo = repo("platform-marker", d.path());
    let both = "linux/amd64,linux/arm64";
    let c = check_json(&repo, &["--platform", both]);
    let w = strs(&c["warnings"]).join("\n");
    assert!(w.contains("linux/arm64 gets no tabulate"), "{w}");
    let r = build_json(&repo, &["--platform", both]);
    let w = strs(&r["warnings"]).join("\n");
    assert!(
        w.contains("linux/arm64 has no tabulate (linux/amd64 has tabulate 0.9.0"),
        "{w}"
    );
    let name = tagged_name(&r["image"]);
    assert_eq!(
        index_architectures(&skopeo_raw(&name, "")),
        ["amd64", "arm64"]
    );
    let amd = import_model_manager(&name, "amd64", d.path());
    let arm = import_model_manager(&name, "arm64", d.path());
    assert!(amd.join("opt/flops/site-packages/tabulate").exists());
    assert!(!arm.join("opt/flops/site-packages/tabulate").exists());
    let e = build_run(&repo, &["--platform", both, "--strict-platforms"]);
    expect_error(&e, 3, "--strict-platforms: the platforms do not get the same packages: linux/arm64 has no tabulate");
}

/// Issue 20: torch 2.1.1 (built against NumPy 1.x) with numpy left open gets numpy<2 in its
/// lock, with the `numpy-abi` rule's reason, and the image really calls `torch.from_numpy`.
/// arm64 only: its torch wheel is CPU-only (~100 MB); amd64's pulls 2.5 GB of CUDA wheels.
#[test]
fn old_torch_gets_numpy_1_and_from_numpy_works() {
    setup();
    let d = tempfile::tempdir().unwrap();
    let repo = repo("torch-old-numpy", d.path());
    let c = check_json(&repo, &["--platform", "linux/arm64"]);
    let detail = rule_detail(&c, "numpy-abi");
    assert!(
        detail.contains("added numpy<2: torch 2.1.1 is built against NumPy 1.x"),
        "{c}"
    );
    let r = build_json(&repo, &["--platform", "linux/arm64"]);
    let numpy: Vec<String> = packages(&r)
        .into_iter()
        .filter(|p| p.starts_with("numpy=="))
        .collect();
    assert!(
        numpy.len() == 1 && numpy[0].starts_with("numpy==1."),
        "{numpy:?}"
    );
    assert!(rule_detail(&r, "numpy-abi").contains("torch 2.1.1"), "{r}");
    // The runtimes' floors leave FLOps' tqdm pin as it is (datasets < 2.20 with NumPy 1).
    assert!(packages(&r).contains(&"tqdm==4.65.0".to_string()), "{r}");
    assert!(
        !rules(&r).contains(&"runtime-pin-conflict".to_string()),
        "{r}"
    );
    let rootfs = unpack(
        &tagged_name(&r["image"]),
        &d.path().join("arm64"),
        "--override-arch arm64",
    );
    let (ok, out) = python_in_image(
        &rootfs,
        "arm64",
        "import numpy, torch\nt = torch.from_numpy(numpy.arange(6, dtype=numpy.float32))\nprint('sum', float(t.sum()), numpy.__version__)\nimport model_manager\nmodel_manager.ModelManager()",
    );
    assert!(ok && out.contains("sum 15.0 1."), "{out}");
}

/// Issue 20: a RAPIDS-style conda export (build strings, local versions, conda-only packages)
/// converts to valid requirements, and the one error names every conda-only package: those
/// the index does not know and those it knows only as another project (placeholders).
#[test]
fn conda_only_packages_of_an_export_are_named_at_once() {
    setup();
    let d = tempfile::tempdir().unwrap();
    let repo = repo("conda-rapids", d.path());
    let c = check_json(&repo, &["--offline"]);
    let to_pypi = rule_detail(&c, "conda-to-pypi");
    assert!(
        to_pypi.contains("conda ucx=1.8.0+gf6ec8d4=cuda10.2_20 taken from the package index under the same name as ucx==1.8.0.*"),
        "{to_pypi}"
    );
    // `check` (resolving, as a repo's CI runs it) and `build` fail alike, naming all of them.
    for (what, e) in [
        ("check", check_run(&repo, &[])),
        ("build", build_run(&repo, &[])),
    ] {
        expect_error(
            &e,
            3,
            "environment.yml: conda packages that the package index https://pypi.org/simple does not know: ",
        );
        let line = e.stderr.lines().find(|l| l.starts_with("error:")).unwrap();
        for name in [
            "cudf",
            "cuml",
            "dask-cudf",
            "rmm",
            "nvstrings",
            "ucx",
            "ucx-py",
        ] {
            assert!(
                line.contains(&format!(" {name},"))
                    || line.contains(&format!(" {name} ("))
                    || line.contains(&format!(" {name} ")),
                "{what}: {name} not named: {line}"
            );
        }
    }
}

/// Issue 20: a pin the code imports that collides with the FL runtime (tqdm 4.65.0 under
/// datasets' tqdm>=4.66.3, as in FLOps' PyTorch example) moves to the nearest version of the
/// same major that fits, with a warning naming old and new; `--strict-pins` fails instead.
#[test]
fn imported_pins_move_within_their_major_version() {
    setup();
    let d = tempfile::tempdir().unwrap();
    let repo = repo("imported-old-pin", d.path());
    let r = build_json(&repo, &[]);
    let detail = rule_detail(&r, "runtime-pin-conflict");
    assert!(
        detail.contains(
            "huggingface-hub==0.16.4 → huggingface-hub==0.19.4: imported by model_manager.py"
        ) && detail.contains("needs huggingface-hub>=0.19.4"),
        "{detail}"
    );
    assert!(
        packages(&r).contains(&"huggingface-hub==0.19.4".to_string()),
        "{r}"
    );
    import_model_manager(&tagged_name(&r["image"]), "amd64", d.path());
    let e = build_run(&repo, &["--strict-pins"]);
    expect_error(
        &e,
        3,
        "--strict-pins: not moved, because huggingface-hub==0.16.4 is imported by model_manager.py",
    );
}
