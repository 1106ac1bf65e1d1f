// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The lean checker: the checks `BackendChannel` makes on SHMEM_MAP and SHMEM_UNMAP, written in
//! the least code, for the raw server to run before its `mmap` (the `handler/lean*` sides). It
//! bounds from below what any server that checks what the crate checks costs: the floor plus
//! these checks, nothing else.
//!
//! It checks the header (code, version, flags, size, nothing past the body), the descriptor
//! count, the shmid, the map flags, the length, overflow, bounds, page alignment and that the
//! file range fits `off_t`; then, under a `Mutex`, a generation, the overlap rule (a flat bitmap
//! of mapped pages), the exact-unmap rule (a flat bitmap of the pages where a mapping starts) and
//! a bound on live mappings. It keeps two counters. It has none of what the crate has beyond
//! that: no latency clock, gauges, policies, ballast or refusal log, and one dialect.

use std::mem::size_of;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use virtio_fs_dax::protocol::{
    standard, VhostUserMMap, FLAG_NEED_REPLY, HEADER_SIZE, MMAP_FLAG_WRITABLE, VERSION,
    VERSION_MASK,
};
use vm_memory::ByteValued;

use crate::floor::RawRange;
use crate::M2;

const PAGE_SHIFT: u32 = 12;
const PAGE_MASK: u64 = (1 << PAGE_SHIFT) - 1;
/// Header flags a request may carry: the version and NEED_REPLY.
const FLAGS_ALLOWED: u32 = VERSION_MASK | FLAG_NEED_REPLY;
/// Live mappings allowed at once: a bound as the crate keeps one (its own is set per window),
/// with room for the 32k case.
const MAX_LIVE: usize = 65_000;
const EINVAL: i64 = -(libc::EINVAL as i64);

/// Calls `f(word, mask)` for the words of a page bitmap covering pages `[first, first + n)`,
/// `n > 0`, while it returns `true`; `true` when it always did.
#[inline(always)]
fn words(first: u64, n: u64, mut f: impl FnMut(usize, u64) -> bool) -> bool {
    let last = first + n - 1;
    let (fw, lw) = ((first >> 6) as usize, (last >> 6) as usize);
    let first_mask = !0u64 << (first & 63);
    let last_mask = !0u64 >> (63 - (last & 63));
    if fw == lw {
        return f(fw, first_mask & last_mask);
    }
    f(fw, first_mask) && (fw + 1..lw).all(|w| f(w, !0)) && f(lw, last_mask)
}

fn bit(v: &[u64], page: u64) -> bool {
    v[(page >> 6) as usize] >> (page & 63) & 1 != 0
}

/// The pages of a window, as the overlap and exact-unmap rules need them.
struct Table {
    /// Bit per page: mapped.
    used: Vec<u64>,
    /// Bit per page: a mapping starts here.
    starts: Vec<u64>,
    live: usize,
}

impl Table {
    fn mark(&mut self, first: u64, n: u64, mapped: bool) {
        let used = &mut self.used;
        words(first, n, |w, mask| {
            if mapped {
                used[w] |= mask;
            } else {
                used[w] &= !mask;
            }
            true
        });
        let (w, b) = ((first >> 6) as usize, 1u64 << (first & 63));
        if mapped {
            self.starts[w] |= b;
            self.live += 1;
        } else {
            self.starts[w] &= !b;
            self.live -= 1;
        }
    }

    fn is_free(&self, first: u64, n: u64) -> bool {
        words(first, n, |w, mask| self.used[w] & mask == 0)
    }

    /// Whether pages `[first, first + n)` are exactly one mapping: it starts at `first`, covers
    /// every page, no other starts inside it, and it ends at `first + n` (that page is free or
    /// starts another).
    fn is_exact(&self, first: u64, n: u64) -> bool {
        let first_word = (first >> 6) as usize;
        let (used, starts) = (&self.used, &self.starts);
        bit(starts, first)
            && words(first, n, |w, mask| {
                let start_bits = if w == first_word {
                    1 << (first & 63)
                } else {
                    0
                };
                used[w] & mask == mask && starts[w] & mask == start_bits
            })
            && (!bit(used, first + n) || bit(starts, first + n))
    }
}

pub struct Lean {
    table: Mutex<Table>,
    size: u64,
    generation: AtomicU64,
    requests: AtomicU64,
    done: AtomicU64,
}

impl Lean {
    /// For a window of `size` bytes, nothing mapped.
    pub fn new(size: u64) -> Self {
        // One word more than the pages need: the unmap rule looks at the page past a range.
        let n = (size >> PAGE_SHIFT).div_ceil(64) as usize + 1;
        Lean {
            table: Mutex::new(Table {
                used: vec![0; n],
                starts: vec![0; n],
                live: 0,
            }),
            size,
            generation: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            done: AtomicU64::new(0),
        }
    }

    /// Records `ranges` 2 MiB mappings from the start, as [`RawRange::fill`] makes them.
    pub fn fill(&mut self, ranges: u64) {
        let table = self.table.get_mut().unwrap();
        for i in 0..ranges {
            table.mark((i * M2) >> PAGE_SHIFT, M2 >> PAGE_SHIFT, true);
        }
    }

    /// Checks and serves one message (`got` bytes of it received, `fd` the descriptor that came
    /// along) in `range`; returns the reply's value.
    #[inline(never)]
    pub fn handle(&self, range: &RawRange, msg: &[u8], got: usize, fd: Option<RawFd>) -> i64 {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let (hdr, body) = msg.split_at(HEADER_SIZE);
        let word = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
        let (code, flags, size) = (word(0), word(4), word(8) as usize);
        let map = code == standard::SHMEM_MAP;
        if !(map || code == standard::SHMEM_UNMAP)
            || flags & VERSION_MASK != VERSION
            || flags & !FLAGS_ALLOWED != 0
            || size != size_of::<VhostUserMMap>()
            || got != HEADER_SIZE + size
            || fd.is_some() != map
        {
            return EINVAL;
        }
        let m = VhostUserMMap::from_slice(&body[..size]).unwrap();
        let (offset, len, fd_offset) = (m.shm_offset, m.len, m.fd_offset);
        if m.shmid != 0
            || m.flags & !MMAP_FLAG_WRITABLE != 0
            || len == 0
            || offset.checked_add(len).is_none_or(|e| e > self.size)
            || (offset | len | fd_offset) & PAGE_MASK != 0
            || fd_offset
                .checked_add(len)
                .is_none_or(|e| e > i64::MAX as u64)
        {
            return EINVAL;
        }
        let mut table = self.table.lock().unwrap();
        if self.generation.load(Ordering::Acquire) != 0 {
            return EINVAL;
        }
        let (first, n) = (offset >> PAGE_SHIFT, len >> PAGE_SHIFT);
        if map {
            if !table.is_free(first, n) {
                return -(libc::EBUSY as i64);
            }
            if table.live >= MAX_LIVE {
                return -(libc::ENOSPC as i64);
            }
            let prot = if m.flags & MMAP_FLAG_WRITABLE != 0 {
                libc::PROT_READ | libc::PROT_WRITE
            } else {
                libc::PROT_READ
            };
            if range
                .remap(offset, len, prot, fd.map(|fd| (fd, fd_offset)))
                .is_err()
            {
                return -(libc::ENOMEM as i64);
            }
        } else {
            if !table.is_exact(first, n) {
                return EINVAL;
            }
            if range.remap(offset, len, libc::PROT_NONE, None).is_err() {
                return -(libc::ENOMEM as i64);
            }
        }
        table.mark(first, n, map);
        self.done.fetch_add(1, Ordering::Relaxed);
        0
    }
}

/// Checks that the lean checker refuses what the crate refuses and serves what it serves, on a
/// reservation of its own: run before a `lean` side is measured, so that a check that stopped
/// working would fail the bench (its CI smoke run too) rather than make the side cheaper.
pub fn self_check() {
    use std::os::fd::AsRawFd;

    use crate::common::{memfd, message, mmap_msg};
    use crate::floor::RawReservation;

    const M4: u64 = 4 << 20;
    let reservation = RawReservation::new(M4);
    let r = &reservation.range;
    let lean = Lean::new(M4);
    let file = memfd(M2);
    let fd = Some(file.as_raw_fd());
    let map = |offset, len| mmap_msg(standard::SHMEM_MAP, offset, len);
    let unmap = |offset, len| mmap_msg(standard::SHMEM_UNMAP, offset, len);
    let call = |msg: &[u8], fd| lean.handle(r, msg, msg.len(), fd);
    let ebusy = -(libc::EBUSY as i64);
    assert_eq!(call(&map(0, M2), fd), 0);
    // Overlap, partly or wholly.
    assert_eq!(call(&map(M2 - 4096, 8192), fd), ebusy);
    assert_eq!(call(&map(0, 4096), fd), ebusy);
    // Bounds, overflow, alignment, length, descriptors, code, size, trailing bytes.
    assert_eq!(call(&map(M4 - 4096, 8192), fd), EINVAL);
    assert_eq!(call(&map(u64::MAX - 4095, 4096), fd), EINVAL);
    assert_eq!(call(&map(M2 + 512, 4096), fd), EINVAL);
    assert_eq!(call(&map(M2, 0), fd), EINVAL);
    assert_eq!(call(&map(M2, 4096), None), EINVAL);
    assert_eq!(call(&unmap(0, M2), fd), EINVAL);
    assert_eq!(call(&mmap_msg(99, M2, 4096), fd), EINVAL);
    assert_eq!(call(&message(standard::SHMEM_MAP, &[0; 8]), fd), EINVAL);
    let mut long = map(M2, 4096);
    long.push(0);
    assert_eq!(lean.handle(r, &long, long.len(), fd), EINVAL);
    // Unmaps must match one mapping exactly.
    assert_eq!(call(&map(M2, 4096), fd), 0);
    assert_eq!(call(&unmap(0, 4096), None), EINVAL);
    assert_eq!(call(&unmap(0, M2 + 4096), None), EINVAL);
    assert_eq!(call(&unmap(M2, 8192), None), EINVAL);
    assert_eq!(call(&unmap(0, M2), None), 0);
    assert_eq!(call(&unmap(0, M2), None), EINVAL);
    assert_eq!(call(&unmap(M2, 4096), None), 0);
    assert_eq!(lean.table.lock().unwrap().live, 0);
}
