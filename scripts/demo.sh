#!/usr/bin/env bash
# The demo, on a fresh Debian machine (as root): sets up the local rig (registries, MQTT broker,
# MLflow tracking server, containerd, Python bases), builds the builder, and runs the whole
# FLOps flow from this builder's images (scripts/flops-e2e.sh): the builder's own image builds
# the learner and aggregator images of an ML repo as FLOps' manager asks for them, a federated
# training runs from those images, the best model is built into a serving image, and that
# image answers one prediction. Prints the time of each stage and where to look.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (it installs Debian packages and starts services)" >&2; exit 1; }
scripts/rig.sh all
cargo build --release --locked
# The flow stops at its first failure (an aggregator/failed included) with that error.
BIN=$PWD/target/release/flops-image-builder scripts/flops-e2e.sh \
  || { echo "demo: the FLOps flow failed; its error is above" >&2; exit 1; }
REG=127.0.0.1:5000
cat <<MSG

Where to look:
  images        curl -s http://$REG/v2/_catalog | jq        (local/sklearn-model/{learner,aggregator}, e2e-customer/trained_model)
  an image      skopeo inspect --tls-verify=false docker://$REG/local/sklearn-model/aggregator:<sha>
  MLflow        http://127.0.0.1:5080 (experiments "FLOps Project e2e…", one run per round, the model)
  MQTT          mosquitto_sub -h 127.0.0.1 -p 9027 -t 'flops_manager/#' -v   (then run scripts/flops-e2e.sh again)
  the builder   target/release/flops-image-builder --help; check, build [--aggregator], model
  rig logs      /var/lib/flops-rig/*.log
MSG
