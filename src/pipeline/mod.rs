//! The builder's phases, each a function with typed input and output, timed and reported;
//! build plans compose them:
//!
//! ```text
//! source (clone → verify → doctor) → target (push access) → base → lock
//!   → dependency layers (per platform) → image assembly → SBOMs → push (SBOMs as
//!   referrers, then tags) → report
//! ```
//!
//! A plan is a short file naming its images: [`learner`] (the learner only), [`fl_actors`]
//! (learner + aggregator from one resolve) and [`trained_model`] (an MLflow model served).

pub mod base;
pub mod check_lock;
pub mod deps;
pub mod fl_actors;
pub mod image;
pub mod lazy_base;
pub mod learner;
pub mod lock;
pub mod push;
pub mod sbom;
pub mod source;
pub mod target;
pub mod trained_model;

pub use source::{check, CheckReport};

use crate::notify::Notifier;
use crate::oci::append::Phases;
use crate::oci::blobstore::BlobStore;
use crate::oci::layer::Compression;
use crate::oci::reference::Platform;
use crate::oci::registry;
use crate::resolve::ResolveOptions;
use anyhow::Result;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

/// Where dependencies go in the image.
pub const DEPS_PREFIX: &str = "/opt/flops";

/// The ML model flavors FLOps knows (`ML_MODEL_FLAVOR`), a subset of MLflow's.
pub const MODEL_FLAVORS: &[&str] = &["sklearn", "pytorch", "tensorflow", "keras"];

/// Checks a flavor is one FLOps knows; the error names the accepted ones.
pub fn check_flavor(flavor: &str) -> Result<()> {
    if MODEL_FLAVORS.contains(&flavor) {
        Ok(())
    } else {
        Err(crate::error::usage(format!(
            "unknown ML model flavor {flavor:?}: use one of {}",
            MODEL_FLAVORS.join(", ")
        )))
    }
}

/// Options every plan shares (the command line's build flags).
#[derive(Debug, Clone)]
pub struct Options {
    /// Registry URL (`http://host:port` for plain HTTP) images are pushed to.
    pub registry: String,
    pub platforms: Vec<Platform>,
    /// `--base-image`: overrides the base selection.
    pub base_image: Option<String>,
    pub model_flavor: Option<String>,
    /// More tags besides the plan's own (commit sha, run id).
    pub extra_tags: Vec<String>,
    pub registry_opts: registry::Options,
    pub compression: Compression,
    pub cache_dir: PathBuf,
    pub max_dep_layers: usize,
    /// Dependency layers built at once (threads), at least 1.
    pub jobs: usize,
    pub resolve: ResolveOptions,
    /// glibc of the base image, bounding manylinux wheels.
    pub glibc: (u32, u32),
    /// Interpreter for script shebangs inside the image.
    pub python: String,
    pub workdir: String,
    /// Resolve again even when a lock of the same inputs exists.
    pub refresh_lock: bool,
    /// A package one platform has and another lacks is an error, not a warning.
    pub strict_platforms: bool,
    /// Fail instead of using a newer Python when the spec's has no base image.
    pub strict_python: bool,
    /// Registry mirrors (flags, registries.conf) for pulling base images.
    pub mirrors: crate::oci::mirrors::Mirrors,
    /// Attach an SPDX SBOM to every image (`--sbom spdx`, the default).
    pub sbom: bool,
    /// Compile the dependencies' bytecode when an interpreter of the image's Python is at hand
    /// (`--bytecode auto`, the default).
    pub bytecode: bool,
}

/// One run of a plan: the local cache, the notifier, and the phase timings.
pub struct Session<'a> {
    pub opts: &'a Options,
    pub store: BlobStore,
    pub notifier: &'a Notifier,
    phases: Mutex<Phases>,
    started: Instant,
}

impl<'a> Session<'a> {
    pub fn new(opts: &'a Options, notifier: &'a Notifier) -> Result<Self> {
        Ok(Self {
            opts,
            store: BlobStore::open(&opts.cache_dir)?,
            notifier,
            phases: Mutex::new(Phases::default()),
            started: Instant::now(),
        })
    }

    /// Records that phase `name` ran since `since`.
    pub fn done(&self, name: &str, since: Instant) {
        self.phases.lock().expect("not poisoned").done(name, since);
    }

    /// Records a duration measured elsewhere (overlapping phases).
    pub fn record(&self, name: &str, ms: u64) {
        self.phases
            .lock()
            .expect("not poisoned")
            .0
            .insert(name.into(), ms);
    }

    /// Every phase so far plus `total`.
    pub fn timings(&self) -> Phases {
        let mut p = Phases(self.phases.lock().expect("not poisoned").0.clone());
        p.done("total", self.started);
        p
    }

    /// One line to the project observer (and nowhere else).
    pub async fn observe(&self, msg: &str) {
        self.notifier
            .observe(&format!("image builder: {msg}"))
            .await;
    }
}

/// What every plan's report says of the dependencies: Python, base, the doctor's rules and
/// warnings, the layers, sdists, package code and the lock (flattened into the report).
#[derive(Debug, serde::Serialize)]
pub struct DepsReport {
    pub python: String,
    pub base: base::BaseReport,
    pub doctor: Vec<crate::spec::doctor::Fired>,
    pub warnings: Vec<String>,
    /// What the spec readers left out, and what the builder chose and why (e.g. versions
    /// from a model's training environment).
    pub notes: Vec<String>,
    pub dependency_layers: Vec<deps::DepLayerReport>,
    /// Packages that had only an sdist: the pure wheel built from it (`built`), or found built
    /// by an earlier run (`cache`) or another node (`pool`).
    pub sdists: Vec<crate::resolve::sdist::Built>,
    /// Package code (sdists' build hooks) that ran for this build, and its sandbox.
    pub package_code: crate::resolve::sandbox::PackageCode,
    /// The dependencies' bytecode: what compiled it (`cpython-311 (python3.11 3.11.7)`), or
    /// `none: <why>`.
    pub bytecode: String,
    /// The lock the images were built from (kept in the cache, by content).
    pub lock: PathBuf,
    /// `repo` (its pylock.toml), `cache`, `registry` (the pool) or `resolved` (uv ran).
    pub lock_source: &'static str,
}

impl DepsReport {
    pub fn new(
        check: &CheckReport,
        base: &base::Base,
        locked: &lock::Locked,
        deps: deps::DepLayers,
    ) -> Self {
        let (doctor, warnings) = locked.findings(check, &deps.warnings);
        DepsReport {
            python: base.python_full.clone(),
            base: base.report.clone(),
            doctor,
            warnings,
            notes: check.notes.clone(),
            dependency_layers: deps.reports,
            sdists: deps.sdists,
            package_code: crate::resolve::sandbox::report(),
            bytecode: deps.bytecode,
            lock: locked.path.clone(),
            lock_source: locked.source,
        }
    }
}
