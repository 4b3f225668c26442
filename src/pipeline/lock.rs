//! Phase 4, the lock: the repo's own `pylock.toml` as is, else an earlier lock of the same
//! inputs (local cache, then the registry's pool), else uv resolves — for the base's Python
//! and the image platforms only. Chosen together with the base, because the nearest Python
//! that has a base must also be one the lock resolves for.

use super::base::{candidates, python_minor, Base, Finder};
use super::source::CheckReport;
use super::Session;
use crate::error::bad_input;
use crate::error::Unsatisfiable;
use crate::oci::blobstore::{write_atomic, EntryLock};
use crate::oci::registry::Registry;
use crate::pool;
use crate::resolve::{self, ResolveOptions, ResolveTarget};
use crate::spec::doctor::{unpinned, unprovided_warning, Fired};
use crate::spec::imports::{normalize, provided_by};
use crate::wheels::pylock;
use anyhow::Result;
use pep508_rs::Requirement;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Requirement sets of a plan's images, cumulative: (name, the runtime requirements the
/// builder adds for that image and every smaller one). The last is the whole lock.
pub type Sets<'a> = [(&'static str, String)];

pub struct Locked {
    pub lock: pylock::Lock,
    pub text: String,
    /// The lock as a file in the cache (named by its content).
    pub path: PathBuf,
    /// `repo` (its pylock.toml), `cache`, `registry` (the pool) or `resolved` (uv ran).
    pub source: &'static str,
    /// Rules that fired while choosing the base and locking.
    pub fired: Vec<Fired>,
    /// Check-time warnings that no longer hold now that the lock names every package.
    pub stale_warnings: Vec<String>,
}

impl Locked {
    /// Normalised package name → version (the first entry when platforms differ).
    pub fn versions(&self) -> BTreeMap<String, String> {
        let mut v = BTreeMap::new();
        for p in &self.lock.packages {
            v.entry(normalize(&p.name))
                .or_insert_with(|| p.version.clone().unwrap_or_default());
        }
        v
    }

    /// Appends the version the lock chose to each rule that changed a package.
    /// What a plan reports: the doctor's rules of `check` and of the lock (annotated with the
    /// locked versions), and the warnings of `check` the lock did not make stale, then `more`
    /// (logged too).
    pub fn findings(&self, check: &CheckReport, more: &[String]) -> (Vec<Fired>, Vec<String>) {
        let mut doctor = check.doctor.clone();
        doctor.extend(self.fired.iter().cloned());
        self.annotate(&mut doctor);
        let mut warnings: Vec<String> = check
            .warnings
            .iter()
            .filter(|w| !self.stale_warnings.contains(w))
            .cloned()
            .collect();
        warnings.extend(more.iter().cloned());
        for w in more {
            tracing::warn!("{w}");
        }
        (doctor, warnings)
    }

    pub fn annotate(&self, fired: &mut [Fired]) {
        let versions = self.versions();
        for f in fired.iter_mut() {
            if let Some(v) = f
                .package
                .as_deref()
                .and_then(|p| versions.get(&normalize(p)))
            {
                f.detail.push_str(&format!(
                    " (locked: {} {v})",
                    f.package.as_deref().unwrap_or("")
                ));
            }
        }
    }
}

/// Chooses the base and locks for it: the spec's Python, else the nearest newer one that has a
/// base and for which the lock resolves (unless `strict_python`).
/// `check` describes the dependencies (a repo's, or a model's); `root` is the directory a
/// shipped `pylock.toml` and its `path` wheels are read from.
pub async fn base_and_lock(
    sess: &Session<'_>,
    finder: &Finder<'_>,
    check: &CheckReport,
    root: &Path,
    sets: &Sets<'_>,
    strict_python: bool,
) -> Result<(Base, Locked)> {
    let t = Instant::now();
    if let Some(b) = &sess.opts.base_image {
        let assume = check
            .python
            .as_deref()
            .unwrap_or(super::base::DEFAULT_PYTHON);
        let base = finder.explicit(b, assume).await?;
        sess.done("base", t);
        let mut locked = lock(sess, finder.target_reg, check, root, sets, &base).await?;
        if let Some(p) = check.python.as_deref().filter(|p| *p != base.python) {
            if strict_python {
                return Err(bad_input(format!(
                    "{} pins Python {p} but base image {} has Python {} (--strict-python)",
                    check.spec, base.reference, base.python_full
                )));
            }
            locked
                .fired
                .insert(0, python_minor(p, &base.python, check.spec, &[]));
        }
        return Ok((base, locked));
    }
    let mut pythons = candidates(check.python.as_deref(), check.python_constraint.as_deref());
    if strict_python && check.python.is_some() {
        pythons.truncate(1);
    }
    let mut missing = Vec::new();
    let mut last_err = None;
    for (i, py) in pythons.iter().enumerate() {
        let Some(base) = finder.python(py).await? else {
            missing.push(py.clone());
            continue;
        };
        sess.done("base", t);
        let more = i + 1 < pythons.len() && check.python.is_some();
        match lock(sess, finder.target_reg, check, root, sets, &base).await {
            Ok(mut locked) => {
                if let Some(p) = check.python.as_deref().filter(|p| *p != base.python) {
                    let none_found = if missing.iter().any(|m| m == p) {
                        vec![finder.describe()]
                    } else {
                        vec![]
                    };
                    locked
                        .fired
                        .insert(0, python_minor(p, &base.python, check.spec, &none_found));
                    tracing::warn!("{}", locked.fired[0].detail);
                }
                return Ok((base, locked));
            }
            Err(e) if more && e.chain().any(|c| c.is::<Unsatisfiable>()) => {
                tracing::warn!("{e:#}; trying the next Python");
                last_err = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = last_err {
        return Err(e);
    }
    let strict = if strict_python {
        " (--strict-python)"
    } else {
        ""
    };
    let platforms: Vec<String> = finder.platforms.iter().map(|p| p.to_string()).collect();
    Err(bad_input(format!(
        "no python:{}-slim base image for Python {} with {} in {}{strict}: pass --base-image, or add a mirror that has one (--registry-mirror docker.io=HOST)",
        missing.first().map(String::as_str).unwrap_or("X.Y"),
        missing.join(", "),
        platforms.join(" and "),
        finder.describe()
    )))
}

/// The image platforms as resolver targets.
fn targets(sess: &Session<'_>, base: &Base) -> Result<Vec<ResolveTarget>> {
    base.images
        .iter()
        .map(|b| {
            let t = crate::wheels::tags::Target::new(
                &b.platform.architecture,
                &base.python_full,
                crate::wheels::tags::Libc::Glibc(sess.opts.glibc.0, sess.opts.glibc.1),
            )?;
            Ok(ResolveTarget {
                platform: format!("{}/{}", b.platform.os, b.platform.architecture),
                arch: t.arch,
                glibc: sess.opts.glibc,
            })
        })
        .collect()
}

async fn lock(
    sess: &Session<'_>,
    reg: &Arc<Registry>,
    check: &CheckReport,
    root: &Path,
    sets: &Sets<'_>,
    base: &Base,
) -> Result<Locked> {
    let t = Instant::now();
    let spin = crate::progress::Bar::spinner("locking dependencies");
    let (text, source) = if check.spec == "pylock.toml" {
        let text = crate::paths::read_inside(root, Path::new("pylock.toml"))?;
        (text, "repo")
    } else {
        lock_text(sess, reg, check, sets, base).await?
    };
    let locked = Locked::new(sess, check, text, source)?;
    sess.done("resolve", t);
    spin.done();
    sess.observe(&format!(
        "dependencies locked ({}): {} packages for Python {} on {}",
        locked.source,
        locked.lock.packages.len(),
        base.python_full,
        base.images
            .iter()
            .map(|b| format!("{}/{}", b.platform.os, b.platform.architecture))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .await;
    Ok(locked)
}

/// The resolver's options for a spec: the builder's, with the spec's own indexes and the
/// constraints of the check (a model's training environment).
pub fn resolve_options(builder: &ResolveOptions, check: &CheckReport) -> ResolveOptions {
    let mut opts = builder.clone();
    if opts.index_url.is_none() {
        opts.index_url = check.index_url.clone();
    }
    opts.extra_index_urls
        .extend(check.extra_index_urls.iter().cloned());
    opts.constraints.extend(check.constraints.iter().cloned());
    opts
}

/// The lock of these inputs: from the local cache, else the pool, else resolved (and then
/// put in both). Builders sharing the cache resolve the same input once.
async fn lock_text(
    sess: &Session<'_>,
    reg: &Arc<Registry>,
    check: &CheckReport,
    sets: &Sets<'_>,
    base: &Base,
) -> Result<(String, &'static str)> {
    let opts = resolve_options(&sess.opts.resolve, check);
    let targets = targets(sess, base)?;
    let input: Vec<(&'static str, String)> = sets
        .iter()
        .map(|(n, rt)| (*n, resolve::lock_input(&check.requirements, &[rt])))
        .collect();
    let key = resolve::lock_key(&input, &base.python, &targets, &opts);
    let local = sess
        .store
        .root()
        .join("locks")
        .join(format!("pylock.{key}.toml"));
    // The second builder waits, then reads the first one's lock.
    let _entry = EntryLock::acquire(&local).await?;
    let cached = (!sess.opts.refresh_lock)
        .then(|| std::fs::read_to_string(&local).ok())
        .flatten();
    let pooled = match (&cached, sess.opts.refresh_lock) {
        (None, false) => pool::pool_lock(reg, pool::POOL_REPO, &key).await,
        _ => None,
    };
    let (text, source) = match (cached, pooled) {
        (Some(t), _) => (t, "cache"),
        (None, Some(t)) => (t, "registry"),
        (None, None) => {
            let python = base.python.clone();
            let text = fresh(check, sets, python, targets, opts, sess.store.root()).await?;
            pool::pool_put_lock(reg, pool::POOL_REPO, &key, &sess.store, &text).await;
            (text, "resolved")
        }
    };
    write_atomic(&local, text.as_bytes())?;
    Ok((text, source))
}

impl Locked {
    /// A lock text parsed and kept in the cache by content; what the resolver relaxed, and the
    /// missing-import warnings of `check` the lock answers.
    fn new(
        sess: &Session<'_>,
        check: &CheckReport,
        text: String,
        source: &'static str,
    ) -> Result<Self> {
        let lock = pylock::parse(&text)?;
        let path = sess.store.root().join("locks").join(format!(
            "pylock.{}.toml",
            crate::oci::short(&crate::oci::sha256_digest(text.as_bytes()))
        ));
        write_atomic(&path, text.as_bytes())?;
        let mut locked = Locked {
            lock,
            text,
            path,
            source,
            fired: Vec::new(),
            stale_warnings: Vec::new(),
        };
        locked.fired = relaxed_by_resolver(&locked.lock);
        let names: BTreeSet<String> = locked.versions().into_keys().collect();
        locked.stale_warnings = check
            .unprovided
            .iter()
            .filter(|(m, _)| provided_by(m, &names))
            .map(|(m, files)| unprovided_warning(m, files, check.spec))
            .collect();
        Ok(locked)
    }
}

/// Module → files importing it, for the resolver's conflict rule.
fn check_imports(check: &CheckReport) -> BTreeMap<String, Vec<String>> {
    check
        .imports
        .iter()
        .map(|(m, files)| (m.clone(), files.iter().cloned().collect()))
        .collect()
}

const RELAXED_KEY: &str = "relaxed";
const FIXES_KEY: &str = "fixes";

/// A new resolution of `sets` for `python` on `targets`, as `build` and `check` make it: conda
/// packages the index does not know are named first (all of them), then the pinned uv is made
/// sure of (fetched into `cache` if need be), then [`resolve_checked`].
pub async fn fresh(
    check: &CheckReport,
    sets: &Sets<'_>,
    python: String,
    targets: Vec<ResolveTarget>,
    mut opts: ResolveOptions,
    cache: &Path,
) -> Result<String> {
    let http = crate::wheels::fetch::http_client()?;
    let index = opts.effective_index();
    if !check.unverified.is_empty() {
        let unknown = resolve::unknown_to_index(&http, &index, &check.unverified).await;
        if !unknown.is_empty() {
            return Err(bad_input(format!(
                "{}: conda packages that the package index {index} does not know: {} (move them to the pip: list under their PyPI names, or remove them)",
                check.spec,
                unknown.join(", ")
            )));
        }
    }
    if let Some(uv) = resolve::uv::ensure(opts.uv.as_deref(), cache, &index, &http).await? {
        opts.uv = Some(uv);
    }
    let (reqs, imported) = (check.requirements.clone(), check_imports(check));
    resolve_checked(
        check.spec,
        reqs,
        imported,
        sets.to_vec(),
        python,
        targets,
        opts,
    )
    .await
}

/// Resolves (see [`resolve_relaxing`]); at the first failure, before any pin is relaxed, names
/// every requirement the index cannot have (unknown names, pins of versions that do not exist:
/// those are mistakes, not conflicts).
async fn resolve_checked(
    spec: &str,
    reqs: Vec<String>,
    imported: BTreeMap<String, Vec<String>>,
    sets: Vec<(&'static str, String)>,
    python: String,
    targets: Vec<ResolveTarget>,
    opts: ResolveOptions,
) -> Result<String> {
    let index = IndexView {
        runtime: tokio::runtime::Handle::current(),
        http: crate::wheels::fetch::http_client()?,
        indexes: std::iter::once(opts.effective_index())
            .chain(opts.effective_extra_indexes())
            .collect(),
        spec: spec.to_string(),
    };
    tokio::task::spawn_blocking(move || {
        resolve_relaxing(&reqs, &imported, &sets, &python, &targets, &opts, &index)
    })
    .await?
}

/// The package indexes as the relax loop asks them (from a blocking thread).
struct IndexView {
    runtime: tokio::runtime::Handle,
    http: reqwest::Client,
    indexes: Vec<String>,
    spec: String,
}

impl IndexView {
    /// Every requirement the indexes cannot have (unknown names, pins of versions that do not
    /// exist: mistakes, not conflicts), as one error.
    fn check(&self, reqs: &[String]) -> Result<()> {
        let missing =
            self.runtime
                .block_on(resolve::missing_on_index(&self.http, &self.indexes, reqs));
        if missing.is_empty() {
            return Ok(());
        }
        Err(bad_input(crate::error::listed(
            &format!(
                "{}: requirements the package index cannot satisfy",
                self.spec
            ),
            &missing,
        )))
    }

    /// The versions of `name` the indexes list (PEP 691/700), empty when none says.
    fn versions(&self, name: &str) -> Vec<pep508_rs::pep440_rs::Version> {
        self.runtime
            .block_on(resolve::versions_on_index(&self.http, &self.indexes, name))
    }
}

/// Resolves; at the first failure, `index.check` names the mistakes first (an `Err` from it is
/// the result). When uv finds a conflict that involves exact pins of the repo, relaxes the pins
/// no code imports, and moves the pins code imports to the nearest version of the same major
/// that satisfies the other side (both the `runtime-pin-conflict` rule; not with
/// `--strict-pins`), then tries again. What changed is recorded in the lock's tool table, so a
/// lock from the cache reports it too.
fn resolve_relaxing(
    reqs: &[String],
    imported: &BTreeMap<String, Vec<String>>,
    sets: &[(&'static str, String)],
    python: &str,
    targets: &[ResolveTarget],
    opts: &ResolveOptions,
    index: &IndexView,
) -> Result<String> {
    let mut checked = false;
    let mut opts = opts.clone();
    let opts = &mut opts;
    let mut st = Relaxing {
        reqs: reqs.to_vec(),
        relaxed: Vec::new(),
        fixes: Vec::new(),
    };
    loop {
        let input: Vec<(&'static str, String)> = sets
            .iter()
            .map(|(n, rt)| (*n, resolve::lock_input(&st.reqs, &[rt])))
            .collect();
        let err = match resolve::resolve(&input, python, targets, opts) {
            Ok(text) => match numpy_abi_in(&text) {
                // The resolver paired NumPy 2 with a wheel built against 1.x: bound it, again.
                Some(why) if !st.reqs.iter().any(|r| r == "numpy<2") => {
                    tracing::warn!(
                        "dependency doctor [numpy-abi]: {why}; resolving again with numpy<2"
                    );
                    st.fixes.push(format!(
                        "numpy-abi: added numpy<2 (found by the resolver): {why}"
                    ));
                    st.reqs.push("numpy<2".into());
                    continue;
                }
                _ => return Ok(with_relaxed(&text, &st.relaxed, &st.fixes)),
            },
            Err(e) => e,
        };
        if !checked {
            checked = true;
            index.check(&st.reqs)?;
        }
        let Some(u) = err.downcast_ref::<Unsatisfiable>() else {
            return Err(err);
        };
        let why = u.explanation.to_lowercase();
        if let Some(e) = no_build_refusal(u, &why, opts) {
            return Err(e);
        }
        let (changed, pinned_imported) = st.move_pins(imported, &why, opts, index);
        if !changed && !opts.constraints.is_empty() {
            st.drop_constraints(opts, &why, u);
            continue;
        }
        if !changed {
            return Err(unsatisfiable(u, &pinned_imported, opts.strict_pins));
        }
    }
}

/// The requirements as they are being relaxed, and what was changed (for the lock's tool
/// table).
struct Relaxing {
    reqs: Vec<String>,
    /// Pins no code imports, relaxed to the bare name.
    relaxed: Vec<String>,
    /// One line per change: `rule: what`.
    fixes: Vec<String>,
}

impl Relaxing {
    /// Every exact pin uv's explanation `why` names: moved to the nearest version of its major
    /// that fits when code imports it (not with `--strict-pins`), relaxed when none does.
    /// Returns whether anything changed, and the imported pins that could not move.
    fn move_pins(
        &mut self,
        imported: &BTreeMap<String, Vec<String>>,
        why: &str,
        opts: &ResolveOptions,
        index: &IndexView,
    ) -> (bool, Vec<String>) {
        let mut changed = false;
        let mut pinned_imported = Vec::new();
        for r in self.reqs.iter_mut() {
            let Ok(req) = r.parse::<Requirement>() else {
                continue;
            };
            let name = normalize(req.name.as_ref());
            let Some(v) = pinned_version(&req) else {
                continue;
            };
            if !why.contains(&format!("{name}=={v}")) || name == "flwr" {
                continue;
            }
            let module = crate::spec::imports::IMPORT_TO_DIST
                .iter()
                .find(|(_, d)| normalize(d) == name)
                .map(|(m, _)| m.to_string())
                .unwrap_or_else(|| name.replace('-', "_"));
            if let Some(files) = imported.get(&module) {
                let moved = (!opts.strict_pins)
                    .then(|| nearest_in_major(&name, &v, why, index))
                    .flatten();
                let Some(to) = moved else {
                    pinned_imported.push(format!("{r} is imported by {}", files.join(", ")));
                    continue;
                };
                let note = format!(
                    "{r} → {name}=={to}: imported by {}, so moved to the nearest version of its major that fits ({}); --strict-pins fails instead",
                    files.join(", "),
                    needed_by(&name, why).unwrap_or_else(|| format!("the other side needs {name}{}", other_side(&name, why).unwrap_or_default()))
                );
                tracing::warn!("dependency doctor [runtime-pin-conflict]: {note}");
                self.fixes.push(format!("runtime-pin-conflict: {note}"));
                *r = format!("{name}=={to}");
                changed = true;
                continue;
            }
            tracing::warn!("dependency doctor [runtime-pin-conflict]: {r} conflicts with the FL runtime and no code imports it; relaxing the pin");
            self.relaxed.push(r.clone());
            *r = unpinned(&req).to_string();
            changed = true;
        }
        (changed, pinned_imported)
    }

    /// The training environment is a preference, not a requirement: its versions that do not
    /// fit the serving stack (those uv names, else all) give way.
    fn drop_constraints(&mut self, opts: &mut ResolveOptions, why: &str, u: &Unsatisfiable) {
        let named: Vec<String> = opts
            .constraints
            .iter()
            .filter(|c| {
                c.parse::<Requirement>()
                    .is_ok_and(|r| why.contains(&normalize(r.name.as_ref())))
            })
            .cloned()
            .collect();
        let dropped = if named.is_empty() {
            std::mem::take(&mut opts.constraints)
        } else {
            named
        };
        opts.constraints.retain(|c| !dropped.contains(c));
        let note = format!(
            "training environment's {} dropped: they do not fit ({})",
            dropped.join(", "),
            u.explanation
        );
        tracing::warn!("{note}");
        self.fixes.push(format!("runtime-pin-conflict: {note}"));
    }
}

/// With --no-build a version that ships only an sdist is not a conflict to relax away: it
/// fails, named, as `--no-build` promises.
fn no_build_refusal(u: &Unsatisfiable, why: &str, opts: &ResolveOptions) -> Option<anyhow::Error> {
    if !(opts.no_build && why.contains("has no usable wheels")) {
        return None;
    }
    let sdist_only: Vec<&str> = why
        .split("because ")
        .skip(1)
        .filter_map(|part| {
            part.split_once(" has no usable wheels")
                .map(|(p, _)| p.trim())
        })
        .collect();
    Some(bad_input(format!(
        "--no-build: these packages ship only an sdist for {}, and building them is turned off: {} (allow building, or pin versions that ship wheels)",
        u.platform,
        sdist_only.join(", ")
    )))
}

/// uv's explanation, with the imported pins that could not move and why.
fn unsatisfiable(u: &Unsatisfiable, pinned_imported: &[String], strict: bool) -> anyhow::Error {
    let mut u = Unsatisfiable {
        python: u.python.clone(),
        platform: u.platform.clone(),
        explanation: u.explanation.clone(),
    };
    if !pinned_imported.is_empty() {
        let how = if strict {
            "--strict-pins: not moved"
        } else {
            "not relaxed, and no version of the same major fits"
        };
        u.explanation.push_str(&format!(
            " (runtime-pin-conflict: {how}, because {})",
            pinned_imported.join("; ")
        ));
    }
    u.into()
}

/// What the other side of uv's explanation asks of `name` (`… depends on tqdm>=4.66.3 …`).
fn other_side(name: &str, why: &str) -> Option<String> {
    let at = why.find(&format!("depends on {name}"))? + "depends on ".len() + name.len();
    let spec: String = why[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "<>=!~.*,".contains(*c))
        .collect();
    let spec = spec.trim_end_matches([',', '.']).to_string();
    (!spec.is_empty()).then_some(spec)
}

/// `X depends on NAME…` from uv's explanation, as `X needs NAME…`.
fn needed_by(name: &str, why: &str) -> Option<String> {
    let at = why.find(&format!(" depends on {name}"))?;
    let who = why[..at].split_whitespace().last()?;
    Some(format!("{who} needs {name}{}", other_side(name, why)?))
}

/// The version of `name` nearest to the pinned `old`, in the same major version, that the
/// other side of the conflict allows and the indexes list.
fn nearest_in_major(name: &str, old: &str, why: &str, index: &IndexView) -> Option<String> {
    use pep508_rs::pep440_rs::{Version, VersionSpecifiers};
    use std::str::FromStr;
    let spec = VersionSpecifiers::from_str(&other_side(name, why)?).ok()?;
    let old = Version::from_str(old).ok()?;
    let major = old.release().first().copied();
    let fits: Vec<Version> = index
        .versions(name)
        .into_iter()
        .filter(|v| {
            v.release().first().copied() == major && spec.contains(v) && !v.any_prerelease()
        })
        .collect();
    // The smallest step up, else the smallest step down.
    let up = fits.iter().filter(|v| **v > old).min();
    let down = fits.iter().filter(|v| **v < old).max();
    up.or(down).map(ToString::to_string)
}

fn pinned_version(r: &Requirement) -> Option<String> {
    match &r.version_or_url {
        Some(pep508_rs::VersionOrUrl::VersionSpecifier(s)) if s.len() == 1 => {
            let s = s.iter().next()?;
            (s.operator() == &pep508_rs::pep440_rs::Operator::Equal)
                .then(|| s.version().to_string())
        }
        _ => None,
    }
}

/// Why the lock's NumPy cannot stay: NumPy 2 beside packages built against 1.x.
fn numpy_abi_in(text: &str) -> Option<String> {
    let lock = pylock::parse(text).ok()?;
    let version = |p: &pylock::Package| p.version.clone().unwrap_or_default();
    lock.packages
        .iter()
        .find(|p| p.name == "numpy" && crate::spec::abi::is_numpy2(&version(p)))?;
    let why: Vec<String> = lock
        .packages
        .iter()
        .filter_map(|p| crate::spec::abi::needs_numpy1(&p.name, &version(p)))
        .collect();
    (!why.is_empty()).then(|| why.join("; "))
}

/// The lock with what resolution changed in its tool table: `relaxed` pins and other `fixes`
/// (`rule: detail`), so a lock from the cache reports them too.
fn with_relaxed(text: &str, relaxed: &[String], fixes: &[String]) -> String {
    if relaxed.is_empty() && fixes.is_empty() {
        return text.to_string();
    }
    let Ok(mut doc) = toml::from_str::<toml::Table>(text) else {
        return text.to_string();
    };
    let tool = doc
        .entry("tool")
        .or_insert_with(|| toml::Value::Table(Default::default()));
    if let Some(t) = tool.as_table_mut() {
        let ours = t
            .entry("flops-image-builder")
            .or_insert_with(|| toml::Value::Table(Default::default()));
        if let Some(o) = ours.as_table_mut() {
            for (key, list) in [(RELAXED_KEY, relaxed), (FIXES_KEY, fixes)] {
                if !list.is_empty() {
                    o.insert(
                        key.into(),
                        toml::Value::Array(list.iter().map(|r| r.clone().into()).collect()),
                    );
                }
            }
        }
    }
    toml::to_string(&doc).unwrap_or_else(|_| text.to_string())
}

/// The doctor lines for what resolution changed (from the lock's tool table): pins the
/// resolver relaxed (`runtime-pin-conflict`) and other fixes (`rule: detail`).
fn relaxed_by_resolver(lock: &pylock::Lock) -> Vec<Fired> {
    let list = |key: &str| {
        lock.tool
            .as_ref()
            .and_then(|t| t.get("flops-image-builder"))
            .and_then(|t| t.get(key))
            .and_then(|r| r.as_array())
            .cloned()
            .unwrap_or_default()
    };
    let fixes = list(FIXES_KEY).into_iter().filter_map(|v| {
        let (rule, detail) = v.as_str()?.split_once(": ")?;
        let rule = crate::spec::doctor::REASONS
            .iter()
            .find(|(r, _)| *r == rule)?
            .0;
        Some(Fired {
            rule,
            detail: detail.to_string(),
            package: (rule == "numpy-abi").then(|| "numpy".to_string()),
        })
    });
    list(RELAXED_KEY)
        .iter()
        .filter_map(|v| v.as_str())
        .filter_map(|pin| {
            let req = pin.parse::<Requirement>().ok()?;
            Some(Fired {
                rule: "runtime-pin-conflict",
                detail: format!("{pin} relaxed: it conflicts with what the builder adds (the FL runtime's or the scoring server's requirements; found by the resolver) and no code imports it"),
                package: Some(req.name.to_string()),
            })
        })
        .chain(fixes)
        .collect()
}
