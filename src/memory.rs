// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The trait through which the device asks the VMM to make the DAX window guest memory.
//!
//! The VMM implements [`MemoryManager`] over its own memory manager: `register_window` adds one
//! KVM memory slot covering `[gpa, gpa + size)` backed by host memory at `host_addr` (the
//! window's `PROT_NONE` reservation, which file mappings later replace page by page);
//! `unregister_window` removes that slot.
//!
//! The device calls it:
//! - once when the window gets a guest address (the VMM allocated the BAR or MMIO range,
//!   (`Fs::set_shm_base`));
//! - on a BAR move: `unregister_window` at the old address, then `register_window` at the new one;
//! - when the device is dropped: `unregister_window`, **before** the window is unmapped.
//!
//! Drop order contract: the memory slot must be gone before the reservation is unmapped,
//! otherwise KVM keeps a slot over host addresses that may be reused. The device guarantees it
//! for its own drop; a VMM that takes the window out of the device must do the same.
//!
//! Keep the window out of the vhost-user memory table of any backend and out of VFIO/IOMMU DMA
//! maps: it is not DMA-able memory and its pages change under the guest's feet.

use std::io;

/// The window as the VMM maps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WindowRegion {
    /// Guest physical address (2 MiB aligned).
    pub gpa: u64,
    /// Host virtual address of the window's reservation.
    pub host_addr: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
}

/// What the VMM implements to (un)register the DAX window as guest memory.
pub trait MemoryManager: Send + Sync {
    /// Adds a memory slot over `region`.
    fn register_window(&self, region: &WindowRegion) -> io::Result<()>;
    /// Removes the memory slot over `region` (exactly as registered).
    fn unregister_window(&self, region: &WindowRegion) -> io::Result<()>;
}

#[cfg(any(test, feature = "test-utils"))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-utils")))]
pub use fake::FakeMemoryManager;

#[cfg(any(test, feature = "test-utils"))]
mod fake {
    use std::io;
    use std::sync::Mutex;

    use super::{MemoryManager, WindowRegion};

    /// A memory manager that records its calls and checks them: no overlapping registrations,
    /// unregistration only of what was registered. `fail_next` makes the next call fail.
    #[cfg_attr(docsrs, doc(cfg(feature = "test-utils")))]
    #[derive(Debug, Default)]
    pub struct FakeMemoryManager {
        state: Mutex<State>,
    }

    #[derive(Debug, Default)]
    struct State {
        live: Vec<WindowRegion>,
        log: Vec<(bool, WindowRegion)>,
        fail_next: bool,
    }

    impl FakeMemoryManager {
        /// A fresh manager with nothing registered.
        pub fn new() -> Self {
            Self::default()
        }

        /// The regions registered now.
        pub fn live(&self) -> Vec<WindowRegion> {
            self.lock().live.clone()
        }

        /// Every call so far: `(true, region)` for register, `(false, region)` for unregister.
        pub fn log(&self) -> Vec<(bool, WindowRegion)> {
            self.lock().log.clone()
        }

        /// Makes the next call fail with `EIO`.
        pub fn fail_next(&self) {
            self.lock().fail_next = true;
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        }
    }

    impl MemoryManager for FakeMemoryManager {
        fn register_window(&self, region: &WindowRegion) -> io::Result<()> {
            let mut s = self.lock();
            if std::mem::take(&mut s.fail_next) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let end = region.gpa + region.size;
            if s.live
                .iter()
                .any(|r| r.gpa < end && region.gpa < r.gpa + r.size)
            {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            s.live.push(*region);
            s.log.push((true, *region));
            Ok(())
        }

        fn unregister_window(&self, region: &WindowRegion) -> io::Result<()> {
            let mut s = self.lock();
            if std::mem::take(&mut s.fail_next) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let i = s
                .live
                .iter()
                .position(|r| r == region)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
            s.live.swap_remove(i);
            s.log.push((false, *region));
            Ok(())
        }
    }
}
