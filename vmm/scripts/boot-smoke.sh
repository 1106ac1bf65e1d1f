#!/usr/bin/env bash
# Copyright 2026 The virtio-fs-dax Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Boots the Debian kernel in $VFD_KERNEL_DIR with dax-vmm and a busybox initramfs whose init
# checks what it found (ACPI tables among them) and powers off through ACPI when all is well, or
# reports the failure through the VMM's exit port; the VMM's status is the guest's verdict. Run it where /dev/kvm
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
for t in DSDT FACP APIC; do
    [ -e /sys/firmware/acpi/tables/$t ] || { echo "guest: no ACPI $t table"; status=1; }
done
[ -e /dev/port ] || { echo "guest: no /dev/port"; status=1; }
report() { printf "\\$(printf %o "$1")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null; }
if [ "$status" != 0 ]; then
    echo "guest: checks failed"
    report "$status"
fi
# Every check passed: power off through ACPI, which ends the VMM with status 0.
echo "guest: checks passed, powering off"
poweroff -f
sleep 5
echo "guest: ACPI power-off did not end the VM"
report 3
INIT
chmod +x "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.img"
timeout "${VFD_BOOT_TIMEOUT:-300}" "$vmm" --kernel "$vmlinuz" --initrd "$work/initrd.img" \
    --cmdline "${VFD_GUEST_CMDLINE:-console=ttyS0 reboot=k panic=-1 pci=off quiet}" --mem-mib 256
