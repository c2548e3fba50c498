#!/usr/bin/env bash
# Static musl release builds of kube-audit-shipper for ARM and x86_64 (cross/README.md).
#
#   cross/build.sh [--label NAME] [--config KEY=VALUE]... [TARGET...]
#
# TARGETs: aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf x86_64-unknown-linux-musl
# (default: all three). Installs what is missing (Debian packages, pinned cargo-zigbuild and
# zig wheels from PyPI into target/cross/tools), builds each target with std rebuilt for it,
# strips the binary, checks with `file` that it is statically linked, runs it (`--version`,
# `extract` of the seed samples, `bench --rounds 1`; ARM under qemu) and prints a table:
# target, bytes, SIMD implementation simd-json selected at run time.
#
# --config is passed to cargo (e.g. --config 'profile.release.opt-level="z"') to try release
# profiles without editing Cargo.toml; --label names the profile in the table.
# Binaries: target/cross/dist/TARGET/kube-audit-shipper; the table also goes to
# target/cross/dist/summary.tsv. Env: CROSS_JOBS (default 2), CROSS_OUT (default target/cross),
# CROSS_CARGO_TARGET_DIR (default $CROSS_OUT/build).
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

label=Cargo.toml
configs=()
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --config) [ $# -ge 2 ] || die "--config needs a value"; configs+=(--config "$2"); shift 2 ;;
        --config=*) configs+=(--config "${1#--config=}"); shift ;;
        --label) [ $# -ge 2 ] || die "--label needs a value"; label=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1 (see cross/build.sh --help)" ;;
        *) runner_for "$1" >/dev/null; targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

step "tools"
ensure_tools
cross_env
cargo --version
rustc --version
cargo-zigbuild --version
echo "zig $(python3 -m ziglang version)"

seed=tests/fixtures/seed/raw.jsonl
sample=tests/fixtures/apiserver-audit.jsonl
[ -r "$seed" ] && [ -r "$sample" ] || die "fixtures $seed / $sample not found in $REPO"
seed_events=$(grep -c . "$seed")
dist=$CROSS_OUT/dist
mkdir -p "$dist"
rows=()
reference=""

for t in "${targets[@]}"; do
    step "$t: cargo zigbuild --release ($label)"
    start=$SECONDS
    cargo zigbuild --release -j "$CROSS_JOBS" --target "$t" -Zbuild-std=std,panic_abort "${configs[@]}" \
        || die "$t: cargo zigbuild --release failed"
    echo "build: $((SECONDS - start)) s"

    out=$dist/$t
    bin=$out/kube-audit-shipper
    mkdir -p "$out"
    llvm-strip --strip-all -o "$bin" "$CARGO_TARGET_DIR/$t/release/kube-audit-shipper" \
        || die "$t: llvm-strip failed"

    desc=$(file -b "$bin")
    echo "file: $desc"
    case "$desc" in
        *dynamically\ linked*|*interpreter*) die "$t: not a static binary: $desc" ;;
        *statically\ linked*|*static-pie\ linked*) ;;
        *) die "$t: 'file' does not say statically linked: $desc" ;;
    esac
    case "$desc" in *", stripped"*) ;; *) die "$t: 'file' does not say stripped: $desc" ;; esac

    runner=$(runner_for "$t")
    run() { ${runner:+"$runner"} "$bin" "$@"; }

    version=$(run --version) || die "$t: '$bin --version' failed${runner:+ under $runner}"
    echo "--version: $version"
    [[ $version == kube-audit-shipper\ * ]] || die "$t: unexpected --version output: $version"

    run extract "$seed" >"$out/seed.audit.jsonl" || die "$t: extract $seed failed${runner:+ under $runner}"
    got=$(wc -l <"$out/seed.audit.jsonl")
    [ "$got" -eq "$seed_events" ] || die "$t: extract $seed gave $got events, expected $seed_events"
    if [ -z "$reference" ]; then
        reference=$t
        echo "extract: $got events"
    else
        cmp -s "$dist/$reference/seed.audit.jsonl" "$out/seed.audit.jsonl" \
            || die "$t: extract output differs from $reference's ($out/seed.audit.jsonl)"
        echo "extract: $got events, byte-identical to $reference's output"
    fi

    run bench --rounds 1 "$sample" >"$out/bench.txt" || die "$t: bench failed${runner:+ under $runner}"
    simd=$(sed -n 's/.*simd-json implementation \(.*\)$/\1/p' "$out/bench.txt" | sed 's/ (.*//' | head -n 1)
    [ -n "$simd" ] || die "$t: bench printed no 'simd-json implementation' line ($out/bench.txt)"
    grep -E '^ *cpu  |extract → audit  ' "$out/bench.txt" || true

    bytes=$(stat -c %s "$bin")
    rows+=("$t	$bytes	$label	$simd")
done

step "summary"
{
    printf '%-34s %10s  %-14s %s\n' target bytes profile simd-json
    for r in "${rows[@]}"; do
        IFS=$'\t' read -r t b l s <<<"$r"
        printf '%-34s %10s  %-14s %s\n' "$t" "$b" "$l" "$s"
    done
}
printf '%s\n' "${rows[@]}" >>"$dist/summary.tsv"
