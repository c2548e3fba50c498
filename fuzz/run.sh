#!/usr/bin/env bash
# Fuzzes one target for a while: `fuzz/run.sh TARGET [SECONDS]` (default 300), TARGET one of
#   extract     any bytes as an audit-log line, through the extractor
#   checkpoint  any bytes as a cursor file (or as its body, with a correct `sum` line)
#   config      any UTF-8 text as the YAML configuration
#   spool       a spool directory holding a file of any name and content
#   eventlist   any bytes as a webhook request body (an audit EventList), split into items
# Needs the nightly toolchain and cargo-fuzz (`cargo install --locked cargo-fuzz`).
# An empty corpus (corpus/TARGET) is seeded first: extract's with the real and seed events of
# tests/fixtures, one event per file; the others' with the files of seeds/TARGET (config:
# the configurations of README.md, deploy/, systemd/, the tests and the demo; eventlist:
# EventLists of ../shared/samples/ events, good and bad, and edge cases of the envelope). Crashes land
# in artifacts/TARGET; minimized ones that were found are kept in regressions/TARGET
# (`cargo +nightly fuzz run TARGET regressions/TARGET/FILE` replays one; each fails until its
# bug is fixed; the ones found so far are).
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh TARGET [SECONDS] (extract, checkpoint, config, spool, eventlist)}
seconds=${2:-300}
corpus=corpus/$target
extra=()
case $target in
    extract | eventlist) extra=(-max_len=262144) ;;
    checkpoint | config | spool) ;;
    *) echo "unknown target $target (extract, checkpoint, config, spool, eventlist)" >&2; exit 2 ;;
esac
mkdir -p "$corpus"
if [ -z "$(ls -A "$corpus")" ]; then
    if [ "$target" = extract ]; then
        n=0
        while IFS= read -r line; do
            n=$((n + 1))
            printf '%s' "$line" > "$corpus/fixture-$n"
        done < <(cat ../tests/fixtures/seed/raw.jsonl ../tests/fixtures/apiserver-audit.jsonl)
    else
        cp seeds/"$target"/* "$corpus"/
    fi
fi
exec cargo +nightly fuzz run "$target" "$corpus" -- -max_total_time="$seconds" -rss_limit_mb=2048 "${extra[@]}"
