#!/usr/bin/env bash
# Benchmark (not a test) for `append`: ~270 MB of real Python packages (numpy, scipy,
# scikit-learn, pandas: wheels from PyPI, unpacked) appended onto the base and pushed, against
# `buildah build` (FROM base; COPY dir) + `buildah push` of the same content, in one run on the
# same machine. Prints ratios (the machines are noisy; absolute times mean little) and peak RSS.
# Run as root after scripts/rig.sh. Writes bench/out/append-<date>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_setup
BENCH=${BENCH_DIR:-/var/cache/flops-bench}
# A fresh, empty registry for this run (only the base in it), so "cold" really uploads.
PORT=5101
REG=127.0.0.1:$PORT
BASE=$REG/library/python:3.11-slim-amd64
ID=$(date +%s)

if [ ! -d "$BENCH/site" ]; then
  mkdir -p "$BENCH/wheels" "$BENCH/site.tmp"
  pip download -q --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 --no-deps \
    -d "$BENCH/wheels" numpy==1.26.4 scipy==1.13.1 scikit-learn==1.5.2 pandas==2.2.3
  for w in "$BENCH"/wheels/*.whl; do python3 -m zipfile -e "$w" "$BENCH/site.tmp/"; done
  mv "$BENCH/site.tmp" "$BENCH/site"
fi
# Twice the data in one layer, to show peak memory does not grow with layer size.
if [ ! -d "$BENCH/site2x" ]; then mkdir -p "$BENCH/site2x"; cp -al "$BENCH/site" "$BENCH/site2x/a"; cp -al "$BENCH/site" "$BENCH/site2x/b"; fi
SIZE=$(du -sm "$BENCH/site" | cut -f1)
FILES=$(find "$BENCH/site" -type f | wc -l)

fresh_registry "$REG" library/python:3.11-slim-amd64
uploaded() { jq -r '.bytes_uploaded' "$T/$1.out" | awk '{printf "%.1f MB", $1/1e6}'; }

ours() { # name cache extra-args...
  local n=$1 cache=$2; shift 2
  run "$n" "$BIN" -q append --base "http://$BASE" --tag "http://$REG/bench/ours-$n:$ID" --cache-dir "$cache" --json "$@"
}
echo "== ours: cold (empty cache), warm (nothing changed), zstd, 2x data" >&2
ours cold "$T/c1" --dir "$BENCH/site:/opt/site"
run warm "$BIN" -q append --base "http://$BASE" --tag "http://$REG/bench/ours-cold:$ID" --cache-dir "$T/c1" --json --dir "$BENCH/site:/opt/site"
ours zstd "$T/c2" --dir "$BENCH/site:/opt/site" --compression zstd
ours gz1 "$T/c3" --dir "$BENCH/site:/opt/site" --compression-level 1
ours big "$T/c4" --dir "$BENCH/site2x:/opt/site"

echo "== buildah: build (FROM base, COPY) + push, vfs storage, cold" >&2
buildah --storage-driver vfs rm --all >/dev/null 2>&1 || true
buildah --storage-driver vfs rmi --all --force >/dev/null 2>&1 || true
mkdir -p "$T/ctx"; cp -al "$BENCH/site" "$T/ctx/site"
printf 'FROM %s\nCOPY site /opt/site\n' "$BASE" >"$T/ctx/Dockerfile"
run bbuild buildah --storage-driver vfs build -q --isolation chroot --tls-verify=false -t "bench-$ID" "$T/ctx"
run bpush buildah --storage-driver vfs push -q --tls-verify=false "bench-$ID" "docker://$REG/bench/buildah:$ID"
BT=$(sum_secs bbuild bpush)
BRSS=$(max_rss bbuild bpush)
buildah --storage-driver vfs rmi --force "bench-$ID" >/dev/null 2>&1 || true

OUT=bench/out/append-$(date +%F).md
mkdir -p bench/out
{
  echo "# append benchmark — $(date -u +'%F %H:%M UTC')"
  echo
  echo "Machine: $(machine). Workload: $SIZE MB in $FILES files (numpy, scipy, scikit-learn, pandas unpacked) appended onto the base and pushed to a fresh local registry."
  echo
  echo "| run | time vs buildah (build+push) | peak RSS | uploaded |"
  echo "|---|---|---|---|"
  echo "| buildah build + push (vfs) | 1.0× | $BRSS MB | |"
  echo "| ours cold, gzip -6 (default) | $(ratio "$BT" "$(secs cold)") faster | $(rss cold) MB | $(uploaded cold) |"
  echo "| ours cold, gzip -1 | $(ratio "$BT" "$(secs gz1)") faster | $(rss gz1) MB | $(uploaded gz1) |"
  echo "| ours cold, zstd -3 | $(ratio "$BT" "$(secs zstd)") faster | $(rss zstd) MB | $(uploaded zstd) |"
  echo "| ours warm (nothing changed) | $(ratio "$BT" "$(secs warm)") faster ($(secs warm) s) | $(rss warm) MB | $(uploaded warm) |"
  echo "| ours cold, 2× data in one layer | $(ratio "$BT" "$(secs big)") faster (2× the work) | $(rss big) MB | $(uploaded big) |"
  echo
  echo "Absolute seconds (noisy, for reference): buildah $BT (build $(secs bbuild), push $(secs bpush)); ours cold $(secs cold), gzip -1 $(secs gz1), zstd $(secs zstd), warm $(secs warm), 2× $(secs big)."
} | tee "$OUT"
