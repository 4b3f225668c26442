//! Installing real PyPI wheels into a layer: the result runs on the real base rootfs (chroot),
//! matches `pip install --target` file for file, and bad wheels are refused.
mod common;
use common::*;
use flops_image_builder::oci::blobstore::BlobStore;
use flops_image_builder::oci::layer::{Compression, LayerWriter};
use flops_image_builder::wheels::install::{install, Prefix};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Real wheels from PyPI, downloaded once into target/ (a pure one with a console script, a
/// binary cp311 manylinux one, and one with `.data/scripts`).
fn wheels() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wheels");
    let pins = ["tabulate==0.9.0", "markupsafe==2.1.5", "docutils==0.20.1"];
    let have = |d: &Path| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0) >= pins.len();
    if !have(&dir) {
        let tmp = dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        sh(&format!(
            "python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 -d {} {}",
            tmp.display(),
            pins.join(" ")
        ));
        let _ = std::fs::rename(&tmp, &dir);
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn build_layer(store: &BlobStore, wheels: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let mut w = LayerWriter::new(store, Compression::Gzip(1), 0)?;
    install(
        &mut w,
        &Prefix::new("/opt/flops", "/usr/bin/python3"),
        wheels,
        &[],
    )?;
    let layer = w.finish(store)?;
    Ok(store.path(&layer.digest))
}

/// path → (hash, size) rows of every RECORD under `site`, for files that exist in both trees.
fn records(site: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for rec in sh(&format!("cd {} && ls -d *.dist-info", site.display())).lines() {
        for line in std::fs::read_to_string(site.join(rec).join("RECORD"))
            .unwrap()
            .lines()
        {
            let f: Vec<&str> = line.split(',').collect();
            if !f[0].starts_with("..")
                && !f[0].ends_with("INSTALLER")
                && !f[0].ends_with("RECORD")
                && !f[0].ends_with("REQUESTED")
                && !f[0].ends_with("direct_url.json")
                && !f[0].contains("__pycache__")
            {
                out.insert(f[0].to_string(), format!("{},{}", f[1], f[2]));
            }
        }
    }
    out
}

fn files(root: &Path) -> Vec<String> {
    let out = sh(&format!("cd {} && find . -type f ! -path '*__pycache__*' ! -name INSTALLER ! -name RECORD ! -name REQUESTED ! -name direct_url.json | sort", root.display()));
    out.lines().map(str::to_string).collect()
}

#[test]
fn installed_layer_runs_on_the_base_and_matches_pip() {
    require_rig();
    let wheels = wheels();
    let store_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();
    let blob = build_layer(&store, &wheels).unwrap();
    // Reproducible: the same wheels give the same layer bytes.
    assert_eq!(build_layer(&store, &wheels).unwrap(), blob);

    let work = tempfile::tempdir().unwrap();
    let rootfs = unpack(
        &format!("{PLAIN}/library/python:3.11-slim-amd64"),
        work.path(),
        "",
    );
    sh(&format!(
        "tar -xzf {} -C {}",
        blob.display(),
        rootfs.display()
    ));
    let env = "PYTHONPATH=/opt/flops/site-packages PATH=/opt/flops/bin:/usr/bin:/bin";
    let out = sh(&format!("chroot {} env {env} python3 -c 'import tabulate, markupsafe, markupsafe._speedups; print(markupsafe.escape(\"<a>\"))'", rootfs.display()));
    assert_eq!(out.trim(), "&lt;a&gt;");
    // A console script from entry_points.txt, and a `#!python` script from .data/scripts.
    let table = sh(&format!(
        "printf 'a b\\n1 2\\n' | chroot {} env {env} tabulate",
        rootfs.display()
    ));
    assert!(
        table.contains("a    b") || table.contains("a  b"),
        "{table}"
    );
    let rst = sh(&format!(
        "echo 'Title' | chroot {} env {env} rst2html.py --version",
        rootfs.display()
    ));
    assert!(rst.contains("Docutils"), "{rst}");
    assert!(
        std::fs::read_to_string(rootfs.join("opt/flops/bin/tabulate"))
            .unwrap()
            .starts_with("#!/usr/bin/python3\n")
    );

    // Same files and RECORD hashes as pip --target (which ignores our prefix layout for scripts).
    let pip = work.path().join("pip");
    sh(&format!(
        "python3 -m pip install -q --no-deps --no-compile --target {} {}",
        pip.display(),
        wheels
            .iter()
            .map(|w| w.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let site = rootfs.join("opt/flops/site-packages");
    assert_eq!(
        files(&site),
        files(&pip)
            .into_iter()
            .filter(|f| !f.starts_with("./bin/"))
            .collect::<Vec<_>>()
    );
    let (ours, theirs) = (records(&site), records(&pip));
    assert!(ours.len() > 100);
    assert!(
        ours == theirs,
        "RECORD rows differ: {:?}",
        ours.iter()
            .filter(|(k, v)| theirs.get(*k) != Some(v))
            .take(5)
            .collect::<Vec<_>>()
    );
    // Our RECORD covers every installed file with a correct hash, INSTALLER included.
    let rec = std::fs::read_to_string(site.join("tabulate-0.9.0.dist-info/RECORD")).unwrap();
    assert!(
        rec.contains("../bin/tabulate,sha256=")
            && rec.contains("tabulate-0.9.0.dist-info/INSTALLER,sha256="),
        "{rec}"
    );
    let installer =
        std::fs::read_to_string(site.join("tabulate-0.9.0.dist-info/INSTALLER")).unwrap();
    assert_eq!(installer, "flops-image-builder\n");
}

/// Rewrites a wheel with python's zipfile, applying `edit` (a Python snippet over `files`, a
/// dict name → bytes) before writing it back.
fn doctored_wheel(src: &Path, dest_dir: &Path, edit: &str) -> PathBuf {
    let dest = dest_dir.join(src.file_name().unwrap());
    let script = format!(
        "import zipfile,sys\nz=zipfile.ZipFile(sys.argv[1])\nfiles={{i.filename: z.read(i) for i in z.infolist()}}\n{edit}\nwith zipfile.ZipFile(sys.argv[2],'w') as o:\n    [o.writestr(k, v) for k, v in files.items()]\n"
    );
    let py = dest_dir.join("edit.py");
    std::fs::write(&py, script).unwrap();
    sh(&format!(
        "python3 {} {} {}",
        py.display(),
        src.display(),
        dest.display()
    ));
    dest
}

#[test]
fn bad_wheels_are_refused_with_the_reason() {
    let wheels = wheels();
    let tab = wheels
        .iter()
        .find(|w| w.to_string_lossy().contains("tabulate"))
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let store = BlobStore::open(d.path()).unwrap();
    let cases = [
        ("files['../../etc/evil'] = b'x'", "unsafe path \"../../etc/evil\""),
        ("files['/abs/evil'] = b'x'", "unsafe path \"/abs/evil\""),
        ("files['tabulate/extra.py'] = b'x=1'", "tabulate/extra.py is not listed in RECORD"),
        ("k=[n for n in files if n.endswith('tabulate/__init__.py')][0]; files[k] = files[k].replace(b'tabulate', b'tabulatE', 1)", "does not match its RECORD hash"),
    ];
    for (edit, needle) in cases {
        let sub = tempfile::tempdir().unwrap();
        let bad = doctored_wheel(tab, sub.path(), edit);
        let err = format!("{:#}", build_layer(&store, &[bad]).unwrap_err());
        assert!(err.contains(needle), "{edit}: {err}");
    }
    // Two wheels installing the same file.
    let sub = tempfile::tempdir().unwrap();
    let mk = wheels
        .iter()
        .find(|w| w.to_string_lossy().to_lowercase().contains("markupsafe"))
        .unwrap();
    let clash = doctored_wheel(mk, sub.path(), "import base64,hashlib\nb=b'x=1\\n'\nfiles['tabulate/__init__.py']=b\nk=[n for n in files if n.endswith('RECORD')][0]\nfiles[k]+=b'tabulate/__init__.py,sha256='+base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=')+b',4\\n'");
    let err = format!(
        "{:#}",
        build_layer(&store, &[tab.clone(), clash]).unwrap_err()
    );
    assert!(
        err.contains(
            "both install /opt/flops/site-packages/tabulate/__init__.py with different contents"
        ),
        "{err}"
    );
    // The same bytes from two wheels (namespace packages such as nvidia/__init__.py in every
    // CUDA wheel) are fine: one copy, listed in both RECORDs.
    let add_shared = "import base64,hashlib\nb=b''\nfiles['shared_ns/__init__.py']=b\nk=[n for n in files if n.endswith('RECORD')][0]\nfiles[k]+=b'shared_ns/__init__.py,sha256='+base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=')+b',0\\n'";
    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let shared = [
        doctored_wheel(mk, s1.path(), add_shared),
        doctored_wheel(tab, s2.path(), add_shared),
    ];
    let blob = build_layer(&store, &shared).unwrap();
    let listing = sh(&format!(
        "tar -tzf {} | grep -c 'shared_ns/__init__.py$'",
        blob.display()
    ));
    assert_eq!(listing.trim(), "1");
}
