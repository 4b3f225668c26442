# shellcheck shell=bash
# FLOps' FL actors as containerd tasks, as the FLOps manager starts them on a node (sourced, from
# the repository root, by scripts/flops-e2e.sh and bench/start.sh). The caller sets SOCK (the
# containerd socket), NS (its namespace), PY (the rig's Python env, for the data server) and
# the arrays PIDS and TASKS, which collect what its cleanup stops (stop_fl); and NODE=lazy to
# run the FL actors on the rig's lazy node (node_task, node_pull below).

# fl_flavor FLAVOR — the fixture (FIXTURE), the repo's name (NAME), the data server's dataset
# (DATASET) and the learners' data tags (TAGS) of an ML model flavor; ROUNDS: the e2e flow's.
# shellcheck disable=SC2034 # the caller's variables
fl_flavor() {
  case $1 in
    sklearn) FIXTURE=sklearn-conda NAME=sklearn-model DATASET=glyphs TAGS=(images-a images-b) ROUNDS=3 ;;
    keras | pytorch) FIXTURE=cifar10-$1 NAME=cifar10-$1 DATASET=cifar10 TAGS=(cifar10-a cifar10-b) ROUNDS=1 ;;
    *) echo "FLAVOR=$1: one of sklearn, keras, pytorch" >&2; return 2 ;;
  esac
}

ctr_() { ctr -a "$SOCK" -n "$NS" "$@"; }
# ctr run needs a private mount namespace without the hybrid cgroup mount on these machines.
task() { unshare -m --propagation private sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"' sh ctr -a "$SOCK" -n "$NS" run --rm --net-host "$@"; }

# The node the FL actors and the model server run on: $SOCK's, or with NODE=lazy the rig's lazy
# node (scripts/rig.sh lazy): images pulled lazily with ctr-remote rpull, their eStargz layers
# mounted by the stargz snapshotter and fetched as the tasks read them.
LAZY_SOCK=/run/flops-rig/lazy/containerd.sock
node_sock() { if [ "${NODE:-plain}" = lazy ]; then echo "$LAZY_SOCK"; else echo "$SOCK"; fi; }
node_ctr_() { ctr -a "$(node_sock)" -n "$NS" "$@"; }
node_pull() { # IMAGE
  if [ "${NODE:-plain}" = lazy ]; then
    ctr-remote -a "$LAZY_SOCK" -n "$NS" images rpull --plain-http "$1" >/dev/null
  else
    ctr_ images pull --plain-http "$1" >/dev/null
  fi
}
node_task() {
  local snapshotter=()
  [ "${NODE:-plain}" = lazy ] && snapshotter=(--snapshotter stargz)
  unshare -m --propagation private sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"' sh \
    ctr -a "$(node_sock)" -n "$NS" run --rm --net-host "${snapshotter[@]}" "$@"
}

# start_data_server DATASET LOG — the node's ML data server (Arrow Flight, the runtimes' test
# server) on a free port of 127.0.0.1, in the background: DATA_PORT. It makes its partitions
# first; wait_data_server LOG waits until it serves (60 s at most).
start_data_server() {
  DATA_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$PY" base-layers/fl-learner/tests/flight_server.py "127.0.0.1:$DATA_PORT" --dataset "$1" >"$2" 2>&1 &
  PIDS+=("$!")
}
wait_data_server() {
  for _ in $(seq 1 600); do grep -q "serving on" "$1" 2>/dev/null && break; sleep 0.1; done
  grep -q "serving on" "$1" || { echo "the data server did not start" >&2; cat "$1" >&2; return 1; }
}

# lock_8080 — waits for the rig's lock on 127.0.0.1:8080 (flock on /run/flops-rig/port-8080.lock:
# the aggregator and the model server listen there, host network) and holds it until
# unlock_8080 or the shell's exit. Scripts that run tasks on 8080 take it (scripts/flops-e2e.sh,
# bench/start.sh); the Rust tests do not (they only wait for the port to be free).
lock_8080() {
  mkdir -p /run/flops-rig
  exec {LOCK_8080}>/run/flops-rig/port-8080.lock
  flock "$LOCK_8080"
}
unlock_8080() { exec {LOCK_8080}>&-; }

# aggregator_task IMAGE ID LOG PROJECT TRACKING_URI ROUNDS LEARNERS — the classic aggregator
# (Flower server on 127.0.0.1:8080, host network), in the background: AGG_PID.
aggregator_task() {
  TASKS+=("$2")
  node_task "$1" "$2" python main.py "$4" 127.0.0.1 127.0.0.1 "$5" CLASSIC_AGGREGATOR \
    "$6" "$7" "$7" "$7" >"$3" 2>&1 &
  AGG_PID=$!
  PIDS+=("$AGG_PID")
}
# learner_task IMAGE ID LOG PROJECT DATA_TAG — a learner of the aggregator on 127.0.0.1:8080
# reading DATA_TAG from the data server on DATA_PORT; it ends after one training session.
learner_task() {
  TASKS+=("$2")
  node_task --env ML_DATA_SERVER_HOST=127.0.0.1 --env "ML_DATA_SERVER_PORT=$DATA_PORT" --env FLOPS_LEARNER_MAX_SESSIONS=1 \
    "$1" "$2" python main.py "$4" 127.0.0.1 127.0.0.1 127.0.0.1 "$5" >"$3" 2>&1 &
  PIDS+=("$!")
}

# stop_fl — kills every task and background process started so far and removes the tasks'
# containers (`ctr run --rm` removes its container only if its ctr outlived the task).
stop_fl() {
  local t p
  for t in "${TASKS[@]}"; do
    ctr_ tasks kill -s KILL "$t" >/dev/null 2>&1 || true
    node_ctr_ tasks kill -s KILL "$t" >/dev/null 2>&1 || true
  done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for t in "${TASKS[@]}"; do
    ctr_ containers rm "$t" >/dev/null 2>&1 || true
    node_ctr_ containers rm "$t" >/dev/null 2>&1 || true
  done
}
