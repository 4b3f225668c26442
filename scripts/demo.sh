#!/usr/bin/env bash
# End-to-end demo on a fresh Debian machine (as root): starts the local registry and broker,
# builds the base image, builds the builder, appends a small app onto the base (verified with
# skopeo/umoci, run with chroot), builds a FLOps learner image from a fixture ML repo for two
# platforms and pushes it to the local registry, then packages the builder itself as an image.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (it installs Debian packages and starts services)" >&2; exit 1; }
scripts/rig.sh all
cargo build --release --locked
BIN=target/release/flops-image-builder
REG=127.0.0.1:5000
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/app"
cat > "$WORK/app/main.py" <<'PY'
import platform, sys
print(f"hello from a daemonless image: python {platform.python_version()} on {platform.machine()}")
PY
REF=$($BIN append --base http://$REG/library/python:3.11-slim --tag http://$REG/demo/hello:latest \
  --dir "$WORK/app:/app" --workdir /app --cmd python --cmd main.py --platform linux/amd64,linux/arm64 | tail -1)
echo "pushed: $REF"
skopeo inspect --tls-verify=false "docker://$REG/demo/hello:latest" | jq '{Digest, Architecture, Layers}'
skopeo copy -q --src-tls-verify=false "docker://$REG/demo/hello:latest" "oci:$WORK/oci:hello"
umoci unpack --image "$WORK/oci:hello" "$WORK/bundle" >/dev/null
chroot "$WORK/bundle/rootfs" sh -c 'cd /app && python main.py'

# The main job: a FLOps learner image from an ML repo (an MLflow-style fixture, as a git repo).
mkdir -p "$WORK/repos/demo"
cp -a fixtures/sklearn-conda "$WORK/repos/demo/sklearn-model"
git -C "$WORK/repos/demo/sklearn-model" init -q -b main
git -C "$WORK/repos/demo/sklearn-model" add -A
git -C "$WORK/repos/demo/sklearn-model" -c user.name=demo -c user.email=demo@example.com commit -qm "demo model"
LEARNER=$($BIN build "$WORK/repos/demo/sklearn-model" --registry http://$REG --platform linux/amd64,linux/arm64 \
  --project-id demo --mqtt 127.0.0.1:9027 | tail -1)
echo "learner image: $LEARNER"
skopeo inspect --tls-verify=false "docker://${LEARNER%@*}" | jq '{Digest, Labels, Layers: (.Layers | length)}'
skopeo inspect --config --tls-verify=false "docker://${LEARNER%@*}" | jq '.config | {WorkingDir, Env}'

# The builder's own image, without Docker: it appends itself onto a Debian base.
BUILDER=$(BIN=$BIN scripts/self-package.sh $REG/flops/image-builder:demo | tail -1)
echo "builder image: $BUILDER"
skopeo inspect --config --tls-verify=false "docker://${BUILDER%@*}" | jq '.config | {User, Entrypoint, Env}'
cat <<MSG

Where to look:
  registry      http://$REG/v2/_catalog   (curl it; images under demo/)
  image         skopeo inspect --tls-verify=false docker://$REG/demo/hello:latest
  index         skopeo inspect --raw --tls-verify=false docker://$REG/demo/hello:latest | jq
  learner       skopeo inspect --tls-verify=false docker://${LEARNER%@*}
  run it        see tests/learner.rs: ctr run --net-host ... python main.py <project> <mqtt> <observer> <aggregator> <tags>
  builder       skopeo inspect --tls-verify=false docker://${BUILDER%@*}
  MQTT          mosquitto_sub -h 127.0.0.1 -p 9027 -t 'flops_manager/#' -v   (then run the build again)
  rig logs      /var/lib/flops-rig/*.log
MSG
