#!/usr/bin/env bash
# CI for the cross-builds (cross/README.md), called from .ci/run as `bash cross/ci.sh`.
#
# On a fresh Debian 12 x86_64 machine (root; only the package registries reachable) it
# installs what it needs, then:
#   1. builds the static aarch64, armv7 and x86_64 release binaries and checks them
#      (cross/build.sh: static, stripped, --version, extract of the seed samples, bench; the
#      ARM ones under qemu); .ci/run then runs the e2e suite natively against the x86_64 one;
#   2. builds the test suite for aarch64-unknown-linux-musl and runs all of it under
#      qemu-aarch64 (`cargo test --no-fail-fast` for that target: every test binary runs, and
#      the step fails at the end if any test failed). Memory figures under qemu are the
#      emulator's: the tests print them there and assert them only natively.
# Tests that spawn the built binary (tests/bad_input.rs, `extract_command_*`) need the kernel
# to run aarch64 executables through qemu (binfmt_misc); when that cannot be set up here
# they are skipped, with a message saying so.
#
# Env: CROSS_CI_BUILD_TARGETS (default: the three targets above),
#      CROSS_CI_TEST_TARGETS (default "aarch64-unknown-linux-musl"), CROSS_JOBS (default 2).
set -euo pipefail
# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

read -r -a build_targets <<<"${CROSS_CI_BUILD_TARGETS:-aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf x86_64-unknown-linux-musl}"
read -r -a test_targets <<<"${CROSS_CI_TEST_TARGETS:-aarch64-unknown-linux-musl}"
started=$SECONDS

step "cross: install what is missing"
ensure_tools
echo "tools ready after $((SECONDS - started)) s"

step "cross: static release builds: ${build_targets[*]}"
bash "$CROSS_DIR/build.sh" "${build_targets[@]}"
echo "builds done after $((SECONDS - started)) s"

cross_env
for t in "${test_targets[@]}"; do
    runner=$(runner_for "$t")
    skip=()
    if [ -n "$runner" ]; then
        if ensure_binfmt "${runner%-static}"; then
            echo "binfmt_misc: ${runner%-static} registered, tests may spawn $t binaries directly"
        else
            # The binary under test is started by path (env!("CARGO_BIN_EXE_...")), which the
            # kernel cannot exec without a binfmt_misc handler for this architecture.
            note "binfmt_misc for ${runner%-static} unavailable here (needs root and a mountable /proc/sys/fs/binfmt_misc):"
            note "SKIPPING the tests that spawn the built binary: extract_command_* (tests/bad_input.rs)"
            skip=(--skip extract_command_)
        fi
    fi
    step "cross: cargo test --target $t${runner:+ (under $runner)}"
    # Optimised test profile: at opt-level 0 simd-json and serde_json crawl under qemu
    # (≈8 min of test time instead of ≈15 s); debug assertions and overflow checks stay on.
    cargo-zigbuild test --no-fail-fast -j "$CROSS_JOBS" --target "$t" -Zbuild-std=std,panic_abort \
        --config 'profile.dev.opt-level=1' \
        --config 'profile.dev.package."*".opt-level=2' \
        --config 'profile.dev.debug="line-tables-only"' \
        -- "${skip[@]}" \
        || die "cargo test --target $t failed"
done

step "cross: done in $((SECONDS - started)) s"
