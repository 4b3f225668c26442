//! The dependency doctor: known fixes for ML repos' specs, each a named rule with a one-line
//! reason. Every rule that fires is reported (log, `check` output, observer messages).

use crate::deps::spec::{requirement, CondaDep, DepSpec, SpecKind};
use crate::error::bad_input;
use anyhow::Result;
use pep508_rs::Requirement;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fired {
    pub rule: &'static str,
    pub detail: String,
}

/// Facts about the repo's code the rules depend on.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub imports_mlflow: bool,
}

#[derive(Debug, Clone)]
pub struct Doctored {
    /// `major.minor` when the spec pins Python (patch dropped).
    pub python: Option<String>,
    /// A range such as `>=3.10` (pyproject/pylock requires-python), checked against the base.
    pub python_constraint: Option<String>,
    pub requirements: Vec<Requirement>,
    pub fired: Vec<Fired>,
}

struct Ctx {
    python: Option<String>,
    python_constraint: Option<String>,
    env_name: Option<String>,
    conda: Vec<CondaDep>,
    reqs: Vec<Requirement>,
    facts: Facts,
    file: &'static str,
}

type RuleFn = fn(&mut Ctx) -> Result<Vec<String>>;

/// The rules, in the order they run.
const RULES: &[(&str, RuleFn)] = &[
    ("conda-env-name", conda_env_name),
    ("python-patch-pin", python_patch_pin),
    ("drop-pip-pin", drop_pip_pin),
    ("conda-to-pypi", conda_to_pypi),
    ("mlflow", mlflow),
    ("torch-gmpy2", torch_gmpy2),
];

pub fn doctor(spec: &DepSpec, facts: &Facts) -> Result<Doctored> {
    let (python, python_constraint) = match &spec.python {
        Some(p) if p.chars().next().is_some_and(|c| c.is_ascii_digit()) => (Some(p.clone()), None),
        Some(p) if p.starts_with(['<', '>', '=', '~', '!']) => (None, Some(p.clone())),
        Some(p) => {
            return Err(bad_input(format!(
                "{}: python version {p:?} is not a version or a range",
                spec.kind.file_name()
            )))
        }
        None => (None, None),
    };
    let mut ctx = Ctx {
        python,
        python_constraint,
        env_name: spec.env_name.clone(),
        conda: spec.conda.clone(),
        reqs: spec.requirements.clone(),
        facts: facts.clone(),
        file: spec.kind.file_name(),
    };
    let mut fired = Vec::new();
    // A ready lock is used exactly as written: no rule may change it.
    if spec.kind != SpecKind::PylockToml {
        for (rule, f) in RULES {
            for detail in f(&mut ctx)? {
                tracing::info!("dependency doctor [{rule}]: {detail}");
                fired.push(Fired { rule, detail });
            }
        }
    }
    Ok(Doctored {
        python: ctx.python,
        python_constraint: ctx.python_constraint,
        requirements: ctx.reqs,
        fired,
    })
}

fn pos(reqs: &[Requirement], name: &str) -> Option<usize> {
    reqs.iter().position(|r| r.name.as_ref() == name)
}

fn conda_env_name(c: &mut Ctx) -> Result<Vec<String>> {
    Ok(c.env_name
        .take()
        .map(|n| format!("ignored conda env name {n:?}: the image has no conda environments"))
        .into_iter()
        .collect())
}

fn python_patch_pin(c: &mut Ctx) -> Result<Vec<String>> {
    let Some(p) = c.python.clone() else {
        return Ok(vec![]);
    };
    let parts: Vec<&str> = p.trim_end_matches(".*").split('.').collect();
    if parts.len() < 2
        || !parts[..2]
            .iter()
            .all(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad_input(format!(
            "{}: python version {p:?} is not major.minor[.patch]",
            c.file
        )));
    }
    let mm = format!("{}.{}", parts[0], parts[1]);
    c.python = Some(mm.clone());
    Ok(if parts.len() > 2 {
        vec![format!("python={p} relaxed to {mm}: the base image is chosen by major.minor, a patch pin never fails the build")]
    } else {
        vec![]
    })
}

fn drop_pip_pin(c: &mut Ctx) -> Result<Vec<String>> {
    let mut out = Vec::new();
    c.conda.retain(|d| {
        let drop = d.name == "pip";
        if drop {
            out.push(format!(
                "dropped conda {}{}: a build-tool pin, not a runtime dependency",
                d.name,
                d.version.as_deref().unwrap_or("")
            ));
        }
        !drop
    });
    c.reqs.retain(|r| {
        let drop = r.name.as_ref() == "pip";
        if drop {
            out.push(format!(
                "dropped {r}: a build-tool pin, not a runtime dependency"
            ));
        }
        !drop
    });
    Ok(out)
}

/// Conda packages that are the same project on PyPI, with the PyPI name where it differs.
const CONDA_TO_PYPI: &[(&str, &str)] = &[
    ("pytorch", "torch"),
    ("pytorch-cpu", "torch"),
    ("py-xgboost", "xgboost"),
    ("matplotlib-base", "matplotlib"),
    ("msgpack-python", "msgpack"),
    ("pytables", "tables"),
    ("opencv", "opencv-python"),
    ("tensorflow-cpu", "tensorflow"),
];
const SAME_ON_PYPI: &[&str] = &[
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "matplotlib",
    "seaborn",
    "pillow",
    "requests",
    "pyyaml",
    "tqdm",
    "cloudpickle",
    "h5py",
    "protobuf",
    "joblib",
    "psutil",
    "six",
    "packaging",
    "click",
    "typing-extensions",
    "typing_extensions",
    "pyarrow",
    "xgboost",
    "lightgbm",
    "catboost",
    "statsmodels",
    "sympy",
    "networkx",
    "tensorflow",
    "keras",
    "transformers",
    "datasets",
    "torchvision",
    "torchaudio",
    "lightning",
    "pytorch-lightning",
    "mlflow",
    "mlflow-skinny",
    "setuptools",
    "wheel",
    "certifi",
    "grpcio",
    "flwr",
    "pydantic",
    "numba",
    "tabulate",
    "jinja2",
    "tokenizers",
    "safetensors",
    "huggingface_hub",
    "huggingface-hub",
    "gmpy2",
    "opacus",
    "onnx",
    "onnxruntime",
    "plotly",
    "imbalanced-learn",
];

/// Conda version syntax → PEP 440: `=1.26` is `1.26.*`, a build string after a second `=` is dropped.
fn conda_version(v: &str) -> String {
    let v = v.trim();
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

fn conda_to_pypi(c: &mut Ctx) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    for d in std::mem::take(&mut c.conda) {
        let pypi = CONDA_TO_PYPI
            .iter()
            .find(|(k, _)| *k == d.name)
            .map(|(_, v)| *v)
            .or_else(|| SAME_ON_PYPI.iter().find(|n| **n == d.name).copied());
        let Some(pypi) = pypi else {
            unknown.push(d.name);
            continue;
        };
        let req = requirement(
            &format!(
                "{pypi}{}",
                d.version.as_deref().map(conda_version).unwrap_or_default()
            ),
            c.file,
        )?;
        let written = format!("{}{}", d.name, d.version.as_deref().unwrap_or(""));
        if let Some(i) = pos(&c.reqs, req.name.as_ref()) {
            out.push(format!(
                "conda {written} dropped: the pip section already has {}",
                c.reqs[i]
            ));
        } else {
            out.push(format!("conda {written} installed from PyPI as {req}"));
            c.reqs.push(req);
        }
    }
    if !unknown.is_empty() {
        return Err(bad_input(format!(
            "{}: conda-only packages with no known PyPI equivalent: {} (move them to the pip: list under their PyPI names, or remove them)",
            c.file,
            unknown.join(", ")
        )));
    }
    Ok(out)
}

fn mlflow(c: &mut Ctx) -> Result<Vec<String>> {
    let Some(i) = pos(&c.reqs, "mlflow") else {
        return Ok(vec![]);
    };
    let old = c.reqs[i].to_string();
    if c.facts.imports_mlflow {
        let skinny = old.replacen("mlflow", "mlflow-skinny", 1);
        c.reqs[i] = requirement(&skinny, c.file)?;
        Ok(vec![format!("{old} replaced by {}: the code imports mlflow, and the skinny package has that API without the server and UI", c.reqs[i])])
    } else {
        c.reqs.remove(i);
        Ok(vec![format!("dropped {old}: learners never log to MLflow (FL privacy) and no code imports it; it is large")])
    }
}

fn torch_gmpy2(c: &mut Ctx) -> Result<Vec<String>> {
    match (
        pos(&c.reqs, "torch"),
        pos(&c.reqs, "torchvision"),
        pos(&c.reqs, "gmpy2"),
    ) {
        (Some(_), None, Some(g)) => {
            let old = c.reqs[g].to_string();
            c.reqs[g] = requirement("torchvision", c.file)?;
            Ok(vec![format!("replaced {old} with torchvision: MLflow's export lists gmpy2 where the model needs torchvision (upstream FLOps fix)")])
        }
        _ => Ok(vec![]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deps::spec::parse_conda;

    fn run(yaml: &str, imports_mlflow: bool) -> Result<Doctored> {
        doctor(&parse_conda(yaml)?, &Facts { imports_mlflow })
    }
    fn names(d: &Doctored) -> Vec<String> {
        d.requirements.iter().map(|r| r.to_string()).collect()
    }
    fn rules(d: &Doctored) -> Vec<&str> {
        d.fired.iter().map(|f| f.rule).collect()
    }

    #[test]
    fn conda_env_name_is_ignored() {
        let d = run("name: mlflow-env\ndependencies:\n- python=3.11\n", false).unwrap();
        assert_eq!(rules(&d), ["conda-env-name"]);
    }

    #[test]
    fn python_patch_pin_relaxed() {
        let d = run("dependencies:\n- python=3.10.14\n", false).unwrap();
        assert_eq!(d.python.as_deref(), Some("3.10"));
        assert_eq!(rules(&d), ["python-patch-pin"]);
        assert!(run("dependencies:\n- python=three\n", false).is_err());
    }

    #[test]
    fn pip_pins_dropped_from_conda_and_pip_sections() {
        let d = run(
            "dependencies:\n- pip<=23.0\n- pip:\n  - pip==23.0\n  - numpy==1.26.4\n",
            false,
        )
        .unwrap();
        assert_eq!(names(&d), ["numpy==1.26.4"]);
        assert_eq!(rules(&d), ["drop-pip-pin", "drop-pip-pin"]);
    }

    #[test]
    fn mlflow_dropped_unless_imported() {
        let y = "dependencies:\n- pip:\n  - mlflow==2.11.1\n  - scikit-learn==1.4.2\n";
        let d = run(y, false).unwrap();
        assert_eq!(names(&d), ["scikit-learn==1.4.2"]);
        let d = run(y, true).unwrap();
        assert_eq!(names(&d), ["mlflow-skinny==2.11.1", "scikit-learn==1.4.2"]);
        assert_eq!(rules(&d), ["mlflow"]);
    }

    #[test]
    fn torch_without_torchvision_swaps_gmpy2() {
        let d = run(
            "dependencies:\n- pip:\n  - torch==2.2.0\n  - gmpy2==2.1.5\n",
            false,
        )
        .unwrap();
        assert_eq!(names(&d), ["torch==2.2.0", "torchvision"]);
        let d = run(
            "dependencies:\n- pip:\n  - torch==2.2.0\n  - torchvision\n  - gmpy2==2.1.5\n",
            false,
        )
        .unwrap();
        assert!(rules(&d).is_empty());
    }

    #[test]
    fn conda_packages_mapped_or_rejected_by_name() {
        let d = run("dependencies:\n- numpy=1.26\n- pytorch==2.1.0=py3.11_cpu\n- scipy>=1.11\n- pip:\n  - scipy==1.13.1\n", false).unwrap();
        assert_eq!(
            names(&d),
            ["scipy==1.13.1", "numpy==1.26.*", "torch==2.1.0"]
        );
        assert_eq!(rules(&d), ["conda-to-pypi"; 3]);
        let e = run("dependencies:\n- cudatoolkit=11.8\n- mkl\n- numpy\n", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("conda-only packages with no known PyPI equivalent: cudatoolkit, mkl"),
            "{e}"
        );
    }
}
