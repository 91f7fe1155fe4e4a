#!/usr/bin/env bash
# The one command that checks everything: formatting, lints, every test and
# doctest, and that the benchmarks and examples build. Installs what is
# missing on a fresh Debian/Ubuntu machine (run as root, or with sudo
# available, when something must be installed).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
need_pkg() { # need_pkg <command> <debian package>
    if ! command -v "$1" >/dev/null 2>&1; then
        if [ "$apt_updated" -eq 0 ]; then
            as_root apt-get update -qq
            apt_updated=1
        fi
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"
    fi
}

# A Rust toolchain with rustfmt and clippy.
if ! command -v cargo >/dev/null 2>&1; then
    need_pkg curl curl
    need_pkg cc build-essential
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if command -v rustup >/dev/null 2>&1; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
need_pkg cc build-essential
need_pkg curl curl
# Real Redis for the Redis tier tests (started on free loopback ports by the
# tests themselves, never as a system service).
need_pkg redis-server redis-server
need_pkg redis-sentinel redis-sentinel
need_pkg redis-cli redis-tools
# A real headless browser for the status page test (driven through
# chromedriver).
need_pkg chromium chromium
need_pkg chromedriver chromium-driver

echo "==> cargo fmt --check"
cargo fmt --all --check

echo "==> cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "==> cargo test (workspace, all features)"
cargo test --workspace --all-features

echo "==> examples build"
cargo build --workspace --examples --all-features

echo "==> benchmarks build (they are run by hand: docs/benchmarks.md)"
cargo bench --workspace --all-features --no-run

echo "==> all checks passed"
