// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! x86_64 direct boot of a bzImage: guest RAM registration, kernel, initramfs and command line
//! with linux-loader, the zero page, and a vCPU in 64-bit mode at the kernel's entry.

use std::fs::File;

use anyhow::{bail, Context, Result};
use kvm_bindings::{
    kvm_fpu, kvm_regs, kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::{load_cmdline, BzImage, KernelLoader};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

/// Where things go in low guest memory.
const GDT: u64 = 0x500;
const IDT: u64 = 0x520;
const ZERO_PAGE: u64 = 0x7000;
const BOOT_STACK: u64 = 0x8ff0;
const PML4: u64 = 0x9000;
const PDPTE: u64 = 0xa000;
const PDE: u64 = 0xb000;
const CMDLINE: u64 = 0x20000;
const CMDLINE_MAX: usize = 4096;
/// Start of the extended-memory RAM the kernel loads into.
const HIMEM: u64 = 0x10_0000;
/// The EBDA's start: RAM below it is usable.
const EBDA: u64 = 0x9_fc00;

const E820_RAM: u32 = 1;

/// Registers every region of `mem` with the VM, one slot each.
pub fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping of `mem`, which outlives the VM in `run`.
        unsafe { vm.set_user_memory_region(r) }.context("KVM_SET_USER_MEMORY_REGION")?;
    }
    Ok(())
}

/// Loads the kernel, the initramfs (at the top of RAM) and the command line, writes the zero
/// page, and returns the 64-bit entry point.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &mut File,
    initrd: Option<&[u8]>,
    cmdline: &str,
    mem_size: u64,
    rsdp: u64,
) -> Result<GuestAddress> {
    let loaded = BzImage::load(mem, None, kernel, Some(GuestAddress(HIMEM)))
        .context("loading the bzImage")?;
    let mut params = boot_params::default();
    if let Some(hdr) = loaded.setup_header {
        params.hdr = hdr;
    } else {
        bail!("not a bzImage (no setup header)");
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448;
    params.hdr.kernel_alignment = 0x0100_0000;

    let mut cl = Cmdline::new(CMDLINE_MAX).context("command line")?;
    cl.insert_str(cmdline).context("command line")?;
    load_cmdline(mem, GuestAddress(CMDLINE), &cl).context("writing the command line")?;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;

    if let Some(initrd) = initrd {
        let max = u64::from(params.hdr.initrd_addr_max).min(mem_size - 1);
        let at = (max + 1 - initrd.len() as u64) & !0xfff;
        if at < loaded.kernel_end {
            bail!("the initramfs does not fit above the kernel");
        }
        mem.write_slice(initrd, GuestAddress(at))
            .context("writing the initramfs")?;
        params.hdr.ramdisk_image = at as u32;
        params.hdr.ramdisk_size = initrd.len() as u32;
    }

    params.acpi_rsdp_addr = rsdp;

    let e820 = [(0, EBDA), (HIMEM, mem_size - HIMEM)];
    for (i, &(addr, size)) in e820.iter().enumerate() {
        params.e820_table[i].addr = addr;
        params.e820_table[i].size = size;
        params.e820_table[i].r#type = E820_RAM;
    }
    params.e820_entries = e820.len() as u8;

    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE)),
        mem,
    )
    .context("writing the zero page")?;
    // The 64-bit entry of a bzImage is 0x200 past where its protected-mode part is loaded.
    Ok(GuestAddress(loaded.kernel_load.raw_value() + 0x200))
}

fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    (u64::from(base) & 0xff00_0000) << 32
        | (u64::from(flags) & 0x0000_f0ff) << 40
        | (u64::from(limit) & 0x000f_0000) << 32
        | (u64::from(base) & 0x00ff_ffff) << 16
        | u64::from(limit) & 0x0000_ffff
}

fn segment(entry: u64, index: u8) -> kvm_segment {
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: (((entry >> 32) & 0x000f_0000) | (entry & 0x0000_ffff)) as u32,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from((entry >> 47) & 1 == 0),
        padding: 0,
    }
}

/// Sets up any vCPU: CPUID (with its APIC id, and the hypervisor bit) and the local APIC's
/// LINT0/LINT1. The boot vCPU then gets [`setup_boot_vcpu`]; the others wait for the INIT/SIPI
/// the guest sends them (the in-kernel local APIC handles both).
pub fn setup_vcpu(kvm: &Kvm, vcpu: &VcpuFd, id: u8, count: u8) -> Result<()> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .context("KVM_GET_SUPPORTED_CPUID")?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // The hypervisor bit: without it Linux does not look for KVM's leaves, so no
                // kvm-clock, and a hardware-reduced ACPI platform (no PIT timer) has no clock to
                // tick with. EBX: initial APIC id (31:24), logical processors (23:16), HTT.
                e.ecx |= 1 << 31;
                e.ebx = (u32::from(id) << 24) | (u32::from(count) << 16) | (e.ebx & 0xffff);
                if count > 1 {
                    e.edx |= 1 << 28;
                }
            }
            // Extended topology: the x2APIC id of this vCPU.
            0xb | 0x1f => e.edx = u32::from(id),
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid).context("KVM_SET_CPUID2")?;

    // LINT0: ExtINT (the PIC), LINT1: NMI.
    let mut lapic = vcpu.get_lapic().context("KVM_GET_LAPIC")?;
    for (reg, mode) in [(0x350usize, 7u32), (0x360, 4)] {
        let regs = &mut lapic.regs[reg..reg + 4];
        let mut v = [0u8; 4];
        for (b, r) in v.iter_mut().zip(regs.iter()) {
            *b = *r as u8;
        }
        let v = (u32::from_le_bytes(v) & !0x700) | (mode << 8);
        for (r, b) in regs.iter_mut().zip(v.to_le_bytes()) {
            *r = b as _;
        }
    }
    vcpu.set_lapic(&lapic).context("KVM_SET_LAPIC")?;
    Ok(())
}

/// Puts the boot vCPU in 64-bit mode at `entry`: FPU, registers, GDT, identity-mapped page
/// tables for the first GiB.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, mem: &GuestMemoryMmap, entry: GuestAddress) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).context("KVM_SET_FPU")?;

    let regs = kvm_regs {
        rflags: 2,
        rip: entry.raw_value(),
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE,
        ..Default::default()
    };
    vcpu.set_regs(&regs).context("KVM_SET_REGS")?;

    // GDT: null, 64-bit code, data, TSS.
    let gdt = [
        gdt_entry(0, 0, 0),
        gdt_entry(0xa09b, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT + i as u64 * 8))
            .context("writing the GDT")?;
    }
    mem.write_obj(0u64, GuestAddress(IDT))
        .context("writing the IDT")?;
    let mut sregs = vcpu.get_sregs().context("KVM_GET_SREGS")?;
    let code = segment(gdt[1], 1);
    let data = segment(gdt[2], 2);
    let tss = segment(gdt[3], 3);
    sregs.gdt.base = GDT;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    // Identity-map the first GiB with 2 MiB pages.
    mem.write_obj(PDPTE | 0x03, GuestAddress(PML4))
        .context("page tables")?;
    mem.write_obj(PDE | 0x03, GuestAddress(PDPTE))
        .context("page tables")?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE + i * 8))
            .context("page tables")?;
    }
    sregs.cr3 = PML4;
    sregs.cr4 |= 0x20; // PAE
    sregs.cr0 |= 0x1 | 0x8000_0000; // PE, PG
    sregs.efer |= 0x100 | 0x400; // LME, LMA
    vcpu.set_sregs(&sregs).context("KVM_SET_SREGS")?;

    Ok(())
}
