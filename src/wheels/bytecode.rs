//! Bytecode compiled at build time, as pip and uv's `--compile-bytecode` do at install time:
//! without it every container start compiles the ML stack's modules again (a read-only root
//! filesystem never keeps them), which doubles the import time of e.g. `mlflow.pyfunc, datasets,
//! sklearn` (11 s → 4.8 s on 2 cores, see `bench/out/start-*.md`).
//!
//! Compiling needs an interpreter of the image's Python minor (the `.pyc` format and the code
//! generator are the minor's): `python3.X` on the builder's PATH. None found ⇒ no bytecode,
//! said once in the log and the report. The interpreter only compiles (`compile()` parses,
//! never runs the source), with an empty environment and a fixed hash seed.
//!
//! The `.pyc` files are PEP 552 `unchecked-hash` ones: valid whatever the files' mtimes (the
//! layers' are 0) and never re-validated at import. A `.pyc` can depend on what its process
//! compiled before (marshal shares an object when its refcount is above 1, and what earlier
//! compiles left alive in the process can raise it; seen in 4 modules of an sklearn image),
//! so each wheel compiles its modules in one process of its own, in the wheel's member order:
//! each `.pyc` is a function of its wheel (and the interpreter), the layers stay reproducible,
//! and a wheel's bytecode can be kept and reused whatever layer the wheel lands in
//! (`wheels::compiled`).

use crate::oci::layer::Hashing;
use anyhow::{anyhow, Context, Result};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The compiler loop run by the image Python's minor: for each request (the file's path in the
/// image, then the source's length and bytes) it answers the `.pyc`'s length and bytes, or 0
/// when this Python cannot compile the file (pip skips those too, e.g. Python 2 leftovers).
/// `_code_to_hash_pyc` is what `py_compile` itself calls; `py_compile` would need the source
/// and the output as files.
const COMPILER: &str = r#"
import sys, importlib.util, importlib._bootstrap_external as be
i, o = sys.stdin.buffer, sys.stdout.buffer
while True:
    path = i.readline()
    if not path:
        break
    src = i.read(int(i.readline()))
    try:
        code = compile(src, path.decode().rstrip("\n"), "exec", dont_inherit=True)
        data = be._code_to_hash_pyc(code, importlib.util.source_hash(src), False)
    except Exception:
        data = b""
    o.write(b"%d\n" % len(data))
    o.write(data)
    o.flush()
"#;

/// An interpreter able to write the image's bytecode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bytecode {
    /// `python3.X` on the builder's PATH.
    pub python: PathBuf,
    /// `sys.implementation.cache_tag`, e.g. `cpython-311`: the `.pyc` names' middle part.
    pub tag: String,
    /// Its full version, e.g. `3.11.7`: part of the layers' cache key (the code generator may
    /// change between patch releases, the format does not).
    pub version: String,
}

impl Bytecode {
    /// `python<minor>` (e.g. minor `3.11`) on PATH, checked to be that minor of CPython; kept
    /// as the interpreter's own `sys.executable`, so that a launcher on PATH (a pyenv shim is
    /// a bash script running several more: 12% of a cold build's CPU, started once per wheel)
    /// runs once, here, and never per compile.
    ///
    /// Errors: the reason there is none, for the log and the report.
    pub fn find(minor: &str) -> std::result::Result<Self, String> {
        let name = format!("python{minor}");
        let python = which(&name).ok_or_else(|| format!("no {name} on the builder's PATH"))?;
        let out = Command::new(&python)
            .args(["-S", "-s", "-c"])
            .arg("import sys; print(sys.implementation.cache_tag, '%d.%d' % sys.version_info[:2], sys.version.split()[0], sys.executable)")
            .env_clear()
            .stderr(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", python.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        match text.split_whitespace().collect::<Vec<_>>()[..] {
            [tag, m, version, ref exe @ ..]
                if out.status.success() && m == minor && tag.starts_with("cpython-") =>
            {
                let own = PathBuf::from(exe.join(" "));
                Ok(Self {
                    tag: tag.into(),
                    version: version.into(),
                    python: if own.is_absolute() && own.is_file() {
                        own
                    } else {
                        python
                    },
                })
            }
            _ => Err(format!(
                "{} is not CPython {minor} (it says {:?})",
                python.display(),
                text.trim()
            )),
        }
    }

    /// How the report names it, e.g. `cpython-311 (python3.11 3.11.7)`.
    pub fn describe(&self) -> String {
        let exe = self
            .python
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        format!("{} ({exe} {})", self.tag, self.version)
    }
}

/// The first file `name` on PATH (the tools the builder runs: `python3.X` here, uv for
/// `resolve`).
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Whether an installed file gets bytecode: `.py` modules in site-packages, but not test
/// suites (`tests/` directories: about a quarter of the sources of a typical ML stack, never
/// imported by a learner; compiled on demand if they ever are).
pub fn compiles(site: &str, target: &str) -> bool {
    let Some(rel) = target.strip_prefix(site).and_then(|r| r.strip_prefix('/')) else {
        return false;
    };
    rel.ends_with(".py")
        && !rel
            .split('/')
            .any(|c| c == "tests" || c.ends_with(".dist-info"))
}

/// Where `dir/mod.py`'s bytecode goes: `dir/__pycache__/mod.<tag>.pyc` (PEP 3147).
pub fn pyc_path(target: &str, tag: &str) -> String {
    let (dir, file) = target.rsplit_once('/').unwrap_or(("", target));
    let stem = file.strip_suffix(".py").unwrap_or(file);
    format!("{dir}/__pycache__/{stem}.{tag}.pyc")
}

/// One compiler process for one wheel, and the file its `.pyc`s are kept in until a layer
/// streams them (a wheel's bytecode can be 100 MB: not in memory).
pub struct Compiler {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    spool: std::fs::File,
    spooled: u64,
}

/// A `.pyc` in the spool file: offset and length in bytes, and its SHA-256 (taken as it was
/// spooled, for RECORD: the file is not read back to hash it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spooled {
    pub offset: u64,
    pub len: u64,
    pub sha256: [u8; 32],
}

impl Compiler {
    /// Starts the interpreter with an empty environment and `PYTHONHASHSEED=0` (set and
    /// frozenset constants are marshalled in hash order); its `.pyc`s go to a temporary file
    /// in `scratch`.
    #[cfg(test)]
    fn start(b: &Bytecode, scratch: &std::path::Path) -> Result<Self> {
        let spool = tempfile::tempfile_in(scratch)
            .with_context(|| format!("a temporary file for bytecode in {}", scratch.display()))?;
        Self::start_into(b, spool)
    }

    /// The same, its `.pyc`s written to `spool` from its start.
    pub fn start_into(b: &Bytecode, spool: std::fs::File) -> Result<Self> {
        let mut child = Command::new(&b.python)
            .args(["-S", "-s", "-B", "-W", "ignore", "-c", COMPILER])
            .env_clear()
            .env("PYTHONHASHSEED", "0")
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} to compile bytecode", b.python.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Self {
            child,
            stdin,
            stdout,
            spool,
            spooled: 0,
        })
    }

    /// Compiles `source` as the image's file `path` into the spool; None when this Python
    /// cannot compile it.
    pub fn compile(&mut self, path: &str, source: &[u8]) -> Result<Option<Spooled>> {
        let bad = |e: std::io::Error| anyhow!("the bytecode compiler stopped: {e}");
        writeln!(
            self.stdin,
            "/{}\n{}",
            path.trim_start_matches('/'),
            source.len()
        )
        .map_err(bad)?;
        self.stdin.write_all(source).map_err(bad)?;
        self.stdin.flush().map_err(bad)?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(bad)?;
        let len: u64 = line
            .trim()
            .parse()
            .map_err(|_| anyhow!("the bytecode compiler answered {line:?}"))?;
        if len == 0 {
            return Ok(None);
        }
        let offset = self.spooled;
        self.spool.seek(SeekFrom::Start(offset))?;
        let mut hashing = Hashing::new(&mut self.spool);
        let copied = std::io::copy(&mut (&mut self.stdout).take(len), &mut hashing)?;
        if copied != len {
            return Err(anyhow!("the bytecode compiler stopped mid-answer"));
        }
        let (_, sha256, _) = hashing.finish_raw();
        self.spooled += len;
        Ok(Some(Spooled {
            offset,
            len,
            sha256,
        }))
    }

    /// The bytes of a spooled `.pyc`.
    #[cfg(test)]
    fn read(&self, at: Spooled) -> Result<Vec<u8>> {
        let mut buf = vec![0; at.len as usize];
        self.spool.read_exact_at(&mut buf, at.offset)?;
        Ok(buf)
    }

    /// A reader of a spooled `.pyc`.
    #[cfg(test)]
    fn reader(&self, at: Spooled) -> impl Read + '_ {
        spooled(&self.spool, at)
    }
}

/// One wheel's bytecode: its spool file in the cache and where each module's `.pyc` is in it.
#[derive(Debug)]
pub struct WheelPyc {
    spool: std::fs::File,
    /// Module's target path in the image (`opt/flops/site-packages/numpy/__init__.py`) → its
    /// `.pyc` in the spool. Modules this Python cannot compile are absent.
    pub pycs: std::collections::HashMap<String, Spooled>,
}

impl WheelPyc {
    /// The `.pyc`s of `spool` at `pycs`.
    pub fn new(spool: std::fs::File, pycs: std::collections::HashMap<String, Spooled>) -> Self {
        Self { spool, pycs }
    }

    /// A reader of one `.pyc`'s bytes.
    pub fn reader(&self, at: Spooled) -> impl Read + '_ {
        spooled(&self.spool, at)
    }
}

/// A reader of the `.pyc` at `at` in a spool file, for streaming it into a layer.
pub fn spooled(file: &std::fs::File, at: Spooled) -> impl Read + '_ {
    SpoolReader {
        file,
        at: at.offset,
        end: at.offset + at.len,
    }
}

struct SpoolReader<'a> {
    file: &'a std::fs::File,
    at: u64,
    end: u64,
}

impl Read for SpoolReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min((self.end - self.at) as usize);
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl Drop for Compiler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn which_files_and_where_their_bytecode_goes() {
        let site = "opt/flops/site-packages";
        assert!(compiles(
            site,
            "opt/flops/site-packages/numpy/core/_methods.py"
        ));
        assert!(!compiles(
            site,
            "opt/flops/site-packages/pandas/tests/test_x.py"
        ));
        assert!(!compiles(
            site,
            "opt/flops/site-packages/x-1.dist-info/a.py"
        ));
        assert!(!compiles(site, "opt/flops/bin/tool.py"));
        assert!(!compiles(site, "opt/flops/site-packages/numpy/core/_x.so"));
        assert_eq!(
            pyc_path("opt/flops/site-packages/six.py", "cpython-311"),
            "opt/flops/site-packages/__pycache__/six.cpython-311.pyc"
        );
    }

    #[test]
    fn compiles_as_the_interpreter_would_and_skips_what_it_cannot() {
        // The host's own python3 stands in for the image's (the rig's Debian has 3.11).
        let out = Command::new("python3")
            .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
            .output()
            .expect("python3 on PATH (the rig installs it)");
        let minor = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let b = Bytecode::find(&minor).expect("python3.X on PATH");
        let mut c = Compiler::start(&b, &std::env::temp_dir()).unwrap();
        let src = b"X = {'a', 'b', 'c'}\ndef f():\n    return X\n";
        let other = b"import os\nself = 'x'\nY = frozenset({'c', 'a'})\n";
        c.compile("opt/other.py", other).unwrap();
        let one = c.compile("opt/m.py", src).unwrap().expect("compiles");
        let none = c.compile("opt/bad.py", b"print 'python 2'\n").unwrap();
        assert_eq!(none, None);
        let two = c.compile("opt/m.py", src).unwrap().unwrap();
        let (a, b2) = (c.read(one).unwrap(), c.read(two).unwrap());
        assert_eq!(a, b2, "the same source gives the same bytes");
        assert_eq!(one.sha256, <[u8; 32]>::from(Sha256::digest(&a)));
        // PEP 552: flags 0b01 = hash-based, unchecked.
        assert_eq!(u32::from_le_bytes(a[4..8].try_into().unwrap()), 1);
        let mut streamed = Vec::new();
        c.reader(two).read_to_end(&mut streamed).unwrap();
        assert_eq!(streamed, a);
        assert!(Bytecode::find("3.1").is_err());
        // The same sources in the same order in another process: the same bytes, whatever
        // else runs on the machine (what a layer's digest rests on).
        let mut again = Compiler::start(&b, &std::env::temp_dir()).unwrap();
        again.compile("opt/other.py", other).unwrap();
        let same = again.compile("opt/m.py", src).unwrap().unwrap();
        assert_eq!(again.read(same).unwrap(), a);
    }
}
