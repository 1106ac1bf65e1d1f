// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! ACPI tables (acpi_tables): RSDP, XSDT, a hardware-reduced FADT whose sleep control register
//! is an I/O port of the VMM (how the guest powers off), a MADT with the vCPUs' local APICs and
//! the I/O APIC, and a DSDT with `_S5_`, COM1 and the devices the VMM adds.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use anyhow::{Context, Result};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where the RSDP goes: the start of the BIOS area Linux scans, not RAM in the e820 map.
pub const RSDP_ADDR: u64 = 0xe_0000;
/// The FADT's sleep control register: a write with SLP_EN (bit 5) set is the guest powering off.
pub const SLEEP_CONTROL_PORT: u16 = 0x3c0;
/// The FADT's sleep status register.
pub const SLEEP_STATUS_PORT: u16 = 0x3c1;
/// SLP_EN in the sleep control register.
pub const SLP_EN: u8 = 1 << 5;

const OEM_ID: [u8; 6] = *b"VFSDAX";
const OEM_TABLE: [u8; 8] = *b"DAXVMM  ";
const IOAPIC_ADDR: u32 = 0xfec0_0000;
const LAPIC_ADDR: u32 = 0xfee0_0000;

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// The DSDT's description of a virtio-mmio device (`LNRO0005`): its register page and its
/// edge-triggered interrupt.
pub fn virtio_mmio_device(index: usize, base: u64, len: u64, gsi: u32) -> Vec<u8> {
    let hid: &'static str = "LNRO0005";
    let uid = index;
    let mmio = aml::Memory32Fixed::new(true, base as u32, len as u32);
    let irq = aml::Interrupt::new(true, true, false, false, gsi);
    let crs = aml::ResourceTemplate::new(vec![&mmio, &irq]);
    let (hid, uid, crs) = (
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_UID".into(), &uid),
        aml::Name::new("_CRS".into(), &crs),
    );
    let name = format!("_SB_.VR{index:02X}");
    bytes(&aml::Device::new(
        name.as_str().into(),
        vec![&hid, &uid, &crs],
    ))
}

/// The DSDT's PCI host bridge `PCI0`: root bus 0 (segment 0), reached through the legacy
/// configuration ports 0xcf8..0xcff, with the 32-bit MMIO window `mmio32` (base, size) and the
/// 64-bit prefetchable MMIO window `mmio64`, if any. Linux on x86 scans only the root buses the
/// DSDT describes, and keeps firmware-assigned BARs that fit these windows.
pub fn pci_host_bridge(mmio32: (u64, u64), mmio64: Option<(u64, u64)>) -> Vec<u8> {
    let hid = aml::EISAName::new("PNP0A08");
    let cid = aml::EISAName::new("PNP0A03");
    let zero: u8 = 0;
    let bus = aml::AddressSpace::new_bus_number(0u16, 0u16);
    let config_ports = aml::IO::new(0xcf8, 0xcf8, 1, 8);
    let (base32, size32) = mmio32;
    let window32 = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        base32 as u32,
        (base32 + size32 - 1) as u32,
        None,
    );
    let window64 = mmio64.map(|(base, size)| {
        aml::AddressSpace::new_memory(
            aml::AddressSpaceCacheable::PreFetchable,
            true,
            base,
            base + size - 1,
            None,
        )
    });
    let mut resources: Vec<&dyn Aml> = vec![&bus, &config_ports, &window32];
    if let Some(w) = &window64 {
        resources.push(w);
    }
    let crs = aml::ResourceTemplate::new(resources);
    let (hid, cid, adr, seg, uid, bbn, crs) = (
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_CID".into(), &cid),
        aml::Name::new("_ADR".into(), &zero),
        aml::Name::new("_SEG".into(), &zero),
        aml::Name::new("_UID".into(), &zero),
        aml::Name::new("_BBN".into(), &zero),
        aml::Name::new("_CRS".into(), &crs),
    );
    bytes(&aml::Device::new(
        "_SB_.PCI0".into(),
        vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs],
    ))
}

/// Writes the tables for `cpus` vCPUs, with `devices` (AML of the DSDT's devices) after the
/// RSDP, and returns the RSDP's address.
pub fn write_tables(mem: &GuestMemoryMmap, cpus: u8, devices: &[u8]) -> Result<u64> {
    let mut at = RSDP_ADDR + 0x40;
    let mut place = |data: &[u8]| -> Result<u64> {
        let addr = at;
        mem.write_slice(data, GuestAddress(addr))
            .context("writing ACPI tables")?;
        at = (at + data.len() as u64 + 7) & !7;
        Ok(addr)
    };

    // DSDT: S5 (soft off) with SLP_TYP 5, and the devices.
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    let s5_typ: u8 = 5;
    let zero: u8 = 0;
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&s5_typ, &zero, &zero, &zero]),
    );
    dsdt.append_slice(&bytes(&s5));
    // COM1, so that ACPI routes its interrupt: a hardware-reduced platform has no legacy ISA
    // interrupts, and without this the 8250 would only ever be polled.
    let hid = aml::EISAName::new("PNP0501");
    let uid: u8 = 0;
    let io = aml::IO::new(0x3f8, 0x3f8, 0, 8);
    let irq = aml::Interrupt::new(true, true, false, false, 4);
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    let (hid, uid, crs) = (
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_UID".into(), &uid),
        aml::Name::new("_CRS".into(), &crs),
    );
    let com1 = aml::Device::new("_SB_.COM1".into(), vec![&hid, &uid, &crs]);
    dsdt.append_slice(&bytes(&com1));
    dsdt.append_slice(devices);
    let dsdt_addr = place(dsdt.as_slice())?;

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE, 1)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_addr);
    fadt.sleep_control_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(SLEEP_CONTROL_PORT),
    );
    fadt.sleep_status_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(SLEEP_STATUS_PORT),
    );
    let fadt_addr = place(&bytes(&fadt.finalize()))?;

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE,
        1,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    let madt_addr = place(&bytes(&madt))?;

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, 1);
    for t in [fadt_addr, madt_addr] {
        xsdt.add_entry(t);
    }
    let xsdt_addr = place(&bytes(&xsdt))?;

    mem.write_slice(
        &bytes(&Rsdp::new(OEM_ID, xsdt_addr)),
        GuestAddress(RSDP_ADDR),
    )
    .context("writing the RSDP")?;
    Ok(RSDP_ADDR)
}
