#!/usr/bin/env bash
# Copyright 2026 The virtio-fs-dax Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# A real Linux guest mounts a virtio-fs tag with `-o dax=always` through dax-vmm (virtio-mmio)
# and the dax-backend process, reads every file of a sample tree through the DAX window and
# checks its sha256 against the host's (one file is larger than the window, so the guest's
# range reclaim runs), writes into a range it first mapped read-only (the guest's writable
# upgrade) and creates a file; the host checks both writes and the VMM's counters. Run it where /dev/kvm boots
# Linux: `bash scripts/with-kvm.sh bash vmm/scripts/dax-smoke.sh` from the repository.
#   VFD_DIALECT=standard|legacy (default standard)
#   VFD_TRANSPORT=mmio|pci (default mmio): with pci the device is virtio-pci behind the VMM's host
#   bridge; the guest also checks what it sees on PCI, the host that the window is at the BAR.
#   VFD_BACKEND=virtiofsd: against virtiofsd instead (no DAX): the device has no window, the guest
#   says so, `dax=always` is refused, and a plain mount reads and writes.
set -euo pipefail
cd "$(dirname "$0")/../.."
vmm=${DAX_VMM:-vmm/target/release/dax-vmm}
backend=${DAX_BACKEND:-peers/dax-backend/target/release/dax-backend}
[ "${VFD_BACKEND:-}" = virtiofsd ] && backend=${VIRTIOFSD:-$HOME/.local/virtio-fs-dax/bin/virtiofsd}
for b in "$vmm" "$backend"; do
    [ -x "$b" ] || { echo "dax-smoke: $b is not built" >&2; exit 2; }
done
kdir=${VFD_KERNEL_DIR:?run through scripts/with-kvm.sh, which sets VFD_KERNEL_DIR}
vmlinuz=$(find "$kdir/boot" -name 'vmlinuz-*' | head -n1)
moddir=$(find "$kdir/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)
dialect=${VFD_DIALECT:-standard}
transport=${VFD_TRANSPORT:-mmio}

work=$(mktemp -d)
cleanup() {
    [ -n "${bpid:-}" ] && kill "$bpid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The sample tree, on a tmpfs (files a DAX backend maps must not live on 9p).
shared=$work/shared
mkdir -p "$shared/sub"
head -c 3000 /dev/urandom >"$shared/small"
head -c $((5 << 20)) /dev/urandom >"$shared/sub/five-mib"
# Larger than the 32 MiB window: the guest must give ranges back to read it all.
head -c $((48 << 20)) /dev/urandom >"$shared/sub/larger-than-window"
printf 'hello from the host\n' >"$shared/hello"
head -c 8192 /dev/zero | tr '\0' a >"$shared/patch"

# The guest's initramfs: busybox, the virtio-mmio and virtiofs modules, and the checks.
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,mnt,mods}
cp /bin/busybox "$root/bin/busybox"
: >"$root/mods/order"
mods="virtio_ring virtio virtio_mmio fuse virtiofs"
if [ "$transport" = pci ]; then
    mods="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci fuse virtiofs"
    : >"$root/pci"
fi
for m in $mods; do
    f=$(find "$moddir/kernel" -name "$m.ko" | head -n1)
    # Built in, or not in this kernel at all: nothing to load (the checks below tell).
    [ -n "$f" ] || { echo "dax-smoke: module $m not in $moddir, skipped" >&2; continue; }
    cp "$f" "$root/mods/$m.ko"
    echo "$m" >>"$root/mods/order"
done
(cd "$shared" && find . -type f | sort | xargs sha256sum) >"$root/expected"
window=32M
if [ "${VFD_BACKEND:-}" = virtiofsd ]; then
    : >"$root/nodax"
    window=0
fi
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
report() { printf "\\$(printf %o "$1")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null; sleep 5; }
fail() { echo "guest: FAIL: $*"; report 1; }
for m in $(cat /mods/order); do insmod /mods/$m.ko || fail "insmod $m"; done
dmesg | grep -i "virtio_fs\|virtiofs\|Cache len\|cache capability" | sed 's/^/guest: dmesg: /'
if [ -e /pci ]; then
    dev=
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/vendor")" = 0x1af4 ] || continue
        dev=$d
        echo "guest: pci: ${d##*/} vendor $(cat "$d/vendor") device $(cat "$d/device") class $(cat "$d/class") driver $(basename "$(readlink "$d/driver")")"
    done
    [ -n "$dev" ] || fail "no virtio device on PCI"
    [ "$(cat "$dev/device")" = 0x105a ] || fail "the virtio device on PCI is not virtio-fs"
    if [ ! -e /nodax ]; then
        bar2=$(sed -n 3p "$dev/resource" | cut -d' ' -f1)
        cache=$(dmesg | sed -n 's/.*Cache len: 0x[0-9a-f]* @ \(0x[0-9a-f]*\).*/\1/p' | head -n1)
        echo "guest: pci: BAR 2 at $bar2, the window at $cache"
        [ "$((bar2))" = "$((cache))" ] || fail "the window is not at BAR 2"
    fi
fi
if [ -e /nodax ]; then
    dmesg | grep -q "No cache capability" || fail "the guest did not report a device without a window"
    mount -t virtiofs myfs /mnt -o dax=always 2>/dev/null && fail "dax=always mounted without a window"
    echo "guest: dax=always refused without a window"
    mount -t virtiofs myfs /mnt || fail "plain mount"
else
    dmesg | grep -q "Cache len" || fail "the guest found no DAX window"
    mount -t virtiofs myfs /mnt -o dax=always || fail "mount -o dax=always"
    grep " /mnt " /proc/mounts | grep -q "dax=always" || fail "/proc/mounts has no dax=always"
fi
grep " /mnt " /proc/mounts | sed 's/^/guest: mount: /'
(cd /mnt && sha256sum -c /expected) | sed 's/^/guest: /'
(cd /mnt && sha256sum -c -s /expected) || fail "a file read through DAX differs from the host's"
# The patch file was mapped read-only by the read above; writing into it upgrades the range.
printf GUEST | dd of=/mnt/patch bs=1 seek=4096 conv=notrunc 2>/dev/null || fail "write into a mapped file"
echo "written by the guest" >/mnt/from-guest || fail "write"
sync
umount /mnt || fail "umount"
echo "guest: every check passed"
report 0
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.img"

extra=()
[ "$dialect" = legacy ] && extra=(--legacy)
[ "${VFD_BACKEND:-}" = virtiofsd ] && extra=(--sandbox none)
"$backend" --socket-path "$work/dax.sock" --shared-dir "$shared" "${extra[@]}" 2>"$work/backend.log" &
bpid=$!
for _ in $(seq 100); do [ -S "$work/dax.sock" ] && break; sleep 0.1; done

status=0
timeout "${VFD_BOOT_TIMEOUT:-300}" "$vmm" --kernel "$vmlinuz" --initrd "$work/initrd.img" \
    --cmdline "${VFD_GUEST_CMDLINE:-console=ttyS0 reboot=k panic=-1 pci=off quiet}" --mem-mib 512 \
    --fs "tag=myfs,socket=$work/dax.sock,window=$window,dialect=$dialect,transport=$transport" \
    2>"$work/vmm.err" | tee "$work/console.log" || status=$?
cat "$work/vmm.err" >&2
if [ "$status" = 0 ]; then
    if [ "$(cat "$shared/from-guest" 2>/dev/null)" != "written by the guest" ]; then
        echo "dax-smoke: the guest's new file did not reach the host" >&2
        status=1
    fi
    if [ "$(dd if="$shared/patch" bs=1 skip=4096 count=5 2>/dev/null)" != GUEST ]; then
        echo "dax-smoke: the guest's write into a mapped file did not reach the host" >&2
        status=1
    fi
    # 48 MiB through a 32 MiB window in 2 MiB ranges: more maps than the window holds, and
    # unmaps to make room.
    counters=$(grep -o 'maps [0-9]*, unmaps [0-9]*' "$work/vmm.err" | head -n1)
    maps=$(echo "$counters" | awk '{print $2}' | tr -d ,)
    unmaps=$(echo "$counters" | awk '{print $4}')
    if [ "$window" != 0 ] && { [ -z "$maps" ] || [ "$maps" -le 16 ] || [ "$unmaps" -lt 1 ]; }; then
        echo "dax-smoke: no reclaim seen in the VMM's counters ($counters)" >&2
        status=1
    fi
    if [ "$transport" = pci ] && [ "$window" != 0 ]; then
        placed=$(sed -n 's/.*DAX window 0x[0-9a-f]* bytes at \(0x[0-9a-f]*\) (BAR 2).*/\1/p' "$work/vmm.err")
        seen=$(sed -n 's/.*Cache len: 0x[0-9a-f]* @ \(0x[0-9a-f]*\).*/\1/p' "$work/console.log" | head -n1)
        if [ -z "$placed" ] || [ "$placed" != "$seen" ]; then
            echo "dax-smoke: the guest's window (${seen:-none}) is not the BAR the VMM placed (${placed:-none})" >&2
            status=1
        fi
    fi
    grep -q "refusals 0, bad register accesses 0, failed activations 0" "$work/vmm.err" || {
        echo "dax-smoke: refusals or bad accesses in the VMM's counters" >&2
        status=1
    }
fi
[ "$status" = 0 ] || { echo "dax-smoke: backend log:" >&2; tail -20 "$work/backend.log" >&2; }
exit "$status"
