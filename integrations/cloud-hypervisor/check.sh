#!/usr/bin/env bash
# Copyright 2026 The virtio-fs-dax Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# cloud-hypervisor's own checks on the crates the patches touch, in the tree build.sh made:
# clippy (-D warnings, all targets) on virtio-devices, vmm and cloud-hypervisor, and their unit
# tests (the library targets). Run build.sh first.
#
#   bash integrations/cloud-hypervisor/check.sh DEST     # DEST as given to build.sh
set -euo pipefail
dest=${1:?usage: check.sh DEST}
work=${VFD_CH_BUILD_DIR:-$dest/../src/cloud-hypervisor-dax}
tree=$work/cloud-hypervisor-ae44c2971
[ -f "$work/tree.stamp" ] || {
    echo "check.sh: no patched tree in $work: run integrations/cloud-hypervisor/build.sh $dest first" >&2
    exit 2
}
cd "$tree"
export CARGO_TARGET_DIR="$work/target"
cargo clippy --locked -p virtio-devices -p vmm -p cloud-hypervisor --all-targets -- -D warnings
# cloud-hypervisor with them: its features (kvm) reach vmm's dependencies only then.
cargo test --locked -p virtio-devices -p vmm -p cloud-hypervisor --lib
