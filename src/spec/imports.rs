//! What the repo's code imports, found statically (the builder never runs repo code): the
//! top-level modules of every `import x` / `from x import y` in its `.py` files, and which
//! distribution provides a module.
//!
//! Hand-written rather than a Python parser crate: only import statements matter, and a line
//! scanner that skips strings and `try:` blocks (optional imports) covers them without pulling
//! a full grammar into the builder.

use std::collections::{BTreeMap, BTreeSet};

/// Top-level module → the repo files (relative paths) importing it.
pub type Imports = BTreeMap<String, BTreeSet<String>>;

/// Python's standard library (`sys.stdlib_module_names` of CPython 3.11 ∪ 3.13, public names).
const STDLIB: &[&str] = &[
    "abc",
    "aifc",
    "antigravity",
    "argparse",
    "array",
    "ast",
    "asynchat",
    "asyncio",
    "asyncore",
    "atexit",
    "audioop",
    "base64",
    "bdb",
    "binascii",
    "bisect",
    "builtins",
    "bz2",
    "cProfile",
    "calendar",
    "cgi",
    "cgitb",
    "chunk",
    "cmath",
    "cmd",
    "code",
    "codecs",
    "codeop",
    "collections",
    "colorsys",
    "compileall",
    "concurrent",
    "configparser",
    "contextlib",
    "contextvars",
    "copy",
    "copyreg",
    "crypt",
    "csv",
    "ctypes",
    "curses",
    "dataclasses",
    "datetime",
    "dbm",
    "decimal",
    "difflib",
    "dis",
    "distutils",
    "doctest",
    "email",
    "encodings",
    "ensurepip",
    "enum",
    "errno",
    "faulthandler",
    "fcntl",
    "filecmp",
    "fileinput",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "gc",
    "genericpath",
    "getopt",
    "getpass",
    "gettext",
    "glob",
    "graphlib",
    "grp",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http",
    "idlelib",
    "imaplib",
    "imghdr",
    "imp",
    "importlib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "keyword",
    "lib2to3",
    "linecache",
    "locale",
    "logging",
    "lzma",
    "mailbox",
    "mailcap",
    "marshal",
    "math",
    "mimetypes",
    "mmap",
    "modulefinder",
    "msilib",
    "msvcrt",
    "multiprocessing",
    "netrc",
    "nis",
    "nntplib",
    "nt",
    "ntpath",
    "nturl2path",
    "numbers",
    "opcode",
    "operator",
    "optparse",
    "os",
    "ossaudiodev",
    "pathlib",
    "pdb",
    "pickle",
    "pickletools",
    "pipes",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "posix",
    "posixpath",
    "pprint",
    "profile",
    "pstats",
    "pty",
    "pwd",
    "py_compile",
    "pyclbr",
    "pydoc",
    "pydoc_data",
    "pyexpat",
    "queue",
    "quopri",
    "random",
    "re",
    "readline",
    "reprlib",
    "resource",
    "rlcompleter",
    "runpy",
    "sched",
    "secrets",
    "select",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "signal",
    "site",
    "smtpd",
    "smtplib",
    "sndhdr",
    "socket",
    "socketserver",
    "spwd",
    "sqlite3",
    "sre_compile",
    "sre_constants",
    "sre_parse",
    "ssl",
    "stat",
    "statistics",
    "string",
    "stringprep",
    "struct",
    "subprocess",
    "sunau",
    "symtable",
    "sys",
    "sysconfig",
    "syslog",
    "tabnanny",
    "tarfile",
    "telnetlib",
    "tempfile",
    "termios",
    "textwrap",
    "this",
    "threading",
    "time",
    "timeit",
    "tkinter",
    "token",
    "tokenize",
    "tomllib",
    "trace",
    "traceback",
    "tracemalloc",
    "tty",
    "turtle",
    "turtledemo",
    "types",
    "typing",
    "unicodedata",
    "unittest",
    "urllib",
    "uu",
    "uuid",
    "venv",
    "warnings",
    "wave",
    "weakref",
    "webbrowser",
    "winreg",
    "winsound",
    "wsgiref",
    "xdrlib",
    "xml",
    "xmlrpc",
    "zipapp",
    "zipfile",
    "zipimport",
    "zlib",
    "zoneinfo",
];

pub fn is_stdlib(module: &str) -> bool {
    module.starts_with('_') || STDLIB.binary_search(&module).is_ok()
}

/// Import name → PyPI distribution, where they differ or where the package is well known
/// enough to add when a repo imports it without listing it. Sorted by import name.
pub(crate) const IMPORT_TO_DIST: &[(&str, &str)] = &[
    ("Crypto", "pycryptodome"),
    ("PIL", "pillow"),
    ("accelerate", "accelerate"),
    ("albumentations", "albumentations"),
    ("attr", "attrs"),
    ("bs4", "beautifulsoup4"),
    ("catboost", "catboost"),
    ("category_encoders", "category-encoders"),
    ("cloudpickle", "cloudpickle"),
    ("cv2", "opencv-python-headless"),
    ("datasets", "datasets"),
    ("dateutil", "python-dateutil"),
    ("dotenv", "python-dotenv"),
    ("einops", "einops"),
    ("evaluate", "evaluate"),
    ("flwr", "flwr"),
    ("google.protobuf", "protobuf"),
    ("gymnasium", "gymnasium"),
    ("h5py", "h5py"),
    ("hydra", "hydra-core"),
    ("imblearn", "imbalanced-learn"),
    ("jax", "jax"),
    ("joblib", "joblib"),
    ("jwt", "pyjwt"),
    ("keras", "keras"),
    ("lightgbm", "lightgbm"),
    ("lightning", "lightning"),
    ("matplotlib", "matplotlib"),
    ("mlflow", "mlflow-skinny"),
    ("networkx", "networkx"),
    ("nltk", "nltk"),
    ("numpy", "numpy"),
    ("omegaconf", "omegaconf"),
    ("onnx", "onnx"),
    ("onnxruntime", "onnxruntime"),
    ("opacus", "opacus"),
    ("optuna", "optuna"),
    ("pandas", "pandas"),
    ("plotly", "plotly"),
    ("pyarrow", "pyarrow"),
    ("pytorch_lightning", "pytorch-lightning"),
    ("requests", "requests"),
    ("safetensors", "safetensors"),
    ("scipy", "scipy"),
    ("seaborn", "seaborn"),
    ("sentencepiece", "sentencepiece"),
    ("skimage", "scikit-image"),
    ("sklearn", "scikit-learn"),
    ("statsmodels", "statsmodels"),
    ("sympy", "sympy"),
    ("tabulate", "tabulate"),
    ("tensorboard", "tensorboard"),
    ("tensorflow", "tensorflow"),
    ("tensorflow_datasets", "tensorflow-datasets"),
    ("timm", "timm"),
    ("tokenizers", "tokenizers"),
    ("torch", "torch"),
    ("torchaudio", "torchaudio"),
    ("torchmetrics", "torchmetrics"),
    ("torchtext", "torchtext"),
    ("torchvision", "torchvision"),
    ("tqdm", "tqdm"),
    ("transformers", "transformers"),
    ("xgboost", "xgboost"),
    ("yaml", "pyyaml"),
];

/// The distribution a module is known to come from (`google.protobuf` is matched on its first
/// two components, everything else on the top-level name).
pub fn known_distribution(module: &str) -> Option<&'static str> {
    IMPORT_TO_DIST
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, d)| *d)
}

/// PEP 503 normalised name (`Foo.Bar_baz` → `foo-bar-baz`).
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Whether `module` is provided by one of the distributions `dists` (normalised names): its
/// known distribution, or a distribution of the same name.
pub fn provided_by(module: &str, dists: &BTreeSet<String>) -> bool {
    known_distribution(module).is_some_and(|d| dists.contains(&normalize(d)))
        || dists.contains(&normalize(module))
}

/// The module key used for lookups: the top-level name, or `google.protobuf` for `google.*`
/// (a namespace shared by many distributions).
fn key(dotted: &str) -> String {
    let mut parts = dotted.split('.');
    let top = parts.next().unwrap_or("");
    match (top, parts.next()) {
        ("google", Some(sub)) => format!("google.{sub}"),
        _ => top.to_string(),
    }
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The code lines of a Python source, trimmed, with their indentation: blank lines, comments,
/// text inside triple-quoted strings and the line opening one are left out (what the import
/// scanners below both need; a line scanner, not a parser).
fn code_lines(src: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut in_string: Option<&str> = None;
    src.lines().filter_map(move |raw| {
        if let Some(q) = in_string {
            if raw.contains(q) {
                in_string = None;
            }
            return None;
        }
        let text = raw.trim();
        if text.is_empty() || text.starts_with('#') {
            return None;
        }
        // An odd number of triple quotes opens a string that continues on later lines.
        if let Some(q) = ["\"\"\"", "'''"]
            .into_iter()
            .find(|q| text.matches(q).count() % 2 == 1)
        {
            in_string = Some(q);
            return None;
        }
        Some((indent_of(raw), text))
    })
}

/// Modules imported by one source file. Skips relative imports, `__future__`, text inside
/// triple-quoted strings, and imports inside `try:` blocks (optional by construction).
pub fn scan_source(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    // Indentation of the `try:` blocks we are inside.
    let mut tries: Vec<usize> = Vec::new();
    for (indent, text) in code_lines(src) {
        tries.retain(|t| indent > *t);
        if text == "try:" {
            tries.push(indent);
            continue;
        }
        if !tries.is_empty() {
            continue;
        }
        let stmt = text.split('#').next().unwrap_or("").trim();
        let stmt = stmt.strip_suffix(';').unwrap_or(stmt);
        if let Some(rest) = stmt.strip_prefix("import ") {
            for part in rest.split(',') {
                let name = part.split_whitespace().next().unwrap_or("");
                if is_module_path(name) {
                    out.insert(key(name));
                }
            }
        } else if let Some(rest) = stmt.strip_prefix("from ") {
            let name = rest.split_whitespace().next().unwrap_or("");
            if is_module_path(name) && rest.contains(" import") && name != "__future__" {
                out.insert(key(name));
            }
        }
    }
    out
}

/// The modules a Python source imports when it is itself imported, as dotted names:
/// `import a.b` gives `a.b`; `from a import b, c` gives `a`, `a.b` and `a.c` (either may be
/// a submodule); relative imports are resolved against `package` (the module's package, `""`
/// at the top level). Left out: imports in function bodies (they run later, if ever) and under
/// `if TYPE_CHECKING:`; kept: `try:` blocks (an optional import that is installed is made).
/// Parenthesized and backslash-continued imports are joined.
pub fn module_imports(src: &str, package: &str) -> Vec<String> {
    let mut out = Vec::new();
    // Lines indented deeper than this belong to a skipped block (a def or a TYPE_CHECKING if).
    let mut skip_deeper: Option<usize> = None;
    let mut lines = code_lines(src);
    while let Some((indent, text)) = lines.next() {
        match skip_deeper {
            Some(d) if indent > d => continue,
            _ => skip_deeper = None,
        }
        let head = text.split('#').next().unwrap_or("").trim();
        if head.starts_with("def ")
            || head.starts_with("async def ")
            || head.starts_with("if TYPE_CHECKING")
            || head.starts_with("if typing.TYPE_CHECKING")
        {
            skip_deeper = Some(indent);
            continue;
        }
        if !(head.starts_with("import ") || head.starts_with("from ")) {
            continue;
        }
        let mut stmt = head.to_string();
        while (stmt.contains('(') && !stmt.contains(')')) || stmt.ends_with('\\') {
            let Some((_, next)) = lines.next() else { break };
            stmt = format!(
                "{} {}",
                stmt.trim_end_matches('\\'),
                next.split('#').next().unwrap_or("").trim()
            );
        }
        let stmt = stmt.replace(['(', ')'], " ");
        for one in stmt.split(';') {
            imports_of_statement(one.trim(), package, &mut out);
        }
    }
    out
}

/// The dotted names one `import …` or `from … import …` statement imports.
fn imports_of_statement(stmt: &str, package: &str, out: &mut Vec<String>) {
    if let Some(rest) = stmt.strip_prefix("import ") {
        for part in rest.split(',') {
            let name = part.split_whitespace().next().unwrap_or("");
            if is_module_path(name) {
                out.push(name.to_string());
            }
        }
        return;
    }
    let Some(rest) = stmt.strip_prefix("from ") else {
        return;
    };
    let Some((from, names)) = rest.split_once(" import ") else {
        return;
    };
    let from = from.trim();
    let dots = from.len() - from.trim_start_matches('.').len();
    let base = if dots == 0 {
        from.to_string()
    } else {
        let mut parts: Vec<&str> = package.split('.').filter(|p| !p.is_empty()).collect();
        for _ in 1..dots {
            parts.pop();
        }
        let tail = &from[dots..];
        parts.extend(Some(tail).filter(|t| !t.is_empty()));
        parts.join(".")
    };
    if !is_module_path(&base) || base == "__future__" {
        return;
    }
    out.push(base.clone());
    for part in names.split(',') {
        let name = part.split_whitespace().next().unwrap_or("");
        if !name.is_empty() && name != "*" && name.chars().all(|c| c.is_alphanumeric() || c == '_')
        {
            out.push(format!("{base}.{name}"));
        }
    }
}

fn is_module_path(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_'))
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdlib_list_is_sorted_for_binary_search() {
        assert!(STDLIB.windows(2).all(|w| w[0] < w[1]));
        assert!(IMPORT_TO_DIST.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(is_stdlib("os") && is_stdlib("distutils") && is_stdlib("_thread"));
        assert!(!is_stdlib("numpy"));
    }

    #[test]
    fn imports_as_people_write_them() {
        let src = r#"
"""Docstring mentioning
import notamodule
"""
import os, sys
import numpy as np
from sklearn.linear_model import LogisticRegression
from . import sibling
from .utils import split
from __future__ import annotations
import google.protobuf.message
import torch.nn as nn  # comment
try:
    import ujson as json
except ImportError:
    import json
def f():
    import cv2
    x = "import fake"
"#;
        let got: Vec<String> = scan_source(src).into_iter().collect();
        assert_eq!(
            got,
            [
                "cv2",
                "google.protobuf",
                "json",
                "numpy",
                "os",
                "sklearn",
                "sys",
                "torch"
            ]
        );
    }

    #[test]
    fn what_a_module_imports_when_it_is_imported() {
        let src = r#"
"""Docstring: import notamodule"""
from __future__ import annotations
import os, numpy.linalg as la
from . import _sibling, other
from .sub.mod import (
    thing,  # a comment
    other_thing,
)
from .. import up
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from pandas import DataFrame
try:
    from ._speedups import fast
except ImportError:
    fast = None
class C:
    import json
    def method(self):
        import cv2
def f():
    import torch
import scipy.sparse; import yaml
x = 1 \\
    + 2
"#;
        let got = module_imports(src, "pkg.inner");
        let want = [
            "os",
            "numpy.linalg",
            "pkg.inner",
            "pkg.inner._sibling",
            "pkg.inner.other",
            "pkg.inner.sub.mod",
            "pkg.inner.sub.mod.thing",
            "pkg.inner.sub.mod.other_thing",
            "pkg",
            "pkg.up",
            "typing",
            "typing.TYPE_CHECKING",
            "pkg.inner._speedups",
            "pkg.inner._speedups.fast",
            "json",
            "scipy.sparse",
            "yaml",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn providers() {
        let dists: BTreeSet<String> = ["scikit-learn", "numpy", "protobuf"]
            .iter()
            .map(|s| normalize(s))
            .collect();
        assert!(provided_by("sklearn", &dists));
        assert!(provided_by("numpy", &dists));
        assert!(provided_by("google.protobuf", &dists));
        assert!(!provided_by("cv2", &dists));
        assert_eq!(normalize("Foo.Bar__baz"), "foo-bar-baz");
    }
}
