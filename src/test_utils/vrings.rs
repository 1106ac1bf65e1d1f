// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The test backend's side of the vrings: taking requests off the available rings, holding them
//! in flight, completing them, and tracking them in an inflight region (`INFLIGHT_SHMFD`) as
//! the vhost-user specification lays it out for split rings, so that the backend of a later
//! connection resubmits them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};

use vhost::vhost_user::message::VhostUserInflight;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use super::backend::MemRegionRecord;
use crate::ring::{Chain, OutOfMemory, SplitRing};

/// Most bytes of a request's readable buffers [`PoppedRequest::readable`] keeps.
const MAX_READABLE: u64 = 64 << 10;
/// Bytes of a split ring's queue region header in the inflight area: `features` (u64),
/// `version`, `desc_num`, `last_batch_head`, `used_idx` (u16 each).
const REGION_HEADER: u64 = 16;
/// Bytes of one `DescStateSplit`: `inflight` (u8), padding, `next` (u16), `counter` (u64).
const DESC_STATE: u64 = 16;
/// The inflight area's queue regions are aligned to this.
const REGION_ALIGN: u64 = 64;

/// Bytes of one queue's region in the inflight area, for queues of `queue_size`.
pub(crate) fn inflight_queue_region(queue_size: u16) -> u64 {
    (REGION_HEADER + DESC_STATE * u64::from(queue_size)).next_multiple_of(REGION_ALIGN)
}

/// A request the test backend took from a vring ([`TestBackendServer::pop_requests`]).
///
/// [`TestBackendServer::pop_requests`]: super::TestBackendServer::pop_requests
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PoppedRequest {
    /// Queue index.
    pub queue: usize,
    /// The head of its descriptor chain: what [`TestBackendServer::complete`] takes.
    ///
    /// [`TestBackendServer::complete`]: super::TestBackendServer::complete
    pub head: u16,
    /// The bytes of its readable buffers, in order (the first 64 KiB).
    pub readable: Vec<u8>,
    /// Room for the reply: the length of its writable buffers.
    pub writable_len: u64,
    /// Whether it came from the inflight region (resubmitted: a backend of an earlier
    /// connection had taken it and not completed it), not from the available ring.
    pub resubmitted: bool,
}

impl PoppedRequest {
    /// The FUSE request's opcode (`fuse_in_header.opcode`), if the request is long enough.
    pub fn opcode(&self) -> Option<u32> {
        Some(u32::from_le_bytes(
            self.readable.get(4..8)?.try_into().ok()?,
        ))
    }

    /// The FUSE request's `unique` (`fuse_in_header.unique`), if the request is long enough.
    pub fn unique(&self) -> Option<u64> {
        Some(u64::from_le_bytes(
            self.readable.get(8..16)?.try_into().ok()?,
        ))
    }
}

/// An inflight region the backend handed out (`GET_INFLIGHT_FD`) or was given
/// (`SET_INFLIGHT_FD`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InflightRecord {
    /// Size of the area.
    pub mmap_size: u64,
    /// Offset of the area in the file.
    pub mmap_offset: u64,
    /// Queues it tracks.
    pub num_queues: u16,
    /// Entries per queue.
    pub queue_size: u16,
    /// The file's device number (`fstat`): with `ino`, the same region has the same pair.
    pub dev: u64,
    /// The file's inode number.
    pub ino: u64,
}

impl InflightRecord {
    pub(crate) fn new(info: &VhostUserInflight, file: &File) -> io::Result<Self> {
        let meta = file.metadata()?;
        // The message struct is packed: copy the fields out.
        let VhostUserInflight {
            mmap_size,
            mmap_offset,
            num_queues,
            queue_size,
        } = *info;
        Ok(InflightRecord {
            mmap_size,
            mmap_offset,
            num_queues,
            queue_size,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// One vring as the backend serves it.
#[derive(Debug, Default)]
struct Ring {
    /// The next available position to read: `SET_VRING_BASE`, moved by every request taken.
    next_avail: u16,
    /// The next used position: the used index, read when the ring is first used.
    next_used: Option<u16>,
    /// The call eventfd (`SET_VRING_CALL`).
    call: Option<File>,
    /// Chains taken and not completed.
    held: Vec<Chain>,
    /// Heads to hand out before reading the available ring: resubmitted from the inflight
    /// region.
    resubmit: VecDeque<u16>,
}

/// The vrings the backend serves, the guest memory it reads them in and the inflight area.
#[derive(Debug, Default)]
pub(crate) struct Vrings {
    rings: Vec<Ring>,
    guest: Option<GuestMemoryMmap>,
    inflight: Option<(InflightRecord, File)>,
    /// The global counter of the inflight area: the order requests were taken in.
    counter: u64,
}

fn not_found(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, what)
}

fn oom(_: OutOfMemory) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "vring access outside guest memory",
    )
}

impl Vrings {
    /// `n` vrings, nothing served.
    pub fn new(n: usize) -> Self {
        Vrings {
            rings: (0..n).map(|_| Ring::default()).collect(),
            ..Vrings::default()
        }
    }

    fn ring(&mut self, queue: usize) -> io::Result<&mut Ring> {
        self.rings
            .get_mut(queue)
            .ok_or_else(|| not_found(format!("no vring {queue}")))
    }

    /// The memory table changed: map it again at the next use.
    pub fn forget_memory(&mut self) {
        self.guest = None;
    }

    /// `SET_VRING_BASE`.
    pub fn set_base(&mut self, queue: usize, base: u16) {
        if let Ok(r) = self.ring(queue) {
            r.next_avail = base;
            r.next_used = None;
            r.resubmit.clear();
        }
    }

    /// Where the ring is: what `GET_VRING_BASE` answers.
    pub fn next_avail(&self, queue: usize) -> Option<u16> {
        self.rings.get(queue).map(|r| r.next_avail)
    }

    /// `SET_VRING_CALL`.
    pub fn set_call(&mut self, queue: usize, call: Option<File>) {
        if let Ok(r) = self.ring(queue) {
            r.call = call;
        }
    }

    /// `SET_INFLIGHT_FD`.
    pub fn set_inflight(&mut self, info: InflightRecord, file: File) {
        self.inflight = Some((info, file));
    }

    fn memory(&mut self, memory: &[(MemRegionRecord, File)]) -> io::Result<GuestMemoryMmap> {
        if let Some(m) = &self.guest {
            return Ok(m.clone());
        }
        let mut ranges = memory
            .iter()
            .map(|(r, f)| {
                Ok((
                    GuestAddress(r.guest_phys_addr),
                    usize::try_from(r.memory_size).map_err(io::Error::other)?,
                    Some(FileOffset::new(f.try_clone()?, r.mmap_offset)),
                ))
            })
            .collect::<io::Result<Vec<_>>>()?;
        ranges.sort_by_key(|r| r.0);
        let m = GuestMemoryMmap::from_ranges_with_files(ranges)
            .map_err(|e| io::Error::other(format!("mapping guest memory: {e:?}")))?;
        self.guest = Some(m.clone());
        Ok(m)
    }

    /// Whether `queue` is tracked in an inflight area.
    pub fn tracks(&self, queue: usize) -> bool {
        self.region(queue).is_some()
    }

    /// The region of `queue` in the inflight area: the file, the region's offset and its
    /// entry count. `None` without an area (no `SET_INFLIGHT_FD`).
    fn region(&self, queue: usize) -> Option<(&File, u64, u16)> {
        let (info, file) = self.inflight.as_ref()?;
        let (offset, num, size) = (info.mmap_offset, info.num_queues, info.queue_size);
        if queue >= usize::from(num) {
            return None;
        }
        Some((
            file,
            offset + queue as u64 * inflight_queue_region(size),
            size,
        ))
    }

    fn region_u16(&self, queue: usize, at: u64) -> io::Result<Option<u16>> {
        let Some((file, base, _)) = self.region(queue) else {
            return Ok(None);
        };
        let mut b = [0u8; 2];
        file.read_exact_at(&mut b, base + at)?;
        Ok(Some(u16::from_le_bytes(b)))
    }

    fn region_write(&self, queue: usize, at: u64, bytes: &[u8]) -> io::Result<()> {
        if let Some((file, base, _)) = self.region(queue) {
            file.write_all_at(bytes, base + at)?;
        }
        Ok(())
    }

    fn desc_at(head: u16, field: u64) -> u64 {
        REGION_HEADER + DESC_STATE * u64::from(head) + field
    }

    /// The ring starts (`SET_VRING_KICK`). With an inflight area, it is checked as the
    /// specification says for a reconnection: a region never used is initialised; the last
    /// batch of a backend that died between the used index and the region is settled; then every
    /// entry still in flight is queued for resubmission in the order it was taken, and the ring
    /// goes on after them (at the used index plus their count).
    pub fn start(
        &mut self,
        queue: usize,
        ring: &SplitRing,
        memory: &[(MemRegionRecord, File)],
    ) -> io::Result<()> {
        let Some((_, _, desc_num)) = self.region(queue) else {
            return Ok(());
        };
        let mem = self.memory(memory)?;
        let used = ring.used_idx(&mem).map_err(oom)?;
        self.ring(queue)?.next_used = Some(used);
        if self.region_u16(queue, 8)? == Some(0) {
            // version 1, desc_num, used_idx.
            self.region_write(queue, 8, &1u16.to_le_bytes())?;
            self.region_write(queue, 10, &desc_num.to_le_bytes())?;
            self.region_write(queue, 14, &used.to_le_bytes())?;
            return Ok(());
        }
        if self.region_u16(queue, 14)? != Some(used) {
            if let Some(last) = self.region_u16(queue, 12)? {
                if last < desc_num {
                    self.region_write(queue, Self::desc_at(last, 0), &[0])?;
                }
            }
            self.region_write(queue, 14, &used.to_le_bytes())?;
        }
        let mut in_flight = Vec::new();
        if let Some((file, base, _)) = self.region(queue) {
            for head in 0..desc_num {
                let mut d = [0u8; DESC_STATE as usize];
                file.read_exact_at(&mut d, base + Self::desc_at(head, 0))?;
                if d[0] == 1 {
                    let counter = u64::from_le_bytes(d[8..16].try_into().unwrap_or_default());
                    in_flight.push((counter, head));
                }
            }
        }
        in_flight.sort_unstable();
        if let Some(&(last, _)) = in_flight.last() {
            self.counter = self.counter.max(last + 1);
        }
        let n = u16::try_from(in_flight.len()).unwrap_or(u16::MAX);
        let r = self.ring(queue)?;
        r.resubmit = in_flight.into_iter().map(|(_, head)| head).collect();
        r.next_avail = used.wrapping_add(n);
        Ok(())
    }

    /// Takes every request there is on `queue`: the resubmitted ones first, then the available
    /// ring's from where the ring is. Each is held until [`Vrings::complete`], and recorded in
    /// flight in the inflight area.
    pub fn pop(
        &mut self,
        queue: usize,
        ring: &SplitRing,
        memory: &[(MemRegionRecord, File)],
    ) -> io::Result<Vec<PoppedRequest>> {
        let mem = self.memory(memory)?;
        let used = ring.used_idx(&mem).map_err(oom)?;
        let avail = ring.avail_idx(&mem).map_err(oom)?;
        let r = self.ring(queue)?;
        r.next_used.get_or_insert(used);
        let mut heads: Vec<(u16, bool)> = r.resubmit.drain(..).map(|h| (h, true)).collect();
        let new = avail.wrapping_sub(r.next_avail);
        if new > ring.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{new} new requests on a queue of {}", ring.size),
            ));
        }
        for _ in 0..new {
            heads.push((ring.avail_head(&mem, r.next_avail).map_err(oom)?, false));
            r.next_avail = r.next_avail.wrapping_add(1);
        }
        let mut popped = Vec::new();
        for (head, resubmitted) in heads {
            let chain = ring.chain(&mem, head);
            if let Some(why) = chain.malformed {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("chain {head}: {why}"),
                ));
            }
            let len = chain
                .readable
                .iter()
                .map(|&(_, l)| u64::from(l))
                .sum::<u64>()
                .min(MAX_READABLE);
            let mut readable = vec![0u8; len as usize];
            chain.read_prefix(&mem, &mut readable).map_err(oom)?;
            if !resubmitted && head < self.region(queue).map_or(0, |(_, _, n)| n) {
                // counter, then inflight = 1.
                self.region_write(queue, Self::desc_at(head, 8), &self.counter.to_le_bytes())?;
                self.region_write(queue, Self::desc_at(head, 0), &[1])?;
                self.counter += 1;
            }
            popped.push(PoppedRequest {
                queue,
                head,
                readable,
                writable_len: chain.writable_len(),
                resubmitted,
            });
            self.ring(queue)?.held.push(chain);
        }
        Ok(popped)
    }

    /// Completes the held request `head` of `queue` with `reply` in its writable buffers (as
    /// much as fits): the used ring gets it, the inflight area forgets it (in the
    /// specification's order: the batch list, the used index, then the entry and the region's
    /// used index), and the call eventfd is signalled. Returns the bytes written.
    pub fn complete(
        &mut self,
        queue: usize,
        ring: &SplitRing,
        memory: &[(MemRegionRecord, File)],
        head: u16,
        reply: &[u8],
    ) -> io::Result<u32> {
        let mem = self.memory(memory)?;
        let r = self.ring(queue)?;
        let i = r
            .held
            .iter()
            .position(|c| c.head == head)
            .ok_or_else(|| not_found(format!("queue {queue} holds no request {head}")))?;
        let chain = r.held.remove(i);
        let pos = match r.next_used {
            Some(pos) => pos,
            None => ring.used_idx(&mem).map_err(oom)?,
        };
        let written = chain.write_prefix(&mem, reply).map_err(oom)?;
        let written = u32::try_from(written).unwrap_or(u32::MAX);
        let tracked = head < self.region(queue).map_or(0, |(_, _, n)| n);
        if tracked {
            if let Some(last) = self.region_u16(queue, 12)? {
                self.region_write(queue, Self::desc_at(head, 6), &last.to_le_bytes())?;
            }
            self.region_write(queue, 12, &head.to_le_bytes())?;
        }
        ring.write_used(&mem, pos, head, written).map_err(oom)?;
        let next = pos.wrapping_add(1);
        ring.publish_used(&mem, next).map_err(oom)?;
        if tracked {
            self.region_write(queue, Self::desc_at(head, 0), &[0])?;
            self.region_write(queue, 14, &next.to_le_bytes())?;
        }
        let r = self.ring(queue)?;
        r.next_used = Some(next);
        if let Some(call) = &r.call {
            (&*call).write_all(&1u64.to_ne_bytes())?;
        }
        Ok(written)
    }
}
