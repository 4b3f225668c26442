//! The dependency doctor: known fixes for ML repos' specs, each a named rule with a one-line
//! reason. Every rule that fires is reported (log, `check` output, observer messages, the
//! success payload). A ready `pylock.toml` is used exactly as written: no rule touches it.

use crate::error::bad_input;
use crate::spec::imports::{self, Imports};
use crate::spec::{requirement, CondaDep, DepSpec, SpecKind};
use anyhow::Result;
use pep508_rs::pep440_rs::{Operator, Version, VersionSpecifiers};
use pep508_rs::{Requirement, VersionOrUrl};
use serde::Serialize;
use std::collections::BTreeSet;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fired {
    pub rule: &'static str,
    pub detail: String,
    /// The package the rule changed, where there is one (later phases add what was chosen).
    #[serde(skip)]
    pub package: Option<String>,
}

impl Fired {
    fn new(rule: &'static str, detail: String) -> Self {
        Self {
            rule,
            detail,
            package: None,
        }
    }
}

/// Facts about the repo's code and the images being built that the rules depend on.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Top-level modules the repo's code imports, with the files importing each.
    pub imports: Imports,
    /// Module names the repo provides itself (its `.py` files and package directories).
    pub local_modules: BTreeSet<String>,
    /// Whether the code was scanned (false for an MLflow model, which has no repo code).
    pub code_scanned: bool,
    /// The requirements the builder adds for the images' runtime (requirements.txt text).
    pub runtime: String,
    /// The image serves an MLflow model (the trained-model plan) rather than training.
    pub serving: bool,
}

#[derive(Debug, Clone)]
pub struct Doctored {
    /// `major.minor` when the spec pins Python (patch dropped).
    pub python: Option<String>,
    /// A range such as `>=3.10` (pyproject/pylock requires-python), checked against the base.
    pub python_constraint: Option<String>,
    pub requirements: Vec<Requirement>,
    pub fired: Vec<Fired>,
    pub warnings: Vec<String>,
    /// Conda names taken from the index under the same name, to check against the index.
    pub unverified: Vec<String>,
    /// Imported modules no requirement is known to provide: (module, files). Warnings at
    /// `check`; a build looks again once the lock names every package.
    pub unprovided: Vec<(String, Vec<String>)>,
}

struct Ctx<'a> {
    spec: &'a DepSpec,
    python: Option<String>,
    python_constraint: Option<String>,
    env_name: Option<String>,
    conda: Vec<CondaDep>,
    reqs: Vec<Requirement>,
    facts: &'a Facts,
    warnings: Vec<String>,
    unverified: Vec<String>,
    unprovided: Vec<(String, Vec<String>)>,
}

impl Ctx<'_> {
    fn file(&self) -> &'static str {
        self.spec.file
    }
}

type RuleFn = fn(&mut Ctx) -> Result<Vec<Fired>>;

/// The rules, in the order they run.
const RULES: &[(&str, RuleFn)] = &[
    ("conda-env-name", conda_env_name),
    ("python-patch-pin", python_patch_pin),
    ("drop-pip-pin", drop_pip_pin),
    ("conda-system-packages", conda_system_packages),
    ("conda-to-pypi", conda_to_pypi),
    ("editable-self", editable_self),
    ("mlflow", mlflow),
    ("torch-gmpy2", torch_gmpy2),
    ("runtime-pin-conflict", runtime_pin_conflict),
    ("numpy-abi", numpy_abi),
    ("missing-import", missing_import),
    ("implicit-setuptools", implicit_setuptools),
];

/// The rule names and their one-line reasons, for documentation and `--help`.
pub const REASONS: &[(&str, &str)] = &[
    ("conda-env-name", "the image has no conda environments"),
    ("python-patch-pin", "the base image is chosen by major.minor; a patch pin never fails the build"),
    ("drop-pip-pin", "a pip pin is a build-tool pin, not a runtime dependency"),
    ("conda-system-packages", "toolchain and system libraries come with the base image or inside the wheels"),
    ("conda-to-pypi", "conda packages that are the same project on PyPI are installed from PyPI"),
    ("editable-self", "`-e .` is the repo itself, whose files are already in the code layer"),
    ("mlflow", "learners never log to MLflow (FL privacy) and it is large; mlflow-skinny has the API"),
    ("torch-gmpy2", "MLflow's export lists gmpy2 where the model needs torchvision (upstream FLOps fix)"),
    ("runtime-pin-conflict", "MLflow records every package it saw; an incidental pin must not break the FL runtime"),
    ("numpy-abi", "a wheel built against NumPy 1.x cannot run with NumPy 2, and old wheels do not say so (src/spec/abi.rs)"),
    ("missing-import", "MLflow logs what the model object needs, not what data loading imports"),
    ("implicit-setuptools", "pip and conda environments always carry setuptools (pkg_resources, the distutils shim); below 82, which removed pkg_resources"),
];

pub fn doctor(spec: &DepSpec, facts: &Facts) -> Result<Doctored> {
    let (python, python_constraint) = match &spec.python {
        Some(p) if p.chars().next().is_some_and(|c| c.is_ascii_digit()) => (Some(p.clone()), None),
        Some(p) if p.starts_with(['<', '>', '=', '~', '!', '^']) => (None, Some(p.clone())),
        Some(p) => {
            return Err(bad_input(format!(
                "{}: python version {p:?} is not a version or a range",
                spec.file
            )))
        }
        None => (None, None),
    };
    let mut ctx = Ctx {
        spec,
        python,
        python_constraint,
        env_name: spec.env_name.clone(),
        conda: spec.conda.clone(),
        reqs: spec.requirements.clone(),
        facts,
        warnings: Vec::new(),
        unverified: Vec::new(),
        unprovided: Vec::new(),
    };
    let mut fired = Vec::new();
    if spec.kind != SpecKind::PylockToml {
        for (rule, f) in RULES {
            for mut one in f(&mut ctx)? {
                one.rule = rule;
                tracing::info!("dependency doctor [{rule}]: {}", one.detail);
                fired.push(one);
            }
        }
    }
    Ok(Doctored {
        python: ctx.python,
        python_constraint: ctx.python_constraint,
        requirements: ctx.reqs,
        fired,
        warnings: ctx.warnings,
        unverified: ctx.unverified,
        unprovided: ctx.unprovided,
    })
}

fn pos(reqs: &[Requirement], name: &str) -> Option<usize> {
    reqs.iter()
        .position(|r| imports::normalize(r.name.as_ref()) == imports::normalize(name))
}

/// A rule's report line (the rule name is filled in by [`doctor`]).
fn fired(detail: String) -> Fired {
    Fired::new("", detail)
}

fn conda_env_name(c: &mut Ctx) -> Result<Vec<Fired>> {
    Ok(c.env_name
        .take()
        .map(|n| {
            fired(format!(
                "ignored conda env name {n:?}: the image has no conda environments"
            ))
        })
        .into_iter()
        .collect())
}

fn python_patch_pin(c: &mut Ctx) -> Result<Vec<Fired>> {
    let Some(p) = c.python.clone() else {
        return Ok(vec![]);
    };
    // A conda build string (`3.11.5=hab00c5b_0_cpython`) says nothing about the version.
    let version = p.split('=').next().unwrap_or(&p);
    let parts: Vec<&str> = version.trim_end_matches(".*").split('.').collect();
    if parts.len() < 2
        || !parts[..2]
            .iter()
            .all(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad_input(format!(
            "{}: python version {p:?} is not major.minor[.patch]",
            c.file()
        )));
    }
    let mm = format!("{}.{}", parts[0], parts[1]);
    c.python = Some(mm.clone());
    Ok(if parts.len() > 2 || version != p {
        vec![fired(format!("python={p} relaxed to {mm}: the base image is chosen by major.minor, a patch pin never fails the build"))]
    } else {
        vec![]
    })
}

fn drop_pip_pin(c: &mut Ctx) -> Result<Vec<Fired>> {
    let mut out = Vec::new();
    c.conda.retain(|d| {
        let drop = d.name == "pip";
        if drop {
            out.push(fired(format!(
                "dropped conda {}{}: a build-tool pin, not a runtime dependency",
                d.name,
                d.version.as_deref().unwrap_or("")
            )));
        }
        !drop
    });
    c.reqs.retain(|r| {
        let drop = r.name.as_ref() == "pip";
        if drop {
            out.push(fired(format!(
                "dropped {r}: a build-tool pin, not a runtime dependency"
            )));
        }
        !drop
    });
    Ok(out)
}

/// Conda packages that are toolchain, system libraries or CUDA runtimes: the base image or
/// the wheels themselves (manylinux wheels vendor their libraries) provide them.
const SYSTEM_PACKAGES: &[&str] = &[
    "blas",
    "brotli",
    "bzip2",
    "c-ares",
    "ca-certificates",
    "cudatoolkit",
    "cudnn",
    "curl",
    "expat",
    "ffmpeg",
    "fontconfig",
    "freetype",
    "gettext",
    "giflib",
    "icu",
    "intel-openmp",
    "jpeg",
    "krb5",
    "lcms2",
    "ld_impl_linux-64",
    "lerc",
    "libblas",
    "libbrotlicommon",
    "libbrotlidec",
    "libbrotlienc",
    "libcblas",
    "libcurl",
    "libdeflate",
    "libedit",
    "libev",
    "libexpat",
    "libffi",
    "libgcc",
    "libgcc-ng",
    "libgfortran",
    "libgfortran-ng",
    "libgfortran5",
    "libgomp",
    "libhwloc",
    "libiconv",
    "libjpeg-turbo",
    "liblapack",
    "libnghttp2",
    "libnsl",
    "libopenblas",
    "libpng",
    "libprotobuf",
    "libsodium",
    "libsqlite",
    "libssh2",
    "libstdcxx",
    "libstdcxx-ng",
    "libtiff",
    "libuuid",
    "libuv",
    "libwebp",
    "libwebp-base",
    "libxcb",
    "libxcrypt",
    "libxml2",
    "libzlib",
    "llvm-openmp",
    "lz4-c",
    "magma",
    "mkl",
    "mkl-service",
    "mkl_fft",
    "mkl_random",
    "nccl",
    "ncurses",
    "openblas",
    "openjpeg",
    "openssl",
    "pthread-stubs",
    "python_abi",
    "pytorch-cuda",
    "pytorch-mutex",
    "readline",
    "snappy",
    "sqlite",
    "tbb",
    "tk",
    "tzdata",
    "xorg-libxau",
    "xorg-libxdmcp",
    "xz",
    "yaml",
    "zeromq",
    "zlib",
    "zstd",
];

fn is_system_package(name: &str) -> bool {
    name.starts_with('_')
        || name.starts_with("cuda-")
        || name.starts_with("libcu")
        || name.starts_with("libnv")
        || name.starts_with("libnpp")
        || SYSTEM_PACKAGES.contains(&name)
}

fn conda_system_packages(c: &mut Ctx) -> Result<Vec<Fired>> {
    let mut dropped = Vec::new();
    c.conda.retain(|d| {
        let system = is_system_package(&d.name);
        if system {
            dropped.push(d.name.clone());
        }
        !system
    });
    Ok(if dropped.is_empty() {
        vec![]
    } else {
        vec![fired(format!(
            "dropped conda system packages {}: toolchain and system libraries come with the base image or inside the wheels",
            dropped.join(", ")
        ))]
    })
}

/// Conda packages whose PyPI project has another name.
const CONDA_TO_PYPI: &[(&str, &str)] = &[
    ("matplotlib-base", "matplotlib"),
    ("msgpack-python", "msgpack"),
    ("opencv", "opencv-python-headless"),
    ("py-opencv", "opencv-python-headless"),
    ("py-xgboost", "xgboost"),
    ("pytables", "tables"),
    ("pytorch", "torch"),
    ("pytorch-cpu", "torch"),
    ("pytorch-gpu", "torch"),
    ("tensorflow-cpu", "tensorflow"),
    ("tensorflow-gpu", "tensorflow"),
];
/// Conda names known to be the same project on PyPI (others are checked against the index).
const SAME_ON_PYPI: &[&str] = &[
    "catboost",
    "certifi",
    "click",
    "cloudpickle",
    "datasets",
    "flwr",
    "gmpy2",
    "grpcio",
    "h5py",
    "huggingface_hub",
    "huggingface-hub",
    "imbalanced-learn",
    "jinja2",
    "joblib",
    "keras",
    "lightgbm",
    "lightning",
    "matplotlib",
    "mlflow",
    "mlflow-skinny",
    "networkx",
    "numba",
    "numpy",
    "onnx",
    "onnxruntime",
    "opacus",
    "packaging",
    "pandas",
    "pillow",
    "plotly",
    "protobuf",
    "psutil",
    "pyarrow",
    "pydantic",
    "pytorch-lightning",
    "pyyaml",
    "requests",
    "safetensors",
    "scikit-learn",
    "scipy",
    "seaborn",
    "setuptools",
    "six",
    "statsmodels",
    "sympy",
    "tabulate",
    "tensorflow",
    "tokenizers",
    "torchaudio",
    "torchvision",
    "tqdm",
    "transformers",
    "typing-extensions",
    "typing_extensions",
    "wheel",
    "xgboost",
];

/// Conda version syntax → PEP 440: `=1.26` is `1.26.*`, a build string after a second `=` is
/// dropped, a local label (`1.8.0+gf6ec8d4`, a git build of the packager's) is dropped too
/// (indexes serve public versions only), `1.2|1.3` (an OR) has no PEP 440 form.
fn conda_version(v: &str) -> String {
    let v = v.trim();
    // The local label runs to the build string (`=`) or the end.
    let public;
    let v = match v.split_once('+') {
        Some((head, tail)) => {
            public = format!("{head}{}", tail.find('=').map_or("", |i| &tail[i..]));
            public.as_str()
        }
        None => v,
    };
    if let Some(rest) = v.strip_prefix("==") {
        return format!("=={}", rest.split('=').next().unwrap_or(rest));
    }
    let fuzzy = |ver: &str| {
        if ver.ends_with('*') {
            format!("=={ver}")
        } else {
            format!("=={ver}.*")
        }
    };
    if let Some(rest) = v.strip_prefix('=') {
        return fuzzy(rest.split('=').next().unwrap_or(rest));
    }
    if v.starts_with(['>', '<', '!', '~']) {
        return v.to_string();
    }
    fuzzy(v.split([' ', '=']).next().unwrap_or(v))
}

fn conda_to_pypi(c: &mut Ctx) -> Result<Vec<Fired>> {
    let mut out = Vec::new();
    let mut invalid = Vec::new();
    for d in std::mem::take(&mut c.conda) {
        let renamed = CONDA_TO_PYPI
            .iter()
            .find(|(k, _)| *k == d.name)
            .map(|(_, v)| *v);
        let known = renamed.is_some() || SAME_ON_PYPI.contains(&d.name.as_str());
        let pypi = renamed.unwrap_or(&d.name);
        let written = format!("{}{}", d.name, d.version.as_deref().unwrap_or(""));
        let req = match requirement(
            &format!(
                "{pypi}{}",
                d.version.as_deref().map(conda_version).unwrap_or_default()
            ),
            c.file(),
        ) {
            Ok(r) => r,
            Err(e) => {
                invalid.push(format!("conda {written}: {e}"));
                continue;
            }
        };
        if let Some(i) = pos(&c.reqs, req.name.as_ref()) {
            out.push(fired(format!(
                "conda {written} dropped: the pip section already has {}",
                c.reqs[i]
            )));
            continue;
        }
        if known {
            out.push(fired(format!(
                "conda {written} installed from PyPI as {req}"
            )));
        } else {
            out.push(fired(format!("conda {written} taken from the package index under the same name as {req} (checked against the index when resolving)")));
            c.unverified.push(req.to_string());
        }
        c.reqs.push(req);
    }
    if !invalid.is_empty() {
        let head = format!(
            "{}: {} conda {} no PyPI form",
            c.file(),
            invalid.len(),
            if invalid.len() == 1 {
                "entry has"
            } else {
                "entries have"
            }
        );
        return Err(bad_input(crate::error::listed(&head, &invalid)));
    }
    Ok(out)
}

fn editable_self(c: &mut Ctx) -> Result<Vec<Fired>> {
    let mut out = Vec::new();
    for e in &c.spec.editables {
        c.warnings.push(format!(
            "{e}: dropped; the repo's files are already in the image's working directory"
        ));
        out.push(fired(format!(
            "{e} dropped: the repo itself, whose files are already in the code layer"
        )));
    }
    Ok(out)
}

fn imported(c: &Ctx, dist: &str) -> Option<Vec<String>> {
    c.facts
        .imports
        .get(&module_of(dist))
        .map(|files| files.iter().cloned().collect())
}

/// The import name of a distribution (`scikit-learn` → `sklearn`, `protobuf` →
/// `google.protobuf`, else the name with `_`).
fn module_of(dist: &str) -> String {
    let norm = imports::normalize(dist);
    imports::IMPORT_TO_DIST
        .iter()
        .find(|(_, d)| imports::normalize(d) == norm)
        .map(|(m, _)| m.to_string())
        .unwrap_or_else(|| norm.replace('-', "_"))
}

fn mlflow(c: &mut Ctx) -> Result<Vec<Fired>> {
    let Some(i) = pos(&c.reqs, "mlflow") else {
        return Ok(vec![]);
    };
    let old = c.reqs[i].to_string();
    if c.facts.serving {
        let skinny = old.replacen("mlflow", "mlflow-skinny", 1);
        c.reqs[i] = requirement(&skinny, c.file())?;
        return Ok(vec![fired(format!("{old} replaced by {}: the scoring server needs only that and its web stack (Flask + gunicorn for MLflow 2, FastAPI + uvicorn for 3), which the image adds, not the full MLflow package", c.reqs[i]))]);
    }
    if c.facts.imports.contains_key("mlflow") || !c.facts.code_scanned {
        let skinny = old.replacen("mlflow", "mlflow-skinny", 1);
        c.reqs[i] = requirement(&skinny, c.file())?;
        Ok(vec![fired(format!("{old} replaced by {}: the code imports mlflow, and the skinny package has that API without the server and UI", c.reqs[i]))])
    } else {
        c.reqs.remove(i);
        Ok(vec![fired(format!("dropped {old}: learners never log to MLflow (FL privacy) and no code imports it; it is large"))])
    }
}

fn torch_gmpy2(c: &mut Ctx) -> Result<Vec<Fired>> {
    match (
        pos(&c.reqs, "torch"),
        pos(&c.reqs, "torchvision"),
        pos(&c.reqs, "gmpy2"),
    ) {
        (Some(_), None, Some(g)) => {
            let old = c.reqs[g].to_string();
            c.reqs[g] = requirement("torchvision", c.file())?;
            Ok(vec![fired(format!("replaced {old} with torchvision: MLflow's export lists gmpy2 where the model needs torchvision (upstream FLOps fix)"))])
        }
        _ => Ok(vec![]),
    }
}

/// Constraints every allowed version of the FL runtime puts on packages it does not list
/// directly (flwr 1.8+ needs protobuf 4 and grpcio 1.48+; flops-utils pins paho-mqtt 2.0).
/// Checked statically; anything else surfaces when resolving, where the same rule applies.
const RUNTIME_FLOORS: &[(&str, &str, &str)] = &[
    ("protobuf", ">=4.21.6", "flwr"),
    ("grpcio", ">=1.48", "flwr"),
    ("numpy", ">=1.21", "flwr"),
    ("cryptography", ">=42", "flwr"),
    ("paho-mqtt", ">=2.0,<3", "flops-utils"),
];

/// The runtime's constraint on `name`: (specifiers, who asks), from its requirements text
/// or, for the FL images, [`RUNTIME_FLOORS`].
fn runtime_constraint(facts: &Facts, name: &str) -> Option<(VersionSpecifiers, String)> {
    let norm = imports::normalize(name);
    let who = if facts.serving {
        "the scoring server"
    } else {
        "the FL runtime"
    };
    for line in facts
        .runtime
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
    {
        let Ok(r) = line.parse::<Requirement>() else {
            continue;
        };
        if imports::normalize(r.name.as_ref()) == norm {
            if let Some(VersionOrUrl::VersionSpecifier(s)) = r.version_or_url {
                return Some((s, who.into()));
            }
        }
    }
    if facts.serving {
        return None;
    }
    RUNTIME_FLOORS
        .iter()
        .find(|(n, _, _)| imports::normalize(n) == norm)
        .and_then(|(_, spec, by)| {
            Some((
                VersionSpecifiers::from_str(spec).ok()?,
                format!("{who} ({by})"),
            ))
        })
}

/// The version of an exact pin (`==1.2.3`), if the requirement is one.
fn exact_pin(r: &Requirement) -> Option<Version> {
    match &r.version_or_url {
        Some(VersionOrUrl::VersionSpecifier(s)) if s.len() == 1 => {
            let s = s.iter().next()?;
            matches!(s.operator(), Operator::Equal | Operator::ExactEqual)
                .then(|| s.version().clone())
        }
        _ => None,
    }
}

/// The version of a pin to one release, exact or conda's fuzzy form (`==2.1.1`, `==2.1.1.*`).
fn pinned_release(r: &Requirement) -> Option<Version> {
    match &r.version_or_url {
        Some(VersionOrUrl::VersionSpecifier(s)) if s.len() == 1 => {
            let s = s.iter().next()?;
            matches!(
                s.operator(),
                Operator::Equal | Operator::ExactEqual | Operator::EqualStar
            )
            .then(|| s.version().clone())
        }
        _ => None,
    }
}

/// The requirement without its version (extras and markers kept).
pub fn unpinned(r: &Requirement) -> Requirement {
    let mut r = r.clone();
    r.version_or_url = None;
    r
}

fn runtime_pin_conflict(c: &mut Ctx) -> Result<Vec<Fired>> {
    let mut out = Vec::new();
    let mut hard = Vec::new();
    for i in 0..c.reqs.len() {
        let r = &c.reqs[i];
        let Some(v) = exact_pin(r) else { continue };
        let Some((specs, who)) = runtime_constraint(c.facts, r.name.as_ref()) else {
            continue;
        };
        if specs.contains(&v) {
            continue;
        }
        let name = r.name.to_string();
        let runtime_side = format!("{who} needs {name}{specs}");
        // flwr is the FL protocol itself: a pin is deliberate, so never silently replaced.
        if name == "flwr" {
            hard.push(format!(
                "{r} ({}) is not a version the FL runtime is tested with ({name}{specs}); pin one of those or drop the pin",
                c.file()
            ));
            continue;
        }
        if let Some(files) = imported(c, &name) {
            hard.push(format!(
                "{r} ({}; imported by {}) conflicts with {runtime_side}",
                c.file(),
                files.join(", ")
            ));
            continue;
        }
        let detail = format!("{r} relaxed: no code imports {name} and {runtime_side}; the resolver picks a version that fits both");
        c.reqs[i] = unpinned(&c.reqs[i]);
        out.push(Fired {
            rule: "",
            detail,
            package: Some(name),
        });
    }
    if !hard.is_empty() {
        let head = format!(
            "runtime-pin-conflict: {} the code imports {} an incompatible version with the FL runtime",
            if hard.len() == 1 { "a package" } else { "packages" },
            if hard.len() == 1 { "is pinned to" } else { "are pinned to" },
        );
        return Err(bad_input(crate::error::listed(&head, &hard)));
    }
    Ok(out)
}

/// Exact pins of compiled packages built against NumPy 1.x, with NumPy left open to 2: adds
/// `numpy<2`. (The resolver's choices are checked the same way once the lock exists.)
fn numpy_abi(c: &mut Ctx) -> Result<Vec<Fired>> {
    let two = Version::from_str("2.0.0").expect("a version");
    let numpy_open = c.reqs.iter().all(|r| {
        imports::normalize(r.name.as_ref()) != "numpy"
            || match &r.version_or_url {
                Some(VersionOrUrl::VersionSpecifier(s)) => s.contains(&two),
                _ => true,
            }
    });
    if !numpy_open {
        return Ok(vec![]);
    }
    let why: Vec<String> = c
        .reqs
        .iter()
        .filter_map(|r| {
            crate::spec::abi::needs_numpy1(r.name.as_ref(), &pinned_release(r)?.to_string())
        })
        .collect();
    if why.is_empty() {
        return Ok(vec![]);
    }
    c.reqs.push(requirement("numpy<2", c.file())?);
    Ok(vec![Fired {
        rule: "",
        detail: format!("added numpy<2: {}", why.join("; ")),
        package: Some("numpy".into()),
    }])
}

/// Distributions the FL runtime always brings (its requirements and their dependencies):
/// their modules are never reported missing.
const RUNTIME_PROVIDES: &[&str] = &[
    "aiohttp",
    "annotated-types",
    "certifi",
    "charset-normalizer",
    "click",
    "cryptography",
    "datasets",
    "dill",
    "filelock",
    "flops-utils",
    "flwr",
    "fsspec",
    "grpcio",
    "huggingface-hub",
    "idna",
    "iterators",
    "multiprocess",
    "numpy",
    "packaging",
    "paho-mqtt",
    "pandas",
    "pillow",
    "protobuf",
    "pyarrow",
    "pycryptodome",
    "pydantic",
    "python-dateutil",
    "pytz",
    "pyyaml",
    "requests",
    "rich",
    "setuptools",
    "six",
    "tomli",
    "tqdm",
    "typer",
    "typing-extensions",
    "urllib3",
    "xxhash",
];

/// Normalised names of what the spec (as doctored so far) and the runtime provide.
fn provided(c: &Ctx) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = c
        .reqs
        .iter()
        .map(|r| imports::normalize(r.name.as_ref()))
        .collect();
    names.extend(RUNTIME_PROVIDES.iter().map(|n| imports::normalize(n)));
    for line in c.facts.runtime.lines() {
        if let Ok(r) = line
            .split('#')
            .next()
            .unwrap_or("")
            .trim()
            .parse::<Requirement>()
        {
            names.insert(imports::normalize(r.name.as_ref()));
        }
    }
    names
}

/// Modules of the FL runtimes' own files (placed beside the repo's code).
const RUNTIME_MODULES: &[&str] = &[
    "data_loading",
    "flops_input_schema",
    "flops_signature",
    "main",
    "model_manager",
];

fn missing_import(c: &mut Ctx) -> Result<Vec<Fired>> {
    if !c.facts.code_scanned {
        return Ok(vec![]);
    }
    let have = provided(c);
    let mut out = Vec::new();
    for (module, files) in &c.facts.imports {
        let top = module.split('.').next().unwrap_or(module);
        if imports::is_stdlib(top)
            || c.facts.local_modules.contains(top)
            || RUNTIME_MODULES.contains(&top)
            || imports::provided_by(module, &have)
        {
            continue;
        }
        let files: Vec<String> = files.iter().cloned().collect();
        match imports::known_distribution(module) {
            Some(dist) => {
                c.reqs.push(requirement(dist, c.file())?);
                out.push(Fired {
                    rule: "",
                    detail: format!(
                        "added {dist}: {} imports {module}, which no dependency in {} provides",
                        files.join(", "),
                        c.file()
                    ),
                    package: Some(dist.to_string()),
                });
            }
            None => c.unprovided.push((module.clone(), files)),
        }
    }
    Ok(out)
}

/// The warning for an imported module nothing provides.
pub fn unprovided_warning(module: &str, files: &[String], spec_file: &str) -> String {
    format!(
        "{} imports {module}, which no dependency provides and the builder cannot map to a package: add the package that provides it to {spec_file}",
        files.join(", ")
    )
}

fn implicit_setuptools(c: &mut Ctx) -> Result<Vec<Fired>> {
    if pos(&c.reqs, "setuptools").is_some() {
        return Ok(vec![]);
    }
    // 82 removed pkg_resources, which MLflow < 2.16 and much research code import.
    c.reqs.push(requirement("setuptools<82", c.file())?);
    Ok(vec![fired("added setuptools<82: pip and conda environments always carry setuptools (pkg_resources, removed in 82, and the distutils shim), and code written in them relies on it".into())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_conda;

    const RUNTIME: &str = "flwr>=1.8.0,<1.12\npyarrow>=15,<21\n";

    fn facts(imports: &[(&str, &str)]) -> Facts {
        let mut f = Facts {
            code_scanned: true,
            runtime: RUNTIME.into(),
            ..Default::default()
        };
        for (m, file) in imports {
            f.imports
                .entry(m.to_string())
                .or_default()
                .insert(file.to_string());
        }
        f
    }

    fn run(yaml: &str, imports: &[(&str, &str)]) -> Result<Doctored> {
        doctor(&parse_conda(yaml)?, &facts(imports))
    }
    fn names(d: &Doctored) -> Vec<String> {
        d.requirements
            .iter()
            .map(|r| r.to_string())
            .filter(|r| !r.starts_with("setuptools"))
            .collect()
    }
    fn rules(d: &Doctored) -> Vec<&str> {
        d.fired
            .iter()
            .map(|f| f.rule)
            .filter(|r| *r != "implicit-setuptools")
            .collect()
    }

    #[test]
    fn numpy_abi_bounds_numpy_for_old_compiled_pins_only() {
        let d = run("dependencies:\n- pip:\n  - torch==2.1.1\n", &[]).unwrap();
        assert_eq!(names(&d), ["torch==2.1.1", "numpy<2"]);
        assert!(
            d.fired[0]
                .detail
                .starts_with("added numpy<2: torch 2.1.1 is built against NumPy 1.x"),
            "{}",
            d.fired[0].detail
        );
        // conda's form of the same pin (`pytorch=2.1.1`).
        let d = run("dependencies:\n- pytorch=2.1.1\n", &[]).unwrap();
        assert!(rules(&d).contains(&"numpy-abi"), "{:?}", rules(&d));
        // NumPy already bounded, or a torch built against NumPy 2: nothing to do.
        for y in [
            "dependencies:\n- pip:\n  - torch==2.1.1\n  - numpy==1.26.4\n",
            "dependencies:\n- pip:\n  - torch==2.3.1\n",
        ] {
            assert!(rules(&run(y, &[]).unwrap()).is_empty(), "{y}");
        }
    }

    #[test]
    fn every_rule_has_a_reason() {
        let documented: Vec<&str> = REASONS.iter().map(|(r, _)| *r).collect();
        let run: Vec<&str> = RULES.iter().map(|(r, _)| *r).collect();
        assert_eq!(documented, run);
    }

    #[test]
    fn conda_env_name_is_ignored() {
        let d = run("name: mlflow-env\ndependencies:\n- python=3.11\n", &[]).unwrap();
        assert_eq!(rules(&d), ["conda-env-name"]);
    }

    #[test]
    fn python_patch_pin_relaxed() {
        let d = run("dependencies:\n- python=3.10.14\n", &[]).unwrap();
        assert_eq!(d.python.as_deref(), Some("3.10"));
        assert_eq!(rules(&d), ["python-patch-pin"]);
        assert!(run("dependencies:\n- python=three\n", &[]).is_err());
    }

    #[test]
    fn pip_pins_dropped_from_conda_and_pip_sections() {
        let d = run(
            "dependencies:\n- pip<=23.0\n- pip:\n  - pip==23.0\n  - numpy==1.26.4\n",
            &[],
        )
        .unwrap();
        assert_eq!(names(&d), ["numpy==1.26.4"]);
        assert_eq!(rules(&d), ["drop-pip-pin", "drop-pip-pin"]);
    }

    #[test]
    fn mlflow_dropped_unless_imported() {
        let y = "dependencies:\n- pip:\n  - mlflow==2.11.1\n  - scikit-learn==1.4.2\n";
        let d = run(y, &[]).unwrap();
        assert_eq!(names(&d), ["scikit-learn==1.4.2"]);
        let d = run(y, &[("mlflow", "model_manager.py")]).unwrap();
        assert_eq!(names(&d), ["mlflow-skinny==2.11.1", "scikit-learn==1.4.2"]);
        assert_eq!(rules(&d), ["mlflow"]);
    }

    #[test]
    fn serving_gets_the_scoring_server_packages() {
        let spec = parse_conda("dependencies:\n- pip:\n  - mlflow==2.14.3\n").unwrap();
        let f = Facts {
            serving: true,
            ..Default::default()
        };
        let d = doctor(&spec, &f).unwrap();
        assert_eq!(names(&d), ["mlflow-skinny==2.14.3"]);
    }

    #[test]
    fn torch_without_torchvision_swaps_gmpy2() {
        let d = run(
            "dependencies:\n- pip:\n  - torch==2.2.0\n  - gmpy2==2.1.5\n",
            &[],
        )
        .unwrap();
        // torch 2.2 is built against NumPy 1.x: numpy-abi bounds NumPy too.
        assert_eq!(names(&d), ["torch==2.2.0", "torchvision", "numpy<2"]);
        let d = run(
            "dependencies:\n- pip:\n  - torch==2.2.0\n  - torchvision\n  - gmpy2==2.1.5\n",
            &[],
        )
        .unwrap();
        assert_eq!(rules(&d), ["numpy-abi"]);
    }

    #[test]
    fn conda_packages_mapped_dropped_or_taken_from_the_index() {
        let d = run("dependencies:\n- numpy=1.26\n- pytorch==2.1.0=py3.11_cpu\n- scipy>=1.11\n- _libgcc_mutex=0.1=conda_forge\n- libgcc-ng\n- cudatoolkit=11.8\n- openssl\n- dask=2024.1.0\n- fsspec\n- pip:\n  - scipy==1.13.1\n", &[]).unwrap();
        assert_eq!(
            names(&d),
            [
                "scipy==1.13.1",
                "numpy==1.26.*",
                "torch==2.1.0",
                "dask==2024.1.0.*",
                "fsspec"
            ]
        );
        assert_eq!(
            rules(&d),
            [
                "conda-system-packages",
                "conda-to-pypi",
                "conda-to-pypi",
                "conda-to-pypi",
                "conda-to-pypi",
                "conda-to-pypi"
            ]
        );
        assert_eq!(
            d.fired[0].detail,
            "dropped conda system packages _libgcc_mutex, libgcc-ng, cudatoolkit, openssl: toolchain and system libraries come with the base image or inside the wheels"
        );
        assert_eq!(d.unverified, ["dask==2024.1.0.*", "fsspec"]);
    }

    #[test]
    fn conda_local_versions_and_build_strings() {
        assert_eq!(conda_version("1.8.0+gf6ec8d4=cuda10.2_20"), "==1.8.0.*");
        assert_eq!(conda_version("=0.14.0+g1a2b3c4"), "==0.14.0.*");
        assert_eq!(conda_version("==1.2.3+abc=py37"), "==1.2.3");
        assert_eq!(conda_version("1.26.4=py311h64a7726_0"), "==1.26.4.*");
    }

    #[test]
    fn incidental_pins_give_way_to_the_runtime() {
        let y = "dependencies:\n- pip:\n  - protobuf==3.20.3\n  - tensorflow==2.12.0\n  - pyarrow==12.0.1\n";
        let d = run(y, &[("tensorflow", "model_manager.py")]).unwrap();
        assert_eq!(
            names(&d),
            ["protobuf", "tensorflow==2.12.0", "pyarrow", "numpy<2"]
        );
        assert_eq!(
            rules(&d),
            ["runtime-pin-conflict", "runtime-pin-conflict", "numpy-abi"]
        );
        assert!(d.fired[0].detail.starts_with("protobuf==3.20.3 relaxed: no code imports protobuf and the FL runtime (flwr) needs protobuf>=4.21.6"), "{}", d.fired[0].detail);
        assert_eq!(d.fired[1].package.as_deref(), Some("pyarrow"));
        // The same pins on packages the code imports fail, naming both sides and every package.
        let e = run(
            y,
            &[
                ("google.protobuf", "model_manager.py"),
                ("pyarrow", "utils.py"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("protobuf==3.20.3 (conda.yaml; imported by model_manager.py) conflicts with the FL runtime (flwr) needs protobuf>=4.21.6"), "{e}");
        assert!(e.contains("pyarrow==12.0.1 (conda.yaml; imported by utils.py) conflicts with the FL runtime needs pyarrow>=15, <21"), "{e}");
        // A flwr pin outside what the runtime is tested with names both versions.
        let e = run("dependencies:\n- pip:\n  - flwr==1.5.0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("flwr==1.5.0") && e.contains("flwr>=1.8.0, <1.12"),
            "{e}"
        );
        let d = run("dependencies:\n- pip:\n  - flwr==1.10.0\n", &[]).unwrap();
        assert_eq!(names(&d), ["flwr==1.10.0"]);
    }

    #[test]
    fn missing_imports_added_or_reported() {
        let mut f = facts(&[
            ("sklearn", "model_manager.py"),
            ("tabulate", "utils.py"),
            ("mystery_module", "model_manager.py"),
            ("numpy", "model_manager.py"),
            ("os", "model_manager.py"),
            ("helpers", "model_manager.py"),
            ("data_loading", "model_manager.py"),
        ]);
        f.local_modules.insert("helpers".into());
        let d = doctor(
            &parse_conda("dependencies:\n- pip:\n  - scikit-learn==1.4.2\n").unwrap(),
            &f,
        )
        .unwrap();
        assert_eq!(names(&d), ["scikit-learn==1.4.2", "tabulate"]);
        assert_eq!(rules(&d), ["missing-import"]);
        assert_eq!(
            d.unprovided,
            [(
                "mystery_module".to_string(),
                vec!["model_manager.py".to_string()]
            )]
        );
    }

    #[test]
    fn setuptools_is_implicit_unless_listed() {
        let d = run("dependencies:\n- pip:\n  - numpy==1.26.4\n", &[]).unwrap();
        assert!(d
            .requirements
            .iter()
            .any(|r| r.to_string() == "setuptools<82"));
        assert!(d.fired.iter().any(|f| f.rule == "implicit-setuptools"));
        let d = run("dependencies:\n- pip:\n  - setuptools==69.5.1\n", &[]).unwrap();
        assert!(!d.fired.iter().any(|f| f.rule == "implicit-setuptools"));
    }
}
