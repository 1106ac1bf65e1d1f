// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The pure decoder: bytes and a descriptor count in, a typed [`Request`] or a typed
//! [`DecodeError`] out. No I/O, no panics: the fuzz target `decode` feeds it arbitrary bytes.

use std::mem::size_of;

use vm_memory::ByteValued;

use super::request::{Access, Header, IoDirection, IoEntry, MapEntry, Range, Request};
#[cfg(feature = "mem-rw")]
use super::wire::MemRwHeader;
use super::wire::{
    legacy, standard, Dialect, FsBackendMsg, RawHeader, VhostUserMMap, FLAG_NEED_REPLY, FLAG_REPLY,
    FS_BACKEND_ENTRIES, FS_FLAG_MAP_R, FS_FLAG_MAP_W, HEADER_SIZE, MAX_BODY_SIZE,
    MMAP_FLAG_WRITABLE, VERSION, VERSION_MASK,
};

/// Why a message was refused by the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The version bits of the header are not 1.
    #[error("unsupported protocol version in header flags {flags:#x}")]
    BadVersion {
        /// The header flags.
        flags: u32,
    },
    /// A request carries the REPLY flag.
    #[error("request carries the REPLY flag (flags {flags:#x})")]
    ReplyFlag {
        /// The header flags.
        flags: u32,
    },
    /// The header has flag bits this protocol does not define.
    #[error("unknown header flag bits {flags:#x}")]
    UnknownHeaderFlags {
        /// The header flags.
        flags: u32,
    },
    /// The body is larger than [`MAX_BODY_SIZE`].
    #[error("body of {size} bytes exceeds the limit of {MAX_BODY_SIZE}")]
    Oversized {
        /// The announced size.
        size: u32,
    },
    /// The body size does not match what the request code requires.
    #[error("request {request}: body of {size} bytes, expected {expected}")]
    BadSize {
        /// Request code.
        request: u32,
        /// Announced size.
        size: u32,
        /// Required size.
        expected: usize,
    },
    /// The request code is unknown or not supported in this dialect.
    #[error("request code {request} is not supported in the {dialect:?} dialect")]
    Unsupported {
        /// Request code.
        request: u32,
        /// Dialect in force.
        dialect: Dialect,
    },
    /// The message came with the wrong number of file descriptors.
    #[error("request {request}: {got} file descriptors, expected {expected}")]
    BadFdCount {
        /// Request code.
        request: u32,
        /// Descriptors received.
        got: usize,
        /// Descriptors required.
        expected: usize,
    },
    /// A standard request has length 0.
    #[error("zero length")]
    ZeroLength,
    /// `offset + len` or `fd_offset + len` overflows.
    #[error("offset {offset:#x} + length {len:#x} overflows")]
    Overflow {
        /// The offset.
        offset: u64,
        /// The length.
        len: u64,
    },
    /// Flags with bits this request does not define, or a map without read access.
    #[error("unknown or invalid flags {flags:#x}")]
    BadFlags {
        /// The flags.
        flags: u64,
    },
}

fn read_obj<T: ByteValued>(bytes: &[u8]) -> Option<T> {
    T::from_slice(bytes.get(..size_of::<T>())?).copied()
}

impl Header {
    /// Validates the 12 header bytes: version 1, no REPLY flag, no unknown flag bits, body no
    /// larger than [`MAX_BODY_SIZE`]. On [`DecodeError::Oversized`] the caller still knows the
    /// size from the raw header and can drain the body.
    pub fn parse(raw: &RawHeader) -> Result<Header, DecodeError> {
        let flags = raw.flags;
        if flags & VERSION_MASK != VERSION {
            return Err(DecodeError::BadVersion { flags });
        }
        if flags & FLAG_REPLY != 0 {
            return Err(DecodeError::ReplyFlag { flags });
        }
        if flags & !(VERSION_MASK | FLAG_NEED_REPLY) != 0 {
            return Err(DecodeError::UnknownHeaderFlags { flags });
        }
        let size = raw.size;
        if size as usize > MAX_BODY_SIZE {
            return Err(DecodeError::Oversized { size });
        }
        Ok(Header {
            request: raw.request,
            need_reply: flags & FLAG_NEED_REPLY != 0,
            size,
        })
    }
}

fn expect_size(header: &Header, body: &[u8], expected: usize) -> Result<(), DecodeError> {
    if header.size as usize != expected || body.len() != expected {
        return Err(DecodeError::BadSize {
            request: header.request,
            size: header.size,
            expected,
        });
    }
    Ok(())
}

fn expect_fds(header: &Header, got: usize, expected: usize) -> Result<(), DecodeError> {
    if got != expected {
        return Err(DecodeError::BadFdCount {
            request: header.request,
            got,
            expected,
        });
    }
    Ok(())
}

fn check_end(offset: u64, len: u64) -> Result<(), DecodeError> {
    offset
        .checked_add(len)
        .map(|_| ())
        .ok_or(DecodeError::Overflow { offset, len })
}

fn map_access_legacy(flags: u64) -> Result<Access, DecodeError> {
    match flags {
        FS_FLAG_MAP_R => Ok(Access::ReadOnly),
        f if f == FS_FLAG_MAP_R | FS_FLAG_MAP_W => Ok(Access::ReadWrite),
        flags => Err(DecodeError::BadFlags { flags }),
    }
}

/// Decodes a body. `body` must hold exactly the bytes the header announced (the socket loop reads
/// them all, also for a message it goes on to refuse). `nfds` is the number of file descriptors
/// that came with the message.
///
/// Checks, in order: body size for the code, descriptor count, zero length (standard), flags,
/// `checked_add` of both ends.
pub fn decode_body(
    dialect: Dialect,
    header: &Header,
    body: &[u8],
    nfds: usize,
) -> Result<Request, DecodeError> {
    let unsupported = DecodeError::Unsupported {
        request: header.request,
        dialect,
    };
    match dialect {
        Dialect::Standard => match header.request {
            standard::SHMEM_MAP | standard::SHMEM_UNMAP => decode_shmem(header, body, nfds),
            #[cfg(feature = "mem-rw")]
            standard::MEM_READ | standard::MEM_WRITE => decode_mem_rw(header, body, nfds),
            _ => Err(unsupported),
        },
        Dialect::Legacy => match header.request {
            legacy::FS_MAP | legacy::FS_UNMAP | legacy::FS_SYNC | legacy::FS_IO => {
                decode_fs(header, body, nfds)
            }
            _ => Err(unsupported),
        },
    }
}

fn decode_shmem(header: &Header, body: &[u8], nfds: usize) -> Result<Request, DecodeError> {
    let map = header.request == standard::SHMEM_MAP;
    expect_size(header, body, size_of::<VhostUserMMap>())?;
    expect_fds(header, nfds, usize::from(map))?;
    let msg: VhostUserMMap = read_obj(body).ok_or(DecodeError::BadSize {
        request: header.request,
        size: header.size,
        expected: size_of::<VhostUserMMap>(),
    })?;
    let (len, flags, offset, fd_offset, shmid) =
        (msg.len, msg.flags, msg.shm_offset, msg.fd_offset, msg.shmid);
    if len == 0 {
        return Err(DecodeError::ZeroLength);
    }
    let access = match flags {
        0 => Access::ReadOnly,
        MMAP_FLAG_WRITABLE => Access::ReadWrite,
        flags => return Err(DecodeError::BadFlags { flags }),
    };
    check_end(offset, len)?;
    if !map {
        return Ok(Request::ShmemUnmap {
            shmid,
            range: Range { offset, len },
        });
    }
    check_end(fd_offset, len)?;
    Ok(Request::ShmemMap {
        shmid,
        entry: MapEntry {
            offset,
            fd_offset,
            len,
            access,
        },
    })
}

fn decode_fs(header: &Header, body: &[u8], nfds: usize) -> Result<Request, DecodeError> {
    expect_size(header, body, size_of::<FsBackendMsg>())?;
    let fds = match header.request {
        legacy::FS_MAP | legacy::FS_IO => 1,
        _ => 0,
    };
    expect_fds(header, nfds, fds)?;
    let msg: FsBackendMsg = read_obj(body).ok_or(DecodeError::BadSize {
        request: header.request,
        size: header.size,
        expected: size_of::<FsBackendMsg>(),
    })?;
    let (fd_offsets, offsets, lens, flags) = (msg.fd_offset, msg.cache_offset, msg.len, msg.flags);
    let live = (0..FS_BACKEND_ENTRIES).filter(|&i| lens[i] != 0);
    match header.request {
        legacy::FS_MAP => live
            .map(|i| {
                let access = map_access_legacy(flags[i])?;
                check_end(offsets[i], lens[i])?;
                check_end(fd_offsets[i], lens[i])?;
                Ok(MapEntry {
                    offset: offsets[i],
                    fd_offset: fd_offsets[i],
                    len: lens[i],
                    access,
                })
            })
            .collect::<Result<_, _>>()
            .map(Request::FsMap),
        legacy::FS_UNMAP => {
            if lens.contains(&u64::MAX) {
                return Ok(Request::FsUnmapAll);
            }
            live.map(|i| range(offsets[i], lens[i]))
                .collect::<Result<_, _>>()
                .map(Request::FsUnmap)
        }
        legacy::FS_SYNC => live
            .map(|i| range(offsets[i], lens[i]))
            .collect::<Result<_, _>>()
            .map(Request::FsSync),
        _ => live
            .map(|i| {
                let direction = match flags[i] {
                    0 | FS_FLAG_MAP_R => IoDirection::ReadFile,
                    FS_FLAG_MAP_W => IoDirection::WriteFile,
                    f if f == FS_FLAG_MAP_R | FS_FLAG_MAP_W => IoDirection::WriteFile,
                    flags => return Err(DecodeError::BadFlags { flags }),
                };
                check_end(offsets[i], lens[i])?;
                check_end(fd_offsets[i], lens[i])?;
                Ok(IoEntry {
                    gpa: offsets[i],
                    fd_offset: fd_offsets[i],
                    len: lens[i],
                    direction,
                })
            })
            .collect::<Result<_, _>>()
            .map(Request::FsIo),
    }
}

fn range(offset: u64, len: u64) -> Result<Range, DecodeError> {
    check_end(offset, len)?;
    Ok(Range { offset, len })
}

#[cfg(feature = "mem-rw")]
fn decode_mem_rw(header: &Header, body: &[u8], nfds: usize) -> Result<Request, DecodeError> {
    let fixed = size_of::<MemRwHeader>();
    let bad_size = |expected| DecodeError::BadSize {
        request: header.request,
        size: header.size,
        expected,
    };
    let rw: MemRwHeader = read_obj(body).ok_or(bad_size(fixed))?;
    let (gpa, size) = (rw.guest_address, rw.size);
    let write = header.request == standard::MEM_WRITE;
    // MAX_BODY_SIZE bounds `size` for MEM_WRITE through the header size; MEM_READ is bounded the
    // same way so that its reply fits a message too.
    let limit = MAX_BODY_SIZE - fixed;
    if size as usize > limit {
        return Err(bad_size(fixed + limit));
    }
    let expected = if write { fixed + size as usize } else { fixed };
    expect_size(header, body, expected)?;
    expect_fds(header, nfds, 0)?;
    if size == 0 {
        return Err(DecodeError::ZeroLength);
    }
    check_end(gpa, u64::from(size))?;
    if write {
        Ok(Request::MemWrite {
            gpa,
            data: body[fixed..].to_vec(),
        })
    } else {
        Ok(Request::MemRead { gpa, size })
    }
}

/// Decodes a whole message held in one buffer: header, then exactly `header.size` body bytes.
/// Trailing bytes make the message invalid. This is the decoder's fuzzing entry point.
pub fn decode_message(dialect: Dialect, bytes: &[u8], nfds: usize) -> Result<Request, DecodeError> {
    let raw: RawHeader = read_obj(bytes).ok_or(DecodeError::BadSize {
        request: 0,
        size: bytes.len() as u32,
        expected: HEADER_SIZE,
    })?;
    let header = Header::parse(&raw)?;
    decode_body(dialect, &header, &bytes[HEADER_SIZE..], nfds)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M2: u64 = 2 << 20;

    fn message(request: u32, flags: u32, body: &[u8]) -> Vec<u8> {
        let mut v = RawHeader {
            request,
            flags,
            size: body.len() as u32,
        }
        .as_slice()
        .to_vec();
        v.extend_from_slice(body);
        v
    }

    fn mmap(shm_offset: u64, fd_offset: u64, len: u64, flags: u64) -> Vec<u8> {
        VhostUserMMap {
            shmid: 3,
            fd_offset,
            shm_offset,
            len,
            flags,
            ..Default::default()
        }
        .as_slice()
        .to_vec()
    }

    fn fs_msg(entries: &[(u64, u64, u64, u64)]) -> Vec<u8> {
        let mut m = FsBackendMsg::default();
        for (i, &(fd_offset, cache_offset, len, flags)) in entries.iter().enumerate() {
            m.fd_offset[i] = fd_offset;
            m.cache_offset[i] = cache_offset;
            m.len[i] = len;
            m.flags[i] = flags;
        }
        m.as_slice().to_vec()
    }

    /// Decodes `msg` placed at every offset 0..8 of a buffer, so that unaligned bodies (as the
    /// socket loop's buffer may hold them) are read too; every placement must agree.
    fn decode_anywhere(dialect: Dialect, msg: &[u8], nfds: usize) -> Result<Request, DecodeError> {
        let mut first = None;
        for shift in 0..8 {
            let mut buf = vec![0u8; shift];
            buf.extend_from_slice(msg);
            let got = decode_message(dialect, &buf[shift..], nfds);
            match &first {
                None => first = Some(got),
                Some(f) => assert_eq!(f, &got, "placement {shift} decodes differently"),
            }
        }
        first.unwrap()
    }

    #[test]
    fn standard_map_and_unmap() {
        let need = VERSION | FLAG_NEED_REPLY;
        let map = message(standard::SHMEM_MAP, need, &mmap(M2, 4096, M2, 1));
        assert_eq!(
            decode_anywhere(Dialect::Standard, &map, 1),
            Ok(Request::ShmemMap {
                shmid: 3,
                entry: MapEntry {
                    offset: M2,
                    fd_offset: 4096,
                    len: M2,
                    access: Access::ReadWrite,
                },
            })
        );
        let unmap = message(standard::SHMEM_UNMAP, VERSION, &mmap(0, 0, M2, 0));
        assert_eq!(
            decode_anywhere(Dialect::Standard, &unmap, 0),
            Ok(Request::ShmemUnmap {
                shmid: 3,
                range: Range { offset: 0, len: M2 },
            })
        );
        // The legacy codes mean something else in this dialect.
        let fs = message(legacy::FS_MAP, VERSION, &fs_msg(&[]));
        assert_eq!(
            decode_anywhere(Dialect::Standard, &fs, 1),
            Err(DecodeError::Unsupported {
                request: legacy::FS_MAP,
                dialect: Dialect::Standard,
            })
        );
    }

    #[test]
    fn standard_refusals_in_order() {
        let ok = mmap(0, 0, M2, 0);
        let map = |flags: u32, body: &[u8]| message(standard::SHMEM_MAP, flags, body);
        let cases: Vec<(Vec<u8>, usize, DecodeError)> = vec![
            (map(0x2, &ok), 1, DecodeError::BadVersion { flags: 0x2 }),
            (
                map(VERSION | FLAG_REPLY, &ok),
                1,
                DecodeError::ReplyFlag {
                    flags: VERSION | FLAG_REPLY,
                },
            ),
            (
                map(VERSION | 0x100, &ok),
                1,
                DecodeError::UnknownHeaderFlags {
                    flags: VERSION | 0x100,
                },
            ),
            (
                map(VERSION, &ok[..39]),
                1,
                DecodeError::BadSize {
                    request: standard::SHMEM_MAP,
                    size: 39,
                    expected: 40,
                },
            ),
            (
                map(VERSION, &ok),
                0,
                DecodeError::BadFdCount {
                    request: standard::SHMEM_MAP,
                    got: 0,
                    expected: 1,
                },
            ),
            (map(VERSION, &mmap(0, 0, 0, 0)), 1, DecodeError::ZeroLength),
            (
                map(VERSION, &mmap(0, 0, M2, 2)),
                1,
                DecodeError::BadFlags { flags: 2 },
            ),
            (
                map(VERSION, &mmap(u64::MAX - 1, 0, M2, 0)),
                1,
                DecodeError::Overflow {
                    offset: u64::MAX - 1,
                    len: M2,
                },
            ),
            (
                map(VERSION, &mmap(0, u64::MAX, M2, 0)),
                1,
                DecodeError::Overflow {
                    offset: u64::MAX,
                    len: M2,
                },
            ),
        ];
        for (msg, nfds, want) in cases {
            assert_eq!(decode_anywhere(Dialect::Standard, &msg, nfds), Err(want));
        }
        // Too short for a header; trailing bytes after the announced body.
        assert!(matches!(
            decode_message(Dialect::Standard, &[1, 0, 0], 0),
            Err(DecodeError::BadSize { expected: 12, .. })
        ));
        let mut long = map(VERSION, &ok);
        long.push(0);
        assert!(matches!(
            decode_anywhere(Dialect::Standard, &long, 1),
            Err(DecodeError::BadSize { .. })
        ));
        let mut raw = map(VERSION, &ok);
        raw[8..12].copy_from_slice(&(MAX_BODY_SIZE as u32 + 1).to_le_bytes());
        assert_eq!(
            decode_anywhere(Dialect::Standard, &raw, 1),
            Err(DecodeError::Oversized {
                size: MAX_BODY_SIZE as u32 + 1
            })
        );
    }

    #[test]
    fn legacy_requests() {
        let r = FS_FLAG_MAP_R;
        let rw = FS_FLAG_MAP_R | FS_FLAG_MAP_W;
        // Zero-length entries are skipped, wherever they are.
        let map = fs_msg(&[(0, 0, M2, r), (0, 0, 0, 0), (M2, 4 * M2, M2, rw)]);
        assert_eq!(
            decode_anywhere(Dialect::Legacy, &message(legacy::FS_MAP, VERSION, &map), 1),
            Ok(Request::FsMap(vec![
                MapEntry {
                    offset: 0,
                    fd_offset: 0,
                    len: M2,
                    access: Access::ReadOnly,
                },
                MapEntry {
                    offset: 4 * M2,
                    fd_offset: M2,
                    len: M2,
                    access: Access::ReadWrite,
                },
            ]))
        );
        let unmap = fs_msg(&[(0, M2, M2, 0)]);
        assert_eq!(
            decode_anywhere(
                Dialect::Legacy,
                &message(legacy::FS_UNMAP, VERSION, &unmap),
                0
            ),
            Ok(Request::FsUnmap(vec![Range {
                offset: M2,
                len: M2
            }]))
        );
        let all = fs_msg(&[(0, 0, u64::MAX, 0)]);
        assert_eq!(
            decode_anywhere(
                Dialect::Legacy,
                &message(legacy::FS_UNMAP, VERSION, &all),
                0
            ),
            Ok(Request::FsUnmapAll)
        );
        let sync = fs_msg(&[(0, 0, 4096, 0)]);
        assert_eq!(
            decode_anywhere(
                Dialect::Legacy,
                &message(legacy::FS_SYNC, VERSION, &sync),
                0
            ),
            Ok(Request::FsSync(vec![Range {
                offset: 0,
                len: 4096
            }]))
        );
        let io = fs_msg(&[(8, 1 << 30, 100, 0), (0, 4096, 10, FS_FLAG_MAP_W)]);
        assert_eq!(
            decode_anywhere(Dialect::Legacy, &message(legacy::FS_IO, VERSION, &io), 1),
            Ok(Request::FsIo(vec![
                IoEntry {
                    gpa: 1 << 30,
                    fd_offset: 8,
                    len: 100,
                    direction: IoDirection::ReadFile,
                },
                IoEntry {
                    gpa: 4096,
                    fd_offset: 0,
                    len: 10,
                    direction: IoDirection::WriteFile,
                },
            ]))
        );
        // A map without MAP_R, a map with its fd missing, a wrapping range.
        let no_r = fs_msg(&[(0, 0, M2, FS_FLAG_MAP_W)]);
        assert_eq!(
            decode_anywhere(Dialect::Legacy, &message(legacy::FS_MAP, VERSION, &no_r), 1),
            Err(DecodeError::BadFlags {
                flags: FS_FLAG_MAP_W
            })
        );
        assert_eq!(
            decode_anywhere(Dialect::Legacy, &message(legacy::FS_MAP, VERSION, &map), 2),
            Err(DecodeError::BadFdCount {
                request: legacy::FS_MAP,
                got: 2,
                expected: 1,
            })
        );
        let wrap = fs_msg(&[(0, u64::MAX - 4095, 8192, 0)]);
        assert_eq!(
            decode_anywhere(
                Dialect::Legacy,
                &message(legacy::FS_SYNC, VERSION, &wrap),
                0
            ),
            Err(DecodeError::Overflow {
                offset: u64::MAX - 4095,
                len: 8192,
            })
        );
        assert_eq!(
            decode_anywhere(
                Dialect::Legacy,
                &message(standard::SHMEM_UNMAP, VERSION, &mmap(0, 0, M2, 0)),
                0
            ),
            Err(DecodeError::Unsupported {
                request: standard::SHMEM_UNMAP,
                dialect: Dialect::Legacy,
            })
        );
    }
}
