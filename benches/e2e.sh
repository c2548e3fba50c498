#!/usr/bin/env bash
# The benchmarks of BENCHMARKS.md, in one run on this machine:
#  1. end to end: a ≥ 500 MB audit log (rotating, gzip) through `kube-audit-shipper run` to
#     the local HTTPS intake emulator, written as fast as the writer goes (examples/demo.rs);
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
echo "=== 1. end to end ($events events, unthrottled writer, 64 MiB rotation, 10 gzip backups)"
DEMO_EVENTS=$events DEMO_RATE=100000000 DEMO_ROTATE_MB=64 DEMO_BACKUPS=10 \
    cargo run --release -q --example demo

echo
echo "=== 2. extraction vs serde_json (median of rounds, CPU time of one thread)"
cargo bench -q --bench extract

echo
echo "=== 3. gzip levels on the real fixture (the spool default is level 3)"
target/release/kube-audit-shipper bench --rounds 5 tests/fixtures/apiserver-audit.jsonl
