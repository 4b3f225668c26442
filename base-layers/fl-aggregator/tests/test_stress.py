"""Start races, as the FLOps manager deploys a project: the aggregator and two learners started in
the same instant, the learners 10 s before the aggregator, the aggregator 10 s before the
learners. Each run is a whole classic project (3 rounds, 2 learners required) that must end in
`success` with every round sampling exactly the two learners and none failing.

FLOPS_STRESS_RUNS runs of each start order (default 2, what CI runs; bench/fl-stress.sh runs 20).
FLOPS_STRESS_REPORT=<file> appends one JSON line per run (start order, run, outcome, seconds).
"""

import json
import os
import time

import pytest
from conftest import free_port, outcome

RUNS = int(os.environ.get("FLOPS_STRESS_RUNS", "2"))
# Seconds the learners start after the aggregator (negative: before it).
ORDERS = {"together": 0, "learners-first": -10, "aggregator-first": 10}


def record(**entry) -> None:
    path = os.environ.get("FLOPS_STRESS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("run", range(1, RUNS + 1))
def test_start_race(fl, mqtt_messages, order, run):
    port = free_port()
    started = time.monotonic()
    result = {"order": order, "run": run, "ok": False, "error": ""}
    try:
        procs = []

        def learners():
            procs.extend(fl.learner(f"learner-{t}", port, f"agg-{t}") for t in "ab")

        if ORDERS[order] < 0:
            learners()
            time.sleep(-ORDERS[order])  # the scenario itself: learners retrying for 10 s
        agg = fl.aggregator("aggregator", ["CLASSIC_AGGREGATOR", 3, 2, 2, 2], port)
        if ORDERS[order] > 0:
            time.sleep(ORDERS[order])  # the scenario itself: a server waiting for 10 s
        if ORDERS[order] >= 0:
            learners()

        statuses, status, payload = outcome(mqtt_messages, fl.project_id, 300)
        assert (statuses, status) == (["started", "success"], "success"), (payload, fl.logs())
        assert agg.wait(60) == 0, fl.logs()
        result["seconds"] = round(time.monotonic() - started, 1)
        # Server side: every round sampled the two learners that exist, and none failed.
        rounds = [(r["clients"], r["fit_results"], r["fit_failures"], r["evaluate_results"],
                   r["evaluate_failures"]) for r in payload["rounds"]]
        assert rounds == [(2, 2, 0, 2, 0)] * 3, (payload, fl.logs())
        for p in procs:
            assert p.wait(60) == 0, fl.logs()
            out = p.output()
            assert "training session 1 finished" in out and "went away" not in out, out
        result["ok"] = True
    except AssertionError as e:
        result["error"] = str(e).splitlines()[0][:300]
        raise
    finally:
        result.setdefault("seconds", round(time.monotonic() - started, 1))
        record(**result)
