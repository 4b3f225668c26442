//! Resolution: the doctored requirements (plus the FL runtimes') → one PEP 751 pylock.toml,
//! by running uv (pinned version) as a subprocess. Everything after the lock is Rust.
//!
//! uv resolves once per image platform for exactly the image's Python (`--python-version X.Y
//! --python-platform <arch>-manylinux_<glibc>`), never for Pythons or platforms the image does
//! not have (a universal resolution also solves `python_full_version >= '3.12'` splits, which
//! failed specs that are fine on 3.11). The per-platform results are merged into one lock whose
//! entries carry a `platform_machine` marker where the platforms differ.
//!
//! Images of one plan share the lock: requirement *sets* are cumulative (learner ⊂
//! aggregator); the full set is resolved, and each smaller set again with the full lock's pins
//! as constraints, so a package has the same version in every image. The smaller sets' package
//! names go into the lock's `[tool.flops-image-builder.subsets]` table (PEP 751 tool table).

pub mod sandbox;
pub mod sdist;
pub mod uv;

use crate::error::{bad_input, Unsatisfiable};
use anyhow::{Context, Result};
use pep508_rs::pep440_rs::Version;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The uv version the builder is tested with (also installed by scripts/rig.sh and the Dockerfile).
pub const UV_VERSION: &str = include_str!("../../base-layers/uv-version");

/// The FL learner runtime's requirements, added to every FL image's lock.
pub const RUNTIME_REQUIREMENTS: &str =
    include_str!("../../base-layers/fl-learner/requirements.txt");

/// The tool table of the lock holding the smaller sets' package names.
const TOOL: &str = "flops-image-builder";

#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    /// `--uv PATH`; else `uv` on PATH.
    pub uv: Option<PathBuf>,
    /// `--index-url`; else UV_INDEX_URL / UV_DEFAULT_INDEX / PIP_INDEX_URL (see
    /// [`ResolveOptions::effective_index`]).
    pub index_url: Option<String>,
    /// More indexes (a spec's `--extra-index-url`).
    pub extra_index_urls: Vec<String>,
    /// Never build an sdist, not even for its metadata (`--no-build`).
    pub no_build: bool,
    /// A pin the code imports that conflicts fails the build instead of moving within its
    /// major version (`--strict-pins`).
    pub strict_pins: bool,
    /// `name==version` lines the resolver keeps to without adding them (uv `-c`).
    pub constraints: Vec<String>,
}

impl ResolveOptions {
    /// The index the builder and uv use: `--index-url`, else UV_INDEX_URL / PIP_INDEX_URL,
    /// else PyPI.
    pub fn effective_index(&self) -> String {
        self.index_url
            .clone()
            .or_else(|| std::env::var("UV_INDEX_URL").ok())
            .or_else(|| std::env::var("UV_DEFAULT_INDEX").ok())
            .or_else(|| std::env::var("PIP_INDEX_URL").ok())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "https://pypi.org/simple".into())
    }

    /// The extra indexes: the spec's, then UV_EXTRA_INDEX_URL / PIP_EXTRA_INDEX_URL
    /// (space-separated lists).
    pub fn effective_extra_indexes(&self) -> Vec<String> {
        let mut out = self.extra_index_urls.clone();
        for var in ["UV_EXTRA_INDEX_URL", "PIP_EXTRA_INDEX_URL"] {
            if let Ok(v) = std::env::var(var) {
                out.extend(v.split_whitespace().map(str::to_string));
            }
        }
        out.dedup();
        out
    }
}

/// One image platform to resolve for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveTarget {
    /// `linux/amd64` or `linux/arm64`.
    pub platform: String,
    /// The wheel architecture: `x86_64` or `aarch64`.
    pub arch: String,
    /// glibc bound of the base (manylinux tags up to it).
    pub glibc: (u32, u32),
}

impl ResolveTarget {
    fn uv_platform(&self) -> String {
        format!("{}-manylinux_{}_{}", self.arch, self.glibc.0, self.glibc.1)
    }

    /// The PEP 508 marker that holds on this platform only.
    pub fn marker(&self) -> String {
        format!("platform_machine == '{}'", self.arch)
    }
}

/// What `uv --version` at `uv` says, e.g. `0.13.9`; the error when it cannot run.
pub(crate) fn uv_version(uv: &Path) -> std::io::Result<String> {
    let out = Command::new(uv).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .nth(1)
        .unwrap_or(text.trim())
        .to_string())
}

/// The uv binary to use; a missing uv says how to install it.
pub fn find_uv(explicit: Option<&Path>) -> Result<PathBuf> {
    let pin = UV_VERSION.trim();
    let how = format!("install it with `python3 -m pip install uv=={pin}` (or pass --uv PATH)");
    let candidate = match explicit.map(Path::to_path_buf).or_else(uv::obtained) {
        Some(p) => p,
        // Exit 1: the machine lacks a tool, the input is fine.
        None => crate::wheels::bytecode::which("uv").ok_or_else(|| {
            anyhow::anyhow!("uv is needed to resolve dependencies but is not on PATH: {how}")
        })?,
    };
    let version = uv_version(&candidate).map_err(|e| {
        bad_input(format!(
            "cannot run uv at {}: {e}; {how}",
            candidate.display()
        ))
    })?;
    if version != pin {
        tracing::warn!(
            "{} is uv {version}; the builder is tested with uv {pin}",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// Requirement lines for the lock: the repo's (doctored) then the runtimes'.
pub fn lock_input(requirements: &[String], runtimes: &[&str]) -> String {
    let mut s: String = requirements.iter().map(|r| format!("{r}\n")).collect();
    for r in runtimes {
        s.push_str(r);
        if !s.ends_with('\n') {
            s.push('\n');
        }
    }
    s
}

/// Key of a lock: everything the resolution depends on that we control. The same repo
/// requirements give the same lock on any node and any day (so the same commit gives the same
/// image), until the inputs change or `--refresh-lock` asks for a new resolution.
pub fn lock_key(
    sets: &[(&str, String)],
    python: &str,
    targets: &[ResolveTarget],
    opts: &ResolveOptions,
) -> String {
    // v3: locks carry what resolution fixed (numpy-abi, moved pins); older ones are not reused.
    let mut material = format!(
        "lock v3\n{python}\n{}\n{}\n{}\n{}\n",
        opts.effective_index(),
        opts.extra_index_urls.join(" "),
        opts.no_build,
        UV_VERSION.trim()
    );
    // Only when set, so that the keys of locks made without it stay as they were.
    if opts.strict_pins {
        material.push_str("strict-pins\n");
    }
    if !opts.constraints.is_empty() {
        material.push_str(&format!("constraints\n{}\n", opts.constraints.join("\n")));
    }
    for t in targets {
        material.push_str(&format!("{} {}\n", t.uv_platform(), t.platform));
    }
    for (name, input) in sets {
        material.push_str(&format!("[{name}]\n{input}\n"));
    }
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(material.as_bytes()))
}

/// uv's resolver explanation on one line (its tree drawing and line breaks removed).
fn one_line(stderr: &str) -> String {
    let text: String = stderr
        .chars()
        .filter(|c| !matches!(c, '╰' | '─' | '▶' | '│' | '├' | '└'))
        .collect();
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = text.trim_start_matches("×").trim();
    // uv's own `error:` prefix; ours comes in front of the whole message.
    text.strip_prefix("error:")
        .unwrap_or(text)
        .trim()
        .to_string()
}

/// One `uv pip compile` for one platform; returns the lock as a TOML table.
fn compile(
    uv: &Path,
    dir: &Path,
    input: &str,
    constraints: Option<&str>,
    python: &str,
    target: &ResolveTarget,
    opts: &ResolveOptions,
) -> Result<toml::Table> {
    let req = dir.join("requirements.in");
    let out = dir.join("pylock.toml");
    std::fs::write(&req, input)?;
    let _ = std::fs::remove_file(&out);
    // Package code may run here (metadata of sdists): in the sandbox, with uv's log on, which
    // names each metadata preparation.
    let sandbox = crate::resolve::sandbox::Sandbox::new()?;
    let mut cmd = sandbox.command(uv, &[], &[dir]);
    cmd.args([
        "pip",
        "compile",
        "-v",
        "--no-header",
        "--format",
        "pylock.toml",
        "--python-version",
        python,
        "--python-platform",
        &target.uv_platform(),
        // The system's root certificates (this network re-signs TLS with a CA only there),
        // also where SSL_CERT_FILE is not set, as in the builder's own image.
        "--system-certs",
    ]);
    if !opts.constraints.is_empty() {
        let path = dir.join("environment-constraints.txt");
        std::fs::write(&path, opts.constraints.join("\n") + "\n")?;
        cmd.arg("-c").arg(path);
    }
    if let Some(c) = constraints {
        let path = dir.join("constraints.txt");
        std::fs::write(&path, c)?;
        cmd.arg("-c").arg(path);
    }
    cmd.arg(&req).arg("-o").arg(&out);
    // The sandbox passes no index variables: the indexes go on the command line.
    cmd.args(["--index-url", &opts.effective_index()]);
    for i in opts.effective_extra_indexes() {
        cmd.args(["--extra-index-url", &i]);
    }
    if opts.no_build {
        cmd.arg("--no-build");
    }
    let o = cmd
        .output()
        .with_context(|| format!("running {}", uv.display()))?;
    let log = String::from_utf8_lossy(&o.stderr);
    for pkg in metadata_preparations(&log) {
        crate::resolve::sandbox::count_runs(pkg, 1);
    }
    if !o.status.success() {
        return Err(Unsatisfiable {
            python: python.to_string(),
            platform: target.platform.clone(),
            explanation: one_line(&without_debug(&log)),
        }
        .into());
    }
    let text = std::fs::read_to_string(&out).context("reading uv's pylock.toml")?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("uv wrote an unreadable pylock.toml: {e}"))
}

/// The packages whose metadata uv prepared by running their build backend (`uv -v` logs
/// `Preparing metadata for: NAME==VERSION`; a cached one is not prepared again).
fn metadata_preparations(log: &str) -> impl Iterator<Item = &str> {
    log.lines().filter_map(|l| {
        let rest = l.split_once("Preparing metadata for: ")?.1.trim();
        Some(rest.split("==").next().unwrap_or(rest).trim())
    })
}

/// uv's messages without its `-v` log lines.
fn without_debug(log: &str) -> String {
    log.lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("DEBUG ") || t.starts_with("TRACE ") || t.starts_with("INFO "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn packages(lock: &toml::Table) -> impl Iterator<Item = &toml::Table> {
    lock.get("packages")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_table())
}

fn str_of<'a>(t: &'a toml::Table, k: &str) -> &'a str {
    t.get(k).and_then(|v| v.as_str()).unwrap_or("")
}

/// Resolves the cumulative requirement `sets` (name, requirement text; the last is the full
/// set) for `python` (major.minor) on every target; returns the merged pylock.toml text.
/// An unsatisfiable set fails with [`Unsatisfiable`] in the error chain.
pub fn resolve(
    sets: &[(&str, String)],
    python: &str,
    targets: &[ResolveTarget],
    opts: &ResolveOptions,
) -> Result<String> {
    let uv = find_uv(opts.uv.as_deref())?;
    let dir = tempfile::Builder::new()
        .prefix("flops-resolve-")
        .tempdir()?;
    let (full_name, full) = sets.last().expect("at least one requirement set");
    tracing::info!(
        "resolving {} requirements with uv for Python {python} on {}",
        full.lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .count(),
        targets
            .iter()
            .map(|t| t.platform.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut per_target = Vec::new();
    let mut subsets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in targets {
        let lock = compile(&uv, dir.path(), full, None, python, t, opts)?;
        let pins: String = packages(&lock)
            .map(|p| format!("{}=={}\n", str_of(p, "name"), str_of(p, "version")))
            .collect();
        for (name, input) in &sets[..sets.len() - 1] {
            let sub = compile(&uv, dir.path(), input, Some(&pins), python, t, opts)?;
            subsets
                .entry(name.to_string())
                .or_default()
                .extend(packages(&sub).map(|p| str_of(p, "name").to_string()));
        }
        per_target.push((t, lock));
    }
    let merged = merge(&per_target, python, &subsets, full_name);
    Ok(toml::to_string(&merged)?)
}

/// One lock from per-platform locks: a package version present on every platform appears
/// once without a marker; otherwise its entry holds only on the platforms that have it.
fn merge(
    locks: &[(&ResolveTarget, toml::Table)],
    python: &str,
    subsets: &BTreeMap<String, BTreeSet<String>>,
    full_name: &str,
) -> toml::Table {
    let mut entries: BTreeMap<(String, String), (toml::Table, Vec<&ResolveTarget>)> =
        BTreeMap::new();
    for (t, lock) in locks {
        for p in packages(lock) {
            let key = (
                str_of(p, "name").to_string(),
                str_of(p, "version").to_string(),
            );
            let slot = entries
                .entry(key)
                .or_insert_with(|| (p.clone(), Vec::new()));
            slot.1.push(t);
            // Union of wheels (each platform's lock lists only its own).
            let have: BTreeSet<String> = wheel_ids(&slot.0);
            let extra: Vec<toml::Value> = p
                .get("wheels")
                .and_then(|w| w.as_array())
                .into_iter()
                .flatten()
                .filter(|w| !have.contains(&wheel_id(w)))
                .cloned()
                .collect();
            if let Some(toml::Value::Array(w)) = slot.0.get_mut("wheels") {
                w.extend(extra);
            }
        }
    }
    let mut out = toml::Table::new();
    out.insert("lock-version".into(), "1.0".into());
    out.insert(
        "created-by".into(),
        format!("flops-image-builder (uv {})", UV_VERSION.trim()).into(),
    );
    out.insert("requires-python".into(), format!("=={python}.*").into());
    out.insert(
        "environments".into(),
        toml::Value::Array(
            locks
                .iter()
                .map(|(t, _)| format!("sys_platform == 'linux' and {}", t.marker()).into())
                .collect(),
        ),
    );
    let all = locks.len();
    let packages: Vec<toml::Value> = entries
        .into_values()
        .map(|(mut p, on)| {
            if on.len() < all {
                let m = on
                    .iter()
                    .map(|t| t.marker())
                    .collect::<Vec<_>>()
                    .join(" or ");
                p.insert("marker".into(), m.into());
            }
            toml::Value::Table(p)
        })
        .collect();
    out.insert("packages".into(), toml::Value::Array(packages));
    if !subsets.is_empty() {
        let mut table = toml::Table::new();
        for (name, names) in subsets {
            table.insert(
                name.clone(),
                toml::Value::Array(names.iter().map(|n| n.clone().into()).collect()),
            );
        }
        let mut tool = toml::Table::new();
        let mut ours = toml::Table::new();
        ours.insert("subsets".into(), toml::Value::Table(table));
        ours.insert("full-set".into(), full_name.into());
        tool.insert(TOOL.into(), toml::Value::Table(ours));
        out.insert("tool".into(), toml::Value::Table(tool));
    }
    out
}

fn wheel_id(w: &toml::Value) -> String {
    w.get("url")
        .or_else(|| w.get("name"))
        .or_else(|| w.get("path"))
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string()
}

fn wheel_ids(p: &toml::Table) -> BTreeSet<String> {
    p.get("wheels")
        .and_then(|w| w.as_array())
        .into_iter()
        .flatten()
        .map(wheel_id)
        .collect()
}

/// What an index's project page says (PEP 503 URL, PEP 691 JSON with PEP 700 `versions`).
#[derive(Debug, PartialEq, Eq)]
enum Page {
    /// 404: the index does not know the project.
    Missing,
    /// The versions it lists.
    Versions(Vec<Version>),
    /// No answer the builder can read (HTML only, unreachable): it may be there.
    Unknown,
}

async fn project_page(http: &reqwest::Client, index: &str, name: &str) -> Page {
    let url = format!(
        "{}/{}/",
        index.trim_end_matches('/'),
        crate::spec::imports::normalize(name)
    );
    let answer = async {
        let r = http
            .get(&url)
            .header("Accept", "application/vnd.pypi.simple.v1+json")
            .send()
            .await
            .ok()?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Some(Page::Missing);
        }
        let page: serde_json::Value = r.error_for_status().ok()?.json().await.ok()?;
        let versions = page.get("versions")?.as_array()?;
        Some(Page::Versions(
            versions
                .iter()
                .filter_map(|v| v.as_str()?.parse().ok())
                .collect(),
        ))
    };
    answer.await.unwrap_or(Page::Unknown)
}

/// Conda entries (requirements such as `cudf==0.14.0.*`) that are not the same project on the
/// package index: names it does not know, given as the name, and names it knows with no
/// version the conda entry allows (a placeholder or another project of that name), given as
/// `NAME (conda SPEC; the index has only other versions)`. Best effort: an index that does not
/// answer in JSON reports nothing for that name, and the resolver has the last word.
pub async fn unknown_to_index(
    http: &reqwest::Client,
    index: &str,
    entries: &[String],
) -> Vec<String> {
    let checks = entries.iter().map(|e| async move {
        let req = e.parse::<pep508_rs::Requirement>().ok()?;
        let name = req.name.to_string();
        match (project_page(http, index, &name).await, &req.version_or_url) {
            (Page::Missing, _) => Some(name),
            (Page::Versions(vs), Some(pep508_rs::VersionOrUrl::VersionSpecifier(spec)))
                if !vs.iter().any(|v| spec.contains(v)) =>
            {
                Some(format!(
                    "{name} (conda {spec}; the index has only other versions)"
                ))
            }
            _ => None,
        }
    });
    futures_util::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The repo's requirements none of the `indexes` can satisfy: names no index knows (404 for
/// the project page) and exact pins (`==V`) of versions no index lists, each as
/// `"NAME: not on INDEX"` or `"NAME==V: no such version on INDEX"` (the indexes joined by
/// " or "). An index that does not answer in JSON may have the name, so nothing is reported
/// for it, and the resolver has the last word.
pub async fn missing_on_index(
    http: &reqwest::Client,
    indexes: &[String],
    requirements: &[String],
) -> Vec<String> {
    let all = indexes
        .iter()
        .map(|i| i.trim_end_matches('/'))
        .collect::<Vec<_>>()
        .join(" or ");
    let checks = requirements.iter().filter_map(|r| {
        let req = r.parse::<pep508_rs::Requirement>().ok()?;
        let name = crate::spec::imports::normalize(req.name.as_ref());
        let pinned = match &req.version_or_url {
            Some(pep508_rs::VersionOrUrl::VersionSpecifier(s)) if s.len() == 1 => s
                .iter()
                .next()
                .filter(|s| s.operator() == &pep508_rs::pep440_rs::Operator::Equal)
                .map(|s| s.version().clone()),
            _ => None,
        };
        let all = &all;
        Some(async move {
            let pages = futures_util::future::join_all(
                indexes.iter().map(|i| project_page(http, i, &name)),
            )
            .await;
            if pages.iter().all(|p| *p == Page::Missing) {
                return Some(format!("{name}: not on {all}"));
            }
            let v = pinned?;
            let listed = |p: &Page| match p {
                Page::Missing => false,
                Page::Versions(vs) => vs.contains(&v),
                Page::Unknown => true,
            };
            (!pages.iter().any(listed)).then(|| format!("{name}=={v}: no such version on {all}"))
        })
    });
    futures_util::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Every version of `name` the `indexes` list; empty where none answers in JSON.
pub async fn versions_on_index(
    http: &reqwest::Client,
    indexes: &[String],
    name: &str,
) -> Vec<Version> {
    let pages =
        futures_util::future::join_all(indexes.iter().map(|i| project_page(http, i, name))).await;
    let mut all: Vec<Version> = pages
        .into_iter()
        .flat_map(|p| match p {
            Page::Versions(vs) => vs,
            _ => Vec::new(),
        })
        .collect();
    all.sort();
    all.dedup();
    all
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
        let s = lock_input(&["numpy==1.26.4".into()], &[RUNTIME_REQUIREMENTS]);
        assert!(s.starts_with("numpy==1.26.4\n") && s.contains("flwr"));
        assert_eq!(UV_VERSION.trim().split('.').count(), 3);
    }

    fn target(arch: &str) -> ResolveTarget {
        ResolveTarget {
            platform: if arch == "x86_64" {
                "linux/amd64"
            } else {
                "linux/arm64"
            }
            .into(),
            arch: arch.into(),
            glibc: (2, 28),
        }
    }

    #[test]
    fn per_platform_locks_merge_with_markers() {
        let amd: toml::Table = toml::from_str(r#"
lock-version = "1.0"
[[packages]]
name = "numpy"
version = "1.26.4"
wheels = [{ url = "https://f/numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.whl", hashes = { sha256 = "aa" } }]
[[packages]]
name = "tensorflow"
version = "2.15.0"
wheels = [{ url = "https://f/tensorflow-2.15.0-cp311-cp311-manylinux_2_17_x86_64.whl", hashes = { sha256 = "bb" } }]
"#).unwrap();
        let arm: toml::Table = toml::from_str(r#"
lock-version = "1.0"
[[packages]]
name = "numpy"
version = "1.26.4"
wheels = [{ url = "https://f/numpy-1.26.4-cp311-cp311-manylinux_2_17_aarch64.whl", hashes = { sha256 = "cc" } }]
"#).unwrap();
        let (a, b) = (target("x86_64"), target("aarch64"));
        let subsets: BTreeMap<String, BTreeSet<String>> =
            [("learner".to_string(), ["numpy".to_string()].into())].into();
        let merged = merge(&[(&a, amd), (&b, arm)], "3.11", &subsets, "aggregator");
        let text = toml::to_string(&merged).unwrap();
        let lock = crate::wheels::pylock::parse(&text).unwrap();
        assert_eq!(lock.requires_python.as_deref(), Some("==3.11.*"));
        assert_eq!(lock.packages.len(), 2);
        assert_eq!(lock.packages[0].wheels.len(), 2);
        assert_eq!(lock.packages[0].marker, None);
        assert_eq!(
            lock.packages[1].marker.as_deref(),
            Some("platform_machine == 'x86_64'")
        );
        assert_eq!(
            lock.subset("learner")
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            ["numpy"]
        );
        assert!(lock.subset("nope").is_none());
    }

    #[test]
    fn lock_keys_depend_on_platforms_and_sets() {
        let sets = [("learner", "numpy\n".to_string())];
        let o = ResolveOptions::default();
        let one = lock_key(&sets, "3.11", &[target("x86_64")], &o);
        assert_ne!(
            one,
            lock_key(&sets, "3.11", &[target("x86_64"), target("aarch64")], &o)
        );
        assert_ne!(one, lock_key(&sets, "3.13", &[target("x86_64")], &o));
        let two = [
            ("learner", "numpy\n".to_string()),
            ("aggregator", "numpy\nmlflow-skinny\n".to_string()),
        ];
        assert_ne!(one, lock_key(&two, "3.11", &[target("x86_64")], &o));
    }
}
