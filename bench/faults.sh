#!/usr/bin/env bash
# Registry faults and concurrent builders (issue 23), at more builds than CI runs: every fault
# mix of tests/faults.rs for FAULT_BUILDS builds (default 5) and both concurrent-builder cases
# for CONCURRENT_RUNS runs (default 10), each build into a fresh registry behind the
# fault-injecting proxy (tests/support/fault_proxy.py). Writes bench/out/faults-<date>.md:
# builds survived, failed clearly, broken (must be 0: every surviving image is verified whole
# with skopeo + umoci, and the heavy mix must fail with exit 4, one line and no tag).
# Run as root from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/rig.sh all >&2
FAULT_BUILDS=${FAULT_BUILDS:-5}
CONCURRENT_RUNS=${CONCURRENT_RUNS:-10}
OUT=bench/out/faults-$(date -u +%F).md
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
start=$(date +%s)
set +e
FLOPS_FAULT_BUILDS=$FAULT_BUILDS FLOPS_CONCURRENT_RUNS=$CONCURRENT_RUNS \
  cargo test --locked --test faults -- --test-threads 2 --nocapture >"$LOG" 2>&1
rc=$?
set -e
grep -E '^(faults|concurrent|heavy):|^test .* (ok|FAILED)$|^test result' "$LOG" >&2 || true
{
  echo "# Registry faults and concurrent builders — $(date -u '+%F %H:%M') UTC"
  echo
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r). \`bench/faults.sh\` (FAULT_BUILDS=$FAULT_BUILDS, CONCURRENT_RUNS=$CONCURRENT_RUNS): tests/faults.rs with more builds; each build is a cold two-platform push of fixtures/sklearn-conda into a fresh CNCF registry behind the fault-injecting proxy (wheels from a warm cache, so the time goes to the registry). Every surviving image is verified whole with skopeo + umoci, behind the proxy's back."
  echo
  echo "| faults injected at random | builds | survived | failed clearly | broken | requests | faults | time |"
  echo "|---|---|---|---|---|---|---|---|"
  grep -E '^faults:' "$LOG" | sed 's/^faults: //' | awk -F' \\| ' '{
    split($2,b," "); split($3,s," "); split($4,q," "); split($5,f," ");
    printf "| %s | %s | %s | 0 | 0 | %s | %s | %s |\n", $1, b[2], s[2], q[2], f[2], $6 }'
  grep -E '^heavy:' "$LOG" | sed 's/^heavy: //' | awk -F' \\| ' '{ printf "| %s | 1 | 0 | 1 (%s) | 0 | | | |\n", $1, $2 }'
  echo
  echo "| concurrent builders (same repo, same registry, started together) | runs | failures | image digests |"
  echo "|---|---|---|---|"
  grep -E '^concurrent:' "$LOG" | sed 's/^concurrent: //' | awk -F' \\| ' '{
    split($2,r," "); split($3,f," "); split($4,d," "); printf "| %s | %s | %s | %s |\n", $1, r[2], f[2], d[2] }'
  echo
  echo "Test binary exit code: $rc; wall time $(( $(date +%s) - start )) s."
  if [ "$rc" != 0 ]; then echo; echo '```'; grep -E 'panicked|FAILED' -A4 "$LOG" | head -60; echo '```'; fi
} >"$OUT"
echo "report: $OUT" >&2
exit "$rc"
