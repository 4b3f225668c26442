#!/usr/bin/env bash
# Benchmark (not a test) for FLOps' `trained_model` plan: an sklearn model logged to the rig's
# MLflow tracking server under `logged_model_artifact` (as the FLOps aggregator logs it; mlflow
# 2.x from the rig's pyenv), then `model` (this builder) vs the upstream way: `mlflow models
# generate-dockerfile -m runs:/<run>/logged_model_artifact` (the rig's MLflow 3 env) + `buildah
# build` + `buildah push`, in one run on the same machine, both pushing to one fresh registry
# started for this benchmark (it holds only the bases), so "cold" is cold. Docker Hub is out of
# reach, so the generated Dockerfile's FROM is replaced by the local pip base (everything else,
# its apt-get and pip installs included, is kept). Rows: cold, warm (the same again).
# Prints ratios, peak RSS and bytes uploaded; writes bench/out/trained_model-<date>.md. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_setup
scripts/rig.sh bench-base >&2
PORT=5120
REG=127.0.0.1:$PORT
TRACKING=http://127.0.0.1:5080
MLFLOW_CLIENT=/var/lib/flops-rig/pyenv/bin/python
MLFLOW_CLI=/var/lib/flops-rig/mlflow/bin/mlflow
fresh_registry "$REG" library/python:3.11-slim library/python:3.11-pip

human() { awk -v b="$1" 'BEGIN{ if (b < 1e6) printf "%.1f kB", b/1e3; else printf "%.1f MB", b/1e6 }'; }
up() { human "$(jq '.image.bytes_uploaded' "$T/$1.out")"; }
phase() { jq -r ".image.phases_ms.$2 // 0" "$T/$1.out"; }
stored() { find "$T/registry-$PORT/docker/registry/v2/blobs" -type f -name data -printf '%s\n' 2>/dev/null | awk '{s+=$1} END{printf "%.0f", s}'; }

echo "== logging an sklearn model to $TRACKING (mlflow $("$MLFLOW_CLIENT" -c 'import mlflow; print(mlflow.__version__)'))" >&2
cat >"$T/log_model.py" <<'EOF'
import sys

import mlflow
import mlflow.sklearn
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

X, y = load_iris(return_X_y=True)
model = LogisticRegression(max_iter=500).fit(X, y)
mlflow.set_experiment("flops-bench-trained-model")
with mlflow.start_run() as run:
    mlflow.sklearn.log_model(model, "logged_model_artifact", input_example=X[:2])
    run_id = run.info.run_id
# MLflow prints links on stdout when the run ends: the id goes to a file.
with open(sys.argv[1], "w") as f:
    f.write(run_id)
EOF
MLFLOW_TRACKING_URI=$TRACKING "$MLFLOW_CLIENT" "$T/log_model.py" "$T/run_id" >"$T/log_model.err" 2>&1 || { cat "$T/log_model.err" >&2; exit 1; }
RUN_ID=$(cat "$T/run_id")
echo "run $RUN_ID" >&2

ours() { local n=$1 cache=$2; run "$n" "$BIN" -q model --tracking-uri "$TRACKING" --run-id "$RUN_ID" --registry "http://$REG" --customer-id bench --cache-dir "$cache" --json --no-notify; }
echo "== ours: cold, then warm (same cache, same registry)" >&2
ours cold "$T/cache-cold"
ours warm "$T/cache-cold"

echo "== upstream: mlflow models generate-dockerfile + buildah build + push, cold, then warm" >&2
B_="buildah --storage-driver vfs"
upstream() { # suffix: generate the Dockerfile, local base instead of Docker Hub's, build, push
  local s=$1 d=$T/gen$1
  run "gen$s" env MLFLOW_TRACKING_URI=$TRACKING "$MLFLOW_CLI" models generate-dockerfile -m "runs:/$RUN_ID/logged_model_artifact" -d "$d"
  [ -f "$T/requirements.logged" ] || cp "$d/model_dir/logged_model_artifact/requirements.txt" "$T/requirements.logged"
  # mlflow==2.x (the full package, which the model's requirements name) requires pandas<3, but
  # the model was logged with pandas 3 (mlflow-skinny has no such bound): pip fails with
  # ResolutionImpossible. As upstream FLOps patched a model's pyarrow pin, pandas is pinned
  # down here; the builder's doctor handles this itself (its report below).
  sed -i -E 's/^pandas==3\..*/pandas<3/' "$d/model_dir/logged_model_artifact/requirements.txt"
  grep -q '^FROM ' "$d/Dockerfile" || { echo "no FROM in the generated Dockerfile" >&2; exit 1; }
  sed -n 's/^FROM //p' "$d/Dockerfile" >"$T/upstream-from"
  mkdir -p "$d/ca"
  cp -p /usr/local/share/ca-certificates/* "$d/ca/" 2>/dev/null || true
  # The pip base is Debian's python3 (PEP 668): pip needs --break-system-packages, given by
  # the environment so that the generated RUN lines stay as they are. The machine's CA
  # certificates, for PyPI behind a re-signing proxy (as in bench/build.sh). The pip base has
  # no apt (mmdebstrap's essential variant), so the generated `apt-get install nginx` is left
  # out: that makes the upstream side faster than it really is, never slower.
  awk -v base="$REG/library/python:3.11-pip" '
    /^FROM / && !done { print "FROM " base; print "ENV PIP_BREAK_SYSTEM_PACKAGES=1"; print "COPY ca/ /usr/local/share/ca-certificates/"; print "RUN update-ca-certificates"; done=1; next }
    /^RUN apt-get .*install/ { print "# (left out: no apt in the local base) " $0; next }
    { print }' "$d/Dockerfile" >"$d/Dockerfile.local"
  run "bbuild$s" $B_ build --layers --isolation chroot --tls-verify=false -t "trained-model:bench$s" -f "$d/Dockerfile.local" "$d"
  local before; before=$(stored)
  run "bpush$s" $B_ push -q --tls-verify=false "trained-model:bench$s" "docker://$REG/bench/trained_model:$RUN_ID"
  echo $(($(stored) - before)) >"$T/bup$s"
}
$B_ rm --all >/dev/null 2>&1 || true
$B_ rmi --all --force >/dev/null 2>&1 || true
upstream ""
upstream w
cp "$T/gen/Dockerfile.local" "$T/upstream.Dockerfile"
BC=$(sum_secs gen bbuild bpush)
BW=$(sum_secs genw bbuildw bpushw)
BRSS=$(max_rss gen bbuild bpush genw bbuildw bpushw)
$B_ rmi --all --force >/dev/null 2>&1 || true

# buildah's steps (STEP n/m) and those it took from its layer cache.
steps() { grep -c '^STEP ' "$T/$1.out" || true; }
cached() { grep -c 'Using cache' "$T/$1.out" || true; }
statuses() { jq -r '[.image.platforms[].layers[].status] | group_by(.) | map("\(length) \(.[0])") | join(", ")' "$T/$1.out"; }
OUT=bench/out/trained_model-$(date +%F).md
mkdir -p bench/out
{
  echo "# trained_model benchmark — $(date -u +'%F %H:%M UTC')"
  echo
  echo "Machine: $(machine). Workload: an sklearn LogisticRegression logged by mlflow $(jq -r .mlflow_version "$T/cold.out") to the rig's MLflow server under \`logged_model_artifact\`, served by an image pushed to a fresh local registry holding only the bases, linux/amd64. Ours: \`model --tracking-uri … --run-id …\` ($(jq '[.dependency_layers[].packages | split(",") | length] | add' "$T/cold.out") packages in $(jq '.dependency_layers | length' "$T/cold.out") dependency layers; base $(jq -r .base.reference "$T/cold.out")). Peer: \`mlflow models generate-dockerfile\` (mlflow $("$MLFLOW_CLI" --version | awk '{print $3}')) + buildah $(buildah --version | awk '{print $3}') build (vfs, chroot isolation, --layers) + push; the generated FROM $(cat "$T/upstream-from") replaced by python:3.11-pip (Debian's python3 + pip, no apt), its \`apt-get install nginx\` left out (no apt there; this only makes the upstream side faster), its pip installs kept."
  echo
  echo "| run | vs upstream | peak RSS | uploaded |"
  echo "|---|---|---|---|"
  echo "| upstream generate-dockerfile + buildah build + push, cold | 1.0× | $BRSS MB | $(human "$(cat "$T/bup")") |"
  echo "| ours cold | $(ratio "$BC" "$(secs cold)") faster | $(rss cold) MB | $(up cold) |"
  echo "| upstream again (buildah's layer cache full) | 1.0× | | $(human "$(cat "$T/bupw")") |"
  echo "| ours warm (same run again) | $(ratio "$BW" "$(secs warm)") faster | $(rss warm) MB | $(up warm) |"
  echo
  echo "Steps buildah took from its layer cache: cold $(cached bbuild) of $(steps bbuild), again $(cached bbuildw) of $(steps bbuildw) (STEP lines; FROM is never a cache hit). Even with every step after FROM from the cache, buildah's build again took $(secs bbuildw) s (vfs storage)."
  echo
  echo "Absolute seconds (noisy): upstream cold $BC (generate-dockerfile $(secs gen), build $(secs bbuild), push $(secs bpush)), warm $BW (generate $(secs genw), build $(secs bbuildw), push $(secs bpushw)); ours cold $(secs cold), warm $(secs warm)."
  echo
  echo "Model requirements as logged: $(paste -sd' ' "$T/requirements.logged"); upstream's pip fails on them (\`mlflow==$(jq -r .mlflow_version "$T/cold.out")\`, the full package, requires pandas<3: ResolutionImpossible), so the upstream side gets \`pandas<3\` instead of the logged pandas pin, as upstream FLOps patched pyarrow pins. Ours: doctor rules $(jq -r '[.doctor[] | "\(.rule) (\(.detail))"] | join("; ")' "$T/cold.out"); it serves with $(jq -r '[.dependency_layers[].packages | split(",")[] | sub("^ +";"") | select(test("^(mlflow|pandas|scikit-learn|numpy|fastapi|uvicorn)"))] | join(", ")' "$T/cold.out")."
  echo
  echo "Ours cold, per phase (ms): $(jq -r '.image.phases_ms | to_entries | map("\(.key) \(.value)") | join(", ")' "$T/cold.out"); layers: $(statuses cold). Warm: $(statuses warm)."
  echo
  echo "The upstream Dockerfile (as built):"
  echo
  echo '```'
  grep -Ev '^\s*$|^\s*# [^(]' "$T/upstream.Dockerfile"
  echo '```'
  echo
  echo "buildah's uploaded bytes are the growth of the fresh registry's blob store over its push (the base was already there); ours are the report's \`bytes_uploaded\`."
} | tee "$OUT"
