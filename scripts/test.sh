#!/usr/bin/env bash
# The project's test command (README, second command; .ci/run calls it): sets up the rig
# (packages, registries, broker, MLflow, containerd, Python envs, bases), then lints and runs
# every test: the Rust tests, the runtimes' pytest suites at both ends of their requirement
# ranges, and the whole FLOps flow per ML model flavor (scripts/flops-e2e.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[test %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
if [ "$(id -u)" = 0 ]; then
  scripts/rig.sh all
else
  sudo scripts/rig.sh all
fi
log "lint"
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
log "build the tests"
cargo test --locked --no-run 2>&1 | grep -v '^  Executable' >&2
# The runtimes' own tests (real Flower, Arrow Flight and MLflow servers, mosquitto), at both
# ends of their requirement ranges, one pytest run per runtime (each puts its own main.py
# first on sys.path). They mostly wait on their servers, so they run beside the Rust tests
# (free ports only; the Rust tests own 127.0.0.1:8080). The start-race stress test runs a few
# whole projects per start order here (FLOPS_STRESS_RUNS, default 2); bench/fl-stress.sh runs 20.
mkdir -p target
PYTEST_LOG=$PWD/target/pytest.log
# The two envs side by side (each suite alone took 11 and 9 min, mostly waiting on its servers);
# the start-race stress test runs in the newest env only: start races are a property of the
# runtimes' code, not of their dependencies' versions (bench/fl-stress.sh runs 20 per order).
pytest_env() {
  local env=$1 suite rc=0
  shift
  for suite in base-layers/*/tests; do
    echo "== pytest $suite ($env)"
    FLOPS_STRESS_RUNS=${FLOPS_STRESS_RUNS:-2} /var/lib/flops-rig/$env/bin/python -m pytest -q -p no:cacheprovider "$@" "$suite" || rc=1
  done
  return $rc
}
(
  pytest_env pyenv >"$PYTEST_LOG.pyenv" 2>&1 &
  newest=$!
  pytest_env pyenv-lowest -k "not test_start_race" >"$PYTEST_LOG.pyenv-lowest" 2>&1
  lowest=$?
  wait "$newest"
  newest=$?
  cat "$PYTEST_LOG.pyenv" "$PYTEST_LOG.pyenv-lowest"
  [ "$newest" = 0 ] && [ "$lowest" = 0 ]
) >"$PYTEST_LOG" 2>&1 &
PYTEST=$!
# Two lanes of Rust test binaries side by side: most integration tests wait on registries,
# servers and PyPI, not on a core, and one lane alone left the machine idle for most of its
# ~30 min. The binaries whose tests bind 127.0.0.1:8080 (the FL contract's aggregator port; an
# in-process lock orders them within a binary, not across processes) share the first lane.
LANE1=(faults learner flops_flow trained_model)
lane2=()
for f in tests/*.rs; do
  n=$(basename "$f" .rs)
  [[ " ${LANE1[*]} " == *" $n "* ]] || lane2+=(--test "$n")
done
LANE1_LOG=$PWD/target/rust-lane1.log
log "rust tests in two lanes (${LANE1[*]} in one, log in $LANE1_LOG; pytest suites beside them, log in $PYTEST_LOG)"
cargo test --locked $(printf -- '--test %s ' "${LANE1[@]}") -- --test-threads 2 >"$LANE1_LOG" 2>&1 &
LANE1_PID=$!
stop_all() {
  # The pytest processes too, not only their subshells: left running, they would load the
  # next run's machine and append to its log.
  pkill -TERM -f '/var/lib/flops-rig/pyenv[a-z-]*/bin/python -m pytest' 2>/dev/null || true
  kill "$PYTEST" 2>/dev/null || true
  pkill -TERM -P "$LANE1_PID" 2>/dev/null || true
  kill "$LANE1_PID" 2>/dev/null || true
}
if ! { cargo test --locked --lib --bins "${lane2[@]}" -- --test-threads 3 2>&1 && cargo test --locked --doc 2>&1; }; then
  stop_all
  exit 1
fi
log "waiting for the first lane"
if ! wait "$LANE1_PID"; then
  cat "$LANE1_LOG"
  echo "a Rust test of the first lane failed (above)" >&2
  stop_all
  exit 1
fi
grep -E '^ +Running|^test result' "$LANE1_LOG" >&2
log "waiting for the pytest suites"
if ! wait "$PYTEST"; then
  cat "$PYTEST_LOG"
  echo "a pytest suite failed (above)" >&2
  exit 1
fi
grep -E '^== |passed|failed' "$PYTEST_LOG" >&2
# The whole FLOps flow from this builder's images (the debug binary the tests just built), per ML
# model flavor: sklearn (3 rounds), keras and pytorch (a tiny CNN on CIFAR-10-shaped data, 1
# round; TensorFlow and torch with its CUDA wheels make images of 0.9 and 2.9 GB). One after the
# other: run side by side they took as long (521 s vs 528 s), their containerd unpacking
# contending for the same cores and disk. Every flavor runs, failed or not; logs in target/e2e/.
# sklearn's images are eStargz and run on the rig's lazy node (the stargz snapshotter mounts
# them before they are fetched); keras' and pytorch's are gzip on the plain node (the default).
failed=()
for flavor in sklearn keras pytorch; do
  compression=gzip node=plain
  [ "$flavor" = sklearn ] && compression=estargz node=lazy
  log "the FLOps flow, $flavor (FLAVOR=$flavor COMPRESSION=$compression NODE=$node scripts/flops-e2e.sh)"
  rm -rf "target/e2e/$flavor"
  FLAVOR=$flavor COMPRESSION=$compression NODE=$node E2E_LOGS=$PWD/target/e2e/$flavor \
    BIN=$PWD/target/debug/flops-image-builder scripts/flops-e2e.sh || failed+=("$flavor")
done
if [ ${#failed[@]} != 0 ]; then
  echo "the FLOps flow failed for: ${failed[*]} (every task's log in target/e2e/<flavor>/)" >&2
  exit 1
fi
log "all tests passed"
