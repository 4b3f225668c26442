# Shared by the benchmark scripts (sourced, from the repository root): setup, fresh
# registries, timing and report helpers.

# The rig, buildah and /usr/bin/time, the release binary ($BIN, unless set), a work dir ($T)
# that is removed on exit with the registries started here. AT_EXIT: commands (strings) the
# script adds, run on exit before that, last added first.
bench_setup() {
  scripts/rig.sh all >&2
  command -v buildah >/dev/null && [ -x /usr/bin/time ] || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah time >/dev/null; }
  [ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked -q
  BIN=${BIN:-$PWD/target/release/flops-image-builder}
  T=$(mktemp -d)
  REGPIDS=()
  AT_EXIT=()
  trap 'for ((i = ${#AT_EXIT[@]} - 1; i >= 0; i--)); do eval "${AT_EXIT[i]}" || true; done; for p in "${REGPIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$T" || true' EXIT
}

# fresh_registry HOST:PORT IMAGE... — a new, empty registry holding only the given images
# (repository:tag paths of the rig's registry), so "cold" really uploads.
fresh_registry() {
  local addr=$1 port=${1##*:} img
  shift
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "bench: port $port is in use (a registry left from another run?)" >&2
    return 1
  fi
  printf 'version: 0.1\nlog: { level: error }\nstorage: { filesystem: { rootdirectory: %s/registry-%s } }\nhttp: { addr: %s }\n' "$T" "$port" "$addr" >"$T/registry-$port.yml"
  docker-registry serve "$T/registry-$port.yml" >"$T/registry-$port.log" 2>&1 &
  REGPIDS+=($!)
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  for img in "$@"; do
    skopeo copy -q --all --src-tls-verify=false --dest-tls-verify=false "docker://127.0.0.1:5000/$img" "docker://$addr/$img"
  done
}

# run NAME CMD... → "$T/NAME.time" holds "seconds max_rss_kb"; CMD's stdout in "$T/NAME.out".
run() { local n=$1; shift; /usr/bin/time -f '%e %M' -o "$T/$n.time" "$@" >"$T/$n.out" 2>"$T/$n.err" || { cat "$T/$n.err" >&2; exit 1; }; }
secs() { cut -d' ' -f1 "$T/$1.time"; }
rss() { awk '{printf "%.0f", $2/1024}' "$T/$1.time"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f×", a/b}'; }
# sum_secs NAME... — the runs' seconds added up; max_rss NAME... — their largest RSS in MB.
sum_secs() { local n; for n in "$@"; do cat "$T/$n.time"; done | awk '{s+=$1} END{print s}'; }
max_rss() { local n; for n in "$@"; do cat "$T/$n.time"; done | awk '{if ($2>m) m=$2} END{printf "%.0f", m/1024}'; }
machine() { echo "$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(. /etc/os-release; echo "$PRETTY_NAME"), $(uname -r)"; }

# upstream_ctx REPO CTX FROM — the build context of the upstream-style learner Dockerfile
# (FROM a pip base; COPY the repo; RUN pip install the doctored requirements + the learner
# runtime's), with the system's extra CA certificates (this network re-signs TLS).
upstream_ctx() {
  local dir=$1 ctx=$2 from=$3
  mkdir -p "$ctx/ca"
  cp -a "$dir/." "$ctx/"
  rm -rf "$ctx/.git"
  cp /usr/local/share/ca-certificates/* "$ctx/ca/" 2>/dev/null || true
  "$BIN" -q check "$dir" --json | jq -r '.requirements[]' >"$ctx/requirements.txt"
  grep -v '^#' base-layers/fl-learner/requirements.txt >>"$ctx/requirements.txt"
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $from
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY . /app
WORKDIR /app
RUN pip install --no-cache-dir --break-system-packages -r requirements.txt
DOCKERFILE
}

# Upstream FLOps' fl_actors chain with `buildah build` (bench/fl_actors.sh, bench/start.sh):
# a base image with the repo's dependencies, the learner image FROM that base, the aggregator
# image FROM that base, and `buildah push` of all three. $BUILDAH is the buildah command
# (default: `buildah --storage-driver vfs`, the machine's default storage).
#
# upstream_fl_ctx REPO_DIR REV CTX FROM FLAVOR — their build contexts in CTX: the base FROM the
# pip base FROM (pip install the repo's requirements as doctored for the fl_actors plan — the
# same ones the builder locks for both images — + the learner runtime's), the learner (COPY the
# runtime files + the repo at REV), the aggregator (pip install the aggregator runtime's
# requirements; COPY its runtime files + the repo); ML_MODEL_FLAVOR=FLAVOR in both.
upstream_fl_ctx() {
  local dir=$1 rev=$2 c=$3 from=$4 flavor=$5
  mkdir -p "$c/base/ca" "$c/learner/app" "$c/aggregator/app"
  cp /usr/local/share/ca-certificates/* "$c/base/ca/" 2>/dev/null || true
  "$BIN" -q check "$dir" --aggregator --json | jq -r '.requirements[]' >"$c/base/requirements.txt"
  grep -v '^#' base-layers/fl-learner/requirements.txt >>"$c/base/requirements.txt"
  grep -v '^#' base-layers/fl-aggregator/requirements.txt >"$c/aggregator/requirements.txt"
  git -C "$dir" archive "$rev" | tar -x -C "$c/learner/app"
  cp -a "$c/learner/app/." "$c/aggregator/app/"
  cp base-layers/fl-learner/*.py "$c/learner/app/"
  cp base-layers/fl-aggregator/*.py "$c/aggregator/app/"
  cat >"$c/base.Dockerfile" <<EOF
FROM $from
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --break-system-packages -r /tmp/requirements.txt
EOF
  cat >"$c/learner.Dockerfile" <<EOF
FROM localhost/fl-base:bench
ENV FLWR_TELEMETRY_ENABLED=0 ML_MODEL_FLAVOR=$flavor
WORKDIR /app
COPY app/ /app/
CMD ["python", "main.py"]
EOF
  cat >"$c/aggregator.Dockerfile" <<EOF
FROM localhost/fl-base:bench
COPY requirements.txt /tmp/aggregator-requirements.txt
RUN pip install --no-cache-dir --break-system-packages -r /tmp/aggregator-requirements.txt
ENV FLWR_TELEMETRY_ENABLED=0 ML_MODEL_FLAVOR=$flavor
WORKDIR /app
COPY app/ /app/
CMD ["python", "main.py"]
EOF
}
# upstream_fl_build SUFFIX CTX — the three builds (fl-base, fl-learner, fl-aggregator:bench),
# each timed by `run` as bbase, blearner, baggr + SUFFIX.
upstream_fl_build() {
  local s=$1 c=$2 bb
  bb="${BUILDAH:-buildah --storage-driver vfs} build -q --layers --isolation chroot --tls-verify=false"
  run "bbase$s" $bb -t fl-base:bench -f "$c/base.Dockerfile" "$c/base"
  run "blearner$s" $bb -t fl-learner:bench -f "$c/learner.Dockerfile" "$c/learner"
  run "baggr$s" $bb -t fl-aggregator:bench -f "$c/aggregator.Dockerfile" "$c/aggregator"
}
# upstream_fl_push SUFFIX REPO TAG — the three pushes to REPO/{base,learner,aggregator}:TAG
# (REPO: registry/path, plain HTTP), each timed by `run` as pbase, plearner, paggr + SUFFIX.
upstream_fl_push() {
  local s=$1 repo=$2 tag=$3 b=${BUILDAH:-buildah --storage-driver vfs}
  run "pbase$s" $b push -q --tls-verify=false fl-base:bench "docker://$repo/base:$tag"
  run "plearner$s" $b push -q --tls-verify=false fl-learner:bench "docker://$repo/learner:$tag"
  run "paggr$s" $b push -q --tls-verify=false fl-aggregator:bench "docker://$repo/aggregator:$tag"
}
