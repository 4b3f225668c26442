//! FLOps projects run from the images `build --aggregator` (the `fl_actors` plan) pushed, as
//! containerd tasks with the manager's exact command lines, on FLOps-shaped image data:
//! classic FL (one aggregator, two learners; MQTT, MLflow runs and the logged model checked
//! through the tracking server's REST API and MLflow itself) and hierarchical FL (a root, two
//! cluster aggregators, learners that stay up and serve the next cycle).
mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const MLFLOW_PY: &str = "/var/lib/flops-rig/mlflow/bin/python";
/// The classic project uses the contract's port 8080 (no port on the command line).
static PORT_8080: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn require_flow_rig() {
    require_rig();
    require_uv();
    require_broker();
    require_containerd();
    require_tracking();
}

/// A containerd task on the host network: a [`Bg`] running `ctr run`, whose task is killed on
/// drop (before the `ctr` client itself).
struct Task {
    id: String,
    bg: Bg,
}

impl Task {
    fn start(image: &str, id: &str, env: &[String], argv: &[&str], work: &Path) -> Self {
        let mut args: Vec<&str> = vec!["--net-host"];
        for e in env {
            args.extend(["--env", e.as_str()]);
        }
        args.extend([image, id]);
        args.extend_from_slice(argv);
        Task {
            id: id.into(),
            bg: Bg::start(id, ctr_run(&args), work),
        }
    }
}

impl std::ops::Deref for Task {
    type Target = Bg;
    fn deref(&self) -> &Bg {
        &self.bg
    }
}

impl std::ops::DerefMut for Task {
    fn deref_mut(&mut self) -> &mut Bg {
        &mut self.bg
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        let _ = sh_status(&ctr(&format!("tasks kill -s KILL {}", self.id)));
    }
}

/// `build --aggregator` of the sklearn fixture; both images pulled into containerd.
fn fl_images(work: &Path) -> (String, String) {
    let repo = git_repo(
        "sklearn-conda",
        &work.join(unique("fl").replace('/', "-")),
        "sklearn-conda",
    );
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("flow-cache");
    let r = run(&[
        "build",
        repo.to_str().unwrap(),
        "--aggregator",
        "--model-flavor",
        "sklearn",
        "--registry",
        "http://127.0.0.1:5000",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--no-notify",
        "--json",
    ])
    .ok()
    .json();
    let name = |role: &str| tagged_name(&r["images"][role]);
    let (learner, aggregator) = (name("learner"), name("aggregator"));
    for image in [&learner, &aggregator] {
        sh(&ctr(&format!(
            "images pull --plain-http {image} >/dev/null"
        )));
    }
    (learner, aggregator)
}

fn learner_env(data_port: u16, sessions: Option<u32>) -> Vec<String> {
    let mut env = vec![
        "ML_DATA_SERVER_HOST=127.0.0.1".to_string(),
        format!("ML_DATA_SERVER_PORT={data_port}"),
        "FLOPS_LEARNER_RETRY_DELAY=1".to_string(),
    ];
    if let Some(n) = sessions {
        env.push(format!("FLOPS_LEARNER_MAX_SESSIONS={n}"));
    }
    env
}

fn mlflow_get(path: &str) -> Value {
    serde_json::from_str(&sh(&format!(
        "curl -fsS '{TRACKING}/api/2.0/mlflow/{path}'"
    )))
    .unwrap()
}

/// The project's MLflow experiment: its id and its runs' names.
fn experiment_runs(project: &str) -> (String, Vec<String>) {
    let exp = mlflow_get(&format!(
        "experiments/get-by-name?experiment_name=FLOps%20Project%20{project}"
    ));
    let id = exp["experiment"]["experiment_id"]
        .as_str()
        .unwrap()
        .to_string();
    let runs: Value = serde_json::from_str(&sh(&format!(
        "curl -fsS -X POST {TRACKING}/api/2.0/mlflow/runs/search -H 'Content-Type: application/json' -d '{{\"experiment_ids\": [\"{id}\"], \"max_results\": 100}}'"
    )))
    .unwrap();
    let mut names: Vec<String> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["info"]["run_name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    (id, names)
}

/// The logged model of `run_id` has MLmodel, and MLflow itself loads it and predicts.
fn logged_model_predicts(run_id: &str) {
    let listing = mlflow_get(&format!(
        "artifacts/list?run_id={run_id}&path=logged_model_artifact"
    ));
    let files: Vec<&str> = listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        files.contains(&"logged_model_artifact/MLmodel"),
        "{files:?}"
    );
    let out = sh(&format!(
        "MLFLOW_TRACKING_URI={TRACKING} {MLFLOW_PY} -c 'import mlflow, numpy; m = mlflow.pyfunc.load_model(\"runs:/{run_id}/logged_model_artifact\"); print(\"PRED\", list(m.predict(numpy.zeros((2, 144)))))' 2>/dev/null"
    ));
    assert!(out.contains("PRED ["), "{out}");
}

#[test]
fn classic_fl_project_runs_from_the_pushed_images() {
    require_flow_rig();
    let _port = PORT_8080.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let work = d.path();
    let (learner, aggregator) = fl_images(work);
    let (data, data_port) = data_server(work);
    let project = unique("classic").replace(['/', '.'], "-");
    let (obs_port, observed) = observer();
    let obs = format!("127.0.0.1:{obs_port}");
    let sub = Sub::start("flops_manager/aggregator");
    // The manager's command lines, exactly (the aggregator on the contract's port 8080).
    let mut agg = Task::start(
        &aggregator,
        &format!("{project}-agg"),
        &[],
        &[
            "python",
            "main.py",
            &project,
            "127.0.0.1",
            &obs,
            TRACKING,
            "CLASSIC_AGGREGATOR",
            "3",
            "2",
            "2",
            "2",
        ],
        work,
    );
    let mut learners: Vec<Task> = ["images-a", "images-b"]
        .iter()
        .enumerate()
        .map(|(i, tags)| {
            Task::start(
                &learner,
                &format!("{project}-l{i}"),
                &learner_env(data_port, Some(1)),
                &[
                    "python",
                    "main.py",
                    &project,
                    "127.0.0.1",
                    &obs,
                    "127.0.0.1",
                    tags,
                ],
                work,
            )
        })
        .collect();
    let code = agg.wait(Duration::from_secs(900));
    assert_eq!(
        code,
        0,
        "aggregator:\n{}\nlearner:\n{}",
        agg.output(),
        learners[0].output()
    );
    for l in &mut learners {
        assert_eq!(l.wait(Duration::from_secs(120)), 0, "{}", l.output());
    }
    drop(data);
    let mine = sub.messages_of(&project);
    let events: Vec<&str> = mine.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(events, ["started", "success"], "{mine:?}");
    let success = &mine[1].1;
    for k in ["accuracy", "loss"] {
        assert!(success[k].as_f64().is_some(), "{k}: {success}");
    }
    assert!(success["accuracy"].as_f64().unwrap() > 0.8, "{success}");
    let run_id = success["run_id"].as_str().unwrap();
    let (experiment_id, runs) = experiment_runs(&project);
    assert_eq!(success["experiment_id"], experiment_id.as_str());
    assert_eq!(
        runs,
        ["FLOps FL round 1", "FLOps FL round 2", "FLOps FL round 3"]
    );
    logged_model_predicts(run_id);
    let seen = observed.lock().unwrap().join("\n");
    assert!(
        seen.contains(TRACKING),
        "the observer was not told the tracking server: {seen}"
    );
}

#[test]
fn hierarchical_fl_project_with_learners_that_serve_every_cycle() {
    require_flow_rig();
    let d = tempfile::tempdir().unwrap();
    let work = d.path();
    let (learner, aggregator) = fl_images(work);
    let (data, data_port) = data_server(work);
    let project = unique("hier").replace(['/', '.'], "-");
    let (obs_port, _observed) = observer();
    let obs = format!("127.0.0.1:{obs_port}");
    let sub = Sub::start("flops_manager/aggregator");
    // Ports move by env only: several aggregators share this machine.
    let (root_port, cluster_ports) = (free_port(), [free_port(), free_port()]);
    let root_addr = format!("127.0.0.1:{root_port}");
    let mut root = Task::start(
        &aggregator,
        &format!("{project}-root"),
        &[format!("FLOPS_AGGREGATOR_PORT={root_port}")],
        &[
            "python",
            "main.py",
            &project,
            "127.0.0.1",
            &obs,
            TRACKING,
            "ROOT_AGGREGATOR",
            "2",
            "2",
            "2",
            "2",
        ],
        work,
    );
    let mut clusters = Vec::new();
    let mut learners = Vec::new();
    for (c, port) in cluster_ports.iter().enumerate() {
        clusters.push(Task::start(
            &aggregator,
            &format!("{project}-c{c}"),
            &[
                format!("FLOPS_AGGREGATOR_PORT={port}"),
                "FLOPS_AGGREGATOR_RETRY_DELAY=1".into(),
            ],
            &[
                "python",
                "main.py",
                &project,
                "127.0.0.1",
                &obs,
                TRACKING,
                "CLUSTER_AGGREGATOR",
                "2",
                "2",
                "2",
                "2",
                &root_addr,
            ],
            work,
        ));
        for (i, tags) in ["images-a", "images-b"].iter().enumerate() {
            // Continuous services, as the manager deploys them: no session limit.
            learners.push(Task::start(
                &learner,
                &format!("{project}-c{c}-l{i}"),
                &learner_env(data_port, None),
                &[
                    "python",
                    "main.py",
                    &project,
                    "127.0.0.1",
                    &obs,
                    &format!("127.0.0.1:{port}"),
                    tags,
                ],
                work,
            ));
        }
    }
    let code = root.wait(Duration::from_secs(1200));
    assert_eq!(
        code,
        0,
        "root:\n{}\ncluster:\n{}",
        root.output(),
        clusters[0].output()
    );
    let mine = sub.messages_of(&project);
    let events: Vec<&str> = mine.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(events, ["started", "success"], "{mine:?}");
    assert_eq!(mine[1].1["aggregator_type"], "ROOT_AGGREGATOR");
    let run_id = mine[1].1["run_id"].as_str().unwrap();
    let (_, runs) = experiment_runs(&project);
    assert_eq!(runs, ["FLOps FL round 1", "FLOps FL round 2"]);
    logged_model_predicts(run_id);
    // The learners served both cycles and are still up, waiting for the next session.
    for l in &mut learners {
        assert!(
            l.running(),
            "a learner stopped after the project:\n{}",
            l.output()
        );
        assert!(
            l.output().contains("training session 2 finished"),
            "{}",
            l.output()
        );
    }
    for c in &mut clusters {
        assert!(c.running(), "a cluster aggregator stopped:\n{}", c.output());
    }
    drop(data);
}
