// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The address-space reservation behind a DAX window: the only place that calls `mmap`,
//! `munmap` and `msync`.
//!
//! Every method re-checks that its range lies inside the reservation before the syscall, so no
//! caller can make `MAP_FIXED` land outside it, whatever the caller validated or forgot to.
//!
//! # At the process's map limit
//!
//! At `vm.max_map_count` the kernel refuses every `mmap`, the `MAP_FIXED` re-map that puts the
//! reservation back included, while a `munmap` of a whole mapping (no split) still succeeds.
//! Unmapping window ranges with `munmap` would leave a hole that another thread's
//! `mmap(NULL, ..)` could take, so the reservation keeps a [`Ballast`] instead: a few one-page
//! mappings outside the window, each its own VMA. When putting the reservation back fails with
//! `ENOMEM`, one ballast page is unmapped (that always works) and the re-map is tried again: the
//! slot it frees is enough, since the re-map only merges or replaces VMAs of the window. A hole
//! left where a ballast page was is harmless: the guest cannot reach it.

use std::any::Any;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::null_mut;
use std::sync::Arc;

use vm_memory::bitmap::Bitmap;
use vm_memory::MmapRegion;

use crate::protocol::Access;

/// Alignment of the window's host address: guest huge pages need host and guest addresses to be
/// congruent modulo 2 MiB.
pub(crate) const HOST_ALIGN: usize = 2 << 20;

/// A `PROT_NONE` anonymous reservation. Sub-ranges are replaced with file mappings and put back to
/// `PROT_NONE`, never unmapped, so the range never has a hole that an unrelated `mmap` could fill.
#[derive(Debug)]
pub(crate) struct Reservation {
    addr: usize,
    size: usize,
    /// The VMM's region, when the VMM reserved the range ([`Reservation::adopt`]): it keeps the
    /// range mapped, and unmaps it when its last reference goes.
    owner: Option<HandedIn>,
}

/// Why a region the VMM reserved cannot become a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegionRefusal {
    /// Its size differs from the window size asked for.
    SizeDiffers {
        /// The window size asked for.
        expected: u64,
    },
    /// Its host address is not page aligned.
    Misaligned,
    /// It maps a file: the window must be anonymous memory nobody else writes through.
    FileBacked,
    /// It is accessible (`prot` is not `PROT_NONE`): someone may hold slices into it, which the
    /// window's `MAP_FIXED` would pull away.
    Accessible {
        /// The region's protection.
        prot: i32,
    },
}

/// Why [`Reservation::adopt`] failed.
#[derive(Debug)]
pub(crate) enum AdoptError {
    /// The region is not fit to be a window.
    Refused(RegionRefusal),
    /// Re-making it `PROT_NONE` failed.
    Map(io::Error),
}

/// A region the VMM reserved, type-erased: its address, size, protection and whether a file backs
/// it, and the region itself, kept alive so the range stays mapped.
pub(crate) struct HandedIn {
    addr: usize,
    size: usize,
    prot: i32,
    file_backed: bool,
    /// Held, never read: it keeps the range mapped.
    _region: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for HandedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandedIn")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("size", &self.size)
            .field("prot", &self.prot)
            .field("file_backed", &self.file_backed)
            .finish_non_exhaustive()
    }
}

impl HandedIn {
    /// Takes `region` (an `MmapRegion` of any bitmap type) with what the checks need to know.
    pub fn new<B: Bitmap + Send + Sync + 'static>(region: Arc<MmapRegion<B>>) -> Self {
        HandedIn {
            addr: region.as_ptr() as usize,
            size: region.size(),
            prot: region.prot(),
            file_backed: region.file_offset().is_some(),
            _region: Box::new(region),
        }
    }

    /// Host address of the region.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Size of the region.
    pub fn size(&self) -> usize {
        self.size
    }
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Reservation {
    /// Reserves `size` bytes (non-zero, a multiple of the page size) aligned to [`HOST_ALIGN`].
    pub fn new(size: usize) -> io::Result<Self> {
        let total = size
            .checked_add(HOST_ALIGN)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh mapping at an address the kernel chooses (no MAP_FIXED): nothing that
        // exists is replaced. The result is checked against MAP_FAILED below.
        let raw = unsafe {
            libc::mmap(
                null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let start = raw as usize;
        let addr = start.next_multiple_of(HOST_ALIGN);
        let head = addr - start;
        let tail = total - head - size;
        // SAFETY: [start, start + head) and [addr + size, start + total) are the parts of the
        // mapping made just above that lie outside the aligned window; nobody else knows of them.
        unsafe {
            if head > 0 {
                check(libc::munmap(start as *mut libc::c_void, head))?;
            }
            if tail > 0 {
                check(libc::munmap((addr + size) as *mut libc::c_void, tail))?;
            }
        }
        Ok(Reservation {
            addr,
            size,
            owner: None,
        })
    }

    /// Makes the region the VMM reserved the reservation: checks that it is `size` bytes (non-zero,
    /// a multiple of the page size), page aligned, anonymous and `PROT_NONE`, then maps a fresh
    /// `PROT_NONE`, `MAP_NORESERVE` anonymous mapping over all of it at once, so that whatever
    /// flags it was made with, the range is from now on exactly what [`Reservation::new`] makes.
    /// The region is kept until the reservation is dropped.
    pub fn adopt(region: HandedIn, size: usize) -> std::result::Result<Self, AdoptError> {
        let refuse = |r: RegionRefusal| Err(AdoptError::Refused(r));
        if region.size != size {
            return refuse(RegionRefusal::SizeDiffers {
                expected: size as u64,
            });
        }
        if !region.addr.is_multiple_of(page_size()) {
            return refuse(RegionRefusal::Misaligned);
        }
        if region.file_backed {
            return refuse(RegionRefusal::FileBacked);
        }
        if region.prot != libc::PROT_NONE {
            return refuse(RegionRefusal::Accessible { prot: region.prot });
        }
        // SAFETY: [addr, addr + size) is the whole mapping of `region` (an `MmapRegion`, whose
        // address and size describe a live mapping for as long as it lives; `region` is stored in
        // the reservation below, so it outlives every use of the range). It was just checked to
        // be anonymous and PROT_NONE, so no slice of it can be read or written by anyone holding
        // the region too: replacing its pages with fresh PROT_NONE pages invalidates nothing.
        let ret = unsafe {
            libc::mmap(
                region.addr as *mut libc::c_void,
                size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if ret == libc::MAP_FAILED {
            return Err(AdoptError::Map(io::Error::last_os_error()));
        }
        Ok(Reservation {
            addr: region.addr,
            size,
            owner: Some(region),
        })
    }

    /// Whether the VMM reserved the range ([`Reservation::adopt`]).
    pub fn handed_in(&self) -> bool {
        self.owner.is_some()
    }

    /// Host address of the first byte.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Returns `addr + offset` when `[offset, offset + len)` lies inside the reservation.
    fn inside(&self, offset: usize, len: usize) -> io::Result<*mut libc::c_void> {
        match offset.checked_add(len) {
            Some(end) if len > 0 && end <= self.size => Ok((self.addr + offset) as *mut _),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    /// Maps `len` bytes of `fd` at `fd_offset` over `[offset, offset + len)`, shared. On error
    /// the range may hold anything it held before, or nothing (a failed `MAP_FIXED` may already
    /// have dropped the old pages): the caller puts the reservation back with [`Self::clear`].
    pub fn map_fd(
        &self,
        offset: usize,
        len: usize,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        access: Access,
    ) -> io::Result<()> {
        let at = self.inside(offset, len)?;
        let prot = match access {
            Access::ReadOnly => libc::PROT_READ,
            Access::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        };
        let Ok(fd_offset) = libc::off_t::try_from(fd_offset) else {
            return Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
        };
        // SAFETY: `inside` just checked that [at, at + len) lies within this reservation, which
        // this struct owns; MAP_FIXED replaces only pages of it. No Rust reference points into the
        // reservation, so replacing its pages invalidates nothing.
        let ret = unsafe {
            libc::mmap(
                at,
                len,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                fd_offset,
            )
        };
        if ret == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Puts `[offset, offset + len)` back to the `PROT_NONE` reservation. At the process's map
    /// limit (`ENOMEM`) it frees a slot by unmapping one page of `ballast` and tries again, as long
    /// as there is ballast left.
    pub fn clear(&self, offset: usize, len: usize, ballast: &mut Ballast) -> io::Result<()> {
        let at = self.inside(offset, len)?;
        loop {
            // SAFETY: `inside` just checked that [at, at + len) lies within this reservation;
            // MAP_FIXED replaces only pages of it with fresh PROT_NONE anonymous memory.
            let ret = unsafe {
                libc::mmap(
                    at,
                    len,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if ret != libc::MAP_FAILED {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOMEM) || !ballast.release_one() {
                return Err(err);
            }
        }
    }
}

/// `msync(MS_SYNC)` of `[addr, addr + len)`, a range of a live reservation. Needs no lock: it
/// changes no mapping, and whatever the range holds (the reservation, a file mapping of this or
/// a later generation) syncing it is harmless.
pub(super) fn sync(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: the caller names a range inside a reservation that outlives the call (the window
    // checked it against its size and holds the reservation); msync reads no memory into Rust
    // and changes no mapping.
    check(unsafe { libc::msync(addr as *mut libc::c_void, len, libc::MS_SYNC) })
}

/// Pages kept outside the window to free map slots at the process's map limit (see the module
/// documentation). Each page is a `MAP_SHARED | MAP_ANONYMOUS` mapping of its own: shared
/// anonymous mappings never merge with their neighbours, so each is one VMA, and unmapping it
/// whole never needs a split.
#[derive(Debug, Default)]
pub(crate) struct Ballast {
    pages: Vec<usize>,
}

/// Ballast pages a window keeps. One freed slot is enough for any re-map of the window's own
/// ranges; the rest cover other threads taking freed slots first.
pub(crate) const BALLAST_PAGES: usize = 4;

impl Ballast {
    /// Maps pages until there are [`BALLAST_PAGES`]; a refusal (at the limit) is no error, the
    /// next call tries again.
    pub fn refill(&mut self) {
        while self.pages.len() < BALLAST_PAGES {
            // SAFETY: a fresh one-page mapping at an address the kernel chooses (no MAP_FIXED):
            // nothing that exists is replaced. The result is checked against MAP_FAILED.
            let raw = unsafe {
                libc::mmap(
                    null_mut(),
                    page_size(),
                    libc::PROT_NONE,
                    libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if raw == libc::MAP_FAILED {
                return;
            }
            self.pages.push(raw as usize);
        }
    }

    /// Whether every ballast page is there.
    pub fn is_full(&self) -> bool {
        self.pages.len() >= BALLAST_PAGES
    }

    /// Unmaps one page, freeing a map slot; false when none is left.
    pub fn release_one(&mut self) -> bool {
        let Some(addr) = self.pages.pop() else {
            return false;
        };
        // SAFETY: `addr` is a page mapped by `refill` and owned by this ballast alone; it is
        // popped, so it is unmapped exactly once. Nothing refers into it.
        unsafe { libc::munmap(addr as *mut libc::c_void, page_size()) };
        true
    }

    /// Pages held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pages.len()
    }
}

impl Drop for Ballast {
    fn drop(&mut self) {
        while self.release_one() {}
    }
}

/// The host's page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(v).unwrap_or(4096)
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.owner.is_some() {
            // The VMM's region outlives the window, maybe: put PROT_NONE back over the whole range
            // so no file page stays behind in it, then let the region go (it unmaps the range
            // with its last reference). At the process's map limit the re-map may fail; the
            // file pages then stay until the VMM drops the region.
            if let Err(e) = self.clear(0, self.size, &mut Ballast::default()) {
                log::warn!(
                    "dax window: clearing the VMM's region at {:#x}: {e}",
                    self.addr
                );
            }
            return;
        }
        // SAFETY: the reservation was mapped by `new` and is unmapped exactly once, here. The VMM
        // has removed the memory slot before dropping the window (documented on DaxWindow).
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.size) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn aligned_and_bounds_checked() {
        let r = Reservation::new(4 << 20).unwrap();
        assert_eq!(r.addr() % HOST_ALIGN, 0);
        let mut b = Ballast::default();
        assert_eq!(
            r.clear(0, 4 << 20, &mut b).map_err(|e| e.raw_os_error()),
            Ok(())
        );
        let err = |res: io::Result<()>| res.unwrap_err().raw_os_error();
        assert_eq!(err(r.clear(4 << 20, 4096, &mut b)), Some(libc::EINVAL));
        assert_eq!(
            err(r.clear(usize::MAX - 4095, 4096, &mut b)),
            Some(libc::EINVAL)
        );
        assert!(sync(r.addr(), 4096).is_ok());
    }

    #[test]
    fn failed_map_leaves_the_reservation() {
        let r = Reservation::new(2 << 20).unwrap();
        let file = tempfile::tempfile().unwrap();
        file.set_len(4096).unwrap();
        r.map_fd(0, 4096, file.as_fd(), 0, Access::ReadOnly)
            .unwrap();
        // SAFETY: page 0 of the reservation was just mapped readable.
        assert_eq!(unsafe { (r.addr() as *const u8).read_volatile() }, 0);
        // An offset off_t cannot hold: refused before any syscall; clearing puts the reservation
        // back over the old mapping.
        let err = r.map_fd(0, 4096, file.as_fd(), 1 << 63, Access::ReadOnly);
        assert_eq!(err.unwrap_err().raw_os_error(), Some(libc::EOVERFLOW));
        r.clear(0, 4096, &mut Ballast::default()).unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let line = maps
            .lines()
            .find(|l| l.starts_with(&format!("{:x}-", r.addr())))
            .unwrap();
        assert!(line.contains("---p"), "{line}");
    }

    #[test]
    fn ballast_pages_are_separate_mappings() {
        let mut b = Ballast::default();
        b.refill();
        assert_eq!(b.len(), BALLAST_PAGES);
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for &p in &b.pages {
            let line = maps
                .lines()
                .find(|l| l.starts_with(&format!("{p:x}-")))
                .unwrap_or_else(|| panic!("ballast page {p:x} is not a mapping of its own"));
            assert!(line.contains("---s"), "{line}");
        }
        assert!(b.release_one());
        assert_eq!(b.len(), BALLAST_PAGES - 1);
        drop(b);
    }
}
