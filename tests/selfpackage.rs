//! The builder packages itself without Docker (scripts/self-package.sh), the result agrees with
//! the Dockerfile, and it does its job as an unprivileged containerd task: its own non-root
//! user, no added capabilities, no privileged flag, a read-only root filesystem with a writable
//! /tmp. It builds a fixture repo from a git server on 127.0.0.1 and pushes it.
mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

const BUILDER_BASE: &str = "127.0.0.1:5000/library/flops-builder-base:bookworm";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The final stage of the Dockerfile: (instruction, arguments) in order.
fn final_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let lines: Vec<(String, String)> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (i, rest) = l.split_once(' ').unwrap_or((l, ""));
            (i.to_uppercase(), rest.trim().to_string())
        })
        .collect();
    let start = lines.iter().rposition(|(i, _)| i == "FROM").unwrap();
    lines[start..].to_vec()
}

fn instruction(stage: &[(String, String)], name: &str) -> Vec<String> {
    stage
        .iter()
        .filter(|(i, _)| i == name)
        .map(|(_, a)| a.clone())
        .collect()
}

#[test]
fn self_packaged_builder_matches_the_dockerfile_and_builds_as_an_unprivileged_task() {
    require_rig();
    require_uv();
    require_containerd();
    let (ok, _) = sh_status(&format!(
        "skopeo inspect --raw --tls-verify=false docker://{BUILDER_BASE}"
    ));
    assert!(
        ok,
        "{BUILDER_BASE} is missing: run `sudo scripts/rig.sh builder-base`"
    );

    // The Dockerfile pins the same uv as the builder uses everywhere else.
    let uv_version = std::fs::read_to_string(root().join("base-layers/uv-version")).unwrap();
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("ARG UV_VERSION={}", uv_version.trim())),
        "Dockerfile's UV_VERSION differs from base-layers/uv-version"
    );

    let name = unique("builder");
    let image = format!("{PLAIN}/{name}:self");
    let out = sh(&format!(
        "BIN={} {}/scripts/self-package.sh {image} 2>&1",
        bin(),
        root().display()
    ));
    let reference = out.lines().last().unwrap();
    assert!(reference.starts_with(&format!("{image}@sha256:")), "{out}");

    // Same user, entrypoint, command and env as the Dockerfile's final stage.
    let stage = final_stage();
    let config: Value = serde_json::from_str(&sh(&format!(
        "skopeo inspect --config --tls-verify=false docker://{image}"
    )))
    .unwrap();
    let c = &config["config"];
    assert_eq!(c["User"], instruction(&stage, "USER")[0].as_str());
    assert_eq!(c["WorkingDir"], instruction(&stage, "WORKDIR")[0].as_str());
    let entrypoint: Value = serde_json::from_str(&instruction(&stage, "ENTRYPOINT")[0]).unwrap();
    assert_eq!(c["Entrypoint"], entrypoint);
    let cmd: Value = serde_json::from_str(&instruction(&stage, "CMD")[0]).unwrap();
    assert_eq!(c["Cmd"], cmd);
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for line in instruction(&stage, "ENV") {
        for kv in line.split_whitespace() {
            assert!(env.contains(&kv), "{kv} (Dockerfile ENV) not in {env:?}");
        }
    }
    // Same files: every COPY destination of the final stage, root-owned and executable.
    let work = tempfile::tempdir().unwrap();
    let rootfs = unpack(&image, work.path(), "");
    let copies = instruction(&stage, "COPY");
    assert!(!copies.is_empty());
    for copy in copies {
        let dest = copy.split_whitespace().last().unwrap();
        let meta = std::fs::metadata(rootfs.join(dest.trim_start_matches('/')))
            .unwrap_or_else(|e| panic!("{dest} (Dockerfile COPY) missing from the image: {e}"));
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!(meta.uid(), 0, "{dest}");
        assert_eq!(meta.permissions().mode() & 0o111, 0o111, "{dest}");
    }
    // And the packages the Dockerfile installs.
    assert!(rootfs.join("etc/ssl/certs/ca-certificates.crt").exists());
    assert!(rootfs.join("usr/bin/python3").exists());

    // As a containerd task: the image's non-root user, without any effective capability.
    sh(&ctr(&format!(
        "images pull --plain-http {image} >/dev/null"
    )));
    let id = name.replace(['/', '.'], "-");
    let (ok, _, out) = run_task(
        &image,
        &format!("{id}-id"),
        &[],
        &[
            "sh",
            "-c",
            "id -u; grep CapEff /proc/self/status; touch /usr/x 2>&1; /usr/local/bin/uv --version",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.starts_with("65532\n"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.contains(&format!("uv {}", uv_version.trim())), "{out}");

    // The job itself, exactly as FLOps' manager starts it (`python3 main.py …` in the image's
    // working directory): the fl_actors plan for two platforms, from a git server on 127.0.0.1.
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo("sklearn-conda", src.path(), "repo");
    let served = src.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let repo_name = format!("selfpkg{}", std::process::id());
    bare(&repo, &served, &repo_name);
    let server = GitServer::start(&served, None);
    require_broker();
    let project = format!("p-{id}");
    let (obs_port, observed) = observer();
    let sub = Sub::start("flops_manager/fl_actors_image_builder");
    let (ok, stdout, out) = run_task(
        &image,
        &format!("{id}-build"),
        &[],
        &[
            "python3",
            "main.py",
            &format!("http://{PLAIN}"),
            &project,
            "127.0.0.1",
            &format!("127.0.0.1:{obs_port}"),
            "--supported_platforms=linux/amd64,linux/arm64",
            "fl_actors",
            &server.url(&repo_name),
            "sklearn",
        ],
    );
    assert!(ok, "the builder failed as a containerd task:\n{out}");
    let commit = git(&repo, "rev-parse HEAD").trim().to_string();
    // A one-segment URL path (`/<name>.git`) names the owner `local`.
    let owner = "local";
    for role in ["learner", "aggregator"] {
        let name = format!("{PLAIN}/{owner}/{repo_name}/{role}:{commit}");
        assert!(stdout.contains(&format!("{name}@sha256:")), "{role}: {out}");
        assert_eq!(
            index_architectures(&skopeo_raw(&name, "")),
            ["amd64", "arm64"],
            "{role}"
        );
        let env = sh(&format!(
            "skopeo inspect --config --tls-verify=false --override-arch arm64 docker://{name}"
        ));
        // Only the aggregator reads the flavor (the learner is one image per commit).
        assert_eq!(
            env.contains("ML_MODEL_FLAVOR=sklearn"),
            role == "aggregator",
            "{role}: {env}"
        );
    }
    let msgs = sub.messages_of(&project);
    let events: Vec<&str> = msgs.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(events, ["started", "success"], "{msgs:?}");
    let report = &msgs[1].1;
    // The aggregator uploads only what the learner did not have: everything it shares with the
    // learner is mounted (or already there), its own layers are uploaded.
    let blobs = |role: &str| -> Vec<(String, String)> {
        report["images"][role]["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["layers"].as_array().unwrap().iter().chain([&p["config"]]))
            .map(|b| {
                (
                    b["digest"].as_str().unwrap().to_string(),
                    b["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let learner: std::collections::HashSet<String> =
        blobs("learner").into_iter().map(|(d, _)| d).collect();
    let mut own_uploaded = std::collections::HashSet::new();
    for (digest, status) in blobs("aggregator") {
        if learner.contains(&digest) {
            assert!(
                status == "mounted" || status == "skipped",
                "{digest} shared with the learner was {status}"
            );
        } else {
            // Its own: uploaded, or mounted from the shared pool when an earlier build made it.
            assert!(
                status == "uploaded" || status == "mounted",
                "{digest}: {status}"
            );
            if status == "uploaded" {
                own_uploaded.insert(digest);
            }
        }
    }
    // At least its two configs and its runtime layer are new.
    assert!(
        own_uploaded.len() >= 3,
        "the aggregator's own layers and configs: {own_uploaded:?}"
    );
    assert!(report["images"]["aggregator"]["phases_ms"]["total"]
        .as_u64()
        .is_some());
    // The task's own python3.11 compiled the dependencies' bytecode (read-only root, no caps).
    assert!(
        report["bytecode"]
            .as_str()
            .unwrap_or_default()
            .starts_with("cpython-311 (python3.11 "),
        "bytecode: {}",
        report["bytecode"]
    );
    let seen = observed.lock().unwrap().join("\n");
    assert!(
        seen.contains("pushed") && seen.contains("/aggregator:"),
        "{seen}"
    );
    sh(&ctr(&format!("images rm {image} >/dev/null")));
}
