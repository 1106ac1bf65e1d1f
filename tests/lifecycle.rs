// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Lifecycle and resource limits, with real timing, real sockets and real mappings:
//!
//! - a reset while the backend maps leaves no mapping (the channel is stopped before the
//!   mappings go);
//! - a session that ends leaves no thread behind that could map into, or wipe, the next one;
//! - dropping or resetting the device with a backend that never answers `RESET_DEVICE` is
//!   bounded;
//! - `handle_one` never blocks its caller: half a message, an oversized body, a backend that
//!   leaves its replies unread;
//! - a channel that fails drops its mappings in `handle_one` mode too;
//! - the window bounds its live mappings and its granule;
//! - cleanup works at the process's map limit, in a child process driven to that limit.

mod common;

use std::os::fd::{AsRawFd, RawFd};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vhost::vhost_user::VhostUserFrontendReqHandler;
use vm_memory::{ByteValued, GuestMemoryAtomic};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use common::*;
use virtio_fs_dax::channel::{Error as ChannelError, DRAIN_BUDGET};
use virtio_fs_dax::protocol::{standard, Range, FLAG_NEED_REPLY, HEADER_SIZE, VERSION};
use virtio_fs_dax::test_utils::{FakeMemoryManager, TestBackendConfig, TestBackendServer};
use virtio_fs_dax::window::{self, RangeError, DEFAULT_MAX_MAPPINGS};
use virtio_fs_dax::{BackendChannel, DaxWindow, Dialect, Fs, Policy, Refusal};

const WIN_GPA: u64 = 1 << 34;
const T: Duration = Duration::from_secs(5);

/// A read-only SHMEM_MAP (or SHMEM_UNMAP) body of region 0.
fn ro(offset: u64, len: u64) -> Vec<u8> {
    shmem_range(offset, len).as_slice().to_vec()
}

fn neg(errno: i32) -> i64 {
    -i64::from(errno)
}

/// Whether every page of the window is the reservation (no mapping, no hole).
fn window_is_empty(w: &DaxWindow) -> bool {
    let lines = maps_in(w.host_addr(), w.size());
    let whole = lines.first().map(|m| m.start) == Some(w.host_addr())
        && lines.last().map(|m| m.end) == Some(w.host_addr() + w.size())
        && lines.windows(2).all(|p| p[0].end == p[1].start);
    whole && lines.iter().all(|m| m.perms == "---p") && w.live_mappings() == 0
}

fn device(socket: &std::path::Path) -> Fs {
    let mut fs = Fs::builder("dax")
        .socket_path(socket)
        .window_size(16 * MIB)
        .queue_size(128)
        .build()
        .unwrap();
    fs.set_shm_base(0, WIN_GPA).unwrap();
    fs
}

/// A device on the in-process backend, its window and guest RAM.
struct Started {
    _dir: tempfile::TempDir,
    server: TestBackendServer,
    fs: Fs,
    w: Arc<DaxWindow>,
    mem: GuestMemoryAtomic<vm_memory::GuestMemoryMmap>,
}

fn started() -> Started {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    let server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
    let fs = device(&socket);
    Started {
        w: fs.window().unwrap().clone(),
        mem: GuestMemoryAtomic::new(guest_memory(8 << 20)),
        _dir: dir,
        server,
        fs,
    }
}

fn activate(fs: &mut Fs, mem: &GuestMemoryAtomic<vm_memory::GuestMemoryMmap>) {
    fs.connect().unwrap();
    fs.ack_features(fs.features());
    fs.activate(
        mem.clone(),
        Arc::new(CountingInterrupt::default()),
        activate_queues(2, 128),
    )
    .unwrap();
}

/// A small xorshift, so the timings vary from round to round but every run is the same.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

// ---------------------------------------------------------------------------------------------
// Reset and teardown order

#[test]
fn reset_while_the_backend_maps_leaves_no_mapping() {
    let _g = serial();
    let Started {
        _dir,
        server,
        mut fs,
        w,
        mem,
    } = started();
    let (file, _) = memfd(2 * MIB, |_| 0x5a);
    let file = Arc::new(file);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let rounds = 50;
    let mut left = Vec::new();
    for round in 0..rounds {
        activate(&mut fs, &mem);
        assert!(server.wait_for(|s| s.backend_channel, T));
        let backend = server.backend_channel().unwrap();
        let f = file.clone();
        let maps_before = w.metrics().maps();
        // The backend maps and unmaps one range as fast as it can, until its channel fails.
        let hammer = thread::spawn(move || loop {
            if backend.shmem_map(&shmem_range(0, 2 * MIB), &*f).is_err()
                || backend.shmem_unmap(&shmem_range(0, 2 * MIB)).is_err()
            {
                return;
            }
        });
        let start = Instant::now();
        while w.metrics().maps() == maps_before {
            assert!(start.elapsed() < T, "the backend never mapped");
            thread::yield_now();
        }
        thread::sleep(Duration::from_micros(rng.next() % 2000));
        fs.reset();
        hammer.join().unwrap();
        if !window_is_empty(&w) {
            left.push(round);
        }
    }
    assert!(
        left.is_empty(),
        "{} of {rounds} resets left a mapping (rounds {left:?})",
        left.len()
    );
    assert_window_sound(&w);
}

#[test]
fn an_ended_session_leaves_no_thread_that_wipes_the_next_one() {
    let _g = serial();
    let Started {
        _dir,
        server,
        mut fs,
        w,
        mem,
    } = started();
    activate(&mut fs, &mem);
    let (file, _) = memfd(4 * MIB, |page| (page / 512) as u8 + 1);

    // The first backend maps, then its vhost-user connection goes away while something (a
    // forked child, say) still holds its end of the backend channel.
    let old = server.backend_channel().unwrap();
    old.shmem_map(&shmem_range(0, 2 * MIB), &file).unwrap();
    assert_eq!(w.live_mappings(), 1);
    server.disconnect();
    wait_backend_lost(&mut fs, T, "backend loss");
    assert!(window_is_empty(&w), "a lost backend's mappings are dropped");

    // The next backend maps for the next session.
    fs.reconnect().unwrap();
    assert!(server.wait_for(|s| s.backend_channel && s.connection == 2, T));
    let new = server.backend_channel().unwrap();
    let mut m = shmem_range(2 * MIB, 2 * MIB);
    m.fd_offset = 2 * MIB;
    new.shmem_map(&m, &file).unwrap();
    assert_eq!(w.live_mappings(), 1);

    // Now the old end closes. A channel thread of the old session would see its backend leave
    // and drop every mapping, the new session's included.
    drop(old);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(w.live_mappings(), 1, "the old session touched the new one");
    assert_eq!(read_window(&w, 2 * MIB, 4), vec![2; 4]);
    assert_eq!(w.metrics().refusals(Refusal::Stale), 0);
    assert_window_sound(&w);
}

#[test]
fn reset_and_drop_with_a_stalled_backend_are_bounded() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    let stall = Duration::from_secs(3);
    let config = TestBackendConfig {
        reset_device_delay: stall,
        ..Default::default()
    };
    let server = TestBackendServer::start(&socket, config).unwrap();
    let mm = Arc::new(FakeMemoryManager::new());
    let mut fs = Fs::builder("dax")
        .socket_path(&socket)
        .window_size(16 * MIB)
        .queue_size(128)
        .memory_manager(mm.clone())
        .shutdown_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    fs.set_shm_base(0, WIN_GPA).unwrap();
    let w = fs.window().unwrap().clone();
    let mem = GuestMemoryAtomic::new(guest_memory(8 << 20));
    activate(&mut fs, &mem);
    let (file, _) = memfd(2 * MIB, |_| 1);
    server
        .backend_channel()
        .unwrap()
        .shmem_map(&shmem_range(0, 2 * MIB), &file)
        .unwrap();

    // Reset: the backend sits on RESET_DEVICE; the device gives up after its bound, with the
    // mappings already gone.
    let start = Instant::now();
    fs.reset();
    let spent = start.elapsed();
    assert!(
        spent < stall / 2,
        "reset waited {spent:?} for a stalled backend"
    );
    assert!(window_is_empty(&w));

    // Drop of an active device with the stalled backend: bounded too. The device reconnects on
    // activation (the stalled connection was dropped); wait until the server has let it go.
    thread::sleep(stall);
    activate(&mut fs, &mem);
    let start = Instant::now();
    drop(fs);
    let spent = start.elapsed();
    assert!(
        spent < stall / 2,
        "drop waited {spent:?} for a stalled backend"
    );
    assert!(mm.live().is_empty(), "the window was unregistered");
    assert!(window_is_empty(&w));
}

// ---------------------------------------------------------------------------------------------
// The channel never blocks its caller

fn message(request: u32, size: u32, body: &[u8]) -> Vec<u8> {
    let mut m = RawPeer::header(request, VERSION | FLAG_NEED_REPLY, size);
    m.extend_from_slice(body);
    m
}

/// Waits until the socket is readable (or `timeout`).
fn wait_readable(fd: RawFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
}

#[test]
fn half_a_message_returns_at_once_and_keeps_its_descriptor() {
    let _g = serial();
    let base = fd_count();
    let w = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    let (mut channel, peer) = standard_channel(&w, "lifecycle");
    let (file, _) = memfd(2 * MIB, |_| 7);
    let msg = message(standard::SHMEM_MAP, 40, &ro(0, 2 * MIB));

    // Six header bytes, with the descriptor, then silence: every call returns at once.
    peer.send_bytes(&msg[..6], &[file.as_raw_fd()]);
    let start = Instant::now();
    for _ in 0..100 {
        assert!(channel.handle_one().unwrap().is_none());
    }
    let spent = start.elapsed();
    assert!(
        spent < Duration::from_millis(500),
        "100 calls on half a message took {spent:?}"
    );
    // The rest comes in two parts without descriptors: the one that came with the first bytes
    // belongs to this message.
    peer.send_bytes(&msg[6..20], &[]);
    assert!(channel.handle_one().unwrap().is_none());
    peer.send_bytes(&msg[20..], &[]);
    let out = channel.handle_one().unwrap().unwrap();
    assert_eq!(
        (out.request, out.value, out.replied),
        (standard::SHMEM_MAP, 0, true)
    );
    assert_eq!(peer.reply(standard::SHMEM_MAP), 0);
    assert_eq!(read_window(&w, 0, 4), vec![7; 4]);
    // Nothing more: no message, no wait.
    assert!(channel.handle_one().unwrap().is_none());
    drop((channel, peer, file));
    assert_eq!(fd_count(), base, "descriptors leaked");
}

#[test]
fn an_oversized_body_is_drained_in_bounded_steps() {
    let _g = serial();
    let w = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    let (mut channel, peer) = standard_channel(&w, "lifecycle");
    let (file, _) = memfd(2 * MIB, |_| 9);
    let size = 1 << 20;
    let fd = file.as_raw_fd();

    // An oversized message (1 MiB of body) and a valid map behind it, written by a thread that
    // blocks whenever the socket is full.
    let writer = {
        let sock = peer.sock.try_clone().unwrap();
        let mut stream = message(standard::SHMEM_MAP, size as u32, &[]);
        stream.resize(HEADER_SIZE + size, 0xa5);
        let valid = message(standard::SHMEM_MAP, 40, &ro(0, 2 * MIB));
        let fd = rustix_dup(fd);
        thread::spawn(move || {
            use std::io::Write;
            (&sock).write_all(&stream).unwrap();
            assert_eq!(
                sock.send_with_fds(&[&valid[..]], &[fd]).unwrap(),
                valid.len()
            );
            // SAFETY: `fd` is this thread's own duplicate, closed once.
            unsafe { libc::close(fd) };
        })
    };
    let mut outs = Vec::new();
    let mut not_yet = 0;
    while outs.len() < 2 {
        match channel.handle_one().unwrap() {
            Some(out) => outs.push(out.value),
            None => {
                not_yet += 1;
                wait_readable(channel.as_raw_fd(), T);
            }
        }
    }
    writer.join().unwrap();
    assert_eq!(outs, vec![neg(libc::EMSGSIZE), 0]);
    assert!(
        not_yet >= size / DRAIN_BUDGET - 1,
        "1 MiB drained in {not_yet} calls with a budget of {DRAIN_BUDGET} bytes each"
    );
    assert_eq!(peer.reply(standard::SHMEM_MAP), neg(libc::EMSGSIZE));
    assert_eq!(peer.reply(standard::SHMEM_MAP), 0);
    assert_eq!(w.metrics().refusals(Refusal::Size), 1);
    assert_eq!(w.live_mappings(), 1);

    // A header announcing 4 GiB, some bytes, then silence: calls return, none waits for the
    // rest; the end of the stream in the middle is Truncated, and the mapping is dropped.
    let mut head = message(standard::SHMEM_MAP, u32::MAX, &[]);
    head.resize(HEADER_SIZE + 100_000, 0);
    peer.send_bytes(&head, &[]);
    for _ in 0..4 {
        assert!(channel.handle_one().unwrap().is_none());
    }
    drop(peer);
    match channel.handle_one() {
        Err(ChannelError::Truncated { got, expected }) => {
            assert_eq!((got, expected), (100_000, u32::MAX as usize))
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert!(window_is_empty(&w));
}

/// A duplicate of `fd` for another thread to own.
fn rustix_dup(fd: RawFd) -> RawFd {
    // SAFETY: dup of a descriptor the caller holds open; the result is checked.
    let new = unsafe { libc::dup(fd) };
    assert!(new >= 0);
    new
}

#[test]
fn a_failed_channel_drops_its_mappings_in_handle_one_mode() {
    let _g = serial();
    let w = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    let (mut channel, peer) = standard_channel(&w, "lifecycle");
    let (file, _) = memfd(2 * MIB, |_| 3);
    peer.send_bytes(
        &message(standard::SHMEM_MAP, 40, &ro(0, 2 * MIB)),
        &[file.as_raw_fd()],
    );
    assert_eq!(channel.handle_one_timeout(T).unwrap().unwrap().value, 0);
    assert_eq!(w.live_mappings(), 1);
    drop(peer);
    assert!(matches!(
        channel.handle_one(),
        Err(ChannelError::Disconnected)
    ));
    assert!(window_is_empty(&w), "the failed channel left its mappings");
    assert_eq!(w.generation(), 1, "the session's generation ended");
    // A channel of the new generation serves.
    let (mut channel, peer) = standard_channel(&w, "lifecycle");
    peer.send_bytes(
        &message(standard::SHMEM_MAP, 40, &ro(0, 2 * MIB)),
        &[file.as_raw_fd()],
    );
    assert_eq!(channel.handle_one_timeout(T).unwrap().unwrap().value, 0);
    assert_eq!(read_window(&w, 0, 1), vec![3]);
}

#[test]
fn a_backend_that_never_reads_its_replies_ends_the_channel() {
    let _g = serial();
    let w = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    let (mut channel, peer) = standard_channel(&w, "lifecycle");
    let sent = 100_000;
    let writer = {
        let sock = peer.sock.try_clone().unwrap();
        thread::spawn(move || {
            let msg = message(standard::SHMEM_UNMAP, 40, &ro(0, 2 * MIB));
            for _ in 0..sent {
                if sock.send_with_fds(&[&msg[..]], &[]).is_err() {
                    return;
                }
            }
        })
    };
    let mut served = 0;
    let end = loop {
        match channel.handle_one_timeout(T) {
            Ok(Some(out)) => {
                assert_eq!(out.value, neg(libc::ENOENT));
                served += 1;
            }
            Ok(None) => panic!("the writer stalled"),
            Err(e) => break e,
        }
    };
    match end {
        ChannelError::Send(e) => assert_eq!(e.raw_os_error(), Some(libc::EAGAIN)),
        other => panic!("expected Send(EAGAIN), got {other:?}"),
    }
    assert!(served < sent, "{served} replies fit an unread socket");
    drop(channel);
    drop(peer);
    writer.join().unwrap();
}

#[test]
fn a_channel_of_an_ended_generation_maps_nothing_and_wipes_nothing() {
    let _g = serial();
    let mut h = Harness::new(Dialect::Standard, 8 * MIB);
    let w = h.window.clone();
    let (file, _) = memfd(4 * MIB, |page| (page / 512) as u8 + 1);
    let fd = file.as_raw_fd();
    assert_eq!(h.peer.call(standard::SHMEM_MAP, &ro(0, 2 * MIB), &[fd]), 0);

    // The VMM ends the session without stopping this channel (a thread that missed its stop
    // bound), and the next session maps.
    w.reset().unwrap();
    assert!(window_is_empty(&w));
    let mut e = entry(2 * MIB, 2 * MIB);
    e.fd_offset = 2 * MIB;
    w.map(&[e], &file, Policy::STANDARD).unwrap();

    // The stale channel is refused whatever it asks ...
    assert_eq!(
        h.peer
            .call(standard::SHMEM_MAP, &ro(4 * MIB, 2 * MIB), &[fd]),
        neg(libc::ESTALE)
    );
    assert_eq!(
        h.peer
            .call(standard::SHMEM_UNMAP, &ro(2 * MIB, 2 * MIB), &[]),
        neg(libc::ESTALE)
    );
    assert_eq!(w.metrics().refusals(Refusal::Stale), 2);
    // ... and when its backend leaves, it drops nothing of the new session.
    drop(h.peer);
    assert!(matches!(
        h.thread.take().unwrap().join(),
        Err(ChannelError::Disconnected)
    ));
    assert_eq!(w.live_mappings(), 1);
    assert_eq!(w.generation(), 1);
    assert_eq!(read_window(&w, 2 * MIB, 1), vec![2]);
}

#[test]
fn io_of_an_ended_generation_is_refused() {
    use virtio_fs_dax::protocol::{legacy, FsBackendMsg, FS_FLAG_MAP_R};
    use virtio_fs_dax::IoSpace;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    let _g = serial();
    let ram = Arc::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (4 * MIB) as usize)]).unwrap(),
    );
    let io = Arc::new(IoSpace::with_guest_memory(ram.clone()));
    let h = Harness::with(Dialect::Legacy, 8 * MIB, false, io);
    let (file, _) = memfd(PAGE, |_| 0x77);
    // FS_IO: read one page of the file into guest RAM at 0x1000.
    let mut m = FsBackendMsg::default();
    m.fd_offset[0] = 0;
    m.cache_offset[0] = 0x1000;
    m.len[0] = PAGE;
    m.flags[0] = FS_FLAG_MAP_R;
    let body = m.as_slice().to_vec();
    let fd = file.as_raw_fd();
    assert_eq!(h.peer.call(legacy::FS_IO, &body, &[fd]), PAGE as i64);
    assert_eq!(ram.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0x77);
    // The session ends; the channel's next IO, into the next driver's RAM, is refused.
    ram.write_obj(0u8, GuestAddress(0x1000)).unwrap();
    h.window.reset().unwrap();
    assert_eq!(h.peer.call(legacy::FS_IO, &body, &[fd]), neg(libc::ESTALE));
    assert_eq!(ram.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0);
    assert_eq!(h.window.metrics().refusals(Refusal::Stale), 1);
    h.stop();
}

#[test]
fn dropping_a_channel_thread_stops_it() {
    let _g = serial();
    let mut h = Harness::new(Dialect::Standard, 8 * MIB);
    let (file, _) = memfd(2 * MIB, |_| 1);
    let fd = file.as_raw_fd();
    assert_eq!(h.peer.call(standard::SHMEM_MAP, &ro(0, 2 * MIB), &[fd]), 0);
    let start = Instant::now();
    drop(h.thread.take());
    assert!(start.elapsed() < T, "drop waited for the thread");
    // The thread is gone and our end is shut down: the backend reads EOF, and its next request
    // fails instead of being served.
    let mut buf = [0u8; 1];
    use std::io::Read;
    assert_eq!((&h.peer.sock).read(&mut buf).unwrap(), 0, "EOF");
    let msg = message(standard::SHMEM_MAP, 40, &ro(2 * MIB, 2 * MIB));
    assert!(h.peer.sock.send_with_fds(&[&msg[..]], &[fd]).is_err());
    // Stopping does not decide about the mappings: the VMM ends the generation after it.
    assert_eq!(h.window.live_mappings(), 1);
    h.window.reset().unwrap();
    assert!(window_is_empty(&h.window));
}

// ---------------------------------------------------------------------------------------------
// Limits

#[test]
fn the_window_bounds_its_live_mappings() {
    let _g = serial();
    let (file, _) = memfd(16 * PAGE, |_| 1);
    // No bound at all is usize::MAX.
    let unbounded = DaxWindow::builder(8 * MIB)
        .max_mappings(usize::MAX)
        .build()
        .unwrap();
    unbounded
        .map(&[entry(0, PAGE)], &file, Policy::STANDARD)
        .unwrap();
    let w = Arc::new(DaxWindow::builder(8 * MIB).max_mappings(4).build().unwrap());
    assert_eq!(w.max_mappings(), 4);
    let (mut channel, peer) = standard_channel(&w, "lifecycle");
    let mut call = |request, body: Vec<u8>, fds: &[RawFd]| {
        peer.send_bytes(&message(request, 40, &body), fds);
        let value = channel.handle_one_timeout(T).unwrap().unwrap().value;
        assert_eq!(peer.reply(request), value);
        value
    };
    let fd = file.as_raw_fd();
    for k in 0..4 {
        assert_eq!(call(standard::SHMEM_MAP, ro(2 * k * PAGE, PAGE), &[fd]), 0);
    }
    assert_eq!(
        call(standard::SHMEM_MAP, ro(8 * PAGE, PAGE), &[fd]),
        neg(libc::ENOSPC)
    );
    assert_eq!(w.metrics().refusals(Refusal::Limit), 1);
    assert_eq!(w.live_mappings(), 4);
    assert_eq!(call(standard::SHMEM_UNMAP, ro(0, PAGE), &[]), 0);
    assert_eq!(call(standard::SHMEM_MAP, ro(8 * PAGE, PAGE), &[fd]), 0);
    assert_table_matches_kernel(&w);

    // Legacy policy: an unmap that splits a mapping adds one, and is bounded too.
    let w = DaxWindow::builder(8 * MIB).max_mappings(3).build().unwrap();
    w.map(&[entry(0, 8 * PAGE)], &file, Policy::LEGACY).unwrap();
    let r = |k| Range {
        offset: k * PAGE,
        len: PAGE,
    };
    w.unmap(&[r(2)], Policy::LEGACY).unwrap();
    w.unmap(&[r(4)], Policy::LEGACY).unwrap();
    assert_eq!(w.live_mappings(), 3);
    let err = w.unmap(&[r(6)], Policy::LEGACY).unwrap_err();
    assert!(matches!(
        err,
        window::Error::Range {
            reason: RangeError::Limit,
            ..
        }
    ));
    assert_eq!(err.errno(), libc::ENOSPC);
    // An unmap that splits nothing still goes through at the bound, and so does a replace.
    w.unmap(&[r(7)], Policy::LEGACY).unwrap();
    w.map(&[entry(0, 2 * PAGE)], &file, Policy::LEGACY).unwrap();
    assert_eq!(w.live_mappings(), 3);
    assert_table_matches_kernel(&w);
}

#[test]
fn a_backend_cannot_take_the_process_near_its_map_limit() {
    let _g = serial();
    let max_map_count: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let w = Arc::new(DaxWindow::new(1 << 30).unwrap());
    assert_eq!(w.max_mappings(), DEFAULT_MAX_MAPPINGS);
    let (file, _) = memfd(PAGE, |_| 1);
    let (mut channel, peer) = standard_channel(&w, "lifecycle");
    // A backend (or a guest driving FUSE_SETUPMAPPING) maps every other page of the window.
    let tries = DEFAULT_MAX_MAPPINGS + 2000;
    let mut refused = 0;
    for k in 0..tries as u64 {
        peer.send_bytes(
            &message(standard::SHMEM_MAP, 40, &ro(2 * k * PAGE, PAGE)),
            &[file.as_raw_fd()],
        );
        let value = channel.handle_one_timeout(T).unwrap().unwrap().value;
        assert_eq!(peer.reply(standard::SHMEM_MAP), value);
        if value == neg(libc::ENOSPC) {
            refused += 1;
        } else {
            assert_eq!(value, 0);
        }
    }
    assert_eq!(refused, 2000);
    assert_eq!(w.live_mappings(), DEFAULT_MAX_MAPPINGS);
    let in_process = maps().len();
    assert!(
        in_process < max_map_count / 2,
        "{in_process} mappings in the process, limit {max_map_count}"
    );
    w.unmap_all().unwrap();
    assert!(window_is_empty(&w));
}

#[test]
fn the_granule_refuses_smaller_ranges() {
    let (file, _) = memfd(4 * MIB, |_| 1);
    let w = DaxWindow::builder(8 * MIB)
        .granule(2 * MIB)
        .build()
        .unwrap();
    assert_eq!(w.granule(), 2 * MIB);
    for (offset, len) in [(0, PAGE), (PAGE, 2 * MIB), (2 * MIB, 3 * MIB)] {
        let err = w
            .map(&[entry(offset, len)], &file, Policy::LEGACY)
            .unwrap_err();
        assert!(
            matches!(
                err,
                window::Error::Range {
                    reason: RangeError::Misaligned,
                    ..
                }
            ),
            "{offset:#x}+{len:#x}: {err:?}"
        );
    }
    w.map(&[entry(0, 4 * MIB)], &file, Policy::LEGACY).unwrap();
    let err = w
        .unmap(
            &[Range {
                offset: 0,
                len: PAGE,
            }],
            Policy::LEGACY,
        )
        .unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    for bad in [3 * MIB, 1024, 16 * MIB, 0] {
        assert!(matches!(
            DaxWindow::builder(8 * MIB).granule(bad).build(),
            Err(window::Error::InvalidGranule { .. })
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// The process's map limit, in a child process

const CHILD_ENV: &str = "VFD_MAP_LIMIT_CHILD";

#[test]
fn cleanup_works_at_the_process_map_limit() {
    let _g = serial();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "map_limit_child",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the child failed:\n{text}");
    assert!(
        text.contains("map limit child: every check passed"),
        "the child did not run its checks:\n{text}"
    );
}

/// One-page mappings outside any window, each a kernel mapping of its own (shared anonymous
/// mappings never merge), to take the process to its map limit.
struct Filler(Vec<usize>);

impl Filler {
    /// Maps pages until the kernel refuses with ENOMEM; returns how many.
    fn fill(&mut self) -> usize {
        let mut n = 0;
        loop {
            // SAFETY: a fresh mapping where the kernel chooses; nothing existing is replaced.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    PAGE as usize,
                    libc::PROT_NONE,
                    libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                let err = std::io::Error::last_os_error();
                assert_eq!(err.raw_os_error(), Some(libc::ENOMEM), "{err}");
                return n;
            }
            self.0.push(p as usize);
            n += 1;
        }
    }

    fn release(&mut self, n: usize) {
        for _ in 0..n {
            let p = self.0.pop().unwrap();
            // SAFETY: `p` was mapped by `fill`, is owned here alone and unmapped once.
            unsafe { libc::munmap(p as *mut libc::c_void, PAGE as usize) };
        }
    }
}

#[test]
#[ignore = "a child process of cleanup_works_at_the_process_map_limit"]
fn map_limit_child() {
    assert_eq!(
        std::env::var(CHILD_ENV).as_deref(),
        Ok("1"),
        "run through cleanup_works_at_the_process_map_limit"
    );
    let (file, _) = memfd(PAGE, |_| 0x11);
    let fd = file.as_raw_fd();
    let w = Arc::new(DaxWindow::new(64 * MIB).unwrap());
    let at = |k: u64| 8 * k * PAGE;
    for k in 0..16 {
        w.map(&[entry(at(k), PAGE)], &file, Policy::STANDARD)
            .unwrap();
    }
    let (mut channel, peer) = standard_channel(&w, "lifecycle");
    let call = |channel: &mut BackendChannel, request, body: Vec<u8>, fds: &[RawFd]| {
        peer.send_bytes(&message(request, 40, &body), fds);
        let value = channel.handle_one_timeout(T).unwrap().unwrap().value;
        assert_eq!(peer.reply(request), value);
        value
    };
    assert_eq!(
        call(&mut channel, standard::SHMEM_MAP, ro(at(16), PAGE), &[fd]),
        0
    );
    assert_eq!(w.live_mappings(), 17);
    let mut filler = Filler(Vec::with_capacity(1 << 20));

    // At the limit (the filler's last mmap was refused): an unmap through the window ...
    assert!(filler.fill() > 1000, "the process was already at its limit");
    let unmap = |k| Range {
        offset: at(k),
        len: PAGE,
    };
    w.unmap(&[unmap(0)], Policy::STANDARD).unwrap();
    // ... and through the channel, which also refuses a map before touching the window.
    filler.fill();
    assert_eq!(
        call(&mut channel, standard::SHMEM_UNMAP, ro(at(1), PAGE), &[]),
        0
    );
    filler.fill();
    assert_eq!(
        call(&mut channel, standard::SHMEM_MAP, ro(at(1), PAGE), &[fd]),
        neg(libc::ENOMEM)
    );
    assert_eq!(w.live_mappings(), 15);
    // Unmap-all at the limit.
    filler.fill();
    w.unmap_all().unwrap();
    assert_eq!(w.live_mappings(), 0);

    // The channel's own cleanup at the limit: its backend leaves with mappings live.
    filler.release(64);
    for k in 0..16 {
        w.map(&[entry(at(k), PAGE)], &file, Policy::STANDARD)
            .unwrap();
    }
    filler.fill();
    drop(peer);
    assert!(matches!(
        channel.handle_one(),
        Err(ChannelError::Disconnected)
    ));
    assert_eq!(w.live_mappings(), 0);

    // With the ballast spent and the process held at its limit, a restore fails: the window
    // is poisoned and refuses maps, until an unmap-all succeeds once there is room.
    filler.release(64);
    for k in 0..16 {
        w.map(&[entry(at(k), PAGE)], &file, Policy::STANDARD)
            .unwrap();
    }
    let mut k = 0;
    let err = loop {
        filler.fill();
        match w.unmap(&[unmap(k)], Policy::STANDARD) {
            Ok(()) => k += 1,
            Err(e) => break e,
        }
        assert!(k < 16, "the ballast never ran out");
    };
    assert!(matches!(err, window::Error::Unmap { .. }), "{err:?}");
    assert_eq!(err.errno(), libc::ENOMEM);
    assert!(w.is_poisoned());
    filler.release(16);
    assert!(matches!(
        w.map(&[entry(at(20), PAGE)], &file, Policy::STANDARD),
        Err(window::Error::Poisoned)
    ));
    w.unmap_all().unwrap();
    assert!(!w.is_poisoned());

    // Nothing of it left a hole: the window is one reservation again.
    filler.release(filler.0.len());
    assert!(
        window_is_empty(&w),
        "{:#x?}",
        maps_in(w.host_addr(), w.size())
    );
    w.map(&[entry(0, PAGE)], &file, Policy::STANDARD).unwrap();
    assert_eq!(read_window(&w, 0, 1), vec![0x11]);
    println!("map limit child: every check passed ({k} unmaps at the limit before the poison)");
}
