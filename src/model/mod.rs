//! The trained model's source: an MLflow model from a tracking server (REST API, artifacts
//! through the server's proxy), a `file://` tracking store, or a local model directory; and
//! what its `MLmodel` says.

pub mod mlflow;
pub mod mlmodel;

use crate::error::bad_input;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// Where the model comes from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A tracking server (`http(s)://`) or a `file://` tracking store, a run and the artifact
    /// path of the model in it.
    Run {
        tracking_uri: String,
        run_id: String,
        artifact_path: String,
    },
    /// A directory holding an MLflow model (`MLmodel` at its top).
    Dir(PathBuf),
}

/// A model on the local disk, with what is known about where it came from.
#[derive(Debug)]
pub struct Fetched {
    pub dir: PathBuf,
    /// Keeps a downloaded model's directory alive.
    pub _tmp: Option<tempfile::TempDir>,
    /// The run's start time (Unix seconds): the image's created time and the model layer's
    /// mtimes; 0 for a local directory (or SOURCE_DATE_EPOCH).
    pub epoch: u64,
    /// `run artifacts`, `logged model <id>` or `local directory`.
    pub origin: String,
    pub run_id: Option<String>,
}

/// Gets the model onto the local disk under `cache` (downloads are streamed, sizes checked).
pub async fn fetch(source: &ModelSource, cache: &Path) -> Result<Fetched> {
    match source {
        ModelSource::Dir(d) => {
            let dir = d.clone();
            if !dir.join("MLmodel").is_file() {
                return Err(bad_input(format!(
                    "{} is not an MLflow model directory (no MLmodel file in it)",
                    dir.display()
                )));
            }
            Ok(Fetched {
                dir,
                _tmp: None,
                epoch: source_date_epoch(),
                origin: "local directory".into(),
                run_id: None,
            })
        }
        ModelSource::Run {
            tracking_uri,
            run_id,
            artifact_path,
        } => {
            if let Some(store) = tracking_uri.strip_prefix("file://") {
                return mlflow::from_file_store(Path::new(store), run_id, artifact_path);
            }
            if !tracking_uri.contains("://") {
                return mlflow::from_file_store(Path::new(tracking_uri), run_id, artifact_path);
            }
            let server = mlflow::Tracking::new(tracking_uri)?;
            server.fetch(run_id, artifact_path, cache).await
        }
    }
}

fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
