//! The `trained_model` plan against the rig's MLflow tracking server: models logged by MLflow
//! 2.0 and 2.2x clients (run artifacts; Flask and FastAPI scoring servers) and by an MLflow 3
//! client (logged-model storage)
//! become images for amd64 + arm64 through the manager's exact command line, run as containerd
//! tasks, and answer `/ping` and `/invocations` with exactly the model's own predictions.
mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// MLflow 2 client (mlflow-skinny 2.x with scikit-learn: the runtimes' pytest env).
const PY_MLFLOW2: &str = "/var/lib/flops-rig/pyenv/bin/python";
/// MLflow 2.0 client (the runtimes' env at its lowest versions): the Flask scoring server.
const PY_MLFLOW2_OLD: &str = "/var/lib/flops-rig/pyenv-lowest/bin/python";
/// MLflow 3 client (the tracking server's own env).
const PY_MLFLOW3: &str = "/var/lib/flops-rig/mlflow/bin/python";

/// Logs an sklearn model under `logged_model_artifact` with `python` (its MLflow), prints
/// `RUN <id>` and `PRED <json predictions of INPUT>` as the model predicts in Python.
const LOG_MODEL: &str = r#"
import json, sys
import mlflow, numpy as np
from sklearn.linear_model import LogisticRegression
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment(sys.argv[2])
rng = np.random.default_rng(7)
x = rng.normal(size=(60, 3))
y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
model = LogisticRegression().fit(x, y)
with mlflow.start_run() as run:
    if mlflow.__version__.startswith("2."):
        mlflow.sklearn.log_model(model, "logged_model_artifact", input_example=x[:2])
    else:
        mlflow.sklearn.log_model(model, name="logged_model_artifact", input_example=x[:2])
print("RUN", run.info.run_id)
data = json.loads(sys.argv[3])
loaded = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/logged_model_artifact")
print("PRED", json.dumps(np.asarray(loaded.predict(np.asarray(data, dtype=np.float64))).tolist()))
"#;

/// Served images listen on 127.0.0.1:8080 (host network): one test at a time.
static PORT_8080: std::sync::Mutex<()> = std::sync::Mutex::new(());

const INPUT: &str = "[[0.9, 0.1, -0.3], [-1.2, 0.4, 0.8], [0.2, -0.9, 0.0]]";

fn log_model(python: &str, experiment: &str) -> (String, Value) {
    let out = sh(&format!(
        "{python} -c '{}' {TRACKING} {experiment} '{INPUT}' 2>/dev/null",
        LOG_MODEL.replace('\'', "'\\''")
    ));
    let run = out
        .lines()
        .find_map(|l| l.strip_prefix("RUN "))
        .expect("a run id")
        .to_string();
    let pred = out
        .lines()
        .find_map(|l| l.strip_prefix("PRED "))
        .expect("predictions");
    (run, serde_json::from_str(pred).unwrap())
}

/// Serves `image` as a containerd task on the host network, waits for /ping, asks for
/// predictions in the `dataframe_split` form; the task is killed at the end.
fn serve_and_predict(image: &str, id: &str, work: &Path) -> (u16, Value) {
    sh(&ctr(&format!(
        "images pull --plain-http {image} >/dev/null"
    )));
    let log = work.join(format!("{id}.log"));
    let mut child = ctr_run(&["--net-host", image, id])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(work.join(format!("{id}.err"))).unwrap())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(180);
    let mut ping = String::new();
    while Instant::now() < end {
        let (ok, out) =
            sh_status("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/ping");
        if ok && out.trim() == "200" {
            ping = out;
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "the model server exited ({st}):\n{}",
                std::fs::read_to_string(work.join(format!("{id}.err"))).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let body = format!(
        "{{\"dataframe_split\": {{\"columns\": [\"0\", \"1\", \"2\"], \"data\": {INPUT}}}}}"
    );
    let answer = sh(&format!(
        "curl -s -X POST http://127.0.0.1:8080/invocations -H 'Content-Type: application/json' -d '{body}'"
    ));
    let _ = sh_status(&ctr(&format!("tasks kill -s KILL {id}")));
    let _ = child.wait();
    sh(&ctr(&format!("images rm {image} >/dev/null")));
    assert_eq!(ping.trim(), "200", "GET /ping never answered 200");
    (
        200,
        serde_json::from_str(&answer).unwrap_or_else(|_| panic!("/invocations answered {answer}")),
    )
}

/// The manager's exact command line for the trained-model plan; returns the success payload.
fn managers_build(customer: &str, run_id: &str, project: &str) -> Value {
    let sub = Sub::start("flops_manager/trained_model_image_builder");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("trained-model-cache");
    let r = run_env(
        &[
            "http://127.0.0.1:5000",
            project,
            "127.0.0.1",
            "127.0.0.1:1",
            "--supported_platforms=linux/amd64,linux/arm64",
            "trained_model",
            customer,
            TRACKING,
            run_id,
        ],
        &[("FLOPS_CACHE_DIR", cache.to_str().unwrap())],
    )
    .ok();
    assert!(
        r.last_line()
            .contains(&format!("/trained_model:{run_id}@sha256:")),
        "{}",
        r.stdout
    );
    let mine = sub.messages_of(project);
    let events: Vec<&str> = mine.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(events, ["started", "success"], "{mine:?}");
    mine[1].1.clone()
}

fn check_config(name: &str, run_id: &str) {
    // The image as configured: the scoring server, port 8080, not root, labelled.
    let config: Value = serde_json::from_str(&sh(&format!(
        "skopeo inspect --config --tls-verify=false docker://{name}"
    )))
    .unwrap();
    let c = &config["config"];
    assert!(c["ExposedPorts"].get("8080/tcp").is_some(), "{c}");
    assert_eq!(c["User"], "65532:65532");
    assert_eq!(c["Labels"]["io.oakestra.flops.mlflow.run-id"], run_id);
    assert_eq!(
        c["Labels"]["io.oakestra.flops.mlflow.tracking-uri"],
        TRACKING
    );
}

#[test]
fn models_logged_by_mlflow_2_and_3_are_served_as_they_predict() {
    require_rig();
    require_uv();
    require_broker();
    require_containerd();
    require_tracking();
    let _port = PORT_8080.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir().unwrap();
    let experiment = unique("serve").replace('/', "-");
    for (client, python) in [("mlflow2", PY_MLFLOW2), ("mlflow3", PY_MLFLOW3)] {
        let (run_id, expected) = log_model(python, &experiment);
        let customer = format!("Customer-{client}");
        let project = format!("{experiment}-{client}");
        let report = managers_build(&customer, &run_id, &project);
        let reference = report["image"]["reference"].as_str().unwrap();
        let name = reference.split('@').next().unwrap();
        assert_eq!(
            name,
            format!("127.0.0.1:5000/customer-{client}/trained_model:{run_id}")
        );
        assert_eq!(
            index_architectures(&skopeo_raw(name, "")),
            ["amd64", "arm64"]
        );
        let origin = report["model_origin"].as_str().unwrap();
        if client == "mlflow3" {
            assert!(origin.starts_with("logged model m-"), "{origin}");
        } else {
            assert_eq!(origin, "run artifacts");
        }
        check_config(&format!("{name} --override-arch arm64"), &run_id);
        // Each platform's SBOM is found through its referrers tag (distribution 2.8).
        let repository = name.rsplit_once(':').unwrap().0;
        for p in report["image"]["platforms"].as_array().unwrap() {
            let tag = p["manifest"].as_str().unwrap().replace(':', "-");
            let idx = skopeo_raw(&format!("{repository}:{tag}"), "");
            assert_eq!(idx["manifests"][0]["digest"], p["sbom"], "{idx}");
            assert_eq!(idx["manifests"][0]["artifactType"], "application/spdx+json");
        }
        let (_, answer) = serve_and_predict(name, &format!("{project}-serve"), work.path());
        assert_eq!(
            answer["predictions"], expected,
            "{client}: served predictions differ from the model's"
        );

        // The same run again: the same digest, nothing uploaded.
        let again = managers_build(&customer, &run_id, &format!("{project}-again"));
        assert_eq!(again["image"]["digest"], report["image"]["digest"]);
        assert_eq!(again["image"]["bytes_uploaded"], 0, "{}", again["image"]);
    }
}

/// MLflow before 2.21 serves with Flask under gunicorn. Its logging env pinned psutil 5.9.4,
/// which has no wheel for linux/arm64: two platforms fail naming it; amd64 serves.
#[test]
fn an_mlflow_2_0_model_is_served_with_flask() {
    require_rig();
    require_uv();
    require_containerd();
    require_tracking();
    let _port = PORT_8080.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir().unwrap();
    let (run_id, expected) = log_model(PY_MLFLOW2_OLD, &unique("old").replace('/', "-"));
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("trained-model-cache");
    let build = |platform: &str| {
        run(&[
            "model",
            "--tracking-uri",
            TRACKING,
            "--run-id",
            &run_id,
            "--registry",
            "http://127.0.0.1:5000",
            "--customer-id",
            "old-mlflow",
            "--platform",
            platform,
            "--cache-dir",
            cache.to_str().unwrap(),
            "--no-notify",
            "--json",
        ])
    };
    let e = build("linux/amd64,linux/arm64");
    expect_error(&e, 3, "psutil 5.9.4 for linux/arm64");
    let r = build("linux/amd64").ok().json();
    assert_eq!(r["mlflow_version"], "2.0.1");
    let name = tagged_name(&r["image"]);
    check_config(&name, &run_id);
    let (_, answer) = serve_and_predict(&name, "old-mlflow-serve", work.path());
    assert_eq!(answer["predictions"], expected);
}

#[test]
fn bad_runs_and_servers_fail_naming_them() {
    require_rig();
    require_tracking();
    let cases: [(&[&str], i32, &str); 4] = [
        (
            &["--tracking-uri", TRACKING, "--run-id", "0000nosuchrun"],
            3,
            "run 0000nosuchrun: not found on the MLflow tracking server http://127.0.0.1:5080 (RESOURCE_DOES_NOT_EXIST",
        ),
        (
            &["--tracking-uri", "http://127.0.0.1:1", "--run-id", "abc"],
            4,
            "cannot reach the MLflow tracking server http://127.0.0.1:1 for run abc",
        ),
        (
            &["--tracking-uri", TRACKING, "--run-id", "RUN", "--artifact-path", "no_such_model"],
            3,
            "has no MLflow model at `no_such_model`",
        ),
        (&["--model-dir", "/nonexistent-model"], 3, "/nonexistent-model is not an MLflow model directory"),
    ];
    let (run_id, _) = log_model(PY_MLFLOW2, &unique("bad").replace('/', "-"));
    for (args, code, needle) in cases {
        let mut all = vec![
            "model",
            "--registry",
            "http://127.0.0.1:5000",
            "--no-notify",
            "--tag",
            "t",
        ];
        let args: Vec<String> = args.iter().map(|a| a.replace("RUN", &run_id)).collect();
        all.extend(args.iter().map(String::as_str));
        let r = run(&all);
        expect_error(&r, code, needle);
    }
}

/// Issue 20: what the model's requirements leave open comes from the environment it was
/// trained in (`flops-environment.txt`, which our aggregator logs beside the model), not from
/// whatever is newest; the report says so.
#[test]
fn open_requirements_take_the_training_environments_versions() {
    require_rig();
    require_uv();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("model");
    sh(&format!(
        "{PY_MLFLOW2} -c 'import mlflow, numpy as np; from sklearn.linear_model import LogisticRegression as L; x = np.eye(4); mlflow.sklearn.save_model(L().fit(x, [0, 1, 0, 1]), \"{}\")' 2>/dev/null",
        dir.display()
    ));
    // As MLflow infers them, with scikit-learn left open; the training environment pins it.
    let mlflow = sh(&format!(
        "{PY_MLFLOW2} -c 'import mlflow; print(mlflow.__version__)'"
    ));
    write(
        &dir.join("requirements.txt"),
        &format!("mlflow=={}\nscikit-learn\ncloudpickle\n", mlflow.trim()),
    );
    write(
        &dir.join("flops-environment.txt"),
        "numpy==1.26.4\nscikit-learn==1.5.2\nscipy==1.13.1\nflwr==1.8.0\n",
    );
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("trained-model-cache");
    let r = run(&[
        "model",
        "--model-dir",
        dir.to_str().unwrap(),
        "--registry",
        "http://127.0.0.1:5000",
        "--customer-id",
        "trained-env",
        "--tag",
        "v1",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--no-notify",
        "--json",
    ])
    .ok()
    .json();
    let lock = std::fs::read_to_string(r["lock"].as_str().unwrap()).unwrap();
    for (name, version) in [
        ("numpy", "1.26.4"),
        ("scikit-learn", "1.5.2"),
        ("scipy", "1.13.1"),
    ] {
        assert!(
            lock.contains(&format!("name = \"{name}\"\nversion = \"{version}\"")),
            "{name} {version} not locked:\n{lock}"
        );
    }
    assert!(
        !lock.contains("name = \"flwr\""),
        "a constraint added a package"
    );
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("flops-environment.txt: 4 package versions"),
        "{}",
        r
    );
}
