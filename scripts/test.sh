#!/usr/bin/env bash
# The whole test suite: installs what it needs when missing, then runs fmt, clippy, tests (every
# feature combination, and the dax-backend peer's; the all-features run is the coverage gate's),
# cloud-hypervisor's clippy and unit tests on the crates integrations/cloud-hypervisor patches,
# the demo, a real Linux guest booted by the reference VMM and by the patched cloud-hypervisor
# (nested where the host's KVM cannot boot one), Miri on the pure modules (where a toolchain
# has it), the benches' smoke run, docs (and the docs.rs build), the MSRV check, the package
# (publish dry run, and its tests, benches and examples built from the .crate file) and short
# fuzz runs. Fails on the first red step.
#
#   bash scripts/test.sh            # everything
#   FUZZ_SECONDS=10 bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
CLIPPY_FLAGS=(-D warnings -D clippy::undocumented_unsafe_blocks)
# Each step says when it started, and the last how long the whole run took.
start=$(date +%s)
step() { printf '\n==> [%s, +%ds] %s\n' "$(date +%T)" "$(($(date +%s) - start))" "$*"; }

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
# nightly for the docs.rs build (docs.rs documents with nightly and `--cfg docsrs`), and the
# toolchain of Cargo.toml's rust-version for the MSRV check: minimal profiles.
rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
MSRV=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
rustup run "$MSRV" rustc --version >/dev/null 2>&1 || rustup toolchain install "$MSRV" --profile minimal
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
# virtiofsd-dax: the same release with the patches of peers/virtiofsd-dax (DAX through
# SHMEM_MAP), rebuilt when the patches change (tests/virtiofsd_dax.rs finds it here).
bash peers/virtiofsd-dax/build.sh "$TOOLS/bin"
export VIRTIOFSD_DAX="$TOOLS/bin/virtiofsd-dax"
"$VIRTIOFSD_DAX" --version
# cloud-hypervisor at ae44c2971 with the patches of integrations/cloud-hypervisor (its DAX window
# through this crate), from the bundle the script names; the patched tree and its target
# directory are kept under $TOOLS/src, so a run rebuilds only what changed.
bash integrations/cloud-hypervisor/build.sh "$TOOLS/bin"
export VFD_CH="$TOOLS/bin/cloud-hypervisor-dax"
"$VFD_CH" --version
# The DAX-capable backend peer (its own workspace and dependency versions).
(cd peers/dax-backend && cargo build --release --locked)
export DAX_BACKEND="$PWD/peers/dax-backend/target/release/dax-backend"

step "fmt"
cargo fmt --all -- --check
(cd fuzz && cargo fmt --all -- --check)
(cd peers/dax-backend && cargo fmt --all -- --check)

step "clippy (every feature combination)"
cargo clippy --all-targets -- "${CLIPPY_FLAGS[@]}"
cargo clippy --all-targets --all-features -- "${CLIPPY_FLAGS[@]}"
(cd peers/dax-backend && cargo clippy --release --locked --all-targets -- "${CLIPPY_FLAGS[@]}")

step "tests"
# The targets that use `test_utils` (and `tests/mem_rw.rs`) have required-features: a plain
# `cargo test` would skip them, so both runs name their features.
cargo test --features test-utils
# The syscall filter without `mem-rw` too: FS_IO alone needs everything the list names.
cargo test --features test-utils,seccompiler --test seccomp
# Every feature: the test run under the coverage instrumentation is that run (and the coverage
# gate), so the test targets are built once for it; the doc tests, which it leaves out, here.
bash scripts/coverage.sh
cargo test --all-features --doc
(cd peers/dax-backend && cargo test --release --locked)

step "cloud-hypervisor: its clippy and the unit tests of the crates the patches touch"
bash integrations/cloud-hypervisor/check.sh "$TOOLS/bin"

step "demo (the README's first command, fewer latency rounds)"
cargo run --release --features test-utils --example demo -- --rounds 200

step "real guest: dax-vmm boots Linux, which mounts with dax=always (KVM directly, or nested in QEMU TCG)"
(cd vmm && cargo fmt -- --check && cargo clippy --release --locked -- "${CLIPPY_FLAGS[@]}" &&
    cargo build --release --locked)
(cd vmm/guest-tool && cargo fmt -- --check &&
    cargo clippy --release --locked -- "${CLIPPY_FLAGS[@]}" && cargo build --release --locked)
# Where the route is nested, each l1 line below is one boot of L1 of its own, so that a hang of
# the nested route (scripts/with-kvm.sh: stopped within a minute of a reported lockup or four
# minutes without a line, then booted again, twice at most) costs a rerun of two or three guest
# runs, not of all of them. A boot of L1 itself takes about 17 s here.
# l1 TIMEOUT COMMAND: COMMAND (a shell line) where /dev/kvm can boot Linux, L1 bounded by TIMEOUT
# seconds per boot.
l1() { VFD_L1_RETRIES=${VFD_L1_RETRIES:-2} VFD_L1_TIMEOUT=$1 bash scripts/with-kvm.sh bash -c "$2"; }
# virtio-mmio: the KVM check, a plain boot, and the DAX mount against the dax-backend process in
# both dialects (each with a reboot; the standard one also with the backend killed and
# restarted), against virtiofsd-dax (reboot, killed and restarted), then (with the first
# virtio-pci run) against stock virtiofsd (no window: the fallback).
l1 600 'python3 scripts/kvm-check.py && bash vmm/scripts/boot-smoke.sh &&
    VFD_KILL=1 bash vmm/scripts/dax-smoke.sh'
l1 600 'VFD_DIALECT=legacy bash vmm/scripts/dax-smoke.sh &&
    VFD_KILL=1 VFD_BACKEND=virtiofsd-dax bash vmm/scripts/dax-smoke.sh'
# virtio-pci: the DAX mount against dax-backend and against virtiofsd-dax, a guest that misuses
# the PCI function, and virtio-mmio and virtio-pci in one guest.
l1 600 'VFD_BACKEND=virtiofsd bash vmm/scripts/dax-smoke.sh &&
    VFD_TRANSPORT=pci bash vmm/scripts/dax-smoke.sh'
l1 600 'VFD_TRANSPORT=pci VFD_BACKEND=virtiofsd-dax bash vmm/scripts/dax-smoke.sh &&
    bash vmm/scripts/pci-abuse.sh && bash vmm/scripts/pci-mixed.sh'
# A newer guest kernel beside the current one (Debian's linux-image-6.12-amd64, FUSE_DAX built
# in; L1 keeps the current kernel): the DAX mount against dax-backend, and against virtiofsd-dax
# killed and restarted.
VFD_GUEST_KERNEL=linux-image-6.12-amd64 l1 600 '
    VFD_KERNEL_DIR=$VFD_GUEST_KERNEL_DIR bash vmm/scripts/dax-smoke.sh &&
    VFD_KERNEL_DIR=$VFD_GUEST_KERNEL_DIR VFD_KILL=1 VFD_BACKEND=virtiofsd-dax bash vmm/scripts/dax-smoke.sh'
# Real cloud-hypervisor with the patches of integrations/cloud-hypervisor boots the current
# kernel: the DAX mount against virtiofsd-dax (reboot, killed and restarted), and without
# cache_size against stock virtiofsd.
l1 600 'VFD_KILL=1 bash integrations/cloud-hypervisor/guest-smoke.sh &&
    VFD_BACKEND=virtiofsd bash integrations/cloud-hypervisor/guest-smoke.sh'

step "miri (the decoder and the range bookkeeping)"
# The pure modules under Miri: the decoder (src/protocol, bodies at every alignment) and
# src/window/ranges.rs. Miri ships with nightly toolchains only: the active toolchain's when it
# has or can add it, else an installed nightly's; with neither, one line says so and we go on.
miri=""
for tc in "$(rustup show active-toolchain | cut -d' ' -f1)" nightly; do
    rustup toolchain list | grep -q "^$tc" || continue
    if rustup component add --toolchain "$tc" miri rust-src >/dev/null 2>&1; then
        miri=$tc
        break
    fi
done
if [ -n "$miri" ]; then
    cargo "+$miri" miri test --lib -- protocol:: window::ranges::
else
    echo "miri: skipped: neither the active toolchain nor an installed nightly has or can add the miri component"
fi

step "benches (smoke run, criterion --test mode)"
cargo bench --bench main -- --test

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features
# As docs.rs builds them: nightly, `--cfg docsrs` (each feature-gated item says its feature).
RUSTDOCFLAGS="--cfg docsrs" cargo +nightly doc --no-deps --all-features --target-dir target/docsrs

step "msrv (rust-version $MSRV: the library, all features, locked dependencies)"
cargo "+$MSRV" check --locked --all-features --target-dir target/msrv

step "package (publish dry run; the .crate's tests, benches and examples build from it alone)"
# --allow-dirty: like every other step, this checks the working tree as it is.
cargo publish --dry-run --locked --allow-dirty
# The .crate file where it always lands (the dry run has verified it already).
cargo package --locked --allow-dirty --no-verify
crate=target/package/virtio-fs-dax-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1).crate
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
tar -xzf "$crate" -C "$unpacked" --strip-components=1
cp Cargo.lock "$unpacked/"
(export CARGO_TARGET_DIR="$PWD/target/package-check" && cd "$unpacked" &&
    cargo test --offline --locked --all-features --no-run &&
    cargo build --offline --locked --all-features --benches --examples)

step "fuzz (${FUZZ_SECONDS}s per target)"
bash fuzz/run-short.sh "$FUZZ_SECONDS"

step "all green"
