#!/usr/bin/env bash
# Builds the Dockerfile with buildah where Docker Hub and GHCR are out of reach (this network):
# its three FROM images are replaced by local stand-ins under the same names, made from Debian
# packages (mmdebstrap), the host's Rust toolchain and the pinned uv. Then the image is pushed
# to the rig's registry and run as an unprivileged containerd task (`--version`; its user,
# capabilities and uv). Not part of .ci/run (about 10 minutes cold, mostly the release build);
# run as root after scripts/rig.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
B="buildah --storage-driver vfs"
REG=127.0.0.1:5000
UV_VERSION=$(cat base-layers/uv-version)
RUST_VERSION=$(sed -n 's/^FROM rust:\([0-9.]*\)-bookworm.*/\1/p' Dockerfile)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
# The Debian mirror of this machine's apt sources, as scripts/rig.sh picks it.
eval "$(sed -n '/^apt_mirror()/,/^}/p' scripts/rig.sh)"
mirror=$(apt_mirror)
log() { printf '[check-dockerfile %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

standin() { # name "tarball..." [env...]
  local name=$1 tars=$2 c tar
  shift 2
  c=$($B from scratch)
  for tar in $tars; do $B add "$c" "$tar" / >/dev/null; done
  for e in "$@"; do $B config --env "$e" "$c"; done
  $B commit -q "$c" "$name" >/dev/null
  $B rm "$c" >/dev/null
}

if ! $B inspect docker.io/library/debian:bookworm-slim >/dev/null 2>&1; then
  log "stand-in debian:bookworm-slim (mmdebstrap minbase)"
  mmdebstrap --quiet --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --skip=output/dev bookworm "$T/slim.tar" "$mirror" >&2
  standin docker.io/library/debian:bookworm-slim "$T/slim.tar" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
fi
if ! $B inspect "docker.io/library/rust:$RUST_VERSION-bookworm" >/dev/null 2>&1; then
  log "stand-in rust:$RUST_VERSION-bookworm (build-essential, the host's toolchain)"
  mmdebstrap --quiet --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include=build-essential,pkg-config,libssl-dev,ca-certificates,git \
    --skip=output/dev bookworm "$T/rust.tar" "$mirror" >&2
  # The host's toolchain (its version, not necessarily $RUST_VERSION) without its docs.
  tc=$(rustc --print sysroot)
  mkdir -p "$T/rt/usr/local/rust"
  cp -a "$tc/bin" "$tc/lib" "$T/rt/usr/local/rust/"
  mkdir -p "$T/rt/etc/ssl/certs"
  # This network's TLS is re-signed by a CA only the host trusts; crates.io needs it.
  cp /etc/ssl/certs/ca-certificates.crt "$T/rt/etc/ssl/certs/host-ca.crt"
  tar -C "$T/rt" -cf "$T/rt.tar" .
  standin "docker.io/library/rust:$RUST_VERSION-bookworm" "$T/rust.tar $T/rt.tar" \
    PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_HOME=/usr/local/cargo SSL_CERT_FILE=/etc/ssl/certs/host-ca.crt \
    CARGO_HTTP_CAINFO=/etc/ssl/certs/host-ca.crt
fi
if ! $B inspect "ghcr.io/astral-sh/uv:$UV_VERSION" >/dev/null 2>&1; then
  log "stand-in ghcr.io/astral-sh/uv:$UV_VERSION (the pinned uv from PyPI)"
  mkdir -p "$T/uv" && cp "$(command -v uv)" "$T/uv/uv" && tar -C "$T/uv" -cf "$T/uv.tar" .
  standin "ghcr.io/astral-sh/uv:$UV_VERSION" "$T/uv.tar"
fi

log "buildah build of the Dockerfile"
$B build --pull=never --isolation chroot --layers \
  --build-arg FLOPS_GIT_COMMIT="$(git rev-parse --short=12 HEAD)" \
  -t flops-image-builder:dockerfile . >&2
$B push -q --tls-verify=false flops-image-builder:dockerfile "docker://$REG/flops/image-builder:dockerfile"
log "pushed $REG/flops/image-builder:dockerfile"
skopeo inspect --config --tls-verify=false "docker://$REG/flops/image-builder:dockerfile" | jq -c '.config | {User, Entrypoint, Cmd, Env}'
skopeo inspect --raw --tls-verify=false "docker://$REG/flops/image-builder:dockerfile" | jq '[.layers[].size] | add / 1e6 | "compressed size \(.) MB"'

CTR=(ctr -a /run/flops-rig/containerd.sock -n flops-test)
"${CTR[@]}" images pull --plain-http "$REG/flops/image-builder:dockerfile" >/dev/null
run_task() { # id args...
  local id=$1; shift
  unshare -m --propagation private sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"' sh \
    "${CTR[@]}" run --rm --net-host --read-only \
    --mount type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev:mode=1777 \
    "$REG/flops/image-builder:dockerfile" "$id" "$@"
}
run_task dockerfile-version-$$ /usr/local/bin/flops-image-builder --version
run_task dockerfile-id-$$ sh -c 'id -u; grep CapEff /proc/self/status; uv --version'
"${CTR[@]}" images rm "$REG/flops/image-builder:dockerfile" >/dev/null
log "the Dockerfile's image builds, runs as 65532 without capabilities on a read-only rootfs"
