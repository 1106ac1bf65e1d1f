// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Hostile input on the backend channel, one test per class of bad message.
//!
//! Every test checks the same five things: (a) the errno of the reply, (b) the refusal counter
//! of the class (and no other) moved and nothing was mapped that should not be, (c) the window
//! has no hole and nothing is mapped outside it, (d) every descriptor the channel received was
//! closed, (e) the next valid request succeeds. Each message that is refused carries, apart from
//! the one thing under test, everything a valid request needs: if the check under test were
//! missing, the request would go through and the test would see a mapping.

mod common;

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vm_memory::ByteValued;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use common::*;
use virtio_fs_dax::channel::Error as ChannelError;
use virtio_fs_dax::protocol::{
    legacy, standard, Access, FsBackendMsg, MapEntry, VhostUserMMap, FLAG_NEED_REPLY, FLAG_REPLY,
    FS_BACKEND_ENTRIES, FS_FLAG_MAP_R, FS_FLAG_MAP_W, MAX_BODY_SIZE, MAX_FDS, MMAP_FLAG_WRITABLE,
    VERSION,
};
use virtio_fs_dax::{DaxWindow, Dialect, IoSpace, Policy, Refusal};

/// Window size of every test.
const WINDOW: u64 = 8 * MIB;
/// Guest physical address the window is registered at for IO tests.
const GPA: u64 = 1 << 32;
/// Size of the test file.
const FILE_LEN: u64 = 4 * MIB;

/// Byte that fills page `p` of the test file (never 0, so a mapped page is told from a hole).
fn fill(p: u64) -> u8 {
    (p % 251) as u8 + 1
}

/// The reply value of a refusal with `errno`.
fn neg(errno: i32) -> i64 {
    -i64::from(errno)
}

/// A standard SHMEM_MAP / SHMEM_UNMAP body.
fn mmap_body(shmid: u8, fd_offset: u64, shm_offset: u64, len: u64, flags: u64) -> Vec<u8> {
    VhostUserMMap {
        shmid,
        padding: [0; 7],
        fd_offset,
        shm_offset,
        len,
        flags,
    }
    .as_slice()
    .to_vec()
}

/// A valid read-only map (or unmap) body of region 0, file offset 0.
fn ro(shm_offset: u64, len: u64) -> Vec<u8> {
    mmap_body(0, 0, shm_offset, len, 0)
}

/// A legacy body from `(fd_offset, cache_offset, len, flags)` entries.
fn fs_body(entries: &[(u64, u64, u64, u64)]) -> Vec<u8> {
    assert!(entries.len() <= FS_BACKEND_ENTRIES);
    let mut fd_offset = [0; FS_BACKEND_ENTRIES];
    let mut cache_offset = [0; FS_BACKEND_ENTRIES];
    let mut len = [0; FS_BACKEND_ENTRIES];
    let mut flags = [0; FS_BACKEND_ENTRIES];
    for (i, &(fo, co, l, f)) in entries.iter().enumerate() {
        fd_offset[i] = fo;
        cache_offset[i] = co;
        len[i] = l;
        flags[i] = f;
    }
    FsBackendMsg {
        fd_offset,
        cache_offset,
        len,
        flags,
    }
    .as_slice()
    .to_vec()
}

/// A harness, the test file, and the descriptor count taken once both exist.
struct Fixture {
    h: Harness,
    file: File,
    fds: usize,
    dialect: Dialect,
}

impl Fixture {
    fn new(dialect: Dialect) -> Self {
        Self::with(Harness::new(dialect, WINDOW), dialect)
    }

    fn with(h: Harness, dialect: Dialect) -> Self {
        let (file, _) = memfd(FILE_LEN, fill);
        let fds = fd_count();
        Fixture {
            h,
            file,
            fds,
            dialect,
        }
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn window(&self) -> &DaxWindow {
        &self.h.window
    }

    /// Sends `body` as `request` (version 1, NEED_REPLY) with `fds` and returns the reply.
    fn call(&self, request: u32, body: &[u8], fds: &[RawFd]) -> i64 {
        self.h.peer.call(request, body, fds)
    }

    /// Sends with arbitrary header flags and announced size, and returns the reply.
    fn call_raw(&self, request: u32, flags: u32, size: u32, body: &[u8], fds: &[RawFd]) -> i64 {
        self.h.peer.send_raw(request, flags, size, body, fds);
        self.h.peer.reply(request)
    }

    /// (b): `n` refusals for `reason`, none for any other reason, `live` mappings in the window.
    fn assert_refused(&self, reason: Refusal, n: u64, live: usize) {
        let m = self.window().metrics();
        assert_eq!(m.refusals(reason), n, "refusals for {reason:?}");
        assert_eq!(
            m.total_refusals(),
            n,
            "a refusal was counted for another reason"
        );
        assert_eq!(self.window().live_mappings(), live, "live mappings");
        assert_eq!(m.live_mappings(), live as u64, "live mappings gauge");
    }

    /// (c), (d), (e): the window is sound, no descriptor leaked, and a valid read-only map of
    /// 2 MiB at window offset `at` (which must be free) succeeds; then the channel stops.
    fn finish(self, at: u64) {
        let Fixture {
            h,
            file,
            fds,
            dialect,
        } = self;
        assert_window_sound(&h.window);
        assert_table_matches_kernel(&h.window);
        assert_eq!(
            fd_count(),
            fds,
            "descriptors leaked: the channel kept what it received"
        );

        let m = h.window.metrics().clone();
        let (live, refusals, requests) =
            (h.window.live_mappings(), m.total_refusals(), m.requests());
        let (code, body) = match dialect {
            Dialect::Standard => (standard::SHMEM_MAP, ro(at, 2 * MIB)),
            Dialect::Legacy => (legacy::FS_MAP, fs_body(&[(0, at, 2 * MIB, FS_FLAG_MAP_R)])),
        };
        assert_eq!(
            h.peer.call(code, &body, &[file.as_raw_fd()]),
            0,
            "valid map"
        );
        assert_eq!(perms_at(&h.window, at), "r--s");
        assert_eq!(read_window(&h.window, at, 8), vec![fill(0); 8]);
        assert_eq!(h.window.live_mappings(), live + 1);
        assert_eq!(m.total_refusals(), refusals);
        assert_eq!(m.requests(), requests + 1, "the stream is in sync");
        assert_window_sound(&h.window);
        assert_eq!(fd_count(), fds, "descriptors leaked by the valid map");
        h.stop();
    }
}

#[test]
fn body_size_wrong_for_its_code() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    // A valid SHMEM_MAP body with 8 bytes more.
    let mut body = ro(0, 2 * MIB);
    body.extend_from_slice(&[0; 8]);
    assert_eq!(
        f.call(standard::SHMEM_MAP, &body, &[f.fd()]),
        neg(libc::EINVAL)
    );
    // A SHMEM_UNMAP without a body.
    assert_eq!(f.call(standard::SHMEM_UNMAP, &[], &[]), neg(libc::EINVAL));
    f.assert_refused(Refusal::Size, 2, 0);
    f.finish(0);
}

#[test]
fn truncated_body() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    // The header announces, and the peer sends, the first 32 bytes of a valid body: the flags
    // field is missing.
    let body = ro(0, 2 * MIB);
    assert_eq!(
        f.call(standard::SHMEM_MAP, &body[..32], &[f.fd()]),
        neg(libc::EINVAL)
    );
    f.assert_refused(Refusal::Size, 1, 0);
    f.finish(0);
}

#[test]
fn oversized_body_is_drained() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    // 8192 bytes announced and sent. The body is a train of valid SHMEM_MAP messages: should the
    // channel parse into it instead of draining it, the requests counter and the replies show it.
    let mut body = Vec::new();
    while body.len() < 8192 {
        body.extend_from_slice(&RawPeer::header(
            standard::SHMEM_MAP,
            VERSION | FLAG_NEED_REPLY,
            40,
        ));
        body.extend_from_slice(&ro(0, 2 * MIB));
    }
    body.truncate(8192);
    assert!(body.len() > MAX_BODY_SIZE);
    assert_eq!(
        f.call(standard::SHMEM_MAP, &body, &[f.fd(), f.fd()]),
        neg(libc::EMSGSIZE)
    );
    f.assert_refused(Refusal::Size, 1, 0);
    assert_eq!(
        f.window().metrics().requests(),
        1,
        "one message, drained whole"
    );
    f.finish(0);
}

#[test]
fn bad_version() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    let body = ro(0, 2 * MIB);
    for version in [0, 2, 3] {
        assert_eq!(
            f.call_raw(
                standard::SHMEM_MAP,
                version | FLAG_NEED_REPLY,
                40,
                &body,
                &[f.fd()]
            ),
            neg(libc::EPROTO),
            "version {version}"
        );
    }
    f.assert_refused(Refusal::Header, 3, 0);
    f.finish(0);
}

#[test]
fn reply_flag_on_a_request() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    assert_eq!(
        f.call_raw(
            standard::SHMEM_MAP,
            VERSION | FLAG_REPLY | FLAG_NEED_REPLY,
            40,
            &ro(0, 2 * MIB),
            &[f.fd()]
        ),
        neg(libc::EPROTO)
    );
    f.assert_refused(Refusal::Header, 1, 0);
    f.finish(0);
}

#[test]
fn unknown_header_flag_bits() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    for extra in [0x10, 0x100, 0x8000_0000] {
        assert_eq!(
            f.call_raw(
                standard::SHMEM_MAP,
                VERSION | FLAG_NEED_REPLY | extra,
                40,
                &ro(0, 2 * MIB),
                &[f.fd()]
            ),
            neg(libc::EPROTO),
            "flag bits {extra:#x}"
        );
    }
    f.assert_refused(Refusal::Header, 3, 0);
    f.finish(0);
}

#[test]
fn unknown_or_unsupported_code() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    let body = ro(0, 2 * MIB);
    // Unknown codes.
    assert_eq!(f.call(77, &body, &[]), neg(libc::ENOSYS));
    assert_eq!(f.call(u32::MAX, &body, &[f.fd()]), neg(libc::ENOSYS));
    // A standard code this crate does not serve (SHARED_OBJECT_ADD), carrying a descriptor.
    assert_eq!(
        f.call(standard::SHARED_OBJECT_ADD, &[0; 16], &[f.fd()]),
        neg(libc::ENOSYS)
    );
    // A legacy code in the standard dialect: FS_MAP (6) with a legacy body and a descriptor.
    assert_eq!(
        f.call(
            legacy::FS_MAP,
            &fs_body(&[(0, 0, 2 * MIB, FS_FLAG_MAP_R)]),
            &[f.fd()]
        ),
        neg(libc::ENOSYS)
    );
    f.assert_refused(Refusal::Unsupported, 4, 0);
    f.finish(0);
}

#[test]
fn missing_fd() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    assert_eq!(
        f.call(standard::SHMEM_MAP, &ro(0, 2 * MIB), &[]),
        neg(libc::EBADF)
    );
    f.assert_refused(Refusal::FdCount, 1, 0);
    f.finish(0);
}

#[test]
fn extra_fds() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    assert_eq!(f.call(standard::SHMEM_MAP, &ro(0, 2 * MIB), &[f.fd()]), 0);
    // A map that would succeed but for the descriptor count.
    assert_eq!(
        f.call(
            standard::SHMEM_MAP,
            &ro(2 * MIB, 2 * MIB),
            &[f.fd(), f.fd(), f.fd()]
        ),
        neg(libc::EBADF)
    );
    // An unmap of the live mapping, with a descriptor it has no use for.
    assert_eq!(
        f.call(standard::SHMEM_UNMAP, &ro(0, 2 * MIB), &[f.fd()]),
        neg(libc::EBADF)
    );
    f.assert_refused(Refusal::FdCount, 2, 1);
    assert_eq!(perms_at(f.window(), 0), "r--s");
    assert_eq!(perms_at(f.window(), 2 * MIB), "---p");
    f.finish(4 * MIB);
}

#[test]
fn zero_length() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    assert_eq!(
        f.call(standard::SHMEM_MAP, &ro(0, 0), &[f.fd()]),
        neg(libc::EINVAL)
    );
    assert_eq!(
        f.call(standard::SHMEM_UNMAP, &ro(0, 0), &[]),
        neg(libc::EINVAL)
    );
    f.assert_refused(Refusal::ZeroLength, 2, 0);
    f.finish(0);
}

#[test]
fn offset_overflow() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    let huge = u64::MAX - 4095;
    // Window offset + length overflows.
    assert_eq!(
        f.call(
            standard::SHMEM_MAP,
            &mmap_body(0, 0, huge, 8192, 0),
            &[f.fd()]
        ),
        neg(libc::EOVERFLOW)
    );
    // File offset + length overflows.
    assert_eq!(
        f.call(
            standard::SHMEM_MAP,
            &mmap_body(0, huge, 0, 8192, 0),
            &[f.fd()]
        ),
        neg(libc::EOVERFLOW)
    );
    // Unmap too.
    assert_eq!(
        f.call(standard::SHMEM_UNMAP, &ro(huge, 8192), &[]),
        neg(libc::EOVERFLOW)
    );
    f.assert_refused(Refusal::Overflow, 3, 0);
    f.finish(0);
}

#[test]
fn end_past_the_window() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    // Straddles the end, starts at the end, starts far past it.
    for (offset, len) in [
        (WINDOW - PAGE, 2 * PAGE),
        (WINDOW, PAGE),
        (1 << 40, 2 * MIB),
    ] {
        assert_eq!(
            f.call(standard::SHMEM_MAP, &ro(offset, len), &[f.fd()]),
            neg(libc::ERANGE),
            "offset {offset:#x} len {len:#x}"
        );
    }
    f.assert_refused(Refusal::OutOfWindow, 3, 0);
    f.finish(0);
}

#[test]
fn misaligned_offset_len_fd_offset() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    let page = f.window().page_size();
    for (what, fd_offset, offset, len) in [
        ("offset", 0, page / 2, 2 * MIB),
        ("len", 0, 0, 2 * MIB + 1),
        ("fd_offset", page / 2, 0, 2 * MIB),
    ] {
        assert_eq!(
            f.call(
                standard::SHMEM_MAP,
                &mmap_body(0, fd_offset, offset, len, 0),
                &[f.fd()]
            ),
            neg(libc::EINVAL),
            "misaligned {what}"
        );
    }
    f.assert_refused(Refusal::Misaligned, 3, 0);
    f.finish(0);
}

#[test]
fn unknown_flags() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    for flags in [2, MMAP_FLAG_WRITABLE | 1 << 63] {
        assert_eq!(
            f.call(
                standard::SHMEM_MAP,
                &mmap_body(0, 0, 0, 2 * MIB, flags),
                &[f.fd()]
            ),
            neg(libc::EINVAL),
            "flags {flags:#x}"
        );
    }
    f.assert_refused(Refusal::Flags, 2, 0);
    f.finish(0);
}

#[test]
fn wrong_shmid() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    for shmid in [1, 255] {
        assert_eq!(
            f.call(
                standard::SHMEM_MAP,
                &mmap_body(shmid, 0, 0, 2 * MIB, 0),
                &[f.fd()]
            ),
            neg(libc::ENXIO),
            "shmid {shmid}"
        );
    }
    f.assert_refused(Refusal::Shmid, 2, 0);
    f.finish(0);
}

#[test]
fn overlap_is_busy() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    assert_eq!(f.call(standard::SHMEM_MAP, &ro(0, 2 * MIB), &[f.fd()]), 0);
    // Partial overlap, the exact range made writable (refused: spec-strict policy), and a range
    // that encloses the live one; all from another part of the file.
    for (offset, len, flags) in [
        (MIB, 2 * MIB, 0),
        (0, 2 * MIB, MMAP_FLAG_WRITABLE),
        (0, 4 * MIB, 0),
    ] {
        assert_eq!(
            f.call(
                standard::SHMEM_MAP,
                &mmap_body(0, 2 * MIB, offset, len, flags),
                &[f.fd()]
            ),
            neg(libc::EBUSY),
            "offset {offset:#x} len {len:#x} flags {flags}"
        );
    }
    f.assert_refused(Refusal::Overlap, 3, 1);
    // The live mapping is untouched, and nothing else was mapped.
    assert_eq!(perms_at(f.window(), 0), "r--s");
    assert_eq!(read_window(f.window(), MIB, 4), vec![fill(MIB / PAGE); 4]);
    assert_eq!(perms_at(f.window(), 2 * MIB), "---p");
    f.finish(4 * MIB);
}

#[test]
fn unmap_of_nothing() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    // Nothing mapped at all.
    assert_eq!(
        f.call(standard::SHMEM_UNMAP, &ro(0, 2 * MIB), &[]),
        neg(libc::ENOENT)
    );
    // Half of a live mapping, and a range next to it (spec-strict: exact match only).
    assert_eq!(f.call(standard::SHMEM_MAP, &ro(0, 2 * MIB), &[f.fd()]), 0);
    assert_eq!(
        f.call(standard::SHMEM_UNMAP, &ro(0, MIB), &[]),
        neg(libc::ENOENT)
    );
    assert_eq!(
        f.call(standard::SHMEM_UNMAP, &ro(2 * MIB, 2 * MIB), &[]),
        neg(libc::ENOENT)
    );
    f.assert_refused(Refusal::NotMapped, 3, 1);
    assert_eq!(perms_at(f.window(), 0), "r--s");
    assert_eq!(perms_at(f.window(), MIB), "r--s");
    f.finish(4 * MIB);
}

#[test]
fn io_outside_guest_memory() {
    let _g = serial();
    let h = Harness::with(Dialect::Legacy, WINDOW, false, Arc::new(IoSpace::new()));
    h.io.add_window(GPA, h.window.clone()).unwrap();
    let f = Fixture::with(h, Dialect::Legacy);
    let r = FS_FLAG_MAP_R;
    let rw = FS_FLAG_MAP_R | FS_FLAG_MAP_W;
    let efault = neg(libc::EFAULT);
    let io = |entries: &[(u64, u64, u64, u64)]| f.call(legacy::FS_IO, &fs_body(entries), &[f.fd()]);

    // No guest RAM at all (IoSpace::new()): both directions.
    assert_eq!(io(&[(0, 0x1000, PAGE, r)]), efault);
    assert_eq!(io(&[(0, 0x1000, PAGE, FS_FLAG_MAP_W)]), efault);
    // The registered window, where nothing is mapped.
    assert_eq!(io(&[(0, GPA, PAGE, r)]), efault);
    f.assert_refused(Refusal::BadAddress, 3, 0);

    // Map [0, 2 MiB) writable and [4 MiB, 6 MiB) read-only.
    let map = fs_body(&[(0, 0, 2 * MIB, rw), (0, 4 * MIB, 2 * MIB, r)]);
    assert_eq!(f.call(legacy::FS_MAP, &map, &[f.fd()]), 0);
    // Runs from the writable mapping into the unmapped part.
    assert_eq!(io(&[(5 * PAGE, GPA + 2 * MIB - PAGE, 2 * PAGE, r)]), efault);
    // Reading the file into a read-only mapping.
    assert_eq!(io(&[(5 * PAGE, GPA + 4 * MIB, PAGE, r)]), efault);
    // A good entry, then one outside guest memory: nothing moves at all.
    assert_eq!(
        io(&[(5 * PAGE, GPA, PAGE, r), (5 * PAGE, 0x1000, PAGE, r)]),
        efault
    );
    // Past the end of the window.
    assert_eq!(io(&[(0, GPA + WINDOW - PAGE, 2 * PAGE, r)]), efault);
    // gpa + len overflows.
    assert_eq!(
        io(&[(0, u64::MAX - PAGE + 1, PAGE, r)]),
        neg(libc::EOVERFLOW)
    );
    let m = f.window().metrics();
    assert_eq!(m.refusals(Refusal::BadAddress), 7);
    assert_eq!(m.refusals(Refusal::Overflow), 1);
    assert_eq!(m.total_refusals(), 8);
    assert_eq!((m.ios(), m.io_bytes()), (0, 0), "no transfer was made");
    assert_eq!(f.window().live_mappings(), 2);
    assert_eq!(read_window(f.window(), 0, 4), vec![fill(0); 4]);
    assert_eq!(
        read_window(f.window(), 2 * MIB - PAGE, 4),
        vec![fill(2 * MIB / PAGE - 1); 4]
    );
    f.finish(6 * MIB);
}

#[test]
fn peer_closing_mid_message_ends_the_thread_with_truncated() {
    let _g = serial();
    let (file, _) = memfd(FILE_LEN, fill);
    let fd = file.as_raw_fd();
    let base = fd_count();
    let flags = VERSION | FLAG_NEED_REPLY;
    let map = ro(2 * MIB, 2 * MIB);

    // Header and half the body.
    let mut half_body = RawPeer::header(standard::SHMEM_MAP, flags, 40);
    half_body.extend_from_slice(&map[..20]);
    // Half a header.
    let half_header = RawPeer::header(standard::SHMEM_MAP, flags, 40)[..5].to_vec();
    // An oversized body cut short while it is drained: 4106 of its 12,388 bytes.
    let mut half_drain = RawPeer::header(standard::SHMEM_MAP, flags, 3 * 4096 + 100);
    half_drain.resize(half_drain.len() + 4096 + 10, 0xa5);

    for (bytes, got, expected) in [
        (half_body, 20, 40),
        (half_header, 5, 12),
        (half_drain, 4096 + 10, 3 * 4096 + 100),
    ] {
        let mut h = Harness::new(Dialect::Standard, WINDOW);
        // A live mapping, which the disconnect must drop.
        assert_eq!(h.peer.call(standard::SHMEM_MAP, &ro(0, 2 * MIB), &[fd]), 0);
        assert_eq!(h.window.live_mappings(), 1);
        let n = h.peer.sock.send_with_fds(&[&bytes[..]], &[fd, fd]).unwrap();
        assert_eq!(n, bytes.len());
        drop(h.peer);

        let res = h.thread.take().unwrap().join();
        match res {
            Err(ChannelError::Truncated {
                got: g,
                expected: e,
            }) => {
                assert_eq!((g, e), (got, expected), "where the stream ended")
            }
            other => {
                panic!("expected Truncated {{ got: {got}, expected: {expected} }}, got {other:?}")
            }
        }
        // Every mapping was dropped, the window is whole, and every descriptor is closed (the
        // two that came with the cut message and the harness's own).
        assert_eq!(h.window.live_mappings(), 0);
        assert_eq!(perms_at(&h.window, 0), "---p");
        assert_window_sound(&h.window);
        assert_table_matches_kernel(&h.window);
        assert_eq!(fd_count(), base, "descriptors leaked");
        // The window itself still works.
        let entry = MapEntry {
            offset: 2 * MIB,
            fd_offset: 0,
            len: 2 * MIB,
            access: Access::ReadOnly,
        };
        h.window.map(&[entry], &file, Policy::STANDARD).unwrap();
        assert_eq!(perms_at(&h.window, 2 * MIB), "r--s");
        assert_eq!(read_window(&h.window, 2 * MIB, 4), vec![fill(0); 4]);
        assert_window_sound(&h.window);
    }
}

/// xorshift64: deterministic, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// An offset or length: mostly page aligned and inside `limit`, sometimes at the edges.
    fn edgy(&mut self, limit: u64) -> u64 {
        match self.below(12) {
            0 => 0,
            1..=3 => self.below(limit / PAGE) * PAGE,
            4..=6 => self.below(4) * 2 * MIB,
            7 => limit - PAGE,
            8 => u64::MAX - self.below(3 * PAGE),
            9 => self.below(limit),
            10 => PAGE / 2,
            _ => self.next(),
        }
    }
}

/// Errnos a garbage message may be refused with.
const GARBAGE_ERRNOS: &[i32] = &[
    libc::EINVAL,
    libc::ENOSYS,
    libc::EBADF,
    libc::EOVERFLOW,
    libc::ERANGE,
    libc::ENXIO,
    libc::EBUSY,
    libc::ENOENT,
    libc::EFAULT,
    libc::EFBIG,
];

/// A body for `dialect` of the right size whose fields are near the edges.
fn structured_body(rng: &mut XorShift, dialect: Dialect) -> Vec<u8> {
    match dialect {
        Dialect::Standard => {
            let shmid = if rng.below(4) == 0 {
                rng.next() as u8
            } else {
                0
            };
            let fd_offset = rng.edgy(FILE_LEN);
            let offset = rng.edgy(WINDOW);
            let len = rng.edgy(WINDOW);
            mmap_body(shmid, fd_offset, offset, len, rng.below(3))
        }
        Dialect::Legacy => {
            let n = rng.below(FS_BACKEND_ENTRIES as u64 + 1) as usize;
            let entries: Vec<_> = (0..n)
                .map(|_| {
                    let fd_offset = rng.edgy(FILE_LEN);
                    let mut offset = rng.edgy(WINDOW);
                    if rng.below(2) == 0 {
                        offset = offset.wrapping_add(GPA);
                    }
                    let len = if rng.below(3) == 0 {
                        0
                    } else {
                        rng.edgy(WINDOW)
                    };
                    (fd_offset, offset, len, rng.below(4))
                })
                .collect();
            fs_body(&entries)
        }
    }
}

/// Fires `count` garbage messages, each with NEED_REPLY, and checks every one was answered and
/// counted.
fn garbage_round(dialect: Dialect, seed: u64, count: u64) {
    let h = Harness::with(dialect, WINDOW, false, Arc::new(IoSpace::new()));
    if dialect == Dialect::Legacy {
        h.io.add_window(GPA, h.window.clone()).unwrap();
    }
    let f = Fixture::with(h, dialect);
    let m = f.window().metrics().clone();
    let full = match dialect {
        Dialect::Standard => std::mem::size_of::<VhostUserMMap>(),
        Dialect::Legacy => std::mem::size_of::<FsBackendMsg>(),
    };
    let mut rng = XorShift(seed);
    let (mut refused, mut served) = (0, 0);
    let served_codes: &[u32] = match dialect {
        Dialect::Standard => &[standard::SHMEM_MAP, standard::SHMEM_UNMAP],
        Dialect::Legacy => &[
            legacy::FS_MAP,
            legacy::FS_UNMAP,
            legacy::FS_SYNC,
            legacy::FS_IO,
        ],
    };
    let mut errnos = std::collections::BTreeMap::new();
    for i in 0..count {
        // Codes 0..16, half of the time one this dialect serves.
        let code = if rng.below(2) == 0 {
            served_codes[rng.below(served_codes.len() as u64) as usize]
        } else {
            rng.below(16) as u32
        };
        let size = if rng.below(2) == 0 {
            full
        } else {
            rng.below(300) as usize
        };
        let body = if size == full && rng.below(4) != 0 {
            structured_body(&mut rng, dialect)
        } else {
            rng.bytes(size)
        };
        // 0 to 3 descriptors, most often the 1 a map needs.
        let fds = vec![f.fd(); [0, 1, 1, 2, 3][rng.below(5) as usize]];
        let v = f.call(code, &body, &fds);
        let what = format!(
            "{dialect:?} message {i}: code {code}, {size} bytes, {} fds: {v}",
            fds.len()
        );
        if v < 0 {
            refused += 1;
            let errno = i32::try_from(-v).expect(&what);
            assert!(GARBAGE_ERRNOS.contains(&errno), "unexpected errno: {what}");
            *errnos.entry(errno).or_insert(0) += 1;
        } else {
            served += 1;
        }
        assert_eq!(m.requests(), i + 1, "{what}");
        assert_eq!(m.total_refusals(), refused, "{what}");
    }
    eprintln!(
        "{dialect:?}: {count} garbage messages, {served} served, {refused} refused: {errnos:?}"
    );
    assert_window_sound(f.window());
    assert_table_matches_kernel(f.window());
    assert_eq!(fd_count(), f.fds, "descriptors leaked");
    // Whatever got mapped goes; then a valid map must succeed.
    f.window().unmap_all().unwrap();
    f.finish(0);
}

#[test]
fn random_garbage() {
    let _g = serial();
    garbage_round(Dialect::Standard, 0x9e37_79b9_7f4a_7c15, 200);
    garbage_round(Dialect::Legacy, 0xd1b5_4a32_d192_ed03, 200);
}

// Regression tests for two bugs these tests found.

/// A map whose file offset does not fit `off_t` (>= 2^63, page aligned, no u64 overflow) over a
/// live mapping that the policy lets it replace. It used to fail inside `map_fd` after the table
/// had been told the range was the reservation again, while the kernel kept the old mapping. Now
/// the range check refuses it first, and the table still matches the kernel.
#[test]

fn fd_offset_beyond_off_t_is_refused_before_mmap() {
    let _g = serial();
    let f = Fixture::new(Dialect::Legacy);
    let r = FS_FLAG_MAP_R;
    assert_eq!(
        f.call(legacy::FS_MAP, &fs_body(&[(0, 0, 2 * MIB, r)]), &[f.fd()]),
        0
    );
    assert_eq!(
        f.call(
            legacy::FS_MAP,
            &fs_body(&[(1 << 63, 0, 2 * MIB, r)]),
            &[f.fd()]
        ),
        neg(libc::EOVERFLOW)
    );
    assert_table_matches_kernel(f.window());
    f.finish(2 * MIB);
}

/// A peer that sends a message one byte at a time, each byte with 200 descriptors, used to make
/// the channel hold thousands of them until the message was complete. Now one is kept per
/// message and the rest are closed as they arrive.
#[test]
fn descriptors_spread_over_parts_of_one_message_are_capped() {
    let _g = serial();
    let f = Fixture::new(Dialect::Standard);
    let mut msg = RawPeer::header(standard::SHMEM_MAP, VERSION | FLAG_NEED_REPLY, 40);
    msg.extend_from_slice(&ro(0, 2 * MIB));
    let many = vec![f.fd(); 200];
    let (last, parts) = msg.split_last().unwrap();
    for b in parts {
        f.h.peer.sock.send_with_fds(&[&[*b][..]], &many).unwrap();
    }
    // Give the channel time to take in every part but the last.
    let mut peak = 0;
    for _ in 0..100 {
        peak = peak.max(fd_count().saturating_sub(f.fds));
        if peak > MAX_FDS {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    f.h.peer.sock.send_with_fds(&[&[*last][..]], &[]).unwrap();
    assert_eq!(f.h.peer.reply(standard::SHMEM_MAP), neg(libc::EBADF));
    assert!(peak <= MAX_FDS, "{peak} descriptors held for one message");
    f.assert_refused(Refusal::FdCount, 1, 0);
    f.finish(0);
}
