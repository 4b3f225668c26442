#!/usr/bin/env bash
# Benchmark (not a test) for FLOps' `fl_actors` plan: `build --aggregator --model-flavor sklearn`
# of fixtures/sklearn-conda (the learner and the aggregator image from one lock) vs upstream
# FLOps' three-step chain with `buildah build`: a base image with the repo's dependencies (FROM
# the pip base; pip install the doctored requirements + the learner runtime's), the learner
# image FROM that base (COPY the runtime files + the repo), the aggregator image FROM that base
# (pip install the aggregator runtime's requirements; COPY its runtime files + the repo), and
# `buildah push` of all three — in one run on the same machine, both pushing to one fresh
# registry started for this benchmark (it holds only the bases), so "cold" is cold.
# Rows: cold, and a one-file code change (ours: EMPTY local cache; buildah: its layer cache full).
# Prints ratios, peak RSS and bytes uploaded; writes bench/out/fl_actors-<date>.md. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_setup
scripts/rig.sh bench-base >&2
PORT=5110
REG=127.0.0.1:$PORT
fresh_registry "$REG" library/python:3.11-slim library/python:3.11-pip

repo() { # name fixture → a git repo at $T/repos/bench/<name>
  local dir="$T/repos/bench/$1"
  mkdir -p "$dir"; cp -a "fixtures/$2/." "$dir/"
  (cd "$dir" && git init -q -b main && git add -A && git -c user.name=b -c user.email=b@b commit -qm init)
  echo "$dir"
}
touch_code() { (cd "$1" && echo "# tuned $(date +%s%N)" >>model_manager.py && git -c user.name=b -c user.email=b@b commit -qam tune); }
human() { awk -v b="$1" 'BEGIN{ if (b < 1e6) printf "%.1f kB", b/1e3; else printf "%.1f MB", b/1e6 }'; }
# Bytes both images of a run uploaded (the learner's report and the aggregator's).
up_bytes() { jq '[.images[].bytes_uploaded] | add' "$T/$1.out"; }
phase() { jq -r ".images.$2.phases_ms.$3 // 0" "$T/$1.out"; }
# Blob bytes stored in the fresh registry: its growth over buildah's pushes is what they uploaded.
stored() { find "$T/registry-$PORT/docker/registry/v2/blobs" -type f -name data -printf '%s\n' 2>/dev/null | awk '{s+=$1} END{printf "%.0f", s}'; }
ours() { local n=$1 dir=$2; shift 2; run "$n" "$BIN" -q build "$dir" --aggregator --model-flavor sklearn --registry "http://$REG" --cache-dir "$T/cache-$n" --json --no-notify "$@"; }

A=$(repo sklearn-fl sklearn-conda)

echo "== ours: build --aggregator cold, then a code-only change on an empty cache" >&2
ours cold "$A"
touch_code "$A"
ours code "$A"

echo "== buildah: base (deps) → learner + aggregator FROM it, push all three; then a code change" >&2
SHA=$(git -C "$A" rev-parse HEAD~1)
B_="buildah --storage-driver vfs"
C=$T/ctx
# The repo as of the cold build (the commit before the code change).
upstream_fl_ctx "$A" "$SHA" "$C" "$REG/library/python:3.11-pip" sklearn
chain() { # suffix tag: the three builds, then the three pushes (each timed on its own)
  local s=$1 tag=$2
  upstream_fl_build "$s" "$C"
  local before; before=$(stored)
  upstream_fl_push "$s" "$REG/bench/sklearn-fl" "$tag"
  echo $(($(stored) - before)) >"$T/bup$s"
}
$B_ rm --all >/dev/null 2>&1 || true
$B_ rmi --all --force >/dev/null 2>&1 || true
chain "" "$SHA"
# The same one-file change as ours, in both images' copies of the repo.
for r in learner aggregator; do tail -n 1 "$A/model_manager.py" >>"$C/$r/app/model_manager.py"; done
chain 2 "$(git -C "$A" rev-parse HEAD)"
BC=$(sum_secs bbase blearner baggr pbase plearner paggr)
BK=$(sum_secs bbase2 blearner2 baggr2 pbase2 plearner2 paggr2)
BRSS=$(max_rss bbase blearner baggr pbase plearner paggr bbase2 blearner2 baggr2 pbase2 plearner2 paggr2)
$B_ rmi --all --force >/dev/null 2>&1 || true

layers_of() { # run role → "N layers: u uploaded, m mounted, s skipped"
  jq -r --arg r "$2" '[.images[$r].platforms[].layers[].status] | group_by(.) | map("\(length) \(.[0])") | join(", ")' "$T/$1.out"
}
OUT=bench/out/fl_actors-$(date +%F).md
mkdir -p bench/out
{
  echo "# fl_actors benchmark — $(date -u +'%F %H:%M UTC')"
  echo
  echo "Machine: $(machine). Workload: FLOps' \`fl_actors\` plan for fixtures/sklearn-conda (numpy 1.26.4, scikit-learn 1.4.2, cloudpickle; the doctored spec) + the learner runtime (flwr, flops-utils, pydantic, pyarrow, datasets, pillow) + the aggregator runtime (mlflow-skinny 2.x, paho-mqtt, psutil): a learner and an aggregator image, linux/amd64, pushed to a fresh local registry holding only the bases. Ours: \`build --aggregator --model-flavor sklearn\` ($(jq '[.dependency_layers[].packages | split(",") | length] | add' "$T/cold.out") packages in $(jq '.dependency_layers | length' "$T/cold.out") dependency layers, lock $(jq -r .lock_source "$T/cold.out")). Peer: buildah $(buildah --version | awk '{print $3}') (vfs, chroot isolation, --layers) building upstream FLOps' chain — base (FROM python:3.11-pip; pip install the doctored requirements + the learner runtime's), learner FROM base (COPY runtime + repo), aggregator FROM base (pip install the aggregator runtime's requirements; COPY runtime + repo) — and pushing all three."
  echo
  echo "| run | vs buildah | peak RSS | uploaded |"
  echo "|---|---|---|---|"
  echo "| buildah base + learner + aggregator, build + push ×3, cold | 1.0× | $BRSS MB | $(human "$(cat "$T/bup")") |"
  echo "| ours cold, learner + aggregator (gzip -6) | $(ratio "$BC" "$(secs cold)") faster | $(rss cold) MB | $(human "$(up_bytes cold)") |"
  echo "| buildah after a one-file code change (layer cache full: base cached, learner + aggregator rebuilt) + push ×3 | 1.0× | | $(human "$(cat "$T/bup2")") |"
  echo "| ours code-only rebuild, EMPTY local cache | $(ratio "$BK" "$(secs code)") faster | $(rss code) MB | $(human "$(up_bytes code)") |"
  echo
  echo "Absolute seconds (noisy): buildah cold $BC (base build $(secs bbase), learner $(secs blearner), aggregator $(secs baggr), pushes $(secs pbase) + $(secs plearner) + $(secs paggr)); buildah code change $BK (base $(secs bbase2), learner $(secs blearner2), aggregator $(secs baggr2), pushes $(sum_secs pbase2 plearner2 paggr2)); ours cold $(secs cold), code-only $(secs code)."
  echo
  echo "Ours cold, per phase (ms, from the JSON report; the plan's phases are shared by both images): clone $(phase cold learner clone), resolve $(phase cold learner resolve), fetch $(phase cold learner fetch), layers $(phase cold learner layers), push $(phase cold learner push), total $(phase cold learner total). Layers — learner: $(layers_of cold learner); aggregator: $(layers_of cold aggregator). Code-only — learner: $(layers_of code learner); aggregator: $(layers_of code aggregator) (lock from the $(jq -r .lock_source "$T/code.out"))."
  echo
  echo "buildah's uploaded bytes are the growth of the fresh registry's blob store over its three pushes (the bases were already there); ours are the reports' \`bytes_uploaded\`. Upstream also pushed the base image, which the FLOps manager never uses; the builder has no such image (the aggregator reuses the learner's dependency layers)."
} | tee "$OUT"
