// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! FUSE requests whose buffers lie outside guest RAM.
//!
//! This process sees guest RAM only (the vhost-user memory table). A guest `read(2)` or
//! `write(2)` whose user buffer is itself a DAX mapping reaches the backend as a FUSE_READ or
//! FUSE_WRITE whose data descriptors point into a DAX window, which the backend cannot see.
//! Such a request is served by the front-end's copy (legacy FS_IO), or refused with a FUSE
//! error reply; it is never dropped, and the queue goes on.
//!
//! A chain is seen as two byte streams, its device-readable and its device-writable
//! descriptors each laid end to end ([`Stream`]); what must be read or written by this process
//! (headers, arguments, the reply) must lie in guest RAM, the data may lie anywhere: each
//! of its pieces becomes one FS_IO entry at its guest physical address (the front-end resolves
//! guest RAM and windows alike).

use std::io;
use std::os::unix::io::RawFd;

use fuse_backend_rs::api::filesystem::Context;
use log::debug;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use crate::legacy::{self, LegacyChannel};

/// The errno of a FUSE reply to a request whose buffer this backend cannot reach: a buffer
/// outside guest RAM in the standard dialect (it has no FS_IO; the experimental MEM_READ /
/// MEM_WRITE is not sent), a request other than FUSE_READ / FUSE_WRITE with such a buffer, or a
/// header or argument outside guest RAM. `EFAULT`, as `read(2)` and `write(2)` answer for a
/// buffer they cannot reach, and as the front-end answers an FS_IO outside guest memory and
/// mapped window ranges.
pub const UNREACHABLE: i32 = libc::EFAULT;

/// `fuse_in_header`.
pub const IN_HEADER: u64 = 40;
/// `fuse_out_header`.
pub const OUT_HEADER: u64 = 16;
/// `fuse_read_in` and `fuse_write_in` (FUSE 7.9 and later).
pub const RW_IN: u64 = 40;
/// `fuse_write_out`.
pub const WRITE_OUT: u64 = 8;

/// A part of a stream: a guest range, and whether this process reaches it (guest RAM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub gpa: u64,
    pub len: u64,
    pub in_ram: bool,
}

/// The device-readable (or device-writable) descriptors of a chain, end to end.
#[derive(Debug, Default)]
pub struct Stream(Vec<Piece>);

impl Stream {
    /// The stream of `(guest address, length)` buffers, each checked against `mem` the way
    /// fuse-backend-rs's `Reader` and `Writer` take them (inside one region).
    pub fn new(mem: &GuestMemoryMmap<()>, bufs: impl Iterator<Item = (u64, u32)>) -> Self {
        Stream(
            bufs.map(|(gpa, len)| Piece {
                gpa,
                len: u64::from(len),
                in_ram: mem.get_slice(GuestAddress(gpa), len as usize).is_ok(),
            })
            .collect(),
        )
    }

    /// True when every buffer lies in guest RAM.
    pub fn in_ram(&self) -> bool {
        self.0.iter().all(|p| p.in_ram)
    }

    /// The pieces covering `[start, start + len)` of the stream, clipped at its end.
    pub fn pieces(&self, start: u64, len: u64) -> Vec<Piece> {
        let end = start.saturating_add(len);
        let mut out = Vec::new();
        let mut at = 0u64;
        for p in &self.0 {
            let (lo, hi) = (at, at.saturating_add(p.len));
            at = hi;
            let (from, to) = (lo.max(start), hi.min(end));
            if from < to {
                out.push(Piece {
                    gpa: p.gpa.wrapping_add(from - lo),
                    len: to - from,
                    in_ram: p.in_ram,
                });
            }
            if hi >= end {
                break;
            }
        }
        out
    }

    /// The pieces of `[start, start + len)` when the stream is that long and they all lie in
    /// guest RAM.
    fn reachable(&self, start: u64, len: u64) -> Option<Vec<Piece>> {
        let pieces = self.pieces(start, len);
        let whole = pieces.iter().map(|p| p.len).sum::<u64>() == len;
        (whole && pieces.iter().all(|p| p.in_ram)).then_some(pieces)
    }

    /// True when `[start, start + len)` lies in the stream and in guest RAM.
    pub fn can_access(&self, start: u64, len: u64) -> bool {
        self.reachable(start, len).is_some()
    }

    /// Reads `buf.len()` bytes at `start`; `None` unless they lie in guest RAM.
    pub fn read(&self, mem: &GuestMemoryMmap<()>, start: u64, buf: &mut [u8]) -> Option<()> {
        let mut at = 0usize;
        for p in self.reachable(start, buf.len() as u64)? {
            let n = p.len as usize;
            mem.read_slice(&mut buf[at..at + n], GuestAddress(p.gpa))
                .ok()?;
            at += n;
        }
        Some(())
    }

    /// Writes `data` at `start`; `None` unless the range lies in guest RAM.
    pub fn write(&self, mem: &GuestMemoryMmap<()>, start: u64, data: &[u8]) -> Option<()> {
        let mut at = 0usize;
        for p in self.reachable(start, data.len() as u64)? {
            let n = p.len as usize;
            mem.write_slice(&data[at..at + n], GuestAddress(p.gpa))
                .ok()?;
            at += n;
        }
        Some(())
    }
}

/// The fields of `fuse_in_header` this path needs.
#[derive(Clone, Copy, Debug)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub ctx: Context,
}

impl InHeader {
    /// The request's header, when it lies in guest RAM.
    pub fn read(mem: &GuestMemoryMmap<()>, readable: &Stream) -> Option<Self> {
        let mut b = [0u8; IN_HEADER as usize];
        readable.read(mem, 0, &mut b)?;
        Some(InHeader {
            len: u32_at(&b, 0),
            opcode: u32_at(&b, 4),
            unique: u64_at(&b, 8),
            nodeid: u64_at(&b, 16),
            ctx: Context {
                uid: u32_at(&b, 24),
                gid: u32_at(&b, 28),
                pid: u32_at(&b, 32) as libc::pid_t,
            },
        })
    }
}

/// `fh`, `offset` and `size` of a `fuse_read_in` or `fuse_write_in` (the same layout up to
/// there), when it lies in guest RAM.
pub fn rw_args(mem: &GuestMemoryMmap<()>, readable: &Stream) -> Option<(u64, u64, u32)> {
    let mut b = [0u8; RW_IN as usize];
    readable.read(mem, IN_HEADER, &mut b)?;
    Some((u64_at(&b, 0), u64_at(&b, 8), u32_at(&b, 16)))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Writes a reply (`fuse_out_header` whose `len` counts `payload` and `data_len` more bytes
/// already in place after it, then `payload`) at the start of the writable stream. Returns the
/// used length for the chain; 0 when the reply does not fit the stream's guest RAM (nothing is
/// written then: there is nowhere to answer).
pub fn reply(
    mem: &GuestMemoryMmap<()>,
    writable: &Stream,
    unique: u64,
    error: i32,
    payload: &[u8],
    data_len: u64,
) -> u32 {
    let len = OUT_HEADER + payload.len() as u64 + data_len;
    let Ok(len) = u32::try_from(len) else {
        return 0;
    };
    let mut out = Vec::with_capacity(OUT_HEADER as usize + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&error.to_le_bytes());
    out.extend_from_slice(&unique.to_le_bytes());
    out.extend_from_slice(payload);
    match writable.write(mem, 0, &out) {
        Some(()) => len,
        None => 0,
    }
}

/// A reply carrying only `-errno`.
pub fn reply_error(mem: &GuestMemoryMmap<()>, writable: &Stream, unique: u64, errno: i32) -> u32 {
    reply(mem, writable, unique, -errno, &[], 0)
}

/// Has the front-end copy between the file `fd` (from `offset` on) and the guest memory of
/// `pieces`, in that order (`flags` MAP_W: memory to file, else file to memory), with FS_IO
/// messages of at most 8 entries. Stops at the first short count. Returns the bytes done; an
/// error only when nothing was done (after some bytes the caller's count is short, as a short
/// `read(2)` or `write(2)` is).
pub fn fs_io(
    ch: &mut LegacyChannel,
    fd: RawFd,
    offset: u64,
    pieces: &[Piece],
    flags: u64,
) -> io::Result<u64> {
    let mut entries = Vec::with_capacity(pieces.len());
    let mut at = offset;
    for p in pieces.iter().filter(|p| p.len > 0) {
        entries.push((at, p.gpa, p.len, flags));
        at = at
            .checked_add(p.len)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    }
    let mut done = 0u64;
    for chunk in entries.chunks(legacy::MAX_ENTRIES) {
        let want: u64 = chunk.iter().map(|e| e.2).sum();
        let n = match ch.fs_io(chunk, fd) {
            Ok(n) => n.min(want),
            Err(e) if done == 0 => return Err(e),
            Err(e) => {
                debug!("FS_IO after {done} bytes: {e}; a short count");
                break;
            }
        };
        done += n;
        if n < want {
            break;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(pieces: &[(u64, u64, bool)]) -> Stream {
        Stream(
            pieces
                .iter()
                .map(|&(gpa, len, in_ram)| Piece { gpa, len, in_ram })
                .collect(),
        )
    }

    #[test]
    fn pieces_cover_the_range_across_buffers() {
        let s = stream(&[(0x1000, 40, true), (0x2000, 100, true), (0x9000, 50, false)]);
        assert_eq!(
            s.pieces(30, 140),
            vec![
                Piece {
                    gpa: 0x1000 + 30,
                    len: 10,
                    in_ram: true
                },
                Piece {
                    gpa: 0x2000,
                    len: 100,
                    in_ram: true
                },
                Piece {
                    gpa: 0x9000,
                    len: 30,
                    in_ram: false
                },
            ]
        );
        // Clipped at the end of the stream.
        assert_eq!(
            s.pieces(180, 100),
            vec![Piece {
                gpa: 0x9000 + 40,
                len: 10,
                in_ram: false
            }]
        );
        assert!(s.pieces(190, 10).is_empty());
        assert!(s.can_access(0, 140));
        assert!(!s.can_access(0, 141), "the last bytes are outside RAM");
        assert!(!s.can_access(180, 20), "past the end");
        assert!(!s.in_ram());
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        let s = stream(&[(u64::MAX - 10, u64::MAX, false), (0, u64::MAX, true)]);
        assert_eq!(s.pieces(u64::MAX - 1, u64::MAX).len(), 1);
    }
}
