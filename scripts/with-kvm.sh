#!/usr/bin/env bash
# Copyright 2026 The virtio-fs-dax Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Runs a command where /dev/kvm can boot a stock Linux guest, and exits with the command's
# status.
#
#   bash scripts/with-kvm.sh [--] COMMAND [ARG...]
#
# - Where the host's KVM has hardware virtualisation (vmx or svm in /proc/cpuinfo), the command
#   runs here, directly.
# - Otherwise (a PVM host, say, whose /dev/kvm cannot run a stock kernel) it runs inside a QEMU
#   TCG guest ("L1") whose emulated AMD CPU has SVM: Debian's own kvm-amd module gives that guest
#   a working /dev/kvm (nested paging off, shadow paging). L1 sees the host's whole file system
#   read-only at the same paths, the current directory read-write, and a tmpfs on /tmp, /run and
#   /dev/shm; the command runs there in a chroot, as root, from the current directory, with the
#   variables VFD_*, DAX_*, VIRTIOFSD, VIRTIOFSD_DAX, RUST_LOG, RUST_BACKTRACE and CI of the
#   caller.
#
# What it needs comes from Debian's packages and is installed when missing: qemu-system-x86,
# busybox-static, cpio. The kernel is the current Debian kernel package (the one
# linux-image-amd64 depends on), downloaded with apt-get once into $VFD_KERNEL_CACHE (default
# ~/.cache/virtio-fs-dax/kernel) and unpacked there; its path is exported to the command as
# VFD_KERNEL_DIR (boot/vmlinuz-*, lib/modules/*), so the command can boot the same kernel as its
# own guest ("L2"). With VFD_GUEST_KERNEL set to another Debian kernel meta package (say
# linux-image-6.12-amd64), that kernel is fetched the same way and exported as
# VFD_GUEST_KERNEL_DIR, for the command to boot as L2 (L1 keeps the current one).
#
# Settings (environment): VFD_WITH_KVM=direct|nested (default: detect), VFD_L1_MEM_MIB (3072),
# VFD_L1_CPUS (2), VFD_L1_TIMEOUT seconds per boot of L1 (900), VFD_L1_RETRIES (1: boots of L1
# again when it ends without the command's status, see below), VFD_L1_LOCKUP_SECS (60: a soft
# lockup that long in L1 stops it at once), VFD_L1_SILENCE_SECS (240: the command printing
# nothing that long stops L1 too), VFD_L1_LOG (a log of L1's console; default a temporary file,
# printed when L1 fails). Each boot of L1 ends with one line: how long it took and the longest
# the command went without a line.
set -euo pipefail

[ "${1:-}" = "--" ] && shift
if [ $# -eq 0 ]; then
    echo "usage: $0 [--] COMMAND [ARG...]" >&2
    exit 2
fi

need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
[ -x /bin/busybox ] || need_pkgs+=(busybox-static)
command -v cpio >/dev/null || need_pkgs+=(cpio)

# kernel_dir [META]: the kernel package META (default linux-image-amd64) depends on now,
# unpacked once into the cache.
kernel_dir() {
    local cache=${VFD_KERNEL_CACHE:-$HOME/.cache/virtio-fs-dax/kernel}
    local meta=${1:-linux-image-amd64}
    local pkg
    pkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    if [ -z "$pkg" ]; then
        apt-get update -qq >&2
        pkg=$(apt-cache depends "$meta" | awk '/Depends: linux-image-/ {print $2; exit}')
    fi
    [ -n "$pkg" ] || { echo "with-kvm: cannot resolve $meta's kernel package" >&2; return 1; }
    local dir=$cache/$pkg
    if [ ! -d "$dir/boot" ]; then
        mkdir -p "$cache"
        local tmp
        tmp=$(mktemp -d "$cache/.dl.XXXXXX")
        # As root, apt warns that it downloads unsandboxed into a directory _apt cannot read.
        (cd "$tmp" && apt-get download -qq "$pkg" 2>&1 | grep -v 'unsandboxed' || true) >&2
        ls "$tmp"/"$pkg"_*.deb >/dev/null 2>&1 || { echo "with-kvm: downloading $pkg failed" >&2; return 1; }
        dpkg -x "$tmp"/"$pkg"_*.deb "$tmp/x"
        rm -rf "$dir"
        mv "$tmp/x" "$dir"
        rm -rf "$tmp"
    fi
    echo "$dir"
}

mode=${VFD_WITH_KVM:-}
if [ -z "$mode" ]; then
    if [ -c /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
        mode=direct
    else
        mode=nested
    fi
fi

# Another kernel for the command's guests (L2) only, when asked: VFD_GUEST_KERNEL names its
# Debian meta package (say linux-image-6.12-amd64); the command gets it as VFD_GUEST_KERNEL_DIR.
if [ -n "${VFD_GUEST_KERNEL:-}" ]; then
    VFD_GUEST_KERNEL_DIR=$(kernel_dir "$VFD_GUEST_KERNEL")
    export VFD_GUEST_KERNEL_DIR
fi

if [ "$mode" = direct ]; then
    VFD_KERNEL_DIR=$(kernel_dir)
    export VFD_KERNEL_DIR
    exec "$@"
fi

if [ "${#need_pkgs[@]}" -gt 0 ]; then
    echo "with-kvm: installing ${need_pkgs[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
fi
kdir=$(kernel_dir)
vmlinuz=$(find "$kdir/boot" -name 'vmlinuz-*' | head -n1)
moddir=$(find "$kdir/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)

work=$(mktemp -d /tmp/with-kvm.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,host,mods}
cp /bin/busybox "$root/bin/busybox"

# KVM, then the 9p file system over virtio for the host's files, in dependency order.
modules=(irqbypass ccp kvm kvm-amd netfs fscache 9pnet virtio_ring virtio virtio_pci_modern_dev
    virtio_pci_legacy_dev virtio_pci 9pnet_virtio 9p)
: >"$root/mods/order"
for m in "${modules[@]}"; do
    f=$(find "$moddir/kernel" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -n1)
    if [ -z "$f" ]; then
        # Built into this kernel: nothing to load.
        grep -qE "/$m\.ko" "$moddir/modules.builtin" 2>/dev/null && continue
        echo "with-kvm: module $m not found in $moddir" >&2
        exit 1
    fi
    case "$f" in
    *.xz) xz -dc "$f" >"$root/mods/$m.ko" ;;
    *.zst) zstd -qdc "$f" >"$root/mods/$m.ko" ;;
    *) cp "$f" "$root/mods/$m.ko" ;;
    esac
    echo "$m" >>"$root/mods/order"
done

# The command, quoted for the shell in L1, run from the current directory with the kernel's
# path exported.
cwd=$(pwd -P)
{
    printf 'export VFD_KERNEL_DIR=%q\n' "$kdir"
    printf 'export HOME=%q PATH=%q\n' "${HOME:-/root}" "$PATH"
    # The project's own settings cross into L1 too.
    while IFS='=' read -r name _; do
        case "$name" in
        VFD_* | DAX_* | VIRTIOFSD | VIRTIOFSD_DAX | RUST_LOG | RUST_BACKTRACE | CI)
            printf 'export %s=%q\n' "$name" "${!name}"
            ;;
        esac
    done < <(env)
    printf 'cd %q || exit 125\n' "$cwd"
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
} >"$root/cmd"

cat >"$root/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
for m in \$(cat /mods/order); do
    insmod /mods/\$m.ko || echo "with-kvm: insmod \$m failed"
done
o=trans=virtio,version=9p2000.L,msize=524288
mount -t 9p -o \$o,ro hostroot /host || echo "with-kvm: mounting the host failed"
mount --bind /dev /host/dev
mount --bind /proc /host/proc
mount --bind /sys /host/sys
for d in /run /dev/shm /tmp; do mkdir -p /host\$d; mount -t tmpfs tmpfs /host\$d; done
mkdir -p /host$(printf '%q' "$cwd")
mount -t 9p -o \$o work /host$(printf '%q' "$cwd") || echo "with-kvm: mounting the work dir failed"
cp /cmd /host/run/with-kvm-cmd
[ -c /dev/kvm ] || echo "with-kvm: no /dev/kvm in L1"
# A heartbeat on the console, kept out of the command's output: it tells a hang of L1 itself
# from a command (or its guest) that has gone silent.
(while sleep 20; do echo "with-kvm: L1 alive"; done) &
chroot /host /bin/bash /run/with-kvm-cmd
st=\$?
kill \$! 2>/dev/null
echo
echo "with-kvm: exit \$st"
sync
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/l1.img"

log=${VFD_L1_LOG:-$work/l1.log}
# L1 is QEMU TCG emulating SVM, with KVM's shadow paging inside: once in a while its kernel locks
# up in KVM_RUN, seen about once in ten guest boots here. Either its watchdog reports a CPU stuck
# (a soft lockup that no signal ends), or its console just stops, in the middle of a guest's
# boot. That is this route's failure, not the command's: when L1 ends without the command's
# status, it is booted once more (VFD_L1_RETRIES), loudly. A status, success or not, is final.
# No such hang is waited out to VFD_L1_TIMEOUT: L1 is stopped at once when its watchdog reports
# a CPU stuck for VFD_L1_LOCKUP_SECS (60) seconds or more, or when the command has printed
# nothing for VFD_L1_SILENCE_SECS (240) seconds. L1 prints a heartbeat every 20 s (kept out of
# the output), so the line that stops it says whether L1 itself was still running. The commands
# run here print at every step, a guest's boot included, and their longest silence is printed
# for each boot of L1, so that this bound can be checked against the runs.
attempts=$((1 + ${VFD_L1_RETRIES:-1}))
lockup_secs=${VFD_L1_LOCKUP_SECS:-60}
silence_secs=${VFD_L1_SILENCE_SECS:-240}
# watch_l1 LOG PIDFILE: stops the QEMU of PIDFILE once LOG reports a lockup that long, or has
# had nothing but heartbeats that long; keeps the longest silence seen in $work/silence.
watch_l1() {
    local log=$1 pidfile=$2 stuck size last_size=-1 quiet=0 longest=0 beats last_beats=0 since=0
    while sleep 5; do
        stuck=$(grep -ao 'soft lockup - CPU#[0-9]* stuck for [0-9]*s' "$log" 2>/dev/null |
            sed 's/.* \([0-9]*\)s$/\1/' | sort -n | tail -n1) || true
        size=$(grep -av 'with-kvm: L1 alive' "$log" 2>/dev/null | wc -c) || true
        beats=$(grep -ac 'with-kvm: L1 alive' "$log" 2>/dev/null) || true
        if [ "$size" = "$last_size" ]; then
            quiet=$((quiet + 5))
        else
            quiet=0
            last_size=$size
        fi
        if [ "${beats:-0}" = "$last_beats" ]; then
            since=$((since + 5))
        else
            since=0
            last_beats=$beats
        fi
        [ "$quiet" -gt "$longest" ] && longest=$quiet && echo "$longest" >"$work/silence"
        [ -s "$pidfile" ] || continue
        if [ "${stuck:-0}" -ge "$lockup_secs" ]; then
            echo "with-kvm: L1 reports a CPU stuck for ${stuck}s: stopping it" >&2
        elif [ "$quiet" -ge "$silence_secs" ]; then
            if [ "$last_beats" -gt 0 ] && [ "$since" -lt 60 ]; then
                echo "with-kvm: the command has printed nothing for ${quiet}s, though L1 is alive (its heartbeat ${since}s ago): stopping it" >&2
            else
                echo "with-kvm: L1 has printed nothing for ${quiet}s, its heartbeat included: stopping it" >&2
            fi
        else
            continue
        fi
        kill "$(cat "$pidfile")" 2>/dev/null
        return
    done
}
for attempt in $(seq "$attempts"); do
    status=0
    rm -f "$work/qemu.pid" "$work/silence"
    : >"$log"
    began=$(date +%s)
    watch_l1 "$log" "$work/qemu.pid" &
    watcher=$!
    timeout "${VFD_L1_TIMEOUT:-900}" qemu-system-x86_64 -pidfile "$work/qemu.pid" \
        -accel tcg,thread=multi -cpu qemu64,+svm -smp "${VFD_L1_CPUS:-2}" -m "${VFD_L1_MEM_MIB:-3072}" \
        -nographic -no-reboot -nodefaults -serial stdio \
        -kernel "$vmlinuz" -initrd "$work/l1.img" -append "console=ttyS0 panic=-1 quiet" \
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
        -virtfs "local,path=$cwd,mount_tag=work,security_model=none,multidevs=remap" \
        </dev/null 2>&1 | tee "$log" | sed -u -e '/with-kvm: exit [0-9]/d' -e '/with-kvm: L1 alive/d' ||
        status=$?
    kill "$watcher" 2>/dev/null || true
    wait "$watcher" 2>/dev/null || true
    echo "with-kvm: L1 ran $(($(date +%s) - began))s (attempt $attempt of $attempts), its console's longest silence $(cat "$work/silence" 2>/dev/null || echo 0)s" >&2

    code=$(sed -n 's/.*with-kvm: exit \([0-9][0-9]*\).*/\1/p' "$log" | tail -n1 | tr -d '\r')
    [ -n "$code" ] && exit "$code"
    echo "with-kvm: L1 ended without the command's status (attempt $attempt of $attempts, qemu/timeout status $status); its console:" >&2
    grep -a -v -e '^$' -e 'with-kvm: L1 alive' "$log" | tail -n 20 >&2
done
exit 1
