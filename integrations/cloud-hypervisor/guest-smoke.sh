#!/usr/bin/env bash
# Copyright 2026 The virtio-fs-dax Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# A real Linux guest under cloud-hypervisor (built by build.sh, with the patches of patches/)
# mounts a virtio-fs share of virtiofsd-dax (peers/virtiofsd-dax) with `-o dax=always`, through
# the DAX window `--fs ...,cache_size=32M` gives it. First boot: the guest's `Cache len` line,
# the sha256 of every file of a sample tree (one larger than the window, so the guest gives
# ranges back), a write into a range it mapped read-only, a store through mmap(MAP_SHARED) +
# msync + fsync that the host must see, a new file; while a process holds a file mapped, the
# host pauses the VM, asks for a snapshot (refused: the window holds mappings) and resumes it;
# then the guest reboots with the file still mapped (a virtiofsd serves one connection: the host starts it again whenever it exits, and
# cloud-hypervisor makes its devices anew at a reboot). Second boot: the first boot's writes
# are there, the tree reads again, and with VFD_KILL=1 the host kills virtiofsd-dax while the
# guest holds ranges mapped and starts it again: cloud-hypervisor reconnects (a new DAX channel,
# the window emptied), and the guest mounts again and reads and writes through the new one.
#
# VFD_BACKEND=virtiofsd: stock virtiofsd and no cache_size, one boot: nothing changed (the guest
# finds no cache capability, `dax=always` is refused, a plain mount reads and writes).
#
# Run it where /dev/kvm boots Linux, from the repository:
#   bash scripts/with-kvm.sh bash integrations/cloud-hypervisor/guest-smoke.sh
# Settings: VFD_CH (the cloud-hypervisor binary; default build.sh's output), VFD_BACKEND,
# VFD_KILL, VFD_BOOT_TIMEOUT (seconds, 300), VFD_CH_SECCOMP (cloud-hypervisor's --seccomp:
# true, the default; log lists what the filters would have refused), VIRTIOFSD, VIRTIOFSD_DAX.
set -euo pipefail
cd "$(dirname "$0")/../.."
. vmm/scripts/common.sh
tools=${VIRTIO_FS_DAX_TOOLS:-$HOME/.local/virtio-fs-dax}
ch=${VFD_CH:-$tools/bin/cloud-hypervisor-dax}
remote=${VFD_CH_REMOTE:-$(dirname "$ch")/ch-remote-dax}
if [ "${VFD_BACKEND:-virtiofsd-dax}" = virtiofsd ]; then
    backend=${VIRTIOFSD:-$tools/bin/virtiofsd}
    dax=0
else
    backend=${VIRTIOFSD_DAX:-$tools/bin/virtiofsd-dax}
    dax=1
fi
for b in "$ch" "$remote" "$backend" "$tool"; do
    [ -x "$b" ] || {
        echo "ch-smoke: $b is not built (bash integrations/cloud-hypervisor/build.sh," \
            "bash peers/virtiofsd-dax/build.sh, or the vmm/guest-tool build: see scripts/test.sh)" >&2
        exit 2
    }
done
guest_kernel

work=$(mktemp -d)
cleanup() {
    : >"$work/stop"
    [ -n "${watcher:-}" ] && kill "$watcher" 2>/dev/null || true
    [ -n "${snapshotter:-}" ] && kill "$snapshotter" 2>/dev/null || true
    [ -n "${supervisor:-}" ] && kill "$supervisor" 2>/dev/null || true
    pkill -f -- "--socket-path $work/fs.sock" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The sample tree, on a tmpfs (files a DAX backend maps must not live on 9p).
shared=$work/shared
sample_tree "$shared"

root=$work/root
guest_root "$root" virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
    fuse virtiofs
(cd "$shared" && find . -type f ! -name unread-until-restart | sort | xargs sha256sum) >"$root/expected"
[ "${VFD_KILL:-}" = 1 ] && : >"$root/kill"
[ "$dax" = 0 ] && : >"$root/nodax"
# The guest reports on the serial console and powers off: cloud-hypervisor then exits.
guest_init "$root" <<'INIT'
report() { echo "guest: status $1"; sync; poweroff -f; sleep 30; }
mount -t virtiofs myfs /mnt $([ -e /nodax ] || echo "-o dax=always") || fail "mount"
boot=0
[ -e /mnt/first-boot-done ] && boot=1
echo "guest: boot $boot"
dmesg | grep -i "virtiofs\|Cache len\|cache capability" | sed 's/^/guest: dmesg: /'
grep " /mnt " /proc/mounts | sed 's/^/guest: mount: /'
if [ -e /nodax ]; then
    dmesg | grep -q "No cache capability" || fail "the guest did not report a device without a window"
    umount /mnt
    mount -t virtiofs myfs /mnt -o dax=always 2>/dev/null && fail "dax=always mounted without a window"
    echo "guest: dax=always refused without a window"
    mount -t virtiofs myfs /mnt || fail "plain mount"
else
    dmesg | grep -q "Cache len" || fail "the guest found no DAX window"
    grep " /mnt " /proc/mounts | grep -q "dax=always" || fail "/proc/mounts has no dax=always"
fi
if [ "$boot" = 0 ]; then
    cp /expected /tmp/expected
else
    grep -v "patch\|mmapped" /expected >/tmp/expected
    [ "$(dd if=/mnt/patch bs=1 skip=4096 count=5 2>/dev/null)" = GUEST ] ||
        fail "the first boot's write is not there after the reboot"
    grep -q STORED-THROUGH-MMAP /mnt/mmapped || fail "the first boot's store is not there after the reboot"
    echo "guest: the first boot's writes are there"
fi
(cd /mnt && sha256sum -c /tmp/expected) | sed 's/^/guest: /'
(cd /mnt && sha256sum -c -s /tmp/expected) || fail "a file read through the share differs from the host's"
if [ "$boot" = 0 ]; then
    printf GUEST | dd of=/mnt/patch bs=1 seek=4096 conv=notrunc 2>/dev/null || fail "write into a mapped file"
    echo "written by the guest" >/mnt/from-guest || fail "write"
    vfd-guest mmap-write /mnt/mmapped 8192 STORED-THROUGH-MMAP | sed 's/^/guest: /'
    sync /mnt/mmapped || fail "fsync"
    grep -q STORED-THROUGH-MMAP /mnt/mmapped || fail "a store through mmap is not in the file"
    : >/mnt/first-boot-done
    sync
    if [ ! -e /nodax ]; then
        vfd-guest hold /mnt/sub/five-mib &
        sleep 2
        # The host pauses the VM, asks for a snapshot (refused: the window holds mappings)
        # and resumes it; the mappings are still there.
        echo "guest: asking the host for a snapshot while files are mapped"
        echo snapshot >/mnt/snapshot-request
        sync
        sleep 10
        grep -v "patch\|mmapped" /tmp/expected >/tmp/unchanged
        (cd /mnt && sha256sum -c -s /tmp/unchanged) || fail "a file differs after the pause"
        echo "guest: resumed, the tree reads the same"
        # Reboot with a file mapped: the reset must drop every mapping, and the guest mount again.
        echo "guest: rebooting with files mapped"
        reboot -f
        sleep 30
        fail "reboot did not happen"
    fi
elif [ -e /kill ]; then
    vfd-guest hold /mnt/sub/five-mib &
    hold=$!
    sleep 2
    echo "guest: asking the host to kill the backend"
    echo kill >/mnt/kill-request
    sync
    sleep 8
    echo "guest: after the backend restart:"
    # The restarted virtiofsd knows none of the inodes of this FUSE session (it keeps no state
    # across a restart), so the old mount answers EBADF; a new mount starts a new session.
    timeout 20 ls /mnt >/tmp/ls.out 2>&1; echo "guest:   ls /mnt on the old mount: exit $? $(head -c 120 /tmp/ls.out | tr '\n' ' ')"
    # The holder's ranges were dropped with the old backend: it ends without touching them
    # (cloud-hypervisor stops the VM at a guest access to an unmapped window page).
    kill -9 $hold
    wait $hold 2>/dev/null
    umount -l /mnt || fail "umount after the restart"
    mount -t virtiofs myfs /mnt -o dax=always || fail "mount after the restart"
    grep " /mnt " /proc/mounts | sed 's/^/guest:   mount: /'
    timeout 20 cat /mnt/unread-until-restart >/tmp/new || fail "reading a file never read before"
    echo "guest:   read a file never read before through the new backend"
    timeout 20 sh -c 'echo after >/mnt/after-restart && sync' || fail "writing a new file"
    echo "guest:   wrote a new file"
    (cd /mnt && sha256sum -c -s /tmp/expected) || fail "a file differs after the restart"
    echo "guest:   the tree reads again"
fi
umount /mnt || fail "umount"
echo "guest: every check passed"
report 0
INIT
guest_pack "$root" "$work/initrd.img"

extra=(--sandbox none)
[ "$dax" = 1 ] && extra+=(--dax-window-size 32M)
# virtiofsd serves one connection and exits when it ends; cloud-hypervisor makes its devices
# anew at a reboot, and reconnects after a backend's death: the backend is started again each
# time it exits, as long as the VM runs.
(
    while [ ! -e "$work/stop" ]; do
        rm -f "$work/fs.sock"
        "$backend" --socket-path "$work/fs.sock" --shared-dir "$shared" "${extra[@]}" 2>>"$work/backend.log" &
        echo $! >"$work/backend.pid"
        echo "ch-smoke: backend started (pid $!)" >>"$work/events"
        wait $! || true
        sleep 0.2
    done
) &
supervisor=$!
for _ in $(seq 100); do [ -S "$work/fs.sock" ] && break; sleep 0.1; done
if [ "$dax" = 1 ]; then
    # The guest asks for the snapshot by creating a file in the shared tree.
    (
        while [ ! -e "$shared/snapshot-request" ]; do sleep 0.2; done
        api=(--api-socket "$work/api.sock")
        mkdir -p "$work/snapshot"
        "$remote" "${api[@]}" pause && echo "ch-smoke: paused" >>"$work/events"
        if "$remote" "${api[@]}" snapshot "file://$work/snapshot" >"$work/snapshot.out" 2>&1; then
            echo "ch-smoke: the snapshot was taken with files mapped" >>"$work/events"
        else
            echo "ch-smoke: snapshot refused: $(grep -o 'DAX window holds [0-9]* mappings' "$work/snapshot.out" |
                head -n1)" >>"$work/events"
        fi
        "$remote" "${api[@]}" resume && echo "ch-smoke: resumed" >>"$work/events"
    ) &
    snapshotter=$!
fi
if [ "${VFD_KILL:-}" = 1 ]; then
    # The guest asks for the kill by creating a file in the shared tree.
    (
        while [ ! -e "$shared/kill-request" ]; do sleep 0.2; done
        kill -9 "$(cat "$work/backend.pid")"
        echo "ch-smoke: killed the backend while the guest holds ranges mapped" >>"$work/events"
    ) &
    watcher=$!
fi

fsopt="tag=myfs,socket=$work/fs.sock"
[ "$dax" = 1 ] && fsopt+=",cache_size=32M"
status=0
timeout "${VFD_BOOT_TIMEOUT:-300}" "$ch" --kernel "$vmlinuz" --initramfs "$work/initrd.img" \
    --cmdline "console=ttyS0 reboot=k panic=-1 quiet" --cpus boot=1 \
    --memory size=512M,shared=on --fs "$fsopt" --serial tty --console off \
    --seccomp "${VFD_CH_SECCOMP:-true}" --api-socket "path=$work/api.sock" \
    -v --log-file "$work/ch.log" </dev/null | tee "$work/console.log" || status=$?
: >"$work/stop"
cat "$work/events" >&2
[ -s "$work/snapshot.out" ] && sed 's/^/ch-smoke: ch-remote snapshot: /' "$work/snapshot.out" >&2
if [ "${VFD_CH_SECCOMP:-true}" = log ]; then
    # What the filters would have refused (the kernel's audit lines: syscall=N).
    dmesg | grep -o 'comm="[^"]*".*syscall=[0-9]*' | sed 's/exe=.*sig=[0-9]* //' | sort | uniq -c |
        sed 's/^/ch-smoke: seccomp: /' >&2 || true
fi
grep -i "dax\|vhost-user-fs\|virtio-fs\|reconnect\|error\|warn" "$work/ch.log" | grep -v "Creating virtio-fs device\|VmConfig" |
    tail -n 30 | sed 's/^/cloud-hypervisor: /' >&2 || true
grep -q "guest: status 0" "$work/console.log" || { echo "ch-smoke: the guest did not pass" >&2; status=1; }
if [ "$status" = 0 ]; then
    [ "$(cat "$shared/from-guest" 2>/dev/null)" = "written by the guest" ] ||
        { echo "ch-smoke: the guest's new file did not reach the host" >&2; status=1; }
    [ "$(dd if="$shared/patch" bs=1 skip=4096 count=5 2>/dev/null)" = GUEST ] ||
        { echo "ch-smoke: the guest's write into a mapped file did not reach the host" >&2; status=1; }
    [ "$(dd if="$shared/mmapped" bs=1 skip=8192 count=19 2>/dev/null)" = STORED-THROUGH-MMAP ] ||
        { echo "ch-smoke: the guest's store through mmap did not reach the host" >&2; status=1; }
    if [ "$dax" = 1 ]; then
        grep -q "guest: boot 1" "$work/console.log" || { echo "ch-smoke: no second boot" >&2; status=1; }
        grep -q "Cache len: 0x2000000" "$work/console.log" ||
            { echo "ch-smoke: the guest did not see the 32 MiB window" >&2; status=1; }
    fi
    if [ "$dax" = 1 ]; then
        for e in "paused" "snapshot refused: DAX window holds [1-9][0-9]* mappings" "resumed"; do
            grep -q "ch-smoke: $e" "$work/events" ||
                { echo "ch-smoke: no '$e' from the pause, snapshot and resume" >&2; status=1; }
        done
        [ -z "$(ls -A "$work/snapshot" 2>/dev/null)" ] || { echo "ch-smoke: a snapshot was written" >&2; status=1; }
    fi
    if [ "${VFD_KILL:-}" = 1 ]; then
        grep -q "killed the backend" "$work/events" || { echo "ch-smoke: no kill" >&2; status=1; }
        [ "$(cat "$shared/after-restart" 2>/dev/null)" = after ] ||
            { echo "ch-smoke: the write after the backend's restart did not reach the host" >&2; status=1; }
    fi
fi
[ "$status" = 0 ] && echo "ch-smoke: passed (${VFD_BACKEND:-virtiofsd-dax}${VFD_KILL:+, backend killed and restarted})"
exit "$status"
