#!/usr/bin/env bash
# The hand-made pipeline bench/big.sh compares against, for one platform: install the lock
# with uv (its own cold cache), tar the tree (sorted, numeric owners, mtime 0), hash it
# (diff_id), compress with pigz on every core, hash the result (digest) and upload that blob
# (distribution spec: POST, then a streamed PUT ?digest=).
# usage: hand.sh LOCK PLATFORM-TAG REGISTRY(HOST:PORT) WORKDIR
set -euo pipefail
lock=$1 platform=$2 registry=$3 dir=$4
mkdir -p "$dir"
UV_CACHE_DIR=$dir/uv-cache uv pip install -q --target "$dir/site" --python-platform "$platform" \
  --python-version 3.11 --no-deps --no-compile -r "$lock"
tar -C "$dir/site" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf - . |
  tee >(sha256sum >"$dir/diff_id") | pigz -6 -p"$(nproc)" | tee "$dir/layer.tar.gz" |
  sha256sum | cut -d' ' -f1 >"$dir/digest"
loc=$(curl -sfi -X POST "http://$registry/v2/hand/blobs/uploads/" | tr -d '\r' |
  awk 'tolower($1) == "location:" {print $2}')
case $loc in http*) ;; *) loc="http://$registry$loc" ;; esac
curl -sf -T "$dir/layer.tar.gz" -H 'Content-Type: application/octet-stream' \
  "$loc&digest=sha256:$(cat "$dir/digest")" >/dev/null
