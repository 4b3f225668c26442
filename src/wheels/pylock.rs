//! pylock.toml (PEP 751): reading a lock and choosing, for one target platform, the wheel of
//! every package whose marker holds there. Choice is offline and never substitutes: a package
//! with no compatible wheel is an error naming package, version and platform.

use crate::error::bad_input;
use crate::wheels::tags::{Ranker, Target, WheelName};
use anyhow::Result;
use pep508_rs::pep440_rs::{Version, VersionSpecifiers};
use pep508_rs::{MarkerEnvironment, MarkerEnvironmentBuilder, MarkerTree};
use serde::Deserialize;
use std::str::FromStr;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Lock {
    pub lock_version: String,
    #[serde(default)]
    pub environments: Option<Vec<String>>,
    #[serde(default)]
    pub requires_python: Option<String>,
    #[serde(default)]
    pub packages: Vec<Package>,
    /// PEP 751 tool tables; ours (`flops-image-builder`) names the smaller images' packages.
    #[serde(default)]
    pub tool: Option<toml::Table>,
}

impl Lock {
    /// Package names of the requirement set `name` (see `crate::resolve`); `None` when the
    /// lock has no such subset (then the whole lock applies).
    pub fn subset(&self, name: &str) -> Option<std::collections::BTreeSet<String>> {
        let list = self
            .tool
            .as_ref()?
            .get("flops-image-builder")?
            .get("subsets")?
            .get(name)?
            .as_array()?;
        Some(
            list.iter()
                .filter_map(|v| v.as_str())
                .map(crate::spec::imports::normalize)
                .collect(),
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Package {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub marker: Option<String>,
    #[serde(default)]
    pub requires_python: Option<String>,
    #[serde(default)]
    pub wheels: Vec<Wheel>,
    #[serde(default)]
    pub sdist: Option<toml::Value>,
    #[serde(default)]
    pub vcs: Option<toml::Value>,
    #[serde(default)]
    pub directory: Option<toml::Value>,
    #[serde(default)]
    pub archive: Option<toml::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Wheel {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    /// Relative to the lock file's directory.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub hashes: std::collections::BTreeMap<String, String>,
}

impl Wheel {
    /// The wheel's file name: `name`, else the last segment of `url`/`path`.
    pub fn file_name(&self) -> Option<String> {
        self.name.clone().or_else(|| {
            let loc = self.url.as_deref().or(self.path.as_deref())?;
            let last = loc.split(['?', '#']).next()?.rsplit('/').next()?;
            Some(percent_decode(last))
        })
    }

    pub fn sha256(&self) -> Option<&str> {
        self.hashes.get("sha256").map(String::as_str)
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// One package's wheel for the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub name: String,
    pub version: String,
    pub file: String,
    pub wheel: Wheel,
    pub sha256: String,
    /// No wheel fits: `wheel`, `file` and `sha256` describe the package's sdist, which
    /// `crate::resolve::sdist` turns into a (pure) wheel before anything installs it.
    pub sdist: bool,
    /// For a wheel the builder made from an sdist: that sdist, as the lock names it (the SBOM
    /// reports what was locked, not the local build's bytes).
    pub built_from: Option<Box<Selected>>,
}

pub fn parse(text: &str) -> Result<Lock> {
    let lock: Lock =
        toml::from_str(text).map_err(|e| bad_input(format!("pylock.toml: {}", e.message())))?;
    let mut v = lock.lock_version.split('.');
    match (v.next(), v.next()) {
        (Some("1"), minor) => {
            if minor.is_some_and(|m| m != "0") {
                tracing::warn!(
                    "pylock.toml: lock-version {} is newer than 1.0; reading it as 1.0",
                    lock.lock_version
                );
            }
        }
        _ => {
            return Err(bad_input(format!(
                "pylock.toml: lock-version {} is not supported (major version 1 only)",
                lock.lock_version
            )))
        }
    }
    Ok(lock)
}

/// PEP 508 marker environment of the target (not the host).
pub fn marker_env(t: &Target) -> Result<MarkerEnvironment> {
    let python_version = format!("3.{}", t.python_minor);
    MarkerEnvironment::try_from(MarkerEnvironmentBuilder {
        implementation_name: "cpython",
        implementation_version: &t.python_full,
        os_name: "posix",
        platform_machine: &t.arch,
        platform_python_implementation: "CPython",
        platform_release: "",
        platform_system: "Linux",
        platform_version: "",
        python_full_version: &t.python_full,
        python_version: &python_version,
        sys_platform: "linux",
    })
    .map_err(|e| bad_input(format!("python version {}: {e}", t.python_full)))
}

fn marker_holds(marker: &str, env: &MarkerEnvironment, what: &str) -> Result<bool> {
    let m = MarkerTree::from_str(marker).map_err(|e| {
        bad_input(format!(
            "pylock.toml: {what}: invalid marker {marker:?}: {e}"
        ))
    })?;
    Ok(m.evaluate(env, &[]))
}

fn python_ok(spec: &str, full: &str, what: &str) -> Result<bool> {
    let s = VersionSpecifiers::from_str(spec).map_err(|e| {
        bad_input(format!(
            "pylock.toml: {what}: invalid requires-python {spec:?}: {e}"
        ))
    })?;
    let v =
        Version::from_str(full).map_err(|e| bad_input(format!("python version {full:?}: {e}")))?;
    Ok(s.contains(&v))
}

fn platform_name(t: &Target) -> String {
    let arch = if t.arch == "x86_64" { "amd64" } else { "arm64" };
    format!("linux/{arch} (CPython 3.{})", t.python_minor)
}

/// The wheels to install for `target`, in lock order.
pub fn select(lock: &Lock, target: &Target) -> Result<Vec<Selected>> {
    let env = marker_env(target)?;
    let plat = platform_name(target);
    lock_applies(lock, target, &env, &plat)?;
    let ranker = Ranker::new(target);
    let mut out: Vec<Selected> = Vec::new();
    for p in &lock.packages {
        let version = p.version.clone().unwrap_or_default();
        let what = format!("{} {version}", p.name);
        if let Some(m) = &p.marker {
            if !marker_holds(m, &env, &what)? {
                continue;
            }
        }
        if out.iter().any(|s| s.name == p.name) {
            return Err(bad_input(format!(
                "pylock.toml: more than one entry of {} applies to {plat}",
                p.name
            )));
        }
        package_applies(p, target, &what)?;
        out.push(select_file(p, &ranker, version, &what, &plat)?);
    }
    Ok(out)
}

/// The lock's `requires-python` and `environments` hold for `target`.
fn lock_applies(lock: &Lock, target: &Target, env: &MarkerEnvironment, plat: &str) -> Result<()> {
    if let Some(rp) = &lock.requires_python {
        if !python_ok(rp, &target.python_full, "requires-python")? {
            return Err(bad_input(format!(
                "pylock.toml requires Python {rp}, but the base image has {} ({plat})",
                target.python_full
            )));
        }
    }
    if let Some(envs) = &lock.environments {
        let mut any = false;
        for e in envs {
            any |= marker_holds(e, env, "environments")?;
        }
        if !any {
            return Err(bad_input(format!(
                "pylock.toml is not for {plat}: none of its environments match ({})",
                envs.join(" | ")
            )));
        }
    }
    Ok(())
}

/// A package's `requires-python` holds, and it does not need a build from a source tree.
fn package_applies(p: &Package, target: &Target, what: &str) -> Result<()> {
    if let Some(rp) = &p.requires_python {
        if !python_ok(rp, &target.python_full, what)? {
            return Err(bad_input(format!(
                "pylock.toml: {what} requires Python {rp}; the base image has {}",
                target.python_full
            )));
        }
    }
    for (field, present) in [
        ("vcs", p.vcs.is_some()),
        ("directory", p.directory.is_some()),
        ("archive", p.archive.is_some()),
    ] {
        if present && p.wheels.is_empty() {
            return Err(bad_input(format!("pylock.toml: {what} comes from a {field} source, which needs a build; only wheels are installed")));
        }
    }
    Ok(())
}

/// The package's best wheel for the target, else its sdist (built into a wheel later).
fn select_file(
    p: &Package,
    ranker: &Ranker,
    version: String,
    what: &str,
    plat: &str,
) -> Result<Selected> {
    let names: Vec<(usize, WheelName)> = p
        .wheels
        .iter()
        .enumerate()
        .filter_map(|(i, w)| Some((i, WheelName::parse(&w.file_name()?).ok()?)))
        .collect();
    let best = ranker
        .best(names.iter().map(|(_, n)| n))
        .map(|i| names[i].0);
    let Some(i) = best else {
        // No wheel fits: the sdist, if the lock has one, is built into a wheel later.
        let sdist = p
            .sdist
            .clone()
            .and_then(|v| v.try_into::<Wheel>().ok())
            .filter(|w| w.sha256().is_some());
        if let Some(sd) = sdist {
            return Ok(Selected {
                name: p.name.clone(),
                version,
                file: sd.file_name().unwrap_or_default(),
                sha256: sd.sha256().unwrap_or_default().to_string(),
                wheel: sd,
                sdist: true,
                built_from: None,
            });
        }
        let why = if p.wheels.is_empty() {
            "it has no wheels and no sdist with a sha256 in the lock"
        } else {
            "none of its wheels fits and the lock has no sdist for it"
        };
        return Err(bad_input(format!("no wheel of {what} for {plat}: {why}; pick a version that ships wheels for this platform")));
    };
    let wheel = p.wheels[i].clone();
    let sha256 = wheel
        .sha256()
        .ok_or_else(|| {
            bad_input(format!(
                "pylock.toml: the wheel of {what} has no sha256 hash"
            ))
        })?
        .to_string();
    Ok(Selected {
        name: p.name.clone(),
        version,
        file: wheel.file_name().unwrap_or_default(),
        wheel,
        sha256,
        sdist: false,
        built_from: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wheels::tags::Libc;

    const LOCK: &str = r#"
lock-version = "1.0"
requires-python = ">=3.10"
created-by = "uv"

[[packages]]
name = "numpy"
version = "1.26.4"
wheels = [
  { url = "https://files.example/numpy-1.26.4-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl", size = 14, hashes = { sha256 = "aa" } },
  { url = "https://files.example/numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", size = 18, hashes = { sha256 = "bb" } },
  { url = "https://files.example/numpy-1.26.4-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", size = 18, hashes = { sha256 = "cc" } },
]

[[packages]]
name = "pywin32"
version = "306"
marker = "sys_platform == 'win32'"
wheels = [{ url = "https://files.example/pywin32-306-cp311-cp311-win_amd64.whl", hashes = { sha256 = "dd" } }]

[[packages]]
name = "only-arm"
version = "1"
marker = "platform_machine == 'aarch64'"
wheels = [{ url = "https://files.example/only_arm-1-py3-none-any.whl", hashes = { sha256 = "ee" } }]
"#;

    fn target(arch: &str) -> Target {
        Target::new(arch, "3.11.2", Libc::Glibc(2, 28)).unwrap()
    }

    #[test]
    fn selects_per_platform_with_target_markers() {
        let lock = parse(LOCK).unwrap();
        let amd = select(&lock, &target("amd64")).unwrap();
        assert_eq!(
            amd.iter().map(|s| s.sha256.as_str()).collect::<Vec<_>>(),
            ["bb"]
        );
        let arm = select(&lock, &target("arm64")).unwrap();
        assert_eq!(
            arm.iter().map(|s| s.sha256.as_str()).collect::<Vec<_>>(),
            ["aa", "ee"]
        );
        assert_eq!(
            arm[0].file,
            "numpy-1.26.4-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
        );
    }

    #[test]
    fn errors_name_package_version_and_platform() {
        let sdist_only = "lock-version = '1.0'\n[[packages]]\nname = 'legacy'\nversion = '0.1'\nsdist = { url = 'https://x/legacy-0.1.tar.gz', hashes = { sha256 = 'ff' } }\n";
        let picked = select(&parse(sdist_only).unwrap(), &target("arm64")).unwrap();
        assert!(
            picked[0].sdist && picked[0].file == "legacy-0.1.tar.gz" && picked[0].sha256 == "ff"
        );
        let nothing = "lock-version = '1.0'\n[[packages]]\nname = 'legacy'\nversion = '0.1'\n";
        let e = select(&parse(nothing).unwrap(), &target("arm64"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "no wheel of legacy 0.1 for linux/arm64 (CPython 3.11): it has no wheels and no sdist with a sha256 in the lock; pick a version that ships wheels for this platform");
        let old_python = "lock-version = '1.0'\nrequires-python = '>=3.12'\n";
        assert!(select(&parse(old_python).unwrap(), &target("amd64"))
            .unwrap_err()
            .to_string()
            .contains("requires Python >=3.12"));
        assert!(parse("lock-version = '2.0'\n").is_err());
        let envs = "lock-version = '1.0'\nenvironments = [\"sys_platform == 'darwin'\"]\n";
        assert!(select(&parse(envs).unwrap(), &target("amd64"))
            .unwrap_err()
            .to_string()
            .contains("none of its environments match"));
        let dup = "lock-version = '1.0'\n[[packages]]\nname = 'a'\nversion = '1'\nwheels = [{ name = 'a-1-py3-none-any.whl', hashes = { sha256 = '1' } }]\n[[packages]]\nname = 'a'\nversion = '2'\nwheels = [{ name = 'a-2-py3-none-any.whl', hashes = { sha256 = '2' } }]\n";
        assert!(select(&parse(dup).unwrap(), &target("amd64"))
            .unwrap_err()
            .to_string()
            .contains("more than one entry of a"));
    }
}
