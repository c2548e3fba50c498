#!/usr/bin/env bash
# The benchmarks of BENCHMARKS.md, in one run on this machine:
#  1. end to end: a ≥ 500 MB audit log (rotating, gzip) through `kube-audit-shipper run` to
#     the local HTTPS intake emulator, written as fast as the writer goes (examples/demo.rs),
#     at three paces of event time (1 ms apart, 10 ms apart, the fixture's own: a quiet
#     cluster's history), through `/array` (the default) and, for comparison,
#     `/plain/batch` with its 1 s event-time rule (`KAS_BENCH_FORMATS` picks; default both);
#  2. extraction against the serde_json baseline (benches/extract.rs);
#  3. gzip levels: ratio against CPU on the real fixture (`kube-audit-shipper bench`).
# Usage: bash benches/e2e.sh [EVENTS]   (default 380000 events ≈ 515 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-380000}

echo "=== machine"
echo "$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
rustc --version

echo
for format in ${KAS_BENCH_FORMATS:-array plain_batch}; do
    for pace in 1 10 fixture; do
        echo "=== 1. end to end ($events events, unthrottled writer, 64 MiB rotation, 10 gzip backups, event times: $pace, $format)"
        DEMO_EVENTS=$events DEMO_RATE=100000000 DEMO_ROTATE_MB=64 DEMO_BACKUPS=10 \
            DEMO_PACE=$pace DEMO_INTAKE_FORMAT=$format cargo run --release -q --example demo
        echo
    done
done

echo
echo "=== 2. extraction vs serde_json (median of rounds, CPU time of one thread)"
cargo bench -q --bench extract

echo
echo "=== 3. gzip levels on the real fixture (the spool default is level 3)"
target/release/kube-audit-shipper bench --rounds 5 tests/fixtures/apiserver-audit.jsonl
