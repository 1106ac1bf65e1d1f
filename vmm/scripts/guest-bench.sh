#!/usr/bin/env bash
# Copyright 2026 The virtio-fs-dax Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# The in-guest benchmark (not a test): a real Linux guest under dax-vmm reads one large file of
# the dax-backend process's tree sequentially (1 MiB read()s) and at random offsets (4 KiB
# pread()s), first through a `dax=always` mount and then through a `dax=never` mount of the same
# tag, in the same boot. Each pass runs twice on a fresh mount: cold (the first touch: DAX sets up
# mappings, the plain mount fetches with FUSE_READ) and warm. It prints the figures, the ratios
# DAX / plain, and the VMM's SETUPMAPPING round trip (p50, p99). Run it where /dev/kvm boots
# Linux: `bash scripts/with-kvm.sh bash vmm/scripts/guest-bench.sh` from the repository.
# Under nested TCG the absolute figures mean little; the ratios are what to read.
#   VFD_BENCH_MIB (default 128): the file's size; VFD_BENCH_WINDOW (default 256M); VFD_DIALECT;
#   VFD_BACKEND=virtiofsd-dax: against virtiofsd-dax (peers/virtiofsd-dax) instead of dax-backend.
set -euo pipefail
cd "$(dirname "$0")/../.."
. vmm/scripts/common.sh
[ "${VFD_BACKEND:-}" = virtiofsd-dax ] &&
    backend=${VIRTIOFSD_DAX:-$HOME/.local/virtio-fs-dax/bin/virtiofsd-dax}
need_built guest-bench "$vmm" "$backend" "$tool"
guest_kernel
mib=${VFD_BENCH_MIB:-128}
reads=${VFD_BENCH_READS:-20000}

work=$(mktemp -d)
cleanup() {
    [ -n "${bpid:-}" ] && kill "$bpid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/shared"
head -c $((mib << 20)) /dev/urandom >"$work/shared/large"

root=$work/root
guest_root "$root" virtio_ring virtio virtio_mmio fuse virtiofs
echo "$reads" >"$root/reads"
guest_init "$root" <<'INIT'
reads=$(cat /reads)
for mode in always never; do
    for kind in seq rand; do
        mount -t virtiofs myfs /mnt -o dax=$mode || report 1
        if [ "$kind" = seq ]; then
            out=$(vfd-guest bench seq /mnt/large) || report 1
        else
            out=$(vfd-guest bench rand /mnt/large "$reads") || report 1
        fi
        echo "guest: dax=$mode $out"
        umount /mnt || report 1
    done
done
report 0
INIT
guest_pack "$root" "$work/initrd.img"

extra=()
[ "${VFD_DIALECT:-standard}" = legacy ] && extra=(--legacy)
[ "${VFD_BACKEND:-}" = virtiofsd-dax ] &&
    extra=(--sandbox none --dax-window-size "${VFD_BENCH_WINDOW:-256M}")
"$backend" --socket-path "$work/dax.sock" --shared-dir "$work/shared" "${extra[@]}" 2>"$work/backend.log" &
bpid=$!
for _ in $(seq 100); do [ -S "$work/dax.sock" ] && break; sleep 0.1; done
timeout "${VFD_BOOT_TIMEOUT:-900}" "$vmm" --kernel "$vmlinuz" --initrd "$work/initrd.img" \
    --cmdline "console=ttyS0 reboot=k panic=-1 pci=off quiet" --mem-mib 1024 --cpus 2 \
    --fs "tag=myfs,socket=$work/dax.sock,window=${VFD_BENCH_WINDOW:-256M},dialect=${VFD_DIALECT:-standard}" \
    >"$work/guest.out" 2>"$work/vmm.err" || {
    cat "$work/guest.out" "$work/vmm.err" >&2
    exit 1
}
grep '^guest: dax=' "$work/guest.out"
grep 'map round trip' "$work/vmm.err" | sed 's/.*\(map round trip.*\)/vmm: \1/'
# Ratios DAX / plain, from the guest's lines.
awk -v mib="$mib" '
    /^guest: dax=always bench: seq/ { ds_c = $6; ds_w = $9 }
    /^guest: dax=never bench: seq/ { ps_c = $6; ps_w = $9 }
    /^guest: dax=always bench: rand4k/ { dr_c = $6; dr_w = $9 }
    /^guest: dax=never bench: rand4k/ { pr_c = $6; pr_w = $9 }
    END {
        printf "ratio dax/plain (%d MiB file): sequential cold %.2f, warm %.2f; random 4 KiB cold %.2f, warm %.2f\n",
            mib, ds_c / ps_c, ds_w / ps_w, dr_c / pr_c, dr_w / pr_w
    }' "$work/guest.out"
