#!/usr/bin/env bash
# Test rig: installs (Debian packages) and starts the real services the tests and the demo use,
# and builds + pushes the test base image. Idempotent: safe to run again; services already up
# are left alone and rootfs tarballs are cached in $RIG_CACHE.
#
#   plain registry   http://127.0.0.1:5000   (CNCF distribution 2.8, no auth)
#   docker.io mirror http://127.0.0.1:5001   (plain; library/python:3.11-slim and 3.13-slim)
#   TLS registry     https://127.0.0.1:5443  (self-signed cert, htpasswd basic auth rig/rigpass)
#   MQTT broker      127.0.0.1:9027          (mosquitto)
#   containerd       /run/flops-rig/containerd.sock (its own instance; tests use namespace flops-test)
#   MLflow server    http://127.0.0.1:5080       (sqlite backend, served artifacts; its own venv)
#   lazy node        /run/flops-rig/lazy/containerd.sock (a second containerd; its snapshotter
#                    `stargz` is the stargz snapshotter, flops-stargz-grpc built from Debian's
#                    source, on /run/flops-rig/stargz/containerd-stargz-grpc.sock)
#   Python envs      /var/lib/flops-rig/pyenv         (the FL runtimes' deps at their newest + pytest)
#                    /var/lib/flops-rig/pyenv-lowest  (the same at their lowest allowed versions)
#                    /var/lib/flops-rig/tools         (independent checkers: pyspdxtools)
#   base images      127.0.0.1:5000/library/python:3.11-slim, and on the mirror 3.11-slim + 3.13-slim
#                    (indexes: linux/amd64 + linux/arm64; Debian bookworm and trixie)
#   builder base     127.0.0.1:5000/library/flops-builder-base:bookworm (for the builder's own image)
#
# Must run as root on Debian bookworm. Usage: scripts/rig.sh [install|services|base|builder-base|pyenv|bench-base|lazy|all]
# (pyenv builds every Python env, the MLflow server's included; services needs them.)
set -euo pipefail

RIG_STATE=${RIG_STATE:-/var/lib/flops-rig}
RIG_CACHE=${RIG_CACHE:-/var/cache/flops-rig}
PLAIN=127.0.0.1:5000
# Plays docker.io for tests (--registry-mirror docker.io=http://127.0.0.1:5001): no Docker Hub here.
MIRROR=127.0.0.1:5001
TLS=127.0.0.1:5443
MQTT_PORT=9027
MLFLOW_PORT=5080
# The tracking server the aggregator logs to and the trained-model plan reads from.
MLFLOW_SERVER=("mlflow==3.1.4" "sqlalchemy<2.1")
# iproute2: ss, for scripts/flops-e2e.sh to tell its own model server on 8080 from a neighbour's.
PACKAGES=(docker-registry mosquitto mosquitto-clients containerd skopeo umoci mmdebstrap apache2-utils openssl curl jq ca-certificates git file zstd binutils libssl-dev pkg-config gcc libc6-dev qemu-user-static iproute2)
# The lazy node (start_lazy_node): Go and the stargz snapshotter's source with its Go dependencies
# (its daemon is built here: Debian ships no containerd-stargz-grpc), and ctr-remote.
PACKAGES+=(golang-go golang-github-containerd-stargz-snapshotter-dev stargz-snapshotter)

log() { printf '[rig %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then echo "scripts/rig.sh must run as root (it installs packages and builds a rootfs)" >&2; exit 1; fi
}

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# uv, pinned (base-layers/uv-version), from PyPI: the resolver the builder runs.
install_uv() {
  local want
  want=$(cat "$(dirname "$0")/../base-layers/uv-version")
  if [ "$(uv --version 2>/dev/null | awk '{print $2}')" != "$want" ]; then
    log "installing uv $want"
    rm -rf /opt/flops-uv
    command -v python3 >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip python3-venv >/dev/null; }
    mkdir -p "$RIG_STATE"
    if ! python3 -m pip install -q --disable-pip-version-check --target /opt/flops-uv "uv==$want" >"$RIG_STATE/uv-install.log" 2>&1; then
      cat "$RIG_STATE/uv-install.log" >&2
      echo "installing uv $want with pip failed (see above)" >&2
      return 1
    fi
    ln -sf /opt/flops-uv/bin/uv /usr/local/bin/uv
    uv --version >/dev/null
  fi
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 100); do listening "$1" && return 0; sleep 0.1; done
  echo "service on port $1 did not start; see $RIG_STATE/*.log" >&2; return 1
}

registry_config() { # name addr extra-yaml
  mkdir -p "$RIG_STATE/$1"
  cat >"$RIG_STATE/$1.yml" <<EOF
version: 0.1
log: { level: warn }
storage:
  filesystem: { rootdirectory: $RIG_STATE/$1 }
  delete: { enabled: true }
http:
  addr: $2
$3
EOF
}

start_services() {
  mkdir -p "$RIG_STATE"
  if ! listening 5000; then
    registry_config registry-plain $PLAIN ""
    log "starting plain registry on $PLAIN"
    setsid docker-registry serve "$RIG_STATE/registry-plain.yml" >"$RIG_STATE/registry-plain.log" 2>&1 < /dev/null 9>&- &
    wait_port 5000
  fi
  if ! listening 5001; then
    registry_config registry-mirror $MIRROR ""
    log "starting the docker.io mirror registry on $MIRROR"
    setsid docker-registry serve "$RIG_STATE/registry-mirror.yml" >"$RIG_STATE/registry-mirror.log" 2>&1 < /dev/null 9>&- &
    wait_port 5001
  fi
  if ! listening 5443; then
    if [ ! -f "$RIG_STATE/tls.crt" ]; then
      openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=127.0.0.1 \
        -addext subjectAltName=IP:127.0.0.1 -keyout "$RIG_STATE/tls.key" -out "$RIG_STATE/tls.crt" 2>/dev/null
      htpasswd -Bbn rig rigpass >"$RIG_STATE/htpasswd"
    fi
    registry_config registry-tls $TLS "  tls: { certificate: $RIG_STATE/tls.crt, key: $RIG_STATE/tls.key }
auth:
  htpasswd: { realm: flops-rig, path: $RIG_STATE/htpasswd }"
    log "starting TLS+basic-auth registry on $TLS"
    setsid docker-registry serve "$RIG_STATE/registry-tls.yml" >"$RIG_STATE/registry-tls.log" 2>&1 < /dev/null 9>&- &
    wait_port 5443
  fi
  if ! listening $MQTT_PORT; then
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' $MQTT_PORT >"$RIG_STATE/mosquitto.conf"
    log "starting mosquitto on 127.0.0.1:$MQTT_PORT"
    setsid mosquitto -c "$RIG_STATE/mosquitto.conf" >"$RIG_STATE/mosquitto.log" 2>&1 < /dev/null 9>&- &
    wait_port $MQTT_PORT
  fi
  start_mlflow
  start_containerd
}

# containerd as an Oakestra worker runs it, on its own socket (never the machine's default one).
CONTAINERD_SOCK=/run/flops-rig/containerd.sock
start_containerd() {
  if ctr -a $CONTAINERD_SOCK version >/dev/null 2>&1; then return 0; fi
  mkdir -p /run/flops-rig "$RIG_STATE/containerd"
  cat >"$RIG_STATE/containerd.toml" <<EOF
version = 2
root = "$RIG_STATE/containerd/root"
state = "/run/flops-rig/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
EOF
  log "starting containerd on $CONTAINERD_SOCK"
  setsid containerd --config "$RIG_STATE/containerd.toml" >"$RIG_STATE/containerd.log" 2>&1 < /dev/null 9>&- &
  for _ in $(seq 1 100); do ctr -a $CONTAINERD_SOCK version >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "containerd did not start; see $RIG_STATE/containerd.log" >&2; return 1
}

# The lazy node: a second containerd, as an Oakestra worker with the stargz snapshotter runs it,
# whose snapshotter `stargz` (a proxy plugin) is the containerd stargz snapshotter: an eStargz
# image pulled with `ctr-remote images rpull --plain-http` is mounted from the registry over
# FUSE, each file fetched and verified against the layer's TOC when it is read (containerd's
# own `ctr pull --snapshotter stargz` fetches every layer: it sets none of the labels the
# snapshotter needs). The daemon is built here from Debian's copy of the snapshotter's source
# (scripts/lazy-node/main.go over its service package). No background fetch: only what a task
# reads (and an image's prefetch landmark asks for) is fetched. The node starts empty whenever
# its snapshotter (re)starts: remote snapshots are not restored.
LAZY_SOCK=/run/flops-rig/lazy/containerd.sock
STARGZ_SOCK=/run/flops-rig/stargz/containerd-stargz-grpc.sock
STARGZ_BIN=$RIG_STATE/bin/flops-stargz-grpc
STARGZ_SRC=/usr/share/gocode/src/github.com/containerd/stargz-snapshotter

# Builds $STARGZ_BIN unless its stamp (the Debian source packages' versions, Go's, main.go's
# hash) is unchanged. Debian does not package the k8s CRI API, so the build uses a copy of the
# snapshotter's source without its CRI-label source and CRI keychain, which the rig never uses.
build_stargz_grpc() {
  local main pkg v stamp="" build copy
  main="$(cd "$(dirname "$0")" && pwd)/lazy-node/main.go"
  for pkg in golang-go golang-github-containerd-containerd-dev golang-github-containerd-stargz-snapshotter-dev; do
    v=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) || v=
    [ -n "$v" ] || { echo "the lazy node needs the Debian package $pkg: run scripts/rig.sh install" >&2; return 1; }
    stamp+="$pkg=$v "
  done
  stamp+="main.go=$(sha256sum <"$main" | cut -c1-16)"
  if [ "$(cat "$STARGZ_BIN.stamp" 2>/dev/null)" = "$stamp" ] && [ -x "$STARGZ_BIN" ]; then return 0; fi
  [ -f "$STARGZ_SRC/service/service.go" ] || { echo "$STARGZ_SRC is missing: run scripts/rig.sh install" >&2; return 1; }
  log "building flops-stargz-grpc (stargz snapshotter $(dpkg-query -W -f='${Version}' golang-github-containerd-stargz-snapshotter-dev), $(go version | awk '{print $3}'))"
  build=$(mktemp -d)
  mkdir -p "$build/src/github.com/containerd" "$build/src/flops-stargz-grpc" "$RIG_STATE/bin"
  cp -a "$STARGZ_SRC" "$build/src/github.com/containerd/"
  copy=$build/src/github.com/containerd/stargz-snapshotter
  rm -f "$copy/service/cri.go" "$copy/service/resolver/cri.go"
  sed -i '/sourceFromCRILabels(hosts)/d' "$copy/service/service.go"
  cp "$main" "$build/src/flops-stargz-grpc/main.go"
  # GOPATH mode over Debian's /usr/share/gocode; the build's own copy comes first in GOPATH.
  if ! (cd "$build/src/flops-stargz-grpc" && GO111MODULE=off GOPATH="$build:/usr/share/gocode" GOCACHE="$build/cache" GOFLAGS='' \
        go build -o "$STARGZ_BIN.tmp" .) >"$RIG_STATE/stargz-build.log" 2>&1; then
    cat "$RIG_STATE/stargz-build.log" >&2
    echo "building flops-stargz-grpc from $STARGZ_SRC failed (above; $RIG_STATE/stargz-build.log): scripts/lazy-node/main.go or the CRI edits in scripts/rig.sh build_stargz_grpc need updating for this version" >&2
    rm -rf "$build"; return 1
  fi
  rm -rf "$build"
  mv "$STARGZ_BIN.tmp" "$STARGZ_BIN"
  echo "$stamp" >"$STARGZ_BIN.stamp"
  # The daemon of the old binary stops, so that the new one serves (on an emptied node).
  local pid
  pid=$(socket_pid "$STARGZ_SOCK")
  if [ -n "$pid" ]; then
    log "stopping the old flops-stargz-grpc"
    stop_pid "$pid"
  fi
}

# The process listening on a unix socket (none: empty).
socket_pid() { ss -xlpn src "$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true; }

stop_pid() {
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}

# Empties the lazy node: its tasks, its containerd, its snapshotter's mounts and both their
# states go (all of it re-pullable), so that containerd's snapshots and the snapshotter's agree.
reset_lazy_node() {
  local pid ns t mp
  pid=$(socket_pid "$LAZY_SOCK")
  if [ -n "$pid" ]; then
    log "stopping the lazy node's containerd (the node starts empty with its snapshotter)"
    for ns in $(ctr -a $LAZY_SOCK namespaces ls -q 2>/dev/null); do
      for t in $(ctr -a $LAZY_SOCK -n "$ns" tasks ls -q 2>/dev/null); do
        ctr -a $LAZY_SOCK -n "$ns" tasks rm -f "$t" >/dev/null 2>&1 || true
      done
    done
    stop_pid "$pid"
  fi
  pid=$(socket_pid "$STARGZ_SOCK")
  [ -z "$pid" ] || stop_pid "$pid"
  # Stale FUSE and overlay mounts first (innermost first), then the state under them.
  for mp in $(awk '{print $5}' /proc/self/mountinfo | grep -E "^($RIG_STATE/stargz|$RIG_STATE/lazy|/run/flops-rig/lazy)(/|\$)" | sort -r); do
    umount -l "$mp" 2>/dev/null || true
  done
  rm -rf "$RIG_STATE/stargz" "$RIG_STATE/lazy" /run/flops-rig/lazy
}

start_stargz_grpc() {
  if [ ! -c /dev/fuse ]; then
    modprobe fuse 2>/dev/null || true
    [ -c /dev/fuse ] || { echo "/dev/fuse is missing: the lazy node needs FUSE (modprobe fuse; in a container, give it the device /dev/fuse and CAP_SYS_ADMIN)" >&2; return 1; }
  fi
  mkdir -p /run/flops-rig/stargz "$RIG_STATE/stargz"
  # The rig's plain registry over HTTP (the snapshotter would take 127.0.0.1 as plain anyway).
  cat >"$RIG_STATE/stargz.toml" <<EOF
no_background_fetch = true
[[resolver.host."$PLAIN".mirrors]]
  host = "$PLAIN"
  insecure = true
EOF
  log "starting the stargz snapshotter on $STARGZ_SOCK"
  setsid "$STARGZ_BIN" -address "$STARGZ_SOCK" -root "$RIG_STATE/stargz" -config "$RIG_STATE/stargz.toml" \
    >>"$RIG_STATE/stargz.log" 2>&1 < /dev/null 9>&- &
  local pid=$!
  for _ in $(seq 1 100); do
    [ -n "$(socket_pid "$STARGZ_SOCK")" ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  tail -5 "$RIG_STATE/stargz.log" >&2
  echo "the stargz snapshotter did not start; see $RIG_STATE/stargz.log" >&2; return 1
}

# The lazy node's containerd answers, and so does its stargz snapshotter.
lazy_node_ready() { [ -S $LAZY_SOCK ] && ctr -a $LAZY_SOCK snapshots --snapshotter stargz ls >/dev/null 2>&1; }

start_lazy_node() {
  build_stargz_grpc
  if [ -z "$(socket_pid "$STARGZ_SOCK")" ]; then
    reset_lazy_node
    start_stargz_grpc
  fi
  if [ -z "$(socket_pid "$LAZY_SOCK")" ]; then
    mkdir -p /run/flops-rig/lazy "$RIG_STATE/lazy"
    cat >"$RIG_STATE/lazy-containerd.toml" <<EOF
version = 2
root = "$RIG_STATE/lazy/root"
state = "/run/flops-rig/lazy/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$LAZY_SOCK"
[ttrpc]
  address = "$LAZY_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[proxy_plugins]
  [proxy_plugins.stargz]
    type = "snapshot"
    address = "$STARGZ_SOCK"
EOF
    log "starting the lazy node's containerd on $LAZY_SOCK (snapshotter stargz)"
    setsid containerd --config "$RIG_STATE/lazy-containerd.toml" >"$RIG_STATE/lazy-containerd.log" 2>&1 < /dev/null 9>&- &
  fi
  for _ in $(seq 1 100); do lazy_node_ready && return 0; sleep 0.1; done
  ctr -a $LAZY_SOCK snapshots --snapshotter stargz ls >&2 || true
  echo "the lazy node's containerd ($LAZY_SOCK) did not start or does not reach the stargz snapshotter; see $RIG_STATE/lazy-containerd.log and $RIG_STATE/stargz.log" >&2
  return 1
}

# A venv made by uv from requirement arguments (`-r FILE` or specifiers), rebuilt only when
# the arguments or the files they name change. $1=name, then uv pip install arguments.
make_venv() {
  local name=$1; shift
  local dir="$RIG_STATE/$name" stamp arg prev=""
  stamp=$( { printf '%s\n' "$@"; for arg in "$@"; do [ "$prev" = -r ] && cat "$arg"; prev=$arg; done; } | sha256sum | cut -c1-16)
  if [ "$(cat "$dir.stamp" 2>/dev/null)" = "$stamp" ] && [ -x "$dir/bin/python" ]; then return 0; fi
  log "creating the Python env $dir"
  rm -rf "$dir"
  uv venv -q "$dir" --python "$(command -v python3)"
  uv pip install -q --python "$dir/bin/python" "$@"
  echo "$stamp" >"$dir.stamp"
}

# The FL runtimes' own tests (pytest) run against their requirements at both ends of the
# allowed ranges: newest (pyenv) and lowest direct versions (pyenv-lowest).
build_pyenv() {
  local here reqs=()
  here="$(cd "$(dirname "$0")/.." && pwd)"
  for f in "$here"/base-layers/fl-*/requirements.txt "$here"/base-layers/*/tests/test-requirements.txt; do
    [ -f "$f" ] && reqs+=(-r "$f")
  done
  make_venv pyenv "${reqs[@]}" "pytest>=8"
  make_venv pyenv-lowest --resolution lowest-direct --no-build "${reqs[@]}" "pytest>=8"
  make_venv mlflow "${MLFLOW_SERVER[@]}"
  # Independent checkers the Rust tests call: the SPDX validator of the SPDX project.
  make_venv tools "spdx-tools>=0.8,<0.9"
}

start_mlflow() {
  if curl -fsS "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null 2>&1; then return 0; fi
  [ -x "$RIG_STATE/mlflow/bin/mlflow" ] || { echo "the MLflow env is missing: run scripts/rig.sh pyenv" >&2; return 1; }
  mkdir -p "$RIG_STATE/mlflow-data/artifacts"
  log "starting the MLflow tracking server on 127.0.0.1:$MLFLOW_PORT"
  setsid "$RIG_STATE/mlflow/bin/mlflow" server --host 127.0.0.1 --port $MLFLOW_PORT --workers 2 \
    --backend-store-uri "sqlite:///$RIG_STATE/mlflow-data/mlflow.db" \
    --artifacts-destination "$RIG_STATE/mlflow-data/artifacts" --serve-artifacts \
    >"$RIG_STATE/mlflow.log" 2>&1 < /dev/null 9>&- &
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "the MLflow server did not start; see $RIG_STATE/mlflow.log" >&2; return 1
}

# The mirror comes from this machine's own apt sources, never a hard-coded host.
apt_mirror() {
  local m
  m=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1)
  [ -n "$m" ] || m=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' | grep -v security | head -1)
  [ -n "$m" ] || { echo "no Debian mirror found in /etc/apt/sources*" >&2; exit 1; }
  echo "$m"
}

# rootfs tarball, cached by its suite and package list. $1=arch $2=variant $3=packages $4=suite
# Bumped when the rootfs recipe changes, so cached tarballs and pushed bases are rebuilt.
# v2: docs, man pages and locales really left out (dpkg's path-exclude takes no braces).
# v3: merged /usr by mmdebstrap's hook, not the usrmerge package (which pulls in all of perl).
# v4: the suite is part of the recipe (bookworm and trixie bases).
ROOTFS_VERSION=v4
rootfs() {
  local suite=${4:-bookworm}
  local out="$RIG_CACHE/rootfs-$ROOTFS_VERSION-$suite-$1-$2-$(echo "$3" | tr ',' '_').tar"
  if [ ! -s "$out" ]; then
    mkdir -p "$RIG_CACHE"
    log "mmdebstrap $suite $1 ($2): $3"
    # No device nodes: umoci unpack as root in an unprivileged container cannot mknod.
    mmdebstrap --quiet --format=tar --variant="$2" --architectures="$1" --include="$3" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr --skip=output/dev \
      "$suite" "$out.tmp" "$(apt_mirror)" >&2
    mv "$out.tmp" "$out"
  fi
  echo "$out"
}

# Pushes library/<name>:<tag> to each registry of $REGISTRIES (space separated; default the
# plain one) as an index of linux/amd64 + linux/arm64 (and each platform alone as <tag>-amd64 /
# <tag>-arm64, plus a Docker v2s2 copy as <tag>-docker), from Debian <suite> packages.
push_base() { # name tag packages [suite]
  local name=$1 tag=$2 pkgs=$3 suite=${4:-bookworm} reg todo=()
  for reg in ${REGISTRIES:-$PLAIN}; do
    local stamp="$RIG_STATE/base-${reg//[:.]/_}-$name-$tag.pkgs"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$ROOTFS_VERSION $suite $pkgs" ] && skopeo inspect --raw --tls-verify=false "docker://$reg/library/$name:$tag" >/dev/null 2>&1; then
      log "base $reg/library/$name:$tag already present"
    else
      todo+=("$reg")
    fi
  done
  [ ${#todo[@]} -gt 0 ] || return 0
  local amd arm layout pyver
  amd=$(rootfs amd64 essential "$pkgs" "$suite")
  arm=$(rootfs arm64 extract "$pkgs" "$suite")
  layout=$(mktemp -d)
  # PYTHON_VERSION as the official python images set it: read from the installed Debian package.
  pyver=$(tar -xOf "$amd" ./var/lib/dpkg/status | awk '/^Package: python3\.[0-9]+-minimal$/{f=1} f&&/^Version:/{print $2; exit}' | cut -d- -f1)
  [ -n "$pyver" ] || { echo "cannot read the python version from $amd" >&2; exit 1; }
  umoci init --layout "$layout/oci" >/dev/null
  for arch in amd64 arm64; do
    local tarball=$amd; [ $arch = arm64 ] && tarball=$arm
    umoci new --image "$layout/oci:$arch" >/dev/null
    umoci raw add-layer --image "$layout/oci:$arch" "$tarball" >/dev/null
    umoci config --image "$layout/oci:$arch" --os linux --architecture $arch \
      --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --config.env LANG=C.UTF-8 --config.env PYTHON_VERSION="$pyver" \
      --config.cmd python3 --history.created_by "mmdebstrap $suite $pkgs" >/dev/null
  done
  python3 "$(dirname "$0")/make-index.py" "$layout/oci" "$tag" amd64 arm64
  for reg in "${todo[@]}"; do
    log "pushing $reg/library/$name:$tag"
    skopeo copy --quiet --all --dest-tls-verify=false "oci:$layout/oci:$tag" "docker://$reg/library/$name:$tag"
    for arch in amd64 arm64; do
      skopeo copy --quiet --dest-tls-verify=false "oci:$layout/oci:$arch" "docker://$reg/library/$name:$tag-$arch"
    done
    skopeo copy --quiet --format v2s2 --dest-tls-verify=false "oci:$layout/oci:amd64" "docker://$reg/library/$name:$tag-docker"
    echo "$ROOTFS_VERSION $suite $pkgs" >"$RIG_STATE/base-${reg//[:.]/_}-$name-$tag.pkgs"
  done
  rm -rf "$layout"
}

# What python:X.Y-slim offers wheels: python3 with the standard library the official images
# have (Debian splits distutils and lib2to3 out of 3.11's), CA certificates, libstdc++ and
# libgomp (scipy, scikit-learn and pyarrow link against them). The target registry gets 3.11;
# the docker.io mirror gets 3.11 (bookworm) and 3.13 (trixie), as Docker Hub has them.
BOOKWORM_PYTHON=python3,python-is-python3,python3-distutils,python3-lib2to3,ca-certificates,libstdc++6,libgomp1
TRIXIE_PYTHON=python3,python-is-python3,ca-certificates,libstdc++6,libgomp1
build_base() {
  REGISTRIES="$PLAIN $MIRROR" push_base python 3.11-slim "$BOOKWORM_PYTHON" bookworm
  REGISTRIES="$MIRROR" push_base python 3.13-slim "$TRIXIE_PYTHON" trixie
}

# The builder's own image (scripts/self-package.sh) goes on this, as the Dockerfile's final
# stage goes on debian:bookworm-slim: CA certificates, and python3 for uv (uv needs an
# interpreter to resolve, even for another Python version).
build_builder_base() {
  push_base flops-builder-base bookworm ca-certificates,python3
}

# For bench/ only: the base buildah's Dockerfile pip-installs into (amd64).
build_bench_base() {
  local pkgs=python3,python3-pip,python-is-python3,ca-certificates,libstdc++6,libgomp1
  local stamp="$RIG_STATE/base-python-3.11-pip.pkgs"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$ROOTFS_VERSION $pkgs" ] && skopeo inspect --raw --tls-verify=false "docker://$PLAIN/library/python:3.11-pip" >/dev/null 2>&1; then
    return 0
  fi
  local tarball layout
  tarball=$(rootfs amd64 essential "$pkgs")
  layout=$(mktemp -d)
  umoci init --layout "$layout/oci" >/dev/null
  umoci new --image "$layout/oci:pip" >/dev/null
  umoci raw add-layer --image "$layout/oci:pip" "$tarball" >/dev/null
  umoci config --image "$layout/oci:pip" --os linux --architecture amd64 \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --config.cmd python3 >/dev/null
  skopeo copy --quiet --dest-tls-verify=false "oci:$layout/oci:pip" "docker://$PLAIN/library/python:3.11-pip"
  rm -rf "$layout"
  echo "$ROOTFS_VERSION $pkgs" >"$stamp"
}

need_root
# One rig run at a time (tests, helpers and CI may start it concurrently; venvs are rebuilt in place).
mkdir -p /run/flops-rig
# Services started below close fd 9 (`9>&-`): a daemon holding it would hold the lock forever.
exec 9>/run/flops-rig/rig.lock
flock 9
case "${1:-all}" in
  install) install_packages; install_uv ;;
  services) start_services ;;
  base) build_base ;;
  pyenv) install_uv; build_pyenv ;;
  builder-base) start_services; build_builder_base ;;
  bench-base) start_services; build_bench_base ;;
  lazy) install_packages; start_lazy_node ;;
  all) install_packages; install_uv; build_pyenv; start_services; build_base; build_builder_base; start_lazy_node ;;
  *) echo "usage: $0 [install|services|base|builder-base|pyenv|bench-base|lazy|all]" >&2; exit 2 ;;
esac
