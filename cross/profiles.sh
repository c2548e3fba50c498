#!/usr/bin/env bash
# Measures release-profile variants without editing Cargo.toml (cross/README.md, "Profiles"):
# builds each with cross/build.sh (--config flags on top of Cargo.toml's [profile.release]),
# then runs `bench` on every binary, interleaved, and prints size and throughput.
#
#   cross/profiles.sh [--rounds N] [--repeat K] [PROFILE...]
#   cross/profiles.sh --probe [PROFILE...]
#
# PROFILEs: opt3 z s z-hot z-hot-own s-hot-own (default: all). Targets: CROSS_PROFILE_TARGETS
# (default "aarch64-unknown-linux-musl x86_64-unknown-linux-musl"). Each profile builds in its
# own target dir (target/cross/profiles/NAME), since every profile change rebuilds std.
# Throughput is bench's median CPU-time MB/s; x86_64 runs natively, ARM under qemu (emulated:
# those numbers only compare profiles with each other). Results: target/cross/profiles/results.tsv.
# --probe: sizes of cross/size-probe instead (extractor + HTTPS sender with rustls/ring in one
# binary, what the full shipper will link), each run once (seed extract, a POST to a closed
# local port); results: target/cross/profiles/probe.tsv.
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

rounds=5
repeat=3
probe=0
names=()
while [ $# -gt 0 ]; do
    case "$1" in
        --probe) probe=1; shift ;;
        --rounds) rounds=$2; shift 2 ;;
        --repeat) repeat=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) names+=("$1"); shift ;;
    esac
done
[ ${#names[@]} -gt 0 ] || names=(opt3 z s z-hot z-hot-own s-hot-own)
read -r -a targets <<<"${CROSS_PROFILE_TARGETS:-aarch64-unknown-linux-musl x86_64-unknown-linux-musl}"

# The hot paths: JSON parsing and UTF-8 validation, line splitting, gzip (flate2 → zlib-rs),
# and this crate's extractor ("own"). Every profile sets the global level and each of these
# explicitly, so the results do not depend on what Cargo.toml's [profile.release] holds.
hot=(simd-json simdutf8 value-trait memchr flate2 zlib-rs)
own=kube-audit-shipper
levels() { # GLOBAL HOT OWN
    local c
    printf -- '--config\nprofile.release.opt-level=%s\n' "$1"
    for c in "${hot[@]}"; do printf -- '--config\nprofile.release.package.%s.opt-level=%s\n' "$c" "$2"; done
    printf -- '--config\nprofile.release.package.%s.opt-level=%s\n' "$own" "$3"
}
flags_for() {
    case "$1" in
        opt3) levels 3 3 3 ;;
        z) levels '"z"' '"z"' '"z"' ;;
        s) levels '"s"' '"s"' '"s"' ;;
        z-hot) levels '"z"' 3 '"z"' ;;
        z-hot-own) levels '"z"' 3 3 ;;
        s-hot-own) levels '"s"' 3 3 ;;
        *) die "unknown profile $1 (known: opt3 z s z-hot z-hot-own s-hot-own)" ;;
    esac
}

base=$CROSS_OUT/profiles
mkdir -p "$base"

if [ "$probe" -eq 1 ]; then
    ensure_tools
    cross_env
    cd "$CROSS_DIR/size-probe"
    [ -e Cargo.lock ] || cp "$REPO/Cargo.lock" Cargo.lock    # same versions as the product
    for n in "${names[@]}"; do
        mapfile -t flags < <(flags_for "$n")
        for t in "${targets[@]}"; do
            step "probe $n $t: ${flags[*]}"
            CARGO_TARGET_DIR=$base/$n/probe cargo zigbuild --release -j "$CROSS_JOBS" --target "$t" \
                -Zbuild-std=std,panic_abort "${flags[@]}" || die "probe $n $t: build failed"
            bin=$base/$n/$t/size-probe
            mkdir -p "$(dirname "$bin")"
            llvm-strip --strip-all -o "$bin" "$base/$n/probe/$t/release/size-probe" || die "llvm-strip failed"
            file -b "$bin" | grep -Eq 'statically linked|static-pie linked' || die "probe $n $t: not static"
            runner=$(runner_for "$t")
            ${runner:+"$runner"} "$bin" extract "$REPO/tests/fixtures/seed/raw.jsonl" >/dev/null \
                || die "probe $n $t: extract failed"
            # A closed port on loopback: builds the TLS client config, fails at connect.
            post=$(${runner:+"$runner"} "$bin" post https://127.0.0.1:9/ key /dev/null 2>&1 || true)
            echo "post: $post"
            printf '%s\t%s\t%s\n' "$t" "$n" "$(stat -c %s "$bin")" | tee -a "$base/probe.tsv"
        done
    done
    exit 0
fi
for n in "${names[@]}"; do
    mapfile -t flags < <(flags_for "$n")
    step "profile $n: ${flags[*]}"
    CROSS_CARGO_TARGET_DIR=$base/$n/build bash "$CROSS_DIR/build.sh" --label "$n" "${flags[@]}" "${targets[@]}"
    for t in "${targets[@]}"; do
        mkdir -p "$base/$n/$t"
        cp "$CROSS_OUT/dist/$t/kube-audit-shipper" "$base/$n/$t/"
    done
done

# bench line → MB/s: "extract → audit   274.9 MB/s ..." / "(extract + gzip 13.4 MB/s of raw)"
mbs() { sed -n "s/^ *$1 *\([0-9.]*\) MB\/s.*/\1/p" "$2" | head -n 1; }
gz() { sed -n "s/.*audit → gzip -$1:.*extract + gzip \([0-9.]*\) MB\/s.*/\1/p" "$2" | head -n 1; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

step "bench --rounds $rounds, $repeat passes interleaved over the profiles"
sample=$REPO/tests/fixtures/apiserver-audit.jsonl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for ((i = 1; i <= repeat; i++)); do
    for t in "${targets[@]}"; do
        runner=$(runner_for "$t")
        for n in "${names[@]}"; do
            ${runner:+"$runner"} "$base/$n/$t/kube-audit-shipper" bench --rounds "$rounds" "$sample" >"$tmp/$n.$t.$i" \
                || die "bench of $n/$t failed"
        done
    done
done
printf 'target\tprofile\tbytes\taudit_MBps\tecs_MBps\taudit_gzip6_MBps\textract_gzip1_MBps\textract_gzip3_MBps\n' >"$base/results.tsv"
for t in "${targets[@]}"; do
    for n in "${names[@]}"; do
        row="$t	$n	$(stat -c %s "$base/$n/$t/kube-audit-shipper")"
        for m in "mbs 'extract → audit'" "mbs 'extract → ecs'" "mbs 'extract → audit → gzip -6'" "gz 1" "gz 3"; do
            v=$(for ((i = 1; i <= repeat; i++)); do eval "$m" "$tmp/$n.$t.$i"; done | median)
            row+="	$v"
        done
        echo "$row" >>"$base/results.tsv"
    done
done
column -t -s $'\t' "$base/results.tsv" 2>/dev/null || cat "$base/results.tsv"
