//! Shared helpers for integration tests: they talk to the real rig started by `scripts/rig.sh`
//! (registries on 127.0.0.1:5000 and :5443) and verify with skopeo, umoci and chroot.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub const PLAIN: &str = "127.0.0.1:5000";
pub const TLS: &str = "127.0.0.1:5443";
pub const BASE: &str = "http://127.0.0.1:5000/library/python:3.11-slim";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_flops-image-builder")
}

/// Fails (never skips) when the rig is missing, saying how to start it.
pub fn require_rig() {
    for (port, what) in [(5000, "plain registry"), (5443, "TLS registry")] {
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
            panic!("{what} is not running on 127.0.0.1:{port}: start the test rig with `sudo scripts/rig.sh` (README, 'Tests')");
        }
    }
    for tool in ["skopeo", "umoci", "chroot"] {
        if Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().map(|o| !o.status.success()).unwrap_or(true) {
            panic!("{tool} is not installed: run `sudo scripts/rig.sh install`");
        }
    }
    let ok = Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{PLAIN}/library/python:3.11-slim")]).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "base image {PLAIN}/library/python:3.11-slim is missing: run `sudo scripts/rig.sh base`");
}

/// A repository name no other test or run uses.
pub fn unique(name: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("test/{name}-{n}-{}", std::process::id())
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "command failed: {}", self.stderr);
        self
    }
    pub fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or("")
    }
}

pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = Command::new(bin());
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let o: Output = c.output().expect("run the builder");
    Run { code: o.status.code().unwrap_or(-1), stdout: String::from_utf8_lossy(&o.stdout).into(), stderr: String::from_utf8_lossy(&o.stderr).into() }
}

pub fn run(args: &[&str]) -> Run {
    run_env(args, &[])
}

pub fn sh(cmd: &str) -> String {
    let o = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(o.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into()
}

pub fn sh_status(cmd: &str) -> (bool, String) {
    let o = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

pub fn skopeo_raw(reference: &str, extra: &str) -> serde_json::Value {
    serde_json::from_str(&sh(&format!("skopeo inspect --raw --tls-verify=false {extra} docker://{reference}"))).unwrap()
}

/// skopeo copy → umoci unpack; returns the rootfs path (inside `work`).
pub fn unpack(reference: &str, work: &Path, extra: &str) -> PathBuf {
    let layout = work.join("oci");
    let bundle = work.join("bundle");
    sh(&format!("skopeo copy -q --src-tls-verify=false {extra} docker://{reference} oci:{}:img", layout.display()));
    sh(&format!("umoci unpack --image {}:img {}", layout.display(), bundle.display()));
    bundle.join("rootfs")
}

pub fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}
