// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Pure bookkeeping of the live mappings of a window: range checks, overlap and unmap policies.
//! No syscalls here; [`super::DaxWindow`] applies what this module accepts.

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

/// log2 of the pages one chunk of a [`MappingTable`] covers: 128 MiB of 4 KiB pages. Tests use
/// small chunks of four words, so that ranges cross chunk boundaries often and the words between
/// a range's first and last one in a chunk are looked at too.
#[cfg(not(test))]
const CHUNK_SHIFT: u32 = 15;
#[cfg(test)]
const CHUNK_SHIFT: u32 = 8;
/// Words of 64 pages in a chunk.
const CHUNK_WORDS: u64 = 1 << (CHUNK_SHIFT - 6);

/// The bits of 64 consecutive pages.
#[derive(Clone, Copy, Debug, Default)]
struct Bits {
    /// The page is mapped.
    occupied: u64,
    /// A mapping begins at the page.
    starts: u64,
    /// The page is mapped writable.
    writable: u64,
}

impl Bits {
    /// Forgets the pages of `mask`.
    fn clear(&mut self, mask: u64) {
        self.occupied &= !mask;
        self.starts &= !mask;
        self.writable &= !mask;
    }
}

/// Number of ones in `x`. Without a `popcnt` instruction in the target a count takes a dozen
/// instructions; the words of a table are mostly empty or full, and those need none.
fn ones(x: u64) -> u32 {
    match x {
        0 => 0,
        u64::MAX => 64,
        x => x.count_ones(),
    }
}

/// The words of pages `[first, end)` (`first < end`): the first, the last, and the mask of the
/// range's pages in each.
fn span(first: u64, end: u64) -> (u64, u64, u64, u64) {
    let (head, last) = (first / 64, (end - 1) / 64);
    let head_mask = u64::MAX << (first % 64);
    let last_mask = u64::MAX >> (63 - (end - 1) % 64);
    (head, last, head_mask, last_mask)
}

/// The live mappings of a window, never overlapping, as three bits a page: mapped, a mapping
/// begins here, writable. A mapping runs from a page where one begins to the next such page or
/// the next unmapped page. The bits are kept in chunks of [`CHUNK_WORDS`] words allocated when a
/// page in them is first mapped: an idle table holds no memory, a full one 3 bits a page of the
/// window.
///
/// Ranges given to it are non-empty, page aligned and inside the window (what
/// [`check_range`] lets through), except for [`MappingTable::covers`]. Every operation costs
/// O(1 + pages of the range / 64), whatever the number of live mappings, except
/// [`MappingTable::iter`], which walks the table.
#[derive(Clone)]
pub(crate) struct MappingTable {
    /// The chunks, in page order; `None` where no page was mapped (all bits clear). Empty until
    /// the first mapping.
    chunks: Vec<Option<Box<[Bits]>>>,
    /// log2 of the page size.
    page_shift: u32,
    /// Pages in the window.
    pages: u64,
    /// Live mappings.
    len: usize,
    /// Bytes mapped.
    bytes: u64,
}

impl std::fmt::Debug for MappingTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappingTable")
            .field("mappings", &self.iter().collect::<Vec<_>>())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl MappingTable {
    /// An empty table for a window of `window_size` bytes in pages of `page_size` (a power of
    /// two). Allocates nothing.
    pub fn new(page_size: u64, window_size: u64) -> Self {
        debug_assert!(page_size.is_power_of_two());
        let page_shift = page_size.trailing_zeros();
        MappingTable {
            chunks: Vec::new(),
            page_shift,
            pages: window_size >> page_shift,
            len: 0,
            bytes: 0,
        }
    }

    /// Number of live mappings.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Total bytes mapped.
    pub fn mapped_bytes(&self) -> u64 {
        self.bytes
    }

    /// The pages `[first, end)` of a page aligned range inside the window.
    fn pages_of(&self, offset: u64, len: u64) -> (u64, u64) {
        debug_assert_eq!((offset | len) & ((1 << self.page_shift) - 1), 0);
        let (first, end) = (
            offset >> self.page_shift,
            offset.saturating_add(len) >> self.page_shift,
        );
        assert!(
            end <= self.pages,
            "{offset:#x}+{len:#x} is outside the mapping table"
        );
        (first, end)
    }

    /// Calls `f(first page of the word, its bits, mask of the pages of [first, end) in it)` for
    /// the words of pages `[first, end)` in order, while `f` returns true; returns whether `f`
    /// always did. Words of a chunk that is not allocated (all bits clear) are skipped, but for
    /// the first of the range in that chunk.
    fn scan(&self, first: u64, end: u64, mut f: impl FnMut(u64, Bits, u64) -> bool) -> bool {
        if first >= end {
            return true;
        }
        let (head, last, head_mask, last_mask) = span(first, end);
        // Most ranges lie in one allocated chunk: one lookup.
        if let Some(words) = self.run(head, last) {
            return match words {
                [one] => f(head * 64, *one, head_mask & last_mask),
                [h, mid @ .., l] => {
                    f(head * 64, *h, head_mask)
                        && (head + 1..)
                            .zip(mid)
                            .all(|(w, &bits)| f(w * 64, bits, u64::MAX))
                        && f(last * 64, *l, last_mask)
                }
                [] => true,
            };
        }
        if head == last {
            return f(head * 64, self.bits(first), head_mask & last_mask);
        }
        // The words in between are whole: a constant mask.
        f(head * 64, self.bits(first), head_mask)
            && self.scan_whole(head + 1, last, &mut f)
            && f(last * 64, self.bits(end - 1), last_mask)
    }

    /// [`MappingTable::scan`] of the whole words `[from, to)`.
    fn scan_whole(
        &self,
        mut from: u64,
        to: u64,
        f: &mut impl FnMut(u64, Bits, u64) -> bool,
    ) -> bool {
        while from < to {
            let stop = to.min((from / CHUNK_WORDS + 1) * CHUNK_WORDS);
            let chunk = self.chunks.get((from / CHUNK_WORDS) as usize);
            match chunk.and_then(|c| c.as_deref()) {
                Some(words) => {
                    let at = (from % CHUNK_WORDS) as usize;
                    let words = &words[at..at + (stop - from) as usize];
                    for (word, &bits) in (from..).zip(words) {
                        if !f(word * 64, bits, u64::MAX) {
                            return false;
                        }
                    }
                }
                None => {
                    if !f(from * 64, Bits::default(), u64::MAX) {
                        return false;
                    }
                }
            }
            from = stop;
        }
        true
    }

    /// Calls `f(bits, mask of the pages of [first, end) in them)` for the words of pages
    /// `[first, end)` in order, allocating missing chunks when `alloc`; else chunks that are not
    /// allocated are skipped (their bits stay clear).
    fn update(&mut self, first: u64, end: u64, alloc: bool, mut f: impl FnMut(&mut Bits, u64)) {
        if first >= end {
            return;
        }
        let (head, last, head_mask, last_mask) = span(first, end);
        // Most ranges lie in one chunk: one lookup.
        if head / CHUNK_WORDS == last / CHUNK_WORDS {
            let Some(words) = self.chunk_mut((head / CHUNK_WORDS) as usize, alloc) else {
                return;
            };
            let at = (head % CHUNK_WORDS) as usize;
            match &mut words[at..=at + (last - head) as usize] {
                [one] => f(one, head_mask & last_mask),
                [h, mid @ .., l] => {
                    f(h, head_mask);
                    mid.iter_mut().for_each(|bits| f(bits, u64::MAX));
                    f(l, last_mask);
                }
                [] => {}
            }
            return;
        }
        if let Some(bits) = self.word_mut(head, alloc) {
            f(bits, head_mask);
        }
        // The words in between are whole: a constant mask.
        let mut from = head + 1;
        while from < last {
            let stop = last.min((from / CHUNK_WORDS + 1) * CHUNK_WORDS);
            if let Some(words) = self.chunk_mut((from / CHUNK_WORDS) as usize, alloc) {
                let at = (from % CHUNK_WORDS) as usize;
                for bits in &mut words[at..at + (stop - from) as usize] {
                    f(bits, u64::MAX);
                }
            }
            from = stop;
        }
        if let Some(bits) = self.word_mut(last, alloc) {
            f(bits, last_mask);
        }
    }

    /// Words `[head, last]`, if they lie in one allocated chunk.
    fn run(&self, head: u64, last: u64) -> Option<&[Bits]> {
        let chunk = head / CHUNK_WORDS;
        if last / CHUNK_WORDS != chunk {
            return None;
        }
        let words = self.chunks.get(chunk as usize)?.as_deref()?;
        words.get((head % CHUNK_WORDS) as usize..=(last % CHUNK_WORDS) as usize)
    }

    /// Word `word`, its chunk allocated first if missing and `alloc`.
    fn word_mut(&mut self, word: u64, alloc: bool) -> Option<&mut Bits> {
        let words = self.chunk_mut((word / CHUNK_WORDS) as usize, alloc)?;
        words.get_mut((word % CHUNK_WORDS) as usize)
    }

    /// The words of chunk `chunk`, allocated first if missing and `alloc`.
    fn chunk_mut(&mut self, chunk: usize, alloc: bool) -> Option<&mut [Bits]> {
        let words = self.pages.div_ceil(64);
        if alloc && self.chunks.is_empty() {
            self.chunks
                .resize(words.div_ceil(CHUNK_WORDS) as usize, None);
        }
        let slot = self.chunks.get_mut(chunk)?;
        if alloc && slot.is_none() {
            let len = CHUNK_WORDS.min(words - chunk as u64 * CHUNK_WORDS);
            *slot = Some(vec![Bits::default(); len as usize].into_boxed_slice());
        }
        slot.as_deref_mut()
    }

    /// The bits of the word of page `page` (clear where no chunk is allocated).
    fn bits(&self, page: u64) -> Bits {
        match self.chunks.get((page >> CHUNK_SHIFT) as usize) {
            Some(Some(words)) => words[(page / 64 % CHUNK_WORDS) as usize],
            _ => Bits::default(),
        }
    }

    /// Whether bit `bit` of page `page` is set (clear past the window).
    fn bit(&self, page: u64, bit: impl Fn(&Bits) -> u64) -> bool {
        page < self.pages && bit(&self.bits(page)) >> (page % 64) & 1 != 0
    }

    /// Whether page `page` is mapped by a mapping that begins before it.
    fn continued(&self, page: u64) -> bool {
        self.bit(page, |b| b.occupied & !b.starts)
    }

    /// The first page of `[first, end)` whose bit `bit` is set.
    fn find(&self, first: u64, end: u64, bit: impl Fn(&Bits) -> u64) -> Option<u64> {
        let mut found = None;
        self.scan(first, end, |at, bits, mask| {
            let hits = bit(&bits) & mask;
            if hits != 0 {
                found = Some(at + u64::from(hits.trailing_zeros()));
            }
            hits == 0
        });
        found
    }

    /// The live mappings in offset order.
    pub fn iter(&self) -> impl Iterator<Item = Mapping> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let first = self.find(at, self.pages, |b| b.starts)?;
            at = self
                .find(first + 1, self.pages, |b| !b.occupied | b.starts)
                .unwrap_or(self.pages);
            let access = match self.bit(first, |b| b.writable) {
                true => Access::ReadWrite,
                false => Access::ReadOnly,
            };
            Some(Mapping {
                offset: first << self.page_shift,
                len: (at - first) << self.page_shift,
                access,
            })
        })
    }

    /// Whether `[offset, offset + len)` is exactly one live mapping.
    pub fn is_exact(&self, offset: u64, len: u64) -> bool {
        let (first, end) = self.pages_of(offset, len);
        if first >= end {
            return false;
        }
        // Mapped throughout, a mapping begins at `first` and none after it (`scan` passes the
        // word of `first` first).
        let mut starts = 1 << (first % 64);
        let one = self.scan(first, end, |_, bits, mask| {
            let exact = bits.occupied & mask == mask && bits.starts & mask == starts;
            starts = 0;
            exact
        });
        one && !self.continued(end)
    }

    /// How the number of live mappings changes when `[offset, offset + len)` is forgotten:
    /// pieces kept at either end, less the mappings it touches.
    pub fn remove_delta(&self, offset: u64, len: u64) -> isize {
        let (first, end) = self.pages_of(offset, len);
        let mut starts = 0;
        self.scan(first, end, |_, bits, mask| {
            starts += ones(bits.starts & mask) as isize;
            true
        });
        // A mapping cut at `first` keeps its head (and was touched); one cut at `end`, its tail.
        isize::from(self.continued(end)) - starts
    }

    /// Whether a map of `[offset, offset + len)` is allowed under `policy`.
    pub fn check_map(
        &self,
        offset: u64,
        len: u64,
        policy: OverlapPolicy,
    ) -> Result<(), RangeError> {
        let (first, end) = self.pages_of(offset, len);
        if self.find(first, end, |b| b.occupied).is_none() {
            return Ok(());
        }
        match policy {
            OverlapPolicy::Replace => Ok(()),
            OverlapPolicy::ReplaceExact if self.is_exact(offset, len) => Ok(()),
            OverlapPolicy::ReplaceExact | OverlapPolicy::Reject => Err(RangeError::Busy),
        }
    }

    /// Whether no live mapping has a page in `[offset, offset + len)`.
    pub fn is_free(&self, offset: u64, len: u64) -> bool {
        let (first, end) = self.pages_of(offset, len);
        self.find(first, end, |b| b.occupied).is_none()
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
            UnmapPolicy::Exact if self.is_exact(offset, len) => Ok(()),
            UnmapPolicy::Exact => Err(RangeError::NotMapped),
        }
    }

    /// Records a mapping, trimming or splitting whatever it covers: [`MappingTable::remove`],
    /// then [`MappingTable::insert_free`].
    pub fn insert(&mut self, offset: u64, len: u64, access: Access) {
        self.remove(offset, len);
        self.insert_free(offset, len, access);
    }

    /// Records a mapping over a range that must be free (as [`MappingTable::is_free`] says).
    pub fn insert_free(&mut self, offset: u64, len: u64, access: Access) {
        debug_assert!(len > 0 && self.is_free(offset, len));
        let (first, end) = self.pages_of(offset, len);
        let writable = match access {
            Access::ReadWrite => u64::MAX,
            Access::ReadOnly => 0,
        };
        // `update` passes the word of `first` first.
        let mut start = 1 << (first % 64);
        self.update(first, end, true, |bits, mask| {
            bits.occupied |= mask;
            bits.starts |= start;
            bits.writable |= mask & writable;
            start = 0;
        });
        self.len += 1;
        self.bytes += len;
    }

    /// Forgets `[offset, offset + len)`, trimming or splitting mappings it covers in part.
    pub fn remove(&mut self, offset: u64, len: u64) {
        let (first, end) = self.pages_of(offset, len);
        let tail = self.cut(end);
        let (starts, pages) = self.forget(first, end);
        self.len = self.len + usize::from(tail) - starts;
        self.bytes -= pages << self.page_shift;
    }

    /// Removes `[offset, offset + len)`, which must be exactly one live mapping (as
    /// [`MappingTable::is_exact`] says): what [`MappingTable::remove`] does then, without
    /// counting the bits it clears or looking at the neighbours.
    pub fn remove_exact(&mut self, offset: u64, len: u64) {
        debug_assert!(
            self.is_exact(offset, len),
            "{offset:#x}+{len:#x} is not one mapping"
        );
        let (first, end) = self.pages_of(offset, len);
        self.update(first, end, false, |bits, mask| bits.clear(mask));
        self.len -= 1;
        self.bytes -= (end - first) << self.page_shift;
    }

    /// Makes page `end` begin a mapping if a mapping runs on over it; returns whether it did.
    /// A range that ends there then leaves that mapping's tail; one that begins at a page a
    /// mapping runs on over leaves its head as it is.
    fn cut(&mut self, end: u64) -> bool {
        let cut = self.continued(end);
        if cut {
            self.update(end, end + 1, false, |bits, mask| bits.starts |= mask);
        }
        cut
    }

    /// Clears the bits of pages `[first, end)`; returns how many mappings began there and how
    /// many pages were mapped.
    fn forget(&mut self, first: u64, end: u64) -> (usize, u64) {
        let (mut starts, mut pages) = (0, 0);
        self.update(first, end, false, |bits, mask| {
            starts += ones(bits.starts & mask) as usize;
            pages += u64::from(ones(bits.occupied & mask));
            bits.clear(mask);
        });
        (starts, pages)
    }

    /// Forgets everything, and frees what the table held.
    pub fn clear(&mut self) {
        self.chunks = Vec::new();
        self.len = 0;
        self.bytes = 0;
    }

    /// Whether `[offset, offset + len)` is covered by live mappings without gaps, each granting
    /// `write` access when asked. Any range may be asked.
    pub fn covers(&self, offset: u64, len: u64, write: bool) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        if len == 0 {
            return true;
        }
        let (first, end) = (
            offset >> self.page_shift,
            ((end - 1) >> self.page_shift) + 1,
        );
        end <= self.pages
            && self.scan(first, end, |_, bits, mask| {
                let ok = if write { bits.writable } else { bits.occupied };
                ok & mask == mask
            })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use Access::*;

    #[test]
    fn remove_delta_counts_splits_and_removals() {
        let mut t = table();
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

    /// A table for a window of 16 pages.
    fn table() -> MappingTable {
        MappingTable::new(PAGE, 16 * PAGE)
    }

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
        let mut t = table();
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
        let mut t = table();
        t.insert(0, 2 * PAGE, ReadOnly);
        let exact = UnmapPolicy::Exact;
        assert_eq!(t.check_unmap(0, PAGE, exact), Err(RangeError::NotMapped));
        assert_eq!(t.check_unmap(PAGE, PAGE, exact), Err(RangeError::NotMapped));
        assert_eq!(
            t.check_unmap(4 * PAGE, PAGE, exact),
            Err(RangeError::NotMapped)
        );
        assert_eq!(t.check_unmap(0, 2 * PAGE, exact), Ok(()));
        t.remove(0, 2 * PAGE);
        assert_eq!(t.len(), 0);
        assert_eq!(t.mapped_bytes(), 0);
    }

    #[test]
    fn replace_trims_and_splits() {
        let mut t = table();
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
        t.remove(PAGE, 2 * PAGE);
        assert_eq!(t.len(), 3);
        let all: Vec<_> = t.iter().map(|m| (m.offset / PAGE, m.len / PAGE)).collect();
        assert_eq!(all, vec![(0, 1), (3, 1), (4, 4)]);
        assert_eq!(t.mapped_bytes(), 6 * PAGE);
        assert!(!t.covers(0, 4 * PAGE, false));
        t.clear();
        assert_eq!((t.len(), t.mapped_bytes()), (0, 0));
    }

    #[test]
    fn covers_edges() {
        let mut t = table();
        assert!(!t.covers(0, PAGE, false));
        t.insert(PAGE, PAGE, ReadOnly);
        t.insert(2 * PAGE, PAGE, ReadOnly);
        assert!(t.covers(PAGE, 2 * PAGE, false));
        assert!(t.covers(PAGE + 10, 10, false));
        assert!(!t.covers(0, 2 * PAGE, false));
        assert!(!t.covers(2 * PAGE, 2 * PAGE, false));
        assert!(!t.covers(u64::MAX, 2, false));
    }

    /// The table as it was kept before the bitmaps: a B-tree of the mappings by offset, the
    /// reference the bitmaps are checked against.
    #[derive(Clone, Debug, Default)]
    struct Model {
        map: BTreeMap<u64, (u64, Access)>,
        bytes: u64,
    }

    impl Model {
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
            before.into_iter().chain(self.map.range(offset..end)).map(
                |(&offset, &(len, access))| Mapping {
                    offset,
                    len,
                    access,
                },
            )
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

    /// xorshift64: a fixed, dependency-free sequence.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// A number in `0..n` (`n > 0`).
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A page range `(first, pages)` of a window of `pages` pages: often a live mapping of the
    /// model (exactly, one page wider or narrower at either end, or running on over the next
    /// mappings), else anywhere, short or long, near a chunk boundary or not.
    fn pick(rng: &mut Rng, model: &Model, page: u64, pages: u64) -> (u64, u64) {
        let live: Vec<Mapping> = model.iter().collect();
        let (first, len) = if !live.is_empty() && rng.below(2) == 0 {
            let i = rng.below(live.len() as u64) as usize;
            let m = live[i];
            let (mut first, mut end) = (m.offset / page, (m.offset + m.len) / page);
            match rng.below(8) {
                0 => first = first.saturating_sub(1),
                1 => first += 1,
                2 => end += 1,
                3 => end -= 1,
                4 => {
                    let j = (i + rng.below(3) as usize).min(live.len() - 1);
                    end = (live[j].offset + live[j].len) / page;
                }
                _ => {}
            }
            (first.min(pages - 1), end.saturating_sub(first).max(1))
        } else {
            let first = match rng.below(3) {
                // Around a chunk boundary.
                0 => {
                    let boundary = rng.below(pages.div_ceil(1 << CHUNK_SHIFT) + 1) << CHUNK_SHIFT;
                    (boundary + rng.below(8)).saturating_sub(4)
                }
                _ => rng.below(pages),
            };
            let len = match rng.below(8) {
                0 => rng.below(pages) + 1,
                1..=3 => rng.below(80) + 1,
                _ => rng.below(6) + 1,
            };
            (first.min(pages - 1), len)
        };
        (first, len.min(pages - first))
    }

    /// Runs `steps` random operations on a table of `pages` pages of `page` bytes and on the
    /// model, comparing every answer.
    fn differential(seed: u64, page: u64, pages: u64, steps: usize) {
        let mut table = MappingTable::new(page, pages * page);
        let mut model = Model::default();
        let mut rng = Rng(seed);
        for step in 0..steps {
            let (first, n) = pick(&mut rng, &model, page, pages);
            let (offset, len) = (first * page, n * page);
            let at = format!("seed {seed:#x} step {step}: {first}+{n} in {pages} pages");
            for policy in [
                OverlapPolicy::Reject,
                OverlapPolicy::ReplaceExact,
                OverlapPolicy::Replace,
            ] {
                let (got, want) = (
                    table.check_map(offset, len, policy),
                    model.check_map(offset, len, policy),
                );
                assert_eq!(got, want, "{at}: check_map {policy:?}");
            }
            for policy in [UnmapPolicy::Exact, UnmapPolicy::Any] {
                let (got, want) = (
                    table.check_unmap(offset, len, policy),
                    model.check_unmap(offset, len, policy),
                );
                assert_eq!(got, want, "{at}: check_unmap {policy:?}");
            }
            let exact = model.is_exact(offset, len);
            assert_eq!(table.is_exact(offset, len), exact, "{at}: is_exact");
            let free = model.check_map(offset, len, OverlapPolicy::Reject).is_ok();
            assert_eq!(table.is_free(offset, len), free, "{at}: is_free");
            let delta = model.remove_delta(offset, len);
            assert_eq!(table.remove_delta(offset, len), delta, "{at}: remove_delta");
            // `covers` takes any range: unaligned, empty, past the window.
            let (c_offset, c_len) = match rng.below(3) {
                0 => (offset, len),
                1 => (offset + rng.below(page), rng.below(len + page)),
                _ => (rng.below((pages + 2) * page), rng.below(4 * page)),
            };
            for write in [false, true] {
                let (got, want) = (
                    table.covers(c_offset, c_len, write),
                    model.covers(c_offset, c_len, write),
                );
                assert_eq!(got, want, "{at}: covers {c_offset:#x}+{c_len:#x} {write}");
            }
            let access = if rng.below(2) == 0 {
                ReadOnly
            } else {
                ReadWrite
            };
            match rng.below(16) {
                // A map as the window does it under each policy.
                0..=5 => {
                    let policy = [
                        OverlapPolicy::Reject,
                        OverlapPolicy::ReplaceExact,
                        OverlapPolicy::Replace,
                    ][rng.below(3) as usize];
                    if model.check_map(offset, len, policy).is_ok() {
                        // As the window does: a free range takes the short way.
                        if table.is_free(offset, len) {
                            table.insert_free(offset, len, access);
                        } else {
                            table.insert(offset, len, access);
                        }
                        model.insert(offset, len, access);
                    }
                }
                // An unmap under each policy.
                6..=12 => {
                    let policy = [UnmapPolicy::Exact, UnmapPolicy::Any][rng.below(2) as usize];
                    if model.check_unmap(offset, len, policy).is_ok() {
                        // As the window does: an exact unmap removes the one mapping it named.
                        match policy {
                            UnmapPolicy::Exact => table.remove_exact(offset, len),
                            UnmapPolicy::Any => table.remove(offset, len),
                        }
                        model.remove(offset, len);
                    }
                }
                13 | 14 => {
                    table.insert(offset, len, access);
                    model.insert(offset, len, access);
                }
                _ if rng.below(40) == 0 => {
                    table.clear();
                    model.clear();
                }
                _ => {}
            }
            assert_eq!(table.len(), model.len(), "{at}: len");
            assert_eq!(table.mapped_bytes(), model.mapped_bytes(), "{at}: bytes");
            assert!(table.iter().eq(model.iter()), "{at}: iter");
        }
    }

    #[test]
    fn agrees_with_the_btree_model() {
        // Three chunks and a part of a word; exactly two chunks; less than a word, in one short
        // chunk. 4 KiB and 64 KiB pages.
        for (seed, page, pages) in [
            (0x9e37_79b9_7f4a_7c15, PAGE, 3 * (1 << CHUNK_SHIFT) + 16),
            (0x2545_f491_4f6c_dd1d, PAGE, 3 * (1 << CHUNK_SHIFT) + 16),
            (0xdead_beef_cafe_f00d, 1 << 16, 2 * (1 << CHUNK_SHIFT)),
            (0x0123_4567_89ab_cdef, PAGE, 40),
        ] {
            // Miri runs this module too (scripts/test.sh), at a thousandth of the speed.
            differential(seed, page, pages, if cfg!(miri) { 300 } else { 6000 });
        }
    }

    #[test]
    // A 64 GiB window of test-sized chunks is 65,536 chunk slots to walk: minutes under Miri,
    // which runs the differential test over the same code instead.
    #[cfg_attr(miri, ignore)]
    fn idle_table_holds_nothing() {
        // A 64 GiB window.
        let mut t = MappingTable::new(PAGE, 64 << 30);
        assert_eq!(t.chunks.capacity(), 0);
        assert!(!t.covers(0, PAGE, false));
        assert_eq!(t.iter().count(), 0);
        assert_eq!(t.check_map(0, 64 << 30, OverlapPolicy::Reject), Ok(()));
        t.remove(0, 64 << 30);
        assert_eq!(t.chunks.capacity(), 0);
        // A mapping allocates the chunks it lies in and no other.
        let allocated = |t: &MappingTable| t.chunks.iter().filter(|c| c.is_some()).count() as u64;
        t.insert(5 << 30, PAGE, ReadWrite);
        assert_eq!(allocated(&t), 1);
        t.insert(6 << 30, 2 << 20, ReadOnly);
        assert_eq!(allocated(&t), 1 + (2 << 20) / (PAGE << CHUNK_SHIFT));
        let all: Vec<_> = t.iter().collect();
        let want = [
            Mapping::new(5 << 30, PAGE, ReadWrite),
            Mapping::new(6 << 30, 2 << 20, ReadOnly),
        ];
        assert_eq!(all, want);
        t.clear();
        assert_eq!(t.chunks.capacity(), 0);
    }

    #[test]
    // A 64 GiB window of test-sized chunks is 65,536 chunk slots to walk: minutes under Miri,
    // which runs the differential test over the same code instead.
    #[cfg_attr(miri, ignore)]
    fn mappings_across_chunks() {
        let chunk = PAGE << CHUNK_SHIFT;
        let mut t = MappingTable::new(PAGE, 4 * chunk);
        // One mapping over three chunks, exact, then split at both ends by a hole in the middle.
        t.insert(chunk - PAGE, 2 * chunk + 2 * PAGE, ReadOnly);
        assert!(t.is_exact(chunk - PAGE, 2 * chunk + 2 * PAGE));
        assert!(!t.is_exact(chunk - PAGE, 2 * chunk + PAGE));
        assert_eq!(t.remove_delta(chunk, PAGE), 1);
        t.remove(2 * chunk - PAGE, 2 * PAGE);
        let all: Vec<_> = t.iter().map(|m| (m.offset, m.len)).collect();
        assert_eq!(all, vec![(chunk - PAGE, chunk), (2 * chunk + PAGE, chunk)]);
        assert_eq!((t.len(), t.mapped_bytes()), (2, 2 * chunk));
        assert!(t.covers(chunk - PAGE, chunk, false));
        assert!(!t.covers(chunk - PAGE, chunk + PAGE, false));
    }
}
