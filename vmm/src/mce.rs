// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Machine checks: how the VMM tells the guest that a page of a DAX window lost its file.
//!
//! When a backend goes away, the device drops every mapping of its window: those pages are
//! `PROT_NONE` again. A guest that still believes a range mapped and touches it makes `KVM_RUN`
//! fail with `EFAULT` (`KVM_EXIT_MEMORY_FAULT`, with the address); the access can never complete.
//! Rather than leave the vCPU spinning on it or end the VM, the VMM injects an action-required
//! machine check for that address, as QEMU does for a poisoned page: Linux then treats the page
//! as failed memory (`memory_failure`), kills a user process that touched it with `SIGBUS`
//! (`BUS_MCEERR_AR`), and panics when its own code touched it (then reboots, with `panic=-1`).

use anyhow::{Context, Result};
use kvm_bindings::kvm_x86_mce;
use kvm_ioctls::{Kvm, VcpuFd};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};
use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr};

const KVMIO: u32 = 0xae;
ioctl_ior_nr!(KVM_X86_GET_MCE_CAP_SUPPORTED, KVMIO, 0x9d, u64);
ioctl_iow_nr!(KVM_X86_SETUP_MCE, KVMIO, 0x9c, u64);
ioctl_iow_nr!(KVM_X86_SET_MCE, KVMIO, 0x9e, kvm_x86_mce);

const MCG_CTL_P: u64 = 1 << 8;
const MCG_SER_P: u64 = 1 << 24;
/// Banks the guest gets; the machine check goes to the last.
const BANKS: u64 = 10;

const MCI_STATUS_VAL: u64 = 1 << 63;
const MCI_STATUS_UC: u64 = 1 << 61;
const MCI_STATUS_EN: u64 = 1 << 60;
const MCI_STATUS_MISCV: u64 = 1 << 59;
const MCI_STATUS_ADDRV: u64 = 1 << 58;
const MCI_STATUS_S: u64 = 1 << 56;
const MCI_STATUS_AR: u64 = 1 << 55;
/// MCA error code of a data load from memory (as QEMU's action-required injection).
const MCACOD_DATA_LOAD: u64 = 0x134;
const MCG_STATUS_RIPV: u64 = 1 << 0;
const MCG_STATUS_EIPV: u64 = 1 << 1;
const MCG_STATUS_MCIP: u64 = 1 << 2;
/// MCi_MISC: address mode physical (2, bits 8:6), least significant valid bit 12 (a page).
const MCI_MISC_PHYS_PAGE: u64 = (2 << 6) | 12;

/// Enables machine-check recovery on a vCPU: the banks, and software error recovery
/// (`MCG_SER_P`), without which Linux treats any uncorrected error as fatal.
pub fn setup(kvm: &Kvm, vcpu: &VcpuFd) -> Result<()> {
    let mut supported = 0u64;
    // SAFETY: KVM_X86_GET_MCE_CAP_SUPPORTED writes one u64 into `supported`, which outlives the
    // call; the return value is checked.
    let ret = unsafe { ioctl_with_mut_ref(kvm, KVM_X86_GET_MCE_CAP_SUPPORTED(), &mut supported) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error()).context("KVM_X86_GET_MCE_CAP_SUPPORTED");
    }
    // The supported capabilities carry no bank count: KVM takes up to 32.
    let cap = (supported & (MCG_CTL_P | MCG_SER_P)) | BANKS;
    // SAFETY: KVM_X86_SETUP_MCE reads one u64 from `cap`, which outlives the call; the return
    // value is checked.
    let ret = unsafe { ioctl_with_ref(vcpu, KVM_X86_SETUP_MCE(), &cap) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error()).context("KVM_X86_SETUP_MCE");
    }
    Ok(())
}

/// Injects an action-required machine check for `gpa` into `vcpu`, which is stopped at the
/// access that failed.
pub fn inject(vcpu: &VcpuFd, gpa: u64) -> Result<()> {
    let mce = kvm_x86_mce {
        status: MCI_STATUS_VAL
            | MCI_STATUS_UC
            | MCI_STATUS_EN
            | MCI_STATUS_MISCV
            | MCI_STATUS_ADDRV
            | MCI_STATUS_S
            | MCI_STATUS_AR
            | MCACOD_DATA_LOAD,
        addr: gpa & !0xfff,
        misc: MCI_MISC_PHYS_PAGE,
        mcg_status: MCG_STATUS_MCIP | MCG_STATUS_EIPV | MCG_STATUS_RIPV,
        bank: (BANKS - 1) as u8,
        ..Default::default()
    };
    // SAFETY: KVM_X86_SET_MCE reads one kvm_x86_mce from `mce`, which outlives the call; the
    // return value is checked.
    let ret = unsafe { ioctl_with_ref(vcpu, KVM_X86_SET_MCE(), &mce) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error()).context("KVM_X86_SET_MCE");
    }
    Ok(())
}
