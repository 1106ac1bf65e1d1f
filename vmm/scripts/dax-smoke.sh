#!/usr/bin/env bash
# Copyright 2026 The virtio-fs-dax Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# A real Linux guest (two vCPUs) mounts a virtio-fs tag with `-o dax=always` through dax-vmm
# (virtio-mmio) and the dax-backend process. First boot: it reads every file of a sample tree
# through the DAX window and checks its sha256 against the host's (one file is larger than the
# window, so the guest's range reclaim runs), writes into a range it first mapped read-only (the
# guest's writable upgrade), stores through mmap(MAP_SHARED) + msync, creates a file, write(2)s
# from a DAX mapping into a new file (a FUSE_WRITE whose data pages are the window's: the legacy
# backend has the VMM copy them with FS_IO, the standard one refuses it with EFAULT and the mount
# goes on) and read(2)s a file into a DAX mapping of another, then reboots while a process holds
# a file mapped. Second boot: no mapping survived the reset, the
# guest mounts again and reads the tree again; with VFD_KILL=1 the host kills the backend while
# the guest holds ranges mapped and starts it again, and the guest says what it sees. The host
# checks every write and the VMM's counters. Run it where /dev/kvm boots Linux:
# `bash scripts/with-kvm.sh bash vmm/scripts/dax-smoke.sh` from the repository.
#   VFD_DIALECT=standard|legacy (default standard)
#   VFD_TRANSPORT=mmio|pci (default mmio): with pci the device is virtio-pci behind the VMM's host
#   bridge, and one boot only (the VMM does not reboot a guest with PCI devices); the guest also
#   checks what it sees on PCI, the host that the window is at the BAR.
#   VFD_KILL=1: kill and restart the backend in the second boot.
#   VFD_BACKEND=virtiofsd-dax: against virtiofsd-dax (virtiofsd with the patches of
#   peers/virtiofsd-dax: DAX through SHMEM_MAP, standard dialect only) instead of dax-backend,
#   under its default seccomp filter, the device checking its window size (shmem_check=on);
#   every check above applies.
#   VFD_BACKEND=virtiofsd: against virtiofsd instead (no DAX), one boot: the device is configured
#   with a window and `fallback=disable`, so it finds out at connect that virtiofsd cannot serve
#   it and offers none; the guest says so, `dax=always` is refused, a plain mount reads and writes;
#   then it writes and reads two registers virtio-mmio does not have (logged and counted).
set -euo pipefail
cd "$(dirname "$0")/../.."
. vmm/scripts/common.sh
[ "${VFD_BACKEND:-}" = virtiofsd ] && backend=${VIRTIOFSD:-$HOME/.local/virtio-fs-dax/bin/virtiofsd}
[ "${VFD_BACKEND:-}" = virtiofsd-dax ] &&
    backend=${VIRTIOFSD_DAX:-$HOME/.local/virtio-fs-dax/bin/virtiofsd-dax}
need_built dax-smoke "$vmm" "$backend" "$tool"
guest_kernel
dialect=${VFD_DIALECT:-standard}
if [ "${VFD_BACKEND:-}" = virtiofsd-dax ] && [ "$dialect" != standard ]; then
    echo "dax-smoke: virtiofsd-dax speaks the standard dialect only" >&2
    exit 2
fi
transport=${VFD_TRANSPORT:-mmio}

work=$(mktemp -d)
cleanup() {
    [ -n "${bpid:-}" ] && kill "$bpid" 2>/dev/null || true
    [ -n "${watcher:-}" ] && kill "$watcher" 2>/dev/null || true
    pkill -f -- "--socket-path $work/dax.sock" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The sample tree, on a tmpfs (files a DAX backend maps must not live on 9p).
shared=$work/shared
sample_tree "$shared"
# Read through a mapping and written into a new file from it (not a multiple of the page size).
head -c 200000 /dev/urandom >"$shared/window-src"

# The guest's initramfs: busybox, the virtio-mmio and virtiofs modules, and the checks.
root=$work/root
if [ "$transport" = pci ]; then
    guest_root "$root" virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
        fuse virtiofs
    : >"$root/pci"
else
    guest_root "$root" virtio_ring virtio virtio_mmio fuse virtiofs
fi
(cd "$shared" && find . -type f ! -name unread-until-restart | sort | xargs sha256sum) >"$root/expected"
[ "${VFD_KILL:-}" = 1 ] && : >"$root/kill"
[ "$dialect" = legacy ] && : >"$root/legacy"
window=32M
fsopts=""
dax=1
reboot=1
[ "$transport" = pci ] && reboot=0
if [ "${VFD_BACKEND:-}" = virtiofsd ]; then
    : >"$root/nodax"
    fsopts=",fallback=disable"
    dax=0
    reboot=0
fi
# virtiofsd-dax reports its --dax-window-size (GET_SHMEM_CONFIG): the device checks it.
[ "${VFD_BACKEND:-}" = virtiofsd-dax ] && fsopts=",shmem_check=on"
[ "$reboot" = 1 ] && : >"$root/reboot"
guest_init "$root" <<'INIT'
boot=$(sed -n 's/.*vfd\.boot=\([0-9]*\).*/\1/p' /proc/cmdline)
echo "guest: boot $boot, $(grep -c ^processor /proc/cpuinfo) CPUs"
[ "$(grep -c ^processor /proc/cpuinfo)" = 2 ] || fail "the guest does not see two CPUs"
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
if [ "$boot" = 0 ]; then
    cp /expected /tmp/expected
else
    # The first boot wrote into these two: what it wrote must have survived the reboot.
    grep -v "patch\|mmapped" /expected >/tmp/expected
    [ "$(dd if=/mnt/patch bs=1 skip=4096 count=5 2>/dev/null)" = GUEST ] ||
        fail "the first boot's write is not there after the reboot"
    grep -q STORED-THROUGH-MMAP /mnt/mmapped || fail "the first boot's store is not there after the reboot"
    echo "guest: the first boot's writes are there"
fi
(cd /mnt && sha256sum -c /tmp/expected) | sed 's/^/guest: /'
(cd /mnt && sha256sum -c -s /tmp/expected) || fail "a file read through DAX differs from the host's"
if [ "$boot" = 0 ]; then
    # The patch file was mapped read-only by the read above; writing into it upgrades the range.
    printf GUEST | dd of=/mnt/patch bs=1 seek=4096 conv=notrunc 2>/dev/null || fail "write into a mapped file"
    echo "written by the guest" >/mnt/from-guest || fail "write"
    vfd-guest mmap-write /mnt/mmapped 8192 STORED-THROUGH-MMAP | sed 's/^/guest: /'
    grep -q STORED-THROUGH-MMAP /mnt/mmapped || fail "a store through mmap is not in the file"
    if [ ! -e /nodax ]; then
        # write(2) from a DAX mapping into a new file: the write extends the file, so the
        # kernel sends it as FUSE_WRITE with the mapping's own pages, in the window, which the
        # backend cannot see. Legacy: the VMM copies them (FS_IO); standard: EFAULT, cleanly.
        vfd-guest write-from-map /mnt/window-src /mnt/window-copy >/tmp/wfm 2>&1 ||
            fail "write-from-map: $(cat /tmp/wfm)"
        sed 's/^/guest: /' /tmp/wfm
        if [ -e /legacy ]; then
            grep -q "^write-from-map: copied" /tmp/wfm || fail "a write from a DAX mapping was not served"
        else
            grep -q "^write-from-map: refused with errno 14 " /tmp/wfm ||
                fail "a write from a DAX mapping was not refused with EFAULT"
        fi
        echo "after a write from a mapping" >/mnt/after-window-write ||
            fail "writing after the write from a mapping"
        [ "$(cat /mnt/after-window-write)" = "after a write from a mapping" ] ||
            fail "reading after the write from a mapping"
        # read(2) into a DAX mapping of another file.
        vfd-guest read-into-map /mnt/window-src /mnt/window-read >/tmp/rim 2>&1 ||
            fail "read-into-map: $(cat /tmp/rim)"
        sed 's/^/guest: /' /tmp/rim
    fi
    sync
    if [ -e /reboot ]; then
        # Reboot with a file mapped: the reset must drop every mapping, and the guest mount again.
        vfd-guest hold /mnt/sub/five-mib &
        sleep 2
        echo "guest: rebooting with files mapped"
        reboot -f
        sleep 30
        fail "reboot did not happen"
    fi
elif [ -e /kill ] && [ "$boot" = 1 ]; then
    vfd-guest hold /mnt/sub/five-mib &
    hold=$!
    sleep 2
    echo "guest: asking the host to kill the backend"
    echo kill >/mnt/kill-request
    sync
    sleep 8
    echo "guest: after the backend restart:"
    timeout 20 ls /mnt >/tmp/ls.out 2>&1; echo "guest:   ls /mnt: exit $? $(head -c 200 /tmp/ls.out | tr '\n' ' ')"
    timeout 20 cat /mnt/unread-until-restart >/tmp/new 2>/tmp/err; rc=$?
    echo "guest:   reading a file never read before: exit $rc $(cat /tmp/err)"
    timeout 20 sh -c 'echo after >/mnt/after-restart && sync'; echo "guest:   writing a new file: exit $?"
    # The ranges mapped before the kill are gone from the window: the holder touches them again.
    # The VMM answers with a machine check for the page (the process dies of SIGBUS) where the
    # kernel tells it the address, or resets the guest where it does not (then boot 2 below).
    echo "guest:   the process holding a mapping from before the kill touches it again"
    kill -USR1 $hold
    wait $hold
    echo "guest:   it ended with exit $?"
    dmesg | grep -i "memory failure\|mce:\|machine check" | tail -5 | sed 's/^/guest:   dmesg: /'
fi
if [ -e /kill ] && [ "$boot" = 2 ]; then
    echo "guest: reset by the VMM after touching a dropped mapping; the mount works again"
    timeout 20 cat /mnt/unread-until-restart >/dev/null || fail "reading after the reset"
fi
umount /mnt || fail "umount"
if [ -e /nodax ] && [ ! -e /pci ]; then
    # Registers the device does not have: refused, logged and counted, and the VM goes on.
    # The driver lets go of the register page first (the kernel keeps /dev/mem off a page a
    # driver holds).
    for d in /sys/bus/platform/drivers/virtio-mmio/*:*; do
        echo "${d##*/}" >/sys/bus/platform/drivers/virtio-mmio/unbind
    done
    devmem 0xd00000c0 32 0xdeadbeef
    devmem 0xd00000d0 32 >/dev/null
    echo "guest: wrote and read two registers virtio-mmio does not have"
fi
echo "guest: every check passed"
report 0
INIT
guest_pack "$root" "$work/initrd.img"

extra=()
[ "$dialect" = legacy ] && extra=(--legacy)
[ "${VFD_BACKEND:-}" = virtiofsd ] && extra=(--sandbox none)
[ "${VFD_BACKEND:-}" = virtiofsd-dax ] && extra=(--sandbox none --dax-window-size "$window")
start_backend() {
    rm -f "$work/dax.sock"
    "$backend" --socket-path "$work/dax.sock" --shared-dir "$shared" "${extra[@]}" 2>>"$work/backend.log" &
    bpid=$!
    for _ in $(seq 100); do [ -S "$work/dax.sock" ] && break; sleep 0.1; done
}
start_backend
if [ "${VFD_KILL:-}" = 1 ]; then
    # The guest asks for the kill by creating a file in the shared tree.
    (
        while [ ! -e "$shared/kill-request" ]; do sleep 0.2; done
        kill -9 "$bpid"
        echo "dax-smoke: killed the backend (pid $bpid) while the guest holds ranges mapped" >&2
        sleep 1
        start_backend
        echo "dax-smoke: started it again (pid $bpid)" >&2
        wait "$bpid"
    ) &
    watcher=$!
fi

status=0
timeout "${VFD_BOOT_TIMEOUT:-300}" "$vmm" --kernel "$vmlinuz" --initrd "$work/initrd.img" \
    --cmdline "${VFD_GUEST_CMDLINE:-console=ttyS0 reboot=k panic=-1 pci=off quiet}" --mem-mib 512 --cpus 2 \
    --fs "tag=myfs,socket=$work/dax.sock,window=$window,dialect=$dialect,transport=$transport$fsopts" \
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
    if [ "$dax" = 1 ] && { [ -z "$maps" ] || [ "$maps" -le 16 ] || [ "$unmaps" -lt 1 ]; }; then
        echo "dax-smoke: no reclaim seen in the VMM's counters ($counters)" >&2
        status=1
    fi
    if [ "$dax" = 1 ]; then
        # The write from a DAX mapping: in the file (legacy), or refused and nothing written
        # (standard); the read into a DAX mapping reached the file through the mapping.
        if [ "$dialect" = legacy ]; then
            cmp -s "$shared/window-src" "$shared/window-copy" || {
                echo "dax-smoke: the write from a DAX mapping did not reach the host" >&2
                status=1
            }
        else
            if [ ! -e "$shared/window-copy" ] || [ -s "$shared/window-copy" ]; then
                echo "dax-smoke: the refused write from a DAX mapping left bytes on the host" >&2
                status=1
            fi
            # The backend saw the window's pages (and said why it refused them).
            said="opcode 16) with a buffer outside guest RAM: no FS_IO"
            [ "${VFD_BACKEND:-}" = virtiofsd-dax ] && said="replying EFAULT"
            grep -q "$said" "$work/backend.log" || {
                echo "dax-smoke: the backend saw no FUSE_WRITE from the window" >&2
                status=1
            }
        fi
        cmp -s "$shared/window-src" "$shared/window-read" || {
            echo "dax-smoke: the read into a DAX mapping did not reach the host" >&2
            status=1
        }
        [ "$(cat "$shared/after-window-write" 2>/dev/null)" = "after a write from a mapping" ] || {
            echo "dax-smoke: the mount did not go on after the write from a mapping" >&2
            status=1
        }
    fi
    if [ "$(dd if="$shared/mmapped" bs=1 skip=8192 count=19 2>/dev/null)" != STORED-THROUGH-MMAP ]; then
        echo "dax-smoke: the guest's store through mmap did not reach the host" >&2
        status=1
    fi
    if [ "$transport" = pci ] && [ "$dax" = 1 ]; then
        placed=$(sed -n 's/.*DAX window 0x[0-9a-f]* bytes at \(0x[0-9a-f]*\) (BAR 2).*/\1/p' "$work/vmm.err")
        seen=$(sed -n 's/.*Cache len: 0x[0-9a-f]* @ \(0x[0-9a-f]*\).*/\1/p' "$work/console.log" | head -n1)
        if [ -z "$placed" ] || [ "$placed" != "$seen" ]; then
            echo "dax-smoke: the guest's window (${seen:-none}) is not the BAR the VMM placed (${placed:-none})" >&2
            status=1
        fi
    fi
    if [ "$reboot" = 1 ]; then
        # The reboot: the guest's driver resets the device on its way down (the platform reset
        # after it finds nothing left); that reset dropped every mapping the first boot held.
        reset_line=$(grep -o 'virtio-fs myfs: reset by the driver: [0-9]* mapping(s) before, [0-9]* after' "$work/vmm.err" | head -n1 || true)
        before=$(echo "$reset_line" | awk '{print $7}')
        after=$(echo "$reset_line" | awk '{print $10}')
        if [ -z "$reset_line" ] || [ "$before" -lt 1 ] || [ "$after" != 0 ]; then
            echo "dax-smoke: the reset at reboot did not drop the mappings ($reset_line)" >&2
            status=1
        fi
        grep -q 'reboot: virtio-fs myfs: [0-9]* mapping(s) before the reset, 0 after' "$work/vmm.err" || {
            echo "dax-smoke: mappings survived the platform reset" >&2
            status=1
        }
        grep -q "boots [23]" "$work/vmm.err" || { echo "dax-smoke: no second boot" >&2; status=1; }
    fi
    # After the last umount the backend gave every range back (FUSE_DESTROY).
    if [ "$dax" = 1 ] && ! grep -q "live mappings 0, refusals" "$work/vmm.err"; then
        echo "dax-smoke: mappings left after umount" >&2
        status=1
    fi
    if [ "${VFD_KILL:-}" = 1 ]; then
        grep -q "reconnects 1," "$work/vmm.err" || { echo "dax-smoke: the backend was not reconnected" >&2; status=1; }
        grep -q "guest accesses to unmapped window pages: [1-9]" "$work/vmm.err" ||
            { echo "dax-smoke: the guest's touch of a dropped mapping was not seen" >&2; status=1; }
        grep -q "backend gone; mappings dropped (live mappings 0)" "$work/vmm.err" ||
            { echo "dax-smoke: the backend's loss did not drop the mappings" >&2; status=1; }
    fi
    # After the kill the guest gives back ranges it mapped before it (REMOVEMAPPING through the
    # restarted backend); the device dropped them at the kill, so it refuses them (not mapped).
    refusals=0
    [ "${VFD_KILL:-}" = 1 ] && refusals="[0-9]*"
    bad=0
    if [ "$dax" = 0 ] && [ "$transport" = mmio ]; then
        bad=2
        grep -q "write of 0xdeadbeef to unknown register 0xc0, ignored" "$work/vmm.err" ||
            { echo "dax-smoke: no log line for the guest's bad register write" >&2; status=1; }
    fi
    grep -q "refusals $refusals, bad register accesses $bad, failed activations 0" "$work/vmm.err" || {
        echo "dax-smoke: refusals or bad accesses in the VMM's counters" >&2
        status=1
    }
fi
[ "$status" = 0 ] || { echo "dax-smoke: backend log:" >&2; tail -20 "$work/backend.log" >&2; }
exit "$status"
