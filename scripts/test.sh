#!/usr/bin/env bash
# The whole test suite: installs what it needs when missing, then runs fmt, clippy, tests (every
# feature combination), docs, the coverage gate and short fuzz runs. Fails on the first red step.
#
#   bash scripts/test.sh            # everything
#   FUZZ_SECONDS=10 bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
CLIPPY_FLAGS=(-D warnings -D clippy::undocumented_unsafe_blocks)
step() { printf '\n==> %s\n' "$*"; }

step "install what the tests need"
if ! command -v rustup >/dev/null; then
    echo "rustup is required (the suite adds the llvm-tools component for coverage)" >&2
    exit 1
fi
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^llvm-tools' || rustup component add llvm-tools
cargo llvm-cov --version >/dev/null 2>&1 || cargo install cargo-llvm-cov --locked
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# virtiofsd, the real backend the device tests run against (tests/virtiofsd.rs finds it here).
TOOLS=${VIRTIO_FS_DAX_TOOLS:-$HOME/.local/virtio-fs-dax}
if [ ! -x "$TOOLS/bin/virtiofsd" ]; then
    if command -v apt-get >/dev/null; then
        apt-get update -qq
        apt-get install -y -qq libseccomp-dev libcap-ng-dev
    fi
    cargo install --locked virtiofsd@1.14.0 --root "$TOOLS"
fi
export VIRTIOFSD="$TOOLS/bin/virtiofsd"
"$VIRTIOFSD" --version
# The DAX-capable backend peer (its own workspace and dependency versions).
(cd peers/dax-backend && cargo build --release --locked)
export DAX_BACKEND="$PWD/peers/dax-backend/target/release/dax-backend"

step "fmt"
cargo fmt --all -- --check
(cd fuzz && cargo fmt --all -- --check)

step "clippy (every feature combination)"
cargo clippy --all-targets -- "${CLIPPY_FLAGS[@]}"
cargo clippy --all-targets --all-features -- "${CLIPPY_FLAGS[@]}"

step "tests"
cargo test
cargo test --all-features

step "benches (smoke run, criterion --test mode)"
cargo bench --bench main -- --test

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features

step "coverage gate"
bash scripts/coverage.sh

step "fuzz (${FUZZ_SECONDS}s per target)"
bash fuzz/run-short.sh "$FUZZ_SECONDS"

step "all green"
