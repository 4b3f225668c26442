#!/usr/bin/env bash
# Test rig: installs (Debian packages) and starts the real services the tests and the demo use,
# and builds + pushes the test base image. Idempotent: safe to run again; services already up
# are left alone and rootfs tarballs are cached in $RIG_CACHE.
#
#   plain registry   http://127.0.0.1:5000   (CNCF distribution 2.8, no auth)
#   TLS registry     https://127.0.0.1:5443  (self-signed cert, htpasswd basic auth rig/rigpass)
#   MQTT broker      127.0.0.1:9027          (mosquitto)
#   containerd       /run/flops-rig/containerd.sock (its own instance; tests use namespace flops-test)
#   Python env       /var/lib/flops-rig/pyenv    (the FL runtime's deps + pytest, for its tests)
#   base image       127.0.0.1:5000/library/python:3.11-slim  (index: linux/amd64 + linux/arm64)
#   builder base     127.0.0.1:5000/library/flops-builder-base:bookworm (for the builder's own image)
#
# Must run as root on Debian bookworm. Usage: scripts/rig.sh [install|services|base|builder-base|pyenv|bench-base|all]
set -euo pipefail

RIG_STATE=${RIG_STATE:-/var/lib/flops-rig}
RIG_CACHE=${RIG_CACHE:-/var/cache/flops-rig}
PLAIN=127.0.0.1:5000
TLS=127.0.0.1:5443
MQTT_PORT=9027
PACKAGES=(docker-registry mosquitto mosquitto-clients containerd skopeo umoci mmdebstrap apache2-utils openssl curl jq ca-certificates git file zstd binutils libssl-dev pkg-config)

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
    python3 -m pip install -q --disable-pip-version-check --target /opt/flops-uv "uv==$want" 2>&1 | grep -v 'Running pip as the' >&2 || true
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
    setsid docker-registry serve "$RIG_STATE/registry-plain.yml" >"$RIG_STATE/registry-plain.log" 2>&1 < /dev/null &
    wait_port 5000
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
    setsid docker-registry serve "$RIG_STATE/registry-tls.yml" >"$RIG_STATE/registry-tls.log" 2>&1 < /dev/null &
    wait_port 5443
  fi
  if ! listening $MQTT_PORT; then
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' $MQTT_PORT >"$RIG_STATE/mosquitto.conf"
    log "starting mosquitto on 127.0.0.1:$MQTT_PORT"
    setsid mosquitto -c "$RIG_STATE/mosquitto.conf" >"$RIG_STATE/mosquitto.log" 2>&1 < /dev/null &
    wait_port $MQTT_PORT
  fi
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
  setsid containerd --config "$RIG_STATE/containerd.toml" >"$RIG_STATE/containerd.log" 2>&1 < /dev/null &
  for _ in $(seq 1 100); do ctr -a $CONTAINERD_SOCK version >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "containerd did not start; see $RIG_STATE/containerd.log" >&2; return 1
}

# The FL runtime's own tests (pytest) run in a venv with its requirements, made by uv.
build_pyenv() {
  local req stamp
  req="$(dirname "$0")/../base-layers/fl-learner/requirements.txt"
  stamp="$(sha256sum "$req" | cut -c1-16) pytest"
  if [ "$(cat "$RIG_STATE/pyenv.stamp" 2>/dev/null)" = "$stamp" ] && [ -x "$RIG_STATE/pyenv/bin/python" ]; then
    return 0
  fi
  log "creating the runtime's Python env in $RIG_STATE/pyenv"
  rm -rf "$RIG_STATE/pyenv"
  uv venv -q "$RIG_STATE/pyenv" --python "$(command -v python3)"
  uv pip install -q --python "$RIG_STATE/pyenv/bin/python" -r "$req" pytest
  echo "$stamp" >"$RIG_STATE/pyenv.stamp"
}


# The mirror comes from this machine's own apt sources, never a hard-coded host.
apt_mirror() {
  local m
  m=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1)
  [ -n "$m" ] || m=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' | grep -v security | head -1)
  [ -n "$m" ] || { echo "no Debian mirror found in /etc/apt/sources*" >&2; exit 1; }
  echo "$m"
}

# rootfs tarball, cached by its package list. $1=arch $2=variant $3=packages
# Bumped when the rootfs recipe changes, so cached tarballs and pushed bases are rebuilt.
# v2: docs, man pages and locales really left out (dpkg's path-exclude takes no braces).
# v3: merged /usr by mmdebstrap's hook, not the usrmerge package (which pulls in all of perl).
ROOTFS_VERSION=v3
rootfs() {
  local out="$RIG_CACHE/rootfs-$ROOTFS_VERSION-$1-$2-$(echo "$3" | tr ',' '_').tar"
  if [ ! -s "$out" ]; then
    mkdir -p "$RIG_CACHE"
    log "mmdebstrap $1 ($2): $3"
    # No device nodes: umoci unpack as root in an unprivileged container cannot mknod.
    mmdebstrap --quiet --format=tar --variant="$2" --architectures="$1" --include="$3" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr --skip=output/dev \
      bookworm "$out.tmp" "$(apt_mirror)" >&2
    mv "$out.tmp" "$out"
  fi
  echo "$out"
}

# Pushes 127.0.0.1:5000/library/<name>:<tag> as an index of linux/amd64 + linux/arm64 (and each
# platform alone as <tag>-amd64 / <tag>-arm64, plus a Docker v2s2 copy as <tag>-docker).
push_base() { # name tag packages
  local name=$1 tag=$2 pkgs=$3
  local stamp="$RIG_STATE/base-$name-$tag.pkgs"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$ROOTFS_VERSION $pkgs" ] && skopeo inspect --raw --tls-verify=false "docker://$PLAIN/library/$name:$tag" >/dev/null 2>&1; then
    log "base $PLAIN/library/$name:$tag already present"; return 0
  fi
  local amd arm layout pyver
  amd=$(rootfs amd64 essential "$pkgs")
  arm=$(rootfs arm64 extract "$pkgs")
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
      --config.cmd python3 --history.created_by "mmdebstrap bookworm $pkgs" >/dev/null
  done
  python3 "$(dirname "$0")/make-index.py" "$layout/oci" "$tag" amd64 arm64
  log "pushing $PLAIN/library/$name:$tag"
  skopeo copy --quiet --all --dest-tls-verify=false "oci:$layout/oci:$tag" "docker://$PLAIN/library/$name:$tag"
  for arch in amd64 arm64; do
    skopeo copy --quiet --dest-tls-verify=false "oci:$layout/oci:$arch" "docker://$PLAIN/library/$name:$tag-$arch"
  done
  skopeo copy --quiet --format v2s2 --dest-tls-verify=false "oci:$layout/oci:amd64" "docker://$PLAIN/library/$name:$tag-docker"
  rm -rf "$layout"
  echo "$ROOTFS_VERSION $pkgs" >"$stamp"
}

build_base() {
  # What python:3.11-slim offers wheels: python3, CA certificates, libstdc++ and libgomp
  # (scipy, scikit-learn and pyarrow link against them).
  push_base python 3.11-slim python3,python-is-python3,ca-certificates,libstdc++6,libgomp1
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
case "${1:-all}" in
  install) install_packages; install_uv ;;
  services) start_services ;;
  base) build_base ;;
  pyenv) install_uv; build_pyenv ;;
  builder-base) start_services; build_builder_base ;;
  bench-base) start_services; build_bench_base ;;
  all) install_packages; install_uv; start_services; build_base; build_builder_base; build_pyenv ;;
  *) echo "usage: $0 [install|services|base|builder-base|pyenv|bench-base|all]" >&2; exit 2 ;;
esac
