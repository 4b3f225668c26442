#!/usr/bin/env bash
# The builder packages itself, without Docker: `append` puts its own binary and the pinned uv
# onto a Debian base with CA certificates and python3 — the same files, user, env and
# entrypoint as the Dockerfile's final stage (tests/selfpackage.rs compares them).
#
#   scripts/self-package.sh [TARGET_REF]
#     TARGET_REF  default 127.0.0.1:5000/flops/image-builder:<version>
#     BIN         the builder binary to package (default: a fresh `cargo build --release`)
#     BUILDER     the builder that does the packaging (default: BIN)
#     BASE        default http://127.0.0.1:5000/library/flops-builder-base:bookworm (scripts/rig.sh builder-base)
#     UV          the uv binary (default: `command -v uv`, which must be base-layers/uv-version)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-http://127.0.0.1:5000/library/flops-builder-base:bookworm}
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked >&2
  BIN=target/release/flops-image-builder
fi
BUILDER=${BUILDER:-$BIN}
VERSION=$("$BIN" --version | awk '{print $2}')
TARGET=${1:-127.0.0.1:5000/flops/image-builder:$VERSION}
UV=${UV:-$(command -v uv || true)}
want=$(cat base-layers/uv-version)
have=$("$UV" --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  echo "uv $want is needed (found ${have:-none} at ${UV:-PATH}); install it with scripts/rig.sh install" >&2
  exit 2
fi
# Plain HTTP for the registries given as http:// (the local rig), as `build` does.
insecure=()
for ref in "$BASE" "$TARGET"; do
  case $ref in http://*) h=${ref#http://}; insecure+=(--insecure-registry "${h%%/*}") ;; esac
done
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# Both binaries (stripped of debug info: a debug build is mostly that) and the SLA's main.py.
mkdir -p "$stage/usr/local/bin" "$stage/opt/flops-image-builder"
strip -o "$stage/usr/local/bin/flops-image-builder" "$BIN"
cp "$UV" "$stage/usr/local/bin/uv"
# FLOps' SLA runs `python3 main.py <args>` in the working directory (Dockerfile: the same file).
install -m 0755 builder-image/main.py "$stage/opt/flops-image-builder/main.py"
# Not exec: the EXIT trap must still remove the staged copy (58 MB a run).
"$BUILDER" append --base "$BASE" --tag "${TARGET#http://}" "${insecure[@]}" \
  --platform linux/amd64 \
  --dir "$stage/usr:/usr" --dir "$stage/opt:/opt" \
  --workdir /opt/flops-image-builder \
  --env FLOPS_CACHE_DIR=/tmp/flops-image-builder --env HOME=/tmp \
  --env UV_CACHE_DIR=/tmp/uv-cache --env UV_PYTHON_DOWNLOADS=never \
  --user 65532:65532 \
  --entrypoint /usr/local/bin/flops-image-builder --cmd --help \
  --label org.opencontainers.image.title=flops-image-builder \
  --label "org.opencontainers.image.version=$VERSION" \
  "${@:2}"
