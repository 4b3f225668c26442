"""A classic FLOps training: the aggregator, two learners, the tracking server and mosquitto."""

import importlib.metadata
import json
import tempfile
import subprocess
import sys

import numpy as np
from conftest import free_port, logged_signature, messages_of, run_name, score, wait_for


def test_classic_run_tracks_rounds_and_logs_the_best_model(fl, mqtt_messages, observer, mlflow_client):
    import mlflow.pyfunc
    import mlflow.sklearn

    port = free_port()
    observer_address, observed = observer
    # The tracking URL without a scheme: http:// is assumed.
    agg = fl.aggregator(
        "aggregator", ["CLASSIC_AGGREGATOR", 3, 2, 2, 2], port,
        observer=observer_address, tracking="127.0.0.1:5080",
    )
    learners = [fl.learner("learner-a", port, "agg-a"), fl.learner("learner-b", port, "agg-b")]

    assert agg.wait(240) == 0, fl.logs()
    for learner in learners:
        assert learner.wait(60) == 0, fl.logs()

    assert wait_for(lambda: len(messages_of(mqtt_messages, fl.project_id)) >= 2, 10)
    msgs = messages_of(mqtt_messages, fl.project_id)
    assert [status for status, _ in msgs] == ["started", "success"], msgs
    assert msgs[0][1]["aggregator_type"] == "CLASSIC_AGGREGATOR"
    success = msgs[1][1]
    assert success["aggregator_type"] == "CLASSIC_AGGREGATOR"
    assert 0.5 < success["accuracy"] <= 1.0 and success["loss"] > 0
    assert not messages_of(mqtt_messages, fl.project_id, "flops_manager/learner/")

    experiment = mlflow_client.get_experiment_by_name(f"FLOps Project {fl.project_id}")
    assert experiment is not None and experiment.experiment_id == success["experiment_id"]
    runs = mlflow_client.search_runs([experiment.experiment_id])
    assert sorted(run_name(r) for r in runs) == [f"FLOps FL round {n}" for n in (1, 2, 3)]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params == {
            "min_available_clients": "2",
            "min_fit_clients": "2",
            "min_evaluate_clients": "2",
            "fraction_fit": "1.0",
            "fraction_evaluate": "1.0",
        }
        assert {"loss", "accuracy"} <= set(run.data.metrics)

    # The model is in the best round's run (the first, then any with higher accuracy and lower
    # loss), whose metrics are the ones announced. This model gets better after round 1.
    by_round = sorted(runs, key=run_name)
    best = by_round[0]
    for run in by_round[1:]:
        m, b = run.data.metrics, best.data.metrics
        if m["accuracy"] > b["accuracy"] and m["loss"] < b["loss"]:
            best = run
    assert run_name(best) != "FLOps FL round 1", [r.data.metrics for r in by_round]
    assert success["run_id"] == best.info.run_id
    assert (success["accuracy"], success["loss"]) == (best.data.metrics["accuracy"], best.data.metrics["loss"])
    for run in runs:
        names = {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}
        assert ("logged_model_artifact" in names) == (run.info.run_id == success["run_id"]), names
    files = {a.path for a in mlflow_client.list_artifacts(success["run_id"], "logged_model_artifact")}
    assert {"logged_model_artifact/MLmodel", "logged_model_artifact/requirements.txt"} <= files, files
    # The environment it was trained in, for the trained-model image (flops-image-builder).
    assert "logged_model_artifact/flops-environment.txt" in files, files
    env_dir = mlflow_client.download_artifacts(success["run_id"], "logged_model_artifact/flops-environment.txt", tempfile.mkdtemp())
    with open(env_dir) as f:
        env = f.read().splitlines()
    # The aggregator runs in this test's environment.
    assert f"flwr=={importlib.metadata.version('flwr')}" in env, env[:20]
    # The repo's code goes with the model (models of classes defined in the repo need it).
    code = {a.path for a in mlflow_client.list_artifacts(success["run_id"], "logged_model_artifact/code")}
    assert code == {"logged_model_artifact/code/model_manager.py"}, code

    model = mlflow.sklearn.load_model(f"runs:/{success['run_id']}/logged_model_artifact")
    x = np.array([[2.0, 1.0], [-2.0, -1.0]])
    assert list(model.predict(x)) == [1, 0]

    # The signature is the learners' input schema (the shape and dtype they train on, float32;
    # no data), and MLflow's scoring server casts JSON numbers to it, in each of its formats
    # (pyfunc refuses an array of another dtype: a prediction means the parsing cast it).
    signature = logged_signature(mlflow_client, success["run_id"])
    assert json.loads(signature["inputs"]) == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 2]}}
    ], signature
    assert "model logged with the learners' input signature" in agg.output(), agg.output()
    served = mlflow.pyfunc.load_model(f"runs:/{success['run_id']}/logged_model_artifact")
    rows = x.tolist()
    for request in ({"inputs": rows}, {"instances": rows},
                    {"dataframe_split": {"columns": ["x1", "x2"], "data": rows}}):
        assert score(served, request) == [1, 0], request

    assert wait_for(lambda: len(observed) >= 2, 5), observed
    assert "127.0.0.1:5080" in observed[0]
    assert f"accuracy: {success['accuracy']}" in observed[-1] and success["run_id"] in observed[-1]


def test_track_locally_uses_a_local_store(fl, mqtt_messages, tmp_path):
    port = free_port()
    # A tracking server that does not exist: with --track-locally it is never contacted.
    # The model is an instance of a class defined in the repo's model_manager.py.
    agg = fl.aggregator("aggregator", ["CLASSIC_AGGREGATOR", 1, 1, 1, 1, "--track-locally"], port,
                        tracking=f"http://127.0.0.1:{free_port()}", TEST_MODEL_WRAP=1)
    learner = fl.learner("learner", port, "agg-c")
    assert agg.wait(180) == 0, fl.logs()
    assert learner.wait(60) == 0, fl.logs()
    assert wait_for(lambda: len(messages_of(mqtt_messages, fl.project_id)) >= 2, 10)
    status, success = messages_of(mqtt_messages, fl.project_id)[-1]
    assert status == "success"
    run_dir = fl.repo / "mlruns" / success["experiment_id"] / success["run_id"]
    model_dir = run_dir / "artifacts" / "logged_model_artifact"
    assert (model_dir / "MLmodel").is_file()
    assert (run_dir / "tags" / "mlflow.runName").read_text() == "FLOps FL round 1"

    # Served elsewhere (not in the repo): the model brings the repo's code along.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    load = (
        "import sys, mlflow.pyfunc, numpy as np; "
        "m = mlflow.pyfunc.load_model(sys.argv[1]); "
        # float32, the signature's dtype (the learners'): pyfunc checks an array's dtype, and
        # only the scoring server's JSON parsing casts to it.
        "x = np.array([[2.0, 1.0], [-2.0, -1.0]], np.float32); "
        "print('PREDICTED', np.asarray(m.predict(x)).tolist())"
    )
    done = subprocess.run([sys.executable, "-c", load, str(model_dir)], cwd=elsewhere, env=fl.env(),
                          capture_output=True, text=True, timeout=120)
    assert "PREDICTED [1, 0]" in done.stdout, done.stdout + done.stderr
