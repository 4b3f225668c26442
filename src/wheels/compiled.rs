//! A wheel's bytecode, compiled once per cache: each wheel's modules in one compiler process of
//! their own (so a `.pyc` is a function of its wheel, the interpreter and the prefix alone), kept
//! in the cache directory under a key of those, and reused by every layer the wheel lands in —
//! another grouping, another platform of a pure wheel, another project on the same node.
//!
//! Compiling starts as soon as a wheel is downloaded, beside the downloads and the other
//! layers' streams (`pipeline::deps` runs one per core), rather than in the layer's own thread
//! before it streams.

use crate::oci::blobstore::EntryLock;
use crate::wheels::bytecode::{Compiler, Spooled, WheelPyc};
use crate::wheels::install::{for_each_module, Prefix};
use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The version of what a key names: bump when the compiler loop or the index changes.
const FORMAT: &str = "flops-pyc v1";

/// The index file: (target, offset, length, sha256 hex) per `.pyc`, in compile order.
type Index = Vec<(String, u64, u64, String)>;

/// The key of a wheel's bytecode: its bytes (`sha256`, hex, as the lock gives it), the
/// interpreter (cache tag and full version) and the prefix (the `.pyc`s carry their source's
/// path in the image).
pub fn key(prefix: &Prefix, sha256: &str) -> Option<String> {
    let b = prefix.bytecode.as_ref()?;
    let mut h = Sha256::new();
    h.update(format!(
        "{FORMAT}\n{sha256}\n{} {}\n{}\n",
        b.tag, b.version, prefix.site
    ));
    Some(hex::encode(h.finalize()))
}

/// The bytecode of `wheel` (whose SHA-256 is `sha256`) for `prefix`'s interpreter, from
/// `cache/bytecode/` or compiled into it (a compile by another builder sharing the cache is
/// waited for, not repeated). None when the prefix asks for no bytecode.
///
/// Errors: the wheel is not a valid wheel or a module does not match its RECORD hash (naming
/// the wheel and the file), the interpreter stops, or the cache cannot be written.
pub fn wheel_bytecode(
    prefix: &Prefix,
    wheel: &Path,
    sha256: &str,
    cache: &Path,
) -> Result<Option<WheelPyc>> {
    let (Some(b), Some(key)) = (prefix.bytecode.as_ref(), key(prefix, sha256)) else {
        return Ok(None);
    };
    let dir = cache.join("bytecode");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (spool_path, index_path) = (
        dir.join(format!("{key}.spool")),
        dir.join(format!("{key}.json")),
    );
    let _lock = EntryLock::acquire_blocking(&dir.join(&key))?;
    if let Some(found) = load(&spool_path, &index_path) {
        return Ok(Some(found));
    }
    let tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("a temporary file in {}", dir.display()))?;
    let mut compiler = Compiler::start_into(b, tmp.reopen()?)?;
    let mut index: Index = Vec::new();
    for_each_module(prefix, wheel, |target, source| {
        if let Some(at) = compiler.compile(target, source)? {
            index.push((
                target.to_string(),
                at.offset,
                at.len,
                hex::encode(at.sha256),
            ));
        }
        Ok(())
    })?;
    drop(compiler);
    tmp.persist(&spool_path)
        .with_context(|| format!("keeping {}", spool_path.display()))?;
    // The index is written last: it is what says the spool is whole.
    let part = index_path.with_extension("json.part");
    std::fs::write(&part, serde_json::to_vec(&index)?)
        .with_context(|| format!("writing {}", part.display()))?;
    std::fs::rename(&part, &index_path)?;
    Ok(Some(load(&spool_path, &index_path).with_context(|| {
        format!("reading back {}", index_path.display())
    })?))
}

/// A cached wheel's bytecode; None when it is not (wholly) there.
fn load(spool_path: &PathBuf, index_path: &PathBuf) -> Option<WheelPyc> {
    let index: Index = serde_json::from_slice(&std::fs::read(index_path).ok()?).ok()?;
    let spool = std::fs::File::open(spool_path).ok()?;
    let len = spool.metadata().ok()?.len();
    let mut pycs = HashMap::with_capacity(index.len());
    for (target, offset, size, sha) in index {
        let sha256: [u8; 32] = hex::decode(sha).ok()?.try_into().ok()?;
        if offset + size > len {
            return None;
        }
        let at = Spooled {
            offset,
            len: size,
            sha256,
        };
        pycs.insert(target, at);
    }
    Some(WheelPyc::new(spool, pycs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wheels::bytecode::Bytecode;
    use base64::Engine as _;
    use std::io::{Read as _, Write as _};

    /// A valid wheel `name`-1.0 of `files` (RECORD written for them).
    fn wheel(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let path = dir.join(format!("{name}-1.0-py3-none-any.whl"));
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let di = format!("{name}-1.0.dist-info");
        let meta = [
            (
                format!("{di}/METADATA"),
                format!("Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"),
            ),
            (
                format!("{di}/WHEEL"),
                "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n".to_string(),
            ),
        ];
        let all: Vec<(String, String)> = files
            .iter()
            .map(|(p, c)| (p.to_string(), c.to_string()))
            .chain(meta)
            .collect();
        let mut record = String::new();
        for (p, c) in &all {
            let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Sha256::digest(c.as_bytes()));
            record += &format!("{p},sha256={h},{}\n", c.len());
            z.start_file(p.as_str(), zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(c.as_bytes()).unwrap();
        }
        record += &format!("{di}/RECORD,,\n");
        z.start_file(
            format!("{di}/RECORD"),
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        z.write_all(record.as_bytes()).unwrap();
        z.finish().unwrap();
        path
    }

    #[test]
    fn a_wheel_is_compiled_once_per_cache_and_its_pycs_are_its_own() {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
            .output()
            .expect("python3 on PATH (the rig installs it)");
        let minor = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let b = Bytecode::find(&minor).expect("python3.X on PATH");
        assert!(b.python.is_absolute() && !b.python.starts_with("/root/.pyenv/shims"));
        let prefix = Prefix::new("/opt/flops", "/usr/bin/python3").with_bytecode(Some(b));
        let dir = tempfile::tempdir().unwrap();
        let files = [
            ("pkg/__init__.py", "from .m import X\n"),
            ("pkg/m.py", "X = {'a', 'b'}\n"),
            ("pkg/py2.py", "print 'old'\n"),
            ("pkg/tests/test_m.py", "def test(): pass\n"),
        ];
        let w = wheel(dir.path(), "pkg", &files);
        let cache = dir.path().join("cache");
        let first = wheel_bytecode(&prefix, &w, "aa", &cache).unwrap().unwrap();
        let mut got: Vec<&str> = first.pycs.keys().map(String::as_str).collect();
        got.sort();
        // Python 2 leftovers and test suites get none.
        assert_eq!(
            got,
            [
                "opt/flops/site-packages/pkg/__init__.py",
                "opt/flops/site-packages/pkg/m.py"
            ]
        );
        let at = first.pycs["opt/flops/site-packages/pkg/m.py"];
        let mut pyc = Vec::new();
        first.reader(at).read_to_end(&mut pyc).unwrap();
        assert_eq!(<[u8; 32]>::from(Sha256::digest(&pyc)), at.sha256);
        // The second time it is read from the cache: the wheel is not even opened.
        std::fs::remove_file(&w).unwrap();
        let again = wheel_bytecode(&prefix, &w, "aa", &cache).unwrap().unwrap();
        assert_eq!(again.pycs, first.pycs);
        // Another wheel's bytes (key) are compiled anew, and a broken wheel is named.
        std::fs::write(&w, b"not a zip").unwrap();
        let e = wheel_bytecode(&prefix, &w, "bb", &cache).unwrap_err();
        assert!(
            format!("{e:#}").contains("pkg-1.0-py3-none-any.whl"),
            "{e:#}"
        );
        // No bytecode asked: nothing compiled.
        let plain = Prefix::new("/opt/flops", "/usr/bin/python3");
        assert!(wheel_bytecode(&plain, &w, "aa", &cache).unwrap().is_none());
    }
}
