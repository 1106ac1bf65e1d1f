// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The floor's mappings: the same syscalls as the window's, without the crate.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::null_mut;

use virtio_fs_dax::window::DaxWindow;

use crate::M2;

/// A `PROT_NONE` reserved range that the floors map into and clear with raw syscalls.
#[derive(Clone, Copy)]
pub struct RawRange {
    base: usize,
    size: usize,
}

impl RawRange {
    /// The reservation behind `w`, so that a floor sees exactly the VMAs the crate sees. The
    /// floors only use ranges the window has not mapped and put them back to `PROT_NONE` right
    /// away (or, for the reset floor, let `unmap_all` set the table straight before the window is
    /// used again).
    pub fn of_window(w: &DaxWindow) -> Self {
        RawRange {
            base: w.host_addr() as usize,
            size: w.size() as usize,
        }
    }

    pub fn at(&self, offset: u64, len: u64) -> *mut libc::c_void {
        assert!(offset + len <= self.size as u64);
        (self.base + offset as usize) as *mut libc::c_void
    }

    pub fn size(&self) -> u64 {
        self.size as u64
    }

    /// `mmap MAP_SHARED | MAP_FIXED` of `fd` over `[offset, offset + len)`, read-only.
    pub fn map(&self, offset: u64, len: u64, fd: RawFd, fd_offset: u64) {
        self.remap(offset, len, libc::PROT_READ, Some((fd, fd_offset)))
            .unwrap();
    }

    /// Puts `[offset, offset + len)` back to the `PROT_NONE` reservation.
    pub fn clear(&self, offset: u64, len: u64) {
        self.remap(offset, len, libc::PROT_NONE, None).unwrap();
    }

    /// One `mmap MAP_FIXED` over `[offset, offset + len)` (which must lie inside the reservation):
    /// `MAP_SHARED` of `(fd, fd_offset)` with `prot`, or with `None` fresh anonymous
    /// `MAP_NORESERVE` pages (the reservation again, with `PROT_NONE`).
    pub fn remap(
        &self,
        offset: u64,
        len: u64,
        prot: libc::c_int,
        file: Option<(RawFd, u64)>,
    ) -> io::Result<()> {
        let at = self.at(offset, len);
        let (flags, fd, fd_offset) = match file {
            Some((fd, fd_offset)) => (libc::MAP_SHARED, fd, fd_offset as libc::off_t),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            ),
        };
        // SAFETY: `at` checked the range lies inside the reservation, which outlives this call
        // (its owner is borrowed by the caller); MAP_FIXED replaces only its pages, and no Rust
        // reference points into them.
        let ret = unsafe {
            libc::mmap(
                at,
                len as usize,
                prot,
                flags | libc::MAP_FIXED,
                fd,
                fd_offset,
            )
        };
        if ret == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Maps `ranges` 2 MiB ranges of `file` from the start, file offset 0 each (no two
    /// neighbouring VMAs can merge): the raw twin of [`crate::map::fill_window`].
    pub fn fill(&self, file: &File, ranges: u64) {
        for i in 0..ranges {
            self.map(i * M2, M2, file.as_raw_fd(), 0);
        }
    }
}

/// A raw reservation, 2 MiB aligned and trimmed like a window's, unmapped on drop.
pub struct RawReservation {
    pub range: RawRange,
}

impl RawReservation {
    pub fn new(size: u64) -> Self {
        let size = size as usize;
        let align = M2 as usize;
        let total = size + align;
        // SAFETY: a fresh mapping at an address the kernel picks (no MAP_FIXED): nothing that
        // exists is replaced.
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
        assert_ne!(raw, libc::MAP_FAILED);
        let start = raw as usize;
        let base = start.next_multiple_of(align);
        let (head, tail) = (base - start, total - (base - start) - size);
        // SAFETY: the head and tail are the parts of the mapping just made that lie outside the
        // aligned range; nobody else knows of them.
        unsafe {
            if head > 0 {
                assert_eq!(libc::munmap(start as *mut libc::c_void, head), 0);
            }
            if tail > 0 {
                assert_eq!(libc::munmap((base + size) as *mut libc::c_void, tail), 0);
            }
        }
        RawReservation {
            range: RawRange { base, size },
        }
    }
}

impl Drop for RawReservation {
    fn drop(&mut self) {
        let RawRange { base, size } = self.range;
        // SAFETY: the reservation was mapped by `new` and is unmapped exactly once, here.
        unsafe { libc::munmap(base as *mut libc::c_void, size) };
    }
}

/// A page-aligned anonymous buffer, every page faulted in: the floor's stand-in for guest RAM
/// (which vm-memory maps the same way). A heap `Vec` would start 16 bytes into a page, and a
/// misaligned destination makes the kernel's copy 5-8% slower on the development machine.
pub struct AnonBuf {
    addr: usize,
    len: usize,
}

impl AnonBuf {
    pub fn new(len: u64) -> Self {
        let len = len as usize;
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let mut buf = AnonBuf {
            addr: p as usize,
            len,
        };
        buf.as_mut().fill(1);
        buf
    }

    pub fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `addr..addr + len` is a live read-write mapping this struct owns until drop;
        // the exclusive borrow of `self` makes this the only reference into it.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
    }
}

impl Drop for AnonBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new` and is unmapped exactly once, here.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// `pread` of `len` bytes at `offset` into `buf`, looping over short counts.
pub fn pread_all(fd: RawFd, buf: &mut [u8], offset: u64) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is an exclusive borrow of `rest.len()` bytes the kernel may write.
        let n = unsafe {
            libc::pread64(
                fd,
                rest.as_mut_ptr().cast(),
                rest.len(),
                (offset + done as u64) as i64,
            )
        };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
    done
}
