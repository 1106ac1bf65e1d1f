# Copyright 2026 The virtio-fs-dax Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Sourced by the scripts that boot a guest under dax-vmm (from the repository's root): the
# kernel, the guest's initramfs, and the start of the guest's init.
# shellcheck shell=bash disable=SC2034  # the variables are the sourcing script's

vmm=${DAX_VMM:-vmm/target/release/dax-vmm}
backend=${DAX_BACKEND:-peers/dax-backend/target/release/dax-backend}
tool=${VFD_GUEST_TOOL:-vmm/guest-tool/target/release/vfd-guest}

# need_built NAME FILE...: every FILE is built (NAME says who asks).
need_built() {
    local name=$1 b
    shift
    for b in "$@"; do
        [ -x "$b" ] || { echo "$name: $b is not built" >&2; exit 2; }
    done
}

# guest_kernel: sets vmlinuz and moddir from the Debian kernel in $VFD_KERNEL_DIR.
guest_kernel() {
    local kdir=${VFD_KERNEL_DIR:?run through scripts/with-kvm.sh, which sets VFD_KERNEL_DIR}
    vmlinuz=$(find "$kdir/boot" -name 'vmlinuz-*' | head -n1)
    moddir=$(find "$kdir/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)
}

# sample_tree DIR: the files the DAX smoke tests share with the guest (put DIR on a tmpfs: files
# a DAX backend maps must not live on 9p): small and larger files, one (48 MiB) larger than
# their 32 MiB window so that the guest must give ranges back to read it all, two the guest
# writes into (`patch`, and `mmapped` through mmap), and one it reads only after a backend
# restart.
sample_tree() {
    local dir=$1
    mkdir -p "$dir/sub"
    head -c 3000 /dev/urandom >"$dir/small"
    head -c $((5 << 20)) /dev/urandom >"$dir/sub/five-mib"
    head -c $((48 << 20)) /dev/urandom >"$dir/sub/larger-than-window"
    printf 'hello from the host\n' >"$dir/hello"
    head -c 8192 /dev/zero | tr '\0' a >"$dir/patch"
    head -c 65536 /dev/zero | tr '\0' m >"$dir/mmapped"
    head -c 3000 /dev/urandom >"$dir/unread-until-restart"
}

# guest_root ROOT MODULE...: busybox, vfd-guest when it is built, and the modules in load order
# (one this kernel has built in, or not at all, is skipped; the guest's checks tell).
guest_root() {
    local root=$1 m f
    shift
    mkdir -p "$root"/{bin,dev,proc,sys,mnt,mods,tmp}
    cp /bin/busybox "$root/bin/busybox"
    if [ -x "$tool" ]; then cp "$tool" "$root/bin/vfd-guest"; fi
    : >"$root/mods/order"
    for m in "$@"; do
        # Debian ships modules plain (6.1) or compressed (6.12); busybox's insmod wants them plain.
        f=$(find "$moddir/kernel" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -n1)
        if [ -z "$f" ]; then
            grep -qE "/$m\.ko" "$moddir/modules.builtin" 2>/dev/null ||
                echo "module $m not in $moddir, skipped" >&2
            continue
        fi
        case "$f" in
        *.xz) xz -dc "$f" >"$root/mods/$m.ko" ;;
        *.zst) zstd -qdc "$f" >"$root/mods/$m.ko" ;;
        *) cp "$f" "$root/mods/$m.ko" ;;
        esac
        echo "$m" >>"$root/mods/order"
    done
}

# guest_init ROOT: writes ROOT/init, the standard start (busybox, /proc, /sys, /dev, `report
# STATUS` through the VMM's exit port, `fail MESSAGE`, the modules) and then standard input.
guest_init() {
    {
        cat <<'HEAD'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
report() { printf "\\$(printf %o "$1")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null; sleep 5; }
fail() { echo "guest: FAIL: $*"; report 1; }
for m in $(cat /mods/order); do insmod /mods/$m.ko || fail "insmod $m"; done
HEAD
        cat
    } >"$1/init"
    chmod +x "$1/init"
}

# guest_pack ROOT IMAGE: the initramfs.
guest_pack() {
    (cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) >"$2"
}
