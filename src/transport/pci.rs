// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-pci: the shared memory capability ([`VirtioPciCap64`]) and the BAR ([`ShmBar`]) of
//! the window.

use std::mem::size_of;

use vm_memory::{ByteValued, Le32};

use super::{join, split, VIRTIO_FS_SHMCAP_ID_CACHE};

/// PCI capability id of a vendor-specific capability (`PCI_CAP_ID_VNDR`); every virtio-pci
/// capability uses it.
pub const PCI_CAP_ID_VNDR: u8 = 0x09;

/// virtio-pci capability type of a shared memory region.
pub const VIRTIO_PCI_CAP_SHARED_MEMORY_CFG: u8 = 8;

/// Smallest BAR that [`ShmBar::for_window`] accepts: one page.
pub const MIN_SHM_BAR_SIZE: u64 = 4096;

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
/// - A power of two, as every PCI BAR; PCI also aligns a BAR to its size, which exceeds the 2 MiB
///   the guest needs ([`WINDOW_ALIGNMENT`](super::WINDOW_ALIGNMENT)) for any window of at least 2
///   MiB.
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

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;

    const GIB: u64 = 1 << 30;

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
}
