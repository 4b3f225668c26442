//! Registry credentials from docker's config.json (or `REGISTRY_AUTH_FILE`), as docker,
//! podman and crane read them. The secret never reaches a log line: `Debug` is redacted.

use anyhow::{Context, Result};
use base64::Engine as _;
use serde_json::Value;
use std::path::PathBuf;

#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (docker's `identitytoken`).
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// Config files to search, in docker's precedence order.
fn config_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        files.push(PathBuf::from(dir).join("config.json"));
    } else if let Some(home) = std::env::var_os("HOME") {
        files.push(PathBuf::from(home).join(".docker/config.json"));
    }
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(f));
    }
    files
}

/// `https://host/v1/` and friends → `host`.
fn normalise_key(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// Credentials for a registry host (`host[:port]`, `docker.io` for Docker Hub), if any are configured.
pub fn lookup(registry: &str) -> Result<Option<Credentials>> {
    let host = if registry == "docker.io" {
        "index.docker.io"
    } else {
        registry
    };
    for file in config_files() {
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        let cfg: Value = serde_json::from_slice(&bytes).map_err(|e| {
            crate::error::bad_input(format!("{}: not valid JSON: {e}", file.display()))
        })?;
        if let Some(helper) = cfg
            .pointer("/credHelpers")
            .and_then(|h| h.get(host).or_else(|| h.get(registry)))
            .and_then(Value::as_str)
        {
            return helper_get(helper, host);
        }
        if let Some(auths) = cfg.get("auths").and_then(Value::as_object) {
            if let Some(entry) = auths
                .iter()
                .find(|(k, _)| normalise_key(k) == host)
                .map(|(_, v)| v)
            {
                if let Some(c) = from_entry(entry, &file)? {
                    return Ok(Some(c));
                }
            }
        }
        if let Some(store) = cfg.get("credsStore").and_then(Value::as_str) {
            if let Some(c) = helper_get(store, host)? {
                return Ok(Some(c));
            }
        }
    }
    Ok(None)
}

fn from_entry(entry: &Value, file: &std::path::Path) -> Result<Option<Credentials>> {
    if let Some(tok) = entry
        .get("identitytoken")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        return Ok(Some(Credentials::IdentityToken(tok.to_string())));
    }
    if let Some(auth) = entry
        .get("auth")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                crate::error::bad_input(format!(
                    "{}: an \"auth\" entry is not base64 of user:password",
                    file.display()
                ))
            })?;
        let (u, p) = decoded.split_once(':').ok_or_else(|| {
            crate::error::bad_input(format!(
                "{}: an \"auth\" entry is not user:password",
                file.display()
            ))
        })?;
        return Ok(Some(Credentials::Basic {
            username: u.to_string(),
            password: p.to_string(),
        }));
    }
    if let (Some(u), Some(p)) = (
        entry.get("username").and_then(Value::as_str),
        entry.get("password").and_then(Value::as_str),
    ) {
        return Ok(Some(Credentials::Basic {
            username: u.into(),
            password: p.into(),
        }));
    }
    Ok(None)
}

/// Runs `docker-credential-<helper> get` with the host on stdin.
fn helper_get(helper: &str, host: &str) -> Result<Option<Credentials>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let bin = format!("docker-credential-{helper}");
    let mut child = Command::new(&bin)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            crate::error::bad_input(format!(
                "credential helper {bin} (from docker config) cannot run: {e}"
            ))
        })?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(host.as_bytes())?;
    let out = child
        .wait_with_output()
        .with_context(|| format!("running {bin}"))?;
    if !out.status.success() {
        return Ok(None); // "credentials not found" is a normal answer
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{bin} printed invalid JSON"))?;
    let user = v
        .get("Username")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let secret = v
        .get("Secret")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok(Some(if user == "<token>" {
        Credentials::IdentityToken(secret)
    } else {
        Credentials::Basic {
            username: user.to_string(),
            password: secret,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_normalise() {
        assert_eq!(
            normalise_key("https://index.docker.io/v1/"),
            "index.docker.io"
        );
        assert_eq!(normalise_key("127.0.0.1:5443"), "127.0.0.1:5443");
    }

    #[test]
    fn auth_entries_decode_and_debug_redacts() {
        let e = serde_json::json!({"auth": "cmlnOnJpZ3Bhc3M="});
        let c = from_entry(&e, std::path::Path::new("x")).unwrap().unwrap();
        assert_eq!(
            c,
            Credentials::Basic {
                username: "rig".into(),
                password: "rigpass".into()
            }
        );
        assert!(!format!("{c:?}").contains("rigpass"));
    }
}
