#!/usr/bin/env bash
# The CI smoke test of an ML repo for FLOps, run by github-actions.yml and gitlab-ci.yml (copy
# this file into your repo at examples/ci/smoke.sh, or change the path there):
#   1. `flops-image-builder check` the repo (model_manager.py, the dependency spec, the doctor,
#      the lock resolves);
#   2. build the learner and the aggregator into a plain-HTTP registry (no MQTT: --no-notify);
#   3. pull each image by digest (skopeo), unpack it (umoci) and, chrooted into its rootfs with
#      the image's environment and working directory, import model_manager and build a
#      ModelManager() (what the aggregator does at start-up: no data needed).
# Needs bash, jq, skopeo, umoci, and root for unpacking and chroot only: run it as the user
# owning the checkout (the builder, like git, refuses a repo another user owns), with
# passwordless sudo, or as root. The images run natively: the runner's platform is built.
#
# Environment:
#   REGISTRY             host:port of a plain-HTTP registry (default 127.0.0.1:5000)
#   REPO_DIR             the ML repo, a git checkout or URL (default .)
#   FLOPS_IMAGE_BUILDER  the builder's binary (default flops-image-builder from PATH)
#   MODEL_FLAVOR         sklearn, pytorch, tensorflow or keras (default sklearn)
#   FLOPS_BUILD_ARGS     more `build` flags, split on spaces (e.g. --registry-mirror docker.io=HOST)
#   FLOPS_CACHE_DIR      the builder's cache, for check and build (keep it between runs)
#   SMOKE_WORK           where the images are unpacked (default a temporary directory, removed)
set -euo pipefail

REGISTRY=${REGISTRY:-127.0.0.1:5000}
REPO_DIR=${REPO_DIR:-.}
BUILDER=${FLOPS_IMAGE_BUILDER:-flops-image-builder}
MODEL_FLAVOR=${MODEL_FLAVOR:-sklearn}
FLOPS_BUILD_ARGS=${FLOPS_BUILD_ARGS:-}

fail() { echo "smoke: $*" >&2; exit 1; }
for tool in "$BUILDER" jq skopeo umoci chroot; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
# umoci unpack, mknod and chroot need root.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
as_root true || fail "not root and no passwordless sudo (unpacking an image needs root)"
if [ -n "${SMOKE_WORK:-}" ]; then
    WORK=$SMOKE_WORK
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d)
    trap 'as_root rm -rf "$WORK"' EXIT
fi

echo "smoke: $("$BUILDER" --version)"

echo "smoke: check $REPO_DIR"
"$BUILDER" check "$REPO_DIR" --aggregator

echo "smoke: build $REPO_DIR into http://$REGISTRY"
# shellcheck disable=SC2086 # FLOPS_BUILD_ARGS is a list of flags
"$BUILDER" build "$REPO_DIR" --registry "http://$REGISTRY" --aggregator \
    --model-flavor "$MODEL_FLAVOR" --no-notify --json $FLOPS_BUILD_ARGS >"$WORK/report.json"

for role in learner aggregator; do
    # <host:port>/<owner>/<repo>/<role>:<commit>@sha256:<digest>: pulled by digest, as pushed
    ref=$(jq -er --arg r "$role" '.images[$r].reference' "$WORK/report.json")
    tagged=${ref%@*}
    image=${tagged%:*}@${ref#*@}
    echo "smoke: pull $image"
    skopeo copy -q --src-tls-verify=false "docker://$image" "oci:$WORK/oci:$role"
    as_root umoci unpack --image "$WORK/oci:$role" "$WORK/$role" >/dev/null
    rootfs=$WORK/$role/rootfs
    # The image's Env and WorkingDir, as umoci wrote them into the runtime config.
    as_root cat "$WORK/$role/config.json" >"$WORK/$role.json"
    mapfile -t image_env < <(jq -r '.process.env[]' "$WORK/$role.json")
    workdir=$(jq -er '.process.cwd' "$WORK/$role.json")
    # A runtime would mount /dev: Python's imports open /dev/null.
    as_root mkdir -p "$rootfs/dev"
    for node in null:3 zero:5 urandom:9; do
        as_root test -e "$rootfs/dev/${node%:*}" ||
            as_root mknod -m 666 "$rootfs/dev/${node%:*}" c 1 "${node#*:}"
    done
    as_root chroot "$rootfs" /usr/bin/env -i "${image_env[@]}" python3 -c '
import os, sys
workdir, role, tagged = sys.argv[1:]
os.chdir(workdir)
sys.path.insert(0, workdir)
import model_manager
parameters = model_manager.ModelManager().get_model_parameters()
print(f"smoke: {role} {tagged}: imported model_manager from {workdir}, "
      f"ModelManager() has {len(parameters)} parameter arrays")
' "$workdir" "$role" "$tagged"
done
echo "smoke: OK"
