#!/usr/bin/env bash
# The whole FLOps flow from this builder's images, as the FLOps manager drives it, on the local
# rig (as root, after scripts/rig.sh all), for one ML model flavor:
#   1. the builder's own image (self-packaged) runs as an unprivileged containerd task with the
#      manager's command line: `python3 main.py <registry> <project> <mqtt> <observer>
#      --supported_platforms=… fl_actors <repo_url> <flavor>` → learner + aggregator images;
#   2. classic FL from those images (containerd tasks, the manager's command lines): one
#      aggregator and 2 learners on FLOps-shaped image data; its MQTT `success` gives the run_id
#      of the best model in MLflow (its `failed` stops the flow with its error);
#   3. the builder task again: `… trained_model <customer> <tracking_uri> <run_id>`;
#   4. the trained-model image served as a task: GET /ping, POST /invocations with one input of
#      the trained shape as plain JSON floats in each form MLflow documents (`inputs`,
#      `instances`, and `dataframe_split` for sklearn); the CNNs must answer 10 class scores.
#      Before it, the logged model's MLmodel must have the learners' input as its signature.
# Prints the time of each stage. Fails (non-zero) at the first stage that does not work.
#   FLAVOR  sklearn (default): fixtures/sklearn-conda, 12x12 grayscale glyphs, 3 rounds;
#           keras: fixtures/cifar10-keras, pytorch: fixtures/cifar10-pytorch — a tiny CNN on
#           CIFAR-10-shaped data (32x32 RGB, 10 classes), 1 round (their images are large: the
#           round proves the flow, more rounds only cost time)
#   COMPRESSION  gzip (default), estargz or zstd: the images' layers (FLOPS_COMPRESSION)
#   NODE    plain (default) or lazy: the containerd the FL actors and the model server run on
#           (lazy: the rig's lazy node, `scripts/rig.sh lazy`; images pulled with ctr-remote rpull)
#   BIN     the builder binary to package (default: a release build)
#   E2E_LOGS  a directory to keep every task's log in (default: none; a failure prints their ends)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (containerd tasks, chroot)" >&2; exit 1; }
REG=127.0.0.1:5000
TRACKING=http://127.0.0.1:5080
SOCK=/run/flops-rig/containerd.sock
NS=flops-e2e
PY=/var/lib/flops-rig/pyenv/bin/python
FLAVOR=${FLAVOR:-sklearn}
# The images' layer compression (the builder task's FLOPS_COMPRESSION), and the node the FL
# actors and the model server run on: plain (overlayfs) or lazy (the rig's stargz snapshotter;
# it needs COMPRESSION=estargz to pull lazily).
COMPRESSION=${COMPRESSION:-gzip}
NODE=${NODE:-plain}
# The actors as containerd tasks, and per flavor: the fixture, the data server's dataset and the
# learners' data tags, the rounds.
. scripts/fl-tasks.sh
fl_flavor "$FLAVOR" || exit 2
LEARNERS=${#TAGS[@]}
[ "$NODE" = lazy ] && [ ! -e "$LAZY_SOCK" ] && { echo "no lazy node on $LAZY_SOCK: run scripts/rig.sh lazy" >&2; exit 1; }
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
cleanup() {
  stop_fl
  if [ -n "${E2E_LOGS:-}" ]; then mkdir -p "$E2E_LOGS" && cp "$W"/*.log "$W"/*.out "$W"/*.err "$W"/*.json "$E2E_LOGS"/ 2>/dev/null || true; fi
  rm -rf "$W"
}
trap cleanup EXIT
STAGES=()
stage() { STAGES+=("$(printf '%-52s %6.1f s' "$1" "$2")"); printf '[e2e] %s: %.1f s\n' "$1" "$2" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{print b-a}'; }
# The aggregator and the model server listen on 8080 (host network), as on a FLOps node; the
# Rust tests use it too. Wait for it rather than fail on a neighbour's leftover.
wait_8080_free() { # $1: who needs it
  local t
  t=$(now)
  for _ in $(seq 1 120); do
    if ! (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then
      awk -v a="$t" -v b="$(now)" 'BEGIN { exit !(b - a > 1) }' && stage "waiting for 127.0.0.1:8080 ($1)" "$(since "$t")"
      return 0
    fi
    sleep 1
  done
  echo "127.0.0.1:8080 is still taken after 120 s (needed by $1)" >&2
  exit 1
}

RUN=e2e-$FLAVOR-$(date +%s)
PROJECT=$RUN
echo "[e2e] flavor $FLAVOR: fixtures/$FIXTURE, $ROUNDS round(s), $LEARNERS learners, dataset $DATASET; $COMPRESSION layers, $NODE node" >&2
# The ML repo, as a git repository served over smart HTTP on 127.0.0.1 (as GitHub would be).
mkdir -p "$W/src" "$W/served"
cp -a "fixtures/$FIXTURE" "$W/src/$NAME"
git -C "$W/src/$NAME" init -q -b main
git -C "$W/src/$NAME" add -A
git -C "$W/src/$NAME" -c user.name=e2e -c user.email=e2e@example.com commit -qm "model $RUN"
SHA=$(git -C "$W/src/$NAME" rev-parse HEAD)
git clone -q --bare "$W/src/$NAME" "$W/served/$NAME.git"
python3 tests/support/git_http.py "$W/served" "$W/git.port" >"$W/git.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$W/git.port" ] && break; sleep 0.1; done
REPO_URL=http://127.0.0.1:$(cat "$W/git.port")/$NAME.git

t=$(now)
BUILDER=$(BIN=$BIN scripts/self-package.sh "$REG/flops/image-builder:$RUN" | tail -1)
BUILDER=${BUILDER%@*}
ctr_ images pull --plain-http "$BUILDER" >/dev/null
stage "builder image (self-packaged) pulled by containerd" "$(since "$t")"

builder_task() { # id, then the manager's arguments
  local id=$1; shift
  TASKS+=("$id")
  task --read-only --mount type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev:mode=1777 \
    --env "FLOPS_COMPRESSION=$COMPRESSION" \
    --mount type=bind,src=/etc/ssl/certs,dst=/etc/ssl/certs,options=rbind:ro \
    "$BUILDER" "$id" python3 main.py "$@"
}
# MQTT: every message of some topics, as `topic payload` lines, into a file (in the background).
subscribe() { # file, topics...
  local out=$1 topic args=()
  shift
  for topic in "$@"; do args+=(-t "$topic"); done
  mosquitto_sub -h 127.0.0.1 -p 9027 -q 1 -v -W 900 "${args[@]}" >"$out" 2>&1 &
  PIDS+=($!)
  sleep 0.5
}
# This project's first message in such a file: its payload into $2, its topic on stdout. Other
# projects' messages are skipped: the Rust tests publish on the same topics.
project_message() { # file, payload file
  local topic payload
  while read -r topic payload; do
    [ "$(jq -r '.flops_project_id // empty' <<<"$payload" 2>/dev/null)" = "$PROJECT" ] || continue
    printf '%s\n' "$payload" >"$2"
    echo "$topic"
    return 0
  done <"$1"
  return 1
}
await_project_message() { # file, payload file, seconds
  for _ in $(seq 1 "$3"); do
    project_message "$1" "$2" >/dev/null && return 0
    sleep 1
  done
  return 1
}

t=$(now)
subscribe "$W/built.mqtt" flops_manager/fl_actors_image_builder/success
builder_task "$RUN-fl-actors" "http://$REG" "$PROJECT" 127.0.0.1 127.0.0.1 \
  --supported_platforms=linux/amd64 fl_actors "$REPO_URL" "$FLAVOR" >"$W/fl-actors.out" 2>"$W/fl-actors.err" \
  || { cat "$W/fl-actors.err" >&2; exit 1; }
await_project_message "$W/built.mqtt" "$W/built.json" 30 || { echo "no fl_actors_image_builder/success on MQTT" >&2; exit 1; }
# A one-segment URL path (`/<name>.git`) names the owner `local`.
LEARNER=$REG/local/$NAME/learner:$SHA
AGGREGATOR=$REG/local/$NAME/aggregator:$SHA
grep -q "$AGGREGATOR@sha256:" "$W/fl-actors.out" || { echo "the aggregator image was not pushed" >&2; cat "$W/fl-actors.out" >&2; exit 1; }
stage "fl_actors plan: learner + aggregator images" "$(since "$t")"

# The node's ML data server, started now: it makes its partitions while the images are pulled.
start_data_server "$DATASET" "$W/data.log"

# What a node pays before the first round: a pull that unpacks (the learner; the aggregator
# shares its dependency layers), timed apart from the round.
t=$(now)
for image in "$LEARNER" "$AGGREGATOR"; do node_pull "$image"; done
stage "containerd pull: learner + aggregator" "$(since "$t")"

wait_data_server "$W/data.log"
# 8080 is shared with bench/start.sh's tasks: the rig's lock on it, held to the end.
lock_8080
wait_8080_free "the aggregator"
t=$(now)
# The project ends in `success` or `failed`, whichever comes first: a failed project stops the
# flow at once with its error, not after waiting for a success that cannot come.
subscribe "$W/agg-mqtt.log" flops_manager/aggregator/success flops_manager/aggregator/failed
aggregator_task "$AGGREGATOR" "$RUN-agg" "$W/agg.log" "$PROJECT" "$TRACKING" "$ROUNDS" "$LEARNERS"
for i in $(seq 1 "$LEARNERS"); do
  learner_task "$LEARNER" "$RUN-l$i" "$W/l$i.log" "$PROJECT" "${TAGS[i - 1]}"
done
# This project's aggregator/success payload (0), its aggregator/failed (1), or nothing yet (2).
project_outcome() {
  local topic
  topic=$(project_message "$W/agg-mqtt.log" "$W/trained.json") || return 2
  case $topic in */success) return 0 ;; *) return 1 ;; esac
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
if [ "$outcome" != 0 ]; then tail -n 20 "$W/agg.log" "$W"/l*.log >&2; exit 1; fi
RUN_ID=$(jq -r .run_id "$W/trained.json")
echo "[e2e] aggregator success: $(jq -c '{accuracy, loss, run_id, rounds}' "$W/trained.json")" >&2
stage "classic FL: 1 aggregator, $LEARNERS learners, $ROUNDS round(s)" "$(since "$t")"
# The logged model's signature is the learners' input: their data's shape (batch free) and
# dtype as the repo's code fed it to the model (sklearn: flattened 12x12 glyphs as float64;
# keras: HWC float32; pytorch: CHW float32), told by the learners without any data value.
case $FLAVOR in
  sklearn) WANT_SIGNATURE='{"dtype":"float64","shape":[-1,144]}' ;;
  keras) WANT_SIGNATURE='{"dtype":"float32","shape":[-1,32,32,3]}' ;;
  pytorch) WANT_SIGNATURE='{"dtype":"float32","shape":[-1,3,32,32]}' ;;
esac
"$PY" - "$TRACKING" "$RUN_ID" >"$W/signature.json" <<'EOF'
import json
import sys

import mlflow
import yaml

mlflow.set_tracking_uri(sys.argv[1])  # mlflow-artifacts: URIs resolve against it
path = mlflow.artifacts.download_artifacts(
    run_id=sys.argv[2], artifact_path="logged_model_artifact/MLmodel", tracking_uri=sys.argv[1]
)
signature = yaml.safe_load(open(path)).get("signature") or {}
print(json.dumps([i.get("tensor-spec", i) for i in json.loads(signature.get("inputs") or "[]")]))
EOF
jq -e --argjson want "$WANT_SIGNATURE" '. == [$want]' "$W/signature.json" >/dev/null \
  || { echo "the logged model's signature inputs are $(cat "$W/signature.json"), not [$WANT_SIGNATURE]" >&2; exit 1; }
echo "[e2e] logged model's signature: $(cat "$W/signature.json")" >&2
# The aggregator ends once it has published, and frees 8080 for the model server.
for _ in $(seq 1 60); do kill -0 "$AGG_PID" 2>/dev/null || break; sleep 1; done
node_ctr_ tasks kill -s KILL "$RUN-agg" >/dev/null 2>&1 || true

t=$(now)
subscribe "$W/served.mqtt" flops_manager/trained_model_image_builder/success
builder_task "$RUN-trained-model" "http://$REG" "$PROJECT" 127.0.0.1 127.0.0.1 \
  --supported_platforms=linux/amd64 trained_model e2e-customer "$TRACKING" "$RUN_ID" >"$W/model.out" 2>"$W/model.err" \
  || { cat "$W/model.err" >&2; exit 1; }
await_project_message "$W/served.mqtt" "$W/served.json" 30 || { echo "no trained_model_image_builder/success on MQTT" >&2; exit 1; }
MODEL=$REG/e2e-customer/trained_model:$RUN_ID
# Its dependency layers that the FL images have too (numpy, scipy, scikit-learn, …) come from
# the shared pool (or, on a rig that ran this before, the repository's earlier images): none
# of them is built or uploaded again.
SHARED=$(jq -r '[.dependency_layers[] | select(.source == "pool" or .source == "registry") | .digest] | unique | .[]' "$W/served.json")
UPLOADED=$(jq -r '[.image.platforms[].layers[] | select(.status == "uploaded") | .digest] | .[]' "$W/served.json")
UPLOADED_MB=$(jq '[.image.platforms[].layers[] | select(.status == "uploaded") | .size] | add // 0 | . / 1e6 | floor' "$W/served.json")
echo "[e2e] trained-model image: $(echo "$SHARED" | grep -c . || true) dependency layers shared with earlier images (pool or repository), $(echo "$UPLOADED" | grep -c . || true) blobs uploaded ($UPLOADED_MB MB)" >&2
[ -n "$SHARED" ] || { echo "no dependency layer was shared with the FL images" >&2; exit 1; }
if [ -n "$UPLOADED" ] && echo "$SHARED" | grep -qxF -f <(echo "$UPLOADED"); then
  echo "a dependency layer the FL images have was uploaded again" >&2; exit 1
fi
stage "trained_model plan: the best model's image" "$(since "$t")"

t=$(now)
node_pull "$MODEL"
stage "containerd pull: trained model" "$(since "$t")"

wait_8080_free "the model server"
t=$(now)
TASKS+=("$RUN-serve")
node_task "$MODEL" "$RUN-serve" >"$W/serve.log" 2>&1 &
SERVE_PID=$!
PIDS+=($SERVE_PID)
# 8080 must be answered by this task, not by a neighbour's server (the Rust tests serve models
# on 8080 too): the listening socket's process must be one of the task's.
ours_on_8080() {
  local owners
  owners=$(ss -ltnpH 'sport = :8080' | grep -o 'pid=[0-9]*' | cut -d= -f2)
  [ -n "$owners" ] && node_ctr_ tasks ps "$RUN-serve" 2>/dev/null | awk 'NR > 1 { print $1 }' | grep -qxF -f <(echo "$owners")
}
served() { [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/ping)" = 200 ] && ours_on_8080; }
# MLflow's server imports the flavor (TensorFlow, torch) before it answers: up to 5 min.
for _ in $(seq 1 600); do
  served && break
  kill -0 "$SERVE_PID" 2>/dev/null || break
  sleep 0.5
done
served || { echo "the model server never answered /ping" >&2; tail -20 "$W/serve.log" >&2; exit 1; }
# One input of the shape the model was trained on, as plain JSON floats (what MLflow's docs
# show; the scoring server casts them to the signature's dtype): sklearn, a flattened 12x12 glyph
# (a vertical bar); the CNNs, one picture of the data server's CIFAR-shaped class 3,
# preprocessed as their DataManager does (keras: HWC in [0, 1]; pytorch: CHW normalized to
# [-1, 1]). Asked in every form MLflow documents for the model: `inputs` and `instances`
# (tensors), and `dataframe_split` for the tabular sklearn model.
LABEL=3
"$PY" - "$FLAVOR" "$LABEL" >"$W/input.json" <<'EOF'
import json
import sys

import numpy as np

sys.path.insert(0, "base-layers/fl-learner/tests")
from flight_server import cifar_picture  # noqa: E402

flavor, label = sys.argv[1], int(sys.argv[2])
if flavor == "sklearn":
    x = np.array([1.0 if 4 <= i % 12 < 8 else 0.0 for i in range(144)])
else:
    x = cifar_picture(label, np.random.default_rng(0)).astype(np.float32) / 255.0
    if flavor == "pytorch":
        x = ((x - 0.5) / 0.5).transpose(2, 0, 1)
print(json.dumps([np.round(x, 4).tolist()]))
EOF
FORMS=(inputs instances)
[ "$FLAVOR" = sklearn ] && FORMS+=(dataframe_split)
for form in "${FORMS[@]}"; do
  case $form in
    dataframe_split) jq -c '{dataframe_split: {columns: [range(.[0] | length) | tostring], data: .}}' "$W/input.json" ;;
    *) jq -c --arg form "$form" '{($form): .}' "$W/input.json" ;;
  esac >"$W/request-$form.json"
  PREDICTION=$(curl -sS -X POST http://127.0.0.1:8080/invocations -H 'Content-Type: application/json' \
    --data-binary @"$W/request-$form.json" -w '\n%{http_code}') || { echo "/invocations ($form) failed" >&2; tail -30 "$W/serve.log" >&2; exit 1; }
  CODE=$(tail -1 <<<"$PREDICTION")
  PREDICTION=$(sed '$d' <<<"$PREDICTION")
  [ "$CODE" = 200 ] || { echo "/invocations ($form) answered $CODE: $PREDICTION" >&2; tail -30 "$W/serve.log" >&2; exit 1; }
  echo "[e2e] /invocations ($form): $PREDICTION" >&2
  echo "$PREDICTION" | jq -e '.predictions | length == 1' >/dev/null || { echo "no prediction ($form)" >&2; exit 1; }
  if [ "$FLAVOR" != sklearn ]; then
    # Class scores, one per CIFAR-10 class: a row of 10 numbers (or a record of 10 columns, as
    # a DataFrame answer would be).
    SCORES=$(echo "$PREDICTION" | jq -c '.predictions[0] | if type == "object" then [.[]] else . end')
    echo "$SCORES" | jq -e 'type == "array" and length == 10 and all(.[]; type == "number")' >/dev/null \
      || { echo "the answer is not 10 class scores: $SCORES" >&2; exit 1; }
    echo "[e2e] class scores for a picture of class $LABEL: the highest is class $(echo "$SCORES" | jq 'index(max)')" >&2
  fi
done
stage "trained model served: /ping and ${#FORMS[@]} request forms" "$(since "$t")"

echo
echo "FLOps flow done (flavor $FLAVOR, project $PROJECT):"
printf '  %s\n' "${STAGES[@]}"
echo "  images: $LEARNER, $AGGREGATOR, $MODEL"
