#!/usr/bin/env python3
# Copyright 2026 The virtio-fs-dax Authors
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Checks that this machine's /dev/kvm can host a VM, and that the kernel the guest tests boot is
at hand. Run through scripts/with-kvm.sh, which provides both (directly, or in a nested guest).
Exits non-zero with a message on the first thing missing."""
import fcntl
import glob
import os
import sys

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_CHECK_EXTENSION = 0xAE03
KVM_CAP_USER_MEMORY = 3
KVM_CAP_IOEVENTFD = 36
KVM_CAP_IRQFD = 32


def fail(msg):
    sys.exit(f"kvm-check: {msg}")


try:
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
except OSError as e:
    fail(f"cannot open /dev/kvm: {e}")
api = fcntl.ioctl(kvm, KVM_GET_API_VERSION)
if api != 12:
    fail(f"KVM API version {api}, expected 12")
for name, cap in [("USER_MEMORY", KVM_CAP_USER_MEMORY), ("IOEVENTFD", KVM_CAP_IOEVENTFD),
                  ("IRQFD", KVM_CAP_IRQFD)]:
    if fcntl.ioctl(kvm, KVM_CHECK_EXTENSION, cap) <= 0:
        fail(f"KVM lacks KVM_CAP_{name}")
vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
os.close(vm)
kdir = os.environ.get("VFD_KERNEL_DIR", "")
kernels = glob.glob(os.path.join(kdir, "boot", "vmlinuz-*"))
virtiofs = glob.glob(os.path.join(kdir, "lib", "modules", "*", "kernel", "fs", "fuse", "virtiofs.ko*"))
if not kernels or not virtiofs:
    fail(f"no guest kernel with virtiofs in VFD_KERNEL_DIR={kdir!r}")
print(f"kvm-check: ok: KVM API {api}, a VM created, guest kernel {os.path.basename(kernels[0])}")
