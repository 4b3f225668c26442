//! The MLflow tracking server's REST API, as far as building a model image needs it: the run
//! (`runs/get`), its artifacts through the server's proxy (`mlflow-artifacts:` URIs →
//! `/api/2.0/mlflow-artifacts/artifacts/<path>`; listings are one level at a time, so they are
//! walked), and MLflow 3's logged models (stored outside the run: `logged-models/search` by
//! source run). Downloads stream to disk with every size checked; nothing is held in memory.
//!
//! Hand-written on reqwest: the MLflow client is Python, and the few calls here need no SDK.
//! Credentials: in the URL, else `MLFLOW_TRACKING_TOKEN` (Bearer) or
//! `MLFLOW_TRACKING_USERNAME` + `MLFLOW_TRACKING_PASSWORD` (Basic), as MLflow's client reads.

use super::Fetched;
use crate::error::{bad_input, registry as net_err};
use anyhow::{Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use url::Url;

pub struct Tracking {
    base: Url,
    /// The URL without credentials, for messages and labels.
    pub shown: String,
    http: reqwest::Client,
    auth: Option<String>,
}

/// A file of a model's artifacts: path relative to the model directory, size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactFile {
    pub path: String,
    pub size: Option<u64>,
}

/// The tracking URI without user and password (what labels and messages show).
pub fn shown(uri: &str) -> String {
    crate::repo::naming::split_credentials(uri)
        .0
        .trim_end_matches('/')
        .to_string()
}

impl Tracking {
    pub fn new(uri: &str) -> Result<Self> {
        let (clean, creds) = crate::repo::naming::split_credentials(uri);
        let mut base = Url::parse(clean.trim_end_matches('/'))
            .map_err(|e| bad_input(format!("invalid tracking server URI {clean:?}: {e}")))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let basic = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let auth = match (creds, env("MLFLOW_TRACKING_TOKEN")) {
            (Some((u, p)), _) => Some(basic(&u, &p)),
            (None, Some(token)) => Some(format!("Bearer {token}")),
            (None, None) => match (
                env("MLFLOW_TRACKING_USERNAME"),
                env("MLFLOW_TRACKING_PASSWORD"),
            ) {
                (Some(u), Some(p)) => Some(basic(&u, &p)),
                _ => None,
            },
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("flops-image-builder/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(15))
            .read_timeout(std::time::Duration::from_secs(120))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            base,
            shown: shown(&clean),
            http,
            auth,
        })
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("a relative API path")
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, url);
        match &self.auth {
            Some(a) => rb.header(reqwest::header::AUTHORIZATION, a),
            None => rb,
        }
    }

    async fn send(&self, what: &str, rb: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = rb.send().await.map_err(|e| {
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            net_err(format!(
                "cannot reach the MLflow tracking server {} for {what}: {cause}",
                self.shown
            ))
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let code = body["error_code"].as_str().unwrap_or("");
        let msg = body["message"].as_str().unwrap_or("").to_string();
        Err(match status.as_u16() {
            401 | 403 => net_err(format!("the MLflow tracking server {} refused {what} (HTTP {}): set MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD", self.shown, status.as_u16())),
            404 | 400 => bad_input(format!("{what}: not found on the MLflow tracking server {} ({} {msg})", self.shown, if code.is_empty() { status.as_str() } else { code }).replace(" )", ")")),
            _ => net_err(format!("the MLflow tracking server {} failed {what}: HTTP {} {msg}", self.shown, status.as_u16())),
        })
    }

    async fn get_json(&self, what: &str, url: Url) -> Result<Value> {
        let resp = self
            .send(what, self.request(reqwest::Method::GET, url))
            .await?;
        resp.json().await.map_err(|e| {
            net_err(format!(
                "{what}: the tracking server {} sent no JSON: {e}",
                self.shown
            ))
        })
    }

    /// `runs/get`: (experiment id, artifact URI, start time in Unix seconds).
    pub async fn run(&self, run_id: &str) -> Result<(String, String, u64)> {
        let mut url = self.url("api/2.0/mlflow/runs/get");
        url.query_pairs_mut().append_pair("run_id", run_id);
        let v = self.get_json(&format!("run {run_id}"), url).await?;
        let info = &v["run"]["info"];
        let text = |k: &str| info[k].as_str().unwrap_or_default().to_string();
        let start = info["start_time"]
            .as_u64()
            .or_else(|| info["start_time"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(0);
        Ok((text("experiment_id"), text("artifact_uri"), start / 1000))
    }

    /// MLflow 3: the artifact URI of the logged model `name` whose source run is `run_id`.
    /// `None` on servers without logged models (MLflow 2).
    pub async fn logged_model(
        &self,
        experiment: &str,
        run_id: &str,
        name: &str,
    ) -> Result<Option<(String, String)>> {
        let url = self.url("api/2.0/mlflow/logged-models/search");
        let body = json!({
            "experiment_ids": [experiment],
            "filter": format!("source_run_id = '{run_id}'"),
            "max_results": 100,
        });
        let rb = self.request(reqwest::Method::POST, url).json(&body);
        let v: Value = match self.send("logged models", rb).await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(e) if crate::error::kind_of(&e) == crate::error::Kind::BadInput => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(v["models"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| &m["info"])
            .find(|i| i["name"] == name && i["source_run_id"] == run_id)
            .map(|i| {
                (
                    i["model_id"].as_str().unwrap_or_default().to_string(),
                    i["artifact_uri"].as_str().unwrap_or_default().to_string(),
                )
            }))
    }

    /// Every file below `root/rel` (proxied artifact paths), walking one level at a time.
    pub async fn walk(&self, root: &str, rel: &str) -> Result<Vec<ArtifactFile>> {
        let mut out = Vec::new();
        let mut dirs = vec![rel.trim_matches('/').to_string()];
        while let Some(dir) = dirs.pop() {
            let mut url = self.url("api/2.0/mlflow-artifacts/artifacts");
            let full = join(root, &dir);
            url.query_pairs_mut().append_pair("path", &full);
            let v = self
                .get_json(&format!("artifact listing {full}"), url)
                .await?;
            for f in v["files"].as_array().into_iter().flatten() {
                let name = f["path"].as_str().unwrap_or_default();
                // Listed paths are relative to the listed directory.
                let path = join(&dir, name.rsplit('/').next().unwrap_or(name));
                if f["is_dir"].as_bool().unwrap_or(false) {
                    dirs.push(path);
                } else {
                    let size = f["file_size"]
                        .as_u64()
                        .or_else(|| f["file_size"].as_str().and_then(|s| s.parse().ok()));
                    out.push(ArtifactFile { path, size });
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Streams `files` (below `root/rel`) into `dest`, each size checked.
    pub async fn download(
        &self,
        root: &str,
        rel: &str,
        files: &[ArtifactFile],
        dest: &Path,
    ) -> Result<()> {
        let prefix = rel.trim_matches('/');
        for f in files {
            let local_rel = f
                .path
                .strip_prefix(prefix)
                .unwrap_or(&f.path)
                .trim_start_matches('/');
            if local_rel.split('/').any(|c| c == ".." || c.is_empty()) {
                return Err(bad_input(format!(
                    "artifact {:?} has an unsafe path",
                    f.path
                )));
            }
            let target = dest.join(local_rel);
            std::fs::create_dir_all(target.parent().expect("inside dest"))?;
            let mut url = self.url("api/2.0/mlflow-artifacts/artifacts/");
            url.path_segments_mut()
                .map_err(|_| anyhow::anyhow!("tracking server URL cannot have a path"))?
                .pop_if_empty()
                .extend(join(root, &f.path).split('/'));
            let what = format!("artifact {}", f.path);
            let mut resp = self
                .send(&what, self.request(reqwest::Method::GET, url))
                .await?;
            let mut file = tokio::fs::File::create(&target).await?;
            let mut n = 0u64;
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| net_err(format!("{what} from {}: {e}", self.shown)))?
            {
                n += chunk.len() as u64;
                file.write_all(&chunk).await?;
            }
            file.flush().await?;
            if f.size.is_some_and(|s| s != n) {
                return Err(net_err(format!(
                    "{what} from {}: got {n} bytes, the listing says {}",
                    self.shown,
                    f.size.unwrap_or(0)
                )));
            }
        }
        Ok(())
    }

    /// The model at `artifact_path` of run `run_id`: the run's own artifacts, else (MLflow 3)
    /// the logged model of that name from the run.
    pub async fn fetch(&self, run_id: &str, artifact_path: &str, cache: &Path) -> Result<Fetched> {
        let (experiment, artifact_uri, epoch) = self.run(run_id).await?;
        let run_root = proxied_root(&artifact_uri, run_id)?;
        let mut files = self.walk(&run_root, artifact_path).await?;
        let mut root = run_root.clone();
        let mut rel = artifact_path.to_string();
        let mut origin = "run artifacts".to_string();
        if files.is_empty() {
            if let Some((id, uri)) = self
                .logged_model(&experiment, run_id, artifact_path)
                .await?
            {
                root = proxied_root(&uri, run_id)?;
                rel = String::new();
                files = self.walk(&root, "").await?;
                origin = format!("logged model {id}");
            }
        }
        if !files.iter().any(|f| f.path == join(&rel, "MLmodel")) {
            return Err(bad_input(format!(
                "run {run_id} on the MLflow tracking server {} has no MLflow model at `{artifact_path}` (no MLmodel in its artifacts, and no logged model of that name from the run); FLOps' aggregator logs it as `logged_model_artifact`",
                self.shown
            )));
        }
        std::fs::create_dir_all(cache.join("models"))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{run_id}-"))
            .tempdir_in(cache.join("models"))?;
        let dir = tmp.path().join("model");
        self.download(&root, &rel, &files, &dir).await?;
        tracing::info!(
            "model of run {run_id} ({origin}): {} files from {}",
            files.len(),
            self.shown
        );
        Ok(Fetched {
            dir,
            _tmp: Some(tmp),
            epoch,
            origin,
            run_id: Some(run_id.to_string()),
        })
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.trim_matches('/'), b.trim_matches('/')) {
        ("", b) => b.to_string(),
        (a, "") => a.to_string(),
        (a, b) => format!("{a}/{b}"),
    }
}

/// The path the server's artifact proxy serves an artifact URI under; other artifact stores
/// are named, with the way out.
pub fn proxied_root(uri: &str, run_id: &str) -> Result<String> {
    if let Some(rest) = uri.strip_prefix("mlflow-artifacts:") {
        // `mlflow-artifacts:/1/<run>/artifacts` or `mlflow-artifacts://host:port/1/<run>/…`.
        let path = match rest.strip_prefix("//") {
            Some(with_host) => with_host.split_once('/').map_or("", |(_, p)| p),
            None => rest,
        };
        return Ok(path.trim_matches('/').to_string());
    }
    let scheme = uri.split_once("://").map_or("file", |(s, _)| s);
    Err(bad_input(format!(
        "the artifacts of run {run_id} are in {scheme} storage ({uri}), which the tracking server does not serve and the builder does not read; start the server with artifact serving (`mlflow server --serve-artifacts --artifacts-destination {scheme}://…`, the default since MLflow 2), or download the model and pass --model-dir"
    )))
}

/// A `file://` (or plain path) tracking store: `<store>/<experiment>/<run>/artifacts/<path>`,
/// else MLflow 3's `<store>/<experiment>/models/<model>/artifacts` of the logged model.
pub fn from_file_store(store: &Path, run_id: &str, artifact_path: &str) -> Result<Fetched> {
    let mut experiments: Vec<PathBuf> = std::fs::read_dir(store)
        .map_err(|e| {
            bad_input(format!(
                "cannot read the tracking store {}: {e}",
                store.display()
            ))
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    experiments.sort();
    for exp in &experiments {
        let run = exp.join(run_id);
        if !run.is_dir() {
            continue;
        }
        let meta = std::fs::read_to_string(run.join("meta.yaml")).unwrap_or_default();
        let epoch = meta
            .lines()
            .find_map(|l| l.strip_prefix("start_time:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(0, |ms| ms / 1000);
        let in_run = run.join("artifacts").join(artifact_path);
        if in_run.join("MLmodel").is_file() {
            return Ok(Fetched {
                dir: in_run,
                _tmp: None,
                epoch,
                origin: "run artifacts".into(),
                run_id: Some(run_id.into()),
            });
        }
        for m in std::fs::read_dir(exp.join("models"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let meta = std::fs::read_to_string(m.path().join("meta.yaml")).unwrap_or_default();
            let has = |k: &str, v: &str| meta.lines().any(|l| l.trim() == format!("{k}: {v}"));
            let dir = m.path().join("artifacts");
            if has("source_run_id", run_id)
                && has("name", artifact_path)
                && dir.join("MLmodel").is_file()
            {
                let id = m.file_name().to_string_lossy().into_owned();
                return Ok(Fetched {
                    dir,
                    _tmp: None,
                    epoch,
                    origin: format!("logged model {id}"),
                    run_id: Some(run_id.into()),
                });
            }
        }
        return Err(bad_input(format!(
            "run {run_id} in the tracking store {} has no MLflow model at `{artifact_path}`",
            store.display()
        )));
    }
    Err(bad_input(format!(
        "run {run_id} is not in the tracking store {}",
        store.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_uris_map_to_the_proxy_or_are_named() {
        assert_eq!(
            proxied_root("mlflow-artifacts:/3/abc/artifacts", "abc").unwrap(),
            "3/abc/artifacts"
        );
        assert_eq!(
            proxied_root("mlflow-artifacts://h:5000/3/abc/artifacts", "abc").unwrap(),
            "3/abc/artifacts"
        );
        let e = proxied_root("s3://bucket/mlflow/3/abc/artifacts", "abc")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("in s3 storage (s3://bucket/mlflow/3/abc/artifacts)")
                && e.contains("--serve-artifacts"),
            "{e}"
        );
        assert!(proxied_root("/var/mlruns/3/abc/artifacts", "abc")
            .unwrap_err()
            .to_string()
            .contains("file storage"));
    }

    #[test]
    fn credentials_never_shown_and_sent_as_basic() {
        let t = Tracking::new("https://bot:s3cret@mlflow.example:5000/").unwrap();
        assert_eq!(t.shown, "https://mlflow.example:5000");
        assert!(t.auth.as_deref().unwrap().starts_with("Basic "));
        assert_eq!(join("a/b", "c"), "a/b/c");
        assert_eq!(join("", "c"), "c");
    }
}
