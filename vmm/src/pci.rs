// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! PCI for dax-vmm: one root bus behind the legacy configuration ports (type 1, `0xcf8` /
//! `0xcfc`), a host bridge at 00:00.0, and virtio-fs devices on the virtio-pci (modern) transport
//! around the crate's `Fs`, at 00:01.0, 00:02.0, ...
//!
//! # The host bridge
//!
//! The guest finds the bus through the DSDT's `PCI0` ([`PciBus::dsdt`]): bus 0, the
//! configuration ports, a 32-bit MMIO window ([`MMIO32_BASE`], clear of RAM, the virtio-mmio
//! devices, the I/O APIC and the local APIC) and a 64-bit prefetchable window ([`MMIO64_BASE`])
//! for the DAX window BARs. The VMM assigns every BAR like firmware does and turns memory decoding
//! on; Linux keeps assignments that fit the bridge windows.
//!
//! # A virtio-fs function
//!
//! - Vendor 0x1af4, device 0x105a (0x1040 + 26), revision 1, subsystem 0x1af4:0x1100, class
//!   0x018000 (mass storage, other), no INTx pin.
//! - BAR 0, 32-bit memory, 32 KiB: common configuration (0x0000), ISR (0x1000), device
//!   configuration (0x2000), notifications (0x3000, `notify_off_multiplier` 4, queue `i` at
//!   `0x3000 + 4 i`, one ioeventfd a queue), MSI-X table (0x4000) and PBA (0x5000).
//! - BAR 2, 64-bit prefetchable memory, exactly the DAX window (shared memory region 0, the
//!   crate's `ShmBar` and its capability), when the device has a window.
//! - Capabilities: common, notify, ISR, device, shared memory, MSI-X. `VIRTIO_PCI_CAP_PCI_CFG`
//!   (the config-space access window) is not offered: Linux does not use it.
//!
//! # Interrupts
//!
//! One KVM GSI per MSI-X vector (from [`FIRST_MSI_GSI`] up). A vector that may fire (MSI-X
//! enabled, function and vector unmasked) has an MSI route in KVM's routing table; the call
//! eventfd of every queue whose vector it is, and the configuration-change eventfd, are irqfds on
//! that GSI. Setting the routing table replaces all of it, so the irqchip's default routes (GSI
//! 0-23 to the I/O APIC pins, 0-15 to the PICs) are always part of it: the serial console and the
//! virtio-mmio devices keep their interrupts.
//!
//! Masking: a masked vector has its irqfds detached and its route removed. Interrupts raised
//! meanwhile stay counted in the eventfds, and KVM injects them the moment the irqfd is attached
//! again (on unmask): that is the pending bit, so the PBA itself always reads zero. INTx is not
//! offered; a driver that does not enable MSI-X gets no interrupts (nothing breaks in the VMM).
//!
//! # BARs the guest moves
//!
//! Sizing (writing all ones) only changes what the register reads. The memory-decode bit of the
//! command register is respected for both BARs: while it is off, the register BAR is not decoded
//! (no MMIO handling, ioeventfds removed) and the window is taken out of the guest's address space (`Fs::clear_shm_base`, which removes
//! its KVM memory slot);
//! BAR writes made meanwhile are applied when decoding comes back on (Linux turns decoding off
//! while it sizes BARs or rewrites a 64-bit BAR). With decoding on, a write is applied at once
//! (a low half that gives a bad address waits for the high half). A new address must lie inside
//! the host bridge's windows (the register BAR in the 32-bit one) and clear of every other BAR:
//! so never on RAM, the virtio-mmio devices or the APICs. A refused address is logged and
//! counted, and the register reads the old address again. The window moves with
//! `Fs::set_shm_base` (the crate re-registers the memory slot); the register BAR's MMIO handling
//! and ioeventfds move with it.
//!
//! Everything the guest does wrong (writes to read-only registers, bad sizes or offsets, queue
//! selectors out of range, vectors out of range, bad MSI-X table accesses, queue addresses outside
//! RAM) is logged (the first few of each device) and counted, and the VM goes on.
//!
//! # Threads
//!
//! [`PciBus`] takes `&mut self` for every access: with several vCPUs the VMM puts it behind one
//! lock. It owns KVM's routing table (`KVM_SET_GSI_ROUTING` replaces the whole table): nothing
//! else in the VMM may set routes.

use std::io;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_irqchip, kvm_irq_routing_msi, KvmIrqRouting,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use virtio_fs_dax::device::{VirtioInterrupt, VirtioInterruptType};
use virtio_fs_dax::transport::ShmBar;
use virtio_fs_dax::Fs;
use vm_memory::{ByteValued, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::mistakes::MistakeLog;
use crate::msix::{self, MsixTable, NO_VECTOR};
use crate::queues::{activate_queues, DriverQueue};

/// The transport of a `--fs` device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// virtio-mmio, described in the DSDT.
    Mmio,
    /// virtio-pci (modern) on the root bus.
    Pci,
}

impl Transport {
    /// `mmio` or `pci`.
    pub fn parse(s: &str) -> Result<Transport> {
        match s {
            "mmio" => Ok(Transport::Mmio),
            "pci" => Ok(Transport::Pci),
            _ => bail!("--fs: transport {s} is neither mmio nor pci"),
        }
    }
}

/// `cmdline` without `pci=off`, if it had it: a PCI device needs the guest to scan PCI.
pub fn drop_pci_off(cmdline: &str) -> Option<String> {
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    if !words.contains(&"pci=off") {
        return None;
    }
    let kept: Vec<&str> = words.into_iter().filter(|w| *w != "pci=off").collect();
    Some(kept.join(" "))
}

/// The configuration address port (type 1) and the data ports.
const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;
/// The 32-bit MMIO window of the host bridge: register BARs.
pub const MMIO32_BASE: u64 = 0xe000_0000;
/// Its size.
pub const MMIO32_SIZE: u64 = 0x1000_0000;
/// The 64-bit prefetchable MMIO window of the host bridge: DAX window BARs. Clear of the
/// virtio-mmio windows, which main.rs places from 4 GiB up (KVM refuses overlapping memory
/// slots, so a clash would stop the VMM at start).
pub const MMIO64_BASE: u64 = 32 << 30;
/// Its size.
pub const MMIO64_SIZE: u64 = 32 << 30;
/// First GSI of MSI-X vectors: above the I/O APIC's 24 pins.
pub const FIRST_MSI_GSI: u32 = 24;
/// Pins of the in-kernel I/O APIC.
const IOAPIC_PINS: u32 = 24;
/// Functions on the bus besides the host bridge (slots 1 to 31).
const MAX_DEVICES: usize = 31;

const VIRTIO_VENDOR: u16 = 0x1af4;
const VIRTIO_DEVICE_BASE: u16 = 0x1040;
const VIRTIO_SUBSYSTEM: u16 = 0x1100;

/// PCI configuration space offsets and bits.
const PCI_COMMAND: usize = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_STATUS_CAP_LIST: u16 = 1 << 4;
const PCI_BAR0: usize = 0x10;
const PCI_BAR_END: usize = 0x28;
const PCI_CAP_ID_MSIX: u8 = 0x11;
const PCI_CAP_ID_VNDR: u8 = 0x09;

/// virtio-pci capability types.
const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;

/// Capability offsets in configuration space.
const CAP_COMMON: usize = 0x40;
const CAP_NOTIFY: usize = 0x50;
const CAP_ISR: usize = 0x64;
const CAP_DEVICE: usize = 0x74;
const CAP_SHM: usize = 0x84;
const CAP_MSIX: usize = 0xa0;

/// BAR 0: the register BAR, and its layout.
const REGS_BAR: u8 = 0;
const REGS_SIZE: u64 = 0x8000;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u64 = 0x40;
const ISR: u64 = 0x1000;
const ISR_LEN: u64 = 1;
const DEVICE_CFG: u64 = 0x2000;
const DEVICE_CFG_LEN: u64 = 0x1000;
const NOTIFY: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x5000;
/// BAR 2 (and 3): the DAX window.
const WINDOW_BAR: u8 = 2;

/// virtio device status bits.
const STATUS_DRIVER_OK: u8 = 0x4;
const STATUS_FEATURES_OK: u8 = 0x8;
const STATUS_NEEDS_RESET: u8 = 0x40;

/// 256 bytes of configuration space: the bytes, which bits the guest may write, and which
/// read-only bytes take writes silently (status is write-one-to-clear, BIST, ROM BAR, ...).
struct ConfigSpace {
    bytes: [u8; 256],
    wmask: [u8; 256],
    quiet: [bool; 256],
}

impl ConfigSpace {
    fn new(vendor: u16, device: u16, revision: u8, class: u32) -> ConfigSpace {
        let mut c = ConfigSpace {
            bytes: [0; 256],
            wmask: [0; 256],
            quiet: [false; 256],
        };
        c.set16(0x00, vendor);
        c.set16(0x02, device);
        c.bytes[0x08] = revision;
        c.bytes[0x09] = class as u8;
        c.bytes[0x0a] = (class >> 8) as u8;
        c.bytes[0x0b] = (class >> 16) as u8;
        // Command: I/O, memory, bus master, parity, SERR, INTx disable.
        c.wmask[0x04] = 0x47;
        c.wmask[0x05] = 0x05;
        // Cache line size, latency timer, interrupt line.
        for o in [0x0c, 0x0d, 0x3c] {
            c.wmask[o] = 0xff;
        }
        // Status (write one to clear; nothing to clear), BIST, CardBus CIS, expansion ROM (none:
        // its sizing reads back zero), and the BARs a function does not implement.
        for o in [0x06, 0x07, 0x0f]
            .into_iter()
            .chain(0x28..0x2c)
            .chain(0x30..0x34)
            .chain(PCI_BAR0..PCI_BAR_END)
        {
            c.quiet[o] = true;
        }
        c
    }

    fn set16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn get16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    /// A plain byte write; `false` when it tried to change a read-only byte.
    fn write_byte(&mut self, o: usize, b: u8) -> bool {
        let m = self.wmask[o];
        if m != 0 {
            self.bytes[o] = (self.bytes[o] & !m) | (b & m);
            true
        } else {
            self.quiet[o] || b == self.bytes[o]
        }
    }

    /// A write of `data` at `off`; returns how many bytes were refused.
    fn write(&mut self, off: usize, data: &[u8]) -> u64 {
        let mut bad = 0;
        for (i, &b) in data.iter().enumerate() {
            match off.checked_add(i).filter(|&o| o < 256) {
                Some(o) if self.write_byte(o, b) => {}
                _ => bad += 1,
            }
        }
        bad
    }

    fn read(&self, off: usize, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = off
                .checked_add(i)
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0xff);
        }
    }
}

/// A memory BAR.
#[derive(Debug)]
struct Bar {
    /// Register slot of the (low half of the) BAR.
    index: u8,
    size: u64,
    flags: u32,
    is_64: bool,
    /// The address bits the register holds now.
    reg: u64,
    /// Where the VMM decodes the BAR.
    placed: u64,
}

impl Bar {
    fn new(index: u8, size: u64, flags: u32, is_64: bool, at: u64) -> Bar {
        let mut bar = Bar {
            index,
            size,
            flags,
            is_64,
            reg: 0,
            placed: at,
        };
        bar.reg = at & bar.mask();
        bar
    }

    fn mask(&self) -> u64 {
        let m = !(self.size.max(16) - 1);
        if self.is_64 {
            m
        } else {
            m & 0xffff_ffff
        }
    }

    /// The register at `slot`, if it is one of this BAR's.
    fn read(&self, slot: u8) -> Option<u32> {
        if slot == self.index {
            Some((self.reg as u32 & !0xf) | self.flags)
        } else if self.is_64 && slot == self.index + 1 {
            Some((self.reg >> 32) as u32)
        } else {
            None
        }
    }

    /// A write of the register at `slot`; `false` when it is not one of this BAR's.
    fn write(&mut self, slot: u8, v: u32) -> bool {
        if slot == self.index {
            self.reg = ((self.reg & !0xffff_ffff) | u64::from(v & !0xf)) & self.mask();
        } else if self.is_64 && slot == self.index + 1 {
            self.reg = ((self.reg & 0xffff_ffff) | (u64::from(v) << 32)) & self.mask();
        } else {
            return false;
        }
        true
    }

    fn range(&self) -> (u64, u64) {
        (self.placed, self.size)
    }
}

/// Whether a BAR of `size` bytes may be decoded at `addr`: inside a window of the host bridge
/// (the 64-bit one only when `allow64`) and clear of every range in `others`.
fn bar_fits(addr: u64, size: u64, allow64: bool, others: &[(u64, u64)]) -> Result<(), String> {
    let end = addr
        .checked_add(size)
        .ok_or_else(|| "it wraps around".to_string())?;
    let in32 = addr >= MMIO32_BASE && end <= MMIO32_BASE + MMIO32_SIZE;
    let in64 = allow64 && addr >= MMIO64_BASE && end <= MMIO64_BASE + MMIO64_SIZE;
    if !(in32 || in64) {
        return Err("it is outside the host bridge's windows".into());
    }
    if let Some((b, s)) = others
        .iter()
        .find(|&&(b, s)| addr < b.saturating_add(s) && b < end)
    {
        return Err(format!("it overlaps the BAR at {b:#x} ({s:#x} bytes)"));
    }
    Ok(())
}

/// What a configuration write touched, for the bus to act on.
#[derive(Default)]
struct ConfigWrite {
    /// The value written to each BAR register (after the write), by slot.
    bars: [Option<u32>; 6],
    command: bool,
}

/// The device's interrupts: queue `i` raises its call eventfd, a configuration change the
/// config eventfd; each is an irqfd on the GSI of its MSI-X vector.
struct PciIrq {
    config: EventFd,
    queues: Vec<EventFd>,
}

impl VirtioInterrupt for PciIrq {
    fn trigger(&self, t: VirtioInterruptType) -> io::Result<()> {
        match t {
            VirtioInterruptType::Config => self.config.write(1),
            VirtioInterruptType::Queue(i) => match self.queues.get(usize::from(i)) {
                Some(e) => e.write(1),
                None => Ok(()),
            },
        }
    }
}

#[derive(Clone, Copy)]
struct QueueRegs {
    size: u16,
    vector: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueRegs {
    fn new(size: u16) -> QueueRegs {
        QueueRegs {
            size,
            vector: NO_VECTOR,
            ready: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }
}

/// What a PCI function counts for the VMM's report.
#[derive(Default, Debug)]
pub struct Counters {
    /// Configuration space and register accesses that were refused: read-only registers,
    /// unknown offsets or sizes, queue selectors or vectors out of range, bad MSI-X accesses.
    pub bad_accesses: u64,
    /// Activations that failed.
    pub failed_activations: u64,
    /// BAR moves carried out.
    pub bar_moves: u64,
    /// BAR addresses refused (the register reads the old address again).
    pub refused_bar_moves: u64,
    /// KVM refused an ioeventfd, an irqfd or the routing table.
    pub wiring_failures: u64,
}

/// A virtio-fs device on virtio-pci.
struct PciFs {
    tag: String,
    vm: Arc<VmFd>,
    fs: Fs,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    cfg: ConfigSpace,
    regs: Bar,
    window: Option<Bar>,
    /// Whether the BARs are decoded (ioeventfds at `regs.placed`, window slot live).
    decoding: bool,
    msix: MsixTable,
    gsi_base: u32,
    kicks: Vec<EventFd>,
    /// Where the kicks are registered as ioeventfds (the register BAR's address).
    kicks_at: Option<u64>,
    calls: Vec<EventFd>,
    config_irq: EventFd,
    irq: Arc<PciIrq>,
    /// The GSI each call eventfd (then the config eventfd) is attached to as an irqfd.
    attached: Vec<Option<u32>>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u16,
    queues: Vec<QueueRegs>,
    config_vector: u16,
    status: u8,
    counters: Counters,
    mistakes: MistakeLog,
}

impl PciFs {
    fn log(&mut self, msg: std::fmt::Arguments<'_>) {
        self.mistakes
            .log(format_args!("virtio-fs {} (pci)", self.tag), msg);
    }

    fn bad(&mut self, msg: std::fmt::Arguments<'_>) {
        self.counters.bad_accesses += 1;
        self.log(msg);
    }

    fn wiring(&mut self, msg: std::fmt::Arguments<'_>) {
        self.counters.wiring_failures += 1;
        self.log(msg);
    }

    fn placed_ranges(&self) -> Vec<(u64, u64)> {
        let mut v = vec![self.regs.range()];
        v.extend(self.window.as_ref().map(Bar::range));
        v
    }

    fn decodes(&self, addr: u64) -> bool {
        self.decoding && addr >= self.regs.placed && addr - self.regs.placed < REGS_SIZE
    }

    // ---- configuration space ----

    fn bar_read(&self, slot: u8) -> u32 {
        self.regs
            .read(slot)
            .or_else(|| self.window.as_ref().and_then(|w| w.read(slot)))
            .unwrap_or(0)
    }

    fn config_read(&self, off: usize, data: &mut [u8]) {
        self.cfg.read(off, data);
        for (i, d) in data.iter_mut().enumerate() {
            let o = off.saturating_add(i);
            if (PCI_BAR0..PCI_BAR_END).contains(&o) {
                let slot = ((o - PCI_BAR0) / 4) as u8;
                *d = self.bar_read(slot).to_le_bytes()[(o - PCI_BAR0) % 4];
            }
        }
    }

    fn config_write(&mut self, off: usize, data: &[u8]) -> ConfigWrite {
        let mut w = ConfigWrite::default();
        let mut bad = 0;
        for (i, &b) in data.iter().enumerate() {
            let Some(o) = off.checked_add(i).filter(|&o| o < 256) else {
                bad += 1;
                continue;
            };
            if (PCI_BAR0..PCI_BAR_END).contains(&o) {
                let slot = (o - PCI_BAR0) / 4;
                let shift = 8 * ((o - PCI_BAR0) % 4);
                let cur = w.bars[slot].unwrap_or_else(|| self.bar_read(slot as u8));
                w.bars[slot] = Some((cur & !(0xff << shift)) | (u32::from(b) << shift));
                continue;
            }
            if !self.cfg.write_byte(o, b) {
                bad += 1;
            }
            if o == PCI_COMMAND || o == PCI_COMMAND + 1 {
                w.command = true;
            }
        }
        for (slot, v) in w.bars.iter().enumerate() {
            if let Some(v) = *v {
                let slot = slot as u8;
                // BARs the function does not implement read zero and take writes silently.
                if !self.regs.write(slot, v) {
                    if let Some(win) = self.window.as_mut() {
                        win.write(slot, v);
                    }
                }
            }
        }
        if bad > 0 {
            self.bad(format_args!(
                "config space write of {} bytes at {off:#x} refused in part ({bad} bytes read-only or out of range)",
                data.len()
            ));
        }
        self.msix.set_control(self.cfg.get16(CAP_MSIX + 2));
        w
    }

    /// Applies what a configuration write did to the command register and the BARs. `others`:
    /// the BARs of every other function.
    fn apply_bars(&mut self, w: &ConfigWrite, others: &[(u64, u64)]) {
        let decode = self.cfg.get16(PCI_COMMAND) & PCI_COMMAND_MEMORY != 0;
        if !decode {
            if self.decoding {
                self.decoding = false;
                self.set_ioeventfds(None);
                if self.window.is_some() {
                    if let Err(e) = self.fs.clear_shm_base(0) {
                        self.wiring(format_args!("removing the window's memory slot: {e}"));
                    }
                }
            }
            return;
        }

        // The register BAR.
        if self.regs.reg != self.regs.placed && w.bars[0] != Some(u32::MAX) {
            let (want, placed) = (self.regs.reg, self.regs.placed);
            let mut o = others.to_vec();
            o.extend(self.window.as_ref().map(Bar::range));
            match bar_fits(want, REGS_SIZE, false, &o) {
                Ok(()) => {
                    if self.decoding {
                        self.set_ioeventfds(Some(want));
                    }
                    self.log(format_args!(
                        "register BAR moved from {placed:#x} to {want:#x}"
                    ));
                    self.regs.placed = want;
                    self.counters.bar_moves += 1;
                }
                Err(why) => {
                    self.counters.refused_bar_moves += 1;
                    self.log(format_args!(
                        "register BAR move to {want:#x} refused: {why}; it stays at {placed:#x}"
                    ));
                    self.regs.reg = placed;
                }
            }
        }

        // The window BAR.
        if let Some((want, placed, size)) = self
            .window
            .as_ref()
            .filter(|b| b.reg != b.placed)
            .map(|b| (b.reg, b.placed, b.size))
        {
            let (lo, hi) = (
                w.bars[usize::from(WINDOW_BAR)],
                w.bars[usize::from(WINDOW_BAR) + 1],
            );
            let sizing = lo == Some(u32::MAX) || hi == Some(u32::MAX);
            if !sizing {
                let mut o = others.to_vec();
                o.push(self.regs.range());
                let r = bar_fits(want, size, true, &o).and_then(|()| {
                    self.fs
                        .set_shm_base(0, want)
                        .map_err(|e| format!("the device refused it: {e}"))
                });
                match r {
                    Ok(()) => {
                        self.log(format_args!(
                            "DAX window BAR moved from {placed:#x} to {want:#x}"
                        ));
                        if let Some(b) = self.window.as_mut() {
                            b.placed = want;
                        }
                        self.counters.bar_moves += 1;
                    }
                    // Only the low half written: the high half may follow.
                    Err(_) if lo.is_some() && hi.is_none() => {}
                    Err(why) => {
                        self.counters.refused_bar_moves += 1;
                        self.log(format_args!(
                            "DAX window BAR move to {want:#x} refused: {why}; it stays at {placed:#x}"
                        ));
                        if let Some(b) = self.window.as_mut() {
                            b.reg = placed;
                        }
                    }
                }
            }
        }

        if !self.decoding {
            self.decoding = true;
            self.set_ioeventfds(Some(self.regs.placed));
            if let Some(at) = self.window.as_ref().map(|b| b.placed) {
                if let Err(e) = self.fs.set_shm_base(0, at) {
                    self.wiring(format_args!("adding the window's memory slot: {e}"));
                }
            }
        }
    }

    /// Moves the queues' ioeventfds to the notification area of the register BAR at `at`
    /// (`None`: removes them).
    fn set_ioeventfds(&mut self, at: Option<u64>) {
        let mut failures = Vec::new();
        for (i, kick) in self.kicks.iter().enumerate() {
            let off = NOTIFY + u64::from(NOTIFY_MULTIPLIER) * i as u64;
            if let Some(old) = self.kicks_at {
                let addr = IoEventAddress::Mmio(old + off);
                if let Err(e) = self.vm.unregister_ioevent(kick, &addr, NoDatamatch) {
                    failures.push(format!("removing the ioeventfd of queue {i}: {e}"));
                }
            }
            if let Some(new) = at {
                let addr = IoEventAddress::Mmio(new + off);
                if let Err(e) = self.vm.register_ioevent(kick, &addr, NoDatamatch) {
                    failures.push(format!("adding the ioeventfd of queue {i}: {e}"));
                }
            }
        }
        self.kicks_at = at;
        for f in failures {
            self.wiring(format_args!("{f}"));
        }
    }

    // ---- interrupts ----

    /// The GSI each call eventfd (then the config eventfd) should be attached to now.
    fn wanted_gsis(&self) -> Vec<Option<u32>> {
        let gsi = |v: u16| {
            self.msix
                .active(v)
                .map(|m| self.gsi_base + u32::from(m.vector))
        };
        self.queues
            .iter()
            .map(|q| gsi(q.vector))
            .chain(std::iter::once(gsi(self.config_vector)))
            .collect()
    }

    fn eventfd(&self, i: usize) -> &EventFd {
        self.calls.get(i).unwrap_or(&self.config_irq)
    }

    /// Detaches the irqfds that are on the wrong GSI or should not be attached.
    fn detach_stale(&mut self, wanted: &[Option<u32>]) {
        for i in 0..self.attached.len() {
            if let Some(gsi) = self.attached[i].filter(|&g| wanted.get(i) != Some(&Some(g))) {
                if let Err(e) = self.vm.unregister_irqfd(self.eventfd(i), gsi) {
                    self.wiring(format_args!("detaching irqfd {i} from GSI {gsi}: {e}"));
                }
                self.attached[i] = None;
            }
        }
    }

    /// Attaches the irqfds that should be attached and are not.
    fn attach_wanted(&mut self, wanted: &[Option<u32>]) {
        for i in 0..self.attached.len() {
            let want = wanted.get(i).copied().flatten();
            if let (None, Some(gsi)) = (self.attached[i], want) {
                match self.vm.register_irqfd(self.eventfd(i), gsi) {
                    Ok(()) => self.attached[i] = Some(gsi),
                    Err(e) => self.wiring(format_args!("attaching irqfd {i} to GSI {gsi}: {e}")),
                }
            }
        }
    }

    fn routes(&self) -> impl Iterator<Item = (u32, msix::Message)> + '_ {
        self.msix
            .active_messages()
            .map(|m| (self.gsi_base + u32::from(m.vector), m))
    }

    // ---- the register BAR ----

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        let off = addr - self.regs.placed;
        let len = data.len() as u64;
        let within = |base: u64, size: u64| off >= base && off + len <= base + size;
        data.fill(0);
        if within(COMMON, COMMON_LEN) {
            let regs = self.common_bytes();
            let at = (off - COMMON) as usize;
            data.copy_from_slice(&regs[at..at + data.len()]);
        } else if within(ISR, ISR_LEN) {
            // MSI-X only: the ISR has nothing to report.
        } else if within(DEVICE_CFG, DEVICE_CFG_LEN) {
            self.fs.read_config(off - DEVICE_CFG, data);
        } else if within(NOTIFY, self.notify_len()) {
            // Notification addresses read zero.
        } else if within(MSIX_TABLE, self.msix.table_bytes()) {
            if !self.msix.read(off - MSIX_TABLE, data) {
                self.bad(format_args!(
                    "MSI-X table read of {len} bytes at {:#x} refused",
                    off - MSIX_TABLE
                ));
            }
        } else if within(MSIX_PBA, self.msix.pba_bytes()) && (len == 4 || len == 8) {
            // No pending bits (see the module documentation).
        } else {
            self.bad(format_args!("read of {len} bytes at BAR 0 offset {off:#x}"));
        }
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        let off = addr - self.regs.placed;
        let len = data.len() as u64;
        let within = |base: u64, size: u64| off >= base && off + len <= base + size;
        if within(COMMON, COMMON_LEN) {
            self.common_write(off - COMMON, data);
        } else if within(DEVICE_CFG, DEVICE_CFG_LEN) {
            self.counters.bad_accesses += 1;
            self.fs.write_config(off - DEVICE_CFG, data);
        } else if within(NOTIFY, self.notify_len()) {
            // The ioeventfds take these; one that gets here (say, while they move) still kicks.
            let q = ((off - NOTIFY) / u64::from(NOTIFY_MULTIPLIER)) as usize;
            if let Some(k) = self.kicks.get(q) {
                let _ = k.write(1);
            }
        } else if within(MSIX_TABLE, self.msix.table_bytes()) {
            if !self.msix.write(off - MSIX_TABLE, data) {
                self.bad(format_args!(
                    "MSI-X table write of {len} bytes at {:#x} refused",
                    off - MSIX_TABLE
                ));
            }
        } else {
            self.bad(format_args!(
                "write of {len} bytes at BAR 0 offset {off:#x} (read-only or nothing there)"
            ));
        }
    }

    fn notify_len(&self) -> u64 {
        self.queues.len() as u64 * u64::from(NOTIFY_MULTIPLIER)
    }

    /// The common configuration structure as the driver reads it now.
    fn common_bytes(&self) -> [u8; COMMON_LEN as usize] {
        let mut b = [0u8; COMMON_LEN as usize];
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        let features = self.fs.features();
        let feature_half = match self.device_features_sel {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        let driver_half = match self.driver_features_sel {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        put(0x00, &self.device_features_sel.to_le_bytes());
        put(0x04, &feature_half.to_le_bytes());
        put(0x08, &self.driver_features_sel.to_le_bytes());
        put(0x0c, &driver_half.to_le_bytes());
        put(0x10, &self.config_vector.to_le_bytes());
        put(0x12, &(self.queues.len() as u16).to_le_bytes());
        put(0x14, &[self.status, 0]);
        put(0x16, &self.queue_sel.to_le_bytes());
        if let Some(q) = self.queues.get(usize::from(self.queue_sel)) {
            put(0x18, &q.size.to_le_bytes());
            put(0x1a, &q.vector.to_le_bytes());
            put(0x1c, &u16::from(q.ready).to_le_bytes());
            put(0x1e, &self.queue_sel.to_le_bytes());
            put(0x20, &q.desc.to_le_bytes());
            put(0x28, &q.avail.to_le_bytes());
            put(0x30, &q.used.to_le_bytes());
        }
        b
    }

    fn checked_vector(&mut self, v: u16, what: &str) -> u16 {
        if v == NO_VECTOR || self.msix.has_vector(v) {
            v
        } else {
            self.bad(format_args!(
                "{what} vector {v} is not in the MSI-X table of {} vectors",
                self.msix.len()
            ));
            NO_VECTOR
        }
    }

    fn common_write(&mut self, off: u64, data: &[u8]) {
        if data.len() > 8 {
            self.bad(format_args!(
                "write of {} bytes at common config",
                data.len()
            ));
            return;
        }
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        let sel = self.queue_sel;
        let set_lo = |x: &mut u64| *x = (*x & !0xffff_ffff) | (v & 0xffff_ffff);
        let set_hi = |x: &mut u64| *x = (*x & 0xffff_ffff) | (v << 32);
        match (off, data.len()) {
            (0x00, 4) => self.device_features_sel = v as u32,
            (0x08, 4) => self.driver_features_sel = v as u32,
            (0x0c, 4) => match self.driver_features_sel {
                0 => set_lo(&mut self.driver_features),
                1 => set_hi(&mut self.driver_features),
                _ => {}
            },
            (0x10, 2) => self.config_vector = self.checked_vector(v as u16, "config"),
            (0x14, 1) => self.set_status(v as u8),
            (0x16, 2) => self.queue_sel = v as u16,
            (0x18 | 0x1a | 0x1c | 0x20..=0x37, _)
                if self.queues.get(usize::from(sel)).is_none() =>
            {
                self.bad(format_args!(
                    "write at common config offset {off:#x} with queue {sel} selected, of {} queues",
                    self.queues.len()
                ));
            }
            (0x1a, 2) => {
                let vector = self.checked_vector(v as u16, "queue");
                if let Some(q) = self.queues.get_mut(usize::from(sel)) {
                    q.vector = vector;
                }
            }
            (0x18 | 0x1c | 0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34, 2 | 4 | 8) => {
                let Some(q) = self.queues.get_mut(usize::from(sel)) else {
                    return;
                };
                match (off, data.len()) {
                    (0x18, 2) => q.size = v as u16,
                    (0x1c, 2) if v == 1 => q.ready = true,
                    (0x20, 8) => q.desc = v,
                    (0x28, 8) => q.avail = v,
                    (0x30, 8) => q.used = v,
                    (0x20, 4) => set_lo(&mut q.desc),
                    (0x24, 4) => set_hi(&mut q.desc),
                    (0x28, 4) => set_lo(&mut q.avail),
                    (0x2c, 4) => set_hi(&mut q.avail),
                    (0x30, 4) => set_lo(&mut q.used),
                    (0x34, 4) => set_hi(&mut q.used),
                    _ => self.bad(format_args!(
                        "write of {} bytes ({v:#x}) at common config offset {off:#x}",
                        data.len()
                    )),
                }
            }
            _ => self.bad(format_args!(
                "write of {} bytes at common config offset {off:#x} (read-only or unknown)",
                data.len()
            )),
        }
    }

    fn set_status(&mut self, v: u8) {
        if v == 0 {
            self.fs.reset();
            self.status = 0;
            self.driver_features = 0;
            self.device_features_sel = 0;
            self.driver_features_sel = 0;
            self.queue_sel = 0;
            self.config_vector = NO_VECTOR;
            let max = self.fs.queue_max_sizes().to_vec();
            for (q, m) in self.queues.iter_mut().zip(max) {
                *q = QueueRegs::new(m);
            }
            return;
        }
        let newly = v & !self.status;
        self.status = v;
        if newly & STATUS_FEATURES_OK != 0 {
            let unoffered = self.driver_features & !self.fs.features();
            if unoffered != 0 {
                self.bad(format_args!(
                    "the driver accepted features {unoffered:#x} that were not offered"
                ));
                self.status &= !STATUS_FEATURES_OK;
            } else {
                self.fs.ack_features(self.driver_features);
            }
        }
        if newly & STATUS_DRIVER_OK != 0 {
            if let Err(e) = self.activate() {
                self.counters.failed_activations += 1;
                self.log(format_args!("activating the device: {e:#}"));
                self.status |= STATUS_NEEDS_RESET;
                let _ = self.irq.trigger(VirtioInterruptType::Config);
            }
        }
    }

    fn activate(&mut self) -> Result<()> {
        let driver: Vec<DriverQueue> = self
            .queues
            .iter()
            .map(|r| DriverQueue {
                size: r.size,
                ready: r.ready,
                desc: r.desc,
                avail: r.avail,
                used: r.used,
            })
            .collect();
        let queues = activate_queues(&driver, self.fs.queue_max_sizes(), &self.kicks, &self.calls)?;
        self.fs
            .activate(self.mem.clone(), self.irq.clone(), queues)
            .context("Fs::activate")
    }
}

/// Where each configuration cycle goes.
enum Target {
    HostBridge,
    Device(usize),
}

/// The PCI root bus: the configuration ports, the host bridge, the virtio-fs functions, and the
/// VM's interrupt routing table.
pub struct PciBus {
    vm: Arc<VmFd>,
    config_address: u32,
    host_bridge: ConfigSpace,
    devices: Vec<PciFs>,
    next_mmio32: u64,
    next_mmio64: u64,
    next_gsi: u32,
    /// The MSI routes KVM has now.
    routes: Vec<(u32, msix::Message)>,
}

impl PciBus {
    /// An empty bus: it decodes nothing until a device is added.
    pub fn new(vm: Arc<VmFd>) -> PciBus {
        // A QEMU host bridge id (Red Hat), class "host bridge".
        let mut host_bridge = ConfigSpace::new(0x1b36, 0x0008, 0, 0x06_0000);
        for o in [0x04, 0x05] {
            host_bridge.wmask[o] = 0;
            host_bridge.quiet[o] = true;
        }
        PciBus {
            vm,
            config_address: 0,
            host_bridge,
            devices: Vec::new(),
            next_mmio32: MMIO32_BASE,
            next_mmio64: MMIO64_BASE,
            next_gsi: FIRST_MSI_GSI,
            routes: Vec::new(),
        }
    }

    /// Puts `fs` on the bus: assigns its BARs, places
    /// its window, wires its kicks. `mem` is guest RAM for activation.
    pub fn add_fs(
        &mut self,
        tag: &str,
        mut fs: Fs,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
    ) -> Result<()> {
        if self.devices.len() >= MAX_DEVICES {
            bail!("at most {MAX_DEVICES} PCI devices");
        }
        let slot = self.devices.len() as u8 + 1;
        let nq = fs.queue_max_sizes().len();
        let msix = MsixTable::new(nq as u16 + 1);

        // BARs, where firmware would put them.
        let regs_at = self.next_mmio32.next_multiple_of(REGS_SIZE);
        if regs_at + REGS_SIZE > MMIO32_BASE + MMIO32_SIZE {
            bail!("the 32-bit PCI window is full");
        }
        self.next_mmio32 = regs_at + REGS_SIZE;
        let shm = fs.shm_regions().into_iter().find(|r| r.id == 0);
        let mut window = None;
        let mut shm_bar = None;
        if let Some(r) = shm {
            let bar = ShmBar::for_window(WINDOW_BAR, r.len)
                .with_context(|| format!("the DAX window of {tag} as a PCI BAR"))?;
            let at = self.next_mmio64.next_multiple_of(bar.size());
            if at
                .checked_add(bar.size())
                .is_none_or(|e| e > MMIO64_BASE + MMIO64_SIZE)
            {
                bail!(
                    "the 64-bit PCI window has no room for a {:#x}-byte window",
                    bar.size()
                );
            }
            fs.set_shm_base(0, at)
                .with_context(|| format!("placing the window of {tag}"))?;
            self.next_mmio64 = at + bar.size();
            window = Some(Bar::new(WINDOW_BAR, bar.size(), bar.bar_flags(), true, at));
            shm_bar = Some(bar);
        }

        // Configuration space.
        let mut cfg = ConfigSpace::new(
            VIRTIO_VENDOR,
            VIRTIO_DEVICE_BASE + fs.device_type() as u16,
            1,
            0x01_8000,
        );
        cfg.set16(0x2c, VIRTIO_VENDOR);
        cfg.set16(0x2e, VIRTIO_SUBSYSTEM);
        cfg.set16(PCI_COMMAND, PCI_COMMAND_MEMORY);
        cfg.set16(0x06, PCI_STATUS_CAP_LIST);
        cfg.bytes[0x34] = CAP_COMMON as u8;
        let notify_len = nq as u32 * NOTIFY_MULTIPLIER;
        let after_device = if shm_bar.is_some() { CAP_SHM } else { CAP_MSIX };
        let caps = [
            (
                CAP_COMMON,
                CAP_NOTIFY,
                16,
                VIRTIO_PCI_CAP_COMMON_CFG,
                COMMON,
                COMMON_LEN as u32,
            ),
            (
                CAP_NOTIFY,
                CAP_ISR,
                20,
                VIRTIO_PCI_CAP_NOTIFY_CFG,
                NOTIFY,
                notify_len,
            ),
            (
                CAP_ISR,
                CAP_DEVICE,
                16,
                VIRTIO_PCI_CAP_ISR_CFG,
                ISR,
                ISR_LEN as u32,
            ),
            (
                CAP_DEVICE,
                after_device,
                16,
                VIRTIO_PCI_CAP_DEVICE_CFG,
                DEVICE_CFG,
                DEVICE_CFG_LEN as u32,
            ),
        ];
        for (at, next, len, cfg_type, offset, length) in caps {
            cfg.bytes[at..at + 8].copy_from_slice(&[
                PCI_CAP_ID_VNDR,
                next as u8,
                len,
                cfg_type,
                REGS_BAR,
                0,
                0,
                0,
            ]);
            cfg.set32(at + 8, offset as u32);
            cfg.set32(at + 12, length);
        }
        cfg.set32(CAP_NOTIFY + 16, NOTIFY_MULTIPLIER);
        if let Some(bar) = &shm_bar {
            let mut cap = bar.shm_cap();
            cap.cap_next = CAP_MSIX as u8;
            let bytes = cap.as_slice();
            cfg.bytes[CAP_SHM..CAP_SHM + bytes.len()].copy_from_slice(bytes);
        }
        cfg.bytes[CAP_MSIX] = PCI_CAP_ID_MSIX;
        cfg.bytes[CAP_MSIX + 1] = 0;
        cfg.set16(CAP_MSIX + 2, msix.control());
        cfg.set32(CAP_MSIX + 4, MSIX_TABLE as u32 | u32::from(REGS_BAR));
        cfg.set32(CAP_MSIX + 8, MSIX_PBA as u32 | u32::from(REGS_BAR));
        // Enable and function mask.
        cfg.wmask[CAP_MSIX + 3] = 0xc0;

        // Eventfds: kicks (ioeventfds), calls and the config change (irqfds once a vector is set).
        let new_fd = || EventFd::new(EFD_NONBLOCK).context("eventfd");
        let kicks = (0..nq).map(|_| new_fd()).collect::<Result<Vec<_>>>()?;
        let calls = (0..nq).map(|_| new_fd()).collect::<Result<Vec<_>>>()?;
        let config_irq = new_fd()?;
        let irq = Arc::new(PciIrq {
            config: config_irq.try_clone().context("eventfd")?,
            queues: calls
                .iter()
                .map(|c| c.try_clone().context("eventfd"))
                .collect::<Result<Vec<_>>>()?,
        });
        let gsi_base = self.next_gsi;
        self.next_gsi += u32::from(msix.len());
        let queues = fs
            .queue_max_sizes()
            .iter()
            .map(|&m| QueueRegs::new(m))
            .collect();

        let mut dev = PciFs {
            tag: tag.into(),
            vm: self.vm.clone(),
            fs,
            mem,
            cfg,
            regs: Bar::new(REGS_BAR, REGS_SIZE, 0, false, regs_at),
            window,
            decoding: true,
            msix,
            gsi_base,
            kicks,
            kicks_at: None,
            calls,
            config_irq,
            irq,
            attached: vec![None; nq + 1],
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            config_vector: NO_VECTOR,
            status: 0,
            counters: Counters::default(),
            mistakes: MistakeLog::default(),
        };
        dev.set_ioeventfds(Some(regs_at));
        if dev.counters.wiring_failures > 0 {
            bail!("KVM refused the ioeventfds of {tag}");
        }
        let window_text = match &dev.window {
            Some(w) => format!("DAX window {:#x} bytes at {:#x} (BAR 2)", w.size, w.placed),
            None => "no DAX window".into(),
        };
        eprintln!(
            "dax-vmm: virtio-fs {tag} on PCI 0000:00:{slot:02x}.0: registers at {regs_at:#x} (BAR 0), {window_text}, MSI-X GSIs {gsi_base}..{}",
            gsi_base + u32::from(dev.msix.len()) - 1
        );
        self.devices.push(dev);
        Ok(())
    }

    /// Whether the bus has any device (and hence a host bridge).
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The DSDT's `PCI0`, empty when the bus has no device.
    pub fn dsdt(&self) -> Vec<u8> {
        if self.is_empty() {
            return Vec::new();
        }
        let has_windows = self.devices.iter().any(|d| d.window.is_some());
        crate::acpi::pci_host_bridge(
            (MMIO32_BASE, MMIO32_SIZE),
            has_windows.then_some((MMIO64_BASE, MMIO64_SIZE)),
        )
    }

    /// Whether `port` is one of the configuration ports (and the bus is there).
    pub fn owns_port(&self, port: u16) -> bool {
        !self.is_empty() && (CONFIG_ADDRESS..CONFIG_DATA + 4).contains(&port)
    }

    /// Whether `addr` is in a BAR the bus decodes (guest RAM-like window BARs are KVM memory
    /// slots and never exit).
    pub fn owns_mmio(&self, addr: u64) -> bool {
        self.devices.iter().any(|d| d.decodes(addr))
    }

    fn target(&self, port: u16) -> Option<(Target, usize)> {
        let a = self.config_address;
        if a & 0x8000_0000 == 0 {
            return None;
        }
        let (bus, dev, func) = ((a >> 16) & 0xff, (a >> 11) & 0x1f, (a >> 8) & 0x7);
        if bus != 0 || func != 0 {
            return None;
        }
        let off = (a & 0xfc) as usize + usize::from(port - CONFIG_DATA);
        match dev {
            0 => Some((Target::HostBridge, off)),
            d => {
                let i = d as usize - 1;
                (i < self.devices.len()).then_some((Target::Device(i), off))
            }
        }
    }

    /// A guest read of a configuration port.
    pub fn io_read(&mut self, port: u16, data: &mut [u8]) {
        data.fill(0xff);
        if port == CONFIG_ADDRESS && data.len() == 4 {
            data.copy_from_slice(&self.config_address.to_le_bytes());
            return;
        }
        if port < CONFIG_DATA {
            return;
        }
        match self.target(port) {
            Some((Target::HostBridge, off)) => self.host_bridge.read(off, data),
            Some((Target::Device(i), off)) => self.devices[i].config_read(off, data),
            None => {}
        }
    }

    /// A guest write of a configuration port. Writes of other sizes to the address port (Linux's
    /// type 1 probe writes a byte at 0xcfb) are ignored.
    pub fn io_write(&mut self, port: u16, data: &[u8]) {
        if port == CONFIG_ADDRESS && data.len() == 4 {
            let mut b = [0u8; 4];
            b.copy_from_slice(data);
            self.config_address = u32::from_le_bytes(b);
            return;
        }
        if port < CONFIG_DATA {
            return;
        }
        match self.target(port) {
            Some((Target::HostBridge, off)) => {
                // Nothing on the host bridge is writable; writes that would change a read-only
                // byte are only counted against the first device, which the report prints.
                let bad = self.host_bridge.write(off, data);
                if bad > 0 {
                    if let Some(d) = self.devices.first_mut() {
                        d.bad(format_args!(
                            "host bridge config write of {} bytes at {off:#x} refused",
                            data.len()
                        ));
                    }
                }
            }
            Some((Target::Device(i), off)) => {
                let w = self.devices[i].config_write(off, data);
                if w.command || w.bars.iter().any(Option::is_some) {
                    let others: Vec<(u64, u64)> = self
                        .devices
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .flat_map(|(_, d)| d.placed_ranges())
                        .collect();
                    self.devices[i].apply_bars(&w, &others);
                }
                self.sync_interrupts();
            }
            None => {}
        }
    }

    fn device_at(&mut self, addr: u64) -> Option<&mut PciFs> {
        self.devices.iter_mut().find(|d| d.decodes(addr))
    }

    /// A guest read in a register BAR.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        match self.device_at(addr) {
            Some(d) => d.mmio_read(addr, data),
            None => data.fill(0xff),
        }
    }

    /// A guest write in a register BAR.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        if let Some(d) = self.device_at(addr) {
            d.mmio_write(addr, data);
            self.sync_interrupts();
        }
    }

    /// Brings KVM in line with the MSI-X state of every device: irqfds that must go are
    /// detached, the routing table is replaced when the set of live vectors changed, irqfds that
    /// must come are attached.
    fn sync_interrupts(&mut self) {
        let wanted: Vec<Vec<Option<u32>>> = self.devices.iter().map(PciFs::wanted_gsis).collect();
        for (d, w) in self.devices.iter_mut().zip(&wanted) {
            d.detach_stale(w);
        }
        let routes: Vec<(u32, msix::Message)> =
            self.devices.iter().flat_map(PciFs::routes).collect();
        if routes != self.routes {
            match self.set_routing(&routes) {
                Ok(()) => self.routes = routes,
                Err(e) => {
                    if let Some(d) = self.devices.first_mut() {
                        d.wiring(format_args!("KVM_SET_GSI_ROUTING: {e:#}"));
                    }
                }
            }
        }
        for (d, w) in self.devices.iter_mut().zip(&wanted) {
            d.attach_wanted(w);
        }
    }

    /// Replaces KVM's routing table: the irqchip's default routes, then `msi`.
    fn set_routing(&self, msi: &[(u32, msix::Message)]) -> Result<()> {
        let irqchip = |gsi: u32, chip: u32, pin: u32| {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_IRQCHIP,
                ..Default::default()
            };
            e.u.irqchip = kvm_irq_routing_irqchip { irqchip: chip, pin };
            e
        };
        let mut entries = Vec::new();
        for gsi in 0..IOAPIC_PINS {
            entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
            if gsi < 16 {
                let pic = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                entries.push(irqchip(gsi, pic, gsi % 8));
            }
        }
        for &(gsi, m) in msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi = kvm_irq_routing_msi {
                address_lo: m.address as u32,
                address_hi: (m.address >> 32) as u32,
                data: m.data,
                ..Default::default()
            };
            entries.push(e);
        }
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| anyhow::anyhow!("routing table of {} entries: {e:?}", entries.len()))?;
        self.vm.set_gsi_routing(&table).context("set_gsi_routing")
    }

    /// One report line per device, in the format of the virtio-mmio devices' and with the PCI
    /// counters after it.
    pub fn report(&self) {
        for d in &self.devices {
            let m = d.fs.metrics();
            let c = &d.counters;
            eprintln!(
                "dax-vmm: virtio-fs {}: maps {}, unmaps {}, live mappings {}, refusals {}, bad register accesses {}, failed activations {}, BAR moves {}, refused BAR moves {}, wiring failures {}",
                d.tag,
                m.maps(),
                m.unmaps(),
                m.live_mappings(),
                m.total_refusals(),
                c.bad_accesses,
                c.failed_activations,
                c.bar_moves,
                c.refused_bar_moves,
                c.wiring_failures,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_off_is_dropped() {
        assert_eq!(
            drop_pci_off("console=ttyS0 pci=off quiet").as_deref(),
            Some("console=ttyS0 quiet")
        );
        assert_eq!(drop_pci_off("console=ttyS0 pci=noacpi"), None);
    }

    #[test]
    fn bar_sizing_and_halves() {
        let mut b = Bar::new(2, 32 << 20, 0xc, true, MMIO64_BASE);
        assert_eq!(b.read(2), Some(0xc));
        assert_eq!(b.read(3), Some((MMIO64_BASE >> 32) as u32));
        assert_eq!(b.read(4), None);
        assert!(b.write(2, u32::MAX));
        assert_eq!(b.read(2), Some(0xfe00_000c), "size mask with the flags");
        assert!(b.write(3, u32::MAX));
        assert_eq!(b.read(3), Some(u32::MAX));
        assert!(b.write(2, 0x1234_5678));
        assert_eq!(
            b.read(2),
            Some(0x1200_000c),
            "low bits below the size read zero"
        );
        let mut r = Bar::new(0, REGS_SIZE, 0, false, MMIO32_BASE);
        assert!(r.write(0, u32::MAX));
        assert_eq!(r.read(0), Some(0xffff_8000));
        assert_eq!(r.read(1), None);
        assert!(!r.write(1, 0));
    }

    #[test]
    fn bar_placement_rules() {
        let others = [(MMIO32_BASE, REGS_SIZE)];
        assert!(bar_fits(MMIO32_BASE + REGS_SIZE, REGS_SIZE, false, &others).is_ok());
        assert!(
            bar_fits(MMIO32_BASE, REGS_SIZE, false, &others).is_err(),
            "overlap"
        );
        assert!(bar_fits(0, REGS_SIZE, false, &[]).is_err(), "RAM");
        assert!(
            bar_fits(0xd000_0000, REGS_SIZE, false, &[]).is_err(),
            "virtio-mmio"
        );
        assert!(
            bar_fits(0xfec0_0000, 0x1000, false, &[]).is_err(),
            "I/O APIC"
        );
        assert!(
            bar_fits(MMIO64_BASE, 32 << 20, false, &[]).is_err(),
            "64-bit not allowed"
        );
        assert!(bar_fits(MMIO64_BASE, 32 << 20, true, &[]).is_ok());
        assert!(
            bar_fits(u64::MAX - 0xfff, 0x2000, true, &[]).is_err(),
            "wraps"
        );
    }

    #[test]
    fn config_space_write_rules() {
        let mut c = ConfigSpace::new(VIRTIO_VENDOR, 0x105a, 1, 0x01_8000);
        assert_eq!(c.write(0x00, &[0xf4, 0x1a]), 0, "same value: no harm");
        assert_eq!(c.write(0x00, &[0, 0]), 2, "vendor id is read-only");
        assert_eq!(c.write(0x04, &[0xff, 0xff]), 0);
        assert_eq!(c.get16(0x04), 0x0547);
        assert_eq!(
            c.write(0x06, &[0xff, 0xff]),
            0,
            "status takes writes quietly"
        );
        assert_eq!(c.write(0xff, &[0, 0]), 1, "past the end");
        let mut d = [0u8; 4];
        c.read(0xfe, &mut d);
        assert_eq!(d, [0, 0, 0xff, 0xff]);
    }
}
