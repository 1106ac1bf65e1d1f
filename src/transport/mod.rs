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
//! let cap = shm_pci_cap(bar.index(), 0, bar.size());
//! assert_eq!(cap.as_slice().len(), 24);
//! # Ok(())
//! # }
//! ```

mod config;
mod mmio;
mod pci;

pub use config::{
    read_config, ConfigError, VirtioFsConfig, VIRTIO_FS_F_NOTIFICATION, VIRTIO_FS_TAG_LEN,
};
pub use mmio::{
    MmioShmRegs, ShmRegion, SHM_BASE_HIGH, SHM_BASE_LOW, SHM_LEN_HIGH, SHM_LEN_LOW, SHM_NO_REGION,
    SHM_SEL,
};
pub use pci::{
    shm_pci_cap, BarError, ShmBar, VirtioPciCap64, MIN_SHM_BAR_SIZE, PCI_CAP_ID_VNDR,
    VIRTIO_PCI_CAP_SHARED_MEMORY_CFG,
};

#[cfg(feature = "vm-device")]
use vm_device::resources::ResourceConstraint;

/// virtio device id of a file system device.
pub const VIRTIO_ID_FS: u32 = 26;

/// Shared memory region id of the virtio-fs DAX window ("cache").
pub const VIRTIO_FS_SHMCAP_ID_CACHE: u8 = 0;

/// Alignment of the window in guest physical memory: 2 MiB.
///
/// The Linux guest (`virtio_fs_setup_dax`) creates struct pages for the window and maps it in
/// 2 MiB ranges, so it needs the window 2 MiB aligned.
pub const WINDOW_ALIGNMENT: u64 = 2 << 20;

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
    use super::*;

    // ---- resource constraint ----

    #[cfg(feature = "vm-device")]
    #[test]
    fn resource_constraint_values() {
        const GIB: u64 = 1 << 30;
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
