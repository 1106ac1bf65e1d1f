// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A virtio-mmio (version 2) transport around the crate's `Fs`: the registers, the crate's SHM
//! registers for the DAX window, kicks through ioeventfds and interrupts through irqfds.

use std::sync::Arc;

use anyhow::{Context, Result};
use kvm_ioctls::{IoEventAddress, VmFd};
use virtio_fs_dax::device::{VirtioInterrupt, VirtioInterruptType};
use virtio_fs_dax::transport::MmioShmRegs;
use virtio_fs_dax::Fs;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::mistakes::MistakeLog;
use crate::queues::{activate_queues, DriverQueue};

/// Size of the register page.
pub const MMIO_LEN: u64 = 0x1000;

const MAGIC: u32 = 0x7472_6976;
const STATUS_FEATURES_OK: u32 = 0x8;
const STATUS_DRIVER_OK: u32 = 0x4;
const STATUS_NEEDS_RESET: u32 = 0x40;
const INT_VRING: u32 = 1;

/// The device's interrupt: one irqfd on its GSI. Used-buffer interrupts come straight from the
/// backend (its call eventfds are irqfds on the same GSI); the interrupt status always reads
/// "used buffer", so the driver looks at its queues on every interrupt.
struct Irq(EventFd);

impl VirtioInterrupt for Irq {
    fn trigger(&self, _: VirtioInterruptType) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// What the transport counts for the VMM's report.
#[derive(Default, Debug)]
pub struct Counters {
    /// Register accesses outside the page or to unknown registers.
    pub bad_accesses: u64,
    /// Activations that failed.
    pub failed_activations: u64,
    /// Sessions re-established with a restarted backend.
    pub reconnects: u64,
}

/// A virtio-fs device on virtio-mmio.
pub struct MmioFs {
    base: u64,
    gsi: u32,
    fs: Fs,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    irq: Arc<Irq>,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<DriverQueue>,
    status: u32,
    shm: MmioShmRegs,
    /// Counters for the report.
    pub counters: Counters,
    /// The backend went away and has not been reconnected yet.
    pub lost_backend: bool,
    mistakes: MistakeLog,
}

impl MmioFs {
    /// A device for `fs` at `base` with interrupt `gsi`; [`MmioFs::wire`] connects it to a VM.
    pub fn new(
        base: u64,
        gsi: u32,
        fs: Fs,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
    ) -> Result<MmioFs> {
        let n = fs.queue_max_sizes().len();
        let irq = EventFd::new(EFD_NONBLOCK).context("eventfd")?;
        let mut kicks = Vec::new();
        let mut calls = Vec::new();
        for _ in 0..n {
            kicks.push(EventFd::new(EFD_NONBLOCK).context("eventfd")?);
            calls.push(EventFd::new(EFD_NONBLOCK).context("eventfd")?);
        }
        let shm = MmioShmRegs::with_regions(
            fs.shm_regions()
                .iter()
                .filter_map(|r| r.gpa.map(|gpa| (r.id, gpa, r.len))),
        );
        Ok(MmioFs {
            base,
            gsi,
            fs,
            mem,
            irq: Arc::new(Irq(irq)),
            kicks,
            calls,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues: vec![DriverQueue::default(); n],
            status: 0,
            shm,
            counters: Counters::default(),
            lost_backend: false,
            mistakes: MistakeLog::default(),
        })
    }

    /// Connects the device to `vm` (a new one after a reboot): one ioeventfd a queue at
    /// QueueNotify, and irqfds on its GSI for the device's interrupt and every queue's call
    /// eventfd (the backend signals those directly).
    pub fn wire(&self, vm: &VmFd) -> Result<()> {
        vm.register_irqfd(&self.irq.0, self.gsi)
            .context("KVM_IRQFD")?;
        for (i, (kick, call)) in self.kicks.iter().zip(&self.calls).enumerate() {
            vm.register_ioevent(kick, &IoEventAddress::Mmio(self.base + 0x50), i as u32)
                .context("KVM_IOEVENTFD")?;
            vm.register_irqfd(call, self.gsi).context("KVM_IRQFD")?;
        }
        Ok(())
    }

    /// Disconnects the device from `vm`, which the VMM is done with. Needed even though the VM
    /// goes away: an eventfd with irqfds in two VMs wakes only the older one (KVM's irqfds are
    /// exclusive waiters), so a VM that something still holds would swallow every interrupt.
    pub fn unwire(&self, vm: &VmFd) -> Result<()> {
        vm.unregister_irqfd(&self.irq.0, self.gsi)
            .context("KVM_IRQFD deassign")?;
        for (i, (kick, call)) in self.kicks.iter().zip(&self.calls).enumerate() {
            vm.unregister_ioevent(kick, &IoEventAddress::Mmio(self.base + 0x50), i as u32)
                .context("KVM_IOEVENTFD deassign")?;
            vm.unregister_irqfd(call, self.gsi)
                .context("KVM_IRQFD deassign")?;
        }
        Ok(())
    }

    /// Counts a register access the device refuses, and logs the first ones.
    fn bad(&mut self, what: std::fmt::Arguments<'_>) {
        self.counters.bad_accesses += 1;
        self.mistakes.log(
            format_args!(
                "virtio-fs {} (virtio-mmio at {:#x})",
                self.fs.tag(),
                self.base
            ),
            format_args!("{what}, ignored"),
        );
    }

    /// The platform reset (the guest rebooted): the device resets as on a status write of 0.
    pub fn platform_reset(&mut self) {
        // Silent: the VMM reports the platform reset itself.
        self.status = 0;
        self.set_status(0);
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.shm.reset();
    }

    /// Whether `addr` is in this device's register page.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.base + MMIO_LEN
    }

    /// The device.
    pub fn fs(&self) -> &Fs {
        &self.fs
    }

    /// The device, to act on it.
    pub fn fs_mut(&mut self) -> &mut Fs {
        &mut self.fs
    }

    fn queue(&mut self) -> Option<&mut DriverQueue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A guest read at `addr`.
    pub fn read(&mut self, addr: u64, data: &mut [u8]) {
        let off = addr - self.base;
        if off >= 0x100 {
            self.fs.read_config(off - 0x100, data);
            return;
        }
        let v: u32 = match off {
            0x000 => MAGIC,
            0x004 => 2,
            0x008 => self.fs.device_type(),
            0x00c => 0x4d56_4144, // "DAVM"
            0x010 => {
                let f = self.fs.features();
                match self.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x034 => {
                let max = self
                    .fs
                    .queue_max_sizes()
                    .get(self.queue_sel as usize)
                    .copied();
                u32::from(max.unwrap_or(0))
            }
            0x044 => u32::from(self.queue().is_some_and(|q| q.ready)),
            0x060 => INT_VRING,
            0x070 => self.status,
            0x0fc => 0,
            o => match self.shm.read(o) {
                Some(v) => v,
                None => {
                    self.bad(format_args!("read of unknown register {o:#x}"));
                    0
                }
            },
        };
        let bytes = v.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    /// A guest write at `addr`.
    pub fn write(&mut self, addr: u64, data: &[u8]) {
        let off = addr - self.base;
        if off >= 0x100 {
            self.fs.write_config(off - 0x100, data);
            return;
        }
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        let v = u32::from_le_bytes(b);
        let set_lo = |x: &mut u64| *x = (*x & !0xffff_ffff) | u64::from(v);
        let set_hi = |x: &mut u64| *x = (*x & 0xffff_ffff) | (u64::from(v) << 32);
        match off {
            0x014 => self.device_features_sel = v,
            0x020 => match self.driver_features_sel {
                0 => set_lo(&mut self.driver_features),
                1 => set_hi(&mut self.driver_features),
                _ => {}
            },
            0x024 => self.driver_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 => {
                if let Some(q) = self.queue() {
                    q.size = v as u16;
                }
            }
            0x044 => {
                if let Some(q) = self.queue() {
                    q.ready = v == 1;
                }
            }
            0x064 => {} // interrupt ACK: the status always says "used buffer"
            0x070 => self.set_status(v),
            0x080 => self.queue().map_or((), |q| set_lo(&mut q.desc)),
            0x084 => self.queue().map_or((), |q| set_hi(&mut q.desc)),
            0x090 => self.queue().map_or((), |q| set_lo(&mut q.avail)),
            0x094 => self.queue().map_or((), |q| set_hi(&mut q.avail)),
            0x0a0 => self.queue().map_or((), |q| set_lo(&mut q.used)),
            0x0a4 => self.queue().map_or((), |q| set_hi(&mut q.used)),
            o => {
                if !self.shm.write(o, v) {
                    self.bad(format_args!("write of {v:#x} to unknown register {o:#x}"));
                }
            }
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            let before = self.fs.metrics().live_mappings();
            self.fs.reset();
            if self.status != 0 {
                eprintln!(
                    "dax-vmm: virtio-fs {}: reset by the driver: {before} mapping(s) before, {} after",
                    self.fs.tag(),
                    self.fs.metrics().live_mappings()
                );
            }
            self.status = 0;
            self.driver_features = 0;
            self.queues
                .iter_mut()
                .for_each(|q| *q = DriverQueue::default());
            return;
        }
        let newly = v & !self.status;
        self.status = v;
        if newly & STATUS_FEATURES_OK != 0 {
            self.fs.ack_features(self.driver_features);
        }
        if newly & STATUS_DRIVER_OK != 0 {
            if let Err(e) = self.activate() {
                eprintln!("dax-vmm: activating the virtio-fs device: {e:#}");
                self.counters.failed_activations += 1;
                self.status |= STATUS_NEEDS_RESET;
            }
        }
    }

    fn activate(&mut self) -> Result<()> {
        let queues = activate_queues(
            &self.queues,
            self.fs.queue_max_sizes(),
            &self.kicks,
            &self.calls,
        )?;
        self.fs
            .activate(self.mem.clone(), self.irq.clone(), queues)
            .context("Fs::activate")?;
        Ok(())
    }
}
