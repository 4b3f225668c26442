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
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            panic!("{tool} is not installed: run `sudo scripts/rig.sh install`");
        }
    }
    let ok = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{PLAIN}/library/python:3.11-slim"),
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "base image {PLAIN}/library/python:3.11-slim is missing: run `sudo scripts/rig.sh base`"
    );
}

/// A repository name no other test or run uses.
pub fn unique(name: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test/{name}-{n}-{}", std::process::id())
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
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
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

pub fn run(args: &[&str]) -> Run {
    run_env(args, &[])
}

pub fn sh(cmd: &str) -> String {
    let o = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(
        o.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into()
}

pub fn sh_status(cmd: &str) -> (bool, String) {
    let o = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// The rig's mosquitto.
pub const BROKER: &str = "127.0.0.1:9027";

/// Fails (never skips) without the rig's MQTT broker, saying how to start it.
pub fn require_broker() {
    let ok = TcpStream::connect_timeout(&BROKER.parse().unwrap(), Duration::from_secs(2)).is_ok();
    assert!(
        ok,
        "mosquitto is not running on {BROKER}: start the test rig with `sudo scripts/rig.sh`"
    );
}

/// The architectures of an image index's manifests, in order.
pub fn index_architectures(index: &serde_json::Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap().to_string())
        .collect()
}

pub fn skopeo_raw(reference: &str, extra: &str) -> serde_json::Value {
    serde_json::from_str(&sh(&format!(
        "skopeo inspect --raw --tls-verify=false {extra} docker://{reference}"
    )))
    .unwrap()
}

/// skopeo copy → umoci unpack; returns the rootfs path (inside `work`, created if needed).
pub fn unpack(reference: &str, work: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(work).unwrap();
    let layout = work.join("oci");
    let bundle = work.join("bundle");
    sh(&format!(
        "skopeo copy -q --src-tls-verify=false {extra} docker://{reference} oci:{}:img",
        layout.display()
    ));
    sh(&format!(
        "umoci unpack --image {}:img {}",
        layout.display(),
        bundle.display()
    ));
    bundle.join("rootfs")
}

pub fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Copies `fixtures/<name>` into `<parent>/<repo_name>` and commits it with git (fixed dates,
/// so the commit sha is stable). Returns the repository path.
pub fn git_repo(fixture: &str, parent: &Path, repo_name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(fixture);
    let dest = parent.join(repo_name);
    std::fs::create_dir_all(&dest).unwrap();
    sh(&format!("cp -a {}/. {}", src.display(), dest.display()));
    git(&dest, "init -q -b main");
    commit_all(&dest, "initial");
    dest
}

pub fn git(repo: &Path, args: &str) -> String {
    sh(&format!("cd {} && git -c user.name=test -c user.email=test@example.com -c commit.gpgsign=false {args}", repo.display()))
}

pub fn commit_all(repo: &Path, msg: &str) -> String {
    let env = "GIT_AUTHOR_DATE='2026-01-02T03:04:05Z' GIT_COMMITTER_DATE='2026-01-02T03:04:05Z'";
    sh(&format!("cd {} && git add -A && {env} git -c user.name=test -c user.email=test@example.com -c commit.gpgsign=false commit -q -m '{msg}'", repo.display()));
    git(repo, "rev-parse HEAD").trim().to_string()
}

/// Smart-HTTP git server on 127.0.0.1 (tests/support/git_http.py), stopped on drop.
pub struct GitServer {
    child: std::process::Child,
    pub port: u16,
}

impl GitServer {
    /// Serves the bare clones of the repos under `root` (each `<name>.git`).
    pub fn start(root: &Path, auth: Option<&str>) -> Self {
        let portfile = root.join(".port");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/git_http.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg(root).arg(&portfile);
        if let Some(a) = auth {
            cmd.arg(a);
        }
        let mut server = GitServer {
            child: cmd.spawn().expect("python3 (for the test git server)"),
            port: 0,
        };
        for _ in 0..100 {
            if let Ok(p) = std::fs::read_to_string(&portfile) {
                server.port = p.trim().parse().unwrap();
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("test git server did not start");
    }

    pub fn url(&self, repo: &str) -> String {
        format!("http://127.0.0.1:{}/{repo}.git", self.port)
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare copy of `repo` at `<root>/<name>.git`, ready to serve.
pub fn bare(repo: &Path, root: &Path, name: &str) {
    sh(&format!(
        "git clone -q --bare {} {}/{name}.git",
        repo.display(),
        root.display()
    ));
}

/// A rootfs with the host's /dev bound in (a runtime would mount one), unmounted on drop.
pub struct DevMount(PathBuf);

impl DevMount {
    pub fn new(rootfs: &Path) -> Self {
        let dev = rootfs.join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        sh(&format!("mount --bind /dev {}", dev.display()));
        DevMount(dev)
    }
}

impl Drop for DevMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fails when uv (the resolver `build` runs) is missing, saying how to get it.
pub fn require_uv() {
    let ok = Command::new("uv")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "uv is not installed: run `sudo scripts/rig.sh install`");
}

/// `python3 tests/support/make_wheel.py` → (path, sha256).
pub fn make_wheel(name: &str, version: &str, out: &Path, evil: bool) -> (PathBuf, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/make_wheel.py");
    let line = sh(&format!(
        "python3 {} {name} {version} {} {}",
        script.display(),
        out.display(),
        if evil { "evil" } else { "" }
    ));
    let (p, sha) = line.trim().split_once(' ').unwrap();
    (PathBuf::from(p), sha.to_string())
}

/// A failed run: the exit code, exactly one `error:` line on stderr containing `needle`, and
/// nothing on stdout (scripts read stdout).
pub fn expect_error(r: &Run, code: i32, needle: &str) {
    assert_eq!(
        r.code, code,
        "expected exit {code} for {needle:?}: {}",
        r.stderr
    );
    let errs: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errs.len(), 1, "{}", r.stderr);
    assert!(
        errs[0].contains(needle),
        "expected {needle:?} in {:?}",
        errs[0]
    );
    assert!(r.stdout.is_empty(), "stdout on failure: {}", r.stdout);
}

/// The rig's own containerd (scripts/rig.sh services) and the namespace tests use.
pub const CONTAINERD: &str = "/run/flops-rig/containerd.sock";
pub const CTR_NAMESPACE: &str = "flops-test";

/// Fails (never skips) without the rig's containerd, saying how to start it.
pub fn require_containerd() {
    assert!(
        Path::new(CONTAINERD).exists(),
        "containerd is not running on {CONTAINERD}: start it with `sudo scripts/rig.sh services`"
    );
}

/// A `ctr` command line for the rig's containerd, for `sh`.
pub fn ctr(args: &str) -> String {
    format!("ctr -a {CONTAINERD} -n {CTR_NAMESPACE} {args}")
}

/// `ctr run --rm <args>` as a Command. On these machines `ctr run` needs a private mount
/// namespace without the hybrid cgroup mount; the argv goes through `"$@"`, so no shell
/// quoting can change what the task runs.
pub fn ctr_run(args: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("umount /sys/fs/cgroup/unified 2>/dev/null; exec \"$@\"")
        .args([
            "sh",
            "ctr",
            "-a",
            CONTAINERD,
            "-n",
            CTR_NAMESPACE,
            "run",
            "--rm",
        ])
        .args(args);
    c
}
