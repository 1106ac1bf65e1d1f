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
//! # Generations
//!
//! A window outlives the sessions that map into it: the guest driver is reset and comes back,
//! the backend dies and a new one connects. Each session maps through a [`WindowLease`] taken
//! from the window's current generation; [`DaxWindow::reset`] ends that generation and drops
//! every mapping in one step under the window's lock. A lease of an ended generation is refused
//! ([`Error::Stale`]) whatever it asks, so a channel thread that outlived its session (a stalled
//! request, a join that timed out) can neither map into the next session's window nor wipe its
//! mappings. The IO path ([`crate::IoSpace`]) checks the generation again before each chunk it
//! copies into memory, under a copy gate that ending a generation takes: after `reset` returns,
//! no copy of the ended session runs, and none starts. No lock of the window is held across a
//! file syscall or an `msync`.
//!
//! # Limits
//!
//! A window holds at most [`DaxWindowBuilder::max_mappings`] live mappings (default
//! [`DEFAULT_MAX_MAPPINGS`]); a request that would leave more is refused
//! ([`RangeError::Limit`], `ENOSPC`). Each mapping costs the process at most two kernel mappings
//! (itself and the piece of reservation it splits off), so the default keeps one window at a
//! quarter of Linux's default `vm.max_map_count` (65,530). An optional granule
//! ([`DaxWindowBuilder::granule`]) refuses ranges that are not multiples of it.
//!
//! Cleanup works even when the process is at its map limit, where the kernel refuses every
//! `mmap` (the `MAP_FIXED` re-map that puts the reservation back included) and only a `munmap`
//! that splits nothing still succeeds. Unmapping window ranges with `munmap` would leave a hole
//! for another thread's `mmap(NULL, ..)`, so the window keeps a ballast: four one-page mappings
//! outside it, each its own kernel mapping. When putting the reservation back fails with
//! `ENOMEM`, a ballast page is unmapped, which frees a slot, and the re-map is tried again. A
//! map is only attempted with the whole ballast in hand (it is refilled first; at the limit
//! that fails and the map is refused with `ENOMEM` before the window is touched), so requests
//! cannot spend what cleanup needs. Should putting the reservation back ever
//! fail all the same, the window is poisoned: every map is refused ([`Error::Poisoned`]) until
//! an unmap-all or a reset succeeds.
//!
//! # Drop order
//!
//! The VMM must remove the memory slot that covers the window before it drops the last
//! reference to the `DaxWindow`: dropping unmaps the whole range.

mod ranges;
mod reservation;

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use vm_memory::bitmap::Bitmap;
use vm_memory::MmapRegion;

use self::ranges::{check_range, MappingTable};
pub use self::ranges::{Mapping, OverlapPolicy, Policy, RangeError, UnmapPolicy};
pub use self::reservation::RegionRefusal;
use self::reservation::{AdoptError, Ballast, HandedIn, Reservation};
use crate::metrics::FsMetrics;
use crate::protocol::{MapEntry, Range};

/// Smallest window: one 2 MiB range, the unit the Linux guest maps.
pub const MIN_WINDOW_SIZE: u64 = 2 << 20;

/// Default bound on a window's live mappings: a 16 GiB window mapped entirely in the Linux
/// guest's 2 MiB ranges, and at most 16,385 kernel mappings, a quarter of Linux's default
/// `vm.max_map_count`.
pub const DEFAULT_MAX_MAPPINGS: usize = 8192;

/// Errors of window operations. [`Error::errno`] gives the errno a peer is told.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The window size is not a power of two of at least 2 MiB.
    #[error("window size {size:#x} is not a power of two of at least {MIN_WINDOW_SIZE:#x}")]
    InvalidSize {
        /// Requested size.
        size: u64,
    },
    /// The granule is not a power of two between the page size and the window size.
    #[error(
        "granule {granule:#x} is not a power of two between the page size and the window size"
    )]
    InvalidGranule {
        /// Requested granule.
        granule: u64,
    },
    /// Reserving the address range failed (or, for a region the VMM reserved, making it
    /// `PROT_NONE` again).
    #[error("cannot reserve a window of {size:#x} bytes")]
    Reserve {
        /// Requested size.
        size: u64,
        /// The mmap error.
        #[source]
        source: io::Error,
    },
    /// A region the VMM reserved ([`DaxWindowBuilder::reservation`]) cannot be the window.
    #[error("the region at {addr:#x} of {size:#x} bytes cannot be a window: {reason:?}")]
    Region {
        /// Host address of the region.
        addr: u64,
        /// Its size.
        size: u64,
        /// What is wrong.
        reason: RegionRefusal,
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
    /// The request came through a lease of an ended generation (the session it belonged to was
    /// reset or replaced).
    #[error("lease of generation {lease} used after the window moved to generation {current}")]
    Stale {
        /// The lease's generation.
        lease: u64,
        /// The window's generation now.
        current: u64,
    },
    /// Putting the reservation back failed earlier, so the window may not be what its table
    /// says: maps are refused until an unmap-all or a reset succeeds.
    #[error("the window is poisoned by a failed restore; maps are refused until it is cleared")]
    Poisoned,
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
            Error::InvalidSize { .. } | Error::InvalidGranule { .. } | Error::Region { .. } => {
                libc::EINVAL
            }
            Error::Stale { .. } => libc::ESTALE,
            Error::Poisoned => libc::EIO,
            Error::Reserve { source, .. }
            | Error::Map { source, .. }
            | Error::Unmap { source, .. }
            | Error::Sync { source, .. } => os_errno(source),
            Error::Range { reason, .. } => match reason {
                RangeError::Overflow => libc::EOVERFLOW,
                RangeError::OutOfWindow => libc::ERANGE,
                RangeError::Misaligned | RangeError::Empty => libc::EINVAL,
                RangeError::Limit => libc::ENOSPC,
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
    ballast: Ballast,
    generation: u64,
    poisoned: bool,
}

impl Inner {
    /// Puts a checked range back to the reservation. Checked ranges fit `usize`: they lie inside
    /// the window, whose size fits `usize` since the reservation exists. A failure poisons the
    /// window: the range may be a hole or still hold what it held.
    fn clear(&mut self, offset: u64, len: u64) -> Result<()> {
        let res = self
            .reservation
            .clear(offset as usize, len as usize, &mut self.ballast);
        res.map_err(|source| {
            self.poisoned = true;
            Error::Unmap {
                offset,
                len,
                source,
            }
        })
    }

    /// Puts the whole window back to the reservation and forgets every mapping; lifts the
    /// poison on success.
    fn clear_all(&mut self, size: u64) -> Result<()> {
        self.clear(0, size)?;
        self.table.clear();
        self.poisoned = false;
        self.ballast.refill();
        Ok(())
    }
}

/// A DAX window. Share it as `Arc<DaxWindow>`: every method takes `&self` and serialises on an
/// internal lock, so a reset from the VMM thread and the backend channel's thread never race.
#[derive(Debug)]
pub struct DaxWindow {
    inner: Mutex<Inner>,
    /// Held (shared) by every copy into memory done for a session of this window, across the
    /// check of its generation and the copy; taken exclusively to end a generation. So when
    /// [`DaxWindow::reset`] returns, no copy of the ended session is still running, and none
    /// starts after. A copy under it is a bounded memory copy, never a file syscall.
    copies: RwLock<()>,
    /// `Inner::generation`, readable without the lock; written under it.
    generation: AtomicU64,
    host_addr: u64,
    size: u64,
    page_size: u64,
    granule: u64,
    max_mappings: usize,
    metrics: Arc<FsMetrics>,
}

// The window is shared between the VMM's threads and the channel thread: it must stay Send and
// Sync through its own fields (the reservation is plain addresses), with no `unsafe impl`.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<DaxWindow>();
};

fn page_size() -> u64 {
    reservation::page_size() as u64
}

/// Builder for [`DaxWindow`], for the settings beyond the size.
#[derive(Debug)]
pub struct DaxWindowBuilder {
    size: u64,
    max_mappings: usize,
    granule: Option<u64>,
    metrics: Option<Arc<FsMetrics>>,
    region: Option<HandedIn>,
}

impl DaxWindowBuilder {
    /// Most live mappings the window holds (default [`DEFAULT_MAX_MAPPINGS`]); a request that
    /// would leave more is refused with `ENOSPC`. Each mapping costs the process at most two
    /// kernel mappings: keep twice this, for every window, well below `vm.max_map_count`.
    pub fn max_mappings(mut self, max: usize) -> Self {
        self.max_mappings = max;
        self
    }

    /// Smallest unit of a map or unmap: offsets and lengths in the window must be multiples of
    /// it (file offsets need page alignment only). A power of two from the page size up to the
    /// window size; default the page size, which every legacy backend works with. The Linux
    /// guest maps 2 MiB ranges, so `2 << 20` fits a window served to Linux guests only and
    /// bounds the mappings by the window size.
    pub fn granule(mut self, granule: u64) -> Self {
        self.granule = Some(granule);
        self
    }

    /// The counters the window updates (default: fresh ones).
    pub fn metrics(mut self, metrics: Arc<FsMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Makes the window of a region the VMM reserved, instead of reserving one: for a VMM whose
    /// device manager reserves the address range of every device memory region itself
    /// (cloud-hypervisor builds the virtio-fs cache as an anonymous `PROT_NONE` `MmapRegion`
    /// and keeps an `Arc` of it for its memory slot bookkeeping).
    ///
    /// At [`DaxWindowBuilder::build`] the region must be the window's size, page aligned (2 MiB
    /// aligned lets the host back guest accesses with huge pages; the window works either way),
    /// anonymous and `PROT_NONE` (so nobody can hold readable or writable slices of it); else
    /// [`Error::Region`]. The window then maps a fresh `PROT_NONE`, `MAP_NORESERVE` anonymous
    /// mapping over the whole range at once, owns what is in the range from then on, and keeps
    /// the region alive. Nobody else may map into the range.
    ///
    /// Dropping the window puts `PROT_NONE` back over the whole range and lets its reference to
    /// the region go; the range is unmapped when the last reference to the region goes (the
    /// memory slot must still be removed first: see the module documentation).
    pub fn reservation<B>(mut self, region: impl Into<Arc<MmapRegion<B>>>) -> Self
    where
        B: Bitmap + Send + Sync + 'static,
    {
        self.region = Some(HandedIn::new(region.into()));
        self
    }

    /// Checks the settings and reserves the window: `PROT_NONE`, `MAP_NORESERVE`, so it costs
    /// no memory. With [`DaxWindowBuilder::reservation`], takes over that region instead.
    pub fn build(self) -> Result<DaxWindow> {
        let size = self.size;
        if size < MIN_WINDOW_SIZE || !size.is_power_of_two() {
            return Err(Error::InvalidSize { size });
        }
        let page_size = page_size();
        let granule = self.granule.unwrap_or(page_size);
        if !granule.is_power_of_two() || granule < page_size || granule > size {
            return Err(Error::InvalidGranule { granule });
        }
        let bytes = usize::try_from(size).map_err(|_| Error::InvalidSize { size })?;
        let reservation = match self.region {
            None => Reservation::new(bytes).map_err(|source| Error::Reserve { size, source })?,
            Some(region) => {
                let (addr, len) = (region.addr() as u64, region.size() as u64);
                let reservation = Reservation::adopt(region, bytes).map_err(|e| match e {
                    AdoptError::Refused(reason) => Error::Region {
                        addr,
                        size: len,
                        reason,
                    },
                    AdoptError::Map(source) => Error::Reserve { size, source },
                })?;
                if addr % reservation::HOST_ALIGN as u64 != 0 {
                    log::info!(
                        "dax window: the region at {addr:#x} is not 2 MiB aligned: guest accesses \
                         cannot use host huge pages"
                    );
                }
                reservation
            }
        };
        let mut ballast = Ballast::default();
        ballast.refill();
        Ok(DaxWindow {
            copies: RwLock::new(()),
            generation: AtomicU64::new(0),
            host_addr: reservation.addr() as u64,
            inner: Mutex::new(Inner {
                reservation,
                table: MappingTable::new(page_size, size),
                ballast,
                generation: 0,
                poisoned: false,
            }),
            size,
            page_size,
            granule,
            max_mappings: self.max_mappings,
            metrics: self.metrics.unwrap_or_default(),
        })
    }
}

impl DaxWindow {
    /// Reserves a window of `size` bytes (a power of two, at least [`MIN_WINDOW_SIZE`]), with
    /// fresh metrics and default limits. The reservation is `PROT_NONE`, `MAP_NORESERVE`: it
    /// costs no memory.
    pub fn new(size: u64) -> Result<Self> {
        Self::builder(size).build()
    }

    /// As [`DaxWindow::new`], counting into `metrics`.
    pub fn with_metrics(size: u64, metrics: Arc<FsMetrics>) -> Result<Self> {
        Self::builder(size).metrics(metrics).build()
    }

    /// Starts building a window of `size` bytes with settings beyond the defaults.
    pub fn builder(size: u64) -> DaxWindowBuilder {
        DaxWindowBuilder {
            size,
            max_mappings: DEFAULT_MAX_MAPPINGS,
            granule: None,
            metrics: None,
            region: None,
        }
    }

    /// Makes the window of a region the VMM reserved, its size the window size, with fresh
    /// metrics and default limits: [`DaxWindowBuilder::reservation`] says what the region must
    /// be and what the window does with it.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_memory::MmapRegion;
    /// use virtio_fs_dax::DaxWindow;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // The VMM's device manager reserves the range, and keeps a reference for its books.
    /// let region = Arc::new(MmapRegion::<()>::build(
    ///     None,
    ///     8 << 20,
    ///     libc::PROT_NONE,
    ///     libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE,
    /// )?);
    /// let window = DaxWindow::from_reservation(region.clone())?;
    /// assert_eq!(window.host_addr(), region.as_ptr() as u64);
    /// assert_eq!(window.size(), 8 << 20);
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_reservation<B>(region: impl Into<Arc<MmapRegion<B>>>) -> Result<Self>
    where
        B: Bitmap + Send + Sync + 'static,
    {
        let region = region.into();
        Self::builder(region.size() as u64)
            .reservation(region)
            .build()
    }

    /// Whether the window is a region the VMM reserved ([`DaxWindowBuilder::reservation`]) rather
    /// than one the window reserved itself.
    pub fn is_handed_in(&self) -> bool {
        self.lock().reservation.handed_in()
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
            .and_then(|()| {
                let mask = self.granule - 1;
                if offset & mask != 0 || len & mask != 0 {
                    Err(RangeError::Misaligned)
                } else {
                    Ok(())
                }
            })
            .map_err(|r| self.range_error(offset, len, fd_offset.unwrap_or(0), r))
    }

    fn update_gauges(&self, inner: &Inner) {
        self.metrics
            .set_gauges(inner.table.len(), inner.table.mapped_bytes());
    }

    /// Locks the window for a request of generation `lease` (`None`: the current one).
    fn lock_for(&self, lease: Option<u64>) -> Result<MutexGuard<'_, Inner>> {
        let inner = self.lock();
        match lease {
            Some(g) if g != inner.generation => Err(Error::Stale {
                lease: g,
                current: inner.generation,
            }),
            _ => Ok(inner),
        }
    }

    /// Refuses a request that would leave more than `max_mappings` live mappings.
    fn check_limit(&self, after: isize, offset: u64, len: u64) -> Result<()> {
        if usize::try_from(after).is_ok_and(|a| a > self.max_mappings) {
            return Err(self.range_error(offset, len, 0, RangeError::Limit));
        }
        Ok(())
    }

    /// Maps `entries` of `fd`, all or nothing: every entry is checked first (range, alignment,
    /// granule, overlap under `policy`, entries against each other, the bound on live mappings),
    /// then mapped in order. The checks cost the same whatever the number of live mappings: they
    /// grow with the length of the ranges only, a word of bits per 64 pages. If a mapping fails,
    /// the entries already mapped go back to the reservation and the error is returned. Ranges
    /// an entry replaced under [`OverlapPolicy::Replace`] are not restored on rollback (their
    /// file descriptors are not kept); they read as the reservation.
    pub fn map(&self, entries: &[MapEntry], fd: impl AsFd, policy: Policy) -> Result<()> {
        self.map_as(None, entries, fd.as_fd(), policy)
    }

    fn map_as(
        &self,
        lease: Option<u64>,
        entries: &[MapEntry],
        fd: BorrowedFd<'_>,
        policy: Policy,
    ) -> Result<()> {
        let mut inner = self.lock_for(lease)?;
        if inner.poisoned {
            return Err(Error::Poisoned);
        }
        let mut after = inner.table.len() as isize;
        // Bit `i`: entry `i` (of the first 64) lands on free pages, and no later entry may
        // overlap it, so it is recorded the short way.
        let mut free_entries = 0u64;
        for (i, e) in entries.iter().enumerate() {
            self.check(e.offset, e.len, Some(e.fd_offset))?;
            let busy = || self.range_error(e.offset, e.len, e.fd_offset, RangeError::Busy);
            // Under `Replace` anything may be replaced; the others check, and the common case,
            // nothing there, needs only the one look.
            let free =
                policy.overlap != OverlapPolicy::Replace && inner.table.is_free(e.offset, e.len);
            if policy.overlap != OverlapPolicy::Replace && !free {
                inner
                    .table
                    .check_map(e.offset, e.len, policy.overlap)
                    .map_err(|_| busy())?;
            }
            // Entries of one request must not overlap each other, unless they may replace; a
            // replacing entry may then split an earlier one, counted as one more mapping.
            let overlaps_earlier = entries[..i]
                .iter()
                .any(|p| overlaps(p.offset, p.len, e.offset, e.len));
            if overlaps_earlier && policy.overlap != OverlapPolicy::Replace {
                return Err(busy());
            }
            if free && i < 64 {
                free_entries |= 1 << i;
            }
            after += match policy.overlap {
                // `check_map` let it through: nothing overlaps ...
                OverlapPolicy::Reject => 1,
                // ... or exactly one mapping is replaced.
                OverlapPolicy::ReplaceExact => isize::from(free),
                OverlapPolicy::Replace => {
                    1 + inner.table.remove_delta(e.offset, e.len) + isize::from(overlaps_earlier)
                }
            };
            self.check_limit(after, e.offset, e.len)?;
        }
        // A map may fail half way and need the reservation put back: only map with the whole
        // ballast in hand, so that a backend mapping at the process's limit cannot spend the
        // ballast that cleanup needs. At the limit the refill fails and the map is refused here,
        // before the window is touched.
        inner.ballast.refill();
        if !inner.ballast.is_full() {
            let (offset, len) = entries.first().map_or((0, 0), |e| (e.offset, e.len));
            return Err(Error::Map {
                offset,
                len,
                source: io::Error::from_raw_os_error(libc::ENOMEM),
            });
        }
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
                return Err(self.roll_back(&mut inner, e, &entries[..done], source));
            }
            if done < 64 && free_entries >> done & 1 != 0 {
                inner.table.insert_free(e.offset, e.len, e.access);
            } else {
                inner.table.insert(e.offset, e.len, e.access);
            }
        }
        FsMetrics::add(&self.metrics.maps, entries.len() as u64);
        self.update_gauges(&inner);
        Ok(())
    }

    /// After `failed` failed to map: its range may be anything now, so the reservation is put
    /// back over it, and over the entries `mapped` before it too.
    // Out of line, so that the code of a map that succeeds lies in fewer cache lines.
    #[cold]
    fn roll_back(
        &self,
        inner: &mut Inner,
        failed: &MapEntry,
        mapped: &[MapEntry],
        source: io::Error,
    ) -> Error {
        for r in std::iter::once(failed).chain(mapped.iter().rev()) {
            if let Err(err) = inner.clear(r.offset, r.len) {
                log::warn!(
                    "dax window: rollback of {:#x}+{:#x}: {err}",
                    r.offset,
                    r.len
                );
            }
            inner.table.remove(r.offset, r.len);
        }
        self.update_gauges(inner);
        Error::Map {
            offset: failed.offset,
            len: failed.len,
            source,
        }
    }

    /// Unmaps `ranges`: each is checked (range, alignment, granule, `policy`, and, where an
    /// unmap would split a mapping in two, the bound on live mappings) before any is unmapped,
    /// then put back to the reservation.
    pub fn unmap(&self, ranges: &[Range], policy: Policy) -> Result<()> {
        self.unmap_as(None, ranges, policy)
    }

    fn unmap_as(&self, lease: Option<u64>, ranges: &[Range], policy: Policy) -> Result<()> {
        let mut inner = self.lock_for(lease)?;
        let mut after = inner.table.len() as isize;
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
            // An exact unmap removes one mapping; any other may split one in two.
            if policy.unmap == UnmapPolicy::Any {
                after += inner.table.remove_delta(r.offset, r.len).max(0);
                self.check_limit(after, r.offset, r.len)?;
            }
        }
        let mut result = Ok(());
        for r in ranges {
            result = inner.clear(r.offset, r.len);
            if result.is_err() {
                break;
            }
            // Checked above: under `Exact`, each range is exactly one mapping.
            match policy.unmap {
                UnmapPolicy::Exact => inner.table.remove_exact(r.offset, r.len),
                UnmapPolicy::Any => inner.table.remove(r.offset, r.len),
            }
            FsMetrics::add(&self.metrics.unmaps, 1);
        }
        self.update_gauges(&inner);
        result
    }

    /// Drops every mapping with one re-map of the reservation over the whole window. The window
    /// stays reserved (and registered with the VMM) and in the same generation: use
    /// [`DaxWindow::reset`] to end a session. Works at the process's map limit too.
    pub fn unmap_all(&self) -> Result<()> {
        self.unmap_all_as(None)
    }

    fn unmap_all_as(&self, lease: Option<u64>) -> Result<()> {
        let mut inner = self.lock_for(lease)?;
        self.drop_all(&mut inner)
    }

    /// Drops every mapping of a locked window, counted as one unmap.
    fn drop_all(&self, inner: &mut Inner) -> Result<()> {
        let result = inner.clear_all(self.size);
        FsMetrics::add(&self.metrics.unmaps, 1);
        self.update_gauges(inner);
        result
    }

    /// Ends the current generation and drops every mapping, in one step under the window's
    /// lock: every [`WindowLease`] taken before is refused from now on, so no request of an
    /// ended session can map after this returns. Call it when a session ends (device reset,
    /// backend gone, reconnect), after stopping what serves the session. The generation moves
    /// on even if dropping the mappings fails (the window is then poisoned).
    pub fn reset(&self) -> Result<()> {
        self.end_generation(None)
    }

    /// Ends generation `lease` (`None`: the current one) and drops every mapping; nothing when
    /// the window is past `lease` already.
    fn end_generation(&self, lease: Option<u64>) -> Result<()> {
        // Waits for a copy into memory in progress (a bounded memory copy), never for a file
        // syscall or an msync: those run without any of the window's locks.
        let _copies = self.copies.write().unwrap_or_else(|p| p.into_inner());
        let mut inner = self.lock();
        if lease.is_some_and(|g| g != inner.generation) {
            return Ok(());
        }
        inner.generation += 1;
        self.generation.store(inner.generation, Ordering::Release);
        self.drop_all(&mut inner)
    }

    /// The current generation: how many sessions ended ([`DaxWindow::reset`],
    /// [`WindowLease::end`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A lease on the current generation, for whatever serves one session (a
    /// [`crate::BackendChannel`] takes one when built).
    pub fn lease(self: &Arc<Self>) -> WindowLease {
        WindowLease {
            generation: self.generation(),
            window: self.clone(),
        }
    }

    /// Whether a failed restore poisoned the window (maps are refused until an unmap-all or a
    /// reset succeeds).
    pub fn is_poisoned(&self) -> bool {
        self.lock().poisoned
    }

    /// Most live mappings the window holds.
    pub fn max_mappings(&self) -> usize {
        self.max_mappings
    }

    /// Alignment every range in the window must have (the page size unless configured).
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// `msync(MS_SYNC)` of `ranges`, each checked first. Unmapped parts are harmless.
    pub fn sync(&self, ranges: &[Range]) -> Result<()> {
        self.sync_as(None, ranges)
    }

    fn sync_as(&self, lease: Option<u64>, ranges: &[Range]) -> Result<()> {
        drop(self.lock_for(lease)?);
        for r in ranges {
            check_range(r.offset, r.len, None, self.size, self.page_size)
                .map_err(|reason| self.range_error(r.offset, r.len, 0, reason))?;
        }
        // Without the lock: an msync can wait on the file's writeback as long as the file system
        // takes (a hung network or FUSE mount), and must not hold up a reset or a map meanwhile.
        // The range stays inside the reservation, which lives as long as `self`; should a reset
        // replace what it holds meanwhile, syncing the new contents is harmless.
        for r in ranges {
            // Checked ranges fit usize: they lie inside the window, whose size fits usize.
            reservation::sync(self.host_addr as usize + r.offset as usize, r.len as usize)
                .map_err(|source| Error::Sync {
                    offset: r.offset,
                    len: r.len,
                    source,
                })?;
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

    /// Enters the copy gate of generation `generation`: while the guard lives, that generation
    /// cannot end ([`DaxWindow::reset`] waits for it). `None` when the generation has ended.
    /// The IO path holds it across each bounded memory copy of a session's transfer.
    pub(crate) fn enter_copy(&self, generation: u64) -> Option<RwLockReadGuard<'_, ()>> {
        let guard = self.copies.read().unwrap_or_else(|p| p.into_inner());
        (self.generation() == generation).then_some(guard)
    }

    /// Runs `f` with the host address of `[offset, offset + len)` while the window's lock is held,
    /// if live mappings cover the range (writable ones when `write`). Used by the IO path for a
    /// bounded memory copy: nothing can remap the range while `f` runs.
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

/// A window as one session sees it: every request goes through only while the window is still
/// in the generation the lease was taken in. After [`DaxWindow::reset`] every method returns
/// [`Error::Stale`] and touches nothing.
#[derive(Clone, Debug)]
pub struct WindowLease {
    window: Arc<DaxWindow>,
    generation: u64,
}

impl WindowLease {
    /// The window.
    pub fn window(&self) -> &Arc<DaxWindow> {
        &self.window
    }

    /// The generation this lease belongs to.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the window is still in this lease's generation.
    pub fn is_current(&self) -> bool {
        self.window.generation() == self.generation
    }

    /// [`DaxWindow::map`], in this lease's generation only.
    pub fn map(&self, entries: &[MapEntry], fd: impl AsFd, policy: Policy) -> Result<()> {
        self.window
            .map_as(Some(self.generation), entries, fd.as_fd(), policy)
    }

    /// [`DaxWindow::unmap`], in this lease's generation only.
    pub fn unmap(&self, ranges: &[Range], policy: Policy) -> Result<()> {
        self.window.unmap_as(Some(self.generation), ranges, policy)
    }

    /// [`DaxWindow::unmap_all`], in this lease's generation only.
    pub fn unmap_all(&self) -> Result<()> {
        self.window.unmap_all_as(Some(self.generation))
    }

    /// [`DaxWindow::sync`], in this lease's generation only.
    pub fn sync(&self, ranges: &[Range]) -> Result<()> {
        self.window.sync_as(Some(self.generation), ranges)
    }

    /// Ends this lease's generation if it is still current ([`DaxWindow::reset`]); does
    /// nothing when a newer generation has begun, whose mappings are not this session's to drop.
    pub fn end(&self) -> Result<()> {
        self.window.end_generation(Some(self.generation))
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
