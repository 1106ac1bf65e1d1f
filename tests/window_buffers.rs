// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A guest `read(2)` or `write(2)` whose user buffer is itself a DAX mapping (the Linux guest
//! hands the pages of a DAX-mapped buffer to FUSE_READ / FUSE_WRITE as they are, so their
//! descriptors point into the window), against the `peers/dax-backend` process, which sees
//! guest RAM only.
//!
//! - Legacy dialect: the backend has the device copy (FS_IO; MAP_W for a write: the device
//!   `pwrite`s guest memory into the file), so the bytes really land in the host file, for one
//!   buffer, for more buffers than an FS_IO message holds, for buffers partly in RAM and
//!   partly in the window; a copy that stops half way gives a short count, and one that cannot
//!   start a clean error.
//! - Standard dialect (no FS_IO): a clean FUSE error reply (`EFAULT`), nothing written.
//! - Either dialect: any request whose header, arguments or reply lie outside guest RAM is
//!   answered, or returned with nothing written where it left no room in RAM for a reply, and
//!   the next request on the same queue is served.
//!
//! The window's buffers come from SETUPMAPPINGs of other files, as a guest's `mmap` of a file
//! on the DAX mount makes them. The backend binary is found as in `tests/dax_e2e.rs`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{start_dax_backend, PeerProcess, MIB};
use virtio_fs_dax::test_utils::guest::fuse::{
    self, GetattrIn, InHeader, OutHeader, FUSE_GETATTR, FUSE_LOOKUP, FUSE_READ, FUSE_ROOT_ID,
    FUSE_WRITE,
};
use virtio_fs_dax::test_utils::{guest_read, FuseSession};
use virtio_fs_dax::{Dialect, Fs};
use vm_memory::{ByteValued, Bytes, GuestAddress};

const WIN_GPA: u64 = 1 << 34;
const WINDOW: u64 = 64 * MIB;
/// Window offset of a read-only mapping of `src.bin` (the buffers writes take their bytes from).
const SRC_AT: u64 = 0;
/// Window offset of a writable mapping of `sink.bin` (the buffers reads land in).
const SINK_AT: u64 = 4 * MIB;
/// A window offset nothing maps.
const UNMAPPED_AT: u64 = 16 * MIB;
/// Guest RAM the tests use for buffers of their own (the session's scratch area is 4..8 MiB
/// of the 64 MiB).
const RAM_BUF: u64 = 16 * MIB;
/// Neither guest RAM nor a window.
const NOWHERE: u64 = 1 << 40;

fn win(offset: u64) -> GuestAddress {
    GuestAddress(WIN_GPA + offset)
}

fn src_bytes() -> Vec<u8> {
    (0..2 * MIB as usize)
        .map(|i| (i % 251) as u8 ^ 0x5a)
        .collect()
}

/// The backend serving a tree of three files, the device, an initialised FUSE session with
/// `src.bin` mapped read-only at `SRC_AT` and `sink.bin` mapped writable at `SINK_AT`, and
/// `dst.bin` (1 MiB of zeros) open read-write.
struct Setup {
    _dir: tempfile::TempDir,
    shared: PathBuf,
    _backend: PeerProcess,
    fs: Fs,
    s: FuseSession,
    dst: (u64, u64),
}

impl Setup {
    fn new(dialect: Dialect) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::write(shared.join("src.bin"), src_bytes()).unwrap();
        std::fs::write(shared.join("sink.bin"), vec![0u8; 2 * MIB as usize]).unwrap();
        std::fs::write(shared.join("dst.bin"), vec![0u8; MIB as usize]).unwrap();
        let socket = dir.path().join("dax.sock");
        let backend = start_dax_backend(&socket, &shared, dialect == Dialect::Legacy);
        let (fs, mut s) = common::dax_device(&socket, WIN_GPA, WINDOW, dialect);
        s.init().expect("INIT");
        let open = |s: &mut FuseSession, name: &str| {
            let (nodeid, _) = s.lookup(FUSE_ROOT_ID, name).expect("LOOKUP");
            let fh = s.open(nodeid, libc::O_RDWR as u32).expect("OPEN");
            (nodeid, fh)
        };
        let src = open(&mut s, "src.bin");
        let sink = open(&mut s, "sink.bin");
        let dst = open(&mut s, "dst.bin");
        s.setupmapping(src.0, src.1, 0, 2 * MIB, false, SRC_AT)
            .expect("map src.bin read-only");
        s.setupmapping(sink.0, sink.1, 0, 2 * MIB, true, SINK_AT)
            .expect("map sink.bin writable");
        Setup {
            _dir: dir,
            shared,
            _backend: backend,
            fs,
            s,
            dst,
        }
    }

    fn host(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.shared.join(name)).unwrap()
    }

    /// The session goes on: a plain WRITE and READ of `dst.bin` through guest RAM are served.
    fn still_served(&mut self, what: &str) {
        let (nodeid, fh) = self.dst;
        let at = MIB - 64;
        let n = self
            .s
            .write(nodeid, fh, at, b"still served")
            .unwrap_or_else(|e| panic!("WRITE after {what}: {e}"));
        assert_eq!(n, 12, "after {what}");
        let back = self
            .s
            .read(nodeid, fh, at, 12)
            .unwrap_or_else(|e| panic!("READ after {what}: {e}"));
        assert_eq!(back, b"still served", "after {what}");
    }

    fn ram(&self) -> &vm_memory::GuestMemoryMmap {
        self.s.queue().memory()
    }
}

#[test]
fn legacy_write_from_window_buffers() {
    let mut t = Setup::new(Dialect::Legacy);
    let src = src_bytes();
    let (nodeid, fh) = t.dst;
    let mut want = vec![0u8; MIB as usize];

    // One buffer, in the read-only mapping of src.bin: the device writes it into dst.bin.
    let ios = t.fs.metrics().ios();
    let n =
        t.s.write_from(nodeid, fh, 4101, 100_000, win(SRC_AT + 123))
            .expect("WRITE from a window buffer");
    assert_eq!(n, 100_000);
    want[4101..104_101].copy_from_slice(&src[123..100_123]);
    assert!(
        t.host("dst.bin") == want,
        "the window's bytes in the host file"
    );
    assert!(t.fs.metrics().ios() > ios, "served through FS_IO");

    // More buffers than one FS_IO message holds (8): two messages, in order.
    let bufs: Vec<(GuestAddress, u32)> = (0..11u64)
        .map(|i| (win(SRC_AT + 300_000 + i * 9000), 4097))
        .collect();
    let n =
        t.s.write_from_bufs(nodeid, fh, 200_000, &bufs)
            .expect("WRITE from 11 window buffers");
    assert_eq!(n, 11 * 4097);
    for (i, _) in bufs.iter().enumerate() {
        let from = 300_000 + i * 9000;
        let at = 200_000 + i * 4097;
        want[at..at + 4097].copy_from_slice(&src[from..from + 4097]);
    }
    assert!(t.host("dst.bin") == want, "11 buffers, in order");

    // Mixed: buffers in guest RAM and in the window, in one request.
    let ram_bytes: Vec<u8> = (0..8192u32).map(|i| (i * 13) as u8 | 1).collect();
    t.ram()
        .write_slice(&ram_bytes, GuestAddress(RAM_BUF))
        .unwrap();
    let bufs = [
        (GuestAddress(RAM_BUF), 5000),
        (win(SRC_AT + 777), 7000),
        (GuestAddress(RAM_BUF + 5000), 3000),
    ];
    let n =
        t.s.write_from_bufs(nodeid, fh, 400_000, &bufs)
            .expect("WRITE from RAM and window buffers");
    assert_eq!(n, 15_000);
    want[400_000..405_000].copy_from_slice(&ram_bytes[..5000]);
    want[405_000..412_000].copy_from_slice(&src[777..7777]);
    want[412_000..415_000].copy_from_slice(&ram_bytes[5000..8000]);
    assert!(t.host("dst.bin") == want, "RAM and window bytes, in order");

    // The copy stops half way: the first FS_IO message (8 buffers) is done, the second one's
    // buffers are in a part of the window nothing maps, so the device refuses it. The reply
    // is a short count, and exactly those bytes are in the file.
    let mut bufs: Vec<(GuestAddress, u32)> =
        (0..8u64).map(|i| (win(SRC_AT + i * 4096), 4096)).collect();
    bufs.push((win(UNMAPPED_AT), 4096));
    let n =
        t.s.write_from_bufs(nodeid, fh, 500_000, &bufs)
            .expect("a short WRITE");
    assert_eq!(n, 8 * 4096, "a short count: the bytes done");
    want[500_000..500_000 + 8 * 4096].copy_from_slice(&src[..8 * 4096]);
    assert!(t.host("dst.bin") == want, "the bytes done, no more");

    // Nothing can be done: a buffer in an unmapped part of the window, or neither in RAM nor
    // in a window. A clean error, the file unchanged.
    for (buf, what) in [
        (win(UNMAPPED_AT), "an unmapped window range"),
        (GuestAddress(NOWHERE), "no memory at all"),
    ] {
        let err =
            t.s.write_from(nodeid, fh, 600_000, 4096, buf)
                .expect_err(what);
        assert_eq!(err.errno(), Some(-libc::EFAULT), "{what}: {err}");
        assert!(t.host("dst.bin") == want, "{what}: nothing written");
        t.still_served(what);
        want[MIB as usize - 64..MIB as usize - 52].copy_from_slice(b"still served");
    }
}

#[test]
fn standard_write_from_window_buffers_is_refused() {
    let mut t = Setup::new(Dialect::Standard);
    let (nodeid, fh) = t.dst;
    t.ram()
        .write_slice(&[7u8; 4096], GuestAddress(RAM_BUF))
        .unwrap();
    let ios = t.fs.metrics().ios();
    for (bufs, what) in [
        (vec![(win(SRC_AT + 123), 100_000)], "one window buffer"),
        (
            vec![(GuestAddress(RAM_BUF), 4096), (win(SRC_AT), 4096)],
            "RAM and window buffers",
        ),
    ] {
        let err =
            t.s.write_from_bufs(nodeid, fh, 4096, &bufs)
                .expect_err(what);
        assert_eq!(err.errno(), Some(-libc::EFAULT), "{what}: {err}");
        assert!(
            t.host("dst.bin")[..(MIB - 64) as usize]
                .iter()
                .all(|&b| b == 0),
            "{what}: nothing written"
        );
        t.still_served(what);
    }
    assert_eq!(t.fs.metrics().ios(), ios, "no IO request in this dialect");
}

#[test]
fn legacy_read_into_window_buffers() {
    let mut t = Setup::new(Dialect::Legacy);
    let src = src_bytes();
    let (nodeid, fh) = t.dst;
    // dst.bin gets known bytes first (the same inode, rewritten on the host).
    let body: Vec<u8> = (0..MIB as usize).map(|i| (i % 241) as u8 ^ 0xa5).collect();
    std::fs::write(t.shared.join("dst.bin"), &body).unwrap();

    // Ten buffers (two FS_IO messages), partly in RAM, partly in the writable mapping of
    // sink.bin.
    let bufs: Vec<(GuestAddress, u32)> = (0..10u64)
        .map(|i| {
            if i % 3 == 0 {
                (GuestAddress(RAM_BUF + i * 8192), 5000)
            } else {
                (win(SINK_AT + i * 8192), 5000)
            }
        })
        .collect();
    let n =
        t.s.read_into_bufs(nodeid, fh, 3333, &bufs)
            .expect("READ into RAM and window buffers");
    assert_eq!(n, 50_000);
    let sink = t.host("sink.bin");
    for (i, &(gpa, len)) in bufs.iter().enumerate() {
        let want = &body[3333 + i * 5000..3333 + (i + 1) * 5000];
        let mut got = vec![0u8; len as usize];
        if gpa.0 >= WIN_GPA {
            let window = t.fs.window().unwrap().clone();
            guest_read(&window, WIN_GPA, gpa.0, &mut got).unwrap();
            assert!(got == want, "buffer {i} through the window");
            let at = (gpa.0 - WIN_GPA - SINK_AT) as usize;
            assert!(&sink[at..at + 5000] == want, "buffer {i} in sink.bin");
        } else {
            t.ram().read_slice(&mut got, gpa).unwrap();
            assert!(got == want, "buffer {i} in RAM");
        }
    }

    // By hand: the reply header shares its descriptor with the first 1000 bytes of data (the
    // virtio framing is free), the rest in the window. The data starts right after the header.
    let read_in = fuse::ReadIn {
        fh,
        offset: 70_000,
        size: 4000,
        ..Default::default()
    };
    let req = fuse::request(header(FUSE_READ, nodeid, 902), &[read_in.as_slice()]);
    t.ram().write_slice(&req, GuestAddress(RAM_BUF)).unwrap();
    let reply_at = GuestAddress(RAM_BUF + 4096);
    let (_, len) = raw(
        &mut t,
        &[(GuestAddress(RAM_BUF), req.len() as u32)],
        &[(reply_at, 16 + 1000), (win(SINK_AT + MIB), 3000)],
    );
    assert_eq!(len, 16 + 4000);
    let mut got = vec![0u8; 16 + 1000];
    t.ram().read_slice(&mut got, reply_at).unwrap();
    let h = *OutHeader::from_slice(&got[..16]).unwrap();
    assert_eq!((h.len, h.error, h.unique), (16 + 4000, 0, 902));
    assert!(
        got[16..] == body[70_000..71_000],
        "data after the header, in RAM"
    );
    let mut got = vec![0u8; 3000];
    let window = t.fs.window().unwrap().clone();
    guest_read(&window, WIN_GPA, WIN_GPA + SINK_AT + MIB, &mut got).unwrap();
    assert!(got == body[71_000..74_000], "the rest in the window");

    // A read past the end of the file: a short count.
    let n =
        t.s.read_into(nodeid, fh, MIB - 1000, 8192, win(SINK_AT + MIB))
            .expect("READ at the end of the file");
    assert_eq!(n, 1000);

    // A read whose buffer is in a read-only mapping: the device refuses to store there.
    let err =
        t.s.read_into(nodeid, fh, 0, 4096, win(SRC_AT))
            .expect_err("READ into a read-only mapping");
    assert_eq!(err.errno(), Some(-libc::EFAULT), "{err}");
    assert!(t.host("src.bin") == src, "src.bin unchanged");
    t.still_served("refused reads");
}

#[test]
fn standard_read_into_window_buffers_is_refused() {
    let mut t = Setup::new(Dialect::Standard);
    let (nodeid, fh) = t.dst;
    for (bufs, what) in [
        (vec![(win(SINK_AT), 4096)], "one window buffer"),
        (
            vec![(GuestAddress(RAM_BUF), 4096), (win(SINK_AT), 4096)],
            "RAM and window buffers",
        ),
    ] {
        let err = t.s.read_into_bufs(nodeid, fh, 0, &bufs).expect_err(what);
        assert_eq!(err.errno(), Some(-libc::EFAULT), "{what}: {err}");
        t.still_served(what);
    }
}

/// Requests other than READ and WRITE with a buffer outside guest RAM, and headers and replies
/// outside it, in both dialects: each is answered with `EFAULT` where its reply header lies in
/// RAM, returned with nothing written where it does not, and the queue goes on.
#[test]
fn any_request_with_a_buffer_outside_ram() {
    for dialect in [Dialect::Standard, Dialect::Legacy] {
        let mut t = Setup::new(dialect);
        let (nodeid, fh) = t.dst;
        let getattr = GetattrIn::default();
        let attr_out = std::mem::size_of::<fuse::AttrOut>() as u32;

        // GETATTR whose reply payload lies in the window.
        let err =
            t.s.request_with_bufs(
                FUSE_GETATTR,
                nodeid,
                &[getattr.as_slice()],
                &[],
                0,
                &[(win(SINK_AT), attr_out)],
            )
            .expect_err("GETATTR replying into the window");
        assert_eq!(err.errno(), Some(-libc::EFAULT), "{dialect:?}: {err}");
        t.still_served("GETATTR replying into the window");

        // LOOKUP whose name lies in the window (sink.bin's first bytes are zeros: an empty
        // name, were the backend able to read it).
        let err =
            t.s.request_with_bufs(
                FUSE_LOOKUP,
                FUSE_ROOT_ID,
                &[],
                &[(win(SINK_AT), 8)],
                std::mem::size_of::<fuse::EntryOut>(),
                &[],
            )
            .expect_err("LOOKUP of a name in the window");
        assert_eq!(err.errno(), Some(-libc::EFAULT), "{dialect:?}: {err}");
        t.still_served("LOOKUP of a name in the window");

        // By hand: a request whose header lies in the window, with its reply header in RAM.
        let reply_at = GuestAddress(RAM_BUF);
        let (head, len) = raw(&mut t, &[(win(SRC_AT), 80)], &[(reply_at, 256)]);
        assert_eq!(len, 16, "{dialect:?}: a reply header alone");
        let mut h = [0u8; 16];
        t.ram().read_slice(&mut h, reply_at).unwrap();
        let h = *OutHeader::from_slice(&h).unwrap();
        assert_eq!((h.len, h.error, h.unique), (16, -libc::EFAULT, 0), "{head}");
        t.still_served("a header in the window");

        // A zero-length buffer at an address that is nowhere, in an otherwise valid GETATTR.
        let req = fuse::request(header(FUSE_GETATTR, nodeid, 900), &[getattr.as_slice()]);
        t.ram().write_slice(&req, GuestAddress(RAM_BUF)).unwrap();
        let (_, len) = raw(
            &mut t,
            &[
                (GuestAddress(RAM_BUF), req.len() as u32),
                (GuestAddress(NOWHERE), 0),
            ],
            &[(GuestAddress(RAM_BUF + 4096), 16 + attr_out)],
        );
        assert_eq!(len, 16, "{dialect:?}");
        let mut h = [0u8; 16];
        t.ram()
            .read_slice(&mut h, GuestAddress(RAM_BUF + 4096))
            .unwrap();
        let h = *OutHeader::from_slice(&h).unwrap();
        assert_eq!((h.error, h.unique), (-libc::EFAULT, 900), "{dialect:?}");
        t.still_served("a zero-length buffer nowhere");

        // A GETATTR whose whole reply room lies in the window: nowhere to answer, so it comes
        // back with nothing written.
        let (_, len) = raw(
            &mut t,
            &[(GuestAddress(RAM_BUF), req.len() as u32)],
            &[(win(SINK_AT), 16 + attr_out)],
        );
        assert_eq!(len, 0, "{dialect:?}: no room for a reply");
        t.still_served("a reply header in the window");

        // A WRITE from RAM whose reply lies in the window: refused before anything is
        // written, as it could not say how much was.
        let write_in = fuse::WriteIn {
            fh,
            offset: 0,
            size: 4096,
            ..Default::default()
        };
        let req = fuse::request(header(FUSE_WRITE, nodeid, 901), &[write_in.as_slice()]);
        t.ram().write_slice(&req, GuestAddress(RAM_BUF)).unwrap();
        t.ram()
            .write_slice(&[9u8; 4096], GuestAddress(RAM_BUF + 8192))
            .unwrap();
        let (_, len) = raw(
            &mut t,
            &[
                (GuestAddress(RAM_BUF), req.len() as u32),
                (GuestAddress(RAM_BUF + 8192), 4096),
            ],
            &[(win(SINK_AT), 24)],
        );
        assert_eq!(len, 0, "{dialect:?}: no room for a reply");
        assert!(
            t.host("dst.bin")[..4096].iter().all(|&b| b == 0),
            "{dialect:?}: nothing written"
        );
        t.still_served("a WRITE replying into the window");
        assert_eq!(t.fs.window().unwrap().live_mappings(), 2, "{dialect:?}");
    }
}

fn header(opcode: u32, nodeid: u64, unique: u64) -> InHeader {
    InHeader {
        len: 0,
        opcode,
        unique,
        nodeid,
        // SAFETY: geteuid and getegid cannot fail and touch no memory.
        uid: unsafe { libc::geteuid() },
        // SAFETY: as above.
        gid: unsafe { libc::getegid() },
        pid: std::process::id(),
        total_extlen: 0,
        padding: 0,
    }
}

/// Sends one chain by hand on the session's request queue; returns its head and used length.
fn raw(
    t: &mut Setup,
    readable: &[(GuestAddress, u32)],
    writable: &[(GuestAddress, u32)],
) -> (u16, u32) {
    let q = t.s.queue_mut();
    let head = q.add_chain(readable, writable).unwrap();
    q.kick().unwrap();
    let (got, len) = q
        .try_wait_used(Duration::from_secs(5))
        .unwrap()
        .expect("the chain comes back");
    assert_eq!(got, head);
    (head, len)
}
