#!/usr/bin/env bash
# The audit webhook input (issue 16) against the file input, on the same events, in one run on
# this machine (BENCHMARKS.md §9): examples/webhook_bench.rs ships the same EventLists of 400
# real events (fresh auditIDs) through a tailed audit log, through the webhook over plain HTTP
# and over TLS with a client certificate, to the local HTTPS intake emulator, and prints
# events/s, CPU-s per GB of events, intake requests and the time to a durable answer: medians
# of RUNS runs (the order of the inputs alternates between runs).
# Usage: bash benches/webhook.sh [LISTS [RUNS [CLIENTS]]]
#   LISTS   EventLists per run (default 250: 100,000 events, about 135 MB)
#   RUNS    runs (default 3)
#   CLIENTS concurrent webhook clients, as the API server's batches in flight (default 4)
set -euo pipefail
cd "$(dirname "$0")/.."
lists=${1:-250}
runs=${2:-3}
clients=${3:-4}

echo "=== machine"
echo "$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); temp dir $(df -h --output=fstype,source "${TMPDIR:-/tmp}" | tail -1)"
rustc --version

echo
echo "=== webhook vs file: $lists EventLists of 400 events, $runs runs, $clients clients"
BENCH_LISTS=$lists BENCH_LIST_EVENTS=400 BENCH_RUNS=$runs BENCH_CLIENTS=$clients \
    cargo run --release -q --example webhook_bench
