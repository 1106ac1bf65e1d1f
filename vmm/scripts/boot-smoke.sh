#!/usr/bin/env bash
# Copyright 2026 The virtio-fs-dax Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Boots the Debian kernel in $VFD_KERNEL_DIR with dax-vmm and a busybox initramfs whose init
# checks that it runs and reports its status through the VMM's exit port. Run it where /dev/kvm
# boots Linux: `bash scripts/with-kvm.sh bash vmm/scripts/boot-smoke.sh` from the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
vmm=${DAX_VMM:-target/release/dax-vmm}
[ -x "$vmm" ] || { echo "boot-smoke: build dax-vmm first (cd vmm && cargo build --release)" >&2; exit 2; }
kdir=${VFD_KERNEL_DIR:?run through scripts/with-kvm.sh, which sets VFD_KERNEL_DIR}
vmlinuz=$(find "$kdir/boot" -name 'vmlinuz-*' | head -n1)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root"/{bin,dev,proc,sys}
cp /bin/busybox "$work/root/bin/busybox"
cat >"$work/root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
status=0
echo "guest: Linux $(uname -r) up, $(grep -c ^processor /proc/cpuinfo) CPU(s), $(awk '/MemTotal/ {print $2}' /proc/meminfo) kB"
[ -e /dev/port ] || { echo "guest: no /dev/port"; status=1; }
echo "guest: done, status $status"
printf "\\$(printf %o "$status")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
echo "guest: the exit port did not end the VM"
sleep 1000
INIT
chmod +x "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.img"
timeout "${VFD_BOOT_TIMEOUT:-300}" "$vmm" --kernel "$vmlinuz" --initrd "$work/initrd.img" \
    --cmdline "console=ttyS0 reboot=k panic=-1 pci=off quiet" --mem-mib 256
