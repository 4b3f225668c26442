#!/usr/bin/env bash
# Benchmark (not a test) for big ML images: a PyTorch repo (torch 2.1.1 with its CUDA wheels,
# torchvision, pandas; the FL runtime) or a TensorFlow one, built cold by this builder and, in the same run:
#   - the hand-made pipeline: `uv pip install --target` of the same lock (cold uv cache) + tar
#     + pigz -6 -p<cores> + upload of the same bytes (bench/hand.sh);
#   - the physical floor: download + inflate + sha256 of every wheel member + upload,
#     overlapped (bench/floor.py);
#   - `buildah build` of the upstream-style Dockerfile + `buildah push` (amd64);
# for linux/amd64 and for linux/amd64 + linux/arm64; then the compression policy (gzip -6,
# gzip -1, zstd -3) with the wheels already downloaded. Every run pushes to a fresh registry
# and starts from empty caches. Writes bench/out/big-<workload>-<date>.md. Run as root.
#   WORKLOAD=tensorflow measures a TensorFlow repo (tensorflow 2.15.1, pandas) instead.
#   OLD_BIN=path adds a row for another build of the builder (e.g. before a change).
#   SKIP_BUILDAH=1 leaves buildah out (it takes several minutes here); SKIP_TWO=1 the two-platform runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_setup
scripts/rig.sh bench-base >&2
command -v pigz >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pigz >/dev/null; }
PORT=5200
n_reg=0
# A new empty registry (holding only the given images) for each run, at $R (not a command
# substitution: the counter must survive).
# The previous run's registry is stopped and deleted first (each holds gigabytes).
reg() {
  if [ -n "${R:-}" ]; then
    kill "${REGPIDS[-1]}" 2>/dev/null || true
    wait "${REGPIDS[-1]}" 2>/dev/null || true
    rm -rf "$T/registry-${R##*:}"
  fi
  n_reg=$((n_reg + 1))
  R=127.0.0.1:$((PORT + n_reg))
  fresh_registry "$R" "$@"
}

WORKLOAD=${WORKLOAD:-torch}
case $WORKLOAD in
  torch) PINS='torch==2.1.1 torchvision==0.16.1 pandas==2.1.4'
    WHAT='torch 2.1.1 (with its CUDA wheels on amd64), torchvision 0.16.1, pandas 2.1.4' ;;
  tensorflow) PINS='tensorflow==2.15.1 pandas==2.1.4'
    WHAT='tensorflow 2.15.1, pandas 2.1.4' ;;
  *) echo "WORKLOAD is torch or tensorflow" >&2; exit 2 ;;
esac
DIR=$T/repos/bench/$WORKLOAD
mkdir -p "$DIR"
cp -a fixtures/sklearn-conda/. "$DIR/"
for pin in $PINS; do sed -i "s/  - scikit-learn==1.4.2/&\n  - $pin/" "$DIR/conda.yaml"; done
(cd "$DIR" && git init -q -b main && git add -A && git -c user.name=b -c user.email=b@b commit -qm "$WORKLOAD")

r2() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f×", a/b}'; }
mb() { awk -v b="$1" 'BEGIN{printf "%.0f MB", b/1e6}'; }
up() { jq -r '.image.bytes_uploaded' "$T/$1.out"; }
phase() { jq -r ".image.phases_ms.$2 // 0" "$T/$1.out" | awk '{printf "%.1f", $1/1000}'; }
# ours NAME BIN PLATFORMS [FLAGS...] — a cold build to a fresh registry with an empty cache.
ours() {
  local n=$1 bin=$2 platforms=$3
  shift 3
  reg library/python:3.11-slim
  run "$n" "$bin" -q build "$DIR" --registry "http://$R" --cache-dir "$T/cache-$n" --platform "$platforms" --json "$@"
  cp "$(jq -r .lock "$T/$n.out")" "$T/pylock.$n.toml"
}
# wheel_names NAME — the wheel files the run NAME downloaded.
wheel_names() { find "$T/cache-$1/wheels" -name '*.whl' -printf '%f\n' | sort >"$T/$1.wheels"; }
floor() { # NAME RUN — the floor for the wheels (and the lock) of the run RUN.
  reg
  mkdir -p "$T/floor-$1"
  run "$1" python3 bench/floor.py "$T/pylock.$2.toml" "$T/$2.wheels" "http://$R" "$T/floor-$1"
  rm -rf "$T/floor-$1"
}
hand() { # NAME RUN PLATFORM-TAG... — the hand-made pipeline for the lock of the run RUN, one
  # platform after the other.
  local n=$1 lock=$T/pylock.$2.toml
  shift 2
  reg
  run "$n" bash -c 'for p in "${@:4}"; do bench/hand.sh "$1" "$p" "$2" "$3/$p"; done' _ "$lock" "$R" "$T/hand-$n" "$@"
  du -sb "$T/hand-$n"/*/layer.tar.gz | awk '{s+=$1} END{print s}' >"$T/$n.bytes"
  rm -rf "$T/hand-$n"
}

echo "== ours: amd64, cold" >&2
ours one "$BIN" linux/amd64
wheel_names one
WHEELS=$(du -cb $(find "$T/cache-one/wheels" -name '*.whl') | tail -1 | cut -f1)
mkdir -p "$T/seed" && cp -al "$T/cache-one/wheels" "$T/cache-one/locks" "$T/seed/"
rm -rf "$T/cache-one"
echo "== floor: amd64" >&2
floor floor1 one
echo "== hand-made: amd64" >&2
hand hand1 one x86_64-manylinux_2_28

TWO_ROWS="" WHEELS2=""
if [ -z "${SKIP_TWO:-}" ]; then
  echo "== ours: amd64 + arm64, cold" >&2
  ours two "$BIN" linux/amd64,linux/arm64
  wheel_names two
  WHEELS2=$(du -cb $(find "$T/cache-two/wheels" -name '*.whl') | tail -1 | cut -f1)
  rm -rf "$T/cache-two"
  echo "== floor: amd64 + arm64" >&2
  floor floor2 two
  echo "== hand-made: amd64 + arm64" >&2
  hand hand2 two x86_64-manylinux_2_28 aarch64-manylinux_2_28
  WHEELS2=" ($(mb "$WHEELS2") for both platforms)"
  TWO_ROWS="| ours, amd64 + arm64 | $(r2 "$(secs two)" "$(secs hand2)") | $(r2 "$(secs two)" "$(secs floor2)") | $(rss two) MB | $(mb "$(up two)") | layers $(phase two layers) s |
| hand-made, amd64 + arm64 | 1.0× | $(r2 "$(secs hand2)" "$(secs floor2)") | $(rss hand2) MB | $(mb "$(cat "$T/hand2.bytes")") | |
| floor, amd64 + arm64 | $(r2 "$(secs floor2)" "$(secs hand2)") | 1.0× | $(rss floor2) MB | | |
Two platforms, absolute seconds: ours $(secs two), hand-made $(secs hand2), floor $(secs floor2)."
fi

OLD_ROW=""
if [ -n "${OLD_BIN:-}" ]; then
  echo "== $OLD_BIN: amd64, cold" >&2
  ours old "$OLD_BIN" linux/amd64
  rm -rf "$T/cache-old"
  OLD_ROW="| $("$OLD_BIN" --version) (OLD_BIN), amd64 | $(r2 "$(secs old)" "$(secs hand1)") | $(r2 "$(secs old)" "$(secs floor1)") | $(rss old) MB | $(mb "$(up old)") | layers $(phase old layers) s |"
fi

echo "== compression policy, wheels already downloaded" >&2
for c in gz6 gz1 zstd3; do
  mkdir -p "$T/cache-$c" && cp -al "$T/seed/." "$T/cache-$c/"
done
ours gz6 "$BIN" linux/amd64
ours gz1 "$BIN" linux/amd64 --compression-level 1
ours zstd3 "$BIN" linux/amd64 --compression zstd
rm -rf "$T"/cache-gz6 "$T"/cache-gz1 "$T"/cache-zstd3

BROW="| buildah build + push (amd64) | not run (SKIP_BUILDAH) | | | | |"
if [ -z "${SKIP_BUILDAH:-}" ]; then
  echo "== buildah: amd64 build + push" >&2
  reg library/python:3.11-pip
  CTX=$T/ctx
  upstream_ctx "$DIR" "$CTX" "$R/library/python:3.11-pip"
  B_="buildah --storage-driver vfs"
  $B_ rmi --all --force >/dev/null 2>&1 || true
  run bbuild $B_ build -q --layers --isolation chroot --tls-verify=false -t bench:$WORKLOAD "$CTX"
  run bpush $B_ push -q --tls-verify=false bench:$WORKLOAD "docker://$R/bench/buildah:$WORKLOAD"
  $B_ rmi --all --force >/dev/null 2>&1 || true
  BT=$(sum_secs bbuild bpush)
  BROW="| buildah build + push (amd64) | $(r2 "$BT" "$(secs hand1)") | $(r2 "$BT" "$(secs floor1)") | $(max_rss bbuild bpush) MB | | build $(secs bbuild) s, push $(secs bpush) s; ours is $(ratio "$BT" "$(secs one)") faster |"
fi

OUT=bench/out/big-$WORKLOAD-$(date +%F).md
mkdir -p bench/out
{
  echo "# big-image benchmark — $(date -u +'%F %H:%M UTC')"
  echo
  echo "Machine: $(machine). Workload: fixtures/sklearn-conda + $WHAT + the FL runtime: $(jq '[.dependency_layers[].packages | split(",") | length] | add' "$T/one.out") packages, $(mb "$WHEELS") of amd64 wheels$WHEELS2. Cold: empty caches, a fresh registry per run, wheels from PyPI. Time is a multiple of the same run's anchors (lower is better): the hand-made pipeline (uv pip install --target + tar + pigz -6 -p$(nproc) + upload) and the physical floor (download + inflate + sha256 of every member + upload, overlapped)."
  echo
  echo "| run | time vs hand-made | time vs floor | peak RSS | uploaded | notes |"
  echo "|---|---|---|---|---|---|"
  echo "| ours, amd64 | $(r2 "$(secs one)" "$(secs hand1)") | $(r2 "$(secs one)" "$(secs floor1)") | $(rss one) MB | $(mb "$(up one)") | fetch $(phase one fetch) s, layers (overlapping fetch and push) $(phase one layers) s, push $(phase one push) s |"
  echo "| hand-made, amd64 | 1.0× | $(r2 "$(secs hand1)" "$(secs floor1)") | $(rss hand1) MB | $(mb "$(cat "$T/hand1.bytes")") | one layer |"
  echo "| floor, amd64 | $(r2 "$(secs floor1)" "$(secs hand1)") | 1.0× | $(rss floor1) MB | | |"
  echo "$BROW"
  [ -n "$OLD_ROW" ] && echo "$OLD_ROW"
  [ -n "$TWO_ROWS" ] && echo "$TWO_ROWS" | grep "^|"
  echo
  echo "Compression policy (amd64, wheels already in the cache, so no download; fresh registry each):"
  echo
  echo "| compression | time vs gzip -6 | uploaded |"
  echo "|---|---|---|"
  echo "| gzip -6 (default; wheel members' DEFLATE streams copied) | 1.0× ($(secs gz6) s) | $(mb "$(up gz6)") |"
  echo "| gzip -1 | $(r2 "$(secs gz1)" "$(secs gz6)") | $(mb "$(up gz1)") |"
  echo "| zstd -3 (compressed from scratch) | $(r2 "$(secs zstd3)" "$(secs gz6)") | $(mb "$(up zstd3)") |"
  echo
  echo "Absolute seconds (noisy): ours $(secs one), hand-made $(secs hand1), floor $(secs floor1)."
  [ -n "$TWO_ROWS" ] && echo "$TWO_ROWS" | grep -v "^|"
  true
} | tee "$OUT"
