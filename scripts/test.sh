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
# The runtimes' own tests (real Flower, Arrow Flight and MLflow servers, mosquitto), at both
# ends of their requirement ranges.
# One pytest run per runtime: each puts its own main.py first on sys.path.
for env in pyenv pyenv-lowest; do
  for suite in base-layers/*/tests; do
    echo "== pytest $suite ($env)"
    /var/lib/flops-rig/$env/bin/python -m pytest -q "$suite"
  done
done
# The whole FLOps flow from this builder's images (the debug binary the tests just built).
BIN=$PWD/target/debug/flops-image-builder scripts/flops-e2e.sh
