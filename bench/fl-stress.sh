#!/usr/bin/env bash
# Start races of the FL runtimes, as FLOps deploys a project: RUNS (default 20) whole classic
# projects in a row (aggregator: 3 rounds, 2 learners required; 2 learners) for each start order
# — the aggregator and both learners in the same instant, the learners 10 s before the
# aggregator, the aggregator 10 s before the learners — as real processes: the runtimes' pytest
# stress test (base-layers/fl-aggregator/tests/test_stress.py, which CI runs a few times), with
# the rig's mosquitto and MLflow server. A run passes with `success` and every round sampling
# exactly the two learners, none failing. For each Python env of ENVS (default: both ends of the
# runtimes' requirement ranges). Writes bench/out/fl-stress-<date>.md (runs, failures, times);
# exits 1 if any run failed. Run after scripts/rig.sh all (no cargo, no root needed).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-20}
ENVS=${ENVS:-pyenv pyenv-lowest}
OUT=bench/out/fl-stress-$(date -u +%F).md
# Raw results (one JSON line per run, pytest's output) stay in $RAW (default: a new temporary
# dir), kept for a look at failures; RAW=<that dir> resumes an interrupted bench (runs already
# recorded are not run again). One pytest call per run: a run's result survives what follows.
RAW=${RAW:-$(mktemp -d -t fl-stress.XXXXXX)}
mkdir -p "$RAW"
echo "[fl-stress] raw results in $RAW" >&2
for env in $ENVS; do
  py=/var/lib/flops-rig/$env/bin/python
  [ -x "$py" ] || { echo "$py is missing: run scripts/rig.sh all" >&2; exit 1; }
  "$py" -c 'import importlib.metadata as m; print(m.version("flwr"))' >"$RAW/$env.flwr"
  echo "[fl-stress] $env (flwr $(cat "$RAW/$env.flwr")): $RUNS run(s) of each start order" >&2
  for i in $(seq 1 "$RUNS"); do
    for order in together learners-first aggregator-first; do
      grep -qF "\"order\": \"$order\", \"run\": $i," "$RAW/$env.jsonl" 2>/dev/null && continue
      FLOPS_STRESS_RUNS=$i FLOPS_STRESS_REPORT=$RAW/$env.jsonl "$py" -m pytest -q -p no:cacheprovider \
        "base-layers/fl-aggregator/tests/test_stress.py::test_start_race[$i-$order]" >>"$RAW/$env.log" 2>&1 || true
      tail -n 1 "$RAW/$env.jsonl" | cut -c1-160 >&2
    done
  done
done
python3 - "$RAW" "$OUT" "$RUNS" $ENVS <<'PY'
import json, os, platform, statistics, sys, time
tmp, out, runs, envs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
orders = ["together", "learners-first", "aggregator-first"]
what = {"together": "all three in the same instant", "learners-first": "learners 10 s before the aggregator",
        "aggregator-first": "aggregator 10 s before the learners"}
mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")) / 2**20
osname = next((l.split("=", 1)[1].strip().strip('"') for l in open("/etc/os-release") if l.startswith("PRETTY_NAME")), "?")
lines = [f"## FL start-race stress — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
         f"Machine: {os.cpu_count()} cores, {mem:.0f} GiB, {osname}, {platform.release()}. `bench/fl-stress.sh`, "
         f"RUNS={runs}: whole classic FLOps projects (aggregator: 3 rounds, min 2 learners; 2 learners, real "
         "processes, the rig's mosquitto and MLflow server) per start order. A run passes with `success` and "
         "every round sampling exactly the two learners, none failing (the `rounds` counts of `success`). "
         "Seconds: from the first process start to the aggregator's exit after `success` (the 10 s head start included).", "",
         "| env (flwr) | start order | runs | failures | median s | min s | max s |", "|---|---|---|---|---|---|---|"]
failures, total_fail, pytest = [], 0, []
for env in envs:
    flwr = open(f"{tmp}/{env}.flwr").read().strip()
    path = f"{tmp}/{env}.jsonl"
    entries = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
    for order in orders:
        mine = [e for e in entries if e["order"] == order]
        bad = [e for e in mine if not e["ok"]]
        failed = len(bad) + max(0, runs - len(mine))  # a run that never reported failed too
        total_fail += failed
        secs = [e["seconds"] for e in mine if e["ok"]] or [0]
        lines.append(f"| {env} ({flwr}) | {what[order]} | {len(mine)} | {failed} | "
                     f"{statistics.median(secs):.1f} | {min(secs):.1f} | {max(secs):.1f} |")
        failures += [f"- {env}, {order}, run {e['run']}: {e['error']}" for e in bad]
    log = open(f"{tmp}/{env}.log").read()
    passed, failed = log.count(" passed in "), log.count(" failed")
    busy = sum(e["seconds"] for e in entries)
    pytest.append(f"- {env}: {passed} pytest call(s) passed, {failed} failed; "
                  f"{busy / 60:.0f} min of runs")
lines += ["", "pytest (one call per run):", *pytest, "", "Failures: none." if not total_fail else "Failures:",
          *failures]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(1 if total_fail else 0)
PY
