#!/usr/bin/env bash
# Runs a test binary repeatedly under CPU and I/O load, the conditions that exposed the
# tailer's races (a CI machine right after a build: busy cores, fsync stalls behind writeback).
# Usage: bash tests/stress.sh RUNS TEST [FILTER]
#   bash tests/stress.sh 12 tail                # tests/tail.rs, all tests
#   bash tests/stress.sh 4 e2e "sigkill crash"  # the SIGKILL and crash-point tests
# Each run's output (with the service's and tailer's debug logs) is kept in
# $STRESS_LOGS (default /tmp/kas-stress); the exit status is the number of failed runs.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:?runs} test=${2:?test binary name} filter=${3:-}
logs=${STRESS_LOGS:-/tmp/kas-stress}
mkdir -p "$logs"
# The test target's artifact (the service binary it spawns is listed too).
bin=$(cargo test --no-run --test "$test" --message-format=json 2>/dev/null \
    | grep -F '"kind":["test"]' \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "no test binary for $test" >&2; exit 100; }
hogs=()
yes >/dev/null & hogs+=($!)
yes >/dev/null & hogs+=($!)
( while true; do dd if=/dev/zero of="$logs/iohog" bs=1M count=400 conv=fsync 2>/dev/null; done ) & hogs+=($!)
trap 'kill "${hogs[@]}" 2>/dev/null; pkill -f "of=$logs/iohog"; rm -f "$logs/iohog"' EXIT
failed=0
for i in $(seq 1 "$runs"); do
    # shellcheck disable=SC2086 # the filter is a list of test-name filters
    if RUST_LOG=kube_audit_shipper=debug KAS_E2E_LOG=kube_audit_shipper=debug \
        "$bin" $filter --nocapture >"$logs/$test-$i.log" 2>&1; then
        echo "run $i ok"
    else
        failed=$((failed + 1))
        echo "run $i FAILED: $logs/$test-$i.log"
    fi
done
echo "$failed of $runs runs failed"
exit "$failed"
