//! Where package code runs: uv's resolution (which prepares metadata from sdists by running
//! their build backends) and sdist builds. That code is third-party and has the network, so it
//! must not see the builder's secrets (the push credentials of the target registry, tokens in
//! the environment, MQTT settings):
//!
//! - **Environment from an allowlist** ([`ALLOWED_ENV`]): PATH, locale, proxy and TLS
//!   certificate variables, and the uv settings the builder sets itself; nothing else.
//!   `HOME`, `TMPDIR` and the XDG dirs point into a fresh temporary directory.
//! - **Landlock** (Linux ≥ 5.13, no privileges needed, so it works in an unprivileged
//!   containerd task with a read-only root filesystem): the child may read only system and
//!   interpreter directories, uv and its cache, and its inputs; it may write only its
//!   temporary directory, its work directory and uv's cache. A directory that holds a
//!   credential file of the builder's (docker/podman auth files) is never allowed, and neither
//!   is `/proc` (where the builder's own `/proc/<pid>/environ` is readable by its user:
//!   Landlock's ptrace scoping does not cover it; uv and the build backends run without it).
//!
//! The restriction is applied by the builder's own binary, re-executed as
//! `flops-image-builder __package-sandbox --ro P… --rw P… -- PROGRAM ARGS…`: a fresh,
//! single-threaded process restricts itself and then `exec`s the program, so nothing runs
//! between `fork` and `exec` in the multi-threaded builder. Where Landlock is unavailable
//! (old kernel, or a seccomp profile that blocks its system calls) the child runs with the
//! allowlisted environment only, and the log and the report say `sandbox: none`; `--no-build`
//! stays the strict choice.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The hidden first argument that turns the builder into the sandbox launcher.
pub const SANDBOX_ARG: &str = "__package-sandbox";

/// Variables passed to package code when set (exact names, then `LC_*`).
pub const ALLOWED_ENV: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "TZ",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    // uv settings: behaviour, never credentials (index URLs go on uv's command line).
    "UV_PYTHON_DOWNLOADS",
    "UV_PYTHON_PREFERENCE",
    "UV_NATIVE_TLS",
    "UV_SYSTEM_CERTS",
    "UV_OFFLINE",
    "UV_HTTP_TIMEOUT",
    "UV_CONCURRENT_DOWNLOADS",
    "UV_CONCURRENT_BUILDS",
    "UV_INDEX_STRATEGY",
];

/// System directories package code may read (and execute from).
const SYSTEM_READ: &[&str] = &[
    "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/opt",
];

/// How package code is confined on this machine; probed once per process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confinement {
    /// Landlock enforced by the kernel.
    Landlock,
    /// No file-system restriction (the reason why); the environment is still allowlisted.
    None(String),
}

impl Confinement {
    /// `landlock` or `none`, as the report says it.
    pub fn name(&self) -> &'static str {
        match self {
            Confinement::Landlock => "landlock",
            Confinement::None(_) => "none",
        }
    }
}

/// What the report says of package code: how often it ran in this build, for which packages,
/// and how it was confined (`landlock` or `none`).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PackageCode {
    pub runs: u64,
    pub packages: Vec<String>,
    pub sandbox: &'static str,
}

static RUNS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static COUNT: AtomicU64 = AtomicU64::new(0);

/// Counts `n` runs of package code for `package`.
pub fn count_runs(package: &str, n: u64) {
    if n == 0 {
        return;
    }
    COUNT.fetch_add(n, Ordering::Relaxed);
    let mut p = RUNS.lock().expect("not poisoned");
    if !p.iter().any(|x| x == package) {
        p.push(package.to_string());
    }
}

/// Package code runs so far in this process, for the report.
pub fn report() -> PackageCode {
    let mut packages = RUNS.lock().expect("not poisoned").clone();
    packages.sort();
    PackageCode {
        runs: COUNT.load(Ordering::Relaxed),
        packages,
        sandbox: confinement().name(),
    }
}

/// The confinement this machine gives; probed once (a run of the launcher that restricts
/// itself and says how it went).
pub fn confinement() -> &'static Confinement {
    static C: OnceLock<Confinement> = OnceLock::new();
    C.get_or_init(probe)
}

/// Says once per process, before package code first runs, when it runs unconfined.
fn warn_unconfined() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if let Confinement::None(why) = confinement() {
        ONCE.call_once(|| tracing::warn!("sandbox: none ({why}): package code runs with an allowlisted environment only; --no-build refuses to run it"));
    }
}

fn probe() -> Confinement {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return Confinement::None(format!("cannot find the builder's binary: {e}")),
    };
    match Command::new(exe)
        .args([SANDBOX_ARG, "--probe"])
        .env_clear()
        .output()
    {
        Ok(o) if o.status.success() && o.stdout.starts_with(b"landlock") => Confinement::Landlock,
        Ok(o) => Confinement::None(
            String::from_utf8_lossy(if o.stdout.is_empty() {
                &o.stderr
            } else {
                &o.stdout
            })
            .trim()
            .to_string(),
        ),
        Err(e) => Confinement::None(format!("cannot run the sandbox probe: {e}")),
    }
}

/// A fresh temporary home for one run of package code, and the command that runs in it.
pub struct Sandbox {
    home: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Result<Self> {
        let home = tempfile::Builder::new()
            .prefix("flops-package-code-")
            .tempdir()
            .context("creating a temporary home for package code")?;
        for d in ["tmp", "cache", "config", "data", "state"] {
            std::fs::create_dir_all(home.path().join(d))?;
        }
        Ok(Self { home })
    }

    /// `program` as package code: allowlisted environment, this sandbox's home, and (where
    /// Landlock is available) read access to `read` and write access to `write` besides the
    /// system and interpreter directories, uv's cache and the temporary home.
    pub fn command(&self, program: &Path, read: &[&Path], write: &[&Path]) -> Command {
        warn_unconfined();
        let home = self.home.path();
        let uv_cache = uv_cache_dir();
        // Landlock rules name existing directories: a cache uv has not made yet is made here.
        let _ = std::fs::create_dir_all(&uv_cache);
        let mut cmd = match confinement() {
            Confinement::Landlock => {
                let mut ro: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
                ro.extend(interpreter_dirs());
                ro.extend(program.parent().map(Path::to_path_buf));
                ro.extend(
                    std::fs::canonicalize(program)
                        .ok()
                        .and_then(|p| p.parent().map(Path::to_path_buf)),
                );
                ro.extend(uv_python_dir());
                ro.extend(read.iter().map(|p| p.to_path_buf()));
                let mut rw: Vec<PathBuf> =
                    vec![home.to_path_buf(), uv_cache.clone(), "/dev".into()];
                rw.extend(write.iter().map(|p| p.to_path_buf()));
                let secrets = credential_files();
                let keep = |p: &PathBuf| {
                    let covers = secrets.iter().find(|s| s.starts_with(p));
                    if let Some(s) = covers {
                        tracing::warn!(
                            "sandbox: {} is not opened to package code (it holds {})",
                            p.display(),
                            s.display()
                        );
                    }
                    covers.is_none()
                };
                ro.retain(keep);
                rw.retain(keep);
                let exe = std::env::current_exe().expect("probed above");
                let mut c = Command::new(exe);
                c.arg(SANDBOX_ARG);
                for p in &ro {
                    c.arg("--ro").arg(p);
                }
                for p in &rw {
                    c.arg("--rw").arg(p);
                }
                c.arg("--").arg(program);
                c
            }
            Confinement::None(_) => Command::new(program),
        };
        cmd.env_clear();
        for (k, v) in std::env::vars_os() {
            let name = k.to_string_lossy();
            if ALLOWED_ENV.contains(&name.as_ref()) || name.starts_with("LC_") {
                cmd.env(&k, v);
            }
        }
        cmd.env("HOME", home)
            .env("TMPDIR", home.join("tmp"))
            .env("XDG_CACHE_HOME", home.join("cache"))
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_STATE_HOME", home.join("state"))
            .env("UV_CACHE_DIR", &uv_cache);
        if let Some(p) = uv_python_dir() {
            cmd.env("UV_PYTHON_INSTALL_DIR", p);
        }
        cmd
    }
}

/// uv's cache as the builder sees it (kept for package code: a warm cache means package code
/// runs less often).
fn uv_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("UV_CACHE_DIR").filter(|v| !v.is_empty()) {
        return d.into();
    }
    xdg("XDG_CACHE_HOME", ".cache").join("uv")
}

/// Where uv finds the Pythons it manages, as the builder sees it, if that exists.
fn uv_python_dir() -> Option<PathBuf> {
    let d = std::env::var_os("UV_PYTHON_INSTALL_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| xdg("XDG_DATA_HOME", ".local/share").join("uv/python"));
    d.exists().then_some(d)
}

fn xdg(var: &str, under_home: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(under_home))
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/nonexistent"), PathBuf::from)
}

/// The directories of PATH and their prefixes (`/root/.pyenv/shims` → `/root/.pyenv`), where
/// interpreters and their libraries live; never `/` or a home directory itself.
fn interpreter_dirs() -> Vec<PathBuf> {
    let home = home();
    let mut out = Vec::new();
    for d in std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
    {
        if !d.is_absolute() {
            continue;
        }
        if let Some(parent) = d.parent() {
            if parent != Path::new("/") && parent != home && parent != Path::new("/home") {
                out.push(parent.to_path_buf());
            }
        }
        out.push(d);
    }
    out
}

/// The credential files the builder may hold (they need not exist): docker's config.json and
/// the containers auth files.
pub fn credential_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(d).join("config.json"));
    }
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
        out.push(f.into());
    }
    out.push(home().join(".docker/config.json"));
    out.push(xdg("XDG_CONFIG_HOME", ".config").join("containers/auth.json"));
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(d).join("containers/auth.json"));
    }
    out
}

/// The launcher (`flops-image-builder __package-sandbox …`): restricts itself with Landlock
/// and `exec`s the program; `--probe` only says whether the restriction holds. Returns the
/// exit code when it cannot exec.
pub fn launcher_main(args: &[OsString]) -> i32 {
    match launch(args) {
        Ok(()) => 0,
        Err(e) => {
            println!("{e:#}");
            eprintln!("flops-image-builder sandbox: {e:#}");
            126
        }
    }
}

fn launch(args: &[OsString]) -> Result<()> {
    use landlock::{
        path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr,
        RulesetStatus, ABI,
    };
    let (mut ro, mut rw, mut program) = (Vec::new(), Vec::new(), None);
    let mut it = args.iter();
    let mut probe = false;
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--probe") => probe = true,
            Some("--ro") => ro.push(PathBuf::from(it.next().context("--ro needs a path")?)),
            Some("--rw") => rw.push(PathBuf::from(it.next().context("--rw needs a path")?)),
            Some("--") => {
                program = Some(it.by_ref().cloned().collect::<Vec<_>>());
                break;
            }
            _ => bail!("unknown sandbox argument {a:?}"),
        }
    }
    // The newest ABI this crate knows, best effort: the kernel enforces what it has.
    let abi = ABI::V5;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(&ro, AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(&rw, AccessFs::from_all(abi)))?
        .restrict_self()
        .context("landlock")?;
    if status.ruleset == RulesetStatus::NotEnforced {
        bail!("the kernel does not enforce Landlock");
    }
    if probe {
        println!("landlock {:?}", status.ruleset);
        return Ok(());
    }
    let argv = program
        .filter(|p| !p.is_empty())
        .context("no program to run")?;
    let err = std::os::unix::process::CommandExt::exec(Command::new(&argv[0]).args(&argv[1..]));
    bail!("cannot run {:?}: {err}", argv[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_prefixes_but_never_root_or_home() {
        let home = home();
        for d in interpreter_dirs() {
            assert_ne!(d, Path::new("/"));
            assert_ne!(d, home);
        }
    }
}
