//! Shared helpers for integration tests: they talk to the real rig started by `scripts/rig.sh`
//! (registries on 127.0.0.1:5000 and :5443) and verify with skopeo, umoci and chroot.
#![allow(dead_code)]

use std::io::Read as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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
            panic!("{what} is not running on 127.0.0.1:{port}: start the test rig with `sudo scripts/rig.sh` (docs/tests.md)");
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

/// The tagged name of an image in a JSON report (`image` or any of `images`), without its
/// `@sha256:` digest.
pub fn tagged_name(image: &serde_json::Value) -> String {
    let r = image["reference"].as_str().expect("a reference");
    r.split('@').next().unwrap().to_string()
}

pub fn skopeo_raw(reference: &str, extra: &str) -> serde_json::Value {
    serde_json::from_str(&sh(&format!(
        "skopeo inspect --raw --tls-verify=false {extra} docker://{reference}"
    )))
    .unwrap()
}

/// The SBOM of one platform manifest on the registry at `addr` (plain HTTP), found as an
/// operator would on the CNCF registry 2.8: the referrers tag `sha256-<hex>` read with skopeo
/// (exactly one referrer, an SPDX artifact whose subject is the manifest), the document's blob
/// with curl. Returns the artifact manifest's digest and the document's bytes.
pub fn referrer_sbom(addr: &str, repository: &str, manifest: &str) -> (String, Vec<u8>) {
    let tag = manifest.replace(':', "-");
    let idx = skopeo_raw(&format!("{addr}/{repository}:{tag}"), "");
    let entries = idx["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{idx}");
    assert_eq!(entries[0]["artifactType"], "application/spdx+json", "{idx}");
    let artifact = entries[0]["digest"].as_str().unwrap().to_string();
    let m = skopeo_raw(&format!("{addr}/{repository}@{artifact}"), "");
    assert_eq!(m["subject"]["digest"], manifest, "{m}");
    assert_eq!(m["artifactType"], "application/spdx+json");
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    let out = Command::new("curl")
        .args([
            "-fsS",
            &format!("http://{addr}/v2/{repository}/blobs/{layer}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (artifact, out.stdout)
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
    // Most fixtures differ in specs and imports, not in the model: theirs is shared.
    let mm = std::fs::read_to_string(dest.join("model_manager.py")).unwrap_or_default();
    if mm.contains("from image_model import") {
        let shared = src.parent().unwrap().join("_shared/image_model.py");
        std::fs::copy(shared, dest.join("image_model.py")).unwrap();
    }
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
    ctr_run_on(CONTAINERD, &[], args)
}

/// `ctr run --rm <run_options> <args>` on the containerd at `socket`, as [`ctr_run`].
pub fn ctr_run_on(socket: &str, run_options: &[&str], args: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("umount /sys/fs/cgroup/unified 2>/dev/null; exec \"$@\"")
        .args([
            "sh",
            "ctr",
            "-a",
            socket,
            "-n",
            CTR_NAMESPACE,
            "run",
            "--rm",
        ])
        .args(run_options)
        .args(args);
    c
}

/// `build REPO --registry R --registry-mirror <the rig's> --cache-dir C --json <extra>`.
pub fn build_into(repo: &Path, registry: &str, cache: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "build",
        repo.to_str().unwrap(),
        "--registry",
        registry,
        "--registry-mirror",
        MIRROR_FLAG,
        "--cache-dir",
        cache.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// `ctr run` as an Oakestra worker would run the builder: the image's user, no added
/// capabilities, no --privileged, read-only rootfs, tmpfs /tmp; host network for the rig.
/// The host's CA store is mounted (read-only) as an operator with a private CA would.
/// `extra`: more `ctr run` options (mounts, `--env`). Returns (success, stdout, stdout + stderr).
pub fn run_task(image: &str, id: &str, extra: &[&str], cmd: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "--net-host",
        "--read-only",
        "--mount",
        "type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev:mode=1777",
        "--mount",
        "type=bind,src=/etc/ssl/certs,dst=/etc/ssl/certs,options=rbind:ro",
    ];
    args.extend_from_slice(extra);
    args.extend([image, id]);
    args.extend_from_slice(cmd);
    let o = ctr_run(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    (
        o.status.success(),
        stdout.clone(),
        format!("{stdout}{}", String::from_utf8_lossy(&o.stderr)),
    )
}

/// The rig's second plain registry, playing docker.io (holds library/python:3.11-slim and
/// 3.13-slim); builds reach it with `--registry-mirror docker.io=http://127.0.0.1:5001`.
pub const MIRROR: &str = "127.0.0.1:5001";
pub const MIRROR_FLAG: &str = "docker.io=http://127.0.0.1:5001";

/// Fails (never skips) without the rig's docker.io mirror and its bases.
pub fn require_mirror() {
    for tag in ["3.11-slim", "3.13-slim"] {
        let ok = Command::new("skopeo")
            .args([
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{MIRROR}/library/python:{tag}"),
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "{MIRROR}/library/python:{tag} is missing: run `sudo scripts/rig.sh services base`"
        );
    }
}

/// A new, empty CNCF distribution registry on a free 127.0.0.1 port (what a fresh FLOps
/// cluster has: no Python base); stopped and deleted on drop.
pub struct FreshRegistry {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    pub addr: String,
}

impl FreshRegistry {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let conf = dir.path().join("config.yml");
        std::fs::write(
            &conf,
            format!(
                "version: 0.1\nlog: {{ level: warn }}\nstorage:\n  filesystem: {{ rootdirectory: {} }}\n  delete: {{ enabled: true }}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (run `sudo scripts/rig.sh install`)");
        // Dropped (killed and waited for) on every path from here on.
        let registry = FreshRegistry {
            child,
            _dir: dir,
            addr,
        };
        for _ in 0..100 {
            if TcpStream::connect(&registry.addr).is_ok() {
                return registry;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("a fresh docker-registry did not start on {}", registry.addr);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FreshRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The unpacked image's environment (`KEY=VALUE`) and working directory, from umoci's
/// runtime config beside `rootfs`.
pub fn image_process(rootfs: &Path) -> (Vec<String>, String) {
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(rootfs.parent().unwrap().join("config.json")).unwrap(),
    )
    .unwrap();
    let env = config["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    (env, config["process"]["cwd"].as_str().unwrap().to_string())
}

/// Runs `python3 -c <code>` inside an unpacked image, in its working directory with its
/// environment: under chroot for amd64, through qemu-user (copied into the rootfs, invoked
/// explicitly; there is no binfmt here) for arm64. Returns (success, output).
pub fn python_in_image(rootfs: &Path, arch: &str, code: &str) -> (bool, String) {
    let (env, cwd) = image_process(rootfs);
    let script =
        format!("import os, sys\nos.chdir({cwd:?})\nsys.path.insert(0, {cwd:?})\n{code}\n");
    // A runtime would mount /dev (Python opens /dev/null and /dev/urandom).
    let _dev = DevMount::new(rootfs);
    let mut c = Command::new("chroot");
    c.arg(rootfs).env_clear();
    for kv in &env {
        let (k, v) = kv.split_once('=').unwrap();
        c.env(k, v);
    }
    match arch {
        "amd64" => {
            c.args(["/usr/bin/python3", "-c", &script]);
        }
        "arm64" => {
            let qemu = "/usr/bin/qemu-aarch64-static";
            assert!(
                Path::new(qemu).exists(),
                "{qemu} is missing: run `sudo scripts/rig.sh install` (Debian's qemu-user-static)"
            );
            std::fs::copy(qemu, rootfs.join("qemu-aarch64-static")).unwrap();
            c.args(["/qemu-aarch64-static", "/usr/bin/python3", "-c", &script]);
        }
        other => panic!("no way to run {other} here"),
    }
    let o = c.output().expect("chroot");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Pulls `reference` for `arch`, unpacks it, and imports the repo's `model_manager` there.
pub fn import_model_manager(reference: &str, arch: &str, work: &Path) -> PathBuf {
    let rootfs = unpack(
        reference,
        &work.join(arch),
        &format!("--override-arch {arch}"),
    );
    let (ok, out) = python_in_image(&rootfs, arch, "import model_manager; print('imported')");
    assert!(
        ok && out.contains("imported"),
        "import model_manager failed in {reference} ({arch}):\n{out}"
    );
    rootfs
}

/// The doctor rules that fired in a `check`/`build` JSON report.
pub fn rules(report: &serde_json::Value) -> Vec<String> {
    report["doctor"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap().to_string())
        .collect()
}

/// The doctor line of `rule` (the first), for asserting on its text.
pub fn rule_detail(report: &serde_json::Value, rule: &str) -> String {
    report["doctor"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == rule)
        .map(|f| f["detail"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `mosquitto_sub` on `<prefix>/#`, started before the build. Its stdout is read by a
/// thread: `-d` prints the broker's SUBACK, so a test publishes only once the
/// subscription exists (a fixed sleep lost messages on a loaded CI machine).
pub struct Sub {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Sub {
    pub fn start(prefix: &str) -> Self {
        Self::with(prefix, &["-v"])
    }

    /// `mosquitto_sub -d -q 1 <extra> -t <prefix>/#`, returned once the broker acknowledged
    /// the subscription (panics after 30 s, saying how to start the broker).
    pub fn with(prefix: &str, extra: &[&str]) -> Self {
        let topic = format!("{prefix}/#");
        let mut args = vec!["-h", "127.0.0.1", "-p", "9027", "-q", "1", "-d"];
        args.extend_from_slice(extra);
        args.extend(["-t", topic.as_str()]);
        // Line-buffered: piped, mosquitto_sub would hold its debug lines back.
        let mut child = Command::new("stdbuf")
            .arg("-oL")
            .arg("mosquitto_sub")
            .args(&args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub (package mosquitto-clients)");
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        let sub = Sub {
            child,
            lines,
            reader: Some(reader),
        };
        let t0 = Instant::now();
        while !sub
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("Subscribed ("))
        {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "mosquitto_sub got no SUBACK from 127.0.0.1:9027 in 30 s \
                 (start the broker: scripts/rig.sh all); it printed {:?}",
                sub.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sub
    }

    /// The message lines printed once the subscriber ended, its `-d` debug lines left out.
    fn finish(mut self) -> Vec<String> {
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        let _ = self.child.wait();
        let lines = std::mem::take(&mut *self.lines.lock().unwrap());
        lines
            .into_iter()
            .filter(|l| !l.starts_with("Client ") && !l.starts_with("Subscribed ("))
            .collect()
    }

    /// Everything printed, once the subscriber exits by itself (`-C`/`-W`).
    pub fn exited_output(self) -> Vec<u8> {
        self.finish().join("\n").into_bytes()
    }

    /// (event, payload) of the messages of one FLOps project, in order.
    pub fn messages_of(self, project: &str) -> Vec<(String, serde_json::Value)> {
        self.messages()
            .into_iter()
            .filter(|(_, p)| p["flops_project_id"] == project)
            .collect()
    }

    /// The payloads of the `failed` messages received so far.
    pub fn failed(self) -> Vec<serde_json::Value> {
        self.messages()
            .into_iter()
            .filter(|(e, _)| e == "failed")
            .map(|(_, p)| p)
            .collect()
    }

    /// (event, payload) of every message received so far, in order (`-v` lines).
    pub fn messages(mut self) -> Vec<(String, serde_json::Value)> {
        // QoS 1 was acknowledged to the publisher; delivery to this subscriber follows.
        std::thread::sleep(Duration::from_millis(500));
        let _ = self.child.kill();
        self.finish()
            .iter()
            .map(|l| {
                let (topic, payload) = l.split_once(' ').unwrap();
                (
                    topic.rsplit('/').next().unwrap().to_string(),
                    serde_json::from_str(payload).unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for Sub {
    /// A test that fails before reading its messages must not leave the subscriber running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP observer on 127.0.0.1 collecting one message per connection.
pub fn observer() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let mut m = String::new();
            let _ = s.read_to_string(&mut m);
            g.lock().unwrap().push(m);
        }
    });
    (port, got)
}

/// The runtimes' pytest env (the Flight data server and Flower run with it).
pub const PYENV: &str = "/var/lib/flops-rig/pyenv/bin/python";

/// The learner runtime's test helpers (flight_server.py, flower_server.py).
pub fn runtime_tests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("base-layers/fl-learner/tests")
}

/// A background command whose output goes to a log file; killed on drop.
pub struct Bg {
    child: Child,
    log: PathBuf,
    name: String,
}

impl Bg {
    pub fn start(name: &str, mut cmd: Command, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Bg {
            child,
            log,
            name: name.into(),
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.output().contains(needle) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "{} exited ({st}) before printing {needle:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{} did not print {needle:?} within {timeout:?}:\n{}",
            self.name,
            self.output()
        );
    }

    pub fn wait(&mut self, timeout: Duration) -> i32 {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "{} still running after {timeout:?}:\n{}",
            self.name,
            self.output()
        );
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (at most 10 s) until something listens on 127.0.0.1:`port`.
pub fn wait_port(port: u16) {
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < end,
            "nothing listens on 127.0.0.1:{port} after 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The Flight data server with FLOps-shaped image partitions, on a free port.
pub fn data_server(work: &Path) -> (Bg, u16) {
    let port = free_port();
    let mut flight = Command::new(PYENV);
    flight
        .arg(runtime_tests().join("flight_server.py"))
        .arg(format!("127.0.0.1:{port}"));
    let mut data = Bg::start("flight-server", flight, work);
    data.wait_for_output("serving on", Duration::from_secs(60));
    (data, port)
}

/// The rig's MLflow tracking server.
pub const TRACKING: &str = "http://127.0.0.1:5080";

/// Fails (never skips) without the rig's MLflow tracking server and Python envs.
pub fn require_tracking() {
    let ok = Command::new("curl")
        .args(["-fsS", &format!("{TRACKING}/health")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "no MLflow tracking server at {TRACKING}: run `sudo scripts/rig.sh pyenv services`"
    );
    for py in [
        PYENV,
        "/var/lib/flops-rig/pyenv-lowest/bin/python",
        "/var/lib/flops-rig/mlflow/bin/python",
    ] {
        assert!(
            Path::new(py).exists(),
            "{py} is missing: run `sudo scripts/rig.sh pyenv`"
        );
    }
}

// --- The lazy node (scripts/rig.sh lazy) ---

/// The rig's lazy node: a second containerd whose snapshotter `stargz` is the stargz
/// snapshotter (scripts/rig.sh lazy). Images reach it lazily through `lazy_rpull`; it starts
/// empty whenever its snapshotter restarts.
pub const LAZY_CONTAINERD: &str = "/run/flops-rig/lazy/containerd.sock";

/// Fails (never skips) without the lazy node and its stargz snapshotter, or without
/// ctr-remote, saying how to start them.
pub fn require_lazy_node() {
    // (ctr waits 10 s for a socket that is not there)
    assert!(
        Path::new(LAZY_CONTAINERD).exists(),
        "the lazy node is not running on {LAZY_CONTAINERD}: run `sudo scripts/rig.sh lazy`"
    );
    let (ok, out) = sh_status(&format!(
        "ctr -a {LAZY_CONTAINERD} snapshots --snapshotter stargz ls"
    ));
    assert!(
        ok,
        "the lazy node on {LAZY_CONTAINERD} does not reach its stargz snapshotter: run `sudo scripts/rig.sh lazy` ({out})"
    );
    let (ok, _) = sh_status("command -v ctr-remote");
    assert!(
        ok,
        "ctr-remote is not installed: run `sudo scripts/rig.sh lazy`"
    );
}

/// A `ctr` command line for the lazy node, for `sh`.
pub fn lazy_ctr(args: &str) -> String {
    format!("ctr -a {LAZY_CONTAINERD} -n {CTR_NAMESPACE} {args}")
}

/// Lazily pulls `reference` (plain HTTP) onto the lazy node, as the stargz snapshotter's
/// ctr-remote does: only the manifest and the config enter the content store; eStargz layers
/// are mounted from the registry (other layers are fetched whole). Returns its output.
pub fn lazy_rpull(reference: &str) -> String {
    sh(&format!(
        "ctr-remote -a {LAZY_CONTAINERD} -n {CTR_NAMESPACE} images rpull --plain-http {reference}"
    ))
}

/// `ctr run --rm --snapshotter stargz <args>` on the lazy node as a Command, as `ctr_run`.
pub fn lazy_ctr_run(args: &[&str]) -> Command {
    ctr_run_on(LAZY_CONTAINERD, &["--snapshotter", "stargz"], args)
}
