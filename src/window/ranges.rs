// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Pure bookkeeping of the live mappings of a window: range checks, overlap and unmap policies.
//! No syscalls here; [`super::DaxWindow`] applies what this module accepts.

use std::collections::BTreeMap;

use crate::protocol::Access;

/// What a map request may do to live mappings it overlaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OverlapPolicy {
    /// Any overlap is refused (`EBUSY`). The vhost-user specification's rule.
    Reject,
    /// Overlap is refused, except a map of exactly the range of one live mapping, which replaces
    /// it. This is what a Linux guest needs on the standard dialect: it upgrades a read-only
    /// range to writable by sending SETUPMAPPING again for the same range.
    ReplaceExact,
    /// Any overlap replaces what it covers, as `MAP_FIXED` does. Legacy backends expect this.
    Replace,
}

/// What an unmap request must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnmapPolicy {
    /// The range must be exactly one live mapping (`ENOENT` otherwise). The specification's rule.
    Exact,
    /// Any range inside the window; mappings are trimmed or split, unmapped parts ignored.
    Any,
}

/// The pair of policies a window applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    /// Overlap handling for maps.
    pub overlap: OverlapPolicy,
    /// Matching rule for unmaps.
    pub unmap: UnmapPolicy,
}

impl Policy {
    /// Specification-strict: overlap refused, unmap must match exactly one mapping.
    pub const STANDARD: Policy = Policy {
        overlap: OverlapPolicy::Reject,
        unmap: UnmapPolicy::Exact,
    };
    /// [`Policy::STANDARD`] plus exact-range replace for the Linux guest's writable upgrade.
    pub const STANDARD_REPLACE: Policy = Policy {
        overlap: OverlapPolicy::ReplaceExact,
        unmap: UnmapPolicy::Exact,
    };
    /// What legacy FS_MAP / FS_UNMAP backends expect: overlap replaces, unmap any range.
    pub const LEGACY: Policy = Policy {
        overlap: OverlapPolicy::Replace,
        unmap: UnmapPolicy::Any,
    };
}

/// Why a range was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RangeError {
    /// `offset + len` overflows.
    Overflow,
    /// The range ends past the window.
    OutOfWindow,
    /// Offset, length or file offset is not page aligned.
    Misaligned,
    /// Zero length.
    Empty,
    /// Overlaps a live mapping the policy does not let it replace.
    Busy,
    /// An exact unmap that matches no live mapping.
    NotMapped,
    /// The request would leave more live mappings than the window holds.
    Limit,
}

/// Largest file offset the kernel accepts (`off_t` is signed).
const MAX_FILE_END: u64 = i64::MAX as u64;

/// Checks a range against the window size and the page size: overflow, end, alignment. The
/// file offset (if any) must be page aligned too, and `fd_offset + len` must fit `off_t`.
pub(crate) fn check_range(
    offset: u64,
    len: u64,
    fd_offset: Option<u64>,
    window_size: u64,
    page_size: u64,
) -> Result<(), RangeError> {
    if len == 0 {
        return Err(RangeError::Empty);
    }
    let end = offset.checked_add(len).ok_or(RangeError::Overflow)?;
    if let Some(fo) = fd_offset {
        match fo.checked_add(len) {
            Some(file_end) if file_end <= MAX_FILE_END => {}
            _ => return Err(RangeError::Overflow),
        }
    }
    if end > window_size {
        return Err(RangeError::OutOfWindow);
    }
    let mask = page_size - 1;
    if offset & mask != 0 || len & mask != 0 || fd_offset.unwrap_or(0) & mask != 0 {
        return Err(RangeError::Misaligned);
    }
    Ok(())
}

/// One live mapping, as [`DaxWindow::mappings`](super::DaxWindow::mappings) reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Mapping {
    /// Offset in the window.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// Protection.
    pub access: Access,
}

impl Mapping {
    /// A mapping of `len` bytes at window offset `offset` with `access`: what a test compares
    /// [`DaxWindow::mappings`](super::DaxWindow::mappings) with.
    pub fn new(offset: u64, len: u64, access: Access) -> Self {
        Mapping {
            offset,
            len,
            access,
        }
    }
}

/// The live mappings of a window, keyed by offset, never overlapping.
#[derive(Clone, Debug, Default)]
pub(crate) struct MappingTable {
    map: BTreeMap<u64, (u64, Access)>,
    bytes: u64,
}

impl MappingTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of live mappings.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Total bytes mapped.
    pub fn mapped_bytes(&self) -> u64 {
        self.bytes
    }

    /// The live mappings in offset order.
    pub fn iter(&self) -> impl Iterator<Item = Mapping> + '_ {
        self.map.iter().map(|(&offset, &(len, access))| Mapping {
            offset,
            len,
            access,
        })
    }

    /// Live mappings that intersect `[offset, offset + len)`; the range must not overflow.
    fn overlapping(&self, offset: u64, len: u64) -> impl Iterator<Item = Mapping> + '_ {
        let end = offset.saturating_add(len);
        // The one mapping that starts before `offset` may reach into the range.
        let before = self
            .map
            .range(..offset)
            .next_back()
            .filter(|(&o, &(l, _))| o + l > offset);
        before
            .into_iter()
            .chain(self.map.range(offset..end))
            .map(|(&offset, &(len, access))| Mapping {
                offset,
                len,
                access,
            })
    }

    /// Whether `[offset, offset + len)` is exactly one live mapping.
    pub fn is_exact(&self, offset: u64, len: u64) -> bool {
        matches!(self.map.get(&offset), Some(&(l, _)) if l == len)
    }

    /// How the number of live mappings changes when `[offset, offset + len)` is forgotten:
    /// pieces kept at either end, less the mappings it touches. Costs O(log n + k) for the k
    /// mappings it touches.
    pub fn remove_delta(&self, offset: u64, len: u64) -> isize {
        if self.is_exact(offset, len) {
            return -1;
        }
        let end = offset.saturating_add(len);
        self.overlapping(offset, len)
            .map(|m| isize::from(m.offset < offset) + isize::from(m.offset + m.len > end) - 1)
            .sum()
    }

    /// Whether a map of `[offset, offset + len)` is allowed under `policy`.
    pub fn check_map(
        &self,
        offset: u64,
        len: u64,
        policy: OverlapPolicy,
    ) -> Result<(), RangeError> {
        let mut hits = self.overlapping(offset, len);
        let Some(first) = hits.next() else {
            return Ok(());
        };
        match policy {
            OverlapPolicy::Replace => Ok(()),
            OverlapPolicy::ReplaceExact
                if first.offset == offset && first.len == len && hits.next().is_none() =>
            {
                Ok(())
            }
            OverlapPolicy::ReplaceExact | OverlapPolicy::Reject => Err(RangeError::Busy),
        }
    }

    /// Whether an unmap of `[offset, offset + len)` is allowed under `policy`.
    pub fn check_unmap(
        &self,
        offset: u64,
        len: u64,
        policy: UnmapPolicy,
    ) -> Result<(), RangeError> {
        match policy {
            UnmapPolicy::Any => Ok(()),
            UnmapPolicy::Exact => match self.map.get(&offset) {
                Some(&(l, _)) if l == len => Ok(()),
                _ => Err(RangeError::NotMapped),
            },
        }
    }

    /// Records a mapping, trimming or splitting whatever it covers.
    pub fn insert(&mut self, offset: u64, len: u64, access: Access) {
        self.remove(offset, len);
        self.map.insert(offset, (len, access));
        self.bytes += len;
    }

    /// Forgets `[offset, offset + len)`, trimming or splitting mappings it covers in part.
    /// Returns the number of mappings that were removed whole.
    pub fn remove(&mut self, offset: u64, len: u64) -> usize {
        // The common cases first, with one tree descent and no allocation: the range is exactly
        // one mapping (mappings never overlap, so nothing else can intersect it), or nothing.
        if let Some(&(l, _)) = self.map.get(&offset) {
            if l == len {
                self.map.remove(&offset);
                self.bytes -= len;
                return 1;
            }
        }
        let mut hits = self.overlapping(offset, len).peekable();
        if hits.peek().is_none() {
            return 0;
        }
        let hits: Vec<Mapping> = hits.collect();
        let end = offset.saturating_add(len);
        let mut whole = 0;
        for m in hits {
            self.map.remove(&m.offset);
            let m_end = m.offset + m.len;
            let mut kept = 0;
            if m.offset < offset {
                self.map.insert(m.offset, (offset - m.offset, m.access));
                kept += offset - m.offset;
            }
            if m_end > end {
                self.map.insert(end, (m_end - end, m.access));
                kept += m_end - end;
            }
            if kept == 0 {
                whole += 1;
            }
            self.bytes -= m.len - kept;
        }
        whole
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }

    /// Whether `[offset, offset + len)` is covered by live mappings without gaps, each granting
    /// `write` access when asked.
    pub fn covers(&self, offset: u64, len: u64, write: bool) -> bool {
        let end = match offset.checked_add(len) {
            Some(end) => end,
            None => return false,
        };
        let mut at = offset;
        let start = self
            .map
            .range(..=offset)
            .next_back()
            .map(|(&o, _)| o)
            .unwrap_or(offset);
        for (&o, &(l, access)) in self.map.range(start..) {
            if at >= end {
                break;
            }
            if o > at {
                return false;
            }
            if o + l <= at {
                continue;
            }
            if write && access != Access::ReadWrite {
                return false;
            }
            at = o + l;
        }
        at >= end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Access::*;

    #[test]
    fn remove_delta_counts_splits_and_removals() {
        let mut t = MappingTable::new();
        t.insert(0, 4 * PAGE, ReadOnly);
        t.insert(8 * PAGE, PAGE, ReadOnly);
        t.insert(10 * PAGE, PAGE, ReadOnly);
        for (offset, len) in [
            (0, 4 * PAGE),
            (PAGE, PAGE),
            (0, PAGE),
            (3 * PAGE, 8 * PAGE),
            (5 * PAGE, PAGE),
            (0, 16 * PAGE),
        ] {
            let mut after = t.clone();
            after.remove(offset, len);
            let delta = after.len() as isize - t.len() as isize;
            assert_eq!(t.remove_delta(offset, len), delta, "{offset:#x}+{len:#x}");
        }
    }

    const PAGE: u64 = 4096;

    #[test]
    fn range_checks() {
        let ok = check_range(0, PAGE, Some(PAGE), 16 * PAGE, PAGE);
        assert_eq!(ok, Ok(()));
        assert_eq!(
            check_range(0, 0, None, 16 * PAGE, PAGE),
            Err(RangeError::Empty)
        );
        assert_eq!(
            check_range(u64::MAX - PAGE + 1, PAGE, None, 16 * PAGE, PAGE),
            Err(RangeError::Overflow)
        );
        assert_eq!(
            check_range(0, PAGE, Some(u64::MAX), 16 * PAGE, PAGE),
            Err(RangeError::Overflow)
        );
        // Page aligned, no u64 overflow, but past what off_t can hold.
        assert_eq!(
            check_range(0, PAGE, Some(1 << 63), 16 * PAGE, PAGE),
            Err(RangeError::Overflow)
        );
        assert_eq!(
            check_range(0, PAGE, Some((1 << 63) - 2 * PAGE), 16 * PAGE, PAGE),
            Ok(())
        );
        assert_eq!(
            check_range(15 * PAGE, 2 * PAGE, None, 16 * PAGE, PAGE),
            Err(RangeError::OutOfWindow)
        );
        assert_eq!(check_range(15 * PAGE, PAGE, None, 16 * PAGE, PAGE), Ok(()));
        for (o, l, f) in [(1, PAGE, 0), (0, PAGE + 1, 0), (0, PAGE, 512)] {
            assert_eq!(
                check_range(o, l, Some(f), 16 * PAGE, PAGE),
                Err(RangeError::Misaligned)
            );
        }
    }

    #[test]
    fn reject_and_exact_replace() {
        let mut t = MappingTable::new();
        t.insert(2 * PAGE, 2 * PAGE, ReadOnly);
        for (o, l) in [
            (PAGE, 2 * PAGE),
            (3 * PAGE, PAGE),
            (0, 8 * PAGE),
            (2 * PAGE, 2 * PAGE),
        ] {
            assert_eq!(
                t.check_map(o, l, OverlapPolicy::Reject),
                Err(RangeError::Busy)
            );
        }
        // Adjacent ranges are fine.
        assert_eq!(t.check_map(0, 2 * PAGE, OverlapPolicy::Reject), Ok(()));
        assert_eq!(t.check_map(4 * PAGE, PAGE, OverlapPolicy::Reject), Ok(()));
        assert_eq!(
            t.check_map(2 * PAGE, 2 * PAGE, OverlapPolicy::ReplaceExact),
            Ok(())
        );
        assert_eq!(
            t.check_map(2 * PAGE, PAGE, OverlapPolicy::ReplaceExact),
            Err(RangeError::Busy)
        );
        t.insert(2 * PAGE, 2 * PAGE, ReadWrite);
        assert_eq!(t.len(), 1);
        assert_eq!(t.mapped_bytes(), 2 * PAGE);
        assert!(t.covers(2 * PAGE, 2 * PAGE, true));
    }

    #[test]
    fn exact_unmap() {
        let mut t = MappingTable::new();
        t.insert(0, 2 * PAGE, ReadOnly);
        let exact = UnmapPolicy::Exact;
        assert_eq!(t.check_unmap(0, PAGE, exact), Err(RangeError::NotMapped));
        assert_eq!(t.check_unmap(PAGE, PAGE, exact), Err(RangeError::NotMapped));
        assert_eq!(
            t.check_unmap(4 * PAGE, PAGE, exact),
            Err(RangeError::NotMapped)
        );
        assert_eq!(t.check_unmap(0, 2 * PAGE, exact), Ok(()));
        assert_eq!(t.remove(0, 2 * PAGE), 1);
        assert_eq!(t.len(), 0);
        assert_eq!(t.mapped_bytes(), 0);
    }

    #[test]
    fn replace_trims_and_splits() {
        let mut t = MappingTable::new();
        t.insert(0, 8 * PAGE, ReadOnly);
        t.insert(2 * PAGE, 2 * PAGE, ReadWrite);
        let all: Vec<_> = t
            .iter()
            .map(|m| (m.offset / PAGE, m.len / PAGE, m.access))
            .collect();
        assert_eq!(
            all,
            vec![(0, 2, ReadOnly), (2, 2, ReadWrite), (4, 4, ReadOnly)]
        );
        assert_eq!(t.mapped_bytes(), 8 * PAGE);
        assert!(t.covers(0, 8 * PAGE, false));
        assert!(!t.covers(0, 8 * PAGE, true));
        assert!(t.covers(2 * PAGE, 2 * PAGE, true));
        // Unmap any range: spans the boundary of two mappings.
        assert_eq!(t.remove(PAGE, 2 * PAGE), 0);
        let all: Vec<_> = t.iter().map(|m| (m.offset / PAGE, m.len / PAGE)).collect();
        assert_eq!(all, vec![(0, 1), (3, 1), (4, 4)]);
        assert_eq!(t.mapped_bytes(), 6 * PAGE);
        assert!(!t.covers(0, 4 * PAGE, false));
        t.clear();
        assert_eq!((t.len(), t.mapped_bytes()), (0, 0));
    }

    #[test]
    fn covers_edges() {
        let mut t = MappingTable::new();
        assert!(!t.covers(0, PAGE, false));
        t.insert(PAGE, PAGE, ReadOnly);
        t.insert(2 * PAGE, PAGE, ReadOnly);
        assert!(t.covers(PAGE, 2 * PAGE, false));
        assert!(t.covers(PAGE + 10, 10, false));
        assert!(!t.covers(0, 2 * PAGE, false));
        assert!(!t.covers(2 * PAGE, 2 * PAGE, false));
        assert!(!t.covers(u64::MAX, 2, false));
    }
}
