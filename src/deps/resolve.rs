//! Resolution: the doctored requirements (plus the FL runtime's) → a PEP 751 pylock.toml,
//! by running uv (pinned version) as a subprocess. Everything after the lock is Rust.

use crate::error::bad_input;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The uv version the builder is tested with (also installed by scripts/rig.sh and the Dockerfile).
pub const UV_VERSION: &str = include_str!("../../base-layers/uv-version");

/// The FL learner runtime's requirements, added to every lock.
pub const RUNTIME_REQUIREMENTS: &str =
    include_str!("../../base-layers/fl-learner/requirements.txt");

#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    /// `--uv PATH`; else `uv` on PATH.
    pub uv: Option<PathBuf>,
    /// `--index-url`; uv also reads UV_INDEX_URL / PIP_INDEX_URL from the environment.
    pub index_url: Option<String>,
}

/// The uv binary to use; a missing uv says how to install it.
pub fn find_uv(explicit: Option<&Path>) -> Result<PathBuf> {
    let pin = UV_VERSION.trim();
    let how = format!("install it with `python3 -m pip install uv=={pin}` (or pass --uv PATH)");
    let candidate = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("uv"))
                    .find(|p| p.is_file())
            })
            .ok_or_else(|| {
                bad_input(format!(
                    "uv is needed to resolve dependencies but is not on PATH: {how}"
                ))
            })?,
    };
    let out = Command::new(&candidate)
        .arg("--version")
        .output()
        .map_err(|e| {
            bad_input(format!(
                "cannot run uv at {}: {e}; {how}",
                candidate.display()
            ))
        })?;
    let version = String::from_utf8_lossy(&out.stdout);
    if version.split_whitespace().nth(1).is_none_or(|v| v != pin) {
        tracing::warn!(
            "{} is {}; the builder is tested with uv {pin}",
            candidate.display(),
            version.trim()
        );
    }
    Ok(candidate)
}

/// All requirement lines for the lock: the repo's (doctored) then the runtime's.
pub fn lock_input(requirements: &[String]) -> String {
    let mut s: String = requirements.iter().map(|r| format!("{r}\n")).collect();
    s.push_str(RUNTIME_REQUIREMENTS);
    s
}

/// Key of a lock: everything the resolution depends on that we control. The same repo
/// requirements give the same lock on any node and any day (so the same commit gives the same
/// image), until the inputs change or `--refresh-lock` asks for a new resolution.
pub fn lock_key(input: &str, python: &str, opts: &ResolveOptions) -> String {
    let material = format!(
        "lock v1\n{python}\n{}\n{}\n{input}",
        opts.index_url.as_deref().unwrap_or(""),
        UV_VERSION.trim()
    );
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(material.as_bytes()))
}

/// uv's resolver explanation on one line (its tree drawing and line breaks removed).
fn one_line(stderr: &str) -> String {
    let text: String = stderr
        .chars()
        .filter(|c| !matches!(c, '╰' | '─' | '▶' | '│' | '├' | '└'))
        .collect();
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    text.trim_start_matches("×").trim().to_string()
}

/// Writes requirements to a file and runs `uv pip compile --universal` into pylock.toml text.
pub fn resolve(input: &str, python: &str, opts: &ResolveOptions) -> Result<String> {
    let uv = find_uv(opts.uv.as_deref())?;
    let dir = tempfile::Builder::new()
        .prefix("flops-resolve-")
        .tempdir()?;
    let req = dir.path().join("requirements.in");
    let out = dir.path().join("pylock.toml");
    std::fs::write(&req, input)?;
    let mut cmd = Command::new(&uv);
    cmd.args([
        "pip",
        "compile",
        "--universal",
        "--quiet",
        "--no-header",
        "--format",
        "pylock.toml",
        "--python-version",
        python,
        // The system's root certificates (this network re-signs TLS with a CA only there),
        // also where SSL_CERT_FILE is not set, as in the builder's own image.
        "--system-certs",
    ])
    .arg(&req)
    .arg("-o")
    .arg(&out);
    // uv reads UV_INDEX_URL itself; pip's PIP_INDEX_URL is honoured here for pip users.
    let pip_index = std::env::var("PIP_INDEX_URL").ok().filter(|_| {
        std::env::var_os("UV_INDEX_URL").is_none() && std::env::var_os("UV_DEFAULT_INDEX").is_none()
    });
    if let Some(i) = opts.index_url.as_ref().or(pip_index.as_ref()) {
        cmd.args(["--index-url", i]);
    }
    tracing::info!(
        "resolving {} requirements with uv for Python {python}",
        input
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .count()
    );
    let o = cmd
        .output()
        .with_context(|| format!("running {}", uv.display()))?;
    if !o.status.success() {
        let why = one_line(&String::from_utf8_lossy(&o.stderr));
        return Err(bad_input(format!(
            "dependency resolution failed for Python {python}: {why}"
        )));
    }
    std::fs::read_to_string(&out).context("reading uv's pylock.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uv_errors_become_one_line() {
        let e = "  × No solution found when resolving dependencies:\n  ╰─▶ Because you require numpy==1.26.4 and numpy==2.0.0, we can conclude that your requirements are unsatisfiable.\n";
        assert_eq!(one_line(e), "No solution found when resolving dependencies: Because you require numpy==1.26.4 and numpy==2.0.0, we can conclude that your requirements are unsatisfiable.");
    }

    #[test]
    fn runtime_requirements_are_appended() {
        let s = lock_input(&["numpy==1.26.4".into()]);
        assert!(s.starts_with("numpy==1.26.4\n") && s.contains("flwr==1.8.0"));
        assert_eq!(UV_VERSION.trim().split('.').count(), 3);
    }
}
