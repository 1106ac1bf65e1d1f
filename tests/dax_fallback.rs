// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Whether the device offers its DAX window is decided at `Fs::connect`, before a guest driver
//! can probe the shared memory regions, against the in-process vhost-user backend: a backend that
//! cannot serve the window gets a device without one (`DaxFallback::Disable`) or a connect error
//! (`DaxFallback::Fail`); a capable one gets the window in both dialects; and a reconnect to a
//! backend with other capabilities never changes what the guest sees.

mod common;

use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures as P;
use vhost::vhost_user::VhostUserFrontendReqHandler;
use vm_memory::GuestMemoryAtomic;

use common::*;
use virtio_fs_dax::device::Error;
use virtio_fs_dax::frontend::{self, DaxFallback, VIRTIO_F_VERSION_1};
use virtio_fs_dax::test_utils::{FakeMemoryManager, TestBackendConfig, TestBackendServer};
use virtio_fs_dax::{Dialect, Fs, IoSpace};

const WIN_GPA: u64 = 1 << 34;
const WINDOW: u64 = 16 * MIB;
const T: Duration = Duration::from_secs(5);

/// The test backend offering its default protocol features minus `without`.
fn config_without(without: P) -> TestBackendConfig {
    TestBackendConfig {
        protocol_features: TestBackendConfig::default().protocol_features - without,
        ..Default::default()
    }
}

fn builder(socket: &std::path::Path, dialect: Dialect, fallback: DaxFallback) -> Fs {
    Fs::builder("dax")
        .socket_path(socket)
        .window_size(WINDOW)
        .queue_size(128)
        .dialect(dialect)
        .dax_fallback(fallback)
        .connect_retry(3, Duration::from_millis(10))
        .build()
        .unwrap()
}

fn activate(fs: &mut Fs) {
    fs.ack_features(fs.features());
    fs.activate(
        GuestMemoryAtomic::new(guest_memory(8 << 20)),
        Arc::new(CountingInterrupt::default()),
        activate_queues(2, 128),
    )
    .expect("activate");
}

/// Ends `server` under an active `fs`, waits until `fs` notices, and starts a backend with
/// `config` on the same socket.
fn replace_backend(
    fs: &mut Fs,
    server: TestBackendServer,
    config: TestBackendConfig,
) -> TestBackendServer {
    let socket = server.socket_path().to_owned();
    drop(server);
    wait_backend_lost(fs, T, "backend gone");
    TestBackendServer::start(&socket, config).unwrap()
}

#[test]
fn disable_withdraws_a_placed_window_before_the_guest_sees_it() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    for (dialect, without) in [
        (Dialect::Standard, P::SHMEM),
        (Dialect::Legacy, P::BACKEND_REQ),
        (Dialect::Legacy, P::BACKEND_SEND_FD),
    ] {
        let socket = dir.path().join("be.sock");
        let server = TestBackendServer::start(&socket, config_without(without)).unwrap();
        let mm = Arc::new(FakeMemoryManager::new());
        let io = Arc::new(IoSpace::new());
        let mut fs = Fs::builder("dax")
            .socket_path(&socket)
            .window_size(WINDOW)
            .queue_size(128)
            .dialect(dialect)
            .dax_fallback(DaxFallback::Disable)
            .memory_manager(mm.clone())
            .io_space(io.clone())
            .build()
            .unwrap();
        // Placed before connect (allowed): registered with the VMM ...
        assert!(fs.window_offered());
        fs.set_shm_base(0, WIN_GPA).unwrap();
        assert_eq!(mm.live().len(), 1);

        // ... and withdrawn by connect: no region, no mapping, no memory slot, no IO window.
        fs.connect().unwrap();
        assert!(!fs.window_offered(), "{dialect:?} without {without:?}");
        assert!(fs.window().is_none());
        assert!(fs.shm_regions().is_empty());
        assert!(fs.userspace_mappings().is_empty());
        assert!(mm.live().is_empty(), "unregistered: {:?}", mm.log());
        assert!(io.remove_window(WIN_GPA).is_none(), "out of the IO space");
        // A VMM that places it anyway gets a typed error, and nothing is registered.
        match fs.set_shm_base(0, WIN_GPA) {
            Err(Error::WindowWithdrawn {
                id: 0,
                missing,
                dialect: d,
            }) => {
                assert_eq!(missing, without);
                assert_eq!(d, dialect);
            }
            other => panic!("{other:?}"),
        }
        assert!(mm.live().is_empty());
        // A second connect keeps the decision.
        fs.connect().unwrap();
        assert!(!fs.window_offered());

        // The device still activates, without DAX, and SHMEM is never acked.
        activate(&mut fs);
        let n = fs.session().unwrap().negotiated();
        assert!(!n.dax);
        assert!(server.wait_for(
            |s| s.backend_channel == n.protocol.contains(P::BACKEND_REQ),
            T
        ));
        assert!(!server
            .state()
            .acked_protocol_features
            .unwrap()
            .contains(P::SHMEM));
        assert_eq!(fs.metrics().sessions_without_dax(), 0, "no window to serve");
        assert_eq!(server.connections(), 1, "the connect's connection is used");
        drop(fs);
        assert!(mm.log().len() == 2, "nothing more: {:?}", mm.log());
    }
}

#[test]
fn fail_refuses_at_connect() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    let server = TestBackendServer::start(&socket, config_without(P::SHMEM)).unwrap();
    let mut fs = builder(&socket, Dialect::Standard, DaxFallback::Fail);
    match fs.connect() {
        Err(Error::Session(frontend::Error::DaxUnsupported { missing, dialect })) => {
            assert_eq!(missing, P::SHMEM);
            assert_eq!(dialect, Dialect::Standard);
        }
        other => panic!("{other:?}"),
    }
    // Nothing changed on the device, and the connection is closed.
    assert!(fs.window_offered());
    assert_eq!(fs.shm_regions().len(), 1);
    assert_eq!(fs.features(), VIRTIO_F_VERSION_1, "not connected");
    assert!(server.wait_for(|s| !s.connected, T));
    assert_eq!(
        server.state().requests,
        ["SET_OWNER", "GET_FEATURES", "GET_PROTOCOL_FEATURES"]
    );

    // A backend that offers no protocol features at all cannot serve the window either.
    let socket = dir.path().join("noproto.sock");
    let _server = TestBackendServer::start(
        &socket,
        TestBackendConfig {
            features: VIRTIO_F_VERSION_1,
            ..Default::default()
        },
    )
    .unwrap();
    let mut fs = builder(&socket, Dialect::Legacy, DaxFallback::Fail);
    let err = fs.connect().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Session(frontend::Error::DaxUnsupported { missing, .. })
                if missing == frontend::dax_protocol_features(Dialect::Legacy)
        ),
        "{err:?}"
    );
}

#[test]
fn a_capable_backend_gets_the_window_in_both_dialects() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    for dialect in [Dialect::Standard, Dialect::Legacy] {
        for fallback in [DaxFallback::Fail, DaxFallback::Disable] {
            let socket = dir.path().join("be.sock");
            let server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
            let mm = Arc::new(FakeMemoryManager::new());
            let mut fs = Fs::builder("dax")
                .socket_path(&socket)
                .window_size(WINDOW)
                .queue_size(128)
                .dialect(dialect)
                .dax_fallback(fallback)
                .memory_manager(mm.clone())
                .build()
                .unwrap();
            fs.connect().unwrap();
            assert!(fs.window_offered());
            let regions = fs.shm_regions();
            assert_eq!(regions.len(), 1);
            assert_eq!((regions[0].id, regions[0].len), (0, WINDOW));
            // Placed after connect, as a VMM does.
            fs.set_shm_base(0, WIN_GPA).unwrap();
            assert_eq!(mm.live().len(), 1);
            assert_eq!(fs.userspace_mappings()[0].gpa, WIN_GPA);
            activate(&mut fs);
            assert!(fs.session().unwrap().negotiated().dax, "{dialect:?}");
            assert!(server.wait_for(|s| s.backend_channel, T));
            assert_eq!(fs.metrics().sessions_without_dax(), 0);
        }
    }
}

#[test]
fn without_connect_the_window_stays_and_the_session_decides() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    let server = TestBackendServer::start(&socket, config_without(P::SHMEM)).unwrap();
    // The VMM did not connect first: the guest may have seen the window, so activation keeps
    // it and the session goes on without DAX.
    let mut fs = builder(&socket, Dialect::Standard, DaxFallback::Disable);
    activate(&mut fs);
    assert!(fs.window_offered());
    assert_eq!(fs.shm_regions().len(), 1);
    assert!(!fs.session().unwrap().negotiated().dax);
    assert_eq!(fs.metrics().sessions_without_dax(), 1);
    // After a reset, connect keeps the window too: the guest knows it.
    assert!(fs.reset().is_some());
    fs.connect().unwrap();
    assert!(fs.window_offered());
    drop(server);

    // With Fail, Session::start refuses on its own.
    let socket = dir.path().join("fail.sock");
    let _server = TestBackendServer::start(&socket, config_without(P::SHMEM)).unwrap();
    let mut fs = builder(&socket, Dialect::Standard, DaxFallback::Fail);
    let err = fs
        .activate(
            GuestMemoryAtomic::new(guest_memory(8 << 20)),
            Arc::new(CountingInterrupt::default()),
            activate_queues(2, 128),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Session(frontend::Error::DaxUnsupported {
                missing: P::SHMEM,
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn reconnect_to_a_backend_that_cannot_serve_an_offered_window() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");

    // Disable: the session starts without DAX; the window stays offered, registered and empty.
    let server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
    let mm = Arc::new(FakeMemoryManager::new());
    let mut fs = Fs::builder("dax")
        .socket_path(&socket)
        .window_size(WINDOW)
        .queue_size(128)
        .dax_fallback(DaxFallback::Disable)
        .memory_manager(mm.clone())
        .build()
        .unwrap();
    fs.connect().unwrap();
    fs.set_shm_base(0, WIN_GPA).unwrap();
    activate(&mut fs);
    assert!(fs.session().unwrap().negotiated().dax);
    let (file, _) = memfd(2 * MIB, |_| 0x5a);
    assert!(server.wait_for(|s| s.backend_channel, T));
    server
        .backend_channel()
        .unwrap()
        .shmem_map(&shmem_range(0, 2 * MIB), &file)
        .unwrap();
    let w = fs.window().unwrap().clone();
    assert_eq!(w.live_mappings(), 1);

    let server = replace_backend(&mut fs, server, config_without(P::SHMEM));
    assert_eq!(w.live_mappings(), 0);
    fs.reconnect().expect("reconnect without DAX");
    assert!(!fs.session().unwrap().negotiated().dax);
    assert!(server.wait_for(|s| s.backend_channel, T));
    assert!(!server
        .state()
        .acked_protocol_features
        .unwrap()
        .contains(P::SHMEM));
    assert!(fs.window_offered(), "the guest keeps the window it probed");
    assert_eq!(fs.shm_regions()[0].gpa, Some(WIN_GPA));
    assert_eq!(mm.live().len(), 1, "still registered");
    assert_eq!(w.live_mappings(), 0);
    assert_eq!(perms_at(&w, 0), "---p", "empty");
    assert_eq!(fs.metrics().sessions_without_dax(), 1);

    // A capable backend later serves the window again.
    let server = replace_backend(&mut fs, server, TestBackendConfig::default());
    fs.reconnect().unwrap();
    assert!(fs.session().unwrap().negotiated().dax);
    assert!(server.wait_for(|s| s.backend_channel, T));
    server
        .backend_channel()
        .unwrap()
        .shmem_map(&shmem_range(0, 2 * MIB), &file)
        .unwrap();
    assert_eq!(read_window(&w, 0, 2), vec![0x5a; 2]);
    assert_eq!(fs.metrics().sessions_without_dax(), 1);
    drop(fs);
    drop(server);

    // Fail: the reconnect fails with the typed error and the device has no session; it succeeds
    // once a capable backend is back.
    let server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
    let mut fs = builder(&socket, Dialect::Standard, DaxFallback::Fail);
    fs.connect().unwrap();
    activate(&mut fs);
    let server = replace_backend(&mut fs, server, config_without(P::SHMEM));
    let err = fs.reconnect().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Session(frontend::Error::DaxUnsupported {
                missing: P::SHMEM,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(fs.session().is_none());
    assert!(fs.window_offered());
    drop(server);
    let _server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
    fs.reconnect().unwrap();
    assert!(fs.session().unwrap().negotiated().dax);
}

#[test]
fn a_withdrawn_window_does_not_come_back_with_a_capable_backend() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    let server = TestBackendServer::start(&socket, config_without(P::SHMEM)).unwrap();
    let mut fs = builder(&socket, Dialect::Standard, DaxFallback::Disable);
    fs.connect().unwrap();
    assert!(!fs.window_offered());
    activate(&mut fs);

    let server = replace_backend(&mut fs, server, TestBackendConfig::default());
    fs.reconnect().unwrap();
    assert!(!fs.session().unwrap().negotiated().dax);
    assert!(server.wait_for(|s| s.backend_channel, T));
    assert!(
        !server
            .state()
            .acked_protocol_features
            .unwrap()
            .contains(P::SHMEM),
        "SHMEM offered but not acked: there is no window"
    );
    assert!(!fs.window_offered());
    assert!(fs.shm_regions().is_empty());
    assert!(fs.userspace_mappings().is_empty());
    assert_eq!(fs.metrics().sessions_without_dax(), 0);
}

#[test]
fn a_refused_unregistration_keeps_the_window_and_connect_retries() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    let _server = TestBackendServer::start(&socket, config_without(P::SHMEM)).unwrap();
    let mm = Arc::new(FakeMemoryManager::new());
    let mut fs = Fs::builder("dax")
        .socket_path(&socket)
        .window_size(WINDOW)
        .queue_size(128)
        .dax_fallback(DaxFallback::Disable)
        .memory_manager(mm.clone())
        .build()
        .unwrap();
    fs.set_shm_base(0, WIN_GPA).unwrap();
    mm.fail_next();
    assert!(matches!(
        fs.connect(),
        Err(Error::Memory { gpa: WIN_GPA, .. })
    ));
    assert!(fs.window_offered());
    assert_eq!(mm.live().len(), 1, "the slot stays over a live window");
    // Connected all the same; the next connect withdraws the window.
    assert_ne!(fs.features(), 0);
    fs.connect().unwrap();
    assert!(!fs.window_offered());
    assert!(mm.live().is_empty());
}

#[test]
fn check_shmem_config_holds_the_backend_to_the_window() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    // What GET_SHMEM_CONFIG answers, the fallback, and then: a session with or without DAX
    // (`Ok`), or the size the mismatch error reports (`Err`).
    for (sizes, fallback, want) in [
        (vec![WINDOW], DaxFallback::Fail, Ok(true)),
        (vec![WINDOW, 4096], DaxFallback::Fail, Ok(true)),
        (vec![], DaxFallback::Fail, Ok(true)),
        (vec![WINDOW * 2], DaxFallback::Fail, Err(WINDOW * 2)),
        (vec![WINDOW / 2, WINDOW], DaxFallback::Fail, Err(WINDOW / 2)),
        (vec![WINDOW * 2], DaxFallback::Disable, Ok(false)),
    ] {
        let server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
        server.set_shmem_sizes(&sizes);
        let mut fs = Fs::builder("dax")
            .socket_path(&socket)
            .window_size(WINDOW)
            .queue_size(128)
            .dax_fallback(fallback)
            .check_shmem_config(true)
            .connect_retry(3, Duration::from_millis(10))
            .build()
            .unwrap();
        fs.ack_features(fs.features());
        let activated = fs.activate(
            GuestMemoryAtomic::new(guest_memory(8 << 20)),
            Arc::new(CountingInterrupt::default()),
            activate_queues(2, 128),
        );
        match want {
            Ok(dax) => {
                activated.unwrap_or_else(|e| panic!("{sizes:?}: {e:?}"));
                assert_eq!(fs.session().unwrap().negotiated().dax, dax, "{sizes:?}");
            }
            Err(size) => match activated {
                Err(Error::Session(frontend::Error::ShmemSizeMismatch { backend, window })) => {
                    assert_eq!((backend, window), (size, WINDOW));
                }
                other => panic!("{sizes:?}: {other:?}"),
            },
        }
        let requests = server.state().requests;
        assert!(requests.contains(&"GET_SHMEM_CONFIG"), "{requests:?}");
        drop(fs);
        drop(server);
    }

    // Off by default: the backend is never asked (one built on vhost-user-backend without
    // `get_shmem_config` would end its connection).
    let server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
    server.set_shmem_sizes(&[WINDOW * 2]);
    let mut fs = builder(&socket, Dialect::Standard, DaxFallback::Fail);
    activate(&mut fs);
    assert!(fs.session().unwrap().negotiated().dax);
    assert!(!server.state().requests.contains(&"GET_SHMEM_CONFIG"));
}
