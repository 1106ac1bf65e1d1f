// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Counters a VMM can read at any time, one [`FsMetrics`] per device, shared as `Arc`.
//!
//! | counter | meaning |
//! |---|---|
//! | `maps` | ranges mapped into the window (one per SHMEM_MAP, one per FS_MAP entry) |
//! | `unmaps` | unmap requests served (SHMEM_UNMAP, FS_UNMAP entries, unmap-all, reset) |
//! | `syncs` | ranges `msync`ed (FS_SYNC entries) |
//! | `ios` | IO transfers served (FS_IO entries, MEM_READ, MEM_WRITE) |
//! | `io_bytes` | bytes moved by those transfers |
//! | `live_mappings` | mappings in the window now (gauge) |
//! | `mapped_bytes` | bytes mapped in the window now (gauge) |
//! | `requests` | messages received on the backend channel, refused ones included |
//! | `refusals(reason)` | messages refused, by [`Refusal`] reason |
//!
//! All counters use relaxed atomics: each is exact, but a reader may see one updated before
//! another.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a request was refused. Each reason has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Refusal {
    /// Bad version, REPLY flag on a request, or unknown header flags.
    Header,
    /// Body size wrong for the request code, or above the limit.
    Size,
    /// Unknown request code, or one this crate does not serve.
    Unsupported,
    /// Wrong number of file descriptors.
    FdCount,
    /// Unknown shared memory region id.
    Shmid,
    /// Zero length.
    ZeroLength,
    /// `offset + len` overflows.
    Overflow,
    /// Range ends past the window.
    OutOfWindow,
    /// Offset, length or file offset not page aligned.
    Misaligned,
    /// Unknown or invalid flags.
    Flags,
    /// Map overlaps a live mapping (policy refuses it).
    Overlap,
    /// Unmap matches no live mapping.
    NotMapped,
    /// IO at a guest address that is not guest memory or a mapped window range.
    BadAddress,
    /// The syscall failed (mmap, msync, pread, pwrite), or the window is poisoned.
    Syscall,
    /// The request would leave more live mappings than the window holds.
    Limit,
    /// The request came from a session that has ended (its window generation is over).
    Stale,
}

impl Refusal {
    /// Every reason, in counter order.
    pub const ALL: [Refusal; 16] = [
        Refusal::Header,
        Refusal::Size,
        Refusal::Unsupported,
        Refusal::FdCount,
        Refusal::Shmid,
        Refusal::ZeroLength,
        Refusal::Overflow,
        Refusal::OutOfWindow,
        Refusal::Misaligned,
        Refusal::Flags,
        Refusal::Overlap,
        Refusal::NotMapped,
        Refusal::BadAddress,
        Refusal::Syscall,
        Refusal::Limit,
        Refusal::Stale,
    ];
}

/// The device's counters. See the module documentation for what each one counts.
#[derive(Debug, Default)]
pub struct FsMetrics {
    pub(crate) maps: AtomicU64,
    pub(crate) unmaps: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) ios: AtomicU64,
    pub(crate) io_bytes: AtomicU64,
    pub(crate) live_mappings: AtomicU64,
    pub(crate) mapped_bytes: AtomicU64,
    pub(crate) requests: AtomicU64,
    refusals: [AtomicU64; Refusal::ALL.len()],
}

impl FsMetrics {
    /// Fresh counters, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ranges mapped.
    pub fn maps(&self) -> u64 {
        self.maps.load(Relaxed)
    }
    /// Unmaps served.
    pub fn unmaps(&self) -> u64 {
        self.unmaps.load(Relaxed)
    }
    /// Ranges synced.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Relaxed)
    }
    /// IO transfers served.
    pub fn ios(&self) -> u64 {
        self.ios.load(Relaxed)
    }
    /// Bytes moved by IO transfers.
    pub fn io_bytes(&self) -> u64 {
        self.io_bytes.load(Relaxed)
    }
    /// Mappings live now.
    pub fn live_mappings(&self) -> u64 {
        self.live_mappings.load(Relaxed)
    }
    /// Bytes mapped now.
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped_bytes.load(Relaxed)
    }
    /// Messages received.
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }
    /// Refusals for `reason`.
    pub fn refusals(&self, reason: Refusal) -> u64 {
        self.refusals[reason as usize].load(Relaxed)
    }
    /// Refusals for every reason together.
    pub fn total_refusals(&self) -> u64 {
        self.refusals.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Counts one refusal and returns the new count for that reason.
    pub(crate) fn refuse(&self, reason: Refusal) -> u64 {
        self.refusals[reason as usize].fetch_add(1, Relaxed) + 1
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn set_gauges(&self, live: usize, bytes: u64) {
        self.live_mappings.store(live as u64, Relaxed);
        self.mapped_bytes.store(bytes, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_per_reason() {
        let m = FsMetrics::new();
        assert_eq!(m.refuse(Refusal::Overlap), 1);
        assert_eq!(m.refuse(Refusal::Overlap), 2);
        assert_eq!(m.refuse(Refusal::Syscall), 1);
        assert_eq!(m.refusals(Refusal::Overlap), 2);
        assert_eq!(m.refusals(Refusal::Header), 0);
        assert_eq!(m.total_refusals(), 3);
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
