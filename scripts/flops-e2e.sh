#!/usr/bin/env bash
# The whole FLOps flow from this builder's images, as the FLOps manager drives it, on the local
# rig (as root, after scripts/rig.sh all):
#   1. the builder's own image (self-packaged) runs as an unprivileged containerd task with the
#      manager's command line: `python3 main.py <registry> <project> <mqtt> <observer>
#      --supported_platforms=… fl_actors <repo_url> sklearn` → learner + aggregator images;
#   2. classic FL from those images (containerd tasks, the manager's command lines): one
#      aggregator (3 rounds, 2 learners) on FLOps-shaped image data; its MQTT `success` gives
#      the run_id of the best model in MLflow (its `failed` stops the flow with its error);
#   3. the builder task again: `… trained_model <customer> <tracking_uri> <run_id>`;
#   4. the trained-model image served as a task: GET /ping, one POST /invocations.
# Prints the time of each stage. Fails (non-zero) at the first stage that does not work.
#   BIN   the builder binary to package (default: a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (containerd tasks, chroot)" >&2; exit 1; }
REG=127.0.0.1:5000
TRACKING=http://127.0.0.1:5080
SOCK=/run/flops-rig/containerd.sock
NS=flops-e2e
PY=/var/lib/flops-rig/pyenv/bin/python
for need in "$SOCK" "$PY"; do
  [ -e "$need" ] || { echo "$need is missing: run scripts/rig.sh all" >&2; exit 1; }
done
curl -fsS "$TRACKING/health" >/dev/null || { echo "no MLflow tracking server at $TRACKING: run scripts/rig.sh services" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -q
  BIN=$PWD/target/release/flops-image-builder
fi
W=$(mktemp -d)
PIDS=()
TASKS=()
ctr_() { ctr -a "$SOCK" -n "$NS" "$@"; }
# ctr run needs a private mount namespace without the hybrid cgroup mount on these machines.
task() { unshare -m --propagation private sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"' sh ctr -a "$SOCK" -n "$NS" run --rm --net-host "$@"; }
cleanup() {
  for t in "${TASKS[@]}"; do ctr_ tasks kill -s KILL "$t" >/dev/null 2>&1 || true; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
STAGES=()
stage() { STAGES+=("$(printf '%-52s %6.1f s' "$1" "$2")"); printf '[e2e] %s: %.1f s\n' "$1" "$2" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{print b-a}'; }

RUN=e2e$(date +%s)
PROJECT=$RUN
# The ML repo, as a git repository served over smart HTTP on 127.0.0.1 (as GitHub would be).
mkdir -p "$W/src" "$W/served"
cp -a fixtures/sklearn-conda "$W/src/sklearn-model"
git -C "$W/src/sklearn-model" init -q -b main
git -C "$W/src/sklearn-model" add -A
git -C "$W/src/sklearn-model" -c user.name=e2e -c user.email=e2e@example.com commit -qm "model $RUN"
SHA=$(git -C "$W/src/sklearn-model" rev-parse HEAD)
git clone -q --bare "$W/src/sklearn-model" "$W/served/sklearn-model.git"
python3 tests/support/git_http.py "$W/served" "$W/git.port" >"$W/git.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$W/git.port" ] && break; sleep 0.1; done
REPO_URL=http://127.0.0.1:$(cat "$W/git.port")/sklearn-model.git

t=$(now)
BUILDER=$(BIN=$BIN scripts/self-package.sh "$REG/flops/image-builder:$RUN" | tail -1)
BUILDER=${BUILDER%@*}
ctr_ images pull --plain-http "$BUILDER" >/dev/null
stage "builder image (self-packaged) pulled by containerd" "$(since "$t")"

builder_task() { # id, then the manager's arguments
  local id=$1; shift
  TASKS+=("$id")
  task --read-only --mount type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev:mode=1777 \
    --mount type=bind,src=/etc/ssl/certs,dst=/etc/ssl/certs,options=rbind:ro \
    "$BUILDER" "$id" python3 main.py "$@"
}

t=$(now)
mosquitto_sub -h 127.0.0.1 -p 9027 -q 1 -C 1 -W 900 -t flops_manager/fl_actors_image_builder/success >"$W/built.json" &
SUBPID=$!
sleep 0.5
builder_task "$RUN-fl-actors" "http://$REG" "$PROJECT" 127.0.0.1 127.0.0.1 \
  --supported_platforms=linux/amd64 fl_actors "$REPO_URL" sklearn >"$W/fl-actors.out" 2>"$W/fl-actors.err" \
  || { cat "$W/fl-actors.err" >&2; exit 1; }
wait "$SUBPID" || { echo "no fl_actors_image_builder/success on MQTT" >&2; exit 1; }
# A one-segment URL path (`/<name>.git`) names the owner `local`.
LEARNER=$REG/local/sklearn-model/learner:$SHA
AGGREGATOR=$REG/local/sklearn-model/aggregator:$SHA
grep -q "$AGGREGATOR@sha256:" "$W/fl-actors.out" || { echo "the aggregator image was not pushed" >&2; cat "$W/fl-actors.out" >&2; exit 1; }
stage "fl_actors plan: learner + aggregator images" "$(since "$t")"

t=$(now)
for image in "$LEARNER" "$AGGREGATOR"; do ctr_ images pull --plain-http "$image" >/dev/null; done
DATA_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PY" base-layers/fl-learner/tests/flight_server.py "127.0.0.1:$DATA_PORT" >"$W/data.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 600); do grep -q "serving on" "$W/data.log" && break; sleep 0.1; done
# The project ends in `success` or `failed`, whichever comes first: a failed project stops the
# flow at once with its error, not after waiting for a success that cannot come.
mosquitto_sub -h 127.0.0.1 -p 9027 -q 1 -v -W 900 -t flops_manager/aggregator/success \
  -t flops_manager/aggregator/failed >"$W/agg-mqtt.log" 2>&1 &
PIDS+=($!)
sleep 0.5
TASKS+=("$RUN-agg" "$RUN-l1" "$RUN-l2")
task "$AGGREGATOR" "$RUN-agg" python main.py "$PROJECT" 127.0.0.1 127.0.0.1 "$TRACKING" CLASSIC_AGGREGATOR 3 2 2 2 >"$W/agg.log" 2>&1 &
AGG_PID=$!
PIDS+=($AGG_PID)
for i in 1 2; do
  tags=images-a; [ $i = 2 ] && tags=images-b
  task --env ML_DATA_SERVER_HOST=127.0.0.1 --env "ML_DATA_SERVER_PORT=$DATA_PORT" --env FLOPS_LEARNER_MAX_SESSIONS=1 \
    "$LEARNER" "$RUN-l$i" python main.py "$PROJECT" 127.0.0.1 127.0.0.1 127.0.0.1 "$tags" >"$W/l$i.log" 2>&1 &
  PIDS+=($!)
done
# This project's aggregator/success payload (0), its aggregator/failed (1), or nothing yet (2).
project_outcome() {
  local topic payload
  while read -r topic payload; do
    [ "$(jq -r '.flops_project_id // empty' <<<"$payload" 2>/dev/null)" = "$PROJECT" ] || continue
    printf '%s\n' "$payload" >"$W/trained.json"
    case $topic in */success) return 0 ;; */failed) return 1 ;; esac
  done <"$W/agg-mqtt.log"
  return 2
}
outcome=2
for _ in $(seq 1 900); do
  project_outcome && outcome=0 || outcome=$?
  [ "$outcome" = 2 ] || break
  # An aggregator task that ended has published already (it waits for the broker's ack).
  if ! kill -0 "$AGG_PID" 2>/dev/null; then sleep 2; project_outcome && outcome=0 || outcome=$?; break; fi
  sleep 1
done
case $outcome in
  1) echo "aggregator/failed: $(jq -r .error_msg "$W/trained.json")" >&2 ;;
  2) echo "no aggregator/success or aggregator/failed on MQTT (the aggregator task $(kill -0 "$AGG_PID" 2>/dev/null && echo "still runs after 900 s" || echo ended))" >&2 ;;
esac
if [ "$outcome" != 0 ]; then tail -n 20 "$W/agg.log" "$W/l1.log" "$W/l2.log" >&2; exit 1; fi
RUN_ID=$(jq -r .run_id "$W/trained.json")
echo "[e2e] aggregator success: $(jq -c '{accuracy, loss, run_id, rounds}' "$W/trained.json")" >&2
stage "classic FL: 1 aggregator, 2 learners, 3 rounds" "$(since "$t")"

t=$(now)
mosquitto_sub -h 127.0.0.1 -p 9027 -q 1 -C 1 -W 900 -t flops_manager/trained_model_image_builder/success >"$W/served.json" &
SUBPID=$!
sleep 0.5
builder_task "$RUN-trained-model" "http://$REG" "$PROJECT" 127.0.0.1 127.0.0.1 \
  --supported_platforms=linux/amd64 trained_model e2e-customer "$TRACKING" "$RUN_ID" >"$W/model.out" 2>"$W/model.err" \
  || { cat "$W/model.err" >&2; exit 1; }
wait "$SUBPID" || { echo "no trained_model_image_builder/success on MQTT" >&2; exit 1; }
MODEL=$REG/e2e-customer/trained_model:$RUN_ID
# Its dependency layers that the FL images have too (numpy, scipy, scikit-learn, …) come from
# the shared pool (or, on a rig that ran this before, the repository's earlier images): none
# of them is built or uploaded again.
SHARED=$(jq -r '[.dependency_layers[] | select(.source == "pool" or .source == "registry") | .digest] | unique | .[]' "$W/served.json")
UPLOADED=$(jq -r '[.image.platforms[].layers[] | select(.status == "uploaded") | .digest] | .[]' "$W/served.json")
echo "[e2e] trained-model image: $(echo "$SHARED" | grep -c . || true) dependency layers shared with earlier images (pool or repository), $(echo "$UPLOADED" | grep -c . || true) blobs uploaded" >&2
[ -n "$SHARED" ] || { echo "no dependency layer was shared with the FL images" >&2; exit 1; }
if [ -n "$UPLOADED" ] && echo "$SHARED" | grep -qxF -f <(echo "$UPLOADED"); then
  echo "a dependency layer the FL images have was uploaded again" >&2; exit 1
fi
stage "trained_model plan: the best model's image" "$(since "$t")"

t=$(now)
ctr_ images pull --plain-http "$MODEL" >/dev/null
TASKS+=("$RUN-serve")
task "$MODEL" "$RUN-serve" >"$W/serve.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 240); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/ping)" = 200 ] && break
  sleep 0.5
done
[ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/ping)" = 200 ] || { echo "the model server never answered /ping" >&2; tail -20 "$W/serve.log" >&2; exit 1; }
ROW=$(python3 -c 'print([1.0 if 4 <= i % 12 < 8 else 0.0 for i in range(144)])')
PREDICTION=$(curl -fsS -X POST http://127.0.0.1:8080/invocations -H 'Content-Type: application/json' \
  -d "{\"inputs\": [$ROW]}")
echo "[e2e] /invocations: $PREDICTION" >&2
echo "$PREDICTION" | jq -e '.predictions | length == 1' >/dev/null || { echo "no prediction" >&2; exit 1; }
stage "trained model served: /ping and one prediction" "$(since "$t")"

echo
echo "FLOps flow done (project $PROJECT):"
printf '  %s\n' "${STAGES[@]}"
echo "  images: $LEARNER, $AGGREGATOR, $MODEL"
