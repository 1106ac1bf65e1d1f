#!/usr/bin/env bash
# Copyright 2026 The virtio-fs-dax Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Builds cloud-hypervisor at ae44c2971 with the patches of this directory applied (DAX through
# this repository's crate), installed as DEST/cloud-hypervisor-dax, and its API client as
# DEST/ch-remote-dax.
#
#   bash integrations/cloud-hypervisor/build.sh DEST
#
# Sources: the bundle (VFD_CH_BUNDLE, default ../shared/cloud-hypervisor beside the repository,
# else /work/shared/cloud-hypervisor) holds `git archive`s of cloud-hypervisor at ae44c2971 and
# of micro_http at 7975fe0, the git dependency cloud-hypervisor's Cargo.lock pins; their sha256
# must be the ones below. Without it: `git archive --prefix=cloud-hypervisor-ae44c2971/
# ae44c2971` of https://github.com/cloud-hypervisor/cloud-hypervisor, and `git archive
# --prefix=micro-http-7975fe0/ 7975fe0` of https://github.com/firecracker-microvm/micro-http,
# as .tar.gz files there.
#
# The build uses the Cargo.lock the patches carry (--locked), with two local sources in the
# tree's .cargo/config.toml: micro_http from the bundle (a directory source for its git URL,
# so Cargo.lock stays as upstream has it) and virtio-fs-dax from this repository (a
# `[patch.crates-io]`; the patches depend on it as a crates.io release would be named).
#
# The patched tree and its target directory are kept under DEST/../src/cloud-hypervisor-dax
# (VFD_CH_BUILD_DIR): the tree is made again only when the patches, this script or the bundle
# change; cargo rebuilds what changed (the crate's sources included) every time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dest=${1:?usage: build.sh DEST}
ch_rev=ae44c2971
ch_sha256=687421dba15dcea9552550d6d79b9a32a6e5ff83d39db6674df0ea59acb7e5f6
http_rev=7975fe0
http_sha256=e9a218bb654d4a58db615ba5f52ad2a826221a71c02412c3b2b9a03a1ea93bea

bundle=${VFD_CH_BUNDLE:-}
if [ -z "$bundle" ]; then
    for b in "$repo/../shared/cloud-hypervisor" /work/shared/cloud-hypervisor; do
        [ -f "$b/cloud-hypervisor-$ch_rev.tar.gz" ] && bundle=$b && break
    done
fi
ch_tar=${bundle:+$bundle/cloud-hypervisor-$ch_rev.tar.gz}
http_tar=${bundle:+$bundle/micro-http-$http_rev.tar.gz}
if [ -z "$bundle" ] || [ ! -f "$ch_tar" ] || [ ! -f "$http_tar" ]; then
    echo "build.sh: the cloud-hypervisor bundle is missing (VFD_CH_BUNDLE=${VFD_CH_BUNDLE:-unset});" \
        "see the head of $0 for how to make it" >&2
    exit 2
fi
echo "$ch_sha256  $ch_tar" | sha256sum -c --quiet
echo "$http_sha256  $http_tar" | sha256sum -c --quiet

work=${VFD_CH_BUILD_DIR:-$dest/../src/cloud-hypervisor-dax}
tree=$work/cloud-hypervisor-$ch_rev
mkdir -p "$work" "$dest"
stamp=$(cat "$here/build.sh" "$here"/patches/*.patch "$ch_tar" "$http_tar" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$work/tree.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$tree" "$work/vendor" "$work/tree.stamp"
    tar -xzf "$ch_tar" -C "$work"
    mkdir -p "$work/vendor"
    tar -xzf "$http_tar" -C "$work/vendor"
    mv "$work/vendor/micro-http-$http_rev" "$work/vendor/micro_http"
    # A directory source lists its files' checksums; a git dependency has none to check.
    echo '{"files":{},"package":null}' >"$work/vendor/micro_http/.cargo-checksum.json"
    for p in "$here"/patches/*.patch; do
        # patch(1) where installed, else git's own (git apply works outside a repository too).
        if command -v patch >/dev/null; then
            patch -s -p1 -d "$tree" <"$p"
        else
            (cd "$tree" && git apply "$p")
        fi
    done
    echo "$stamp" >"$work/tree.stamp"
fi
mkdir -p "$tree/.cargo"
cat >"$tree/.cargo/config.toml" <<EOF
[source."git+https://github.com/firecracker-microvm/micro-http?branch=main"]
git = "https://github.com/firecracker-microvm/micro-http"
branch = "main"
replace-with = "vendored-micro-http"

[source.vendored-micro-http]
directory = "$work/vendor"

[patch.crates-io]
virtio-fs-dax = { path = "$repo" }
EOF
# From the tree: cargo reads .cargo/config.toml from the directory it runs in.
(cd "$tree" && CARGO_TARGET_DIR="$work/target" cargo build --release --locked \
    --bin cloud-hypervisor --bin ch-remote)
install -m 0755 "$work/target/release/cloud-hypervisor" "$dest/cloud-hypervisor-dax"
install -m 0755 "$work/target/release/ch-remote" "$dest/ch-remote-dax"
