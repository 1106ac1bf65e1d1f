// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Requests really in flight when the backend is lost: the simulated guest puts FUSE requests on
//! the device's queues, the in-process backend takes some off the available rings and holds them
//! (or never reads them), completes some out of order, and dies. After `Fs::reconnect` to a new
//! backend:
//!
//! - without `INFLIGHT_SHMFD`, each request in flight comes back to the guest once, with `EIO`
//!   and its unique, the new backend never sees any of them and serves the next request;
//! - with it, the new backend gets the same inflight region and resubmits exactly the requests
//!   in flight, each once, and nothing completed is replayed;
//! - a completed request whose head the driver already reused is not returned twice;
//! - with virtiofsd (which does not offer `INFLIGHT_SHMFD`), stopped and killed with requests
//!   unread (virtiofsd takes one request at a time and refuses to open anything that would make
//!   it block, so only the in-process backend can hold a request): they fail with `EIO`, none
//!   reaches the restarted virtiofsd, which serves what comes next. That test needs virtiofsd,
//!   found as `tests/virtiofsd.rs` says.

mod common;

use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures as P;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

use common::*;
use virtio_fs_dax::test_utils::guest::fuse::{
    self, EntryOut, InHeader, InitIn, OpenIn, OutHeader, FUSE_FORGET, FUSE_GETATTR, FUSE_INIT,
    FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, FUSE_LOOKUP, FUSE_OPEN, FUSE_ROOT_ID,
    FUSE_WRITE,
};
use virtio_fs_dax::test_utils::{
    memfd_guest_memory, PoppedRequest, SplitQueueDriver, TestBackendConfig, TestBackendServer,
};
use virtio_fs_dax::Fs;

const T: Duration = Duration::from_secs(5);
/// How long the guest waits to be sure nothing more comes back.
const QUIET: Duration = Duration::from_millis(300);
const FUSE_MKDIR: u32 = 9;
const FUSE_UNLINK: u32 = 10;
const FUSE_RENAME: u32 = 12;
const FUSE_CREATE: u32 = 35;
const HIPRIO: usize = 0;
const REQUESTS: usize = 1;

/// A request the guest sent.
#[derive(Clone, Copy, Debug)]
struct Sent {
    unique: u64,
    head: u16,
    /// Where the reply goes (none for FORGET).
    reply: Option<GuestAddress>,
}

/// The guest's driver: the high-priority queue, one request queue, and buffers from 4 MiB on.
struct Guest {
    mem: GuestMemoryMmap,
    queues: [SplitQueueDriver; 2],
    next_buf: u64,
    unique: u64,
}

impl Guest {
    fn new() -> Guest {
        let mem = memfd_guest_memory(64 << 20).unwrap();
        let hiprio = SplitQueueDriver::new(mem.clone(), GuestAddress(MIB), 128).unwrap();
        let request = SplitQueueDriver::new(mem.clone(), GuestAddress(2 * MIB), 128).unwrap();
        Guest {
            mem,
            queues: [hiprio, request],
            next_buf: 4 * MIB,
            unique: 0,
        }
    }

    /// Activates `fs` with this guest's memory and queues.
    fn activate(&self, fs: &mut Fs) {
        fs.ack_features(fs.features());
        let queues = vec![
            self.queues[HIPRIO].activate_queue(0).unwrap(),
            self.queues[REQUESTS].activate_queue(1).unwrap(),
        ];
        fs.activate(
            GuestMemoryAtomic::new(self.mem.clone()),
            Arc::new(CountingInterrupt::default()),
            queues,
        )
        .unwrap();
    }

    /// Sends a request with opcode `opcode` (and 40 bytes of arguments) on `queue`, with room
    /// for a 64-byte reply unless it is a FORGET; does not wait.
    fn send(&mut self, queue: usize, opcode: u32) -> Sent {
        self.send_args(queue, opcode, 1, &[&[0x5a; 40]], 64)
    }

    /// Sends a request on `queue` for `nodeid` with `args`, with room for a `room`-byte reply
    /// unless it is a FORGET; does not wait.
    fn send_args(
        &mut self,
        queue: usize,
        opcode: u32,
        nodeid: u64,
        args: &[&[u8]],
        room: u32,
    ) -> Sent {
        self.unique += 1;
        let header = InHeader {
            opcode,
            unique: self.unique,
            nodeid,
            ..InHeader::default()
        };
        let req = fuse::request(header, args);
        let at = GuestAddress(self.next_buf);
        let reply = GuestAddress(self.next_buf + 2048);
        self.next_buf += 4096;
        self.mem.write_slice(&req, at).unwrap();
        // The reply buffer starts as garbage, so a reply is known to have been written.
        self.mem
            .write_slice(&vec![0xee; room as usize], reply)
            .unwrap();
        let readable = [(at, req.len() as u32)];
        let writable = [(reply, room)];
        let with_reply = opcode != FUSE_FORGET;
        let q = &mut self.queues[queue];
        let head = q
            .add_chain(&readable, if with_reply { &writable } else { &[] })
            .unwrap();
        q.kick().unwrap();
        Sent {
            unique: self.unique,
            head,
            reply: with_reply.then_some(reply),
        }
    }

    /// The next used buffer of `queue` within `timeout`. A head the driver does not have in
    /// flight (one returned twice) fails the test.
    fn used(&mut self, queue: usize, timeout: Duration) -> Option<(u16, u32)> {
        self.queues[queue]
            .try_wait_used(timeout)
            .expect("the device returned a head the driver does not have in flight")
    }

    /// Waits for `sent` to come back next on `queue`, and parses its reply: the payload, or the
    /// negative errno.
    fn reply(&mut self, queue: usize, sent: &Sent) -> Result<Vec<u8>, i32> {
        let (head, len) = self
            .used(queue, T)
            .unwrap_or_else(|| panic!("request {} never came back", sent.unique));
        assert_eq!(
            head, sent.head,
            "request {} came back out of turn",
            sent.unique
        );
        let at = sent.reply.expect("a request with a reply");
        let mut bytes = vec![0u8; len as usize];
        self.mem.read_slice(&mut bytes, at).unwrap();
        fuse::parse_reply(&bytes, sent.unique)
            .unwrap_or_else(|e| panic!("request {}: {e}", sent.unique))
            .map(<[u8]>::to_vec)
    }

    /// Asserts that nothing more comes back on either queue.
    fn nothing_more(&mut self) {
        for q in [HIPRIO, REQUESTS] {
            assert_eq!(self.used(q, QUIET), None, "queue {q}: more came back");
        }
    }
}

/// The backend answers `req` with a reply header carrying 8 bytes of payload.
fn answer(server: &TestBackendServer, req: &PoppedRequest) {
    let header = OutHeader {
        len: 24,
        error: 0,
        unique: req.unique().unwrap(),
    };
    let mut reply = header.as_slice().to_vec();
    reply.extend_from_slice(&req.unique().unwrap().to_le_bytes());
    assert_eq!(server.complete(req.queue, req.head, &reply).unwrap(), 24);
}

fn uniques(popped: &[PoppedRequest]) -> Vec<u64> {
    popped.iter().map(|p| p.unique().unwrap()).collect()
}

fn device(socket: &std::path::Path) -> Fs {
    let mut fs = Fs::builder("inflight")
        .socket_path(socket)
        .queue_size(128)
        .build()
        .unwrap();
    fs.connect().unwrap();
    fs
}

fn with_inflight() -> TestBackendConfig {
    TestBackendConfig {
        protocol_features: TestBackendConfig::default().protocol_features | P::INFLIGHT_SHMFD,
        ..TestBackendConfig::default()
    }
}

#[test]
fn without_inflight_tracking_requests_in_flight_fail_once_and_are_not_replayed() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    let server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
    let mut fs = device(&socket);
    let mut guest = Guest::new();
    guest.activate(&mut fs);
    let s = server.state();
    assert!(!s.protocol_acked(P::INFLIGHT_SHMFD));
    assert!(!s.requests.contains(&"GET_INFLIGHT_FD"));

    // The backend takes four requests and a FORGET, and completes the first.
    let getattr = guest.send(REQUESTS, FUSE_GETATTR);
    let write = guest.send(REQUESTS, FUSE_WRITE);
    let create = guest.send(REQUESTS, FUSE_CREATE);
    let unlink = guest.send(REQUESTS, FUSE_UNLINK);
    let forget = guest.send(HIPRIO, FUSE_FORGET);
    let taken = server.pop_requests(REQUESTS).unwrap();
    assert_eq!(uniques(&taken), [1, 2, 3, 4]);
    assert_eq!(server.pop_requests(HIPRIO).unwrap().len(), 1);
    answer(&server, &taken[0]);
    assert_eq!(
        guest.reply(REQUESTS, &getattr),
        Ok(1u64.to_le_bytes().to_vec())
    );
    // One more the backend never reads.
    let rename = guest.send(REQUESTS, FUSE_RENAME);

    // The backend dies holding three requests and the FORGET, one request unread.
    drop(server);
    wait_backend_lost(&mut fs, T, "the lost backend");
    let server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
    fs.reconnect().unwrap();

    // Each request in flight comes back once, in order, with EIO and its unique; the FORGET
    // comes back without reply.
    for sent in [&write, &create, &unlink, &rename] {
        assert_eq!(guest.reply(REQUESTS, sent), Err(-libc::EIO), "{sent:?}");
    }
    assert_eq!(guest.used(HIPRIO, T), Some((forget.head, 0)));
    guest.nothing_more();
    let m = fs.metrics();
    assert_eq!(
        (
            m.inflight_failed(),
            m.inflight_malformed(),
            m.inflight_stale()
        ),
        (5, 0, 0)
    );
    assert!(fs.counters().contains(&("inflight_failed", 5)));

    // The new backend starts after them and never sees them.
    let s = server.state();
    assert_eq!((s.vrings[HIPRIO].base, s.vrings[REQUESTS].base), (1, 5));
    assert!(server.pop_requests(HIPRIO).unwrap().is_empty());
    assert!(server.pop_requests(REQUESTS).unwrap().is_empty());

    // And serves the next request.
    let next = guest.send(REQUESTS, FUSE_GETATTR);
    let popped = server.pop_requests(REQUESTS).unwrap();
    assert_eq!(uniques(&popped), [next.unique]);
    answer(&server, &popped[0]);
    assert_eq!(
        guest.reply(REQUESTS, &next),
        Ok(next.unique.to_le_bytes().to_vec())
    );
    guest.nothing_more();
    assert_eq!(uniques(&server.state().popped), [next.unique]);
}

#[test]
fn with_inflight_tracking_the_new_backend_resubmits_exactly_the_requests_in_flight() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    let server = TestBackendServer::start(&socket, with_inflight()).unwrap();
    let mut fs = device(&socket);
    let mut guest = Guest::new();
    guest.activate(&mut fs);

    // The region is asked for and handed back before the vrings.
    let s = server.state();
    assert!(s.protocol_acked(P::INFLIGHT_SHMFD));
    let at = |name: &str| s.requests.iter().position(|r| *r == name).unwrap();
    assert!(at("SET_MEM_TABLE") < at("GET_INFLIGHT_FD"));
    assert!(at("GET_INFLIGHT_FD") < at("SET_INFLIGHT_FD"));
    assert!(at("SET_INFLIGHT_FD") < at("SET_VRING_NUM"));
    let region = s.get_inflight.unwrap();
    assert_eq!(s.set_inflight, Some(region));
    assert_eq!((region.num_queues, region.queue_size), (2, 128));
    assert!(s.errors.is_empty(), "{:?}", s.errors);

    // The backend takes three requests and a FORGET, and completes the second first.
    let write = guest.send(REQUESTS, FUSE_WRITE);
    let create = guest.send(REQUESTS, FUSE_CREATE);
    let unlink = guest.send(REQUESTS, FUSE_UNLINK);
    let forget = guest.send(HIPRIO, FUSE_FORGET);
    let taken = server.pop_requests(REQUESTS).unwrap();
    assert_eq!(uniques(&taken), [1, 2, 3]);
    assert!(taken.iter().all(|p| !p.resubmitted));
    assert_eq!(server.pop_requests(HIPRIO).unwrap().len(), 1);
    answer(&server, &taken[1]);
    assert_eq!(
        guest.reply(REQUESTS, &create),
        Ok(2u64.to_le_bytes().to_vec())
    );
    let rename = guest.send(REQUESTS, FUSE_RENAME);

    drop(server);
    wait_backend_lost(&mut fs, T, "the lost backend");
    let server = TestBackendServer::start(&socket, with_inflight()).unwrap();
    fs.reconnect().unwrap();

    // The same region, handed over before the vrings, not asked for again; bases at the used
    // index.
    let s = server.state();
    assert!(!s.requests.contains(&"GET_INFLIGHT_FD"), "{:?}", s.requests);
    let at = |name: &str| s.requests.iter().position(|r| *r == name).unwrap();
    assert!(at("SET_INFLIGHT_FD") < at("SET_VRING_NUM"));
    assert_eq!(
        s.set_inflight,
        Some(region),
        "the region of the first backend"
    );
    assert_eq!((s.vrings[HIPRIO].base, s.vrings[REQUESTS].base), (0, 1));
    assert!(s.errors.is_empty(), "{:?}", s.errors);

    // The new backend resubmits the two held requests in the order they were taken, then
    // reads the unread one; the completed one is not replayed. The FORGET is resubmitted too.
    let popped = server.pop_requests(REQUESTS).unwrap();
    assert_eq!(
        uniques(&popped),
        [write.unique, unlink.unique, rename.unique]
    );
    assert_eq!(
        popped.iter().map(|p| p.resubmitted).collect::<Vec<_>>(),
        [true, true, false]
    );
    let hiprio = server.pop_requests(HIPRIO).unwrap();
    assert_eq!(uniques(&hiprio), [forget.unique]);
    assert!(hiprio[0].resubmitted);
    for p in popped.iter().chain(&hiprio) {
        if p.writable_len > 0 {
            answer(&server, p);
        } else {
            server.complete(p.queue, p.head, &[]).unwrap();
        }
    }
    for sent in [&write, &unlink, &rename] {
        assert_eq!(
            guest.reply(REQUESTS, sent),
            Ok(sent.unique.to_le_bytes().to_vec())
        );
    }
    assert_eq!(guest.used(HIPRIO, T), Some((forget.head, 0)));
    guest.nothing_more();
    assert_eq!(
        fs.metrics().inflight_failed(),
        0,
        "the device failed nothing"
    );
    // Each once: nothing more to take.
    assert!(server.pop_requests(REQUESTS).unwrap().is_empty());
    assert!(server.pop_requests(HIPRIO).unwrap().is_empty());

    // A device reset discards the region: the next activation asks for a new one.
    fs.reset();
    for q in &mut guest.queues {
        q.restart().unwrap();
    }
    guest.activate(&mut fs);
    let s = server.state();
    let gets = s
        .requests
        .iter()
        .filter(|r| **r == "GET_INFLIGHT_FD")
        .count();
    assert_eq!(gets, 1, "{:?}", s.requests);
    let fresh = s.get_inflight.unwrap();
    assert_ne!((fresh.dev, fresh.ino), (region.dev, region.ino));
    assert_eq!(s.set_inflight, Some(fresh));
}

#[test]
fn without_inflight_tracking_a_head_already_reused_is_not_returned_twice() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    let server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
    let mut fs = device(&socket);
    let mut guest = Guest::new();
    guest.activate(&mut fs);

    // The backend completes the second request first; the driver reuses its head at once.
    let first = guest.send(REQUESTS, FUSE_WRITE);
    let second = guest.send(REQUESTS, FUSE_UNLINK);
    let taken = server.pop_requests(REQUESTS).unwrap();
    answer(&server, &taken[1]);
    assert!(guest.reply(REQUESTS, &second).is_ok());
    let third = guest.send(REQUESTS, FUSE_RENAME);
    assert_eq!(third.head, second.head, "the driver reuses the head");

    drop(server);
    wait_backend_lost(&mut fs, T, "the lost backend");
    let server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
    fs.reconnect().unwrap();

    // The window [used, avail) holds the second (completed) and the third, both with the same
    // head: only the third comes back (a second return of the head would fail `used`). The
    // first, before the window, is the documented bound: it stays outstanding.
    assert_eq!(guest.reply(REQUESTS, &third), Err(-libc::EIO));
    guest.nothing_more();
    let m = fs.metrics();
    assert_eq!((m.inflight_failed(), m.inflight_stale()), (1, 1));
    let _ = first;

    // The new backend serves the next request.
    let next = guest.send(REQUESTS, FUSE_GETATTR);
    let popped = server.pop_requests(REQUESTS).unwrap();
    assert_eq!(uniques(&popped), [next.unique]);
    answer(&server, &popped[0]);
    assert!(guest.reply(REQUESTS, &next).is_ok());
}

/// INIT on `guest`'s request queue, waited for.
fn init(guest: &mut Guest) {
    let init = InitIn {
        major: FUSE_KERNEL_VERSION,
        minor: FUSE_KERNEL_MINOR_VERSION,
        max_readahead: 128 << 10,
        ..InitIn::default()
    };
    let sent = guest.send_args(REQUESTS, FUSE_INIT, 0, &[init.as_slice()], 256);
    guest.reply(REQUESTS, &sent).expect("INIT");
}

/// MKDIR `name` in the root, not waited for.
fn mkdir(guest: &mut Guest, name: &str) -> Sent {
    let mode_umask = [0o755u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
    let name = [name.as_bytes(), b"\0"].concat();
    guest.send_args(
        REQUESTS,
        FUSE_MKDIR,
        FUSE_ROOT_ID,
        &[&mode_umask, &name],
        256,
    )
}

#[test]
fn virtiofsd_killed_with_requests_unread_fails_them_and_the_restarted_one_serves() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("file"), b"x").unwrap();
    let socket = dir.path().join("vfs.sock");
    let mut daemon = start_virtiofsd(&socket, &shared);
    let mut fs = device(&socket);
    let mut guest = Guest::new();
    guest.activate(&mut fs);
    let n = fs.session().unwrap().negotiated();
    assert!(
        !n.backend_protocol.contains(P::INFLIGHT_SHMFD),
        "virtiofsd 1.14"
    );

    init(&mut guest);
    let lookup = guest.send_args(REQUESTS, FUSE_LOOKUP, FUSE_ROOT_ID, &[b"file\0"], 256);
    let entry: EntryOut = fuse::read_struct(&guest.reply(REQUESTS, &lookup).expect("LOOKUP"));
    // Stopped, virtiofsd reads none of these: a MKDIR, an OPEN, a FORGET.
    daemon.stop();
    let made = mkdir(&mut guest, "made");
    let open_in = OpenIn {
        flags: libc::O_RDONLY as u32,
        open_flags: 0,
    };
    let open = guest.send_args(
        REQUESTS,
        FUSE_OPEN,
        entry.nodeid,
        &[open_in.as_slice()],
        256,
    );
    let forget = guest.send_args(HIPRIO, FUSE_FORGET, entry.nodeid, &[&1u64.to_le_bytes()], 0);
    assert_eq!(guest.used(REQUESTS, QUIET), None, "virtiofsd is stopped");

    daemon.kill9();
    wait_backend_lost(&mut fs, Duration::from_secs(10), "kill -9");
    let _daemon = start_virtiofsd(&socket, &shared);
    fs.reconnect()
        .expect("reconnect to the restarted virtiofsd");

    // They come back (with EIO, the FORGET without reply); the restarted virtiofsd never got
    // them: it would have made the directory.
    assert_eq!(guest.reply(REQUESTS, &made), Err(-libc::EIO));
    assert_eq!(guest.reply(REQUESTS, &open), Err(-libc::EIO));
    assert_eq!(guest.used(HIPRIO, T), Some((forget.head, 0)));
    guest.nothing_more();
    assert_eq!(fs.metrics().inflight_failed(), 3);
    assert!(!shared.join("made").exists(), "the MKDIR was not replayed");

    // The restarted virtiofsd serves what comes next.
    init(&mut guest);
    let again = mkdir(&mut guest, "again");
    guest.reply(REQUESTS, &again).expect("MKDIR");
    assert!(shared.join("again").is_dir());
    assert!(!shared.join("made").exists());
}
