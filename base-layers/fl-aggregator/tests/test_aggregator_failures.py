"""Failures end in exactly one flops_manager/aggregator/failed whose error_msg says what to fix,
and exit code 1, without hanging on the tracking server, the broker or the observer. (Failures
the project survives are in test_aggregator_dropouts.py.)"""

import time
from datetime import datetime

from conftest import free_port, messages_of, run_name, wait_for


def log_time(line: str) -> float:
    """Seconds of a runtime log line's `asctime` stamp (`2026-12-01 14:20:14,123 flops-aggregator …`)."""
    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def failed_once(mqtt_messages, project_id):
    """Waits a moment for stragglers, then returns the one `failed` payload."""
    assert wait_for(lambda: messages_of(mqtt_messages, project_id), 10), "nothing was published"
    time.sleep(1)
    msgs = messages_of(mqtt_messages, project_id)
    assert [status for status, _ in msgs if status != "started"] == ["failed"], msgs
    payload = msgs[-1][1]
    assert set(payload) == {"flops_project_id", "aggregator_type", "error_msg"}, payload
    return msgs, payload


def test_unreachable_tracking_server_fails_fast(fl, mqtt_messages, observer):
    observer_address, observed = observer
    url = f"http://127.0.0.1:{free_port()}"
    agg = fl.aggregator("aggregator", ["CLASSIC_AGGREGATOR", 3, 1, 1, 1], free_port(),
                        observer=observer_address, tracking=url)
    assert agg.wait(60) == 1, agg.output()
    # Fast by the runtime's own log stamps (MLflow's client alone would retry for minutes).
    lines = [line for line in agg.output().splitlines() if " flops-aggregator " in line]
    assert log_time(lines[-1]) - log_time(lines[0]) < 30, lines
    msgs, payload = failed_once(mqtt_messages, fl.project_id)
    assert [status for status, _ in msgs] == ["failed"]
    assert payload["aggregator_type"] == "CLASSIC_AGGREGATOR"
    assert url in payload["error_msg"] and "unreachable" in payload["error_msg"], payload
    assert wait_for(lambda: observed, 5) and url in observed[-1]


def test_model_code_failing_at_start(fl, mqtt_messages):
    agg = fl.aggregator("aggregator", ["ROOT_AGGREGATOR", 2, 1, 1, 1], free_port(),
                        TEST_MODEL_FAIL="init")
    assert agg.wait(60) == 1, agg.output()
    msgs, payload = failed_once(mqtt_messages, fl.project_id)
    assert [status for status, _ in msgs] == ["failed"]
    assert payload["aggregator_type"] == "ROOT_AGGREGATOR"
    assert "ModelManager()" in payload["error_msg"]
    assert "RuntimeError: the model cannot be built" in payload["error_msg"]


def test_model_code_failing_in_a_round(fl, mqtt_messages, mlflow_client):
    # Only the aggregator's model fails: it cannot take the aggregated parameters of round 1.
    port = free_port()
    agg = fl.aggregator("aggregator", ["CLASSIC_AGGREGATOR", 3, 1, 1, 1], port,
                        TEST_MODEL_FAIL="set_model_parameters")
    learner = fl.learner("learner", port, "agg-a")
    assert agg.wait(120) == 1, fl.logs()
    msgs, payload = failed_once(mqtt_messages, fl.project_id)
    assert [status for status, _ in msgs] == ["started", "failed"]
    msg = payload["error_msg"]
    assert "round 1" in msg and "set_model_parameters()" in msg, msg
    assert "ValueError: these parameters do not fit the model" in msg, msg
    # The remaining rounds were cancelled and the learner's session ended normally.
    assert learner.wait(60) == 0, fl.logs()
    experiment = mlflow_client.get_experiment_by_name(f"FLOps Project {fl.project_id}")
    runs = mlflow_client.search_runs([experiment.experiment_id])
    assert [(run_name(r), r.info.status) for r in runs] == [("FLOps FL round 1", "FAILED")]


def test_learner_failure_fails_the_round(fl, mqtt_messages):
    port = free_port()
    agg = fl.aggregator("aggregator", ["CLASSIC_AGGREGATOR", 3, 1, 1, 1], port)
    learner = fl.learner("learner", port, "agg-a", TEST_MODEL_FAIL="fit_model")
    assert agg.wait(120) == 1, fl.logs()
    assert learner.wait(60) == 1, fl.logs()
    _, payload = failed_once(mqtt_messages, fl.project_id)
    msg = payload["error_msg"]
    # The round's only learner failed: no result at all, the one case where a round fails.
    assert "round 1: no training result: 1 of 1 learner(s) failed in training (connection lost" in msg, msg
    learner_failed = messages_of(mqtt_messages, fl.project_id, "flops_manager/learner/")
    assert [status for status, _ in learner_failed] == ["failed"]


def test_too_few_learners_within_the_wait_is_a_failure_that_says_so(fl, mqtt_messages):
    # Two learners required, one comes: the round gives up after FLOPS_AGGREGATOR_CLIENT_WAIT.
    port = free_port()
    agg = fl.aggregator("aggregator", ["CLASSIC_AGGREGATOR", 2, 2, 2, 2], port,
                        FLOPS_AGGREGATOR_CLIENT_WAIT=8)
    learner = fl.learner("learner", port, "agg-a")
    agg.expect("learner joined (1 connected)", 120)
    assert agg.wait(120) == 1, fl.logs()
    _, payload = failed_once(mqtt_messages, fl.project_id)
    msg = payload["error_msg"]
    assert "round 1: not enough learner(s) for training: 1 connected, 2 required" in msg, msg
    assert "after waiting 8 s (FLOPS_AGGREGATOR_CLIENT_WAIT)" in msg, msg
    # The learner had no part in a session: not a failure, it waits for the next one.
    assert learner.alive(), fl.logs()
    assert not messages_of(mqtt_messages, fl.project_id, "flops_manager/learner/")


def test_a_bad_client_wait_is_reported(fl, mqtt_messages):
    agg = fl.aggregator("aggregator", ["CLASSIC_AGGREGATOR", 1, 1, 1, 1], free_port(),
                        FLOPS_AGGREGATOR_CLIENT_WAIT="soon")
    assert agg.wait(60) == 1, agg.output()
    _, payload = failed_once(mqtt_messages, fl.project_id)
    assert "FLOPS_AGGREGATOR_CLIENT_WAIT='soon' is not a number" in payload["error_msg"], payload


def test_unreachable_broker_and_observer_do_not_hang(fl):
    # Nothing listens on these ports: each notification gives up at once with a warning. Timed
    # by the runtime's own log stamps, from the line before the first warning to the last one,
    # so a loaded machine's slow Python start does not count.
    agg = fl.aggregator("aggregator", ["CLASSIC_AGGREGATOR", 1, 1, 1, 1], free_port(),
                        mqtt=f"127.0.0.1:{free_port()}", observer=f"127.0.0.1:{free_port()}",
                        TEST_MODEL_FAIL="init")
    assert agg.wait(60) == 1, agg.output()
    out = agg.output()
    assert "could not publish flops_manager/aggregator/failed" in out, out
    assert "could not reach the project observer" in out, out
    lines = [line for line in out.splitlines() if " flops-aggregator " in line]
    warned = [i for i, line in enumerate(lines) if "could not publish" in line or "could not reach" in line]
    stamps = [log_time(lines[i]) for i in (max(warned[0] - 1, 0), warned[-1])]
    assert stamps[1] - stamps[0] < 10, lines


def test_deactivated_notifications_publish_nothing(fl, mqtt_messages):
    agg = fl.aggregator("aggregator", ["CLASSIC_AGGREGATOR", 1, 1, 1, 1, "--deactivate-notifications"],
                        free_port(), TEST_MODEL_FAIL="init")
    assert agg.wait(60) == 1, agg.output()
    time.sleep(2)
    assert messages_of(mqtt_messages, fl.project_id) == []
    assert "ModelManager() raised RuntimeError" in agg.output()
