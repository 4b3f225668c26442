//! A small OCI distribution client on reqwest.
//!
//! Hand-written rather than the `oci-client` crate, for the reasons in
//! shared/reference/oci-push.md: it lacks docker config.json credentials, re-auth on 401,
//! retries, mount with a source scope, `OCI-Chunk-Min-Length`, and joins relative Locations
//! against the wrong base. This follows go-containerregistry's flow instead.
//!
//! Authorization is only ever attached by us to requests for the registry's own URLs; reqwest
//! strips it on redirects to another host (blob storage), as the spec asks.

use crate::error::registry as reg_err;
use crate::oci::blobstore::BlobStore;
use crate::oci::credentials::{self, Credentials};
use crate::oci::image::{Index, ACCEPT_MANIFESTS};
use crate::oci::retry::{self, Backoff};
use anyhow::{anyhow, Context, Result};
use base64::Engine as _;
use futures_util::StreamExt;
use reqwest::header::{
    HeaderMap, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use sha2::{Digest as _, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use url::Url;

/// Blobs up to this size go up in one PUT; larger ones in PATCH chunks that can resume.
pub const MONOLITHIC_MAX: u64 = 64 << 20;
/// Chunk size for chunked uploads, raised to the registry's `OCI-Chunk-Min-Length`.
pub const CHUNK_SIZE: u64 = 32 << 20;

#[derive(Debug, Clone)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// How to reach registries: hosts for which plain HTTP / self-signed TLS is allowed.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub insecure: Vec<String>,
}

impl Options {
    pub fn is_insecure(&self, host: &str) -> bool {
        self.insecure.iter().any(|h| {
            let h = h
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .trim_end_matches('/');
            h == host
        })
    }
}

/// How the first request to a registry failed: no answer at all (try the next scheme), or an
/// answer that refuses (final).
enum Ping {
    Unreached(anyhow::Error),
    Answered(anyhow::Error),
}

/// How one blob download ended when it did not succeed: its body was cut (worth another try),
/// or anything else (final).
enum Download {
    Cut(reqwest::Error),
    Failed(anyhow::Error),
}
use Download::{Cut, Failed};

/// One registry host, authenticated for a fixed set of repository scopes.
pub struct Registry {
    pub host: String,
    base: Url,
    http: reqwest::Client,
    creds: Option<Credentials>,
    scopes: Vec<String>,
    challenge: tokio::sync::Mutex<Option<Challenge>>,
    auth: std::sync::RwLock<Option<String>>,
    /// Bytes of blob bodies sent (for the report).
    pub uploaded: AtomicU64,
    /// The registry has answered once (any HTTP response): from then on a refused connection
    /// is a restart or an overload worth retrying; before, it is a wrong host or port, and
    /// retrying it only makes the user wait (go-containerregistry fails it at once too).
    answered: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({})", self.base)
    }
}

/// What happened to a blob on push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobStatus {
    /// The registry already had it (HEAD).
    Skipped,
    /// Mounted from another repository of the same registry.
    Mounted,
    /// Uploaded from a local file.
    Uploaded,
    /// Streamed from the base image's registry.
    Streamed,
}

/// The innermost cause of a reqwest error (reqwest's own Display hides it).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Parses `Bearer realm="…",service="…",scope="…"` (quoted values may hold commas).
fn parse_challenge(h: &str) -> Option<Challenge> {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = std::collections::HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next()),
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied().filter(|c| *c != ',') {
                val.push(c);
                chars.next();
            }
        }
        params.insert(key, val.trim().to_string());
    }
    Some(Challenge::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
    })
}

/// The registry's error body (`{"errors":[{"code","message"}]}`), shortened to one line.
async fn error_detail(resp: Response) -> String {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let e = v.get("errors")?.get(0)?;
            Some(format!(
                "{} {}",
                e.get("code")?.as_str()?,
                e.get("message").and_then(|m| m.as_str()).unwrap_or("")
            ))
        })
        .unwrap_or_else(|| {
            body.chars()
                .take(200)
                .collect::<String>()
                .replace('\n', " ")
        });
    format!("HTTP {} {}", status.as_u16(), detail.trim())
        .trim()
        .to_string()
}

impl Registry {
    /// Connects to `host`: pings `/v2/` and authenticates for `scopes`
    /// (`repository:<name>:pull[,push]`). `plain_http` comes from an `http://` reference.
    pub async fn connect(
        host: &str,
        api_host: &str,
        plain_http: bool,
        opts: &Options,
        scopes: Vec<String>,
    ) -> Result<Arc<Self>> {
        let insecure = plain_http || opts.is_insecure(host);
        let http = reqwest::Client::builder()
            .user_agent(concat!("flops-image-builder/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .danger_accept_invalid_certs(insecure)
            .build()
            .context("building the HTTP client")?;
        let creds = credentials::lookup(host)?;
        let schemes: &[&str] = if plain_http {
            &["http"]
        } else if insecure {
            // Like docker's insecure-registries: TLS without verification first, then plain HTTP.
            &["https", "http"]
        } else {
            &["https"]
        };
        let mut last_err = None;
        for (i, scheme) in schemes.iter().enumerate() {
            let base = Url::parse(&format!("{scheme}://{api_host}/")).map_err(|e| {
                crate::error::bad_input(format!("invalid registry host {host:?}: {e}"))
            })?;
            let reg = Registry {
                host: host.to_string(),
                base,
                http: http.clone(),
                creds: creds.clone(),
                scopes: scopes.clone(),
                challenge: tokio::sync::Mutex::new(None),
                auth: std::sync::RwLock::new(None),
                uploaded: AtomicU64::new(0),
                answered: Default::default(),
            };
            match reg.ping(i + 1 == schemes.len()).await {
                Ok(()) => return Ok(Arc::new(reg)),
                // It answered (a 401 naming missing credentials, say): that is the answer, and
                // a plain-HTTP retry of an HTTPS server would only hide it.
                Err(Ping::Answered(e)) => return Err(e),
                Err(Ping::Unreached(e)) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one scheme"))
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("valid path")
    }

    /// The access check (`GET /v2/`), retried like every other request. Network failures are
    /// retried only when `last_scheme` (otherwise the next scheme is the better try).
    async fn ping(&self, last_scheme: bool) -> std::result::Result<(), Ping> {
        let url = self.url("v2/");
        let resp = self
            .request("access check", false, last_scheme, |c| {
                Ok(c.get(url.clone()))
            })
            .await
            .map_err(Ping::Unreached)?;
        match resp.status() {
            s if s.is_success() => {
                // Anonymous access works; credentials, if any, are still used when asked for.
                Ok(())
            }
            StatusCode::UNAUTHORIZED => self
                .authenticate(resp.headers())
                .await
                .map_err(Ping::Answered),
            _ => Err(Ping::Answered(reg_err(format!(
                "registry {}: {url} answered {}",
                self.host,
                error_detail(resp).await
            )))),
        }
    }

    fn net_error(&self, what: &str, e: &reqwest::Error) -> anyhow::Error {
        let cause = root_cause(e);
        let hint = if cause.contains("certificate") || cause.contains("UnknownIssuer") {
            format!(" (self-signed? pass --insecure-registry {})", self.host)
        } else if self.base.scheme() == "https"
            && (cause.contains("corrupt")
                || cause.contains("InvalidContentType")
                || cause.contains("wrong version"))
        {
            format!(
                " (plain-HTTP registry? write http://{} or pass --insecure-registry {})",
                self.host, self.host
            )
        } else {
            String::new()
        };
        reg_err(format!(
            "cannot reach registry {} ({}) for {what}: {cause}{hint}",
            self.host, self.base
        ))
    }

    /// Handles a 401 challenge: remembers it and fetches a token (or prepares Basic auth).
    async fn authenticate(&self, headers: &HeaderMap) -> Result<()> {
        let header = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let challenge = parse_challenge(header).ok_or_else(|| {
            reg_err(format!(
                "registry {}: unsupported authentication challenge {header:?}",
                self.host
            ))
        })?;
        let value = match &challenge {
            Challenge::Basic => match &self.creds {
                Some(Credentials::Basic { username, password }) => {
                    Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))))
                }
                _ => return Err(reg_err(format!("registry {} requires credentials (401): add them to ~/.docker/config.json or REGISTRY_AUTH_FILE", self.host))),
            },
            Challenge::Bearer { realm, service } => Some(format!("Bearer {}", self.fetch_token(realm, service.as_deref()).await?)),
        };
        *self.challenge.lock().await = Some(challenge);
        *self.auth.write().expect("auth lock") = value;
        Ok(())
    }

    async fn fetch_token(&self, realm: &str, service: Option<&str>) -> Result<String> {
        let mut url = Url::parse(realm).map_err(|e| {
            reg_err(format!(
                "registry {}: bad token realm {realm:?}: {e}",
                self.host
            ))
        })?;
        // The OAuth2 POST form carries service and scope in its body; the GET form in the query.
        if !matches!(self.creds, Some(Credentials::IdentityToken(_))) {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in &self.scopes {
                q.append_pair("scope", s);
            }
        }
        let resp = self
            .request("token", false, true, |c| {
                Ok(match &self.creds {
                    Some(Credentials::IdentityToken(tok)) => {
                        let mut form = vec![
                            ("grant_type", "refresh_token".to_string()),
                            ("refresh_token", tok.clone()),
                            ("client_id", "flops-image-builder".into()),
                        ];
                        if let Some(s) = service {
                            form.push(("service", s.into()));
                        }
                        form.push(("scope", self.scopes.join(" ")));
                        let body = url::form_urlencoded::Serializer::new(String::new())
                            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
                            .finish();
                        c.post(url.clone())
                            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                            .body(body)
                    }
                    Some(Credentials::Basic { username, password }) => {
                        c.get(url.clone()).basic_auth(username, Some(password))
                    }
                    None => c.get(url.clone()),
                })
            })
            .await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let who = if self.creds.is_some() {
                "the configured credentials were rejected"
            } else {
                "anonymous access refused; add credentials to ~/.docker/config.json or REGISTRY_AUTH_FILE"
            };
            return Err(reg_err(format!(
                "registry {}: authentication failed ({}): {who}",
                self.host,
                status.as_u16()
            )));
        }
        if !status.is_success() {
            return Err(reg_err(format!(
                "registry {}: token request failed: {}",
                self.host,
                error_detail(resp).await
            )));
        }
        let v: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| reg_err(format!("registry {}: bad token reply: {e}", self.host)))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| reg_err(format!("registry {}: token reply has no token", self.host)))
    }

    /// Sends a request built by `make` (called again for each attempt, so bodies are rebuilt
    /// from their files), with auth and one re-auth on 401; transient failures are retried by
    /// the policy in [`retry`]. The last answer is returned whatever its status.
    pub async fn send(
        &self,
        what: &str,
        make: impl Fn(&reqwest::Client) -> Result<RequestBuilder>,
    ) -> Result<Response> {
        self.request(what, true, true, make).await
    }

    /// [`Registry::send`], with our Authorization attached (and renewed on a 401) or not (the
    /// access check, the token endpoint); network failures retried or not (`retry_net`: the
    /// access check over one of two schemes tries the other scheme instead).
    async fn request(
        &self,
        what: &str,
        authorize: bool,
        retry_net: bool,
        make: impl Fn(&reqwest::Client) -> Result<RequestBuilder>,
    ) -> Result<Response> {
        let mut reauthed = !authorize;
        let mut backoff = Backoff::new();
        loop {
            let mut rb = make(&self.http)?;
            if authorize {
                if let Some(h) = self.auth.read().expect("auth lock").clone() {
                    rb = rb.header(AUTHORIZATION, h);
                }
            }
            let sent = rb.send().await;
            if sent.is_ok() {
                self.answered.store(true, Ordering::Relaxed);
            }
            match sent {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthed => {
                    reauthed = true;
                    // Boxed: the token request is itself a `request` (without auth).
                    Box::pin(self.authenticate(resp.headers())).await?;
                }
                Ok(resp) if retry::transient(resp.status()) => {
                    tracing::warn!(
                        "{what}: registry {} answered {}, retrying",
                        self.host,
                        resp.status()
                    );
                    if !backoff.wait(retry::retry_after(&resp)).await {
                        return Ok(resp);
                    }
                }
                Ok(resp) => return Ok(resp),
                Err(e) if retry_net && retry::transient_net(&e) && !self.refused_at_first(&e) => {
                    tracing::warn!(
                        "{what}: registry {}: {}, retrying",
                        self.host,
                        root_cause(&e)
                    );
                    if !backoff.wait(None).await {
                        return Err(reg_err(format!(
                            "{} (gave up after {} attempts)",
                            self.net_error(what, &e),
                            backoff.failures() + 1
                        )));
                    }
                }
                Err(e) => return Err(self.net_error(what, &e)),
            }
        }
    }

    /// A connection refused before the registry ever answered: nothing listens there.
    fn refused_at_first(&self, e: &reqwest::Error) -> bool {
        !self.answered.load(Ordering::Relaxed)
            && e.is_connect()
            && root_cause(e).to_lowercase().contains("connection refused")
    }

    /// Maps a non-success response to one clear line naming the registry and the object.
    async fn fail(&self, what: &str, resp: Response) -> anyhow::Error {
        let status = resp.status();
        let detail = error_detail(resp).await;
        match status {
            StatusCode::UNAUTHORIZED => reg_err(format!("registry {}: not authorised for {what} ({detail}); check credentials in ~/.docker/config.json or REGISTRY_AUTH_FILE", self.host)),
            StatusCode::FORBIDDEN => reg_err(format!("registry {}: access denied for {what} ({detail})", self.host)),
            StatusCode::NOT_FOUND => crate::error::bad_input(format!("{what}: not found in registry {} ({detail})", self.host)),
            _ => reg_err(format!("registry {}: {what} failed ({detail})", self.host)),
        }
    }

    /// GET a manifest or index: (bytes, media type, digest of the bytes).
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(Vec<u8>, String, String)> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"));
        let what = format!("manifest {}/{repo}:{reference}", self.host);
        let mut backoff = Backoff::new();
        let (header_mt, bytes) = loop {
            let resp = self
                .send(&what, |c| {
                    Ok(c.get(url.clone()).header("Accept", ACCEPT_MANIFESTS))
                })
                .await?;
            if !resp.status().is_success() {
                return Err(self.fail(&what, resp).await);
            }
            let header_mt = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
            // A body cut short is asked for again, like a request that failed.
            match resp.bytes().await {
                Ok(b) => break (header_mt, b.to_vec()),
                Err(e) if retry::transient_net(&e) && backoff.wait(None).await => {
                    tracing::warn!("{what}: {}, retrying", root_cause(&e));
                }
                Err(e) => return Err(self.net_error(&what, &e)),
            }
        };
        let digest = crate::oci::sha256_digest(&bytes);
        if reference.starts_with("sha256:") && reference != digest {
            return Err(reg_err(format!("{what}: content has digest {digest}")));
        }
        let body_mt = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            });
        let mt = body_mt.or(header_mt).unwrap_or_default();
        Ok((bytes, mt, digest))
    }

    pub async fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"));
        let what = format!("blob {digest}");
        let resp = self.send(&what, |c| Ok(c.head(url.clone()))).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.fail(&what, resp).await),
        }
    }

    /// GET a blob (redirects to blob storage are followed, without our Authorization).
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<Response> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"));
        let what = format!("blob {}/{repo}@{digest}", self.host);
        let resp = self.send(&what, |c| Ok(c.get(url.clone()))).await?;
        if !resp.status().is_success() {
            return Err(self.fail(&what, resp).await);
        }
        Ok(resp)
    }

    /// Small blob (a config) as bytes, verified against its digest.
    pub async fn get_blob_bytes(&self, repo: &str, digest: &str) -> Result<Vec<u8>> {
        let mut backoff = Backoff::new();
        loop {
            let resp = self.get_blob(repo, digest).await?;
            match resp.bytes().await {
                Ok(b) if crate::oci::sha256_digest(&b) == digest => return Ok(b.to_vec()),
                Ok(_) => {
                    return Err(reg_err(format!(
                        "registry {}: blob {repo}@{digest} has the wrong content",
                        self.host
                    )))
                }
                Err(e) if retry::transient_net(&e) && backoff.wait(None).await => {
                    tracing::warn!(
                        "blob {digest}: registry {}: {}, retrying",
                        self.host,
                        root_cause(&e)
                    );
                }
                Err(e) => return Err(self.net_error("blob", &e)),
            }
        }
    }

    /// Downloads a blob into the store (streamed, verified), unless the store has it already
    /// (verified by digest; a damaged entry is removed and downloaded again). A download cut
    /// short starts over, by the policy in [`retry`].
    pub async fn download_blob(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        store: &BlobStore,
    ) -> Result<()> {
        if store.has_verified(digest, size).await? {
            return Ok(());
        }
        let mut backoff = Backoff::new();
        loop {
            match self.download_once(repo, digest, store).await {
                Ok(()) => return Ok(()),
                Err(Cut(e)) if retry::transient_net(&e) && backoff.wait(None).await => {
                    tracing::warn!("download of {digest}: {}, starting over", root_cause(&e));
                }
                Err(Cut(e)) => return Err(self.net_error("blob download", &e)),
                Err(Failed(e)) => return Err(e),
            }
        }
    }

    /// One download into a temporary file, committed when its digest is right.
    async fn download_once(
        &self,
        repo: &str,
        digest: &str,
        store: &BlobStore,
    ) -> std::result::Result<(), Download> {
        let mut resp = self.get_blob(repo, digest).await.map_err(Failed)?;
        let tmp = store.temp_file().map_err(Failed)?;
        let file = tmp.reopen().map_err(|e| Failed(e.into()))?;
        let mut file = tokio::fs::File::from_std(file);
        let mut h = Sha256::new();
        while let Some(chunk) = resp.chunk().await.map_err(Cut)? {
            h.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| Failed(e.into()))?;
        }
        file.flush().await.map_err(|e| Failed(e.into()))?;
        let got = format!("sha256:{}", hex::encode(h.finalize()));
        if got != digest {
            return Err(Failed(reg_err(format!(
                "registry {}: blob {repo}@{digest} downloaded with digest {got}",
                self.host
            ))));
        }
        store.commit(tmp, digest).map_err(Failed)?;
        Ok(())
    }

    fn location(&self, req_url: &Url, resp: &Response) -> Result<Url> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                reg_err(format!(
                    "registry {}: upload reply has no Location",
                    self.host
                ))
            })?;
        // RFC 3986 resolution against the request URL: relative and absolute both work.
        req_url
            .join(loc)
            .map_err(|e| reg_err(format!("registry {}: bad Location {loc:?}: {e}", self.host)))
    }

    /// Opens an upload session: (Location, minimum chunk size if the registry states one).
    pub async fn start_upload(&self, repo: &str) -> Result<(Url, u64)> {
        let url = self.url(&format!("v2/{repo}/blobs/uploads/"));
        let what = format!("upload to {}/{repo}", self.host);
        let resp = self
            .send(&what, |c| Ok(c.post(url.clone()).header(CONTENT_LENGTH, 0)))
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.fail(&what, resp).await);
        }
        let min = resp
            .headers()
            .get("OCI-Chunk-Min-Length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok((self.location(&url, &resp)?, min))
    }

    /// Proves push access to `repo` before any expensive work: opens an upload session and
    /// cancels it (a registry that grants only pull answers 401/403 here, not at the end).
    pub async fn check_push(&self, repo: &str) -> Result<()> {
        let (loc, _) = self
            .start_upload(repo)
            .await
            .with_context(|| format!("checking push access to {}/{repo}", self.host))?;
        // Best effort: an abandoned session is garbage-collected by the registry anyway.
        let _ = self
            .send("cancel upload", |c| Ok(c.delete(loc.clone())))
            .await;
        Ok(())
    }

    /// Cross-repository mount. `Ok(None)` = mounted; `Ok(Some(session))` = the registry opened
    /// an upload session instead (202), to be used for a normal upload.
    pub async fn mount(&self, repo: &str, digest: &str, from: &str) -> Result<Option<(Url, u64)>> {
        let mut url = self.url(&format!("v2/{repo}/blobs/uploads/"));
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", from);
        let what = format!("mount of {digest} from {from}");
        let resp = self
            .send(&what, |c| Ok(c.post(url.clone()).header(CONTENT_LENGTH, 0)))
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(None),
            StatusCode::ACCEPTED => {
                let min = resp
                    .headers()
                    .get("OCI-Chunk-Min-Length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Ok(Some((self.location(&url, &resp)?, min)))
            }
            _ => Err(self.fail(&what, resp).await),
        }
    }

    /// Uploads a blob from its file in the store: one PUT when small, resumable PATCH chunks
    /// when large. A failed attempt starts over from the file in a fresh session.
    pub async fn upload_file(
        &self,
        repo: &str,
        digest: &str,
        path: &std::path::Path,
        size: u64,
        session: Option<(Url, u64)>,
    ) -> Result<()> {
        self.transfer(repo, digest, size, session, |session| async move {
            let (loc, min) = match session {
                Some(s) => s,
                None => self.start_upload(repo).await?,
            };
            if size <= MONOLITHIC_MAX {
                self.put_file(&loc, digest, path, size).await
            } else {
                self.put_chunked(loc, digest, path, size, CHUNK_SIZE.max(min))
                    .await
            }
        })
        .await
    }

    /// Runs a whole blob transfer (`attempt`: session, body, commit) again from its start
    /// while it fails with a registry error, by the policy in [`retry`]. After each failure a
    /// HEAD decides first: a blob the repository has by now is a success (another builder
    /// committed the same blob at the same time, which some registries answer with 400
    /// DIGEST_INVALID or BLOB_UPLOAD_INVALID to the loser). A DIGEST_INVALID that is not that
    /// is final: our bytes are wrong, and sending them again cannot help.
    async fn transfer<F, Fut>(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        session: Option<(Url, u64)>,
        mut attempt: F,
    ) -> Result<()>
    where
        F: FnMut(Option<(Url, u64)>) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let mut session = session;
        let mut backoff = Backoff::new();
        crate::progress::uploads().grow(size);
        loop {
            let e = match attempt(session.take()).await {
                Ok(()) => {
                    self.uploaded.fetch_add(size, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => e,
            };
            if self.blob_exists(repo, digest).await.unwrap_or(false) {
                tracing::info!("{digest}: {}/{repo} has it now ({e:#})", self.host);
                return Ok(());
            }
            // A session the registry lost (its 404 BLOB_UPLOAD_UNKNOWN after a connection reset
            // mid-commit) is worth a new one; our own bad bytes or files are not.
            let text = e.to_string();
            let again = text.contains("BLOB_UPLOAD_UNKNOWN")
                || (crate::error::kind_of(&e) == crate::error::Kind::Registry
                    && !text.contains("DIGEST_INVALID"));
            if !again || !backoff.wait(None).await {
                return Err(e);
            }
            tracing::warn!("transfer of {digest} failed ({e:#}); starting over");
        }
    }

    fn with_digest(loc: &Url, digest: &str) -> Url {
        let mut u = loc.clone();
        u.query_pairs_mut().append_pair("digest", digest);
        u
    }

    fn file_body(path: &std::path::Path, offset: u64, len: u64) -> Result<reqwest::Body> {
        let mut f =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset))?;
        let f = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(f), len);
        let bar = crate::progress::uploads();
        let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 << 10).inspect(move |c| {
            if let Ok(b) = c {
                bar.inc(b.len() as u64);
            }
        });
        Ok(reqwest::Body::wrap_stream(stream))
    }

    async fn put_file(
        &self,
        loc: &Url,
        digest: &str,
        path: &std::path::Path,
        size: u64,
    ) -> Result<()> {
        let url = Self::with_digest(loc, digest);
        let what = format!("upload of {digest}");
        let resp = self
            .send(&what, |c| {
                Ok(c.put(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size)
                    .body(Self::file_body(path, 0, size)?))
            })
            .await?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(self.fail(&what, resp).await);
        }
        Ok(())
    }

    async fn put_chunked(
        &self,
        mut loc: Url,
        digest: &str,
        path: &std::path::Path,
        size: u64,
        chunk: u64,
    ) -> Result<()> {
        let what = format!("chunked upload of {digest}");
        let mut offset = 0u64;
        while offset < size {
            let len = chunk.min(size - offset);
            let (l, o) = (loc.clone(), offset);
            let resp = self
                .send(&what, |c| {
                    Ok(c.request(Method::PATCH, l.clone())
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_RANGE, format!("{}-{}", o, o + len - 1))
                        .header(CONTENT_LENGTH, len)
                        .body(Self::file_body(path, o, len)?))
                })
                .await?;
            match resp.status() {
                StatusCode::ACCEPTED => {
                    loc = self.location(&l, &resp)?;
                    offset += len;
                }
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    // The registry has a different idea of the offset: ask and resume from there.
                    let st = self.send(&what, |c| Ok(c.get(l.clone()))).await?;
                    let range = st
                        .headers()
                        .get(RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|r| r.rsplit('-').next())
                        .and_then(|e| e.parse::<u64>().ok());
                    match range {
                        Some(end) if st.status() == StatusCode::NO_CONTENT => {
                            loc = self.location(&l, &st).unwrap_or(l);
                            offset = end + 1;
                        }
                        _ => {
                            return Err(reg_err(format!(
                                "registry {}: {what}: cannot resume after 416",
                                self.host
                            )))
                        }
                    }
                }
                _ => return Err(self.fail(&what, resp).await),
            }
        }
        let url = Self::with_digest(&loc, digest);
        let resp = self
            .send(&what, |c| Ok(c.put(url.clone()).header(CONTENT_LENGTH, 0)))
            .await?;
        if !resp.status().is_success() {
            return Err(self.fail(&what, resp).await);
        }
        Ok(())
    }

    /// Streams a blob from another registry straight into this one (no local copy). A failure
    /// re-fetches from the source, since a streamed body cannot be replayed.
    pub async fn copy_blob_from(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        src: &Registry,
        src_repo: &str,
        session: Option<(Url, u64)>,
    ) -> Result<()> {
        self.transfer(repo, digest, size, session, |session| async move {
            let (loc, _) = match session {
                Some(s) => s,
                None => self.start_upload(repo).await?,
            };
            let resp = src.get_blob(src_repo, digest).await?;
            let body = std::sync::Mutex::new(Some(reqwest::Body::wrap_stream(
                resp.bytes_stream().inspect(|c| {
                    if let Ok(b) = c {
                        crate::progress::uploads().inc(b.len() as u64);
                    }
                }),
            )));
            let url = Self::with_digest(&loc, digest);
            let what = format!("copy of {digest} from {}", src.host);
            let put = self
                .send(&what, |c| {
                    let b = body
                        .lock()
                        .expect("body")
                        .take()
                        .ok_or_else(|| reg_err(format!("{what}: interrupted")))?;
                    Ok(c.put(url.clone())
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, size)
                        .body(b))
                })
                .await?;
            if !put.status().is_success() {
                return Err(self.fail(&what, put).await);
            }
            Ok(())
        })
        .await
    }

    /// PUT a manifest by digest or tag, with the exact bytes whose digest we computed.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<()> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"));
        let what = format!("manifest {}/{repo}:{reference}", self.host);
        let body = bytes::Bytes::copy_from_slice(bytes);
        let mut backoff = Backoff::new();
        loop {
            let resp = self
                .send(&what, |c| {
                    Ok(c.put(url.clone())
                        .header(CONTENT_TYPE, media_type)
                        .body(body.clone()))
                })
                .await?;
            if resp.status().is_success() {
                return Ok(());
            }
            let err = self.fail(&what, resp).await;
            // Another builder may have put the same bytes at the same time (the loser can get
            // a 400 from some registries): what the reference holds now decides.
            if self.manifest_digest(repo, reference).await.as_deref()
                == Some(crate::oci::sha256_digest(bytes).as_str())
            {
                tracing::info!("{what}: the registry holds these bytes now ({err:#})");
                return Ok(());
            }
            // We hashed these bytes ourselves, so a DIGEST_INVALID is the registry's own state
            // at that instant: distribution 2.8 checks every referenced blob's link file, which
            // another builder's push of the same blob rewrites in place (empty for a moment).
            if !err.to_string().contains("DIGEST_INVALID") || !backoff.wait(None).await {
                return Err(err);
            }
            tracing::warn!("{what}: {err:#}; another builder is writing the same blobs, retrying");
        }
    }

    /// The digest a manifest reference resolves to now, best effort: None also when the
    /// registry does not answer ([`Registry::tag_digest`] tells the two apart).
    pub async fn manifest_digest(&self, repo: &str, reference: &str) -> Option<String> {
        self.tag_digest(repo, reference).await.ok().flatten()
    }

    /// The digest `repo:tag` names now: None when the registry says there is no such manifest
    /// (404), so that a caller guarding the tag never takes an unanswered request for "absent".
    ///
    /// Errors: the registry cannot be reached (after the usual retries) or answers anything
    /// else (naming the registry and the reference).
    pub async fn tag_digest(&self, repo: &str, tag: &str) -> Result<Option<String>> {
        let url = self.url(&format!("v2/{repo}/manifests/{tag}"));
        let what = format!("manifest {}/{repo}:{tag}", self.host);
        let resp = self
            .send(&what, |c| {
                Ok(c.head(url.clone()).header("Accept", ACCEPT_MANIFESTS))
            })
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => match resp
                .headers()
                .get("Docker-Content-Digest")
                .and_then(|v| v.to_str().ok())
            {
                Some(d) => Ok(Some(d.to_string())),
                // The header is optional: the manifest's own bytes say it then.
                None => Ok(Some(self.get_manifest(repo, tag).await?.2)),
            },
            _ => Err(self.fail(&what, resp).await),
        }
    }

    /// The referrers API (distribution-spec 1.1, `GET /v2/<repo>/referrers/<digest>`): the
    /// index of manifests whose `subject` is `digest`, or `None` where the registry does not
    /// have the API (404, as CNCF distribution 2.8 answers) and clients keep the index
    /// themselves under the referrers tag.
    pub async fn referrers(&self, repo: &str, digest: &str) -> Result<Option<Index>> {
        let url = self.url(&format!("v2/{repo}/referrers/{digest}"));
        let what = format!("referrers of {}/{repo}@{digest}", self.host);
        let resp = self.send(&what, |c| Ok(c.get(url.clone()))).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.fail(&what, resp).await);
        }
        let bytes = resp.bytes().await.map_err(|e| self.net_error(&what, &e))?;
        // A 200 that is not an index (a proxy's page) means no API, not an error.
        Ok(serde_json::from_slice::<Index>(&bytes)
            .ok()
            .filter(|i| i.schema_version == 2))
    }

    /// Tags of a repository (empty if the repository does not exist yet).
    pub async fn list_tags(&self, repo: &str) -> Result<Vec<String>> {
        let url = self.url(&format!("v2/{repo}/tags/list"));
        let what = format!("tags of {}/{repo}", self.host);
        let resp = self.send(&what, |c| Ok(c.get(url.clone()))).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !resp.status().is_success() {
            return Err(self.fail(&what, resp).await);
        }
        let v: serde_json::Value = resp.json().await.map_err(|e| anyhow!("{what}: {e}"))?;
        Ok(v.get("tags")
            .and_then(|t| t.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        match parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#,
        ) {
            Some(Challenge::Bearer { realm, service }) => {
                assert_eq!(realm, "https://auth.docker.io/token");
                assert_eq!(service.as_deref(), Some("registry.docker.io"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_challenge(r#"Basic realm="flops-rig""#),
            Some(Challenge::Basic)
        ));
        assert!(parse_challenge("Negotiate").is_none());
    }

    #[test]
    fn locations_resolve_relative_and_absolute() {
        let req = Url::parse("https://r.example/v2/a/blobs/uploads/").unwrap();
        assert_eq!(
            req.join("/v2/a/blobs/uploads/x?_state=1").unwrap().as_str(),
            "https://r.example/v2/a/blobs/uploads/x?_state=1"
        );
        assert_eq!(
            req.join("https://other/up/1").unwrap().as_str(),
            "https://other/up/1"
        );
        let d = Registry::with_digest(&Url::parse("https://r/u?_state=1").unwrap(), "sha256:ab");
        assert_eq!(d.as_str(), "https://r/u?_state=1&digest=sha256%3Aab");
    }
}
