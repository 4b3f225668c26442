//! Installing wheels (PEP 427) straight from their zip files into a layer's tar stream, with no
//! temporary install tree and no Python. Several wheels can share one layer: their entries are
//! planned first (paths, modes, RECORD), merged, sorted and checked for clashes, then streamed.
//!
//! Every member is hashed while it streams and compared with the wheel's RECORD; an unlisted
//! or wrongly hashed file fails the install (the spec says MUST; pip does not check).

use crate::error::bad_input;
use crate::oci::layer::LayerWriter;
use anyhow::{Context, Result};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const INSTALLER: &str = "flops-image-builder";

/// Where wheels go in the image (paths without a leading `/`) and the interpreter scripts use.
#[derive(Debug, Clone)]
pub struct Prefix {
    pub root: String,
    pub site: String,
    pub bin: String,
    /// Absolute interpreter path inside the image, for script shebangs.
    pub python: String,
}

impl Prefix {
    pub fn new(root: &str, python: &str) -> Self {
        let root = root.trim_matches('/').to_string();
        Self {
            site: format!("{root}/site-packages"),
            bin: format!("{root}/bin"),
            root,
            python: python.to_string(),
        }
    }

    fn shebang(&self) -> String {
        let env_form =
            self.python.starts_with("/usr/bin/env ") && self.python.split(' ').count() == 2;
        if self.python.len() + 2 <= 127 && (!self.python.contains(' ') || env_form) {
            format!("#!{}\n", self.python)
        } else {
            // Long or spaced paths: the /bin/sh trampoline pip and uv use.
            format!(
                "#!/bin/sh\n'''exec' '{}' \"$0\" \"$@\"\n' '''\n",
                self.python
            )
        }
    }
}

fn record_hash(data: &[u8]) -> String {
    format!(
        "sha256={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(data))
    )
}

enum Source {
    /// Member `index` of wheel `wheel`; `expected` = RECORD hash and size.
    Member {
        wheel: usize,
        index: usize,
        expected: (String, u64),
    },
    Bytes(Vec<u8>),
}

struct Planned {
    exec: bool,
    source: Source,
    /// Which wheel it came from, for clash messages.
    origin: usize,
}

/// Minimal CSV reader for RECORD (quoted fields may hold commas and doubled quotes).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().expect("field").push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(String::new()),
            (c, _) => out.last_mut().expect("field").push(c),
        }
    }
    out
}

fn csv_line(fields: &[&str]) -> String {
    fields
        .iter()
        .map(|f| {
            if f.contains([',', '"', '\n']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `pkg.mod:obj.attr [extra]` → (module, object path).
fn entry_point(value: &str) -> Option<(String, String)> {
    let value = value.split('[').next()?.trim();
    let (module, obj) = value.split_once(':')?;
    let (module, obj) = (module.trim(), obj.trim());
    (!module.is_empty() && !obj.is_empty()).then(|| (module.to_string(), obj.to_string()))
}

fn launcher(prefix: &Prefix, module: &str, obj: &str) -> Vec<u8> {
    let head = obj.split('.').next().unwrap_or(obj);
    format!(
        "{}# -*- coding: utf-8 -*-\nimport re\nimport sys\nfrom {module} import {head}\nif __name__ == \"__main__\":\n    sys.argv[0] = re.sub(r\"(-script\\.pyw|\\.exe)?$\", \"\", sys.argv[0])\n    sys.exit({obj}())\n",
        prefix.shebang()
    )
    .into_bytes()
}

/// `[console_scripts]` and `[gui_scripts]` of entry_points.txt (INI, case-sensitive keys).
fn scripts_of(entry_points: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in entry_points.lines().map(str::trim) {
        if line.starts_with('[') && line.ends_with(']') {
            section = line[1..line.len() - 1].trim().to_string();
        } else if (section == "console_scripts" || section == "gui_scripts")
            && !line.starts_with(['#', ';'])
        {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    out
}

fn norm_name(s: &str) -> String {
    s.to_lowercase().replace(['-', '.'], "_")
}

fn safe_rel(name: &str, wheel: &str) -> Result<()> {
    if name.starts_with('/')
        || name.contains('\\')
        || name.split('/').any(|c| c == "..")
        || name.contains('\0')
    {
        return Err(bad_input(format!(
            "{wheel}: unsafe path {name:?} in the wheel (absolute or '..'); refusing to install it"
        )));
    }
    Ok(())
}

fn relative_to_site(prefix: &Prefix, path: &str) -> String {
    match path.strip_prefix(&format!("{}/", prefix.site)) {
        Some(rel) => rel.to_string(),
        None => {
            let up = prefix.site.split('/').count() - prefix.root.split('/').count();
            let from_root = path
                .strip_prefix(&format!("{}/", prefix.root))
                .unwrap_or(path);
            format!("{}{from_root}", "../".repeat(up))
        }
    }
}

/// Plans one wheel into `plan`.
fn plan_wheel(
    idx: usize,
    path: &Path,
    zip: &mut zip::ZipArchive<std::fs::File>,
    prefix: &Prefix,
    plan: &mut BTreeMap<String, Planned>,
    names: &[String],
) -> Result<()> {
    let wname = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("wheel")
        .to_string();
    let parsed = crate::deps::wheel::WheelName::parse(&wname)?;
    let read_text = |zip: &mut zip::ZipArchive<std::fs::File>, name: &str| -> Result<String> {
        let mut s = String::new();
        zip.by_name(name)
            .map_err(|e| bad_input(format!("{wname}: cannot read {name}: {e}")))?
            .read_to_string(&mut s)
            .map_err(|e| bad_input(format!("{wname}: {name}: {e}")))?;
        Ok(s)
    };
    let dist_infos: BTreeSet<String> = zip
        .file_names()
        .filter_map(|n| n.ok().and_then(|n| n.split('/').next().map(str::to_string)))
        .filter(|t| t.ends_with(".dist-info"))
        .collect();
    let dist_info = match dist_infos.len() {
        1 => dist_infos.into_iter().next().expect("one"),
        n => {
            return Err(bad_input(format!(
                "{wname}: has {n} top-level .dist-info directories, expected exactly one"
            )))
        }
    };
    let stem = dist_info.trim_end_matches(".dist-info").to_string();
    let data_dir = format!("{stem}.data/");
    let wheel_meta = read_text(zip, &format!("{dist_info}/WHEEL"))?;
    let field = |text: &str, key: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        })
    };
    let version = field(&wheel_meta, "Wheel-Version").unwrap_or_default();
    if version.split('.').next() != Some("1") {
        return Err(bad_input(format!(
            "{wname}: Wheel-Version {version:?} is not supported (major 1 only)"
        )));
    }
    // Root-Is-Purelib is not consulted: purelib and platlib are one site-packages in our prefix.
    let metadata = read_text(zip, &format!("{dist_info}/METADATA"))?;
    let (mname, mversion) = (
        field(&metadata, "Name").unwrap_or_default(),
        field(&metadata, "Version").unwrap_or_default(),
    );
    if norm_name(&mname) != norm_name(&parsed.distribution) || mversion != parsed.version {
        return Err(bad_input(format!(
            "{wname}: METADATA says {mname} {mversion}, the file name says {} {}",
            parsed.distribution, parsed.version
        )));
    }
    let record = read_text(zip, &format!("{dist_info}/RECORD"))?;
    let mut expected: HashMap<String, (String, u64)> = HashMap::new();
    for line in record.lines().filter(|l| !l.trim().is_empty()) {
        let f = csv_fields(line);
        if f.len() >= 3 && f[1].starts_with("sha256=") {
            expected.insert(
                f[0].clone(),
                (f[1].clone(), f[2].parse().unwrap_or(u64::MAX)),
            );
        }
    }
    let mut record_rows: Vec<(String, String, String)> = Vec::new();
    // Plans one file and its RECORD row (hash and size from the wheel's RECORD for members,
    // computed for generated bytes).
    let add = |plan: &mut BTreeMap<String, Planned>,
               target: String,
               p: Planned,
               rows: &mut Vec<(String, String, String)>|
     -> Result<()> {
        if let Some(prev) = plan.get(&target) {
            return Err(bad_input(format!(
                "{} and {} both install /{target}; refusing to overwrite",
                names[prev.origin], names[p.origin]
            )));
        }
        let (hash, size) = match &p.source {
            Source::Bytes(b) => (record_hash(b), b.len() as u64),
            Source::Member { expected, .. } => expected.clone(),
        };
        rows.push((relative_to_site(prefix, &target), hash, size.to_string()));
        plan.insert(target, p);
        Ok(())
    };
    for index in 0..zip.len() {
        let f = zip
            .by_index_raw(index)
            .map_err(|e| bad_input(format!("{wname}: corrupt zip: {e}")))?;
        let name = f
            .name()
            .map_err(|e| bad_input(format!("{wname}: member name is not valid: {e}")))?
            .to_string();
        let exec = f.unix_mode().is_some_and(|m| m & 0o111 != 0);
        let size = f.size();
        drop(f);
        safe_rel(&name, &wname)?;
        if name.ends_with('/') || name.split('/').any(|c| c == "__pycache__") {
            continue;
        }
        if [
            format!("{dist_info}/RECORD"),
            format!("{dist_info}/RECORD.jws"),
            format!("{dist_info}/RECORD.p7s"),
            format!("{dist_info}/INSTALLER"),
        ]
        .contains(&name)
        {
            continue;
        }
        let want = expected
            .get(&name)
            .cloned()
            .ok_or_else(|| bad_input(format!("{wname}: {name} is not listed in RECORD")))?;
        if want.1 != size {
            return Err(bad_input(format!(
                "{wname}: {name} is {size} bytes, RECORD says {}",
                want.1
            )));
        }
        let (target, is_script) = match name.strip_prefix(&data_dir) {
            Some(rest) => {
                let (key, sub) = rest.split_once('/').unwrap_or((rest, ""));
                match key {
                    "purelib" | "platlib" => (format!("{}/{sub}", prefix.site), false),
                    "scripts" => (format!("{}/{sub}", prefix.bin), true),
                    "headers" => (
                        format!("{}/include/{}/{sub}", prefix.root, parsed.distribution),
                        false,
                    ),
                    "data" => (format!("{}/{sub}", prefix.root), false),
                    other => {
                        return Err(bad_input(format!(
                            "{wname}: unknown .data directory {other:?}"
                        )))
                    }
                }
            }
            None => (format!("{}/{name}", prefix.site), false),
        };
        if is_script {
            // `#!python` scripts get the image's interpreter; others keep their bytes.
            let mut bytes = Vec::with_capacity(size as usize);
            zip.by_index(index)?
                .read_to_end(&mut bytes)
                .with_context(|| format!("{wname}: reading {name}"))?;
            if record_hash(&bytes) != want.0 {
                return Err(bad_input(format!(
                    "{wname}: {name} does not match its RECORD hash"
                )));
            }
            if bytes.starts_with(b"#!python") {
                let rest = bytes
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(&[][..], |i| &bytes[i + 1..]);
                let mut new = prefix.shebang().into_bytes();
                new.extend_from_slice(rest);
                bytes = new;
            }
            add(
                plan,
                target,
                Planned {
                    exec: true,
                    source: Source::Bytes(bytes),
                    origin: idx,
                },
                &mut record_rows,
            )?;
        } else {
            add(
                plan,
                target,
                Planned {
                    exec,
                    source: Source::Member {
                        wheel: idx,
                        index,
                        expected: want.clone(),
                    },
                    origin: idx,
                },
                &mut record_rows,
            )?;
        }
    }
    if let Ok(ep) = read_text(zip, &format!("{dist_info}/entry_points.txt")) {
        for (script, value) in scripts_of(&ep) {
            if script.contains('/') || script == "python" || script.starts_with("python3") {
                return Err(bad_input(format!(
                    "{wname}: refusing to install a script named {script:?}"
                )));
            }
            let (module, obj) = entry_point(&value).ok_or_else(|| {
                bad_input(format!("{wname}: invalid entry point {script} = {value}"))
            })?;
            let bytes = launcher(prefix, &module, &obj);
            add(
                plan,
                format!("{}/{script}", prefix.bin),
                Planned {
                    exec: true,
                    source: Source::Bytes(bytes),
                    origin: idx,
                },
                &mut record_rows,
            )?;
        }
    }
    let installer = format!("{INSTALLER}\n").into_bytes();
    add(
        plan,
        format!("{}/{dist_info}/INSTALLER", prefix.site),
        Planned {
            exec: false,
            source: Source::Bytes(installer),
            origin: idx,
        },
        &mut record_rows,
    )?;
    record_rows.push((format!("{dist_info}/RECORD"), String::new(), String::new()));
    record_rows.sort();
    let record: String = record_rows
        .iter()
        .map(|(p, h, s)| csv_line(&[p, h, s]) + "\n")
        .collect();
    let target = format!("{}/{dist_info}/RECORD", prefix.site);
    if plan.contains_key(&target) {
        return Err(bad_input(format!(
            "{wname}: {target} clashes with another wheel"
        )));
    }
    plan.insert(
        target,
        Planned {
            exec: false,
            source: Source::Bytes(record.into_bytes()),
            origin: idx,
        },
    );
    Ok(())
}

/// Checks the RECORD hash and size of a member as it streams by.
struct Verify<R> {
    inner: R,
    hasher: Sha256,
    seen: u64,
    expected: (String, u64),
    what: String,
}

impl<R: Read> Read for Verify<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.seen += n as u64;
        // Checked on the last expected byte: the tar writer stops reading at the entry size,
        // so waiting for EOF would never check anything.
        let done = (n > 0 && self.seen >= self.expected.1) || (n == 0 && !buf.is_empty());
        if done {
            let got = format!(
                "sha256={}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(self.hasher.clone().finalize())
            );
            if got != self.expected.0 || self.seen != self.expected.1 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} does not match its RECORD hash", self.what),
                ));
            }
        }
        Ok(n)
    }
}

/// Installs `wheels` into the layer being written (one or several per layer).
pub fn install(w: &mut LayerWriter, prefix: &Prefix, wheels: &[PathBuf]) -> Result<()> {
    let names: Vec<String> = wheels
        .iter()
        .map(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("wheel")
                .to_string()
        })
        .collect();
    let mut zips = Vec::new();
    for p in wheels {
        let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        zips.push(
            zip::ZipArchive::new(f)
                .map_err(|e| bad_input(format!("{}: not a valid wheel (zip): {e}", p.display())))?,
        );
    }
    let mut plan = BTreeMap::new();
    for (i, p) in wheels.iter().enumerate() {
        plan_wheel(i, p, &mut zips[i], prefix, &mut plan, &names)?;
    }
    // Parent directories of everything, then all entries in byte order (parents first).
    let mut dirs = BTreeSet::new();
    for path in plan.keys() {
        let mut acc = String::new();
        for comp in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, d)| d)
            .unwrap_or(&[])
        {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(comp);
            dirs.insert(acc.clone());
        }
    }
    let mut all: Vec<(&str, Option<&Planned>)> = dirs
        .iter()
        .map(|d| (d.as_str(), None))
        .chain(plan.iter().map(|(k, v)| (k.as_str(), Some(v))))
        .collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    for (path, entry) in all {
        match entry {
            None => w.dir(path)?,
            Some(Planned {
                exec,
                source: Source::Bytes(b),
                ..
            }) => w.file(path, *exec, b.len() as u64, &b[..])?,
            Some(Planned {
                exec,
                source:
                    Source::Member {
                        wheel,
                        index,
                        expected,
                    },
                ..
            }) => {
                let member = zips[*wheel]
                    .by_index(*index)
                    .map_err(|e| bad_input(format!("{}: {e}", names[*wheel])))?;
                let what = format!("{}: {}", names[*wheel], member.name().unwrap_or_default());
                let reader = Verify {
                    inner: member,
                    hasher: Sha256::new(),
                    seen: 0,
                    expected: expected.clone(),
                    what,
                };
                w.file(path, *exec, expected.1, reader).map_err(|e| {
                    let root = e.chain().last().map(|c| c.to_string()).unwrap_or_default();
                    bad_input(format!("installing {path}: {root}"))
                })?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_entry_points() {
        assert_eq!(
            csv_fields(r#""a,b.py",sha256=x,3"#),
            ["a,b.py", "sha256=x", "3"]
        );
        assert_eq!(csv_line(&["a,b.py", "h", "1"]), r#""a,b.py",h,1"#);
        assert_eq!(
            entry_point("pkg.cli:main.run [extra]"),
            Some(("pkg.cli".into(), "main.run".into()))
        );
        assert_eq!(
            scripts_of("[console_scripts]\nf = a:b\n[other]\nx = y:z\n[gui_scripts]\ng=c:d\n"),
            [
                ("f".to_string(), "a:b".to_string()),
                ("g".into(), "c:d".into())
            ]
        );
    }

    #[test]
    fn record_paths_relative_to_site_packages() {
        let p = Prefix::new("/opt/flops", "/usr/bin/python3");
        assert_eq!(
            relative_to_site(&p, "opt/flops/site-packages/a/b.py"),
            "a/b.py"
        );
        assert_eq!(relative_to_site(&p, "opt/flops/bin/flwr"), "../bin/flwr");
        assert_eq!(p.shebang(), "#!/usr/bin/python3\n");
        assert!(Prefix::new("/x", &format!("/a b/{}", "p".repeat(130)))
            .shebang()
            .starts_with("#!/bin/sh\n"));
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in ["/etc/passwd", "../x", "a/../../x", "a\\b"] {
            assert!(safe_rel(bad, "w.whl").is_err(), "{bad}");
        }
        assert!(safe_rel("pkg/mod.py", "w.whl").is_ok());
    }
}
