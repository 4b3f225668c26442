#!/usr/bin/env bash
# Benchmark (not a test) for `build`: the MLflow-style fixture (numpy, scikit-learn, mlflow
# dropped) plus the FL runtime dependencies, built and pushed by this builder vs
# `buildah build` of the upstream-style Dockerfile (FROM base-with-pip; COPY . /app;
# RUN pip install -r requirements.txt) + `buildah push`, in one run on the same machine.
# Every run pushes to a fresh, empty registry started for this benchmark, so "cold" is cold.
# Prints ratios and peak RSS; writes bench/out/build-<date>.md and a bar chart
# bench/out/build-<date>.png (matplotlib, in a uv venv). Run as root.
# Torch-sized images: bench/big.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_setup
scripts/rig.sh bench-base >&2
PORT=5100
REG=127.0.0.1:$PORT
# A second fresh registry for the two-platform run, so that it is as cold as the first.
REG2=127.0.0.1:$((PORT + 2))
fresh_registry "$REG" library/python:3.11-slim library/python:3.11-pip
fresh_registry "$REG2" library/python:3.11-slim
# No Python base at all in the target: the builder takes its default base from the docker.io
# mirror (the rig's 127.0.0.1:5001) and streams its layers over; buildah pulls the pip base from
# a fresh registry standing in for the mirror (it holds only that base).
REG3=127.0.0.1:$((PORT + 3))
MIRROR=127.0.0.1:$((PORT + 4))
fresh_registry "$REG3"
fresh_registry "$MIRROR" library/python:3.11-pip

repo() { # fixture name → a git repo at $T/repos/bench/<name>
  local dir="$T/repos/bench/$1"
  mkdir -p "$dir"; cp -a "fixtures/$2/." "$dir/"
  (cd "$dir" && git init -q -b main && git add -A && git -c user.name=b -c user.email=b@b commit -qm init)
  echo "$dir"
}
touch_code() { (cd "$1" && echo "# tuned $(date +%s%N)" >>model_manager.py && git -c user.name=b -c user.email=b@b commit -qam tune); }

up() { jq -r '.image.bytes_uploaded' "$T/$1.out" | awk '{ if ($1 < 1e6) printf "%.1f kB", $1/1e3; else printf "%.1f MB", $1/1e6 }'; }
phase() { jq -r ".image.phases_ms.$2 // 0" "$T/$1.out"; }
ours() { local n=$1 dir=$2; shift 2; run "$n" "$BIN" -q build "$dir" --registry "http://$REG" --cache-dir "$T/cache-$n" --json "$@"; }

A=$(repo sklearn-a sklearn-conda)
B=$(repo sklearn-b requirements-repo)
Z=$(repo sklearn-z sklearn-conda)
M=$(repo sklearn-m sklearn-conda)

echo "== ours: cold gzip, warm, cold zstd, code-only on an empty cache, a second repo sharing the deps, two platforms" >&2
ours cold "$A"
run warm "$BIN" -q build "$A" --registry "http://$REG" --cache-dir "$T/cache-cold" --json
ours zstd "$Z" --compression zstd --refresh-lock
touch_code "$A"
ours code "$A"
ours second "$B"
run multi "$BIN" -q build "$M" --registry "http://$REG2" --cache-dir "$T/cache-multi" --json --platform linux/amd64,linux/arm64
R=$(repo sklearn-r sklearn-conda)
run mirror "$BIN" -q build "$R" --registry "http://$REG3" --registry-mirror docker.io=http://127.0.0.1:5001 --cache-dir "$T/cache-mirror" --json --no-notify

echo "== buildah: cold build + push, then a one-file code change" >&2
CTX=$T/ctx
upstream_ctx "$A" "$CTX" "$REG/library/python:3.11-pip"
B_="buildah --storage-driver vfs"
$B_ rm --all >/dev/null 2>&1 || true
$B_ rmi --all --force >/dev/null 2>&1 || true
run bbuild $B_ build -q --layers --isolation chroot --tls-verify=false -t bench:cold "$CTX"
run bpush $B_ push -q --tls-verify=false bench:cold "docker://$REG/bench/buildah:cold"
# Warm: nothing changed, buildah's layer cache is full; build again and push again.
run bbuildw $B_ build -q --layers --isolation chroot --tls-verify=false -t bench:warm "$CTX"
run bpushw $B_ push -q --tls-verify=false bench:warm "docker://$REG/bench/buildah:cold"
echo "# tuned" >>"$CTX/model_manager.py"
run bbuild2 $B_ build -q --layers --isolation chroot --tls-verify=false -t bench:code "$CTX"
run bpush2 $B_ push -q --tls-verify=false bench:code "docker://$REG/bench/buildah:code"
BC=$(sum_secs bbuild bpush)
BK=$(sum_secs bbuild2 bpush2)
BW=$(sum_secs bbuildw bpushw)
BRSS=$(max_rss bbuild bpush bbuildw bpushw bbuild2 bpush2)
$B_ rmi --all --force >/dev/null 2>&1 || true

echo "== buildah: cold build FROM the mirror's pip base (pulled cold) + push to an empty registry" >&2
sed "s|^FROM .*|FROM $MIRROR/library/python:3.11-pip|" "$CTX/Dockerfile" >"$T/Dockerfile.mirror"
git -C "$A" show HEAD~1:model_manager.py >"$CTX/model_manager.py"
run bbuildm $B_ build -q --layers --isolation chroot --tls-verify=false -t bench:mirror -f "$T/Dockerfile.mirror" "$CTX"
run bpushm $B_ push -q --tls-verify=false bench:mirror "docker://$REG3/bench/buildah:mirror"
BM=$(sum_secs bbuildm bpushm)
$B_ rmi --all --force >/dev/null 2>&1 || true
# What each side pulled: ours streamed the base's layers mirror → target (never stored them);
# buildah downloaded the whole pip base (compressed size) and pushed it again.
mb() { awk -v b="$1" 'BEGIN{printf "%.1f MB", b/1e6}'; }
STREAMED=$(jq '[.image.platforms[].layers[] | select(.status=="streamed") | .size] | add // 0' "$T/mirror.out")
PIPBASE=$(skopeo inspect --raw --tls-verify=false "docker://$MIRROR/library/python:3.11-pip" | jq '[.layers[].size] | add')


stage_sum() { echo "$(phase "$1" resolve) $(phase "$1" fetch) $(phase "$1" layers) $(phase "$1" push)" | awk '{printf "%.2f", ($1+$2+$3+$4)/1000}'; }
shared_again=$(jq '[.image.platforms[].layers[] | select(.status=="uploaded")] | length' "$T/second.out")
dep_from_pool=$(jq '[.dependency_layers[] | select(.source=="pool")] | length' "$T/second.out")
dep_total=$(jq '.dependency_layers | length' "$T/second.out")
OUT=bench/out/build-$(date +%F).md
mkdir -p bench/out
{
  echo "# build benchmark — $(date -u +'%F %H:%M UTC')"
  echo
  echo "Machine: $(machine). Workload: fixtures/sklearn-conda (numpy 1.26.4, scikit-learn 1.4.2, cloudpickle; mlflow dropped by the doctor) + the FL runtime (flwr 1.8.0, flops-utils, pydantic, pyarrow, datasets): $(jq '[.dependency_layers[].packages | split(",") | length] | add' "$T/cold.out") packages, linux/amd64, pushed to a fresh local registry. Peer: buildah $(buildah --version | awk '{print $3}') (vfs, chroot isolation) with the upstream-style Dockerfile."
  echo
  echo "| run | vs buildah | peak RSS | uploaded |"
  echo "|---|---|---|---|"
  echo "| buildah build + push, cold | 1.0× | $BRSS MB | |"
  echo "| ours cold, gzip -6 (default) | $(ratio "$BC" "$(secs cold)") faster | $(rss cold) MB | $(up cold) |"
  echo "| ours cold, zstd -3 | $(ratio "$BC" "$(secs zstd)") faster | $(rss zstd) MB | $(up zstd) |"
  echo "| ours cold, two platforms (amd64 + arm64 index), its own fresh registry | $(ratio "$BC" "$(secs multi)") faster than buildah's one platform | $(rss multi) MB | $(up multi) |"
  echo "| buildah warm (no change, layer cache full) + push | 1.0× | | |"
  echo "| ours warm (same commit again) | $(ratio "$BW" "$(secs warm)") faster | $(rss warm) MB | $(up warm) |"
  echo "| buildah after a one-file code change | 1.0× | | |"
  echo "| ours code-only rebuild, EMPTY local cache | $(ratio "$BK" "$(secs code)") faster | $(rss code) MB | $(up code) |"
  echo "| buildah cold FROM the mirror's pip base (pulled: $(mb "$PIPBASE"), pushed with the image) to an empty registry | 1.0× | $(max_rss bbuildm bpushm) MB | |"
  echo "| ours cold, NO base in the target: default python:3.11-slim via the docker.io mirror (pulled: manifests + config; $(mb "$STREAMED") of base layers streamed mirror → target, $(jq -r .base.origin "$T/mirror.out")) | $(ratio "$BM" "$(secs mirror)") faster | $(rss mirror) MB | $(up mirror) |"
  echo "| ours, a second repo sharing the deps, empty cache | $(ratio "$BC" "$(secs second)") faster | $(rss second) MB | $(up second) ($dep_from_pool of $dep_total dependency layers mounted from the pool, $shared_again blobs uploaded) |"
  echo
  echo "Cold gzip run: total $(secs cold) s vs the sum of its stages (resolve + download + install/tar/compress + upload) $(stage_sum cold) s = $(awk -v a="$(secs cold)" -v b="$(stage_sum cold)" 'BEGIN{printf "%.2f×", a/b}')."
  echo "Absolute seconds (noisy): buildah cold $BC (build $(secs bbuild), push $(secs bpush)), warm $BW, code change $BK; ours cold $(secs cold), warm $(secs warm), zstd $(secs zstd), code-only $(secs code), second repo $(secs second), two platforms $(secs multi); base via the mirror: buildah $BM (build $(secs bbuildm), push $(secs bpushm)), ours $(secs mirror) (push phase $(phase mirror push) ms vs $(phase cold push) ms with the base in the target)."
  echo
  echo "buildah has no two-platform row: its RUN pip install for arm64 needs qemu-user emulation, which these machines do not have; the builder needs none (it picks arm64 wheels and the arm64 base)."
  echo
  echo "![relative wall time](build-$(date +%F).png)"
} | tee "$OUT"

# The chart: wall time relative to buildah's cold build + push (lower is better).
cat >"$T/chart.json" <<EOF
{"title": "flops-image-builder vs buildah build + push ($(nproc) cores, $(date +%F))",
 "rows": [["cold", $BC, $(secs cold)], ["warm", $BW, $(secs warm)],
          ["code-only change", $BK, $(secs code)], ["cold zstd", $BC, $(secs zstd)],
          ["cold, 2 platforms\n(buildah: 1)", $BC, $(secs multi)]]}
EOF
uv venv -q "$T/py" --python "$(command -v python3)"
uv pip install -q --python "$T/py/bin/python" matplotlib
"$T/py/bin/python" bench/chart.py "$T/chart.json" "${OUT%.md}.png"
