#!/usr/bin/env bash
# Benchmark (not a test): the time from the FLOps manager's `fl_actors` request to the END OF
# ROUND 1 of federated training on a FRESH node, split into phases, per workload:
#   1. build + push: ours `build --aggregator --model-flavor F` (what `fl_actors` runs), cold
#      (empty cache dir, a fresh registry holding only the base); upstream: buildah builds the
#      base with the dependencies, the learner and the aggregator FROM it, pushes all three;
#   2. pull: a fresh containerd (its own empty root, state and socket, started for the run and
#      deleted after it) fetches the learner and the aggregator image (`ctr content fetch`),
#      as a node running a learner and the aggregator would;
#   3. unpack: `ctr images pull` of both again (every blob is there: it only unpacks);
#   4. task start → the runtime's first log line ("runtime started"), learner;
#   5. → the learner's ML imports done ("model code imported");
#   6. → its data loaded from the node's Flight data server ("data loaded for tags");
#   7. join: → the aggregator begins round 1 (the learners import Flower and connect; the
#      aggregator must be up: MLflow and Flower imported, the server listening);
#   8. round 1: the aggregator's "round 1: training on" → "round 1: loss" (training + evaluation).
# Phases 4–6 follow the learner whose data came last (the one round 1 waited for). The aggregator
# and 2 learners run as tasks of the fresh containerd with scripts/flops-e2e.sh's command lines
# (scripts/fl-tasks.sh), the aggregator logging to the rig's MLflow server, 1 round.
# Anchors in the same run: upstream FLOps' chain (above) on a new fresh containerd, and a
# per-phase floor: pull = the images' bytes over the link speed measured from the fresh registry
# (curl of the biggest blob); unpack = every layer decompressed on one core (gzip -dc / zstd -dc,
# from the node's content store in the page cache; writing the files is not in it: a second
# unpack floor in the notes writes them too, gzip -dc | tar -x layer after layer); task start
# and imports = Python's start and the same imports with a warm bytecode cache, in a chroot of
# the learner image's rootfs (`ctr images mount --rw`, each command run twice, the second
# taken); join = the learner's warm `import flwr`; data and round 1 = the fastest measured run
# (nothing lower to measure).
#   WORKLOADS  sklearn keras pytorch (default all three; any subset, each runs alone)
#   BIN        the builder (default: a release build; SKIP_BUILD=1 skips cargo)
#   OLD_BIN    optional: a second "ours" column set with another builder binary
#   OURS_ARGS, OLD_ARGS  more `build` flags for ours / the OLD_BIN run (e.g. OLD_BIN=$BIN
#              OLD_ARGS="--compression zstd" OLD_LABEL=zstd compares two policies of one builder)
#   OLD_LABEL  the second column's name (default old)
#   OLD_NODE   plain (default) or lazy: the second column's node is a fresh lazy one (a fresh stargz
#              snapshotter, scripts/lazy-node/main.go as the rig builds it, behind a fresh
#              containerd; images pulled with ctr-remote rpull, nothing unpacked), e.g.
#              OLD_BIN=$BIN OLD_ARGS="--compression estargz" OLD_LABEL=estargz-lazy OLD_NODE=lazy
#   LINK       loopback (default) or RATE:RTT, e.g. 100mbit:20ms: every node reaches its registry
#              through bench/link.py (that rate each way, half the RTT added each way), and the
#              report gives the bytes each node really fetched (a lazy node: what its tasks read)
#   SKIP_UPSTREAM=1  leaves buildah out (its columns say "—"); it is left out by itself, and said
#              so in the report, when the disk has less free space than its peak (NEED_UPSTREAM)
#   BUILDAH_DRIVER  buildah's storage driver (default overlay; vfs copies every layer)
#   OUT        the report's path (default bench/out/start-<date>.md, start-<workloads>-<date>.md
#              for a subset)
# Run as root after scripts/rig.sh. Everything it starts (registries, containerd, buildah
# storage) lives in a temp dir removed on exit; 127.0.0.1:8080 is held with the rig's lock
# (scripts/fl-tasks.sh lock_8080).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
PY=/var/lib/flops-rig/pyenv/bin/python
. scripts/fl-tasks.sh
WORKLOADS=${WORKLOADS:-sklearn keras pytorch}
for w in $WORKLOADS; do fl_flavor "$w" || exit 2; done
[ -z "${OLD_BIN:-}" ] || [ -x "$OLD_BIN" ] || { echo "OLD_BIN=$OLD_BIN is not an executable" >&2; exit 2; }
bench_setup
scripts/rig.sh bench-base >&2
TRACKING=http://127.0.0.1:5080
curl -fsS "$TRACKING/health" >/dev/null || { echo "no MLflow tracking server at $TRACKING" >&2; exit 1; }
NS=flops-start
PIDS=()
TASKS=()
SOCK=
NODE_PID=
NODE_DIR=
SGZ_PID=
LINK=${LINK:-loopback}
LINK_PID=
NODE_REG=
# buildah in its own storage under $T (deleted wholesale), its temporary files too (a commit
# spools the layer there), overlay unless BUILDAH_DRIVER says.
BUILDAH="env TMPDIR=$T/buildah/tmp buildah --root $T/buildah/root --runroot $T/buildah/run --storage-driver ${BUILDAH_DRIVER:-overlay}"
now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a - b}'; }
log() { printf '[start %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ---- the fresh node: a second containerd with empty root/state dirs and its own socket ----
start_node() { # NAME
  NODE_DIR=$T/node-$1
  SOCK=$NODE_DIR/containerd.sock
  mkdir -p "$NODE_DIR"
  # The rig's config (same plugins, default snapshotter: overlayfs) with this node's paths, and
  # debug logs: containerd's "diff applied" lines time every layer's unpack.
  sed -e "s#^root = .*#root = \"$NODE_DIR/root\"#" -e "s#^state = .*#state = \"$NODE_DIR/state\"#" \
    -e "s#/run/flops-rig/containerd.sock#$SOCK#g" -e 's#^\[debug\]#[debug]\n  level = "debug"#' \
    /var/lib/flops-rig/containerd.toml >"$NODE_DIR/config.toml"
  if grep -q flops-rig "$NODE_DIR/config.toml"; then
    echo "the node's config still names the rig's paths:" >&2; cat "$NODE_DIR/config.toml" >&2; exit 1
  fi
  containerd --config "$NODE_DIR/config.toml" >"$T/$1-containerd.log" 2>&1 </dev/null &
  NODE_PID=$!
  for _ in $(seq 1 100); do ctr -a "$SOCK" version >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "the fresh containerd did not start: $T/$1-containerd.log" >&2; tail "$T/$1-containerd.log" >&2; exit 1
}
# start_lazy_node NAME — the same, with a fresh stargz snapshotter as its proxy plugin (the
# rig's daemon binary, its own root, socket and config: the node's registry plain HTTP, no
# background fetch) and its tasks on the stargz snapshotter (NODE=lazy for scripts/fl-tasks.sh).
start_lazy_node() {
  local bin=/var/lib/flops-rig/bin/flops-stargz-grpc
  [ -x "$bin" ] || { echo "no $bin: run scripts/rig.sh lazy" >&2; exit 1; }
  NODE_DIR=$T/node-$1
  mkdir -p "$NODE_DIR/stargz"
  printf 'no_background_fetch = true\n[[resolver.host."%s".mirrors]]\n  host = "%s"\n  insecure = true\n' \
    "$NODE_REG" "$NODE_REG" >"$NODE_DIR/stargz.toml"
  "$bin" -address "$NODE_DIR/stargz.sock" -root "$NODE_DIR/stargz" -config "$NODE_DIR/stargz.toml" \
    >"$T/$1-stargz.log" 2>&1 </dev/null &
  SGZ_PID=$!
  for _ in $(seq 1 100); do [ -S "$NODE_DIR/stargz.sock" ] && break; sleep 0.1; done
  [ -S "$NODE_DIR/stargz.sock" ] || { echo "the fresh stargz snapshotter did not start: $T/$1-stargz.log" >&2; exit 1; }
  start_node "$1"
  # start_node wrote the plain config; restart with the proxy plugin added.
  kill "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true
  printf '[proxy_plugins]\n  [proxy_plugins.stargz]\n    type = "snapshot"\n    address = "%s"\n' \
    "$NODE_DIR/stargz.sock" >>"$NODE_DIR/config.toml"
  containerd --config "$NODE_DIR/config.toml" >"$T/$1-containerd.log" 2>&1 </dev/null &
  NODE_PID=$!
  for _ in $(seq 1 100); do ctr -a "$SOCK" snapshots --snapshotter stargz ls >/dev/null 2>&1 && break; sleep 0.1; done
  NODE=lazy LAZY_SOCK=$SOCK
}
stop_node() {
  [ -n "$NODE_PID" ] || return 0
  stop_fl
  TASKS=() PIDS=()
  kill "$NODE_PID" 2>/dev/null || true
  wait "$NODE_PID" 2>/dev/null || true
  NODE_PID=
  NODE=plain
  if [ -n "$SGZ_PID" ]; then kill "$SGZ_PID" 2>/dev/null || true; wait "$SGZ_PID" 2>/dev/null || true; SGZ_PID=; fi
  findmnt -rn -o TARGET | { grep -F "$NODE_DIR/" || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf "$NODE_DIR"
}
drop_buildah() {
  [ -d "$T/buildah" ] || return 0
  $BUILDAH rm --all >/dev/null 2>&1 || true
  $BUILDAH rmi --all --force >/dev/null 2>&1 || true
  findmnt -rn -o TARGET | { grep -F "$T/buildah/" || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf "$T/buildah"
}
# On exit (last added runs first): the tasks and the node, then buildah's storage.
AT_EXIT+=(drop_buildah stop_node)

# ---- a registry per run, dropped after it ----
REG='' REGPORT='' REGPID=
registry() { # PORT IMAGE...
  REGPORT=$1
  REG=127.0.0.1:$REGPORT
  shift
  fresh_registry "$REG" "$@"
  REGPID=${REGPIDS[-1]}
}
# start_link — the node's way to the registry: $REG itself on loopback, else bench/link.py in
# front of it (NODE_REG); its byte counts in $T/link.json.
start_link() {
  NODE_REG=$REG
  [ "$LINK" = loopback ] && return 0
  local port=$((REGPORT + 100))
  python3 bench/link.py --port "$port" --upstream "$REG" --rate "${LINK%%:*}" --rtt "${LINK##*:}" \
    --stats "$T/link.json" >"$T/link.log" 2>&1 &
  LINK_PID=$!
  for _ in $(seq 1 50); do grep -q ready "$T/link.log" 2>/dev/null && break; sleep 0.1; done
  grep -q ready "$T/link.log" || { echo "bench/link.py did not start:" >&2; cat "$T/link.log" >&2; exit 1; }
  NODE_REG=127.0.0.1:$port
}
link_down() { [ "$LINK" = loopback ] && echo "" || jq .down "$T/link.json"; } # bytes to the node so far
stop_link() { [ -n "$LINK_PID" ] || return 0; kill "$LINK_PID" 2>/dev/null || true; wait "$LINK_PID" 2>/dev/null || true; LINK_PID=; }
AT_EXIT+=(stop_link)
drop_registry() {
  stop_link
  [ -n "$REGPID" ] || return 0
  kill "$REGPID" 2>/dev/null || true
  wait "$REGPID" 2>/dev/null || true
  rm -rf "$T/registry-$REGPORT"
  REGPID=
}
# image_blobs REF — "digest size mediaType" of the config and layers of REF (host/repo:tag, plain
# HTTP) for linux/amd64.
image_blobs() {
  local host=${1%%/*} rest=${1#*/} m accept
  accept='application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json'
  m=$(curl -fsS -H "Accept: $accept" "http://$host/v2/${rest%:*}/manifests/${rest##*:}")
  if [ "$(jq 'has("manifests")' <<<"$m")" = true ]; then
    m=$(curl -fsS -H "Accept: $accept" "http://$host/v2/${rest%:*}/manifests/$(jq -r '[.manifests[] | select(.platform.os == "linux" and .platform.architecture == "amd64")][0].digest' <<<"$m")")
  fi
  jq -r '.config, .layers[] | "\(.digest) \(.size) \(.mediaType)"' <<<"$m"
}
# Distinct blobs of both images (shared layers once): what a node pulls.
both_blobs() { { image_blobs "$1"; image_blobs "$2"; } | sort -u -k1,1; }

# ---- phases 2–8 on a fresh node ----
# node_run NAME LEARNER AGGREGATOR — results appended to $T/NAME.res ("key value" lines).
node_run() {
  local n=$1 learner=$2 aggregator=$3 t0 t1 t2 t3 ref res=$T/$1.res down0 lazy=
  start_link
  learner=${learner/#$REG/$NODE_REG} aggregator=${aggregator/#$REG/$NODE_REG}
  if [ "$n" = old ] && [ "${OLD_NODE:-plain}" = lazy ]; then lazy=1; fi
  if [ -n "$lazy" ]; then start_lazy_node "$n"; else start_node "$n"; fi
  down0=$(link_down)
  both_blobs "$learner" "$aggregator" >"$T/$n.blobs"
  image_blobs "$learner" | head -1 | cut -d' ' -f1 >"$T/$n.learner-config"
  echo "pulled_bytes $(awk '{s+=$2} END{print s}' "$T/$n.blobs")" >>"$res"
  echo "layers $(grep -vc 'image.config\|container.image.v1' "$T/$n.blobs")" >>"$res"
  if [ -n "$lazy" ]; then
    log "$n: lazy pull (ctr-remote images rpull: manifests and configs; layers mounted) of both images by a fresh lazy node"
    t0=$(now)
    for ref in "$learner" "$aggregator"; do
      ctr-remote -a "$SOCK" -n "$NS" images rpull --plain-http "$ref" >/dev/null
    done
    echo "pull $(sub "$(now)" "$t0")" >>"$res"
    echo "unpack -" >>"$res"
    fl_round1 "$n" "$learner" "$aggregator"
    [ -z "$down0" ] || echo "fetched_bytes $(($(link_down) - down0))" >>"$res"
    drop_registry
    stop_node
    return
  fi
  log "$n: pull (ctr content fetch) and unpack (ctr images pull) of both images by a fresh containerd"
  t0=$(now)
  for ref in "$learner" "$aggregator"; do ctr_ content fetch --plain-http "$ref" >/dev/null; done
  t1=$(now)
  echo "pull $(sub "$t1" "$t0")" >>"$res"
  [ -z "$down0" ] || echo "fetched_bytes $(($(link_down) - down0))" >>"$res"
  # The layers in the registry are not needed any more (the floor's link speed is measured
  # from it first; the unpacking pull reads only manifests): their disk space is the unpack's.
  if [ "$n" = ours ]; then floor_link "$learner"; fi
  { grep -v 'image.config\|container.image.v1' "$T/$n.blobs" || true; } | while read -r d _; do
    rm -f "$T/registry-$REGPORT/docker/registry/v2/blobs/sha256/${d:7:2}/${d#sha256:}/data"
  done
  t1=$(now)
  for ref in "$learner" "$aggregator"; do ctr_ images pull --plain-http "$ref" >/dev/null; done
  t2=$(now)
  echo "dirty_mb $(awk '/^(Dirty|Writeback):/ {s+=$2} END{printf "%.0f", s / 1024}' /proc/meminfo)" >>"$res"
  # The same pull once more (fetched and unpacked): what the unpack row carries besides unpacking.
  for ref in "$learner" "$aggregator"; do ctr_ images pull --plain-http "$ref" >/dev/null; done
  t3=$(now)
  printf 'unpack %s\nrepull %s\n' "$(sub "$t2" "$t1")" "$(sub "$t3" "$t2")" >>"$res"
  drop_registry
  fl_round1 "$n" "$learner" "$aggregator"
  if [ "$n" = ours ]; then floor "$learner"; fi
  stop_node
}

# fl_round1 NAME LEARNER AGGREGATOR — the data server (started and serving first), then with
# 127.0.0.1:8080 locked against other users (flock) and free: the aggregator and 2 learners as
# tasks, until the aggregator logs round 1's result; the project then ends as in FLOps (the
# aggregator logs the model to MLflow; at most 120 s) and every task is stopped.
fl_round1() {
  local n=$1 project tl ok=
  project=start-$n-$FLAVOR-$(date +%s)
  start_data_server "$DATASET" "$T/$n-data.log"
  wait_data_server "$T/$n-data.log"
  lock_8080
  for _ in $(seq 1 120); do (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null || break; sleep 1; done
  if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then echo "127.0.0.1:8080 is still taken after 120 s" >&2; exit 1; fi
  log "$n: aggregator + ${#TAGS[@]} learners as tasks of the fresh containerd, to the end of round 1"
  tl=$(now)
  aggregator_task "$aggregator" "$project-agg" "$T/$n-agg.log" "$project" "$TRACKING" 1 "${#TAGS[@]}"
  for i in "${!TAGS[@]}"; do
    learner_task "$learner" "$project-l$((i + 1))" "$T/$n-l$((i + 1)).log" "$project" "${TAGS[i]}"
  done
  for _ in $(seq 1 1800); do
    if grep -q "round 1: loss" "$T/$n-agg.log" 2>/dev/null; then ok=1; break; fi
    kill -0 "$AGG_PID" 2>/dev/null || break
    sleep 0.5
  done
  if [ -z "$ok" ]; then
    echo "$n: no 'round 1: loss' from the aggregator (it $(kill -0 "$AGG_PID" 2>/dev/null && echo "still runs after 900 s" || echo ended))" >&2
    tail -n 25 "$T/$n-agg.log" "$T/$n"-l*.log >&2
    exit 1
  fi
  for _ in $(seq 1 240); do kill -0 "$AGG_PID" 2>/dev/null || break; sleep 0.5; done
  stop_fl
  TASKS=() PIDS=()
  unlock_8080
  phases "$tl" "$T/$n-agg.log" "$T/$n"-l*.log >>"$T/$n.res" || { tail -n 25 "$T/$n-agg.log" "$T/$n"-l*.log >&2; exit 1; }
  # Per-layer unpacks of the fresh containerd (its debug log): the longest, and whether any two
  # overlapped in time.
  python3 - "$T/$n-containerd.log" >>"$T/$n.res" <<'EOF'
import re, sys
from datetime import datetime
spans = []
for line in open(sys.argv[1], errors="replace"):
    if 'msg="diff applied"' not in line:
        continue
    end = datetime.fromisoformat(re.search(r'time="([^"]+)"', line)[1][:26].rstrip("Z")).timestamp()
    d = re.search(r"\bd=([0-9.]+)(ms|s|µs|m)", line)
    secs = float(d[1]) * {"ms": 1e-3, "s": 1, "µs": 1e-6, "m": 60}[d[2]] if d else 0.0
    size = re.search(r"\bsize=(\d+)", line)
    spans.append((end - secs, end, int(size[1]) if size else 0))
spans.sort()
overlap = any(b[0] < a[1] - 0.01 for a, b in zip(spans, spans[1:]))
top = max(spans, key=lambda s: s[1] - s[0]) if spans else (0, 0, 0)
print(f"applies {len(spans)}")
print(f"apply_sum {sum(e - s for s, e, _ in spans):.2f}")
print(f"apply_max {top[1] - top[0]:.2f}")
print(f"apply_max_mb {top[2] / 1e6:.0f}")
print(f"apply_overlap {'yes' if overlap else 'no'}")
EOF
}

# phases TASK_START AGG_LOG LEARNER_LOG... — phases 4–8 from the runtimes' own log stamps
# (`%(asctime)s`, UTC in the images). A line an older runtime does not print ("runtime started",
# "model code imported") leaves its phase empty and the next phase holds it.
phases() {
  python3 - "$@" <<'EOF'
import re, sys, time
from datetime import datetime, timezone

t_task, agg, learners = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) flops-(?:learner|aggregator) (?:[A-Z]+ )?(.*)")


def stamps(path, marks):
    found = {"retries": 0}
    for line in open(path, errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        if "; retrying in " in m[2]:
            found["retries"] += 1
        t = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=timezone.utc).timestamp()
        for key, prefix in marks.items():
            if key not in found and m[2].startswith(prefix):
                found[key] = t
    return found


L = {"first": "runtime started", "imports": "model code imported", "data": "data loaded for tags"}
A = {"first": "runtime started", "imports": "model code and ", "server": "Flower server on",
     "r1": "round 1: training on", "end": "round 1: loss"}
a = stamps(agg, A)
ls = [stamps(p, L) for p in learners]
if "r1" not in a or "end" not in a or any("data" not in x for x in ls):
    sys.exit(f"missing log lines: aggregator {sorted(a)}, learners {[sorted(x) for x in ls]}")
for t in [v for x in [a] + ls for k, v in x.items() if k != "retries"]:
    if not t_task - 2 <= t <= time.time() + 2:
        sys.exit(f"a log stamp {t} is outside the run (task start {t_task}): not UTC?")
last = max(ls, key=lambda x: x["data"])  # the learner round 1 waited for
bounds = [("start", last.get("first")), ("imports", last.get("imports")), ("data", last["data"]),
          ("join", a["r1"]), ("round1", a["end"])]
prev = t_task
for key, t in bounds:
    if t is None:
        print(f"{key} -")
        continue
    print(f"{key} {t - prev:.2f}")
    prev = t
print(f"retries {last['retries']}")
for key in ("first", "imports", "server"):
    print(f"agg_{key} {a[key] - t_task:.2f}" if key in a else f"agg_{key} -")
EOF
}

# ---- the floor (on ours's node, while it holds the images) ----
# floor_link LEARNER — the link: the biggest blob from the fresh registry to /dev/null, twice;
# the faster.
floor_link() {
  local learner=$1 res=$T/ours.res biggest size secs best=0
  log "floor: link speed from the fresh registry"
  read -r biggest size _ < <(sort -k2,2nr "$T/ours.blobs" | head -1)
  for _ in 1 2; do
    secs=$(curl -fsS -o /dev/null -w '%{time_total}' "http://$NODE_REG/v2/$(repo_of "$learner")/blobs/$biggest")
    best=$(awk -v s="$size" -v t="$secs" -v b="$best" 'BEGIN{r = s / t; print (r > b ? r : b)}')
  done
  echo "link_mbs $(awk -v b="$best" 'BEGIN{printf "%.0f", b / 1e6}')" >>"$res"
  echo "floor_pull $(awk -v s="$(awk '{s+=$2} END{print s}' "$T/ours.blobs")" -v b="$best" 'BEGIN{printf "%.2f", s / b}')" >>"$res"
}
# floor LEARNER — decompression of every layer, Python in a chroot of the learner's rootfs.
floor() {
  local res=$T/ours.res d size media t f codec dsecs
  log "floor: decompression, Python start and warm imports in a chroot"
  # Unpack: every layer decompressed on one core, read from the page cache (read once first).
  dsecs=0
  while read -r d size media; do
    codec=$(decompressor "$media") || continue
    f=$(blob "$d")
    cat "$f" >/dev/null
    t=$(now)
    $codec <"$f" >/dev/null
    dsecs=$(awk -v a="$dsecs" -v b="$(sub "$(now)" "$t")" 'BEGIN{print a + b}')
  done <"$T/ours.blobs"
  echo "floor_unpack $(printf '%.2f' "$dsecs")" >>"$res"
  # The same, writing the files too (tar -x on the node's filesystem, one layer after another as
  # containerd 1.6 applies them; no sync, as containerd does not wait for the writeback).
  local x=$T/unpack-floor
  mkdir -p "$x"
  t=$(now)
  while read -r d size media; do
    codec=$(decompressor "$media") || continue
    $codec <"$(blob "$d")" | tar -x -C "$x"
  done <"$T/ours.blobs"
  echo "floor_unpack_write $(sub "$(now)" "$t")" >>"$res"
  rm -rf "$x"
  pyfloor "$learner" >>"$res"
}
# decompressor MEDIA_TYPE — the command that decompresses a layer of that type (fails for others).
decompressor() { case $1 in *gzip) echo "gzip -dc" ;; *zstd) echo "zstd -dcq" ;; *) return 1 ;; esac; }
repo_of() { local r=${1#*/}; echo "${r%:*}"; }
blob() { echo "$NODE_DIR/root/io.containerd.content.v1.content/blobs/sha256/${1#sha256:}"; } # in the node's content store

# pyfloor REF — Python in a chroot of REF's rootfs (the node's snapshot, mounted read-write so
# bytecode is written), in the image's working directory with its environment; each command
# twice: `import main` (the runtime's own imports: Python's start), + `from model_manager import
# ModelManager` (the ML imports), + `import flwr` (what the learner imports before it joins).
pyfloor() {
  local ref=$1 mnt=$T/rootfs cfg envs wd
  cfg=$(cat "$(blob "$(cat "$T/ours.learner-config")")")
  mapfile -t envs < <(jq -r '.config.Env[]' <<<"$cfg")
  wd=$(jq -r '.config.WorkingDir // "/"' <<<"$cfg")
  mkdir -p "$mnt"
  unshare -m --propagation private bash -s "$SOCK" "$NS" "$ref" "$mnt" "$wd" "${envs[@]}" <<'EOF' ||
set -euo pipefail
exec 2>"$4.trace"
set -x
sock=$1 ns=$2 ref=$3 mnt=$4 wd=$5
shift 5
ctr -a "$sock" -n "$ns" images mount --rw "$ref" "$mnt" >/dev/null </dev/null
for d in proc sys dev; do mkdir -p "$mnt/$d"; mount --rbind "/$d" "$mnt/$d"; done
envs=("$@")
py() { # key code: two runs, "key_1 s" and "key_2 s"
  local t s i
  for i in 1 2; do
    t=$(date +%s.%N)
    if ! chroot "$mnt" /usr/bin/env -i "${envs[@]}" sh -c "cd '$wd' && exec python -c '$2'" </dev/null >/dev/null 2>"$mnt.err"; then
      echo "python -c '$2' failed in the chroot:" >&2; cat "$mnt.err" >&2; exit 1
    fi
    s=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b - a}')
    echo "$1_$i $s"
  done
}
# The runtime in ours's image (embedded in the builder) vs the one upstream's images copy.
if cmp -s "$mnt$wd/main.py" base-layers/fl-learner/main.py; then echo "runtime_same yes"; else echo "runtime_same no"; fi
py py_start "import main"
py py_imports "import main; from model_manager import ModelManager"
py py_flwr "import main; from model_manager import ModelManager; import flwr"
EOF
    { echo "the floor's Python runs in a chroot failed (exit $?):" >&2; tail -n 30 "$mnt.trace" >&2; exit 1; }
}

# ---- disk: what a run needs at its peak (GB, on this machine, rounded up) ----
# ours: the wheel cache + the registry, then the node's content and snapshots (pytorch: 8.2 GB
# measured); upstream: buildah's container, the layer its commit spools and the committed layer
# (the dependency layer three times: pytorch ran out with 13 GB used, before its commit ended).
declare -A NEED_OURS=([sklearn]=2 [keras]=4 [pytorch]=10) NEED_UPSTREAM=([sklearn]=3 [keras]=8 [pytorch]=20)
free_gb() { df -BG --output=avail "$T" | tail -1 | tr -dc 0-9; }
# The lowest free space during the run, sampled every 2 s.
(while :; do df -BM --output=avail "$T" | tail -1 | tr -dc '0-9\n'; sleep 2; done) >"$T/df.log" 2>/dev/null &
DFPID=$!
AT_EXIT+=("kill $DFPID 2>/dev/null")

# ---- the runs ----
fixture_repo() { # → a git repo of the fixture at $T/repos/<NAME>
  local dir=$T/repos/$NAME
  rm -rf "$dir"
  mkdir -p "$dir"
  cp -a "fixtures/$FIXTURE/." "$dir/"
  (cd "$dir" && git init -q -b main && git add -A && git -c user.name=b -c user.email=b@b commit -qm init)
  echo "$dir"
}
ours_run() { # NAME BIN PORT REPO [BUILD FLAG...]
  local n=$1 bin=$2 learner aggregator
  registry "$3" library/python:3.11-slim
  log "$n: build --aggregator --model-flavor $FLAVOR (cold: empty cache dir, fresh registry)"
  run "$n-build" "$bin" -q build "$4" --aggregator --model-flavor "$FLAVOR" --registry "http://$REG" \
    --cache-dir "$T/cache-$n" --json --no-notify "${@:5}"
  rm -rf "$T/cache-$n"
  echo "build $(secs "$n-build")" >"$T/$n.res"
  learner=$(jq -r '.images.learner.reference | sub("@.*"; "")' "$T/$n-build.out")
  aggregator=$(jq -r '.images.aggregator.reference | sub("@.*"; "")' "$T/$n-build.out")
  node_run "$n" "$learner" "$aggregator"
}
upstream_run() { # PORT REPO
  local repo=$2 sha learner aggregator
  sha=$(git -C "$repo" rev-parse HEAD)
  registry "$1" library/python:3.11-pip
  rm -rf "$T/ctx"
  upstream_fl_ctx "$repo" "$sha" "$T/ctx" "$REG/library/python:3.11-pip" "$FLAVOR"
  log "upstream: buildah builds base → learner + aggregator, pushes all three (cold: empty storage)"
  drop_buildah
  mkdir -p "$T/buildah/tmp"
  upstream_fl_build "-$FLAVOR" "$T/ctx"
  upstream_fl_push "-$FLAVOR" "$REG/bench/$NAME" "$sha"
  drop_buildah
  echo "build $(sum_secs "bbase-$FLAVOR" "blearner-$FLAVOR" "baggr-$FLAVOR" "pbase-$FLAVOR" "plearner-$FLAVOR" "paggr-$FLAVOR")" >"$T/upstream.res"
  node_run upstream "$REG/bench/$NAME/learner:$sha" "$REG/bench/$NAME/aggregator:$sha"
}

# ---- the report ----
v() { awk -v k="$2" '$1 == k {print $2; exit}' "$T/$1.res" 2>/dev/null; } # RUN KEY → value or ""
has() { [ -s "$T/$1.res" ]; }
cell() { local x; x=$(v "$1" "$2"); [ -n "$x" ] && [ "$x" != - ] && echo "$x" || echo "—"; }
rat() { # a b → "a/b×" with two decimals, or — when either is missing
  if [[ $1 =~ ^[0-9.]+$ && $2 =~ ^[0-9.]+$ ]] && awk -v b="$2" 'BEGIN{exit !(b > 0)}'; then
    awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f×", a / b}'
  else echo "—"; fi
}
total() { # RUN → the sum of its phases
  local k s=0 x
  has "$1" || { echo "—"; return; }
  for k in build pull unpack start imports data join round1; do
    x=$(v "$1" "$k")
    [[ $x =~ ^[0-9.]+$ ]] && s=$(awk -v a="$s" -v b="$x" 'BEGIN{print a + b}')
  done
  printf '%.2f' "$s"
}
mb() { if [ -n "$1" ]; then awk -v b="$1" 'BEGIN{printf "%.0f MB", b / 1e6}'; else echo "—"; fi; }
report() {
  local w=$FLAVOR k label o u f fl x floor_total
  # The floor of data and round 1: the fastest measured run.
  for k in data round1; do
    fl=$(for r in ours upstream old; do x=$(v "$r" "$k"); if [[ $x =~ ^[0-9.]+$ ]]; then echo "$x"; fi; done | sort -g | head -1)
    echo "floor_$k ${fl:-—}" >>"$T/ours.res"
  done
  echo "floor_start $(v ours py_start_2)" >>"$T/ours.res"
  echo "floor_imports $(sub "$(v ours py_imports_2)" "$(v ours py_start_2)")" >>"$T/ours.res"
  # Two noisy runs can put the warm `import flwr` before the warm model imports: 0, not < 0.
  echo "floor_join $(awk -v a="$(v ours py_flwr_2)" -v b="$(v ours py_imports_2)" 'BEGIN{d = a - b; printf "%.2f", (d > 0 ? d : 0)}')" >>"$T/ours.res"
  floor_total=$(for k in pull unpack start imports data join round1; do v ours "floor_$k"; done | awk '$1 ~ /^[0-9.]+$/ {s+=$1} END{printf "%.2f", s}')
  echo "floor_total $floor_total" >>"$T/ours.res"
  echo "### $w — fixtures/$FIXTURE (flavor $w, dataset $DATASET, 2 learners)"
  echo
  if [ -n "${OLD_BIN:-}" ]; then
    echo "| phase | ours s | ${OLD_LABEL:-old} s | upstream s | floor s | ours/floor | ours/upstream | ours/${OLD_LABEL:-old} |"
    echo "|---|---|---|---|---|---|---|---|"
  else
    echo "| phase | ours s | upstream s | floor s | ours/floor | ours/upstream |"
    echo "|---|---|---|---|---|---|"
  fi
  for k in build pull unpack start imports data join round1 total; do
    case $k in
      build) label="1. build + push (\`fl_actors\`; upstream: 3 buildah builds + 3 pushes)" ;;
      pull) label="2. pull: learner + aggregator, content fetch (ours $(mb "$(v ours pulled_bytes)"), upstream $(mb "$(v upstream pulled_bytes)"))" ;;
      unpack) label="3. unpack (ctr images pull of the fetched images)" ;;
      start) label="4. task start → the runtime's first line" ;;
      imports) label="5. imports: the ML stack (model_manager)" ;;
      data) label="6. ModelManager() + data from the Flight server" ;;
      join) label="7. join: learners import Flower and connect, round 1 begins" ;;
      round1) label="8. round 1: training + evaluation" ;;
      total) label="**request → end of round 1**" ;;
    esac
    if [ "$k" = total ]; then
      o=$(total ours) u=$(total upstream) f=$floor_total x=$(total old)
    else
      o=$(cell ours "$k") u=$(cell upstream "$k") f=$(cell ours "floor_$k") x=$(cell old "$k")
    fi
    if [ -n "${OLD_BIN:-}" ]; then
      echo "| $label | $o | $x | $u | $f | $(rat "$o" "$f") | $(rat "$o" "$u") | $(rat "$o" "$x") |"
    else
      echo "| $label | $o | $u | $f | $(rat "$o" "$f") | $(rat "$o" "$u") |"
    fi
  done
  echo
  local runs=(ours) r
  [ -n "${OLD_BIN:-}" ] && runs+=(old)
  has upstream && runs+=(upstream)
  for r in "${runs[@]}"; do
    echo -n "- $([ "$r" = old ] && echo "${OLD_LABEL:-old}" || echo "$r")$([ "$r" = ours ] && [ -n "${OURS_ARGS:-}" ] && echo " ($OURS_ARGS)")$([ "$r" = old ] && [ -n "${OLD_ARGS:-}" ] && echo " ($OLD_ARGS)"): "
    if [ "$r" = upstream ]; then
      echo -n "build base $(secs "bbase-$w"), learner $(secs "blearner-$w"), aggregator $(secs "baggr-$w"), pushes $(secs "pbase-$w") + $(secs "plearner-$w") + $(secs "paggr-$w") s, buildah peak RSS $(max_rss "bbase-$w" "blearner-$w" "baggr-$w" "pbase-$w" "plearner-$w" "paggr-$w") MB; "
    else
      echo -n "builder peak RSS $(rss "$r-build") MB, build phases (ms) $(jq -r '.images.learner.phases_ms | to_entries | map("\(.key) \(.value)") | join(", ")' "$T/$r-build.out"); "
    fi
    echo -n "$([ "$r" = old ] && [ "${OLD_NODE:-plain}" = lazy ] && echo "a lazy node (stargz snapshotter; rpull, no unpack): ")"
    [ "$LINK" = loopback ] || echo -n "$(mb "$(v "$r" fetched_bytes)") fetched over the $LINK link (of $(mb "$(v "$r" pulled_bytes)") in the images' blobs); "
    echo "$(v "$r" layers) layers, $(mb "$(v "$r" pulled_bytes)") pulled; unpack: $(v "$r" applies) layer applies taking $(v "$r" apply_sum) s in all (the longest $(v "$r" apply_max) s, $(v "$r" apply_max_mb) MB compressed), overlapping: $(v "$r" apply_overlap), $(v "$r" dirty_mb) MB not yet written back to disk when it ended; a pull of both again (nothing to do) $(v "$r" repull) s; aggregator: first line at +$(v "$r" agg_first) s after task start, imports done +$(v "$r" agg_imports) s, Flower server up +$(v "$r" agg_server) s; the learner tried to join $(v "$r" retries) time(s) before the aggregator listened."
  done
  if [ -s "$T/upstream.skip" ]; then echo "- $(cat "$T/upstream.skip")"; fi
  if [ "$(v ours runtime_same)" = no ]; then
    echo "- **warning**: the learner runtime in ours's image (embedded in the builder) is not base-layers/fl-learner/main.py, which upstream's images copy: build the builder from this tree for a fair comparison."
  fi
  echo "- floor: link $(v ours link_mbs) MB/s (curl of the biggest blob from the fresh registry); every layer of ours decompressed on one core (from the node's content store, page cache) $(v ours floor_unpack) s, decompressed and written as files (\`tar -x\`, layer after layer) $(v ours floor_unpack_write) s (unpack / that: $(awk -v a="$(v ours unpack)" -v b="$(v ours floor_unpack_write)" 'BEGIN{if (b > 0) printf "%.2f×", a / b; else print "—"}')); in a chroot of ours's learner rootfs (first run / second run, s): \`import main\` $(v ours py_start_1) / $(v ours py_start_2), + \`from model_manager import ModelManager\` $(v ours py_imports_1) / $(v ours py_imports_2), + \`import flwr\` $(v ours py_flwr_1) / $(v ours py_flwr_2); data and round 1: the fastest run's."
  echo
}

# The report: start-<date>.md for all three workloads, start-<workloads>-<date>.md for others.
LINK_TAG=$([ "$LINK" = loopback ] || echo "-${LINK//:/-}")
if [ -n "${OUT:-}" ]; then :
elif [ "$WORKLOADS" = "sklearn keras pytorch" ]; then OUT=bench/out/start$LINK_TAG-$(date +%F).md
else OUT=bench/out/start-$(echo $WORKLOADS | tr ' ' -)$LINK_TAG-$(date +%F).md; fi
mkdir -p bench/out
SECTIONS=()
for FLAVOR in $WORKLOADS; do
  fl_flavor "$FLAVOR"
  log "== workload $FLAVOR (fixtures/$FIXTURE)"
  rm -f "$T"/*.res "$T/upstream.skip"
  REPO=$(fixture_repo)
  if [ "$(free_gb)" -lt "${NEED_OURS[$FLAVOR]}" ]; then
    echo "$FLAVOR: $(free_gb) GB free on $T's disk; a run needs about ${NEED_OURS[$FLAVOR]} GB" >&2; exit 1
  fi
  # shellcheck disable=SC2086 # flag lists
  ours_run ours "$BIN" 5141 "$REPO" ${OURS_ARGS:-}
  # shellcheck disable=SC2086
  [ -z "${OLD_BIN:-}" ] || ours_run old "$OLD_BIN" 5142 "$REPO" ${OLD_ARGS:-}
  if [ -n "${SKIP_UPSTREAM:-}" ]; then
    echo "upstream: not run (SKIP_UPSTREAM)" >"$T/upstream.skip"
  elif [ "$(free_gb)" -lt "${NEED_UPSTREAM[$FLAVOR]}" ]; then
    echo "upstream: not run ($(free_gb) GB free, buildah's chain needs about ${NEED_UPSTREAM[$FLAVOR]} GB)" | tee "$T/upstream.skip" >&2
  else
    upstream_run 5143 "$REPO"
  fi
  report >"$T/section-$FLAVOR.md"
  cat "$T/section-$FLAVOR.md" >&2
  SECTIONS+=("$T/section-$FLAVOR.md")
done

{
  echo "# start benchmark — $(date -u +'%F %H:%M UTC')"
  echo
  echo "Machine: $(machine). From FLOps' \`fl_actors\` request to the end of round 1 of federated training on a fresh node: a containerd started for each run with empty root and state dirs (the rig's config, overlayfs snapshotter), a fresh registry holding only the base; the aggregator (classic, 1 round, logging to the rig's MLflow server) and 2 learners as tasks of that containerd with the FLOps manager's command lines (scripts/flops-e2e.sh's), the learners' data from a Flight data server on the node. Link between each node and its registry: $([ "$LINK" = loopback ] && echo "loopback" || echo "$LINK (bench/link.py: that rate each way, shared by the node's connections, half the RTT added each way)"). Ours: $("$BIN" --version 2>/dev/null || basename "$BIN"), \`build --aggregator --model-flavor F\` (cold: empty cache dir)$([ -n "${OLD_BIN:-}" ] && echo "; old: $("$OLD_BIN" --version 2>/dev/null || basename "$OLD_BIN") the same way$([ "${OLD_NODE:-plain}" = lazy ] && echo ", on a fresh lazy node (a fresh stargz snapshotter behind a fresh containerd; images pulled with ctr-remote rpull, files fetched as the tasks read them)")"). Upstream: buildah $(buildah --version | awk '{print $3}') (${BUILDAH_DRIVER:-overlay} storage, chroot isolation, --layers) building FLOps' chain — base FROM python:3.11-pip with the dependencies (pip), learner and aggregator FROM it — and pushing all three. Phases 4–6 follow the learner whose data came last; every time from the script's clock or the runtimes' own log stamps. The total is the sum of the phases (starting the node's containerd and data server between them is left out)."
  echo
  cat "${SECTIONS[@]}"
  echo "Floors: pull = the distinct blobs of ours's two images over the measured link speed; unpack = decompressing ours's layers on one core (writing the files, which containerd also does, is not in it: the notes give that floor too); 4 = Python's start (\`import main\`: the runtime up to its first line), 5 = the ML imports, 7 = \`import flwr\`, each the second of two runs in a chroot of ours's learner rootfs with bytecode writes allowed (a warm bytecode cache); the join's other waits (the aggregator counts a learner after 1 s; a learner that finds no aggregator tries again after its retry wait) are not in it; 6 and 8 are the fastest measured run: no lower floor exists for the data transfer and the training itself. Build + push has no floor here (bench/big.sh measures one). Lowest free disk space during the run: $(sort -n "$T/df.log" | head -1 | awk '{printf "%.1f GB", $1 / 1024}')."
} | tee "$OUT"
