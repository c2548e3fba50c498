# shellcheck shell=bash
# Shared by cross/build.sh and cross/ci.sh (sourced, not run): installs what the static
# musl cross-builds need, if missing, and sets up the environment. See cross/README.md.
#
# Toolchain: Debian's rustc-web/cargo-web (std rebuilt for each target from rust-web-src
# with -Zbuild-std; rustup cannot download targets here), zig from the PyPI wheel `ziglang`
# as C compiler/linker with musl, wired in by cargo-zigbuild (prebuilt PyPI wheel), and
# qemu-user-static to run the ARM binaries.

CROSS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$CROSS_DIR")

# Pinned together: cargo-zigbuild drives this zig release (both wheels on PyPI).
ZIGBUILD_VERSION=0.24.1
ZIGLANG_VERSION=0.17.1

# Everything this writes stays inside the clone (target/ is git-ignored).
CROSS_OUT=${CROSS_OUT:-$REPO/target/cross}
CROSS_TOOLS=$CROSS_OUT/tools                  # python venv: cargo-zigbuild + ziglang
CROSS_JOBS=${CROSS_JOBS:-2}

APT_PACKAGES=(rustc-web cargo-web rust-web-src libstd-rust-web-dev qemu-user-static file llvm)
ALL_TARGETS=(aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf x86_64-unknown-linux-musl)

die() { echo "cross: error: $*" >&2; exit 1; }
step() { printf '\n=== %s\n' "$*"; }
note() { echo "cross: $*" >&2; }

_apt_updated=0
# ensure_apt PKG...: apt-get install the packages that are not installed yet.
ensure_apt() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "not root: cannot apt-get install ${missing[*]} (install them, or run as root)"
    command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} by hand (Debian 12 package names)"
    note "apt-get install ${missing[*]}"
    if [ "$_apt_updated" -eq 0 ]; then
        apt-get update -qq || die "apt-get update failed"
        _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

# ensure_tools: Debian packages, then the venv with the pinned cargo-zigbuild and zig wheels.
ensure_tools() {
    ensure_apt "${APT_PACKAGES[@]}"
    local rv sv
    rv=$(dpkg-query -W -f='${Version}' rustc-web)
    sv=$(dpkg-query -W -f='${Version}' rust-web-src)
    [ "$rv" = "$sv" ] || die "rustc-web $rv and rust-web-src $sv differ: -Zbuild-std needs the std sources of the same release (apt-get install rustc-web rust-web-src)"
    [ -d /usr/lib/rustlib/src/rust/library ] || die "std sources missing at /usr/lib/rustlib/src/rust/library (package rust-web-src)"

    if [ "$("$CROSS_TOOLS/bin/cargo-zigbuild" --version 2>/dev/null)" != "cargo-zigbuild $ZIGBUILD_VERSION" ] \
        || [ "$("$CROSS_TOOLS/bin/python3" -m ziglang version 2>/dev/null)" != "$ZIGLANG_VERSION" ]; then
        if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
            ensure_apt python3 python3-venv
        fi
        note "installing cargo-zigbuild $ZIGBUILD_VERSION and ziglang $ZIGLANG_VERSION (PyPI wheels) into $CROSS_TOOLS"
        python3 -m venv --clear "$CROSS_TOOLS" || die "python3 -m venv $CROSS_TOOLS failed"
        "$CROSS_TOOLS/bin/python3" -m pip install -q --no-cache-dir --disable-pip-version-check --only-binary=:all: \
            "cargo-zigbuild==$ZIGBUILD_VERSION" "ziglang==$ZIGLANG_VERSION" \
            || die "pip install cargo-zigbuild==$ZIGBUILD_VERSION ziglang==$ZIGLANG_VERSION failed"
        [ "$("$CROSS_TOOLS/bin/cargo-zigbuild" --version)" = "cargo-zigbuild $ZIGBUILD_VERSION" ] \
            || die "cargo-zigbuild $ZIGBUILD_VERSION did not install into $CROSS_TOOLS/bin"
    fi
}

# cross_env: Debian's cargo/rustc (not rustup's proxies), zig through the venv's python3.
cross_env() {
    export PATH="$CROSS_TOOLS/bin:/usr/bin:$PATH"
    export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
    export RUSTC_BOOTSTRAP=1                      # -Zbuild-std on a stable compiler
    export CARGO_TARGET_DIR=${CROSS_CARGO_TARGET_DIR:-$CROSS_OUT/build}
    export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
    if [ -n "${RUSTFLAGS:-}${CARGO_BUILD_RUSTFLAGS:-}${CARGO_ENCODED_RUSTFLAGS:-}" ]; then
        note "ignoring RUSTFLAGS/CARGO_BUILD_RUSTFLAGS/CARGO_ENCODED_RUSTFLAGS: they would replace .cargo/config.toml's per-target rustflags"
        unset RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
    fi
    unset RUSTUP_TOOLCHAIN
    cd "$REPO"
}

# runner_for TARGET: how to run the target's binaries on this (x86_64) machine.
runner_for() {
    case "$1" in
        aarch64-*) echo qemu-aarch64-static ;;
        armv7-*) echo qemu-arm-static ;;
        x86_64-*) [ "$(uname -m)" = x86_64 ] && echo "" || echo qemu-x86_64-static ;;
        *) die "unknown target $1 (known: ${ALL_TARGETS[*]})" ;;
    esac
}

# ensure_binfmt NAME (qemu-aarch64, qemu-arm): let the kernel run that architecture's
# binaries through qemu (binfmt_misc), so a test that spawns the built binary directly
# works. Returns non-zero when that is not possible here (no privilege, no binfmt_misc).
ensure_binfmt() {
    local name=$1 bm=/proc/sys/fs/binfmt_misc conf=/usr/lib/binfmt.d/$1.conf
    if [ ! -e "$bm/register" ]; then
        mount -t binfmt_misc binfmt_misc "$bm" 2>/dev/null || return 1
    fi
    if [ -e "$bm/$name" ]; then
        grep -qx enabled "$bm/$name" && return 0
        echo 1 >"$bm/$name" 2>/dev/null || return 1
        return 0
    fi
    [ -r "$conf" ] || return 1
    grep -v '^#' "$conf" | head -n 1 >"$bm/register" 2>/dev/null || return 1
    [ -e "$bm/$name" ]
}
