// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-mmio: the shared memory registers ([`MmioShmRegs`]).

use super::split;

/// virtio-mmio register (write-only): selects the shared memory region that the `SHM_LEN_*` and
/// `SHM_BASE_*` registers describe.
pub const SHM_SEL: u64 = 0x0ac;
/// virtio-mmio register (read-only): low 32 bits of the selected region's length.
pub const SHM_LEN_LOW: u64 = 0x0b0;
/// virtio-mmio register (read-only): high 32 bits of the selected region's length.
pub const SHM_LEN_HIGH: u64 = 0x0b4;
/// virtio-mmio register (read-only): low 32 bits of the selected region's guest physical base.
pub const SHM_BASE_LOW: u64 = 0x0b8;
/// virtio-mmio register (read-only): high 32 bits of the selected region's guest physical base.
pub const SHM_BASE_HIGH: u64 = 0x0bc;

/// What `SHM_LEN_*` and `SHM_BASE_*` read for a selected id that has no region: all ones, which
/// the virtio-mmio spec defines as "no such region".
pub const SHM_NO_REGION: u64 = u64::MAX;

/// One shared memory region as [`MmioShmRegs`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShmRegion {
    /// Region id ([`VIRTIO_FS_SHMCAP_ID_CACHE`](super::VIRTIO_FS_SHMCAP_ID_CACHE) for the DAX
    /// window).
    pub id: u8,
    /// Guest physical base address.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

impl From<(u8, u64, u64)> for ShmRegion {
    fn from((id, base, len): (u8, u64, u64)) -> Self {
        Self { id, base, len }
    }
}

/// The shared memory registers of a virtio-mmio (version 2) device.
///
/// The driver writes a region id to [`SHM_SEL`], then reads the region's length from
/// [`SHM_LEN_LOW`] / [`SHM_LEN_HIGH`] and its guest physical base from [`SHM_BASE_LOW`] /
/// [`SHM_BASE_HIGH`]. An id without a region reads all ones ([`SHM_NO_REGION`]) in both, which
/// is how the guest learns that there is no such region.
///
/// The VMM calls [`MmioShmRegs::read`] and [`MmioShmRegs::write`] from its MMIO handler with the
/// offset in the device's register block, and falls back to its own registers when they return
/// `None` / `false`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MmioShmRegs {
    /// The id last written to `SHM_SEL` (all 32 bits: 256 does not select region 0).
    selected: u32,
    regions: Vec<ShmRegion>,
}

impl MmioShmRegs {
    /// Registers with no region; region 0 selected.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers describing `regions`; region 0 selected. A later region replaces an earlier
    /// one with the same id.
    pub fn with_regions<I>(regions: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<ShmRegion>,
    {
        let mut regs = Self::new();
        for region in regions {
            let region = region.into();
            regs.add_region(region.id, region.base, region.len);
        }
        regs
    }

    /// Adds region `id` at guest physical `base`, `len` bytes; replaces a region with the same
    /// id. A `len` of [`SHM_NO_REGION`] reads as "no such region" to the guest.
    pub fn add_region(&mut self, id: u8, base: u64, len: u64) {
        let region = ShmRegion { id, base, len };
        match self.regions.iter_mut().find(|r| r.id == id) {
            Some(existing) => *existing = region,
            None => self.regions.push(region),
        }
    }

    /// Removes region `id`, returning it if it was there.
    pub fn remove_region(&mut self, id: u8) -> Option<ShmRegion> {
        let i = self.regions.iter().position(|r| r.id == id)?;
        Some(self.regions.remove(i))
    }

    /// The regions, in the order they were added.
    pub fn regions(&self) -> &[ShmRegion] {
        &self.regions
    }

    /// The id last written to [`SHM_SEL`].
    pub fn selected(&self) -> u32 {
        self.selected
    }

    /// Device reset: selects region 0 again. The regions stay.
    pub fn reset(&mut self) {
        self.selected = 0;
    }

    /// The selected region, if it exists.
    pub fn selected_region(&self) -> Option<&ShmRegion> {
        self.regions
            .iter()
            .find(|r| u32::from(r.id) == self.selected)
    }

    /// Handles a driver write of `value` at register `offset`.
    ///
    /// Returns `true` when the write was to [`SHM_SEL`] and selected `value`; `false` for every
    /// other offset, the read-only length and base registers included (the VMM ignores or logs
    /// those writes).
    pub fn write(&mut self, offset: u64, value: u32) -> bool {
        if offset == SHM_SEL {
            self.selected = value;
            true
        } else {
            false
        }
    }

    /// Handles a driver read of register `offset`.
    ///
    /// Returns the length or base half of the selected region (all ones when it does not
    /// exist), `Some(0)` for the write-only [`SHM_SEL`] (as QEMU reads write-only registers), and
    /// `None` when `offset` is not a shared memory register.
    pub fn read(&self, offset: u64) -> Option<u32> {
        let region = self.selected_region();
        let len = region.map_or(SHM_NO_REGION, |r| r.len);
        let base = region.map_or(SHM_NO_REGION, |r| r.base);
        match offset {
            SHM_SEL => Some(0),
            SHM_LEN_LOW => Some(split(len).0),
            SHM_LEN_HIGH => Some(split(len).1),
            SHM_BASE_LOW => Some(split(base).0),
            SHM_BASE_HIGH => Some(split(base).1),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::VIRTIO_FS_SHMCAP_ID_CACHE;

    // ---- MMIO ----

    const BASE: u64 = 0x0000_0010_8000_0000;
    const LEN: u64 = 0x0000_0002_0020_0000;

    #[test]
    fn mmio_register_offsets() {
        assert_eq!(
            [
                SHM_SEL,
                SHM_LEN_LOW,
                SHM_LEN_HIGH,
                SHM_BASE_LOW,
                SHM_BASE_HIGH
            ],
            [0x0ac, 0x0b0, 0x0b4, 0x0b8, 0x0bc]
        );
    }

    #[test]
    fn mmio_selected_region_halves() {
        let mut regs = MmioShmRegs::new();
        regs.add_region(VIRTIO_FS_SHMCAP_ID_CACHE, BASE, LEN);
        assert!(regs.write(SHM_SEL, 0));
        assert_eq!(regs.selected(), 0);
        assert_eq!(regs.read(SHM_LEN_LOW), Some(0x0020_0000));
        assert_eq!(regs.read(SHM_LEN_HIGH), Some(0x2));
        assert_eq!(regs.read(SHM_BASE_LOW), Some(0x8000_0000));
        assert_eq!(regs.read(SHM_BASE_HIGH), Some(0x10));
    }

    #[test]
    fn mmio_missing_region_reads_all_ones() {
        let mut regs = MmioShmRegs::with_regions([(0, BASE, LEN)]);
        assert!(regs.write(SHM_SEL, 1));
        assert_eq!(regs.selected(), 1);
        assert!(regs.selected_region().is_none());
        for reg in [SHM_LEN_LOW, SHM_LEN_HIGH, SHM_BASE_LOW, SHM_BASE_HIGH] {
            assert_eq!(regs.read(reg), Some(u32::MAX), "reg {reg:#x}");
        }

        // An id above 255 does not alias a region (no truncation to u8).
        for sel in [256, 0x100_0000, u32::MAX] {
            assert!(regs.write(SHM_SEL, sel));
            assert_eq!(regs.read(SHM_LEN_LOW), Some(u32::MAX), "sel {sel:#x}");
            assert_eq!(regs.read(SHM_LEN_HIGH), Some(u32::MAX), "sel {sel:#x}");
        }

        // No regions at all.
        let regs = MmioShmRegs::new();
        assert_eq!(regs.read(SHM_LEN_LOW), Some(u32::MAX));
        assert_eq!(regs.read(SHM_BASE_HIGH), Some(u32::MAX));

        // Back to 0.
        let mut regs = MmioShmRegs::with_regions([(0, BASE, LEN)]);
        regs.write(SHM_SEL, 1);
        regs.reset();
        assert_eq!(regs.read(SHM_LEN_LOW), Some(0x0020_0000));
    }

    #[test]
    fn mmio_several_regions() {
        let regs = MmioShmRegs::with_regions([
            ShmRegion {
                id: 0,
                base: 0x1000,
                len: 0x2000,
            },
            ShmRegion {
                id: 3,
                base: 0xaaaa_bbbb_cccc_d000,
                len: 0x1_0000_0000,
            },
        ]);
        let mut regs = regs;
        regs.write(SHM_SEL, 3);
        assert_eq!(regs.read(SHM_BASE_LOW), Some(0xcccc_d000));
        assert_eq!(regs.read(SHM_BASE_HIGH), Some(0xaaaa_bbbb));
        assert_eq!(regs.read(SHM_LEN_LOW), Some(0));
        assert_eq!(regs.read(SHM_LEN_HIGH), Some(1));
        regs.write(SHM_SEL, 0);
        assert_eq!(regs.read(SHM_BASE_LOW), Some(0x1000));
        assert_eq!(regs.read(SHM_LEN_LOW), Some(0x2000));
        regs.write(SHM_SEL, 2);
        assert_eq!(regs.read(SHM_LEN_LOW), Some(u32::MAX));
    }

    #[test]
    fn mmio_add_replaces_and_remove() {
        let mut regs = MmioShmRegs::new();
        regs.add_region(0, 0x1000, 0x2000);
        regs.add_region(0, BASE, LEN);
        assert_eq!(regs.regions().len(), 1);
        assert_eq!(regs.read(SHM_BASE_HIGH), Some(0x10));
        assert_eq!(
            regs.remove_region(0),
            Some(ShmRegion {
                id: 0,
                base: BASE,
                len: LEN
            })
        );
        assert_eq!(regs.remove_region(0), None);
        assert_eq!(regs.read(SHM_LEN_LOW), Some(u32::MAX));
    }

    #[test]
    fn mmio_unknown_offsets() {
        let mut regs = MmioShmRegs::with_regions([(0, BASE, LEN)]);
        let before = regs.clone();
        // Around and between the registers, the rest of the virtio-mmio block, huge offsets.
        for offset in [
            0x000,
            0x070,
            0x0a8,
            0x0ad,
            0x0b1,
            0x0c0,
            0x0fc,
            0x100,
            u64::MAX,
            SHM_SEL + (1 << 32),
        ] {
            assert_eq!(regs.read(offset), None, "read {offset:#x}");
            assert!(!regs.write(offset, 1), "write {offset:#x}");
        }
        assert_eq!(regs, before, "unknown writes change nothing");
    }

    #[test]
    fn mmio_read_only_registers_refuse_writes() {
        let mut regs = MmioShmRegs::with_regions([(0, BASE, LEN)]);
        regs.write(SHM_SEL, 0);
        let before = regs.clone();
        for reg in [SHM_LEN_LOW, SHM_LEN_HIGH, SHM_BASE_LOW, SHM_BASE_HIGH] {
            assert!(!regs.write(reg, 0xdead_beef), "reg {reg:#x}");
            assert!(!regs.write(reg, 1), "reg {reg:#x}");
        }
        assert_eq!(regs, before);
        assert_eq!(regs.selected(), 0);
        assert_eq!(regs.read(SHM_LEN_LOW), Some(0x0020_0000));
    }

    #[test]
    fn mmio_sel_is_write_only() {
        let mut regs = MmioShmRegs::with_regions([(0, BASE, LEN)]);
        regs.write(SHM_SEL, 7);
        assert_eq!(regs.read(SHM_SEL), Some(0));
        assert_eq!(regs.selected(), 7);
    }
}
