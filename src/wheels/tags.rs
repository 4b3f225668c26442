//! Choosing the wheel for a target platform: wheel file names (PEP 427) and compatibility tags
//! in priority order (PEP 425, manylinux PEP 600 with the legacy aliases, musllinux PEP 656,
//! abi3). Nothing here looks at the host: the target is the image's platform and Python.

use crate::error::bad_input;
use anyhow::Result;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Libc {
    /// glibc `major.minor` of the base image (manylinux tags up to it).
    Glibc(u32, u32),
    /// musl `major.minor` (musllinux tags); only for musl bases.
    Musl(u32, u32),
}

/// The platform and interpreter wheels are chosen for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// CPython `3.minor`.
    pub python_minor: u32,
    /// Full version, e.g. `3.11.2`, for markers.
    pub python_full: String,
    /// Wheel arch: `x86_64` or `aarch64`.
    pub arch: String,
    pub libc: Libc,
}

/// Default glibc bound when the base image does not say (manylinux_2_28 = RHEL 8 era).
pub const DEFAULT_GLIBC: (u32, u32) = (2, 28);

impl Target {
    /// `linux/amd64` → x86_64, `linux/arm64` → aarch64.
    pub fn new(platform_arch: &str, python_full: &str, libc: Libc) -> Result<Self> {
        let arch = match platform_arch {
            "amd64" | "x86_64" => "x86_64",
            "arm64" | "aarch64" => "aarch64",
            other => {
                return Err(bad_input(format!(
                "platform architecture {other} is not supported for wheels (use amd64 or arm64)"
            )))
            }
        };
        let mut parts = python_full.split('.');
        let (major, minor) = (parts.next(), parts.next().and_then(|m| m.parse().ok()));
        let (Some("3"), Some(minor)) = (major, minor) else {
            return Err(bad_input(format!(
                "python version {python_full:?} is not CPython 3.x"
            )));
        };
        Ok(Self {
            python_minor: minor,
            python_full: python_full.to_string(),
            arch: arch.into(),
            libc,
        })
    }

    /// Platform tags, best first.
    pub fn platform_tags(&self) -> Vec<String> {
        let arch = &self.arch;
        let mut out = Vec::new();
        match self.libc {
            Libc::Glibc(major, minor) => {
                let floor = if arch == "x86_64" { 5 } else { 17 };
                if major == 2 {
                    for y in (floor..=minor).rev() {
                        out.push(format!("manylinux_2_{y}_{arch}"));
                        let legacy = match y {
                            17 => Some("manylinux2014"),
                            12 => Some("manylinux2010"),
                            5 => Some("manylinux1"),
                            _ => None,
                        };
                        if let Some(l) = legacy {
                            out.push(format!("{l}_{arch}"));
                        }
                    }
                }
            }
            Libc::Musl(1, minor) => {
                for y in (0..=minor).rev() {
                    out.push(format!("musllinux_1_{y}_{arch}"));
                }
            }
            Libc::Musl(..) => {}
        }
        out
    }

    /// Every compatible `python-abi-platform` tag, best first (packaging's `sys_tags` order).
    pub fn tags(&self) -> Vec<String> {
        let m = self.python_minor;
        let plats = self.platform_tags();
        let mut out = Vec::new();
        let mut push_all = |py: &str, abi: &str| {
            for p in &plats {
                out.push(format!("{py}-{abi}-{p}"));
            }
        };
        push_all(&format!("cp3{m}"), &format!("cp3{m}"));
        for minor in (2..=m).rev() {
            push_all(&format!("cp3{minor}"), "abi3");
        }
        push_all(&format!("cp3{m}"), "none");
        push_all(&format!("py3{m}"), "none");
        push_all("py3", "none");
        for minor in (0..m).rev() {
            push_all(&format!("py3{minor}"), "none");
        }
        out.push(format!("cp3{m}-none-any"));
        out.push(format!("py3{m}-none-any"));
        out.push("py3-none-any".into());
        for minor in (0..m).rev() {
            out.push(format!("py3{minor}-none-any"));
        }
        out
    }
}

/// A parsed wheel file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelName {
    pub distribution: String,
    pub version: String,
    /// Build tag: number and the rest, for tie-breaking.
    pub build: Option<(u64, String)>,
    /// Expanded `py-abi-plat` tag set.
    pub tags: Vec<String>,
}

impl WheelName {
    pub fn parse(file: &str) -> Result<Self> {
        let bad = || bad_input(format!("{file:?} is not a valid wheel file name"));
        let stem = file.strip_suffix(".whl").ok_or_else(bad)?;
        let parts: Vec<&str> = stem.split('-').collect();
        let (dist, version, build, py, abi, plat) = match parts.as_slice() {
            [d, v, p, a, pl] => (d, v, None, p, a, pl),
            [d, v, b, p, a, pl] => (d, v, Some(*b), p, a, pl),
            _ => return Err(bad()),
        };
        let build = match build {
            Some(b) => {
                let digits: String = b.chars().take_while(char::is_ascii_digit).collect();
                if digits.is_empty() {
                    return Err(bad());
                }
                Some((
                    digits.parse().map_err(|_| bad())?,
                    b[digits.len()..].to_string(),
                ))
            }
            None => None,
        };
        let mut tags = Vec::new();
        for p in py.split('.') {
            for a in abi.split('.') {
                for pl in plat.split('.') {
                    tags.push(format!("{p}-{a}-{pl}"));
                }
            }
        }
        Ok(Self {
            distribution: dist.to_string(),
            version: version.to_string(),
            build,
            tags,
        })
    }
}

/// Ranks wheels for one target: lower is better; `None` = incompatible.
pub struct Ranker {
    priority: HashMap<String, usize>,
}

impl Ranker {
    pub fn new(target: &Target) -> Self {
        Self {
            priority: target
                .tags()
                .into_iter()
                .enumerate()
                .map(|(i, t)| (t, i))
                .collect(),
        }
    }

    pub fn rank(&self, w: &WheelName) -> Option<usize> {
        w.tags
            .iter()
            .filter_map(|t| self.priority.get(t))
            .min()
            .copied()
    }

    /// The index of the best wheel among `names`: best tag, then highest build tag.
    pub fn best<'a>(&self, names: impl IntoIterator<Item = &'a WheelName>) -> Option<usize> {
        names
            .into_iter()
            .enumerate()
            .filter_map(|(i, w)| {
                self.rank(w)
                    .map(|r| (r, std::cmp::Reverse(w.build.clone()), i))
            })
            .min()
            .map(|(_, _, i)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd64() -> Target {
        Target::new("amd64", "3.11.2", Libc::Glibc(2, 36)).unwrap()
    }

    #[test]
    fn parses_compressed_tag_sets_and_build_tags() {
        let w = WheelName::parse(
            "numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        )
        .unwrap();
        assert_eq!(
            w.tags,
            [
                "cp311-cp311-manylinux_2_17_x86_64",
                "cp311-cp311-manylinux2014_x86_64"
            ]
        );
        let w = WheelName::parse("pkg-1.0-2b-py2.py3-none-any.whl").unwrap();
        assert_eq!(w.build, Some((2, "b".into())));
        assert_eq!(w.tags.len(), 2);
        assert!(WheelName::parse("pkg-1.0.tar.gz").is_err());
    }

    #[test]
    fn platform_order_has_legacy_aliases_after_their_equal() {
        let t = Target::new("arm64", "3.11.2", Libc::Glibc(2, 28)).unwrap();
        let p = t.platform_tags();
        assert_eq!(p.first().unwrap(), "manylinux_2_28_aarch64");
        assert_eq!(
            p[p.len() - 2..],
            [
                "manylinux_2_17_aarch64".to_string(),
                "manylinux2014_aarch64".into()
            ]
        );
        let p = amd64().platform_tags();
        assert_eq!(p.last().unwrap(), "manylinux1_x86_64");
        assert!(
            p.iter().position(|x| x == "manylinux2010_x86_64").unwrap()
                == p.iter().position(|x| x == "manylinux_2_12_x86_64").unwrap() + 1
        );
        assert!(
            !p.iter().any(|x| x.starts_with("linux_")),
            "no linux_<arch> for cross builds"
        );
        let musl = Target::new("amd64", "3.11.2", Libc::Musl(1, 2))
            .unwrap()
            .platform_tags();
        assert_eq!(
            musl,
            [
                "musllinux_1_2_x86_64",
                "musllinux_1_1_x86_64",
                "musllinux_1_0_x86_64"
            ]
        );
    }

    #[test]
    fn manylinux2014_only_wheels_are_found() {
        // scikit-learn 1.4.2 ships only manylinux2014 wheels.
        let r = Ranker::new(&amd64());
        let w =
            WheelName::parse("scikit_learn-1.4.2-cp311-cp311-manylinux2014_x86_64.whl").unwrap();
        assert!(r.rank(&w).is_some());
        let glibc_too_new = WheelName::parse("x-1-cp311-cp311-manylinux_2_39_x86_64.whl").unwrap();
        assert!(r.rank(&glibc_too_new).is_none());
        let arm = WheelName::parse("x-1-cp311-cp311-manylinux2014_aarch64.whl").unwrap();
        assert!(r.rank(&arm).is_none());
        let musl = WheelName::parse("x-1-cp311-cp311-musllinux_1_1_x86_64.whl").unwrap();
        assert!(r.rank(&musl).is_none(), "musllinux only for musl bases");
    }

    #[test]
    fn priority_specific_then_abi3_then_pure() {
        let r = Ranker::new(&amd64());
        let names: Vec<WheelName> = [
            "p-1-py3-none-any.whl",
            "p-1-cp38-abi3-manylinux_2_17_x86_64.whl",
            "p-1-cp311-cp311-manylinux_2_17_x86_64.whl",
            "p-1-cp312-cp312-manylinux_2_17_x86_64.whl",
        ]
        .iter()
        .map(|n| WheelName::parse(n).unwrap())
        .collect();
        assert_eq!(r.best(&names), Some(2));
        assert_eq!(r.best(&names[..2]), Some(1));
        assert_eq!(r.best(&names[..1]), Some(0));
        assert_eq!(r.best(&names[3..]), None);
        // Same tags: the higher build tag wins.
        let b: Vec<WheelName> = [
            "p-1-1-py3-none-any.whl",
            "p-1-3-py3-none-any.whl",
            "p-1-py3-none-any.whl",
        ]
        .iter()
        .map(|n| WheelName::parse(n).unwrap())
        .collect();
        assert_eq!(r.best(&b), Some(1));
    }
}
