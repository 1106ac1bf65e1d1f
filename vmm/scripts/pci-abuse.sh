#!/usr/bin/env bash
# Copyright 2026 The virtio-fs-dax Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# A real Linux guest misuses dax-vmm's virtio-pci device on purpose, and the VM must go on: after
# a DAX mount and umount it unbinds the driver, then writes read-only configuration registers,
# moves the window BAR onto RAM (refused) and elsewhere in the host bridge's window (done), moves
# the register BAR onto the virtio-mmio devices (refused) and within its window (done, and the
# registers answer at the new address), turns memory decoding off (the registers are gone) and on,
# selects a queue that does not exist, writes read-only and unknown registers and the MSI-X table
# badly, activates the device with queues outside RAM (refused: the device asks for a reset),
# points the config vector at an MSI-X entry with a garbage message, and ends with random bytes over
# the whole configuration space of the function and of the host bridge; before that last step the
# driver binds again and the device reaches DRIVER_OK. The guest checks what it
# reads back; the host checks that the VMM ended with the guest's status and counted all of it.
# Run it where /dev/kvm boots Linux: `bash scripts/with-kvm.sh bash vmm/scripts/pci-abuse.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."
. vmm/scripts/common.sh
need_built pci-abuse "$vmm" "$backend"
guest_kernel

work=$(mktemp -d)
cleanup() {
    [ -n "${bpid:-}" ] && kill "$bpid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

shared=$work/shared
mkdir -p "$shared"
printf 'hello from the host\n' >"$shared/hello"

root=$work/root
guest_root "$root" virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci fuse virtiofs
guest_init "$root" <<'INIT'
expect() { if [ "$2" = "$3" ]; then echo "guest: ok: $1 ($2)"; else fail "$1: read $2, expected $3"; fi; }
dev=/sys/bus/pci/devices/0000:00:01.0
[ "$(cat $dev/vendor)" = 0x1af4 ] || fail "no virtio function at 00:01.0"
mount -t virtiofs myfs /mnt -o dax=always || fail "mount -o dax=always"
grep -q "hello from the host" /mnt/hello || fail "reading through the window"
umount /mnt || fail "umount"
echo 0000:00:01.0 >/sys/bus/pci/drivers/virtio-pci/unbind || fail "unbinding the driver"

# Configuration space: a dword write and read at an offset.
cfgw() {
    v=$(($2))
    printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $((v & 255)) $(((v >> 8) & 255)) $(((v >> 16) & 255)) $(((v >> 24) & 255)))" |
        dd of=$dev/config bs=4 seek=$(($1 / 4)) count=1 conv=notrunc 2>/dev/null
}
cfgr() { dd if=$dev/config bs=4 skip=$(($1 / 4)) count=1 2>/dev/null | od -An -tx4 | tr -d ' '; }
regs=$(($(sed -n 1p $dev/resource | cut -d' ' -f1)))
r() { devmem $((regs + $1)) "$2"; }
w() { devmem $((regs + $1)) "$2" "$3"; }
[ "$regs" = $((0xe0000000)) ] || fail "BAR 0 at $regs"

cfgw 0x00 0xdeadbeef
expect "ids after a write" "$(cfgr 0x00)" 105a1af4
cfgw 0x08 0
expect "class and revision after a write" "$(cfgr 0x08)" 01800001
cfgw 0x34 0xff
expect "capability pointer after a write" "$(cfgr 0x34)" 00000040

cfgw 0x1c 0
expect "window BAR after a move onto RAM" "$(cfgr 0x1c)" 00000008
cfgw 0x1c 9
expect "window BAR after a move to 36 GiB" "$(cfgr 0x1c)" 00000009
cfgw 0x1c 8
expect "window BAR back at 32 GiB" "$(cfgr 0x1c)" 00000008
cfgw 0x18 0xffffffff
expect "window BAR size mask" "$(cfgr 0x18)" fe00000c
cfgw 0x18 0
expect "window BAR after sizing" "$(cfgr 0x18)" 0000000c

cfgw 0x10 0xd0000000
expect "register BAR after a move onto virtio-mmio" "$(cfgr 0x10)" e0000000
cfgw 0x10 0xe0010000
expect "register BAR after a move" "$(cfgr 0x10)" e0010000
expect "num_queues at the new address" "$(devmem 0xe0010012 16)" 0x0002
cfgw 0x10 0xe0000000
expect "num_queues back at the old address" "$(r 0x12 16)" 0x0002

cmd=$(cfgr 0x04)
cfgw 0x04 0
expect "num_queues with memory decoding off" "$(r 0x12 16)" 0xFFFF
cfgw 0x04 "0x$cmd"
expect "num_queues with memory decoding on" "$(r 0x12 16)" 0x0002

w 0x16 16 0x1234
w 0x18 16 0x10
expect "queue size of a queue that does not exist" "$(r 0x18 16)" 0x0000
w 0x12 16 7
expect "num_queues after a write" "$(r 0x12 16)" 0x0002
w 0x10 16 0x99
expect "config vector out of the table" "$(r 0x10 16)" 0xFFFF
w 0x2000 32 0x41414141
expect "tag after a write" "$(r 0x2000 32)" 0x7366796D
w 0x4002 32 1
w 0x4100 32 1
w 0x5000 32 1
w 0x7000 32 1

# Queues outside RAM: activation fails, the device asks for a reset (twice: the second time with
# the config vector on an MSI-X entry with a garbage message).
activate_outside_ram() {
    w 0x14 8 0
    w 0x16 16 0
    w 0x18 16 256
    w 0x20 32 0
    w 0x24 32 0x7fff
    w 0x28 32 0x1000
    w 0x2c 32 0
    w 0x30 32 0x2000
    w 0x34 32 0
    w 0x1c 16 1
    w 0x14 8 1
    w 0x14 8 3
    w 0x14 8 11
    w 0x14 8 15
    expect "device status after activating with queues outside RAM" "$(r 0x14 8)" 0x4F
}
activate_outside_ram
cfgw 0xa0 0x80020011
w 0x4000 32 0x12345678
w 0x4004 32 0xffffffff
w 0x4008 32 0xffffffff
w 0x400c 32 0
w 0x10 16 0
expect "config vector on entry 0" "$(r 0x10 16)" 0x0000
activate_outside_ram
cfgw 0xa0 0xc0020011
cfgw 0xa0 0x00020011
w 0x14 8 0

# The function still works: the driver binds again and drives the device to DRIVER_OK (the
# device activates with the backend; no I/O: after a reset the first request completes and the
# second never does, on virtio-mmio as well, which this test does not cover).
echo 0000:00:01.0 >/sys/bus/pci/drivers/virtio-pci/bind || fail "binding the driver again"
vdev=$(ls -d $dev/virtio* | head -n1)
expect "device status once the driver is bound again" "$(cat "$vdev/status")" 0x0000000f
echo 0000:00:01.0 >/sys/bus/pci/drivers/virtio-pci/unbind || fail "unbinding the driver again"

dd if=/dev/urandom of=$dev/config bs=4 count=64 conv=notrunc 2>/dev/null
dd if=/dev/urandom of=/sys/bus/pci/devices/0000:00:00.0/config bs=4 count=64 conv=notrunc 2>/dev/null
echo "guest: the VM survived random configuration writes"
report 0
INIT
guest_pack "$root" "$work/initrd.img"

"$backend" --socket-path "$work/dax.sock" --shared-dir "$shared" 2>"$work/backend.log" &
bpid=$!
for _ in $(seq 100); do [ -S "$work/dax.sock" ] && break; sleep 0.1; done

status=0
timeout "${VFD_BOOT_TIMEOUT:-300}" "$vmm" --kernel "$vmlinuz" --initrd "$work/initrd.img" \
    --cmdline "${VFD_GUEST_CMDLINE:-console=ttyS0 reboot=k panic=-1 quiet}" --mem-mib 512 \
    --fs "tag=myfs,socket=$work/dax.sock,window=32M,transport=pci" 2>"$work/vmm.err" || status=$?
cat "$work/vmm.err" >&2
if [ "$status" = 0 ]; then
    line=$(grep "virtio-fs myfs: maps" "$work/vmm.err" || true)
    num() { echo "$line" | sed -n "s/.*, $1 \([0-9]*\).*/\1/p"; }
    bad=$(num "bad register accesses")
    failed=$(num "failed activations")
    moves=$(num "BAR moves")
    refused=$(num "refused BAR moves")
    echo "pci-abuse: bad accesses ${bad:-?}, failed activations ${failed:-?}, BAR moves ${moves:-?}, refused BAR moves ${refused:-?}" >&2
    if [ -z "$line" ] || [ "${bad:-0}" -lt 12 ] || [ "${failed:-0}" -lt 2 ] ||
        [ "${moves:-0}" -lt 4 ] || [ "${refused:-0}" -lt 2 ]; then
        echo "pci-abuse: the VMM did not count the misuse" >&2
        status=1
    fi
fi
if grep -q "panicked" "$work/vmm.err"; then
    echo "pci-abuse: the VMM panicked" >&2
    status=1
fi
[ "$status" = 0 ] || { echo "pci-abuse: backend log:" >&2; tail -20 "$work/backend.log" >&2; }
exit "$status"
