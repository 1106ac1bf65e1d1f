// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! IO for what a backend cannot map or see: legacy FS_IO and the proposed MEM_READ / MEM_WRITE.
//!
//! A vhost-user backend sees guest RAM (through the memory table) but not DAX windows. When a
//! guest passes a buffer that lies in a DAX window (its own device's or another device's) to
//! FUSE_READ or FUSE_WRITE, the backend asks the frontend to do the copy at a guest physical
//! address. [`IoSpace`] resolves such an address over guest RAM (a vm-memory address space the
//! VMM hands in) and over every registered [`DaxWindow`], checks the whole length, and lets the
//! kernel do the copy (`pread64`, `pwrite64`, `process_vm_readv`, `process_vm_writev`): a fault
//! (a page of the reservation, a truncated file) comes back as `EFAULT` instead of a signal.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, RwLock};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemory, Permissions, VolatileSlice};

use crate::window::DaxWindow;

/// Errors of the IO path. [`Error::errno`] gives the errno a peer is told.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The range is not (entirely) guest RAM or a mapped range of a registered window with the
    /// access needed.
    #[error("guest address {gpa:#x} length {len:#x} is not accessible guest memory")]
    BadAddress {
        /// Guest physical address.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// A window registration overlaps another one.
    #[error("window at guest address {gpa:#x} size {size:#x} overlaps a registered window")]
    WindowOverlap {
        /// Guest physical address.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// The copy syscall failed.
    #[error("transfer at guest address {gpa:#x} failed")]
    Transfer {
        /// Guest physical address.
        gpa: u64,
        /// The syscall error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The errno that stands for this error on the wire.
    pub fn errno(&self) -> i32 {
        match self {
            Error::BadAddress { .. } => libc::EFAULT,
            Error::WindowOverlap { .. } => libc::EEXIST,
            Error::Transfer { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// Result of IO operations.
pub type Result<T> = std::result::Result<T, Error>;

/// What a transfer does with a host memory segment.
///
/// Not part of the stable API: the backend channel builds these from FS_IO and MEM_READ /
/// MEM_WRITE requests; it is public only for the benchmarks.
#[doc(hidden)]
pub enum Transfer<'a> {
    /// Read the file at this offset into memory (FS_IO without MAP_W).
    ReadFile(&'a File, u64),
    /// Write memory to the file at this offset (FS_IO with MAP_W).
    WriteFile(&'a File, u64),
    /// Copy memory into this buffer (MEM_READ).
    ToBuffer(&'a mut [u8]),
    /// Copy this buffer into memory (MEM_WRITE).
    FromBuffer(&'a [u8]),
    /// Move nothing: only check that the range is accessible as a transfer that stores into
    /// memory (or not) would need.
    Check {
        /// Whether the real transfer stores into guest memory.
        writes_memory: bool,
    },
}

impl std::fmt::Debug for Transfer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transfer::ReadFile(_, o) => write!(f, "ReadFile(@{o:#x})"),
            Transfer::WriteFile(_, o) => write!(f, "WriteFile(@{o:#x})"),
            Transfer::ToBuffer(b) => write!(f, "ToBuffer({})", b.len()),
            Transfer::FromBuffer(b) => write!(f, "FromBuffer({})", b.len()),
            Transfer::Check { writes_memory } => write!(f, "Check({writes_memory})"),
        }
    }
}

fn file_offset(base: u64, done: usize) -> io::Result<i64> {
    base.checked_add(done as u64)
        .and_then(|o| i64::try_from(o).ok())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

impl Transfer<'_> {
    /// True when the transfer stores into guest memory.
    fn writes_memory(&self) -> bool {
        match self {
            Transfer::ReadFile(..) | Transfer::FromBuffer(_) => true,
            Transfer::WriteFile(..) | Transfer::ToBuffer(_) => false,
            Transfer::Check { writes_memory } => *writes_memory,
        }
    }

    /// Moves up to `len` bytes at host address `addr`, `done` bytes into the transfer. Returns the
    /// bytes moved; 0 means end of file.
    fn step(&mut self, addr: usize, len: usize, done: usize) -> io::Result<usize> {
        let ptr = addr as *mut libc::c_void;
        let ret = match self {
            Transfer::Check { .. } => return Ok(len),
            Transfer::ReadFile(file, off) => {
                let at = file_offset(*off, done)?;
                // SAFETY: `addr..addr + len` lies inside a live mapping the caller holds (a window
                // range under the window's lock, or a guest RAM slice under the guest memory
                // guard). The kernel does the access: a fault yields EFAULT, not a signal, and no
                // Rust reference to that memory exists.
                unsafe { libc::pread64(file.as_raw_fd(), ptr, len, at) }
            }
            Transfer::WriteFile(file, off) => {
                let at = file_offset(*off, done)?;
                // SAFETY: as for pread64 above; the kernel only reads the range.
                unsafe { libc::pwrite64(file.as_raw_fd(), ptr, len, at) }
            }
            Transfer::ToBuffer(buf) => {
                let local = buf
                    .get_mut(done..done + len)
                    .ok_or(io::ErrorKind::InvalidInput)?;
                let l = libc::iovec {
                    iov_base: local.as_mut_ptr().cast(),
                    iov_len: len,
                };
                let r = libc::iovec {
                    iov_base: ptr,
                    iov_len: len,
                };
                // SAFETY: `local` is a live exclusive borrow of `len` bytes; the remote range is
                // as above. Our own pid is always allowed.
                unsafe { libc::process_vm_readv(libc::getpid(), &l, 1, &r, 1, 0) }
            }
            Transfer::FromBuffer(buf) => {
                let local = buf
                    .get(done..done + len)
                    .ok_or(io::ErrorKind::InvalidInput)?;
                let l = libc::iovec {
                    iov_base: local.as_ptr() as *mut _,
                    iov_len: len,
                };
                let r = libc::iovec {
                    iov_base: ptr,
                    iov_len: len,
                };
                // SAFETY: `local` is a live borrow of `len` bytes the kernel only reads; the remote
                // range is as above.
                unsafe { libc::process_vm_writev(libc::getpid(), &l, 1, &r, 1, 0) }
            }
        };
        usize::try_from(ret).map_err(|_| io::Error::last_os_error())
    }

    /// Moves `len` bytes at `addr`, looping over short counts; stops early only at end of file.
    fn run(&mut self, addr: usize, len: usize, done: &mut usize) -> io::Result<bool> {
        let mut at = 0;
        while at < len {
            match self.step(addr + at, len - at, *done) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    at += n;
                    *done += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Guest RAM as the IO path sees it: what [`IoSpace::with_guest_memory`] takes. Implemented for
/// every vm-memory [`GuestAddressSpace`] (`GuestMemoryAtomic<GuestMemoryMmap>`,
/// `Arc<GuestMemoryMmap>`, ...).
///
/// The trait is sealed: the IO path relies on vm-memory's checks of a range and its slices, so
/// nothing else implements it.
pub trait GuestRam: sealed::GuestRamTransfer + Send + Sync {}

impl<S> GuestRam for S
where
    S: GuestAddressSpace + Send + Sync,
    S::M: GuestMemory,
{
}

mod sealed {
    use super::{Result, Transfer};

    /// The private half of [`GuestRam`](super::GuestRam).
    pub trait GuestRamTransfer {
        /// Runs `transfer` over `[gpa, gpa + len)` if it is all guest RAM; returns the bytes
        /// moved.
        fn transfer(&self, gpa: u64, len: u64, transfer: &mut Transfer<'_>) -> Result<u64>;
    }
}

fn slices_transfer<B: BitmapSlice>(
    slices: Vec<VolatileSlice<'_, B>>,
    gpa: u64,
    transfer: &mut Transfer<'_>,
) -> Result<u64> {
    let mut done = 0;
    for s in &slices {
        let addr = s.ptr_guard_mut().as_ptr() as usize;
        let before = done;
        let full = transfer
            .run(addr, s.len(), &mut done)
            .map_err(|source| Error::Transfer { gpa, source })?;
        if transfer.writes_memory() && !matches!(transfer, Transfer::Check { .. }) {
            s.bitmap().mark_dirty(0, done - before);
        }
        if !full {
            break;
        }
    }
    Ok(done as u64)
}

impl<S> sealed::GuestRamTransfer for S
where
    S: GuestAddressSpace + Send + Sync,
    S::M: GuestMemory,
{
    fn transfer(&self, gpa: u64, len: u64, transfer: &mut Transfer<'_>) -> Result<u64> {
        let bad = || Error::BadAddress { gpa, len };
        let count = usize::try_from(len).map_err(|_| bad())?;
        let mem = self.memory();
        let access = if transfer.writes_memory() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(GuestAddress(gpa), count, access) {
            return Err(bad());
        }
        let slices = mem
            .get_slices(GuestAddress(gpa), count, access)
            .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|_| bad())?;
        slices_transfer(slices, gpa, transfer)
    }
}

#[derive(Debug)]
struct WindowSlot {
    gpa: u64,
    window: Arc<DaxWindow>,
}

/// The guest physical address space the IO path serves: guest RAM plus every registered DAX
/// window. One `IoSpace` is shared (as `Arc`) by all the virtio-fs devices of a VM, so that IO
/// into another device's window works.
#[derive(Default)]
pub struct IoSpace {
    ram: Option<Box<dyn GuestRam>>,
    windows: RwLock<Vec<WindowSlot>>,
}

impl std::fmt::Debug for IoSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoSpace")
            .field("ram", &self.ram.is_some())
            .field("windows", &self.windows)
            .finish()
    }
}

impl IoSpace {
    /// An address space with no guest RAM and no window: every IO is refused with `EFAULT`.
    pub fn new() -> Self {
        Self::default()
    }

    /// An address space over `ram`, typically a `GuestMemoryAtomic<GuestMemoryMmap>` (which
    /// follows memory hotplug by itself).
    pub fn with_guest_memory(ram: impl GuestRam + 'static) -> Self {
        IoSpace {
            ram: Some(Box::new(ram)),
            windows: RwLock::new(Vec::new()),
        }
    }

    /// Registers `window` at guest physical address `gpa`. Call again after a BAR move (remove,
    /// then add at the new address).
    pub fn add_window(&self, gpa: u64, window: Arc<DaxWindow>) -> Result<()> {
        let size = window.size();
        let overlap = Error::WindowOverlap { gpa, size };
        let end = gpa
            .checked_add(size)
            .ok_or(Error::WindowOverlap { gpa, size })?;
        let mut windows = self.windows.write().unwrap_or_else(|p| p.into_inner());
        if windows
            .iter()
            .any(|s| s.gpa < end && gpa < s.gpa + s.window.size())
        {
            return Err(overlap);
        }
        windows.push(WindowSlot { gpa, window });
        Ok(())
    }

    /// Forgets the window registered at `gpa`; returns it if there was one.
    pub fn remove_window(&self, gpa: u64) -> Option<Arc<DaxWindow>> {
        let mut windows = self.windows.write().unwrap_or_else(|p| p.into_inner());
        let i = windows.iter().position(|s| s.gpa == gpa)?;
        Some(windows.swap_remove(i).window)
    }

    /// Runs `transfer` over `[gpa, gpa + len)`. The range must lie entirely in guest RAM or
    /// entirely in live mappings of one registered window (writable ones when the transfer
    /// stores into memory). Returns the bytes moved: less than `len` only at end of file.
    ///
    /// Not part of the stable API (the backend channel's, public for the benchmarks).
    #[doc(hidden)]
    pub fn transfer(&self, gpa: u64, len: u64, mut transfer: Transfer<'_>) -> Result<u64> {
        let bad = Error::BadAddress { gpa, len };
        let end = gpa.checked_add(len).ok_or(Error::BadAddress { gpa, len })?;
        let windows = self.windows.read().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = windows
            .iter()
            .find(|s| gpa >= s.gpa && end <= s.gpa + s.window.size())
        {
            let write = transfer.writes_memory();
            let count = usize::try_from(len).map_err(|_| Error::BadAddress { gpa, len })?;
            return slot
                .window
                .with_mapped(gpa - slot.gpa, len, write, |addr| {
                    let mut done = 0;
                    transfer
                        .run(addr, count, &mut done)
                        .map(|_| done as u64)
                        .map_err(|source| Error::Transfer { gpa, source })
                })
                .unwrap_or(Err(bad));
        }
        match &self.ram {
            Some(ram) => ram.transfer(gpa, len, &mut transfer),
            None => Err(bad),
        }
    }
}
