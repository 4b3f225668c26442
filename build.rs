//! Records the commit the binary is built from, for `--version`.
fn main() {
    // A build without .git (the Dockerfile's) passes the commit in FLOPS_GIT_COMMIT.
    println!("cargo:rerun-if-env-changed=FLOPS_GIT_COMMIT");
    if let Ok(c) = std::env::var("FLOPS_GIT_COMMIT") {
        println!("cargo:rustc-env=FLOPS_GIT_COMMIT={c}");
        return;
    }
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FLOPS_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
