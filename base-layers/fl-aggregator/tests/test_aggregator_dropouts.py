"""Failures the project survives, as FL tolerates them (Flower's accept_failures): learners
killed mid-round, restarted, late; cluster aggregators lost for a cycle; streams that ended
before the server took them. Learners are held at known points by the test ML repo's gates
(conftest.MODEL_MANAGER), so every step waits on a log line, never on a guess of timing."""

import queue

import grpc
from conftest import free_port, messages_of, outcome, run_name, wait_for


def counts(payload):
    """`rounds` of a success payload, as (clients, fit results, fit failures, evaluate results,
    evaluate failures) per round."""
    return [
        (r["clients"], r["fit_results"], r["fit_failures"], r["evaluate_results"], r["evaluate_failures"])
        for r in payload["rounds"]
    ]


def test_a_learner_killed_in_round_2_does_not_stop_the_project(fl, mqtt_messages, mlflow_client, observer,
                                                                 tmp_path):
    port = free_port()
    observer_address, observed = observer
    gate = tmp_path / "gate"
    agg = fl.aggregator("aggregator", ["CLASSIC_AGGREGATOR", 3, 1, 1, 1], port, observer=observer_address)
    # A is held in its trainings of rounds 1 and 2 until the test opens them.
    a = fl.learner("learner-a", port, "agg-a", TEST_FIT_GATE=gate, TEST_FIT_GATE_AT="1,2")
    a.expect("FIT_GATE waiting 1", 180)
    # B joins while round 1 trains (A alone): its first training is round 2's, where it hangs.
    b = fl.learner("learner-b", port, "agg-b", TEST_FIT_HANG_AT=1)
    agg.expect("learner joined (2 connected)", 120)
    (tmp_path / "gate-1").touch()
    a.expect("FIT_GATE waiting 2", 120)
    b.expect("FIT_HANG 1", 120)
    b.kill()
    agg.expect("learner left (1 connected)", 60)
    # Restarted, B serves the rest of the session: it is there before round 2 ends.
    b2 = fl.learner("learner-b-restarted", port, "agg-b")
    agg.expect("learner joined (2 connected)", 120, count=2)
    (tmp_path / "gate-2").touch()

    statuses, status, success = outcome(mqtt_messages, fl.project_id, 240)
    assert (statuses, status) == (["started", "success"], "success"), fl.logs()
    assert agg.wait(60) == 0, fl.logs()
    # Round 2: A's result aggregated, B's loss counted; round 3 with A and the restarted B.
    assert counts(success) == [(1, 1, 0, 2, 0), (2, 1, 1, 2, 0), (2, 2, 0, 2, 0)], (success, fl.logs())
    assert 0.5 < success["accuracy"] <= 1.0
    assert "round 2: 1 of 2 learner(s) failed in training (connection lost" in agg.output(), agg.output()
    assert a.wait(60) == 0 and b2.wait(60) == 0, fl.logs()
    assert "training session 1 finished" in b2.output(), b2.output()
    assert not messages_of(mqtt_messages, fl.project_id, "flops_manager/learner/")

    # The failure is a metric of round 2's run, and the observer was told.
    runs = {run_name(r): r for r in mlflow_client.search_runs([success["experiment_id"]])}
    assert [runs[f"FLOps FL round {n}"].data.metrics["fit_failures"] for n in (1, 2, 3)] == [0, 1, 0]
    assert runs["FLOps FL round 2"].data.metrics["fit_results"] == 1
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert wait_for(lambda: any("round 2: 1 of 2 learner(s) failed in training" in m for m in observed), 10), observed
    assert wait_for(lambda: any("(training/evaluation): 0/0, 1/0, 0/0" in m for m in observed), 10), observed


def test_a_learner_started_during_round_1_trains_from_round_2(fl, mqtt_messages, tmp_path):
    port = free_port()
    gate = tmp_path / "gate"
    agg = fl.aggregator("aggregator", ["CLASSIC_AGGREGATOR", 3, 1, 1, 1], port)
    a = fl.learner("learner-a", port, "agg-a", TEST_FIT_GATE=gate)
    a.expect("FIT_GATE waiting 1", 180)
    late = fl.learner("learner-late", port, "agg-b")
    agg.expect("learner joined (2 connected)", 120)
    (tmp_path / "gate-1").touch()

    statuses, status, success = outcome(mqtt_messages, fl.project_id, 240)
    assert status == "success", fl.logs()
    # Round 1 trained with A alone (the late learner evaluated it); rounds 2 and 3 with both.
    assert counts(success) == [(1, 1, 0, 2, 0), (2, 2, 0, 2, 0), (2, 2, 0, 2, 0)], (success, fl.logs())
    assert agg.wait(60) == 0 and a.wait(60) == 0 and late.wait(60) == 0, fl.logs()


def cancelled_join_streams(port: int, n: int) -> None:
    """Opens Flower Join streams and cancels each at once, as a learner's attempt given up while
    the server comes up: stock Flower keeps some of them registered for good (its termination
    callback is refused when the stream ended before the handler ran)."""
    from flwr.proto.transport_pb2_grpc import FlowerServiceStub

    for _ in range(n):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        requests = queue.Queue()
        FlowerServiceStub(channel).Join(iter(requests.get, None))
        channel.close()
        requests.put(None)


def test_streams_cancelled_at_once_are_never_sampled(fl, mqtt_messages):
    port = free_port()
    agg = fl.aggregator("aggregator", ["CLASSIC_AGGREGATOR", 2, 2, 2, 2], port)
    # The server listens once `started` is published.
    assert wait_for(lambda: messages_of(mqtt_messages, fl.project_id), 120), agg.output()
    cancelled_join_streams(port, 300)
    learners = [fl.learner("learner-a", port, "agg-a"), fl.learner("learner-b", port, "agg-b")]
    statuses, status, success = outcome(mqtt_messages, fl.project_id, 240)
    assert status == "success", fl.logs()
    # Server side: every round sampled exactly the two learners that exist, and none failed.
    assert counts(success) == [(2, 2, 0, 2, 0)] * 2, (success, agg.output()[-3000:])
    assert agg.wait(60) == 0 and all(learner.wait(60) == 0 for learner in learners), fl.logs()


def test_a_cluster_losing_a_learner_in_cycle_1_goes_on(fl, mqtt_messages, tmp_path):
    root_port, cluster_port = free_port(), free_port()
    gate = tmp_path / "gate"
    root = fl.aggregator("root", ["ROOT_AGGREGATOR", 2, 1, 1, 1], root_port)
    cluster = fl.aggregator(
        "cluster", ["CLUSTER_AGGREGATOR", 2, 1, 1, 1, f"127.0.0.1:{root_port}"], cluster_port
    )
    # A trains round 1 of cycle 1 alone (held until B is there); B joins and hangs in its first
    # training, round 2 of cycle 1, where it is killed.
    a = fl.learner("learner-a", cluster_port, "agg-a", sessions=2, TEST_FIT_GATE=gate)
    a.expect("FIT_GATE waiting 1", 180)
    b = fl.learner("learner-b", cluster_port, "agg-b", TEST_FIT_HANG_AT=1)
    cluster.expect("learner joined (2 connected)", 120)
    (tmp_path / "gate-1").touch()
    b.expect("FIT_HANG 1", 120)
    b.kill()

    statuses, status, success = outcome(mqtt_messages, fl.project_id, 300)
    assert (statuses, status) == (["started", "success"], "success"), fl.logs()
    # The root saw no failure: the cluster returned each cycle's result.
    assert counts(success) == [(1, 1, 0, 1, 0)] * 2, (success, fl.logs())
    assert root.wait(60) == 0 and a.wait(60) == 0, fl.logs()
    out = cluster.output()
    assert "round 2: 1 of 2 learner(s) failed in training (connection lost" in out, out
    assert "cycle 1 done" in out and "cycle 2 done" in out, out


def test_a_root_losing_a_cluster_aggregator_for_one_cycle_goes_on(fl, mqtt_messages, tmp_path):
    root_port, x_port, y_port = free_port(), free_port(), free_port()
    gate = tmp_path / "gate"
    # Two clusters required (so both train in cycle 1), one round per cycle each.
    root = fl.aggregator("root", ["ROOT_AGGREGATOR", 2, 2, 2, 2], root_port)

    def cluster(name, port):
        return fl.aggregator(name, ["CLUSTER_AGGREGATOR", 1, 1, 1, 1, f"127.0.0.1:{root_port}"], port)

    x = cluster("cluster-x", x_port)
    y = cluster("cluster-y", y_port)
    # X's learner is held in cycle 1 while X is killed; it serves X's restart in cycle 2.
    lx = fl.learner("learner-x", x_port, "agg-a", TEST_FIT_GATE=gate)
    ly = fl.learner("learner-y", y_port, "agg-b", sessions=2)
    lx.expect("FIT_GATE waiting 1", 180)
    x.kill()
    root.expect("cluster aggregator left (1 connected)", 60)
    x2 = cluster("cluster-x-restarted", x_port)
    root.expect("cluster aggregator joined (2 connected)", 120, count=2)
    (tmp_path / "gate-1").touch()

    statuses, status, success = outcome(mqtt_messages, fl.project_id, 300)
    assert (statuses, status) == (["started", "success"], "success"), fl.logs()
    rounds = counts(success)
    # Cycle 1: Y's result aggregated, X's loss counted; cycle 2 with Y and the restarted X.
    assert rounds[0][:3] == (2, 1, 1) and rounds[1][:3] == (2, 2, 0), (success, fl.logs())
    assert "round 1: 1 of 2 cluster aggregator(s) failed in training" in root.output(), root.output()
    assert root.wait(60) == 0, fl.logs()
    assert "cycle 1 done" in x2.output(), x2.output()
    assert lx.wait(60) == 0 and ly.wait(60) == 0, fl.logs()
    assert y.alive() and x2.alive()
