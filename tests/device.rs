// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device against the in-process vhost-user backend (feature `test-utils`), for what
//! virtiofsd cannot show: SHMEM offered and negotiated, maps landing in the device's window,
//! RESET_DEVICE, a backend that disconnects and comes back, the window through the memory
//! manager, and the snapshot policy.

mod common;

use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures as P;
use vhost::vhost_user::VhostUserFrontendReqHandler;
use vm_memory::GuestMemoryAtomic;

use common::*;
use virtio_fs_dax::device::Error;
use virtio_fs_dax::test_utils::{FakeMemoryManager, TestBackendConfig, TestBackendServer};
use virtio_fs_dax::{Dialect, Fs};

const WIN_GPA: u64 = 1 << 34;
const T: Duration = Duration::from_secs(5);

fn device(socket: &std::path::Path, mm: Arc<FakeMemoryManager>) -> Fs {
    let mut fs = Fs::builder("dax")
        .socket_path(socket)
        .window_size(16 * MIB)
        .queue_size(128)
        .memory_manager(mm)
        .build()
        .unwrap();
    fs.set_shm_base(0, WIN_GPA).unwrap();
    fs.connect().unwrap();
    let offered = fs.features();
    fs.ack_features(offered);
    fs
}

#[test]
fn shmem_session_map_reset_reconnect() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    let server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
    let mm = Arc::new(FakeMemoryManager::new());
    let mut fs = device(&socket, mm.clone());
    assert_eq!(mm.live().len(), 1, "window registered at placement");

    let mem = GuestMemoryAtomic::new(guest_memory(32 << 20));
    let irq = Arc::new(CountingInterrupt::default());
    fs.activate(mem.clone(), irq.clone(), activate_queues(2, 128))
        .unwrap();

    // What the backend was told.
    let s = server.state();
    assert!(s.owner);
    let acked = s.acked_protocol_features.unwrap();
    for f in [
        P::SHMEM,
        P::REPLY_ACK,
        P::BACKEND_REQ,
        P::BACKEND_SEND_FD,
        P::CONFIG,
        P::RESET_DEVICE,
        P::MQ,
    ] {
        assert!(acked.contains(f), "{f:?} acked: {acked:?}");
    }
    assert!(fs.session().unwrap().negotiated().dax);
    assert_eq!(s.mem_table.len(), 1, "guest RAM only, never the window");
    assert_eq!(s.mem_table[0].memory_size, 32 << 20);
    assert_eq!(s.vrings.len(), 2);
    for v in &s.vrings {
        assert_eq!(v.num, Some(128));
        assert!(v.kick && v.call && v.enabled, "{v:?}");
    }
    assert!(s.backend_channel, "backend channel set");
    let last = s
        .requests
        .iter()
        .rposition(|r| r.contains("VRING"))
        .unwrap();
    let chan = s
        .requests
        .iter()
        .position(|r| r.contains("BACKEND_REQ_FD"))
        .unwrap();
    assert!(
        chan > last,
        "backend channel fd sent last: {:?}",
        s.requests
    );

    // The backend maps a file through the channel: it lands in the device's window.
    let (file, _) = memfd(2 * MIB, |_| 0x42);
    let backend = server.backend_channel().unwrap();
    backend.shmem_map(&shmem_range(0, 2 * MIB), &file).unwrap();
    let w = fs.window().unwrap().clone();
    assert_eq!(read_window(&w, 0, 4), vec![0x42; 4]);
    assert_eq!(fs.metrics().live_mappings(), 1);
    assert!(matches!(
        fs.snapshot(),
        Err(Error::SnapshotWithMappings { live: 1 })
    ));

    // Reset: mappings dropped, RESET_DEVICE sent, window still registered.
    assert!(fs.reset().is_some());
    assert_eq!(w.live_mappings(), 0);
    assert_eq!(perms_at(&w, 0), "---p");
    assert!(server.wait_for(|s| s.reset_device_count == 1, T));
    assert_eq!(mm.live().len(), 1);
    let snap = fs.snapshot().unwrap();
    assert_eq!(fs.restore(&snap).unwrap().len(), 0);

    // Activate again on the same connection, map, then the backend goes away.
    fs.ack_features(fs.features());
    fs.activate(mem.clone(), irq.clone(), activate_queues(2, 128))
        .unwrap();
    let backend = server.backend_channel().unwrap();
    backend
        .shmem_map(&shmem_range(2 * MIB, 2 * MIB), &file)
        .unwrap();
    assert_eq!(w.live_mappings(), 1);
    server.disconnect();
    common::wait_backend_lost(&mut fs, T, "backend loss");
    assert_eq!(
        w.live_mappings(),
        0,
        "a dead backend's mappings are dropped at once"
    );
    assert_eq!(perms_at(&w, 2 * MIB), "---p");

    // Reconnect: a fresh session on a new connection, nothing inherited.
    fs.reconnect().unwrap();
    assert!(server.wait_for(|s| s.backend_channel && s.vrings.len() == 2, T));
    assert_eq!(server.connections(), 2);
    let backend = server.backend_channel().unwrap();
    backend.shmem_map(&shmem_range(0, 2 * MIB), &file).unwrap();
    assert_eq!(w.live_mappings(), 1);
    assert_window_sound(&w);

    drop(fs);
    assert!(mm.live().is_empty(), "slot removed on drop");
}

#[test]
fn dax_needs_the_dialects_features() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    // A backend without SHMEM: the standard dialect cannot serve the window ...
    let socket = dir.path().join("noshm.sock");
    let config = TestBackendConfig {
        protocol_features: TestBackendConfig::default().protocol_features - P::SHMEM,
        ..Default::default()
    };
    let _server = TestBackendServer::start(&socket, config.clone()).unwrap();
    let mut fs = Fs::builder("dax")
        .socket_path(&socket)
        .window_size(16 * MIB)
        .queue_size(128)
        .build()
        .unwrap();
    let err = fs.connect().unwrap_err();
    assert!(format!("{err:?}").contains("DaxUnsupported"), "{err:?}");
    let mem = GuestMemoryAtomic::new(guest_memory(8 << 20));

    // ... but the legacy dialect needs no bit of its own.
    let socket = dir.path().join("legacy.sock");
    let server = TestBackendServer::start(&socket, config).unwrap();
    let mut fs = Fs::builder("dax")
        .socket_path(&socket)
        .window_size(16 * MIB)
        .queue_size(128)
        .dialect(Dialect::Legacy)
        .build()
        .unwrap();
    fs.activate(
        mem,
        Arc::new(CountingInterrupt::default()),
        activate_queues(2, 128),
    )
    .unwrap();
    assert!(fs.session().unwrap().negotiated().dax);
    assert!(!server
        .state()
        .acked_protocol_features
        .unwrap()
        .contains(P::SHMEM));
}
