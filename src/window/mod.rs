// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The DAX window: a `PROT_NONE` reservation that file ranges are mapped into and out of.
//!
//! A [`DaxWindow`] is created once per device. Its host address and size are what the VMM
//! registers as guest memory (one memory slot over the whole window). Mapping replaces pages of
//! the reservation with `MAP_SHARED | MAP_FIXED` file pages; unmapping puts the reservation back,
//! so the window never has a hole. Every range is checked (overflow, bounds, page alignment,
//! [`Policy`]) before any syscall.
//!
//! # Drop order
//!
//! The VMM must remove the memory slot that covers the window before it drops the last
//! reference to the `DaxWindow`: dropping unmaps the whole range.

mod ranges;
mod reservation;

use std::io;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};

pub use self::ranges::{
    check_range, Mapping, MappingTable, OverlapPolicy, Policy, RangeError, UnmapPolicy,
};
use self::reservation::Reservation;
use crate::metrics::FsMetrics;
use crate::protocol::{MapEntry, Range};

/// Smallest window: one 2 MiB range, the unit the Linux guest maps.
pub const MIN_WINDOW_SIZE: u64 = 2 << 20;

/// Errors of window operations. [`Error::errno`] gives the errno a peer is told.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The window size is not a power of two of at least 2 MiB.
    #[error("window size {size:#x} is not a power of two of at least {MIN_WINDOW_SIZE:#x}")]
    InvalidSize {
        /// Requested size.
        size: u64,
    },
    /// Reserving the address range failed.
    #[error("cannot reserve a window of {size:#x} bytes")]
    Reserve {
        /// Requested size.
        size: u64,
        /// The mmap error.
        #[source]
        source: io::Error,
    },
    /// A range is refused by the checks or by the policy.
    #[error("range offset {offset:#x} length {len:#x} (file offset {fd_offset:#x}) in a window of {size:#x}: {reason:?}")]
    Range {
        /// Offset in the window.
        offset: u64,
        /// Length.
        len: u64,
        /// File offset (0 where none).
        fd_offset: u64,
        /// Window size.
        size: u64,
        /// What is wrong.
        reason: RangeError,
    },
    /// `mmap` of the file failed.
    #[error("mmap of offset {offset:#x} length {len:#x} failed")]
    Map {
        /// Offset in the window.
        offset: u64,
        /// Length.
        len: u64,
        /// The mmap error.
        #[source]
        source: io::Error,
    },
    /// Putting the reservation back failed.
    #[error("restoring the reservation at offset {offset:#x} length {len:#x} failed")]
    Unmap {
        /// Offset in the window.
        offset: u64,
        /// Length.
        len: u64,
        /// The mmap error.
        #[source]
        source: io::Error,
    },
    /// `msync` failed.
    #[error("msync of offset {offset:#x} length {len:#x} failed")]
    Sync {
        /// Offset in the window.
        offset: u64,
        /// Length.
        len: u64,
        /// The msync error.
        #[source]
        source: io::Error,
    },
}

/// Result of window operations.
pub type Result<T> = std::result::Result<T, Error>;

fn os_errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Error {
    /// The errno that stands for this error on the wire.
    pub fn errno(&self) -> i32 {
        match self {
            Error::InvalidSize { .. } => libc::EINVAL,
            Error::Reserve { source, .. }
            | Error::Map { source, .. }
            | Error::Unmap { source, .. }
            | Error::Sync { source, .. } => os_errno(source),
            Error::Range { reason, .. } => match reason {
                RangeError::Overflow => libc::EOVERFLOW,
                RangeError::OutOfWindow => libc::ERANGE,
                RangeError::Misaligned | RangeError::Empty => libc::EINVAL,
                RangeError::Busy => libc::EBUSY,
                RangeError::NotMapped => libc::ENOENT,
            },
        }
    }
}

fn overlaps(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

#[derive(Debug)]
struct Inner {
    reservation: Reservation,
    table: MappingTable,
}

impl Inner {
    /// Puts a checked range back to the reservation. Checked ranges fit `usize`: they lie inside
    /// the window, whose size fits `usize` since the reservation exists.
    fn clear(&self, offset: u64, len: u64) -> Result<()> {
        self.reservation
            .clear(offset as usize, len as usize)
            .map_err(|source| Error::Unmap {
                offset,
                len,
                source,
            })
    }

    /// `msync` of a checked range.
    fn sync(&self, offset: u64, len: u64) -> Result<()> {
        self.reservation
            .sync(offset as usize, len as usize)
            .map_err(|source| Error::Sync {
                offset,
                len,
                source,
            })
    }
}

/// A DAX window. Share it as `Arc<DaxWindow>`: every method takes `&self` and serialises on an
/// internal lock, so a reset from the VMM thread and the backend channel's thread never race.
#[derive(Debug)]
pub struct DaxWindow {
    inner: Mutex<Inner>,
    host_addr: u64,
    size: u64,
    page_size: u64,
    metrics: Arc<FsMetrics>,
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).unwrap_or(4096)
}

impl DaxWindow {
    /// Reserves a window of `size` bytes (a power of two, at least [`MIN_WINDOW_SIZE`]), with
    /// fresh metrics. The reservation is `PROT_NONE`, `MAP_NORESERVE`: it costs no memory.
    pub fn new(size: u64) -> Result<Self> {
        Self::with_metrics(size, Arc::new(FsMetrics::new()))
    }

    /// As [`DaxWindow::new`], counting into `metrics`.
    pub fn with_metrics(size: u64, metrics: Arc<FsMetrics>) -> Result<Self> {
        if size < MIN_WINDOW_SIZE || !size.is_power_of_two() {
            return Err(Error::InvalidSize { size });
        }
        let bytes = usize::try_from(size).map_err(|_| Error::InvalidSize { size })?;
        let reservation =
            Reservation::new(bytes).map_err(|source| Error::Reserve { size, source })?;
        Ok(DaxWindow {
            host_addr: reservation.addr() as u64,
            inner: Mutex::new(Inner {
                reservation,
                table: MappingTable::new(),
            }),
            size,
            page_size: page_size(),
            metrics,
        })
    }

    /// Host virtual address of the window: what the VMM registers as guest memory.
    pub fn host_addr(&self) -> u64 {
        self.host_addr
    }

    /// Size of the window in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host page size, the alignment every range must have.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The counters this window updates.
    pub fn metrics(&self) -> &Arc<FsMetrics> {
        &self.metrics
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while the lock was held cannot leave the table inconsistent with the pages in
        // a way that matters for safety: every page is either the reservation or a file mapping.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn range_error(&self, offset: u64, len: u64, fd_offset: u64, reason: RangeError) -> Error {
        Error::Range {
            offset,
            len,
            fd_offset,
            size: self.size,
            reason,
        }
    }

    fn check(&self, offset: u64, len: u64, fd_offset: Option<u64>) -> Result<()> {
        check_range(offset, len, fd_offset, self.size, self.page_size)
            .map_err(|r| self.range_error(offset, len, fd_offset.unwrap_or(0), r))
    }

    fn update_gauges(&self, inner: &Inner) {
        self.metrics
            .set_gauges(inner.table.len(), inner.table.mapped_bytes());
    }

    /// Maps `entries` of `fd`, all or nothing: every entry is checked first (range, alignment,
    /// overlap under `policy`, entries against each other), then mapped in order. The checks cost
    /// O(log n) in the number of live mappings. If a
    /// mapping fails, the entries already mapped go back to the reservation and the error is
    /// returned. Ranges an entry replaced under [`OverlapPolicy::Replace`] are not restored on
    /// rollback (their file descriptors are not kept); they read as the reservation.
    pub fn map(&self, entries: &[MapEntry], fd: impl AsFd, policy: Policy) -> Result<()> {
        let mut inner = self.lock();
        for (i, e) in entries.iter().enumerate() {
            self.check(e.offset, e.len, Some(e.fd_offset))?;
            let busy = || self.range_error(e.offset, e.len, e.fd_offset, RangeError::Busy);
            if policy.overlap != OverlapPolicy::Replace {
                inner
                    .table
                    .check_map(e.offset, e.len, policy.overlap)
                    .map_err(|_| busy())?;
                // Entries of one request must not overlap each other either.
                if entries[..i]
                    .iter()
                    .any(|p| overlaps(p.offset, p.len, e.offset, e.len))
                {
                    return Err(busy());
                }
            }
        }
        let fd = fd.as_fd();
        for (done, e) in entries.iter().enumerate() {
            // Offsets and lengths fit usize: they were checked against the window size, which
            // fits usize since the reservation exists.
            let res = inner.reservation.map_fd(
                e.offset as usize,
                e.len as usize,
                fd,
                e.fd_offset,
                e.access,
            );
            if let Err(source) = res {
                for r in &entries[..done] {
                    if let Err(err) = inner.clear(r.offset, r.len) {
                        log::warn!(
                            "dax window: rollback of {:#x}+{:#x}: {err}",
                            r.offset,
                            r.len
                        );
                    }
                    inner.table.remove(r.offset, r.len);
                }
                // The failed entry's range is the reservation again (map_fd restores it).
                inner.table.remove(e.offset, e.len);
                self.update_gauges(&inner);
                return Err(Error::Map {
                    offset: e.offset,
                    len: e.len,
                    source,
                });
            }
            inner.table.insert(e.offset, e.len, e.access);
        }
        FsMetrics::add(&self.metrics.maps, entries.len() as u64);
        self.update_gauges(&inner);
        Ok(())
    }

    /// Unmaps `ranges`: each is checked (range, alignment, `policy`) before any is unmapped, then
    /// put back to the reservation.
    pub fn unmap(&self, ranges: &[Range], policy: Policy) -> Result<()> {
        let mut inner = self.lock();
        for (i, r) in ranges.iter().enumerate() {
            self.check(r.offset, r.len, None)?;
            let not_mapped = |reason| self.range_error(r.offset, r.len, 0, reason);
            inner
                .table
                .check_unmap(r.offset, r.len, policy.unmap)
                .map_err(not_mapped)?;
            // An exact unmap cannot name the same mapping twice in one request.
            if policy.unmap == UnmapPolicy::Exact
                && ranges[..i].iter().any(|p| p.offset == r.offset)
            {
                return Err(not_mapped(RangeError::NotMapped));
            }
        }
        let result = ranges.iter().try_for_each(|r| {
            inner.clear(r.offset, r.len)?;
            inner.table.remove(r.offset, r.len);
            FsMetrics::add(&self.metrics.unmaps, 1);
            Ok(())
        });
        self.update_gauges(&inner);
        result
    }

    /// Drops every mapping with one re-map of the reservation over the whole window. The window
    /// stays reserved (and registered with the VMM). Used for legacy unmap-all, device reset and
    /// backend disconnect.
    pub fn unmap_all(&self) -> Result<()> {
        let mut inner = self.lock();
        inner.clear(0, self.size)?;
        inner.table.clear();
        FsMetrics::add(&self.metrics.unmaps, 1);
        self.update_gauges(&inner);
        Ok(())
    }

    /// `msync(MS_SYNC)` of `ranges`, each checked first. Unmapped parts are harmless.
    pub fn sync(&self, ranges: &[Range]) -> Result<()> {
        let inner = self.lock();
        for r in ranges {
            self.check(r.offset, r.len, None)?;
        }
        for r in ranges {
            inner.sync(r.offset, r.len)?;
            FsMetrics::add(&self.metrics.syncs, 1);
        }
        Ok(())
    }

    /// A copy of the live mappings, in offset order.
    pub fn mappings(&self) -> Vec<Mapping> {
        self.lock().table.iter().collect()
    }

    /// Number of live mappings.
    pub fn live_mappings(&self) -> usize {
        self.lock().table.len()
    }

    /// Runs `f` with the host address of `[offset, offset + len)` while the window's lock is held,
    /// if live mappings cover the range (writable ones when `write`). Used by the IO path: nothing
    /// can remap the range while `f` runs.
    pub(crate) fn with_mapped<T>(
        &self,
        offset: u64,
        len: u64,
        write: bool,
        f: impl FnOnce(usize) -> T,
    ) -> Option<T> {
        let inner = self.lock();
        let end = offset.checked_add(len)?;
        if end > self.size || !inner.table.covers(offset, len, write) {
            return None;
        }
        Some(f(inner.reservation.addr() + offset as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Access;

    #[test]
    fn size_must_be_power_of_two_of_2mib() {
        for size in [0, 4096, (2 << 20) - 4096, 3 << 20, (2 << 20) + 4096] {
            assert!(matches!(
                DaxWindow::new(size),
                Err(Error::InvalidSize { .. })
            ));
        }
        let w = DaxWindow::new(4 << 20).unwrap();
        assert_eq!(w.size(), 4 << 20);
        assert_eq!(w.host_addr() % (2 << 20), 0);
    }

    #[test]
    fn errno_table() {
        let w = DaxWindow::new(2 << 20).unwrap();
        let e = |reason| w.range_error(0, 0, 0, reason).errno();
        assert_eq!(e(RangeError::Overflow), libc::EOVERFLOW);
        assert_eq!(e(RangeError::OutOfWindow), libc::ERANGE);
        assert_eq!(e(RangeError::Misaligned), libc::EINVAL);
        assert_eq!(e(RangeError::Busy), libc::EBUSY);
        assert_eq!(e(RangeError::NotMapped), libc::ENOENT);
        let _ = Access::ReadOnly;
    }
}
