#!/usr/bin/env bash
# Copyright 2026 The virtio-fs-dax Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# One virtio-fs device on virtio-mmio and one on virtio-pci in the same guest, each with its own
# dax-backend process and window: both tags mount with `dax=always` and read the same files
# with the host's sha256. This checks that the MSI routes of the PCI device leave the irqchip's
# routes in place: the virtio-mmio device (GSI 5) and the serial console (GSI 4) keep their
# interrupts once the guest has enabled MSI-X.
#
# The PCI device speaks the legacy dialect, the virtio-mmio one the standard: a guest write(2)
# from a DAX mapping of a file on the virtio-mmio mount into a new file on the PCI mount hands
# the PCI device's backend a buffer in the other device's window, which it reaches only through
# FS_IO and only because dax-vmm gives both devices one IoSpace with cross-device IO allowed.
# Run it where /dev/kvm boots Linux:
# `bash scripts/with-kvm.sh bash vmm/scripts/pci-mixed.sh` from the repository.
set -euo pipefail
cd "$(dirname "$0")/../.."
. vmm/scripts/common.sh
need_built pci-mixed "$vmm" "$backend"
guest_kernel

work=$(mktemp -d)
cleanup() {
    [ -n "${bpid:-}" ] && kill "$bpid" 2>/dev/null || true
    [ -n "${bpid2:-}" ] && kill "$bpid2" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

shared=$work/shared
mkdir -p "$shared"
printf 'hello from the host\n' >"$shared/hello"
head -c $((8 << 20)) /dev/urandom >"$shared/big"
head -c $((3 << 20)) /dev/urandom >"$shared/cross-src"

root=$work/root
guest_root "$root" virtio_ring virtio virtio_mmio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci fuse virtiofs
(cd "$shared" && sha256sum big hello) >"$root/expected"
guest_init "$root" <<'INIT'
mkdir -p /m1 /m2
dmesg | grep "Cache len" | sed 's/^/guest: dmesg: /'
mount -t virtiofs mfs /m1 -o dax=always || fail "mount mfs"
mount -t virtiofs pfs /m2 -o dax=always || fail "mount pfs"
for d in /m1 /m2; do
    (cd $d && sha256sum -c /expected) | sed "s|^|guest: $d: |"
    (cd $d && sha256sum -c -s /expected) || fail "$d: a file differs from the host's"
done
# A buffer mapped from the virtio-mmio device's window, written to and read from through the
# PCI device (legacy: its backend reaches the other window with FS_IO).
vfd-guest write-from-map /m1/cross-src /m2/cross-copy >/tmp/wfm 2>&1 || fail "write-from-map: $(cat /tmp/wfm)"
sed 's/^/guest: /' /tmp/wfm
grep -q "^write-from-map: copied" /tmp/wfm || fail "a write from another device's DAX mapping was not served"
vfd-guest read-into-map /m2/cross-src /m1/cross-read >/tmp/rim 2>&1 || fail "read-into-map: $(cat /tmp/rim)"
sed 's/^/guest: /' /tmp/rim
grep -i "virtio\|ttyS" /proc/interrupts | sed 's/^/guest: irq: /'
n=$(awk '/IO-APIC.*virtio/ {print $2}' /proc/interrupts)
[ "${n:-0}" -gt 0 ] || fail "the virtio-mmio device got no interrupt"
umount /m1 || fail "umount /m1"
umount /m2 || fail "umount /m2"
echo "guest: every check passed"
report 0
INIT
guest_pack "$root" "$work/initrd.img"

"$backend" --socket-path "$work/m.sock" --shared-dir "$shared" 2>"$work/backend.log" &
bpid=$!
RUST_LOG=debug "$backend" --socket-path "$work/p.sock" --shared-dir "$shared" --legacy 2>"$work/backend2.log" &
bpid2=$!
for _ in $(seq 100); do [ -S "$work/m.sock" ] && [ -S "$work/p.sock" ] && break; sleep 0.1; done
status=0
timeout "${VFD_BOOT_TIMEOUT:-300}" "$vmm" --kernel "$vmlinuz" --initrd "$work/initrd.img" \
    --cmdline "${VFD_GUEST_CMDLINE:-console=ttyS0 reboot=k panic=-1 quiet}" --mem-mib 512 \
    --fs "tag=mfs,socket=$work/m.sock,window=32M" \
    --fs "tag=pfs,socket=$work/p.sock,window=64M,transport=pci,dialect=legacy" 2>"$work/vmm.err" || status=$?
cat "$work/vmm.err" >&2
if [ "$status" = 0 ] && [ "$(grep -c "refusals 0, bad register accesses 0, failed activations 0" "$work/vmm.err")" != 2 ]; then
    echo "pci-mixed: refusals, bad accesses or failed activations in the VMM's counters" >&2
    status=1
fi
if [ "$status" = 0 ]; then
    for f in cross-copy cross-read; do
        cmp -s "$shared/cross-src" "$shared/$f" || {
            echo "pci-mixed: $f (a buffer in the other device's window) differs from the host's cross-src" >&2
            status=1
        }
    done
    grep -q "FUSE_WRITE through FS_IO" "$work/backend2.log" || {
        echo "pci-mixed: the PCI device's backend served no FUSE_WRITE through FS_IO" >&2
        status=1
    }
fi
exit "$status"
