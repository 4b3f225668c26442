"""Hierarchical FL: a root aggregator, a cluster aggregator as its client, and the cluster's
learners (continuous services, one training session per cycle)."""

import json
import time

from conftest import free_port, logged_signature, messages_of, run_name, wait_for


def test_root_and_cluster_aggregator(fl, mqtt_messages, mlflow_client):
    root_port, cluster_port = free_port(), free_port()
    root = fl.aggregator("root", ["ROOT_AGGREGATOR", 2, 1, 1, 1], root_port)
    cluster = fl.aggregator(
        "cluster", ["CLUSTER_AGGREGATOR", 2, 2, 2, 2, f"127.0.0.1:{root_port}"], cluster_port
    )
    learners = [
        # Fed DataFrames: the root's model gets a signature of columns.
        fl.learner("learner-a", cluster_port, "agg-a", sessions=2, TEST_INPUT="dataframe"),
        fl.learner("learner-b", cluster_port, "agg-b", sessions=2, TEST_INPUT="dataframe"),
    ]

    assert root.wait(300) == 0, fl.logs()
    assert wait_for(lambda: len(messages_of(mqtt_messages, fl.project_id)) >= 2, 10)
    msgs = messages_of(mqtt_messages, fl.project_id)
    # Only the root notifies; the cluster aggregator never does.
    assert [(status, p["aggregator_type"]) for status, p in msgs] == [
        ("started", "ROOT_AGGREGATOR"),
        ("success", "ROOT_AGGREGATOR"),
    ], msgs
    success = msgs[1][1]
    assert 0.5 < success["accuracy"] <= 1.0

    # The root tracks one run per cycle and logs the best cycle's model.
    runs = mlflow_client.search_runs([success["experiment_id"]])
    assert sorted(run_name(r) for r in runs) == ["FLOps FL round 1", "FLOps FL round 2"]
    files = {a.path for a in mlflow_client.list_artifacts(success["run_id"], "logged_model_artifact")}
    assert "logged_model_artifact/MLmodel" in files
    # The learners' input schema reached the root through the cluster aggregator's fit metrics.
    signature = logged_signature(mlflow_client, success["run_id"])
    # (MLflow 2.0.1 writes no `required`: its columns all are.)
    columns = [(c["name"], c["type"], c.get("required", True)) for c in json.loads(signature["inputs"])]
    assert columns == [("x1", "float", True), ("x2", "float", True)], signature

    # Each cycle was one training session of each learner: 2 rounds x 2 learners x 240 examples.
    for learner in learners:
        assert learner.wait(60) == 0, fl.logs()
    out = cluster.output()
    assert "cycle 1 done: 960 training examples" in out and "cycle 2 done: 960 training examples" in out, out

    # The cluster aggregator outlives the root and keeps trying to reach it.
    assert wait_for(lambda: "unavailable; retrying" in cluster.output(), 15), cluster.output()
    time.sleep(1)
    assert cluster.alive(), cluster.output()


def test_failing_cycle_fails_the_root_not_the_cluster(fl, mqtt_messages):
    root_port, cluster_port = free_port(), free_port()
    root = fl.aggregator("root", ["ROOT_AGGREGATOR", 2, 1, 1, 1], root_port)
    cluster = fl.aggregator(
        "cluster", ["CLUSTER_AGGREGATOR", 2, 1, 1, 1, f"127.0.0.1:{root_port}"], cluster_port
    )
    learner = fl.learner("learner", cluster_port, "agg-a", TEST_MODEL_FAIL="fit_model")

    assert root.wait(240) == 1, fl.logs()
    assert learner.wait(60) == 1, fl.logs()
    assert wait_for(lambda: any(s == "failed" for s, _ in messages_of(mqtt_messages, fl.project_id)), 10)
    time.sleep(1)
    msgs = messages_of(mqtt_messages, fl.project_id)
    assert [status for status, _ in msgs] == ["started", "failed"], msgs
    msg = msgs[1][1]["error_msg"]
    assert "round 1: no training result: 1 of 1 cluster aggregator(s) failed in training" in msg, msg
    assert "see the cluster aggregators' logs" in msg, msg
    # The cluster aggregator logged its cycle's failure and carries on.
    assert wait_for(lambda: "1 of 1 learner(s) failed in training" in cluster.output(), 10), cluster.output()
    assert wait_for(lambda: "unavailable; retrying" in cluster.output(), 15), cluster.output()
    assert cluster.alive(), cluster.output()
