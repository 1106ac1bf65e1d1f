// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Transport helpers: the exact bytes and register values a VMM exposes for a virtio-fs device
//! with a DAX window.
//!
//! The VMM owns the transport (virtio-pci or virtio-mmio); this module only produces values:
//!
//! - **Config space**: [`VirtioFsConfig`] is `struct virtio_fs_config` (tag and number of request
//!   queues), checked by [`VirtioFsConfig::new`]; [`read_config`] serves a config space read of
//!   any offset and length without panicking.
//! - **virtio-pci**: the window is shared memory region 0 ([`VIRTIO_FS_SHMCAP_ID_CACHE`]),
//!   exposed with one `struct virtio_pci_cap64` of type [`VIRTIO_PCI_CAP_SHARED_MEMORY_CFG`]
//!   ([`shm_pci_cap`]) that points into a 64-bit prefetchable BAR ([`ShmBar`]).
//! - **virtio-mmio** (version 2): [`MmioShmRegs`] serves the `SHMSel` / `SHMLen` / `SHMBase`
//!   registers.
//! - **Resource allocation**: the window needs a guest physical range of its size aligned to
//!   [`WINDOW_ALIGNMENT`]; with feature `vm-device`, `window_resource_constraint` says so to a
//!   `vm-device` based allocator.
//!
//! `virtio-bindings` 0.2 has neither the virtio-fs config nor the PCI `cap64` struct, hence the
//! definitions here.
//!
//! # Example
//!
//! ```
//! use vm_memory::ByteValued;
//! use virtio_fs_dax::transport::{read_config, shm_pci_cap, ShmBar, VirtioFsConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Config space: tag "myfs", one request queue.
//! let config = VirtioFsConfig::new("myfs", 1)?;
//! let mut data = [0xff; 4];
//! read_config(config.as_slice(), 36, &mut data);
//! assert_eq!(u32::from_le_bytes(data), 1);
//!
//! // PCI: a 1 GiB window is all of BAR 2, described by one shared memory capability.
//! let bar = ShmBar::for_window(2, 1 << 30)?;
//! assert_eq!(bar.bar_flags(), 0b1100); // memory, 64-bit, prefetchable
//! let cap = shm_pci_cap(bar.index, 0, bar.size);
//! assert_eq!(cap.as_slice().len(), 24);
//! # Ok(())
//! # }
//! ```

use std::mem::size_of;

#[cfg(feature = "vm-device")]
use vm_device::resources::ResourceConstraint;
use vm_memory::{ByteValued, Le32};

/// virtio device id of a file system device.
pub const VIRTIO_ID_FS: u32 = 26;

/// Shared memory region id of the virtio-fs DAX window ("cache").
pub const VIRTIO_FS_SHMCAP_ID_CACHE: u8 = 0;

/// Feature bit number (not mask) of `VIRTIO_FS_F_NOTIFICATION`: the device has a notification
/// queue, and the config space grows a `le32 notify_buf_size` (see [`VirtioFsConfig`]).
pub const VIRTIO_FS_F_NOTIFICATION: u64 = 0;

/// Length of the `tag` field of the config space.
pub const VIRTIO_FS_TAG_LEN: usize = 36;

/// PCI capability id of a vendor-specific capability (`PCI_CAP_ID_VNDR`); every virtio-pci
/// capability uses it.
pub const PCI_CAP_ID_VNDR: u8 = 0x09;

/// virtio-pci capability type of a shared memory region.
pub const VIRTIO_PCI_CAP_SHARED_MEMORY_CFG: u8 = 8;

/// Alignment of the window in guest physical memory: 2 MiB.
///
/// The Linux guest (`virtio_fs_setup_dax`) creates struct pages for the window and maps it in
/// 2 MiB ranges, so it needs the window 2 MiB aligned.
pub const WINDOW_ALIGNMENT: u64 = 2 << 20;

/// Smallest BAR that [`ShmBar::for_window`] accepts: one page.
pub const MIN_SHM_BAR_SIZE: u64 = 4096;

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

/// Errors of [`VirtioFsConfig::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The tag is empty.
    #[error("the virtio-fs tag is empty")]
    EmptyTag,
    /// The tag does not fit the 36-byte field.
    #[error("the virtio-fs tag is {len} bytes long, more than {VIRTIO_FS_TAG_LEN}")]
    TagTooLong {
        /// Length of the tag in bytes (UTF-8).
        len: usize,
    },
    /// The tag contains a NUL byte, which would end it early in the guest.
    #[error("the virtio-fs tag contains a NUL byte")]
    TagHasNul,
    /// The device must have at least one request queue.
    #[error("a virtio-fs device needs at least one request queue")]
    NoRequestQueues,
}

/// The virtio-fs device configuration space (`struct virtio_fs_config`), 40 bytes.
///
/// | offset | field                       |
/// |--------|-----------------------------|
/// | 0      | `u8 tag[36]`                |
/// | 36     | `le32 num_request_queues`   |
///
/// The tag is UTF-8, padded with NUL bytes, and not NUL-terminated when it takes all 36 bytes.
/// The config space is read-only for the driver: a VMM ignores config writes.
///
/// With [`VIRTIO_FS_F_NOTIFICATION`] negotiated the spec appends `le32 notify_buf_size` at
/// offset 40. This crate does not implement the notification queue (nor does the Linux guest); a
/// VMM that offers it serves `config.as_slice()` followed by `notify_buf_size.to_le_bytes()`.
///
/// Build it with [`VirtioFsConfig::new`]; serve it with [`read_config`] over
/// [`ByteValued::as_slice`].
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioFsConfig {
    tag: [u8; VIRTIO_FS_TAG_LEN],
    num_request_queues: Le32,
}

// SAFETY: VirtioFsConfig is packed plain old data: every byte pattern is a valid value.
unsafe impl ByteValued for VirtioFsConfig {}

const _: () = assert!(size_of::<VirtioFsConfig>() == 40);

impl VirtioFsConfig {
    /// A config space with `tag` (the name the guest mounts: `mount -t virtiofs <tag> <dir>`)
    /// and `num_request_queues` request queues (not counting the high-priority queue).
    ///
    /// The tag must be 1 to 36 bytes of UTF-8 without NUL bytes; there must be at least one
    /// request queue.
    pub fn new(tag: &str, num_request_queues: u32) -> Result<Self, ConfigError> {
        let bytes = tag.as_bytes();
        if bytes.is_empty() {
            return Err(ConfigError::EmptyTag);
        }
        if bytes.len() > VIRTIO_FS_TAG_LEN {
            return Err(ConfigError::TagTooLong { len: bytes.len() });
        }
        if bytes.contains(&0) {
            return Err(ConfigError::TagHasNul);
        }
        if num_request_queues == 0 {
            return Err(ConfigError::NoRequestQueues);
        }
        let mut padded = [0u8; VIRTIO_FS_TAG_LEN];
        for (dst, src) in padded.iter_mut().zip(bytes) {
            *dst = *src;
        }
        Ok(Self {
            tag: padded,
            num_request_queues: Le32::from(num_request_queues),
        })
    }

    /// The tag bytes, without the NUL padding.
    pub fn tag(&self) -> &[u8] {
        let tag = &self.tag;
        let len = tag.iter().position(|&b| b == 0).unwrap_or(tag.len());
        tag.get(..len).unwrap_or(tag)
    }

    /// The number of request queues.
    pub fn num_request_queues(&self) -> u32 {
        // Copy the packed field out before using it.
        let n = self.num_request_queues;
        n.to_native()
    }
}

/// Serves a read of `data.len()` bytes at `offset` of a config space `config`.
///
/// The part of the read that overlaps `config` is copied; every other byte of `data` is set to
/// zero. It never panics, whatever the offset and the length (an offset near `u64::MAX`
/// included), the way cloud-hypervisor's `VirtioDevice::read_config` serves out-of-range reads.
pub fn read_config(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    let Some(src) = config.get(start..) else {
        return;
    };
    for (dst, src) in data.iter_mut().zip(src) {
        *dst = *src;
    }
}

/// A virtio-pci capability with 64-bit offset and length (`struct virtio_pci_cap64`), 24 bytes.
///
/// | offset | field        |
/// |--------|--------------|
/// | 0      | `cap_vndr`   |
/// | 1      | `cap_next`   |
/// | 2      | `cap_len`    |
/// | 3      | `cfg_type`   |
/// | 4      | `bar`        |
/// | 5      | `id`         |
/// | 6      | `padding[2]` |
/// | 8      | `offset`     |
/// | 12     | `length`     |
/// | 16     | `offset_hi`  |
/// | 20     | `length_hi`  |
///
/// [`shm_pci_cap`] builds the shared memory capability of the DAX window.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioPciCap64 {
    /// Capability id: [`PCI_CAP_ID_VNDR`].
    pub cap_vndr: u8,
    /// Config space offset of the next capability; the VMM links the list.
    pub cap_next: u8,
    /// Length of this capability: 24.
    pub cap_len: u8,
    /// virtio capability type: [`VIRTIO_PCI_CAP_SHARED_MEMORY_CFG`].
    pub cfg_type: u8,
    /// Index of the BAR that holds the region.
    pub bar: u8,
    /// Shared memory region id: [`VIRTIO_FS_SHMCAP_ID_CACHE`] for the DAX window.
    pub id: u8,
    /// Padding, zero.
    pub padding: [u8; 2],
    /// Low 32 bits of the region's offset in the BAR.
    pub offset: Le32,
    /// Low 32 bits of the region's length.
    pub length: Le32,
    /// High 32 bits of the region's offset in the BAR.
    pub offset_hi: Le32,
    /// High 32 bits of the region's length.
    pub length_hi: Le32,
}

// SAFETY: VirtioPciCap64 is packed plain old data: every byte pattern is a valid value.
unsafe impl ByteValued for VirtioPciCap64 {}

const _: () = assert!(size_of::<VirtioPciCap64>() == 24);

impl VirtioPciCap64 {
    /// The region's 64-bit offset in the BAR (`offset_hi:offset`).
    pub fn offset64(&self) -> u64 {
        let (lo, hi) = (self.offset, self.offset_hi);
        join(lo.to_native(), hi.to_native())
    }

    /// The region's 64-bit length (`length_hi:length`).
    pub fn length64(&self) -> u64 {
        let (lo, hi) = (self.length, self.length_hi);
        join(lo.to_native(), hi.to_native())
    }
}

/// The shared memory capability of the DAX window: region [`VIRTIO_FS_SHMCAP_ID_CACHE`] at
/// `offset` in BAR `bar`, `length` bytes long.
///
/// `cap_next` is 0: the VMM sets it when it links the capability into the list.
pub fn shm_pci_cap(bar: u8, offset: u64, length: u64) -> VirtioPciCap64 {
    let (offset_lo, offset_hi) = split(offset);
    let (length_lo, length_hi) = split(length);
    VirtioPciCap64 {
        cap_vndr: PCI_CAP_ID_VNDR,
        cap_next: 0,
        cap_len: size_of::<VirtioPciCap64>() as u8,
        cfg_type: VIRTIO_PCI_CAP_SHARED_MEMORY_CFG,
        bar,
        id: VIRTIO_FS_SHMCAP_ID_CACHE,
        padding: [0; 2],
        offset: Le32::from(offset_lo),
        length: Le32::from(length_lo),
        offset_hi: Le32::from(offset_hi),
        length_hi: Le32::from(length_hi),
    }
}

/// Errors of [`ShmBar::for_window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BarError {
    /// The BAR size is not a power of two of at least [`MIN_SHM_BAR_SIZE`].
    #[error("BAR size {size:#x} is not a power of two of at least {MIN_SHM_BAR_SIZE:#x}")]
    InvalidSize {
        /// Requested size.
        size: u64,
    },
    /// A 64-bit BAR takes two of the six BAR slots, so its index is 0 to 4.
    #[error("BAR index {index} cannot hold a 64-bit BAR (0 to 4)")]
    InvalidIndex {
        /// Requested index.
        index: u8,
    },
}

/// PCI BAR low bits: memory space indicator (bit 0 clear: memory).
const PCI_BAR_MEM_SPACE: u32 = 0;
/// PCI BAR low bits: 64-bit memory BAR (type `0b10` in bits 2:1).
const PCI_BAR_MEM_TYPE_64: u32 = 0b10 << 1;
/// PCI BAR low bits: prefetchable (bit 3).
const PCI_BAR_MEM_PREFETCH: u32 = 1 << 3;

/// The PCI BAR that holds the DAX window.
///
/// [`ShmBar::for_window`] gives a **64-bit, prefetchable** BAR exactly the size of the window:
///
/// - 64-bit, because windows are large (gigabytes) and do not fit the 32-bit MMIO hole.
/// - Prefetchable, because many firmwares (and Linux' resource assignment) place
///   non-prefetchable BARs in the non-prefetchable bridge window, which is 32-bit only: a
///   64-bit non-prefetchable BAR then ends up below 4 GiB, or is not assigned at all when it does
///   not fit. crosvm moved its virtio-fs shared memory BAR to prefetchable for this reason. The
///   window is ordinary cacheable memory (file pages), so prefetching is harmless.
/// - A power of two, as every PCI BAR; PCI also aligns a BAR to its size, which exceeds the
///   2 MiB the guest needs ([`WINDOW_ALIGNMENT`]) for any window of at least 2 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShmBar {
    index: u8,
    size: u64,
    prefetchable: bool,
    is_64bit: bool,
}

impl ShmBar {
    /// BAR index (0 to 4; a 64-bit BAR also takes `index + 1`).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// BAR size in bytes: the window's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the BAR is prefetchable (always, for a window).
    pub fn prefetchable(&self) -> bool {
        self.prefetchable
    }

    /// Whether the BAR is a 64-bit memory BAR (always, for a window).
    pub fn is_64bit(&self) -> bool {
        self.is_64bit
    }

    /// A 64-bit prefetchable BAR at `index`, exactly `window_size` bytes.
    ///
    /// `window_size` must be a power of two of at least [`MIN_SHM_BAR_SIZE`]; `index` must leave
    /// room for the BAR's upper half (0 to 4).
    pub fn for_window(index: u8, window_size: u64) -> Result<Self, BarError> {
        if index > 4 {
            return Err(BarError::InvalidIndex { index });
        }
        if !window_size.is_power_of_two() || window_size < MIN_SHM_BAR_SIZE {
            return Err(BarError::InvalidSize { size: window_size });
        }
        Ok(Self {
            index,
            size: window_size,
            prefetchable: true,
            is_64bit: true,
        })
    }

    /// The read-only low bits of the BAR register: memory space (bit 0 clear), type `0b10` in
    /// bits 2:1 when 64-bit, bit 3 when prefetchable. `0b1100` for [`ShmBar::for_window`].
    pub fn bar_flags(&self) -> u32 {
        let mut flags = PCI_BAR_MEM_SPACE;
        if self.is_64bit {
            flags |= PCI_BAR_MEM_TYPE_64;
        }
        if self.prefetchable {
            flags |= PCI_BAR_MEM_PREFETCH;
        }
        flags
    }

    /// The shared memory capability of a window that fills this whole BAR (offset 0).
    pub fn shm_cap(&self) -> VirtioPciCap64 {
        shm_pci_cap(self.index, 0, self.size)
    }
}

/// One shared memory region as [`MmioShmRegs`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShmRegion {
    /// Region id ([`VIRTIO_FS_SHMCAP_ID_CACHE`] for the DAX window).
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

/// The guest physical range the window needs, for a `vm-device` resource allocator: an MMIO
/// range of `size` bytes (the window size), anywhere, aligned to [`WINDOW_ALIGNMENT`] (2 MiB).
///
/// 2 MiB is what the guest needs: Linux creates struct pages for the window and maps it in 2 MiB
/// ranges. For virtio-pci the window lives in a BAR, and a power-of-two BAR is naturally aligned
/// to its size by PCI rules: the VMM's BAR allocator enforces that stronger alignment itself.
/// For virtio-mmio this constraint is the whole story.
#[cfg(feature = "vm-device")]
#[cfg_attr(docsrs, doc(cfg(feature = "vm-device")))]
pub fn window_resource_constraint(size: u64) -> ResourceConstraint {
    ResourceConstraint::mmio_with_constraints(size, None, WINDOW_ALIGNMENT)
}

/// Splits `v` into its low and high 32 bits.
fn split(v: u64) -> (u32, u32) {
    (v as u32, (v >> 32) as u32)
}

/// Joins low and high 32 bits.
fn join(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | (u64::from(hi) << 32)
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;

    const GIB: u64 = 1 << 30;

    // ---- config space ----

    #[test]
    fn config_layout() {
        assert_eq!(size_of::<VirtioFsConfig>(), 40);
        assert_eq!(offset_of!(VirtioFsConfig, tag), 0);
        assert_eq!(offset_of!(VirtioFsConfig, num_request_queues), 36);

        let config = VirtioFsConfig::new("myfs", 0x0102_0304).unwrap();
        let bytes = config.as_slice();
        assert_eq!(bytes.len(), 40);
        assert_eq!(&bytes[..4], b"myfs");
        assert!(bytes[4..36].iter().all(|&b| b == 0), "tag is NUL padded");
        assert_eq!(&bytes[36..40], &[0x04, 0x03, 0x02, 0x01], "little endian");
        assert_eq!(config.tag(), b"myfs");
        assert_eq!(config.num_request_queues(), 0x0102_0304);
    }

    #[test]
    fn config_round_trips_through_bytes() {
        let config = VirtioFsConfig::new("a-tag", 7).unwrap();
        let mut bytes = [0u8; 40];
        bytes.copy_from_slice(config.as_slice());
        let back = VirtioFsConfig::from_slice(&bytes).unwrap();
        assert_eq!(*back, config);
    }

    #[test]
    fn config_full_length_tag_is_not_terminated() {
        let tag = "x".repeat(36);
        let config = VirtioFsConfig::new(&tag, 1).unwrap();
        assert_eq!(&config.as_slice()[..36], tag.as_bytes());
        assert_eq!(config.tag(), tag.as_bytes());
        assert_eq!(config.as_slice()[36], 1);
    }

    #[test]
    fn config_tag_validation() {
        assert_eq!(VirtioFsConfig::new("", 1), Err(ConfigError::EmptyTag));
        assert_eq!(
            VirtioFsConfig::new(&"x".repeat(37), 1),
            Err(ConfigError::TagTooLong { len: 37 })
        );
        assert_eq!(VirtioFsConfig::new("a\0b", 1), Err(ConfigError::TagHasNul));
        assert_eq!(VirtioFsConfig::new("\0", 1), Err(ConfigError::TagHasNul));
        assert_eq!(VirtioFsConfig::new("tag\0", 1), Err(ConfigError::TagHasNul));
        assert_eq!(
            VirtioFsConfig::new("fs", 0),
            Err(ConfigError::NoRequestQueues)
        );
        assert!(VirtioFsConfig::new(&"x".repeat(36), 1).is_ok());
        assert!(VirtioFsConfig::new("x", u32::MAX).is_ok());
    }

    #[test]
    fn config_tag_length_counts_utf8_bytes() {
        // 12 three-byte characters: 36 bytes, fits; 13: 39 bytes, refused.
        let fits = "€".repeat(12);
        let config = VirtioFsConfig::new(&fits, 1).unwrap();
        assert_eq!(config.tag(), fits.as_bytes());
        assert_eq!(
            VirtioFsConfig::new(&"€".repeat(13), 1),
            Err(ConfigError::TagTooLong { len: 39 })
        );
    }

    #[test]
    fn config_errors_display() {
        for e in [
            ConfigError::EmptyTag,
            ConfigError::TagTooLong { len: 40 },
            ConfigError::TagHasNul,
            ConfigError::NoRequestQueues,
        ] {
            assert!(!e.to_string().is_empty());
        }
        assert!(ConfigError::TagTooLong { len: 40 }
            .to_string()
            .contains("40"));
    }

    /// A reference model of `read_config`: byte by byte, with checked arithmetic.
    fn model_read(config: &[u8], offset: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| {
                offset
                    .checked_add(i)
                    .and_then(|o| usize::try_from(o).ok())
                    .and_then(|o| config.get(o).copied())
                    .unwrap_or(0)
            })
            .collect()
    }

    #[test]
    fn read_config_edges() {
        let config = VirtioFsConfig::new("edge", 2).unwrap();
        let bytes = config.as_slice();

        // Inside.
        let mut data = [0xaa; 4];
        read_config(bytes, 0, &mut data);
        assert_eq!(&data, b"edge");
        read_config(bytes, 36, &mut data);
        assert_eq!(data, [2, 0, 0, 0]);

        // Partial overlap at the end: the rest is zero, not left as it was.
        let mut data = [0xaa; 8];
        read_config(bytes, 36, &mut data);
        assert_eq!(data, [2, 0, 0, 0, 0, 0, 0, 0]);
        let mut data = [0xaa; 4];
        read_config(bytes, 38, &mut data);
        assert_eq!(data, [0, 0, 0, 0]);

        // Exactly at the end, and past it.
        for offset in [40, 41, 4096] {
            let mut data = [0xaa; 4];
            read_config(bytes, offset, &mut data);
            assert_eq!(data, [0; 4], "offset {offset}");
        }

        // Huge offsets: no panic, no wrap-around to the start.
        for offset in [
            u64::MAX,
            u64::MAX - 1,
            u64::MAX - 3,
            u64::MAX - 39,
            1 << 63,
            u64::from(u32::MAX),
            usize::MAX as u64,
        ] {
            let mut data = [0xaa; 64];
            read_config(bytes, offset, &mut data);
            assert_eq!(data, [0; 64], "offset {offset:#x}");
        }

        // Empty reads and an empty config.
        read_config(bytes, u64::MAX, &mut []);
        read_config(bytes, 0, &mut []);
        let mut data = [0xaa; 3];
        read_config(&[], 0, &mut data);
        assert_eq!(data, [0; 3]);

        // A read longer than the whole config.
        let mut data = [0xaa; 100];
        read_config(bytes, 0, &mut data);
        assert_eq!(&data[..40], bytes);
        assert!(data[40..].iter().all(|&b| b == 0));
    }

    #[test]
    fn read_config_matches_model_everywhere() {
        let config = VirtioFsConfig::new("model-tag", 0xdead_beef).unwrap();
        let bytes = config.as_slice();
        for offset in 0..=48u64 {
            for len in 0..=48usize {
                let mut data = vec![0x5a; len];
                read_config(bytes, offset, &mut data);
                assert_eq!(
                    data,
                    model_read(bytes, offset, len),
                    "offset {offset} len {len}"
                );
            }
        }
    }

    // ---- PCI ----

    #[test]
    fn pci_cap_layout() {
        assert_eq!(size_of::<VirtioPciCap64>(), 24);
        assert_eq!(offset_of!(VirtioPciCap64, cap_vndr), 0);
        assert_eq!(offset_of!(VirtioPciCap64, cap_next), 1);
        assert_eq!(offset_of!(VirtioPciCap64, cap_len), 2);
        assert_eq!(offset_of!(VirtioPciCap64, cfg_type), 3);
        assert_eq!(offset_of!(VirtioPciCap64, bar), 4);
        assert_eq!(offset_of!(VirtioPciCap64, id), 5);
        assert_eq!(offset_of!(VirtioPciCap64, padding), 6);
        assert_eq!(offset_of!(VirtioPciCap64, offset), 8);
        assert_eq!(offset_of!(VirtioPciCap64, length), 12);
        assert_eq!(offset_of!(VirtioPciCap64, offset_hi), 16);
        assert_eq!(offset_of!(VirtioPciCap64, length_hi), 20);
    }

    #[test]
    fn pci_cap_bytes() {
        // 64 GiB + 4 KiB: high half 0x10, low half 0x1000, for both offset and length.
        let big = 64 * GIB + 4096;
        let cap = shm_pci_cap(2, big, big);
        let b = cap.as_slice();
        assert_eq!(b.len(), 24);
        assert_eq!(b[0], 0x09, "cap_vndr = PCI_CAP_ID_VNDR");
        assert_eq!(b[1], 0, "cap_next left to the VMM");
        assert_eq!(b[2], 24, "cap_len");
        assert_eq!(b[3], 8, "cfg_type = shared memory");
        assert_eq!(b[4], 2, "bar");
        assert_eq!(b[5], 0, "id = cache");
        assert_eq!(&b[6..8], &[0, 0], "padding");
        assert_eq!(&b[8..12], &[0x00, 0x10, 0, 0], "offset low");
        assert_eq!(&b[12..16], &[0x00, 0x10, 0, 0], "length low");
        assert_eq!(&b[16..20], &[0x10, 0, 0, 0], "offset high");
        assert_eq!(&b[20..24], &[0x10, 0, 0, 0], "length high");
        assert_eq!(cap.offset64(), big);
        assert_eq!(cap.length64(), big);
    }

    #[test]
    fn pci_cap_distinguishes_every_input() {
        // Distinct halves everywhere, so a swapped or truncated field shows.
        let offset = 0x0102_0304_0506_0708;
        let length = 0x1112_1314_1516_1718;
        let cap = shm_pci_cap(3, offset, length);
        let b = cap.as_slice();
        assert_eq!(b[4], 3);
        assert_eq!(&b[8..12], &0x0506_0708u32.to_le_bytes());
        assert_eq!(&b[12..16], &0x1516_1718u32.to_le_bytes());
        assert_eq!(&b[16..20], &0x0102_0304u32.to_le_bytes());
        assert_eq!(&b[20..24], &0x1112_1314u32.to_le_bytes());
        assert_eq!(cap.offset64(), offset);
        assert_eq!(cap.length64(), length);

        // Changing one input changes only its own bytes.
        let other = shm_pci_cap(3, offset, length ^ (1 << 40));
        let diff: Vec<usize> = (0..24).filter(|&i| other.as_slice()[i] != b[i]).collect();
        assert_eq!(diff, vec![21]);
        let other = shm_pci_cap(4, offset, length);
        let diff: Vec<usize> = (0..24).filter(|&i| other.as_slice()[i] != b[i]).collect();
        assert_eq!(diff, vec![4]);

        // Extremes.
        let cap = shm_pci_cap(0, 0, u64::MAX);
        assert_eq!(cap.offset64(), 0);
        assert_eq!(cap.length64(), u64::MAX);
        assert_eq!(&cap.as_slice()[12..16], &[0xff; 4]);
        assert_eq!(&cap.as_slice()[20..24], &[0xff; 4]);
    }

    #[test]
    fn pci_cap_round_trips_through_bytes() {
        let cap = shm_pci_cap(1, 0x1234_5000, 16 * GIB);
        let mut bytes = [0u8; 24];
        bytes.copy_from_slice(cap.as_slice());
        assert_eq!(*VirtioPciCap64::from_slice(&bytes).unwrap(), cap);
    }

    #[test]
    fn bar_for_window() {
        let bar = ShmBar::for_window(2, 8 * GIB).unwrap();
        assert_eq!(
            bar,
            ShmBar {
                index: 2,
                size: 8 * GIB,
                prefetchable: true,
                is_64bit: true
            }
        );
        assert_eq!(bar.bar_flags(), 0b1100);
        assert_eq!(bar.bar_flags(), 0xc);
        let cap = bar.shm_cap();
        assert_eq!(cap.bar, 2);
        assert_eq!(cap.offset64(), 0);
        assert_eq!(cap.length64(), 8 * GIB);

        assert!(ShmBar::for_window(0, 4096).is_ok());
        assert!(ShmBar::for_window(4, 1 << 63).is_ok());
    }

    #[test]
    fn bar_size_validation() {
        for size in [0, 1, 2048, 4095, 4097, 3 << 20, (2 << 20) + 4096, u64::MAX] {
            assert_eq!(
                ShmBar::for_window(0, size),
                Err(BarError::InvalidSize { size }),
                "size {size:#x}"
            );
        }
        assert_eq!(
            ShmBar::for_window(5, 1 << 20),
            Err(BarError::InvalidIndex { index: 5 })
        );
        assert_eq!(
            ShmBar::for_window(255, 1 << 20),
            Err(BarError::InvalidIndex { index: 255 })
        );
        assert!(BarError::InvalidSize { size: 3 }
            .to_string()
            .contains("0x3"));
    }

    #[test]
    fn bar_flags_bits() {
        let flags = |prefetchable, is_64bit| {
            ShmBar {
                index: 0,
                size: 4096,
                prefetchable,
                is_64bit,
            }
            .bar_flags()
        };
        assert_eq!(flags(false, false), 0b0000);
        assert_eq!(flags(false, true), 0b0100);
        assert_eq!(flags(true, false), 0b1000);
        assert_eq!(flags(true, true), 0b1100);
        // Bit 0 (I/O space) is never set.
        for (p, w) in [(false, false), (false, true), (true, false), (true, true)] {
            assert_eq!(flags(p, w) & 1, 0);
        }
    }

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

    // ---- resource constraint ----

    #[cfg(feature = "vm-device")]
    #[test]
    fn resource_constraint_values() {
        for size in [2 << 20, GIB, 64 * GIB] {
            match window_resource_constraint(size) {
                ResourceConstraint::MmioAddress {
                    range,
                    align,
                    size: s,
                } => {
                    assert_eq!(range, None);
                    assert_eq!(align, 2 << 20);
                    assert_eq!(align, WINDOW_ALIGNMENT);
                    assert_eq!(s, size);
                }
                _ => panic!("not an MMIO constraint"),
            }
        }
    }

    #[test]
    fn constants() {
        assert_eq!(VIRTIO_ID_FS, 26);
        assert_eq!(VIRTIO_FS_SHMCAP_ID_CACHE, 0);
        assert_eq!(VIRTIO_FS_F_NOTIFICATION, 0);
        assert_eq!(VIRTIO_PCI_CAP_SHARED_MEMORY_CFG, 8);
        assert_eq!(PCI_CAP_ID_VNDR, 0x09);
        assert_eq!(SHM_NO_REGION, u64::MAX);
        assert_eq!(split(0x0102_0304_0506_0708), (0x0506_0708, 0x0102_0304));
        assert_eq!(join(0x0506_0708, 0x0102_0304), 0x0102_0304_0506_0708);
    }
}
