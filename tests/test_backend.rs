// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The in-process vhost-user backend of `test_utils`, driven by vhost 0.18's `Frontend`.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserMMap, VhostUserMMapFlags,
};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserFrontendReqHandler, VhostUserProtocolFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use virtio_fs_dax::test_utils::{
    MemRegionRecord, SetConfigCall, TestBackendConfig, TestBackendServer, TestBackendState,
    VringAddrRecord, VringRecord,
};
use virtio_fs_dax::{BackendChannel, DaxWindow, Dialect};

const MIB: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// A memfd of `len` bytes.
fn memfd(len: u64) -> File {
    // SAFETY: memfd_create reads a valid NUL-terminated string and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"vfd-test-backend".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).unwrap();
    file
}

/// A virtio-fs config space: the tag (36 bytes, NUL padded) and the request queue count.
fn fs_config(tag: &str, request_queues: u32) -> Vec<u8> {
    let mut config = vec![0u8; 36];
    config[..tag.len()].copy_from_slice(tag.as_bytes());
    config.extend_from_slice(&request_queues.to_le_bytes());
    config
}

fn socket(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("backend.sock")
}

/// Connects and negotiates: owner, all offered features, all offered protocol features but
/// `without`. Every later request asks for a reply, so each call returns once the backend has
/// handled it.
fn negotiate(
    path: &std::path::Path,
    without: VhostUserProtocolFeatures,
) -> (Frontend, u64, VhostUserProtocolFeatures) {
    let mut frontend = Frontend::connect(path, 2).unwrap();
    frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    frontend.set_owner().unwrap();
    let features = frontend.get_features().unwrap();
    frontend.set_features(features).unwrap();
    let protocol = frontend.get_protocol_features().unwrap() - without;
    frontend.set_protocol_features(protocol).unwrap();
    (frontend, features, protocol)
}

fn mmap_msg(shm_offset: u64, len: u64) -> VhostUserMMap {
    VhostUserMMap {
        shmid: 0,
        padding: [0; 7],
        fd_offset: 0,
        shm_offset,
        len,
        flags: VhostUserMMapFlags::WRITABLE.bits(),
    }
}

#[test]
fn a_whole_session_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir);
    let config = TestBackendConfig {
        config: fs_config("myfs", 1),
        ..TestBackendConfig::default()
    };
    let server = TestBackendServer::start(&path, config.clone()).unwrap();
    assert_eq!(server.socket_path(), path);
    assert_eq!(server.connections(), 0);

    // Negotiation, by hand (no NEED_REPLY yet: the GETs synchronise).
    let mut frontend = Frontend::connect(&path, 2).unwrap();
    frontend.set_owner().unwrap();
    let features = frontend.get_features().unwrap();
    assert_eq!(
        features,
        VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES
    );
    frontend.set_features(features).unwrap();
    let offered = frontend.get_protocol_features().unwrap();
    assert_eq!(offered, config.protocol_features);
    assert!(offered.contains(VhostUserProtocolFeatures::SHMEM));
    assert_eq!(VhostUserProtocolFeatures::SHMEM.bits(), 1 << 22);
    frontend.set_protocol_features(offered).unwrap();
    // From here on every request asks for an ack: each call returns once it was handled.
    frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    assert_eq!(frontend.get_queue_num().unwrap(), 2);

    // One memfd-backed guest RAM region.
    let ram = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(0x1_0000_0000),
        4 * MIB as usize,
        Some(FileOffset::new(memfd(4 * MIB), 0)),
    )])
    .unwrap();
    let region = ram.find_region(GuestAddress(0x1_0000_0000)).unwrap();
    let info = VhostUserMemoryRegionInfo::from_guest_region(region).unwrap();
    frontend.set_mem_table(&[info]).unwrap();

    // Two vrings, fully set up.
    let kicks: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let calls: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let addr = |q: u64| VringConfigData {
        queue_max_size: 256,
        queue_size: 128,
        flags: 0,
        desc_table_addr: 0x1000 + q * 0x10000,
        used_ring_addr: 0x2000 + q * 0x10000,
        avail_ring_addr: 0x3000 + q * 0x10000,
        log_addr: None,
    };
    for q in 0..2usize {
        frontend.set_vring_num(q, 128).unwrap();
        frontend.set_vring_addr(q, &addr(q as u64)).unwrap();
        frontend.set_vring_base(q, 7 + q as u16).unwrap();
        frontend.set_vring_kick(q, &kicks[q]).unwrap();
        frontend.set_vring_call(q, &calls[q]).unwrap();
        frontend.set_vring_enable(q, true).unwrap();
    }

    // Config space: the tag and the queue count, and a read past the end fails.
    let (reply, tag) = frontend
        .get_config(0, 36, VhostUserConfigFlags::empty(), &[0; 36])
        .unwrap();
    assert_eq!((reply.offset, reply.size), (0, 36));
    assert_eq!(&tag[..5], b"myfs\0");
    let (_, queues) = frontend
        .get_config(36, 4, VhostUserConfigFlags::empty(), &[0; 4])
        .unwrap();
    assert_eq!(queues, 1u32.to_le_bytes());
    // Past the end: zeros, and an error recorded (a refusal would hang vhost's Frontend).
    let (_, past) = frontend
        .get_config(36, 8, VhostUserConfigFlags::empty(), &[0; 8])
        .unwrap();
    assert_eq!(past, [1, 0, 0, 0, 0, 0, 0, 0]);
    frontend
        .set_config(36, VhostUserConfigFlags::WRITABLE, &[9, 9])
        .unwrap();

    // GET_VRING_BASE answers the recorded base and stops the ring.
    assert_eq!(frontend.get_vring_base(1).unwrap(), 8);

    // The backend channel: served by this crate, fed by the server's Backend.
    let (ours, theirs) = UnixStream::pair().unwrap();
    frontend.set_backend_request_fd(&theirs).unwrap();
    drop(theirs);
    let window = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    let channel = BackendChannel::builder(ours)
        .window(window.clone())
        .dialect(Dialect::Standard)
        .name("test-backend")
        .build()
        .spawn()
        .unwrap();
    let backend = server.backend_channel().expect("backend channel");
    let file = memfd(2 * MIB);
    backend
        .shmem_map(&mmap_msg(2 * MIB, 2 * MIB), &file)
        .unwrap();
    assert_eq!(window.metrics().live_mappings(), 1);
    // Refused by the window, and the refusal reaches the backend (REPLY_ACK was acked).
    assert!(backend
        .shmem_map(&mmap_msg(8 * MIB, 2 * MIB), &file)
        .is_err());
    backend.shmem_unmap(&mmap_msg(2 * MIB, 2 * MIB)).unwrap();
    assert_eq!(window.metrics().live_mappings(), 0);

    let s = server.state();
    assert_eq!(s.connection, 1);
    assert!(s.connected);
    assert!(s.owner);
    assert_eq!(s.acked_features, Some(features));
    assert_eq!(s.acked_protocol_features, Some(offered));
    assert!(s.protocol_acked(VhostUserProtocolFeatures::SHMEM));
    assert_eq!(
        s.mem_table,
        vec![MemRegionRecord {
            guest_phys_addr: 0x1_0000_0000,
            memory_size: 4 * MIB,
            userspace_addr: region.as_ptr() as u64,
            mmap_offset: 0,
            has_fd: true,
        }]
    );
    for q in 0..2u32 {
        let a = addr(q.into());
        assert_eq!(
            s.vrings[q as usize],
            VringRecord {
                num: Some(128),
                addr: Some(VringAddrRecord {
                    flags: 0,
                    desc: a.desc_table_addr,
                    used: a.used_ring_addr,
                    avail: a.avail_ring_addr,
                    log: 0,
                }),
                base: 7 + q,
                kick: true,
                call: true,
                err: false,
                enabled: true,
                // Ring 1 was stopped by GET_VRING_BASE.
                started: q == 0,
            }
        );
    }
    assert_eq!(
        s.set_config_calls,
        vec![SetConfigCall {
            offset: 36,
            data: vec![9, 9],
            flags: VhostUserConfigFlags::WRITABLE.bits(),
        }]
    );
    assert!(s.backend_channel);
    assert_eq!(s.reset_device_count, 0);
    // The GET_CONFIG past the end is the only error.
    assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
    assert_eq!(
        &s.requests[..7],
        [
            "SET_OWNER",
            "GET_FEATURES",
            "SET_FEATURES",
            "GET_PROTOCOL_FEATURES",
            "SET_PROTOCOL_FEATURES",
            "GET_QUEUE_NUM",
            "SET_MEM_TABLE",
        ]
    );
    assert_eq!(s.requests.last(), Some(&"SET_BACKEND_REQ_FD"));
    assert!(s.previous.is_empty());

    // RESET_DEVICE clears the vrings and counts; the rest stays.
    frontend.reset_device().unwrap();
    let s = server.state();
    assert_eq!(s.reset_device_count, 1);
    assert!(s.vrings.iter().all(|v| *v == VringRecord::default()));
    assert_eq!(s.vrings.len(), 2);
    assert_eq!(s.mem_table.len(), 1);
    assert!(s.owner);

    drop(backend);
    drop(frontend);
    // The connection ended: the server drops its backend channel (the last clone), so the
    // channel thread sees the backend go and drops every mapping.
    assert!(server.wait_for(|s| !s.connected, TIMEOUT));
    assert!(server.backend_channel().is_none());
    assert!(matches!(
        channel.join(),
        Err(virtio_fs_dax::channel::Error::Disconnected)
    ));
}

#[test]
fn reconnect_starts_with_fresh_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir);
    let server = TestBackendServer::start(&path, TestBackendConfig::default()).unwrap();

    let (mut first, features, _) = negotiate(&path, VhostUserProtocolFeatures::empty());
    let (_ours, theirs) = UnixStream::pair().unwrap();
    first.set_backend_request_fd(&theirs).unwrap();
    let old_channel = server.backend_channel().unwrap();
    assert_eq!(server.connections(), 1);

    // The backend dies under the frontend.
    server.disconnect();
    assert!(server.wait_for(|s| !s.connected, TIMEOUT));
    assert!(first.get_features().is_err());
    assert!(server.backend_channel().is_none());
    // The old backend channel fails in every clone.
    assert!(old_channel
        .shmem_map(&mmap_msg(0, 2 * MIB), &memfd(2 * MIB))
        .is_err());

    // A new connection is served, from a fresh state (a second SET_OWNER would be refused).
    let second = Frontend::connect(&path, 2).unwrap();
    second.set_owner().unwrap();
    assert_eq!(second.get_features().unwrap(), features);
    assert!(server.wait_for(|s| s.connection == 2 && s.owner, TIMEOUT));
    assert_eq!(server.connections(), 2);
    let s = server.state();
    assert!(s.connected);
    assert_eq!(s.acked_features, None);
    assert_eq!(s.acked_protocol_features, None);
    assert!(!s.backend_channel);
    assert_eq!(s.requests, ["SET_OWNER", "GET_FEATURES"]);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(s.vrings, vec![VringRecord::default(); 2]);
    // The first connection is kept in the log.
    assert_eq!(s.previous.len(), 1);
    let p: &TestBackendState = &s.previous[0];
    assert_eq!(p.connection, 1);
    assert!(!p.connected);
    assert!(p.owner);
    assert_eq!(p.acked_features, Some(features));
    assert!(p.backend_channel);
    assert!(p.previous.is_empty());

    // Dropping the server with a frontend still connected stops it and removes the socket.
    drop(server);
    assert!(!path.exists());
    assert!(second.get_features().is_err());
    drop(first);
}

#[test]
fn drop_stops_an_idle_server_and_start_replaces_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir);
    // A stale file where the socket goes.
    File::create(&path).unwrap().write_all(b"stale").unwrap();
    let server = TestBackendServer::start(&path, TestBackendConfig::default()).unwrap();
    // Listening already: a connection before the thread accepted is served.
    let frontend = Frontend::connect(&path, 2).unwrap();
    assert_ne!(frontend.get_features().unwrap(), 0);
    drop(frontend);
    assert!(server.wait_for(|s| s.connection == 1 && !s.connected, TIMEOUT));
    drop(server);
    assert!(!path.exists());

    // Binding a path in a missing directory fails with the io error.
    let err = TestBackendServer::start(
        &dir.path().join("missing/backend.sock"),
        TestBackendConfig::default(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn refusals_are_recorded_and_acked_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir);
    let server = TestBackendServer::start(&path, TestBackendConfig::default()).unwrap();
    server.set_shmem_sizes(&[1 << 30]);
    let (mut frontend, features, _) = negotiate(&path, VhostUserProtocolFeatures::empty());

    // A second SET_OWNER, features not offered: refused, and the frontend sees it.
    assert!(frontend.set_owner().is_err());
    assert!(frontend.set_features(features | 1 << 40).is_err());
    // Empty config space: GET_CONFIG reads zeros, and the error is recorded.
    let (_, bytes) = frontend
        .get_config(0, 4, VhostUserConfigFlags::empty(), &[0; 4])
        .unwrap();
    assert_eq!(bytes, [0; 4]);
    // The session goes on.
    let shmem = frontend.get_shmem_config().unwrap();
    assert_eq!(shmem.nregions, 1);
    assert_eq!(shmem.memory_sizes[0], 1 << 30);
    assert_eq!(frontend.get_queue_num().unwrap(), 2);

    let s = server.state();
    assert_eq!(s.errors.len(), 3, "{:?}", s.errors);
    assert_eq!(s.acked_features, Some(features | 1 << 40));
    assert!(s.owner);
    assert!(s.requests.contains(&"GET_SHMEM_CONFIG"));
}

#[test]
fn backend_channel_flags_follow_the_acked_protocol_features() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir);
    let server = TestBackendServer::start(&path, TestBackendConfig::default()).unwrap();

    // Without SHMEM acked, vhost's Backend refuses to send SHMEM_MAP.
    let (mut frontend, _, _) = negotiate(&path, VhostUserProtocolFeatures::SHMEM);
    let (ours, theirs) = UnixStream::pair().unwrap();
    frontend.set_backend_request_fd(&theirs).unwrap();
    let file = memfd(2 * MIB);
    let backend = server.backend_channel().unwrap();
    assert!(backend.shmem_map(&mmap_msg(0, 2 * MIB), &file).is_err());
    drop((frontend, backend, ours, theirs));
    assert!(server.wait_for(|s| !s.connected, TIMEOUT));

    // SHMEM without REPLY_ACK: the request is sent without NEED_REPLY and not waited for. Read
    // it raw.
    let (mut frontend, _, protocol) = negotiate(&path, VhostUserProtocolFeatures::REPLY_ACK);
    assert!(!protocol.contains(VhostUserProtocolFeatures::REPLY_ACK));
    let (ours, theirs) = UnixStream::pair().unwrap();
    frontend.set_backend_request_fd(&theirs).unwrap();
    assert!(server.wait_for(|s| s.connection == 2 && s.backend_channel, TIMEOUT));
    let backend = server.backend_channel().unwrap();
    assert_eq!(backend.shmem_map(&mmap_msg(0, 2 * MIB), &file).unwrap(), 0);
    let mut buf = [0u8; 12 + 40];
    let (n, fd) = ours.recv_with_fd(&mut buf).unwrap();
    assert_eq!(n, 52);
    assert!(fd.is_some(), "the file came with the request");
    let word = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().unwrap());
    // SHMEM_MAP (9), version 1 without NEED_REPLY, a 40-byte body.
    assert_eq!((word(0), word(4), word(8)), (9, 1, 40));
    let shm_offset = u64::from_le_bytes(buf[12 + 16..12 + 24].try_into().unwrap());
    let len = u64::from_le_bytes(buf[12 + 24..12 + 32].try_into().unwrap());
    assert_eq!((shm_offset, len), (0, 2 * MIB));
}
