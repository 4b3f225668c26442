#!/usr/bin/env bash
# The project's test command (README, second command; .ci/run calls it): sets up the rig
# (packages, registries, broker, base image), then lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  scripts/rig.sh all
else
  sudo scripts/rig.sh all
fi
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked 2>&1
# The FL learner runtime's own tests: real Flower and Arrow Flight servers and mosquitto.
/var/lib/flops-rig/pyenv/bin/python -m pytest -q base-layers/fl-learner/tests
