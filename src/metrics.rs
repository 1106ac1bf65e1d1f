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
//! | `sessions_without_dax` | sessions started without DAX while the guest sees the window (`DaxFallback::Disable`): it stays empty |
//! | `driver_mistakes` | the guest driver's misuse of the device: writes to the read-only configuration space, acks of features not offered (logged the first few times only) |
//! | `inflight_failed` | requests a lost backend left in flight that the device returned to the guest itself at a reconnect (no inflight region): with `EIO`, or without reply |
//! | `inflight_malformed` | of those, the ones whose chain was malformed or whose buffers could not take the reply: returned with length 0 |
//! | `inflight_stale` | chains in the window of requests in flight that the backend had already completed (out of order) and that were left alone |
//! | `refusals_<reason>` | messages refused, by [`Refusal`] reason ([`FsMetrics::refusals`]) |
//! | `map_latency_count` | map requests timed in `map_latency()`: the time from a map request's arrival to its reply ([`LatencyHistogram`]) |
//!
//! All counters use relaxed atomics: each is exact, but a reader may see one updated before
//! another.
//!
//! # Exporting them
//!
//! [`FsMetrics::counters`] lists every counter and gauge as a `(name, value)` pair, ready for a
//! VMM's own metrics endpoint (cloud-hypervisor's `counters()` map, a Prometheus exporter). The
//! names are stable: a name, once released, keeps its meaning; new counters only add names.
//! They are the names of the table above, `map_latency_count` for the number of map latencies
//! recorded, and `refusals_<reason>` for each [`Refusal`] ([`Refusal::counter_name`]).
//!
//! ```
//! use std::collections::HashMap;
//! use std::num::Wrapping;
//!
//! use virtio_fs_dax::FsMetrics;
//!
//! let metrics = FsMetrics::new();
//! let map: HashMap<&'static str, Wrapping<u64>> = metrics
//!     .counters()
//!     .into_iter()
//!     .map(|(name, value)| (name, Wrapping(value)))
//!     .collect();
//! assert_eq!(map["maps"], Wrapping(0));
//! assert_eq!(map["refusals_out_of_window"], Wrapping(0));
//! ```

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Why a request was refused. Each reason has its own counter, named
/// `refusals_<reason>` in [`FsMetrics::counters`], where `<reason>` is [`Refusal::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
#[non_exhaustive]
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
    /// The kernel dropped the message's descriptors: the process was at its descriptor limit.
    FdsLost,
}

impl Refusal {
    /// Every reason, in counter order.
    pub const ALL: [Refusal; 17] = [
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
        Refusal::FdsLost,
    ];

    /// The reason's stable snake_case name (`"out_of_window"`), as [`std::fmt::Display`] prints it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Header => "header",
            Refusal::Size => "size",
            Refusal::Unsupported => "unsupported",
            Refusal::FdCount => "fd_count",
            Refusal::Shmid => "shmid",
            Refusal::ZeroLength => "zero_length",
            Refusal::Overflow => "overflow",
            Refusal::OutOfWindow => "out_of_window",
            Refusal::Misaligned => "misaligned",
            Refusal::Flags => "flags",
            Refusal::Overlap => "overlap",
            Refusal::NotMapped => "not_mapped",
            Refusal::BadAddress => "bad_address",
            Refusal::Syscall => "syscall",
            Refusal::Limit => "limit",
            Refusal::Stale => "stale",
            Refusal::FdsLost => "fds_lost",
        }
    }

    /// The name of the reason's counter in [`FsMetrics::counters`]: `refusals_` and
    /// [`Refusal::as_str`] (`"refusals_out_of_window"`).
    pub const fn counter_name(self) -> &'static str {
        match self {
            Refusal::Header => "refusals_header",
            Refusal::Size => "refusals_size",
            Refusal::Unsupported => "refusals_unsupported",
            Refusal::FdCount => "refusals_fd_count",
            Refusal::Shmid => "refusals_shmid",
            Refusal::ZeroLength => "refusals_zero_length",
            Refusal::Overflow => "refusals_overflow",
            Refusal::OutOfWindow => "refusals_out_of_window",
            Refusal::Misaligned => "refusals_misaligned",
            Refusal::Flags => "refusals_flags",
            Refusal::Overlap => "refusals_overlap",
            Refusal::NotMapped => "refusals_not_mapped",
            Refusal::BadAddress => "refusals_bad_address",
            Refusal::Syscall => "refusals_syscall",
            Refusal::Limit => "refusals_limit",
            Refusal::Stale => "refusals_stale",
            Refusal::FdsLost => "refusals_fds_lost",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    pub(crate) sessions_without_dax: AtomicU64,
    pub(crate) driver_mistakes: AtomicU64,
    pub(crate) inflight_failed: AtomicU64,
    pub(crate) inflight_malformed: AtomicU64,
    pub(crate) inflight_stale: AtomicU64,
    refusals: [AtomicU64; Refusal::ALL.len()],
    map_latency: LatencyHistogram,
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
    /// Sessions started without DAX while the guest sees the window (see the module
    /// documentation).
    pub fn sessions_without_dax(&self) -> u64 {
        self.sessions_without_dax.load(Relaxed)
    }
    /// The guest driver's misuse of the device: writes to the read-only configuration space,
    /// acks of features not offered.
    pub fn driver_mistakes(&self) -> u64 {
        self.driver_mistakes.load(Relaxed)
    }
    /// Requests in flight the device returned to the guest itself at a reconnect, because the
    /// lost backend kept no inflight region (see [`crate::Fs::reconnect`]).
    pub fn inflight_failed(&self) -> u64 {
        self.inflight_failed.load(Relaxed)
    }
    /// Of [`FsMetrics::inflight_failed`], the chains returned with length 0 because they were
    /// malformed or their buffers could not take the reply.
    pub fn inflight_malformed(&self) -> u64 {
        self.inflight_malformed.load(Relaxed)
    }
    /// Chains among those in flight that the backend had already completed out of order, left
    /// alone at a reconnect.
    pub fn inflight_stale(&self) -> u64 {
        self.inflight_stale.load(Relaxed)
    }
    /// Refusals for `reason`.
    pub fn refusals(&self, reason: Refusal) -> u64 {
        self.refusals[reason as usize].load(Relaxed)
    }
    /// How long map requests (SHMEM_MAP, FS_MAP) took from the moment the whole message was read
    /// to the moment its reply was sent: the front-end's share of a guest's FUSE_SETUPMAPPING.
    /// Refused maps are not recorded.
    pub fn map_latency(&self) -> &LatencyHistogram {
        &self.map_latency
    }

    /// Every counter and gauge as a `(name, value)` pair, in a fixed order: the names of the
    /// module documentation's table, `map_latency_count` ([`LatencyHistogram::count`] of
    /// [`FsMetrics::map_latency`]), then `refusals_<reason>` for every [`Refusal`] in
    /// [`Refusal::ALL`] order. The names are stable (see the module documentation); each
    /// value is read once, with the same relaxed ordering as the getters.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut out = vec![
            ("maps", self.maps()),
            ("unmaps", self.unmaps()),
            ("syncs", self.syncs()),
            ("ios", self.ios()),
            ("io_bytes", self.io_bytes()),
            ("live_mappings", self.live_mappings()),
            ("mapped_bytes", self.mapped_bytes()),
            ("requests", self.requests()),
            ("sessions_without_dax", self.sessions_without_dax()),
            ("driver_mistakes", self.driver_mistakes()),
            ("inflight_failed", self.inflight_failed()),
            ("inflight_malformed", self.inflight_malformed()),
            ("inflight_stale", self.inflight_stale()),
            ("map_latency_count", self.map_latency.count()),
        ];
        out.extend(
            Refusal::ALL
                .iter()
                .map(|&r| (r.counter_name(), self.refusals(r))),
        );
        out
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

/// Sub-buckets per power of two: a recorded value is known to within 1/8 (12.5%).
const SUB_BUCKETS: u32 = 8;
/// Buckets: values below `SUB_BUCKETS` ns exactly, then `SUB_BUCKETS` per power of two up to
/// 2^64 ns.
const BUCKETS: usize = ((64 - SUB_BUCKETS.trailing_zeros() + 1) * SUB_BUCKETS) as usize;

/// A histogram of durations with log-linear buckets (eight per power of two, so any percentile
/// is exact to within 12.5%), lock-free and of fixed size (about 4 KiB): cheap enough to record
/// every request on the channel thread while the VMM reads it from another.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl LatencyHistogram {
    fn bucket(ns: u64) -> usize {
        if ns < u64::from(SUB_BUCKETS) {
            return ns as usize;
        }
        let log = 63 - ns.leading_zeros();
        let shift = log - SUB_BUCKETS.trailing_zeros();
        let sub = (ns >> shift) as u32 & (SUB_BUCKETS - 1);
        ((shift + 1) * SUB_BUCKETS + sub) as usize
    }

    /// The largest value a bucket holds.
    fn upper(bucket: usize) -> u64 {
        let b = bucket as u32;
        if b < SUB_BUCKETS {
            return u64::from(b);
        }
        let shift = b / SUB_BUCKETS - 1;
        let base = u64::from(SUB_BUCKETS + b % SUB_BUCKETS) << shift;
        base + ((1u64 << shift) - 1)
    }

    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[Self::bucket(ns)].fetch_add(1, Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The duration below which a fraction `q` (0.0 to 1.0) of the recorded ones fall, rounded up
    /// to its bucket's upper bound; `None` when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        // The rank of the wanted value, 1-based: at least the first, at most the last.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_nanos(Self::upper(i)));
            }
        }
        None
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

    #[test]
    fn counter_names_are_unique_snake_case_and_follow_the_values() {
        let m = FsMetrics::new();
        let names: Vec<&str> = m.counters().iter().map(|(n, _)| *n).collect();
        let unique: std::collections::HashSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(names.len(), 14 + Refusal::ALL.len());
        for n in &names {
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && !n.starts_with('_')
                    && !n.ends_with('_')
                    && !n.contains("__"),
                "{n}"
            );
        }
        for r in Refusal::ALL {
            assert_eq!(r.counter_name(), format!("refusals_{r}"));
            assert_eq!(r.to_string(), r.as_str());
            m.refuse(r);
            m.refuse(r);
        }
        FsMetrics::add(&m.maps, 3);
        m.set_gauges(2, 4096);
        m.map_latency().record(Duration::from_micros(5));
        let get = |name: &str| {
            m.counters()
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v)
        };
        assert_eq!(get("maps"), Some(3));
        assert_eq!(get("live_mappings"), Some(2));
        assert_eq!(get("mapped_bytes"), Some(4096));
        assert_eq!(get("map_latency_count"), Some(1));
        assert_eq!(get("unmaps"), Some(0));
        for r in Refusal::ALL {
            assert_eq!(get(r.counter_name()), Some(2), "{r}");
        }
    }

    #[test]
    fn every_value_falls_in_a_bucket_whose_bound_is_within_an_eighth() {
        let mut prev_upper = None;
        for b in 0..BUCKETS {
            let up = LatencyHistogram::upper(b);
            if let Some(p) = prev_upper {
                assert_eq!(
                    LatencyHistogram::bucket(p + 1),
                    b,
                    "first value of bucket {b}"
                );
            }
            assert_eq!(LatencyHistogram::bucket(up), b, "last value of bucket {b}");
            prev_upper = Some(up);
        }
        assert_eq!(prev_upper, Some(u64::MAX));
        for ns in [1u64, 7, 8, 9, 100, 1_000, 12_345, 1 << 40, u64::MAX / 3] {
            let up = LatencyHistogram::upper(LatencyHistogram::bucket(ns));
            assert!(up >= ns && up - ns <= ns / 8, "{ns} -> {up}");
        }
    }

    #[test]
    fn quantiles_follow_the_recorded_values() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us));
        }
        h.record(Duration::from_secs(1));
        assert_eq!(h.count(), 101);
        let p50 = h.quantile(0.5).unwrap();
        assert!(
            p50 >= Duration::from_micros(51) && p50 <= Duration::from_micros(58),
            "{p50:?}"
        );
        let p99 = h.quantile(0.99).unwrap();
        assert!(
            p99 >= Duration::from_micros(100) && p99 <= Duration::from_micros(113),
            "{p99:?}"
        );
        let max = h.quantile(1.0).unwrap();
        assert!(max >= Duration::from_secs(1) && max <= Duration::from_millis(1125));
        assert!(h.quantile(0.0).unwrap() <= Duration::from_nanos(1125));
    }
}
