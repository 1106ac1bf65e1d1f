// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The requests a lost backend left in flight, when it kept no inflight region: the device
//! returns each to the guest with a FUSE error, so none is replayed to the next backend and the
//! guest's driver waits for none.
//!
//! # What the rings tell, and what they do not
//!
//! The driver has made `avail_idx` chains available and got `used_idx` back, so exactly
//! `avail_idx - used_idx` are outstanding. Which ones: the chains at available positions
//! `[used_idx, avail_idx)`, when the backend completed in the order it took them (virtiofsd
//! without `--thread-pool-size`, the `peers/dax-backend`). Among those, a chain the backend
//! took and one it never read look the same; both are failed (the conservative choice: a
//! request that was never executed fails instead of running twice).
//!
//! A backend that completes out of order (virtiofsd with a thread pool) may have completed a
//! chain at a position at or past `used_idx` while one before it is still outstanding. Nothing in
//! the rings tells which in general; two cases can be seen and are handled: the same head twice
//! in the window, or two chains of the window sharing a descriptor. In both, the later chain was
//! made available after the earlier one came back (the driver reused its head or descriptors),
//! so the earlier one is not returned again (it would hand the driver a head it does not own, or
//! complete the later request twice); it is counted as stale. The bound: with such a backend
//! and no inflight region, an outstanding request before `used_idx` is not found (its request
//! waits until the device is reset), and a completed chain whose descriptors the driver has not
//! reused yet is returned a second time. A backend that completes out of order should offer
//! `INFLIGHT_SHMFD`.

use vm_memory::{Bytes, GuestAddress};

use crate::ring::{Chain, OutOfMemory, SplitRing};

/// Bytes of `struct fuse_in_header` up to and with `unique`.
const IN_HEADER_PREFIX: usize = 16;
/// Bytes of `struct fuse_out_header`.
const OUT_HEADER: usize = 16;

/// What [`fail_in_flight`] did on one queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Failed {
    /// Chains returned to the driver: with a FUSE error reply, or with length 0 (a request
    /// without reply, or a malformed chain).
    pub failed: u64,
    /// Of those, chains returned with length 0 because no reply could be written (buffers
    /// outside guest memory, no room for the reply header, a broken chain).
    pub malformed: u64,
    /// Chains of the window the backend had already completed (see the module documentation),
    /// left alone.
    pub stale: u64,
    /// Where the next backend starts: the available index read.
    pub next_avail: u16,
    /// The rings were inconsistent (more outstanding than the queue holds): nothing returned.
    pub inconsistent: bool,
}

/// Returns every chain at available positions `[used_idx, avail_idx)` of `ring` to the driver:
/// a FUSE reply header with `-errno` and the request's `unique` in its writable buffers (length
/// 16), or length 0 when it has no writable part (`FUSE_FORGET`, `FUSE_BATCH_FORGET`) or is
/// malformed. The used index moves once, after every element is written. The caller signals the
/// driver. Stale chains (see the module documentation) are left alone.
pub(crate) fn fail_in_flight<M: Bytes<GuestAddress>>(
    mem: &M,
    ring: &SplitRing,
    errno: i32,
) -> Result<Failed, OutOfMemory> {
    let avail = ring.avail_idx(mem)?;
    let used = ring.used_idx(mem)?;
    let mut out = Failed {
        next_avail: avail,
        ..Failed::default()
    };
    let outstanding = avail.wrapping_sub(used);
    if outstanding == 0 {
        return Ok(out);
    }
    if ring.size == 0 || outstanding > ring.size {
        out.inconsistent = true;
        return Ok(out);
    }
    let mut chains = Vec::with_capacity(usize::from(outstanding));
    for k in 0..outstanding {
        let head = ring.avail_head(mem, used.wrapping_add(k))?;
        chains.push(ring.chain(mem, head));
    }
    // From the newest back: a chain sharing its head or a descriptor with a newer one was
    // completed before the newer one was made available.
    let mut taken = vec![false; usize::from(ring.size)];
    let mut live = vec![true; chains.len()];
    for (i, c) in chains.iter().enumerate().rev() {
        let mut seen = c.indices.clone();
        seen.push(c.head);
        if seen
            .iter()
            .any(|&d| taken.get(usize::from(d)).copied().unwrap_or(false))
        {
            live[i] = false;
            out.stale += 1;
            continue;
        }
        for d in seen {
            if let Some(t) = taken.get_mut(usize::from(d)) {
                *t = true;
            }
        }
    }
    let mut next_used = used;
    for (c, _) in chains.iter().zip(&live).filter(|(_, live)| **live) {
        let len = match reply(mem, c, errno) {
            Some(len) => len,
            None => {
                out.malformed += 1;
                0
            }
        };
        ring.write_used(mem, next_used, c.head, len)?;
        next_used = next_used.wrapping_add(1);
        out.failed += 1;
    }
    ring.publish_used(mem, next_used)?;
    Ok(out)
}

/// Writes the error reply of chain `c`: the used length, or `None` when it cannot be written.
fn reply<M: Bytes<GuestAddress>>(mem: &M, c: &Chain, errno: i32) -> Option<u32> {
    if c.malformed.is_some() {
        return None;
    }
    if c.writable.is_empty() {
        // No reply expected (FORGET, BATCH_FORGET): the buffer just goes back.
        return Some(0);
    }
    let mut header = [0u8; IN_HEADER_PREFIX];
    if c.read_prefix(mem, &mut header).ok()? < IN_HEADER_PREFIX
        || c.writable_len() < OUT_HEADER as u64
    {
        return None;
    }
    let mut out = [0u8; OUT_HEADER];
    out[0..4].copy_from_slice(&(OUT_HEADER as u32).to_le_bytes());
    out[4..8].copy_from_slice(&(-errno).to_le_bytes());
    out[8..16].copy_from_slice(&header[8..16]);
    match c.write_prefix(mem, &out) {
        Ok(OUT_HEADER) => Some(OUT_HEADER as u32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const SIZE: u16 = 8;
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;

    struct Guest {
        mem: GuestMemoryMmap,
        ring: SplitRing,
        avail: u16,
    }

    impl Guest {
        fn new() -> Self {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20000)]).unwrap();
            let ring = SplitRing {
                desc: GuestAddress(0x1000),
                avail: GuestAddress(0x2000),
                used: GuestAddress(0x3000),
                size: SIZE,
            };
            Guest {
                mem,
                ring,
                avail: 0,
            }
        }

        fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem
                .write_obj(d, GuestAddress(0x1000 + 16 * u64::from(i)))
                .unwrap();
        }

        /// A request with `unique` in descriptors `i` (header) and `i + 1` (reply, when
        /// `reply`), buffers at 0x8000 + 0x100 * i.
        fn request(&mut self, i: u16, unique: u64, reply: bool) {
            let buf = 0x8000 + 0x100 * u64::from(i);
            let mut h = [0u8; 40];
            h[0..4].copy_from_slice(&40u32.to_le_bytes());
            h[8..16].copy_from_slice(&unique.to_le_bytes());
            self.mem.write_slice(&h, GuestAddress(buf)).unwrap();
            self.mem
                .write_slice(&[0xee; 16], GuestAddress(buf + 0x80))
                .unwrap();
            if reply {
                self.desc(i, buf, 40, NEXT, i + 1);
                self.desc(i + 1, buf + 0x80, 16, WRITE, 0);
            } else {
                self.desc(i, buf, 40, 0, 0);
            }
            self.publish(i);
        }

        fn publish(&mut self, head: u16) {
            let slot = 0x2000 + 4 + 2 * u64::from(self.avail % SIZE);
            self.mem
                .write_obj(head.to_le(), GuestAddress(slot))
                .unwrap();
            self.avail = self.avail.wrapping_add(1);
            self.mem
                .write_obj(self.avail.to_le(), GuestAddress(0x2002))
                .unwrap();
        }

        fn set_used(&self, idx: u16) {
            self.mem
                .write_obj(idx.to_le(), GuestAddress(0x3002))
                .unwrap();
        }

        fn used(&self, pos: u16) -> (u32, u32) {
            let at = 0x3000 + 4 + 8 * u64::from(pos % SIZE);
            (
                self.mem.read_obj(GuestAddress(at)).unwrap(),
                self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
            )
        }

        fn reply(&self, i: u16) -> (u32, i32, u64) {
            let at = 0x8000 + 0x100 * u64::from(i) + 0x80;
            (
                self.mem.read_obj(GuestAddress(at)).unwrap(),
                self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
                self.mem.read_obj(GuestAddress(at + 8)).unwrap(),
            )
        }
    }

    #[test]
    fn every_chain_in_the_window_fails_once() {
        let mut g = Guest::new();
        g.request(0, 10, true);
        g.request(2, 11, true);
        g.request(4, 12, false); // a FORGET: no reply
        g.request(6, 13, true);
        g.set_used(1); // the first came back
        let f = fail_in_flight(&g.mem, &g.ring, libc::EIO).unwrap();
        assert_eq!(
            f,
            Failed {
                failed: 3,
                next_avail: 4,
                ..Failed::default()
            }
        );
        assert_eq!(g.ring.used_idx(&g.mem), Ok(4));
        assert_eq!(g.used(1), (2, 16));
        assert_eq!(g.used(2), (4, 0));
        assert_eq!(g.used(3), (6, 16));
        assert_eq!(g.reply(2), (16, -libc::EIO, 11));
        assert_eq!(g.reply(6), (16, -libc::EIO, 13));
        assert_eq!(
            g.reply(0).0,
            0xeeee_eeee,
            "a completed request is left alone"
        );
        // Nothing left: a second pass changes nothing.
        let again = fail_in_flight(&g.mem, &g.ring, libc::EIO).unwrap();
        assert_eq!((again.failed, again.next_avail), (0, 4));
    }

    #[test]
    fn reused_heads_and_descriptors_are_not_completed_twice() {
        let mut g = Guest::new();
        g.request(0, 1, true);
        g.request(2, 2, true);
        g.request(4, 3, true);
        // The backend completed 2 first (out of order); the driver reused head 2 for 4 and,
        // later, descriptor 5 (request 3's reply) inside a chain headed 6.
        g.request(2, 4, true);
        g.desc(6, 0x9000, 40, NEXT, 5);
        g.publish(6);
        // Requests 2 and 3 came back (used index 2); request 1 is still outstanding.
        g.set_used(2);
        let f = fail_in_flight(&g.mem, &g.ring, libc::EIO).unwrap();
        // Window [2, 5): 4 (stale: its descriptor 5 is in 6's chain), 2 (request 4), 6.
        // Request 1, before the window, is not found: the documented bound.
        assert_eq!((f.failed, f.stale, f.malformed), (2, 1, 0));
        assert_eq!(g.ring.used_idx(&g.mem), Ok(4));
        assert_eq!(g.used(2), (2, 16));
        assert_eq!(g.used(3).0, 6);
        assert_eq!(g.reply(2).2, 4, "the live request with head 2 is answered");

        // The same head twice in the window: request 2 came back first and its head carries
        // request 3 now.
        let mut g = Guest::new();
        g.request(0, 1, true);
        g.request(2, 2, true);
        g.request(2, 3, true);
        g.set_used(1);
        let f = fail_in_flight(&g.mem, &g.ring, libc::EIO).unwrap();
        assert_eq!((f.failed, f.stale), (1, 1));
        assert_eq!(g.ring.used_idx(&g.mem), Ok(2));
        assert_eq!(g.used(1), (2, 16));
        assert_eq!(g.reply(2), (16, -libc::EIO, 3));
    }

    #[test]
    fn malformed_and_inconsistent_rings_never_panic() {
        let mut g = Guest::new();
        // A loop, a header outside guest memory, a reply too small for the header.
        g.desc(0, 0x8000, 40, NEXT, 1);
        g.desc(1, 0x8100, 16, WRITE | NEXT, 0);
        g.publish(0);
        g.desc(2, u64::MAX - 4, 40, NEXT, 3);
        g.desc(3, 0x8300, 16, WRITE, 0);
        g.publish(2);
        g.desc(4, 0x8400, 40, NEXT, 5);
        g.desc(5, 0x8500, 8, WRITE, 0);
        g.publish(4);
        let f = fail_in_flight(&g.mem, &g.ring, libc::EIO).unwrap();
        assert_eq!((f.failed, f.malformed), (3, 3));
        assert_eq!(g.used(0), (0, 0));
        assert_eq!(g.ring.used_idx(&g.mem), Ok(3));
        // More outstanding than the queue holds: nothing is touched.
        g.mem
            .write_obj(100u16.to_le(), GuestAddress(0x2002))
            .unwrap();
        let f = fail_in_flight(&g.mem, &g.ring, libc::EIO).unwrap();
        assert!(f.inconsistent);
        assert_eq!((f.failed, f.next_avail), (0, 100));
        assert_eq!(g.ring.used_idx(&g.mem), Ok(3));
        // Rings outside guest memory: an error, no panic.
        let far = SplitRing {
            avail: GuestAddress(1 << 40),
            ..g.ring
        };
        assert_eq!(fail_in_flight(&g.mem, &far, libc::EIO), Err(OutOfMemory));
    }
}
