#!/usr/bin/env bash
# Fuzzes the extractor for a while: `fuzz/run.sh [SECONDS]` (default 300).
# Needs the nightly toolchain and cargo-fuzz (`cargo install --locked cargo-fuzz`).
# The corpus starts from the real and seed events of tests/fixtures, one event per file.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-300}
corpus=corpus/extract
mkdir -p "$corpus"
if [ -z "$(ls -A "$corpus")" ]; then
    n=0
    while IFS= read -r line; do
        n=$((n + 1))
        printf '%s' "$line" > "$corpus/fixture-$n"
    done < <(cat ../tests/fixtures/seed/raw.jsonl ../tests/fixtures/apiserver-audit.jsonl)
fi
exec cargo +nightly fuzz run extract "$corpus" -- -max_total_time="$seconds" -max_len=262144 -rss_limit_mb=2048
