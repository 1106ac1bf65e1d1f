// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A split virtqueue seen from the device side, in guest memory: the little the crate does with
//! the guest's rings itself (returning the requests a dead backend left in flight), and what the
//! test backend does with them.
//!
//! Everything here is the guest's (or a backend's) to write, so nothing is trusted: every access
//! goes through vm-memory and fails cleanly outside guest memory, every walk is bounded by the
//! queue size, and a malformed chain is reported, never a panic.

use std::sync::atomic::{fence, Ordering};

use vm_memory::{Address, Bytes, GuestAddress};

/// `VRING_DESC_F_NEXT`.
const VRING_DESC_F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`.
const VRING_DESC_F_WRITE: u16 = 2;
/// `VRING_DESC_F_INDIRECT`.
const VRING_DESC_F_INDIRECT: u16 = 4;
/// Bytes of one descriptor.
const DESC_SIZE: u64 = 16;

/// A ring access outside guest memory (a ring address, or an index read that failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutOfMemory;

/// The three parts of a split virtqueue, at guest physical addresses, and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SplitRing {
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
    pub size: u16,
}

/// One descriptor chain as the device walked it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Chain {
    /// The head: the index the available ring gave, and the used ring returns.
    pub head: u16,
    /// The descriptor table entries the chain went through (an indirect table's entries are
    /// not table entries of the ring and are not listed).
    pub indices: Vec<u16>,
    /// Device-readable buffers, in order.
    pub readable: Vec<(GuestAddress, u32)>,
    /// Device-writable buffers, in order.
    pub writable: Vec<(GuestAddress, u32)>,
    /// Why the walk stopped before the chain's end, if it did.
    pub malformed: Option<&'static str>,
}

struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc<M: Bytes<GuestAddress>>(mem: &M, table: GuestAddress, index: u16) -> Option<Desc> {
    let at = table.checked_add(DESC_SIZE * u64::from(index))?;
    let d: [u8; 16] = mem.read_obj(at).ok()?;
    Some(Desc {
        addr: u64::from_le_bytes(d[0..8].try_into().ok()?),
        len: u32::from_le_bytes(d[8..12].try_into().ok()?),
        flags: u16::from_le_bytes(d[12..14].try_into().ok()?),
        next: u16::from_le_bytes(d[14..16].try_into().ok()?),
    })
}

impl SplitRing {
    fn field(&self, base: GuestAddress, offset: u64) -> Result<GuestAddress, OutOfMemory> {
        base.checked_add(offset).ok_or(OutOfMemory)
    }

    /// The available ring's index (acquire: the entries it publishes are read after it).
    pub fn avail_idx<M: Bytes<GuestAddress>>(&self, mem: &M) -> Result<u16, OutOfMemory> {
        let v: u16 = mem
            .load(self.field(self.avail, 2)?, Ordering::Acquire)
            .map_err(|_| OutOfMemory)?;
        Ok(u16::from_le(v))
    }

    /// The used ring's index.
    pub fn used_idx<M: Bytes<GuestAddress>>(&self, mem: &M) -> Result<u16, OutOfMemory> {
        let v: u16 = mem
            .load(self.field(self.used, 2)?, Ordering::Acquire)
            .map_err(|_| OutOfMemory)?;
        Ok(u16::from_le(v))
    }

    /// The head the available ring holds at position `pos` (its slot `pos % size`).
    pub fn avail_head<M: Bytes<GuestAddress>>(
        &self,
        mem: &M,
        pos: u16,
    ) -> Result<u16, OutOfMemory> {
        let slot = u64::from(pos % self.size.max(1));
        let v: u16 = mem
            .read_obj(self.field(self.avail, 4 + 2 * slot)?)
            .map_err(|_| OutOfMemory)?;
        Ok(u16::from_le(v))
    }

    /// Writes the used element at position `pos` (its slot `pos % size`); the driver sees it
    /// once [`SplitRing::publish_used`] moves the index past it.
    pub fn write_used<M: Bytes<GuestAddress>>(
        &self,
        mem: &M,
        pos: u16,
        head: u16,
        len: u32,
    ) -> Result<(), OutOfMemory> {
        let slot = u64::from(pos % self.size.max(1));
        let mut elem = [0u8; 8];
        elem[0..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..8].copy_from_slice(&len.to_le_bytes());
        mem.write_obj(elem, self.field(self.used, 4 + 8 * slot)?)
            .map_err(|_| OutOfMemory)
    }

    /// Publishes the used ring's index: everything written before (the replies, the used
    /// elements) is visible to the driver before the index.
    pub fn publish_used<M: Bytes<GuestAddress>>(
        &self,
        mem: &M,
        idx: u16,
    ) -> Result<(), OutOfMemory> {
        fence(Ordering::Release);
        mem.store(idx.to_le(), self.field(self.used, 2)?, Ordering::Release)
            .map_err(|_| OutOfMemory)?;
        // The index is visible before whatever notifies the driver next.
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Walks the chain that starts at `head`: at most `size` descriptors in the table, at most
    /// `size` in one indirect table (which may not hold another), each read through `mem`. A
    /// chain that breaks these rules, or whose descriptors are not in guest memory, comes back
    /// with [`Chain::malformed`] set and what was walked until then.
    pub fn chain<M: Bytes<GuestAddress>>(&self, mem: &M, head: u16) -> Chain {
        let mut chain = Chain {
            head,
            ..Chain::default()
        };
        chain.malformed = self.walk(mem, &mut chain).err();
        chain
    }

    fn walk<M: Bytes<GuestAddress>>(&self, mem: &M, chain: &mut Chain) -> Result<(), &'static str> {
        let mut index = chain.head;
        loop {
            if index >= self.size {
                return Err("descriptor index past the queue size");
            }
            if chain.indices.len() >= usize::from(self.size) {
                return Err("chain longer than the queue (a loop)");
            }
            let d = read_desc(mem, self.desc, index).ok_or("descriptor outside guest memory")?;
            chain.indices.push(index);
            if d.flags & VRING_DESC_F_INDIRECT != 0 {
                if d.flags & VRING_DESC_F_NEXT != 0 {
                    return Err("indirect descriptor with NEXT");
                }
                return self.walk_indirect(mem, &d, chain);
            }
            push(chain, &d);
            if d.flags & VRING_DESC_F_NEXT == 0 {
                return Ok(());
            }
            index = d.next;
        }
    }

    fn walk_indirect<M: Bytes<GuestAddress>>(
        &self,
        mem: &M,
        table: &Desc,
        chain: &mut Chain,
    ) -> Result<(), &'static str> {
        if table.len == 0 || u64::from(table.len) % DESC_SIZE != 0 {
            return Err("indirect table length not a multiple of 16");
        }
        let count = u64::from(table.len) / DESC_SIZE;
        if count > u64::from(self.size) {
            return Err("indirect table longer than the queue");
        }
        let base = GuestAddress(table.addr);
        let mut index = 0u16;
        for _ in 0..count {
            if u64::from(index) >= count {
                return Err("indirect descriptor index past its table");
            }
            let d =
                read_desc(mem, base, index).ok_or("indirect descriptor outside guest memory")?;
            if d.flags & VRING_DESC_F_INDIRECT != 0 {
                return Err("indirect descriptor in an indirect table");
            }
            push(chain, &d);
            if d.flags & VRING_DESC_F_NEXT == 0 {
                return Ok(());
            }
            index = d.next;
        }
        Err("indirect chain longer than its table (a loop)")
    }
}

fn push(chain: &mut Chain, d: &Desc) {
    let buf = (GuestAddress(d.addr), d.len);
    if d.flags & VRING_DESC_F_WRITE != 0 {
        chain.writable.push(buf);
    } else {
        chain.readable.push(buf);
    }
}

impl Chain {
    /// Bytes the device may write.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|&(_, len)| u64::from(len)).sum()
    }

    /// Copies the first bytes of the readable buffers into `buf`; returns how many there were
    /// (fewer than `buf.len()` when the buffers are shorter).
    pub fn read_prefix<M: Bytes<GuestAddress>>(
        &self,
        mem: &M,
        buf: &mut [u8],
    ) -> Result<usize, OutOfMemory> {
        copy_across(&self.readable, buf.len(), |done, at, n| {
            mem.read_slice(&mut buf[done..done + n], at)
                .map_err(|_| OutOfMemory)
        })
    }

    /// Writes `data` to the front of the writable buffers; returns how many bytes fitted.
    pub fn write_prefix<M: Bytes<GuestAddress>>(
        &self,
        mem: &M,
        data: &[u8],
    ) -> Result<usize, OutOfMemory> {
        copy_across(&self.writable, data.len(), |done, at, n| {
            mem.write_slice(&data[done..done + n], at)
                .map_err(|_| OutOfMemory)
        })
    }
}

/// Moves up to `total` bytes across `bufs` in order: `step(done, addr, n)` for each piece.
fn copy_across(
    bufs: &[(GuestAddress, u32)],
    total: usize,
    mut step: impl FnMut(usize, GuestAddress, usize) -> Result<(), OutOfMemory>,
) -> Result<usize, OutOfMemory> {
    let mut done = 0;
    for &(addr, len) in bufs {
        if done == total {
            break;
        }
        let n = (total - done).min(len as usize);
        if n > 0 {
            step(done, addr, n)?;
        }
        done += n;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const SIZE: u16 = 8;

    fn ring() -> (GuestMemoryMmap, SplitRing) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let r = SplitRing {
            desc: GuestAddress(0x1000),
            avail: GuestAddress(0x2000),
            used: GuestAddress(0x3000),
            size: SIZE,
        };
        (mem, r)
    }

    fn desc(mem: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_obj(d, GuestAddress(table + 16 * u64::from(i)))
            .unwrap();
    }

    #[test]
    fn a_chain_is_walked_and_copied_across_buffers() {
        let (mem, r) = ring();
        desc(&mem, 0x1000, 3, 0x4000, 4, VRING_DESC_F_NEXT, 5);
        desc(&mem, 0x1000, 5, 0x4100, 4, VRING_DESC_F_NEXT, 1);
        desc(
            &mem,
            0x1000,
            1,
            0x5000,
            2,
            VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
            2,
        );
        desc(&mem, 0x1000, 2, 0x5100, 30, VRING_DESC_F_WRITE, 0);
        mem.write_slice(b"abcd", GuestAddress(0x4000)).unwrap();
        mem.write_slice(b"efgh", GuestAddress(0x4100)).unwrap();
        let c = r.chain(&mem, 3);
        assert_eq!(c.malformed, None);
        assert_eq!(c.indices, [3, 5, 1, 2]);
        assert_eq!(c.writable_len(), 32);
        let mut buf = [0u8; 6];
        assert_eq!(c.read_prefix(&mem, &mut buf), Ok(6));
        assert_eq!(&buf, b"abcdef");
        let mut all = [0u8; 16];
        assert_eq!(c.read_prefix(&mem, &mut all), Ok(8));
        assert_eq!(c.write_prefix(&mem, b"xyz"), Ok(3));
        let mut out = [0u8; 2];
        mem.read_slice(&mut out, GuestAddress(0x5000)).unwrap();
        assert_eq!(&out, b"xy");
        mem.read_slice(&mut out[..1], GuestAddress(0x5100)).unwrap();
        assert_eq!(out[0], b'z');
    }

    #[test]
    fn indirect_tables_are_followed_once() {
        let (mem, r) = ring();
        desc(&mem, 0x1000, 0, 0x6000, 32, VRING_DESC_F_INDIRECT, 0);
        desc(&mem, 0x6000, 0, 0x4000, 16, VRING_DESC_F_NEXT, 1);
        desc(&mem, 0x6000, 1, 0x5000, 16, VRING_DESC_F_WRITE, 0);
        let c = r.chain(&mem, 0);
        assert_eq!(c.malformed, None);
        assert_eq!(
            (c.indices.len(), c.readable.len(), c.writable.len()),
            (1, 1, 1)
        );
        // Nested, with NEXT, or of a bad length: malformed.
        desc(&mem, 0x6000, 1, 0x7000, 16, VRING_DESC_F_INDIRECT, 0);
        assert!(r.chain(&mem, 0).malformed.is_some());
        desc(
            &mem,
            0x1000,
            0,
            0x6000,
            32,
            VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT,
            1,
        );
        assert!(r.chain(&mem, 0).malformed.is_some());
        desc(&mem, 0x1000, 0, 0x6000, 20, VRING_DESC_F_INDIRECT, 0);
        assert!(r.chain(&mem, 0).malformed.is_some());
        // A loop in the indirect table ends.
        desc(&mem, 0x1000, 0, 0x6000, 32, VRING_DESC_F_INDIRECT, 0);
        desc(&mem, 0x6000, 1, 0x5000, 16, VRING_DESC_F_NEXT, 0);
        assert!(r.chain(&mem, 0).malformed.is_some());
    }

    #[test]
    fn hostile_chains_end_malformed() {
        let (mem, r) = ring();
        // A loop.
        desc(&mem, 0x1000, 0, 0x4000, 4, VRING_DESC_F_NEXT, 1);
        desc(&mem, 0x1000, 1, 0x4000, 4, VRING_DESC_F_NEXT, 0);
        let c = r.chain(&mem, 0);
        assert!(c.malformed.is_some());
        assert_eq!(c.indices.len(), usize::from(SIZE));
        // An index past the queue; a head past it.
        desc(&mem, 0x1000, 1, 0x4000, 4, VRING_DESC_F_NEXT, SIZE);
        assert!(r.chain(&mem, 0).malformed.is_some());
        assert!(r.chain(&mem, u16::MAX).malformed.is_some());
        // A buffer outside guest memory: the walk is fine, the copy fails.
        desc(&mem, 0x1000, 2, u64::MAX - 2, 16, 0, 0);
        let c = r.chain(&mem, 2);
        assert_eq!(c.malformed, None);
        assert_eq!(c.read_prefix(&mem, &mut [0u8; 4]), Err(OutOfMemory));
        // A table outside guest memory.
        let far = SplitRing {
            desc: GuestAddress(u64::MAX - 8),
            ..r
        };
        assert!(far.chain(&mem, 0).malformed.is_some());
        let nowhere = SplitRing {
            avail: GuestAddress(1 << 40),
            used: GuestAddress(1 << 40),
            ..r
        };
        assert_eq!(nowhere.avail_idx(&mem), Err(OutOfMemory));
        assert_eq!(nowhere.write_used(&mem, 0, 0, 0), Err(OutOfMemory));
    }

    #[test]
    fn used_elements_and_index() {
        let (mem, r) = ring();
        r.write_used(&mem, SIZE + 1, 7, 16).unwrap();
        r.publish_used(&mem, SIZE + 2).unwrap();
        assert_eq!(r.used_idx(&mem), Ok(SIZE + 2));
        let id: u32 = mem.read_obj(GuestAddress(0x3000 + 4 + 8)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(0x3000 + 8 + 8)).unwrap();
        assert_eq!((id, len), (7, 16));
        mem.write_obj(5u16.to_le(), GuestAddress(0x2000 + 4 + 2 * 3))
            .unwrap();
        assert_eq!(r.avail_head(&mem, SIZE + 3), Ok(5));
    }
}
