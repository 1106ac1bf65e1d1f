// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Fuzzes the pure backend-channel decoder, `protocol::decode_message`.
//!
//! Input: one selector byte, then the message (12-byte header and body).
//! - selector bit 0: dialect (0 = Standard, 1 = Legacy);
//! - selector bits 1..=2: number of file descriptors that "came with" the message (0..=3).
//!
//! The decoder must never panic, and every `Ok` must satisfy the invariants the window and the
//! channel rely on (checked below).

#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_fs_dax::protocol::{
    decode_body, decode_message, legacy, standard, Access, Dialect, FsBackendMsg, Header,
    RawHeader, Request, VhostUserMMap, FS_BACKEND_ENTRIES, FS_FLAG_MAP_R, FS_FLAG_MAP_W,
    HEADER_SIZE, MAX_BODY_SIZE, MMAP_FLAG_WRITABLE,
};
use vm_memory::ByteValued;

fn raw_header(msg: &[u8]) -> RawHeader {
    *RawHeader::from_slice(&msg[..HEADER_SIZE]).expect("header is plain old data")
}

fn check_ok(dialect: Dialect, msg: &[u8], nfds: usize, req: &Request) {
    // Shape of the message: a valid header and exactly the announced body.
    assert!(
        msg.len() >= HEADER_SIZE,
        "Ok from fewer than {HEADER_SIZE} bytes"
    );
    let raw = raw_header(msg);
    let header = Header::parse(&raw).expect("Ok message whose header does not parse");
    assert!(header.size as usize <= MAX_BODY_SIZE);
    assert_eq!(
        msg.len(),
        HEADER_SIZE + header.size as usize,
        "trailing or missing body bytes"
    );
    let body = &msg[HEADER_SIZE..];

    // The descriptor count the decoder accepted is the one the request needs.
    assert_eq!(req.fds_needed(), nfds, "{req:?} accepted with {nfds} fds");

    // The two-step decoder agrees with the one-shot one.
    assert_eq!(decode_body(dialect, &header, body, nfds).as_ref(), Ok(req));

    match req {
        Request::ShmemMap { shmid, entry } => {
            assert_eq!(dialect, Dialect::Standard);
            assert_eq!(header.request, standard::SHMEM_MAP);
            assert_ne!(entry.len, 0);
            assert!(entry.offset.checked_add(entry.len).is_some());
            assert!(entry.fd_offset.checked_add(entry.len).is_some());
            // The fields are the ones on the wire.
            let m = *VhostUserMMap::from_slice(body).expect("SHMEM_MAP body is 40 bytes");
            let (m_shmid, m_shm_offset, m_fd_offset, m_len, m_flags) =
                (m.shmid, m.shm_offset, m.fd_offset, m.len, m.flags);
            assert_eq!(
                (*shmid, entry.offset, entry.fd_offset, entry.len),
                (m_shmid, m_shm_offset, m_fd_offset, m_len)
            );
            let want = if m_flags == MMAP_FLAG_WRITABLE {
                Access::ReadWrite
            } else {
                assert_eq!(m_flags, 0);
                Access::ReadOnly
            };
            assert_eq!(entry.access, want);
        }
        Request::ShmemUnmap { shmid, range } => {
            assert_eq!(dialect, Dialect::Standard);
            assert_eq!(header.request, standard::SHMEM_UNMAP);
            assert_ne!(range.len, 0);
            assert!(range.offset.checked_add(range.len).is_some());
            let m = *VhostUserMMap::from_slice(body).expect("SHMEM_UNMAP body is 40 bytes");
            let (m_shmid, m_shm_offset, m_len) = (m.shmid, m.shm_offset, m.len);
            assert_eq!(
                (*shmid, range.offset, range.len),
                (m_shmid, m_shm_offset, m_len)
            );
        }
        Request::FsMap(entries) => {
            assert_eq!(dialect, Dialect::Legacy);
            assert_eq!(header.request, legacy::FS_MAP);
            assert!(entries.len() <= FS_BACKEND_ENTRIES);
            let msg = *FsBackendMsg::from_slice(body).expect("FS_MAP body is 256 bytes");
            let (lens, flags) = (msg.len, msg.flags);
            assert_eq!(entries.len(), lens.iter().filter(|&&l| l != 0).count());
            for e in entries {
                assert_ne!(e.len, 0);
                assert!(e.offset.checked_add(e.len).is_some());
                assert!(e.fd_offset.checked_add(e.len).is_some());
            }
            // Every live entry had MAP_R, and MAP_W exactly when the access is read-write.
            let live_flags = (0..FS_BACKEND_ENTRIES)
                .filter(|&i| lens[i] != 0)
                .map(|i| flags[i]);
            for (e, f) in entries.iter().zip(live_flags) {
                let want = match f {
                    FS_FLAG_MAP_R => Access::ReadOnly,
                    _ => {
                        assert_eq!(f, FS_FLAG_MAP_R | FS_FLAG_MAP_W);
                        Access::ReadWrite
                    }
                };
                assert_eq!(e.access, want);
            }
        }
        Request::FsUnmap(ranges) | Request::FsSync(ranges) => {
            assert_eq!(dialect, Dialect::Legacy);
            let unmap = matches!(req, Request::FsUnmap(_));
            let code = if unmap {
                legacy::FS_UNMAP
            } else {
                legacy::FS_SYNC
            };
            assert_eq!(header.request, code);
            assert!(ranges.len() <= FS_BACKEND_ENTRIES);
            let msg = *FsBackendMsg::from_slice(body).expect("FS_UNMAP/FS_SYNC body is 256 bytes");
            let lens = msg.len;
            assert_eq!(ranges.len(), lens.iter().filter(|&&l| l != 0).count());
            for r in ranges {
                assert_ne!(r.len, 0);
                assert!(r.offset.checked_add(r.len).is_some());
                if unmap {
                    // u64::MAX anywhere means unmap-all.
                    assert_ne!(r.len, u64::MAX);
                }
            }
        }
        Request::FsUnmapAll => {
            assert_eq!(dialect, Dialect::Legacy);
            assert_eq!(header.request, legacy::FS_UNMAP);
            let msg = *FsBackendMsg::from_slice(body).expect("FS_UNMAP body is 256 bytes");
            let lens = msg.len;
            assert!(lens.contains(&u64::MAX));
        }
        Request::FsIo(entries) => {
            assert_eq!(dialect, Dialect::Legacy);
            assert_eq!(header.request, legacy::FS_IO);
            assert!(entries.len() <= FS_BACKEND_ENTRIES);
            for e in entries {
                assert_ne!(e.len, 0);
                assert!(e.gpa.checked_add(e.len).is_some());
                assert!(e.fd_offset.checked_add(e.len).is_some());
            }
        }
        Request::MemRead { gpa, size } => {
            assert_eq!(dialect, Dialect::Standard);
            assert_eq!(header.request, standard::MEM_READ);
            assert_ne!(*size, 0);
            assert!(*size as usize <= MAX_BODY_SIZE);
            assert!(gpa.checked_add(u64::from(*size)).is_some());
        }
        Request::MemWrite { gpa, data } => {
            assert_eq!(dialect, Dialect::Standard);
            assert_eq!(header.request, standard::MEM_WRITE);
            assert!(!data.is_empty());
            assert!(data.len() < MAX_BODY_SIZE);
            assert!(gpa.checked_add(data.len() as u64).is_some());
            // The data is the tail of the body, after the 12-byte MEM_RW header.
            assert_eq!(&body[body.len() - data.len()..], &data[..]);
        }
        // `Request` is non-exhaustive: a request this target has no invariants for yet must not
        // pass unchecked.
        other => panic!("decoded a request this target does not check: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, msg)) = data.split_first() else {
        return;
    };
    let dialect = if selector & 1 == 0 {
        Dialect::Standard
    } else {
        Dialect::Legacy
    };
    let nfds = usize::from((selector >> 1) & 3);

    let result = decode_message(dialect, msg, nfds);
    if let Ok(req) = &result {
        check_ok(dialect, msg, nfds, req);
    }
    // Pure: the same input decodes the same way.
    assert_eq!(decode_message(dialect, msg, nfds), result);
});
