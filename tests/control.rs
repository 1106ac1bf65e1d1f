// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a VMM does to a running device besides the virtio lifecycle, against real peers: the
//! channel thread's name and start hook (seen in /proc), pause and resume with vhost's real
//! `Backend` sending maps, the counters as (name, value) pairs, and memory hotplug followed by
//! the in-process backend (read through its own descriptors) and by the dax-backend process.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures as P;
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap,
};

use common::*;
use virtio_fs_dax::channel::{self, ThreadHook, DEFAULT_STOP_TIMEOUT};
use virtio_fs_dax::device::Error;
use virtio_fs_dax::frontend;
use virtio_fs_dax::test_utils::{FakeMemoryManager, TestBackendConfig, TestBackendServer};
use virtio_fs_dax::{BackendChannel, ChannelThread, DaxWindow, Fs, Refusal};

const WIN_GPA: u64 = 1 << 34;
const T: Duration = Duration::from_secs(5);
/// How long a test watches for something that must not happen.
const QUIET: Duration = Duration::from_millis(300);

fn gettid() -> i64 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

fn comm(tid: i64) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// Threads of this process with this name.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim_end() == name)
        .count()
}

/// vhost's real backend side of a fresh channel pair, as a backend sets it up.
fn backend_pair() -> (UnixStream, Backend) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let backend = Backend::from_stream(theirs);
    backend.set_reply_ack_flag(true);
    backend.set_shmem_flag(true);
    (ours, backend)
}

/// Waits (bounded) until `sock` has bytes to read.
/// A channel thread over an 8 MiB window, started paused or not, and vhost's `Backend` on the
/// other end.
fn spawned(paused: bool) -> (Arc<DaxWindow>, Backend, ChannelThread) {
    let window = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    let (ours, backend) = backend_pair();
    let t = BackendChannel::builder(ours)
        .window(window.clone())
        .start_paused(paused)
        .build()
        .spawn()
        .unwrap();
    (window, backend, t)
}

fn wait_readable(sock: &UnixStream) {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, T.as_millis() as i32) };
    assert_eq!(n, 1, "nothing arrived");
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < T, "{what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn start_hook_runs_on_the_named_thread_before_the_first_request() {
    let _g = serial();
    let window = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    let (ours, backend) = backend_pair();
    let (file, _) = memfd(2 * MIB, |_| 0x5a);
    // The backend's map is sent before the thread exists: it waits in the socket.
    let sender = {
        let b = backend.clone();
        let f = file.try_clone().unwrap();
        thread::spawn(move || b.shmem_map(&shmem_range(0, 2 * MIB), &f))
    };
    wait_readable(&ours);

    let seen = Arc::new(Mutex::new(None));
    let hook = {
        let seen = seen.clone();
        let metrics = window.metrics().clone();
        ThreadHook::new(move || {
            let tid = gettid();
            *seen.lock().unwrap() =
                Some((tid, comm(tid), metrics.requests(), metrics.live_mappings()));
            Ok(())
        })
    };
    let t = BackendChannel::builder(ours)
        .window(window.clone())
        .thread_name("vfd-ctl-hook")
        .on_thread_start(hook)
        .build()
        .spawn()
        .unwrap();
    // spawn waited for the hook, which ran on the new, named thread with nothing served yet.
    let (tid, name, requests, live) = seen.lock().unwrap().take().expect("hook ran");
    assert_ne!(tid, gettid());
    assert_eq!(name.as_deref(), Some("vfd-ctl-hook"));
    assert_eq!(
        (requests, live),
        (0, 0),
        "the hook ran before the first request"
    );
    // The thread that ran the hook is the one that serves.
    sender.join().unwrap().unwrap();
    assert_eq!(window.metrics().live_mappings(), 1);
    assert_eq!(comm(tid).as_deref(), Some("vfd-ctl-hook"));
    t.stop().unwrap();
    assert_eq!(comm(tid), None, "the thread is gone after stop");
}

#[test]
fn failing_start_hook_fails_spawn_and_leaves_nothing_open() {
    let _g = serial();
    let window = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    let before = fd_count();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let err = BackendChannel::builder(ours)
        .window(window.clone())
        .thread_name("vfd-ctl-fail")
        .on_thread_start(ThreadHook::new(|| Err("seccomp filter refused".into())))
        .build()
        .spawn()
        .unwrap_err();
    match err {
        channel::Error::ThreadStart(e) => assert_eq!(e.to_string(), "seccomp filter refused"),
        other => panic!("{other:?}"),
    }
    assert_eq!(threads_named("vfd-ctl-fail"), 0, "the thread has ended");
    // Our end is closed: the backend reads end of stream at once.
    theirs.set_read_timeout(Some(T)).unwrap();
    assert_eq!(theirs.read(&mut [0u8; 1]).unwrap(), 0);
    drop(theirs);
    assert_eq!(fd_count(), before, "no descriptor left behind");
    assert_eq!(window.metrics().requests(), 0);
}

#[test]
fn pause_keeps_maps_in_the_socket_until_resume() {
    let _g = serial();
    let (window, backend, t) = spawned(false);
    let (file, _) = memfd(4 * MIB, |p| p as u8);
    backend.shmem_map(&shmem_range(0, 2 * MIB), &file).unwrap();
    assert_eq!(window.metrics().live_mappings(), 1);

    t.pause().unwrap();
    assert!(t.is_paused());
    let maps_before = maps_in(window.host_addr(), window.size());
    let requests = window.metrics().requests();
    let sender = {
        let b = backend.clone();
        let f = file.try_clone().unwrap();
        let map = vhost::vhost_user::message::VhostUserMMap {
            fd_offset: 2 * MIB,
            ..shmem_range(4 * MIB, 2 * MIB)
        };
        thread::spawn(move || b.shmem_map(&map, &f))
    };
    thread::sleep(QUIET);
    // Not read, not refused, not mapped; the backend still waits for its reply.
    assert_eq!(window.metrics().requests(), requests, "nothing read");
    assert_eq!(window.metrics().total_refusals(), 0);
    assert_eq!(window.metrics().live_mappings(), 1);
    assert_eq!(maps_in(window.host_addr(), window.size()), maps_before);
    assert!(
        !sender.is_finished(),
        "the backend got no reply while paused"
    );
    // Pausing again is a no-op.
    t.pause().unwrap();

    t.resume();
    assert!(!t.is_paused());
    sender.join().unwrap().unwrap();
    assert_eq!(window.metrics().live_mappings(), 2);
    assert_ne!(maps_in(window.host_addr(), window.size()), maps_before);
    assert_eq!(read_window(&window, 4 * MIB, 1), [(2 * MIB / PAGE) as u8]);
    assert_table_matches_kernel(&window);

    // A paused thread still stops, at once.
    t.pause().unwrap();
    let start = Instant::now();
    t.stop().unwrap();
    assert!(start.elapsed() < DEFAULT_STOP_TIMEOUT);
}

#[test]
fn backend_gone_while_paused_is_handled_at_resume() {
    let _g = serial();
    let (window, backend, t) = spawned(false);
    let (file, _) = memfd(2 * MIB, |_| 1);
    backend.shmem_map(&shmem_range(0, 2 * MIB), &file).unwrap();
    t.pause().unwrap();
    drop(backend);
    thread::sleep(QUIET);
    // Paused: nothing read, so the hangup is not seen yet and the mapping stays.
    assert_eq!(window.metrics().live_mappings(), 1);
    assert!(!t.is_finished());
    t.resume();
    wait_until("the thread ends at resume", || t.is_finished());
    assert_eq!(window.metrics().live_mappings(), 0, "mappings dropped");
    assert!(matches!(t.join(), Err(channel::Error::Disconnected)));
}

#[test]
fn channel_started_paused_serves_nothing_until_resume() {
    let _g = serial();
    let (window, backend, t) = spawned(true);
    assert!(t.is_paused(), "parked before spawn returned");
    let (file, _) = memfd(2 * MIB, |_| 1);
    // A clone: the backend stays connected after the map (its last clone closing would end the
    // channel and drop the mapping).
    let sender = {
        let b = backend.clone();
        let f = file.try_clone().unwrap();
        thread::spawn(move || b.shmem_map(&shmem_range(0, 2 * MIB), &f))
    };
    thread::sleep(QUIET);
    assert_eq!(window.metrics().requests(), 0);
    assert!(!sender.is_finished());
    t.resume();
    sender.join().unwrap().unwrap();
    assert_eq!(window.metrics().live_mappings(), 1);
    t.stop().unwrap();
}

#[test]
fn counters_name_every_counter_once_and_follow_requests() {
    let _g = serial();
    let (window, backend, t) = spawned(false);
    let m = window.metrics().clone();
    let list = m.counters();
    let names: HashMap<&str, u64> = list.iter().copied().collect();
    assert_eq!(names.len(), list.len(), "every name once: {list:?}");
    for r in Refusal::ALL {
        assert_eq!(names[r.counter_name()], 0, "{r}");
    }
    assert!(names.values().all(|v| *v == 0));

    let (file, _) = memfd(2 * MIB, |_| 1);
    backend.shmem_map(&shmem_range(0, 2 * MIB), &file).unwrap();
    assert!(backend
        .shmem_map(&shmem_range(8 * MIB, 2 * MIB), &file)
        .is_err());
    assert!(backend.shmem_unmap(&shmem_range(4 * MIB, 2 * MIB)).is_err());
    let now: HashMap<&str, u64> = m.counters().into_iter().collect();
    let moved: HashMap<&str, u64> = now
        .iter()
        .filter(|(_, v)| **v != 0)
        .map(|(k, v)| (*k, *v))
        .collect();
    assert_eq!(
        moved,
        HashMap::from([
            ("maps", 1),
            ("live_mappings", 1),
            ("mapped_bytes", 2 * MIB),
            ("requests", 3),
            ("map_latency_count", 1),
            ("refusals_out_of_window", 1),
            ("refusals_not_mapped", 1),
        ])
    );
    backend.shmem_unmap(&shmem_range(0, 2 * MIB)).unwrap();
    let now: HashMap<&str, u64> = m.counters().into_iter().collect();
    assert_eq!(
        (now["unmaps"], now["live_mappings"], now["mapped_bytes"]),
        (1, 0, 0)
    );
    assert_eq!(now["requests"], 4);
    t.stop().unwrap();
}

fn device(socket: &std::path::Path) -> virtio_fs_dax::FsBuilder {
    Fs::builder("ctl")
        .socket_path(socket)
        .window_size(16 * MIB)
        .queue_size(128)
        .memory_manager(Arc::new(FakeMemoryManager::new()))
}

fn connect(mut fs: Fs) -> Fs {
    fs.set_shm_base(0, WIN_GPA).unwrap();
    fs.connect().unwrap();
    let offered = fs.features();
    fs.ack_features(offered);
    fs
}

fn activate(fs: &mut Fs, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> Result<(), Error> {
    fs.activate(
        mem,
        Arc::new(CountingInterrupt::default()),
        activate_queues(2, 128),
    )
}

#[test]
fn device_runs_its_hook_on_every_session_channel() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    let server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
    let names = Arc::new(Mutex::new(Vec::new()));
    let hook = {
        let names = names.clone();
        ThreadHook::new(move || {
            names.lock().unwrap().push(comm(gettid()));
            Ok(())
        })
    };
    let mut fs = connect(
        device(&socket)
            .channel_thread_name("vfd-ctl-dev")
            .on_channel_thread(hook)
            .build()
            .unwrap(),
    );
    activate(&mut fs, GuestMemoryAtomic::new(guest_memory(32 << 20))).unwrap();
    assert_eq!(*names.lock().unwrap(), [Some("vfd-ctl-dev".to_string())]);
    assert_eq!(threads_named("vfd-ctl-dev"), 1);
    fs.reconnect().unwrap();
    assert_eq!(names.lock().unwrap().len(), 2, "again for the new session");
    assert_eq!(threads_named("vfd-ctl-dev"), 1, "the old thread is gone");
    // The counters of the device are its metrics'.
    assert!(server.wait_for(|s| s.backend_channel, T));
    let backend = server.backend_channel().unwrap();
    let (file, _) = memfd(2 * MIB, |_| 1);
    backend.shmem_map(&shmem_range(0, 2 * MIB), &file).unwrap();
    let c: HashMap<_, _> = fs.counters().into_iter().collect();
    assert_eq!((c["maps"], c["live_mappings"]), (1, 1));
    fs.reset();
    assert_eq!(threads_named("vfd-ctl-dev"), 0);
}

#[test]
fn device_hook_failure_fails_activation_and_leaves_nothing_open() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    let server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
    let mut fs = device(&socket)
        .channel_thread_name("vfd-ctl-nope")
        .on_channel_thread(ThreadHook::new(|| {
            Err(std::io::Error::from_raw_os_error(libc::EPERM).into())
        }))
        .build()
        .unwrap();
    let before = fd_count();
    fs = connect(fs);
    let err = activate(&mut fs, GuestMemoryAtomic::new(guest_memory(32 << 20))).unwrap_err();
    match err {
        Error::Session(frontend::Error::ChannelThread(channel::Error::ThreadStart(e))) => {
            let io = e.downcast_ref::<std::io::Error>().unwrap();
            assert_eq!(io.raw_os_error(), Some(libc::EPERM));
        }
        other => panic!("{other:?}"),
    }
    assert!(fs.session().is_none());
    assert_eq!(threads_named("vfd-ctl-nope"), 0);
    assert_eq!(fs.window().unwrap().live_mappings(), 0);
    // The backend saw the connection end before any backend channel came.
    assert!(server.wait_for(|s| !s.connected, T));
    assert!(!server.state().backend_channel);
    // Everything of the attempt is closed: guest memory, eventfds, the connection, the
    // channel (the server's own descriptors go once it notices the end).
    wait_until("descriptors back to where they were", || {
        fd_count() == before
    });
}

/// Sends a map from another thread and returns it; the caller checks whether it got its reply.
fn map_from_thread(backend: &Backend, offset: u64) -> thread::JoinHandle<std::io::Result<u64>> {
    let b = backend.clone();
    let (file, _) = memfd(2 * MIB, |_| 3);
    thread::spawn(move || b.shmem_map(&shmem_range(offset, 2 * MIB), &file))
}

#[test]
fn device_paused_before_activation_and_across_reconnect_maps_nothing() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    let server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
    let mut fs = connect(device(&socket).build().unwrap());
    let window = fs.window().unwrap().clone();

    // Paused before activation: remembered, and the first session's channel starts paused.
    fs.pause().unwrap();
    assert!(fs.is_paused());
    activate(&mut fs, GuestMemoryAtomic::new(guest_memory(32 << 20))).unwrap();
    assert!(fs.session().unwrap().channel_paused());
    assert!(server.wait_for(|s| s.backend_channel, T));
    let sender = map_from_thread(&server.backend_channel().unwrap(), 0);
    thread::sleep(QUIET);
    assert_eq!(window.live_mappings(), 0);
    assert_eq!(fs.metrics().requests(), 0);
    assert!(!sender.is_finished());
    fs.resume();
    assert!(!fs.is_paused() && !fs.session().unwrap().channel_paused());
    sender.join().unwrap().unwrap();
    assert_eq!(window.live_mappings(), 1);

    // Paused, then the backend reconnects: the new session's channel is paused too.
    fs.pause().unwrap();
    assert!(fs.session().unwrap().channel_paused());
    fs.reconnect().unwrap();
    assert_eq!(
        window.live_mappings(),
        0,
        "the reconnect dropped the mappings"
    );
    assert!(fs.session().unwrap().channel_paused());
    assert!(server.wait_for(|s| s.connection == 2 && s.backend_channel, T));
    let sender = map_from_thread(&server.backend_channel().unwrap(), 2 * MIB);
    thread::sleep(QUIET);
    assert_eq!(window.live_mappings(), 0);
    assert!(!sender.is_finished());
    // Reset while paused: bounded, and the waiting backend gets no mapping.
    let start = Instant::now();
    fs.reset();
    assert!(start.elapsed() < DEFAULT_STOP_TIMEOUT);
    assert!(sender.join().unwrap().is_err());
    assert_eq!(window.live_mappings(), 0);
    assert!(fs.is_paused(), "a reset does not resume the device");
    fs.resume();
}

/// A file-backed guest RAM region of `size` bytes at `gpa`, filled with `fill(page)`.
fn ram_region(gpa: u64, size: u64, fill: impl Fn(u64) -> u8) -> Arc<GuestRegionMmap> {
    let (file, _) = memfd(size, fill);
    Arc::new(
        GuestRegionMmap::from_range(
            GuestAddress(gpa),
            size as usize,
            Some(FileOffset::new(file, 0)),
        )
        .unwrap(),
    )
}

const HOT: u64 = 1 << 30;

#[test]
fn hotplugged_memory_reaches_the_backend_and_survives_reconnect() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    let server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
    let mut fs = connect(device(&socket).build().unwrap());
    let base = guest_memory(32 << 20);
    let mem = GuestMemoryAtomic::new(base.clone());
    activate(&mut fs, mem.clone()).unwrap();
    assert!(fs
        .session()
        .unwrap()
        .negotiated()
        .protocol
        .contains(P::CONFIGURE_MEM_SLOTS));
    assert_eq!(server.state().mem_table.len(), 1);
    assert!(server.read_memory(HOT, &mut [0u8; 8]).is_err(), "not yet");

    // The VMM hotplugs 16 MiB at 1 GiB: into its GuestMemoryAtomic, then to the device.
    let region = ram_region(HOT, 16 * MIB, |p| (p % 251) as u8);
    let grown = base.insert_region(region.clone()).unwrap();
    mem.lock().unwrap().replace(grown.clone());
    fs.add_memory_region(&region).unwrap();
    let s = server.state();
    assert_eq!(
        s.requests.iter().filter(|r| **r == "ADD_MEM_REG").count(),
        1
    );
    assert_eq!(s.mem_table.len(), 2);
    assert_eq!(
        fs.session().unwrap().mem_regions(),
        [(0, 32 << 20), (HOT, 16 * MIB)]
    );
    // The backend reaches the new RAM through its own descriptor: what the guest wrote ...
    let mut buf = [0u8; 4];
    server.read_memory(HOT + 7 * PAGE + 5, &mut buf).unwrap();
    assert_eq!(buf, [7; 4]);
    // ... and what the backend writes, the guest reads.
    server
        .write_memory(HOT + 3 * MIB, b"from the backend")
        .unwrap();
    let mut back = [0u8; 16];
    grown
        .read_slice(&mut back, GuestAddress(HOT + 3 * MIB))
        .unwrap();
    assert_eq!(&back, b"from the backend");

    // Refused without a word to the backend: the same region again, one overlapping the
    // window, one without a file.
    let requests = server.state().requests.len();
    assert!(matches!(
        fs.add_memory_region(&region),
        Err(Error::Session(frontend::Error::MemRegionOverlap {
            gpa: HOT,
            ..
        }))
    ));
    let at_window = ram_region(WIN_GPA + 2 * MIB, 2 * MIB, |_| 0);
    assert!(matches!(
        fs.add_memory_region(&at_window),
        Err(Error::Session(frontend::Error::WindowInMemTable { .. }))
    ));
    let anon =
        GuestRegionMmap::<()>::from_range(GuestAddress(2 << 30), 2 * MIB as usize, None).unwrap();
    assert!(matches!(
        fs.add_memory_region(&anon),
        Err(Error::Session(frontend::Error::MemoryNotShareable { .. }))
    ));
    assert_eq!(server.state().requests.len(), requests);

    // A reconnected backend gets the grown memory in its SET_MEM_TABLE.
    fs.reconnect().unwrap();
    assert!(server.wait_for(|s| s.connection == 2 && s.backend_channel, T));
    let s = server.state();
    assert_eq!(s.mem_table.len(), 2, "{:?}", s.mem_table);
    assert!(!s.requests.contains(&"ADD_MEM_REG"));
    server.read_memory(HOT + 7 * PAGE, &mut buf).unwrap();
    assert_eq!(buf, [7; 4]);

    // Unplug: the backend lets go of it (REM_MEM_REG) before the VMM unmaps it.
    fs.remove_memory_region(&region).unwrap();
    let s = server.state();
    assert_eq!(s.mem_table.len(), 1);
    assert!(s.requests.contains(&"REM_MEM_REG"));
    assert!(server.read_memory(HOT, &mut buf).is_err());
    assert!(matches!(
        fs.remove_memory_region(&region),
        Err(Error::Session(frontend::Error::UnknownMemRegion {
            gpa: HOT,
            ..
        }))
    ));
    mem.lock().unwrap().replace(base);
}

#[test]
fn hotplug_without_mem_slots_is_refused_and_slots_are_bounded() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    // No CONFIGURE_MEM_SLOTS: the backend cannot follow.
    {
        let config = TestBackendConfig {
            protocol_features: TestBackendConfig::default().protocol_features
                - P::CONFIGURE_MEM_SLOTS,
            ..TestBackendConfig::default()
        };
        let server = TestBackendServer::start(&socket, config).unwrap();
        let mut fs = connect(device(&socket).build().unwrap());
        activate(&mut fs, GuestMemoryAtomic::new(guest_memory(32 << 20))).unwrap();
        let region = ram_region(HOT, 2 * MIB, |_| 0);
        assert!(matches!(
            fs.add_memory_region(&region),
            Err(Error::Session(frontend::Error::MemHotplugUnsupported))
        ));
        assert!(matches!(
            fs.remove_memory_region(&region),
            Err(Error::Session(frontend::Error::MemHotplugUnsupported))
        ));
        let s = server.state();
        assert!(!s.protocol_acked(P::CONFIGURE_MEM_SLOTS));
        assert!(s
            .requests
            .iter()
            .all(|r| !r.contains("MEM_REG") && *r != "GET_MAX_MEM_SLOTS"));
        // Without a session there is nothing to tell: the next one sends the whole memory.
        fs.reset();
        fs.add_memory_region(&region).unwrap();
    }
    // Two slots: the boot RAM and one more.
    let config = TestBackendConfig {
        max_mem_slots: 2,
        ..TestBackendConfig::default()
    };
    let server = TestBackendServer::start(&socket, config).unwrap();
    let mut fs = connect(device(&socket).build().unwrap());
    activate(&mut fs, GuestMemoryAtomic::new(guest_memory(32 << 20))).unwrap();
    fs.add_memory_region(&ram_region(HOT, 2 * MIB, |_| 0))
        .unwrap();
    assert!(matches!(
        fs.add_memory_region(&ram_region(2 * HOT, 2 * MIB, |_| 0)),
        Err(Error::Session(frontend::Error::MemSlotsFull { max: 2 }))
    ));
    let s = server.state();
    assert_eq!(s.mem_table.len(), 2);
    assert_eq!(
        s.requests
            .iter()
            .filter(|r| **r == "GET_MAX_MEM_SLOTS")
            .count(),
        1
    );
    assert_eq!(
        s.requests.iter().filter(|r| **r == "ADD_MEM_REG").count(),
        1
    );
}
