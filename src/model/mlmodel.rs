//! An MLflow model's `MLmodel` file (YAML): its flavors, the `python_function` loader the
//! scoring server needs, the Python and the MLflow version it was saved with; and its
//! dependency spec (`requirements.txt`, else `conda.yaml`).

use crate::error::bad_input;
use anyhow::Result;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct MlModel {
    /// Flavor names (`python_function`, `sklearn`, …).
    pub flavors: Vec<String>,
    /// `python_function.loader_module`.
    pub loader: String,
    /// The Python the model was saved with (`3.11.7`), if recorded.
    pub python: Option<String>,
    /// The MLflow that saved it (`2.22.5`), if recorded.
    pub mlflow_version: Option<String>,
}

pub fn read(dir: &Path) -> Result<MlModel> {
    let text = std::fs::read_to_string(dir.join("MLmodel"))
        .map_err(|e| bad_input(format!("{}: cannot read MLmodel: {e}", dir.display())))?;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
        .map_err(|e| bad_input(format!("MLmodel is not valid YAML: {e}")))?;
    let flavors: Vec<String> = doc
        .get("flavors")
        .and_then(|f| f.as_mapping())
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let pyfunc = doc.get("flavors").and_then(|f| f.get("python_function"));
    let Some(pyfunc) = pyfunc else {
        return Err(bad_input(format!(
            "the model has no python_function flavor (it has {}), so MLflow's scoring server cannot serve it; log it with an MLflow flavor such as mlflow.sklearn or mlflow.pyfunc",
            if flavors.is_empty() { "none".to_string() } else { flavors.join(", ") }
        )));
    };
    let s = |v: Option<&serde_yaml_ng::Value>| v.and_then(|x| x.as_str()).map(str::to_string);
    Ok(MlModel {
        loader: s(pyfunc.get("loader_module")).unwrap_or_default(),
        python: s(pyfunc.get("python_version")),
        mlflow_version: s(doc.get("mlflow_version")),
        flavors,
    })
}

impl MlModel {
    /// What MLflow's scoring server needs beyond the model's own requirements, as
    /// requirements.txt text: mlflow-skinny of the version that saved the model (its scoring
    /// server reads the model as written) and that server's web stack, bounded as that MLflow
    /// was tested.
    pub fn serving_requirements(&self) -> String {
        let version = self.mlflow_version.as_deref().unwrap_or("");
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        let mut r = if version.is_empty() {
            "mlflow-skinny\n".to_string()
        } else {
            format!("mlflow-skinny=={version}\n")
        };
        r.push_str(match (major, minor) {
            // Up to 2.20 the scoring server is Flask under gunicorn, with the full package's
            // bounds (Werkzeug 3 broke the Flask 2 those MLflows need).
            (0..=1, _) | (2, 0..=7) => "flask<3\nwerkzeug<3\ngunicorn<21\n",
            (2, 8..=20) => "flask<4\ngunicorn<22\n",
            // From 2.21 FastAPI under uvicorn; up to 3.10 its routes use `app.route`, which
            // Starlette 1.0 removed.
            (2, _) | (3, 0..=10) => "fastapi<1\nuvicorn<1\nstarlette<1\n",
            _ => "fastapi<1\nuvicorn<1\n",
        });
        // The numeric stack as the full package bounds it for that MLflow (NumPy 2 from 2.16,
        // pandas 3 from 3.16): a model whose requirements do not pin them gets what its
        // MLflow was tested with.
        r.push_str(match (major, minor) {
            (0..=1, _) | (2, 0..=15) => "numpy<2\npandas<3\n",
            (2, _) | (3, 0..=15) => "numpy<3\npandas<3\n",
            _ => "numpy<3\npandas<4\n",
        });
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlmodel_as_mlflow_writes_it() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("MLmodel"), "artifact_path: logged_model_artifact\nflavors:\n  python_function:\n    env:\n      conda: conda.yaml\n    loader_module: mlflow.sklearn\n    model_path: model.pkl\n    python_version: 3.11.7\n  sklearn:\n    pickled_model: model.pkl\n    sklearn_version: 1.4.2\nmlflow_version: 2.22.5\n").unwrap();
        let m = read(d.path()).unwrap();
        assert_eq!(m.loader, "mlflow.sklearn");
        assert_eq!(m.python.as_deref(), Some("3.11.7"));
        assert_eq!(m.flavors, ["python_function", "sklearn"]);
        let v3 = |v: &str| MlModel {
            mlflow_version: Some(v.into()),
            ..m.clone()
        };
        assert_eq!(
            v3("2.12.1").serving_requirements(),
            "mlflow-skinny==2.12.1\nflask<4\ngunicorn<22\nnumpy<2\npandas<3\n"
        );
        assert!(m
            .serving_requirements()
            .contains("fastapi<1\nuvicorn<1\nstarlette<1"));
        assert!(v3("3.1.4").serving_requirements().contains("starlette<1"));
        assert!(!v3("3.11.0").serving_requirements().contains("starlette"));
        std::fs::write(
            d.path().join("MLmodel"),
            "flavors:\n  onnx:\n    onnx_version: 1.15\nmlflow_version: 3.1.4\n",
        )
        .unwrap();
        let e = read(d.path()).unwrap_err().to_string();
        assert!(e.contains("no python_function flavor (it has onnx)"), "{e}");
    }
}
