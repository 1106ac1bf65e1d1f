// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device against a real virtiofsd process: handshake, protocol features, memory table,
//! vrings, backend channel, then kill -9, restart and reconnect; and the DAX window decided at
//! connect (virtiofsd 1.14 cannot serve it).
//!
//! virtiofsd is found through `$VIRTIOFSD`, then `~/.local/virtio-fs-dax/bin/virtiofsd` (where
//! `scripts/test.sh` installs it), then `PATH`. Without it these tests fail and say how to get it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures as P;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};

use common::*;
use virtio_fs_dax::device::Error;
use virtio_fs_dax::frontend::{self, DaxFallback, VIRTIO_F_VERSION_1};
use virtio_fs_dax::{Dialect, Fs};

#[test]
fn handshake_kill9_restart_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello"), b"hello").unwrap();
    let socket = dir.path().join("vfs.sock");
    let mut daemon = start_virtiofsd(&socket, &shared);

    // A window, but virtiofsd has no DAX: with the Disable fallback the device goes on without,
    // and connect withdraws the window before a guest could see it.
    let mut fs = Fs::builder("myfs")
        .socket_path(&socket)
        .window_size(64 * MIB)
        .dax_fallback(DaxFallback::Disable)
        .queue_size(256)
        .build()
        .unwrap();
    assert_eq!(fs.shm_regions().len(), 1);
    fs.connect().unwrap();
    assert!(!fs.window_offered());
    assert!(
        fs.shm_regions().is_empty(),
        "no window for the guest to probe"
    );
    assert!(fs.userspace_mappings().is_empty());
    assert!(matches!(
        fs.set_shm_base(0, 1 << 34),
        Err(Error::WindowWithdrawn { id: 0, .. })
    ));
    let offered = fs.features();
    assert_ne!(offered & VIRTIO_F_VERSION_1, 0);
    fs.ack_features(offered);

    let mem = GuestMemoryAtomic::new(guest_memory(64 << 20));
    let irq = Arc::new(CountingInterrupt::default());
    fs.activate(mem.clone(), irq.clone(), activate_queues(2, 256))
        .expect("handshake with virtiofsd");

    let n = fs.session().unwrap().negotiated();
    eprintln!(
        "virtiofsd offers {:?}; acked {:?}",
        n.backend_protocol, n.protocol
    );
    // What virtiofsd 1.14 offers and what this crate acks of it: the backend channel is set up
    // (BACKEND_REQ), NEED_REPLY is on (REPLY_ACK), so every request of the mem table and vring
    // setup above was acknowledged by virtiofsd; memory hotplug can follow (CONFIGURE_MEM_SLOTS).
    let expected = P::MQ
        | P::REPLY_ACK
        | P::BACKEND_REQ
        | P::BACKEND_SEND_FD
        | P::RESET_DEVICE
        | P::CONFIGURE_MEM_SLOTS;
    assert!(
        n.backend_protocol.contains(expected),
        "{:?}",
        n.backend_protocol
    );
    assert_eq!(n.protocol, expected);
    assert!(
        !n.backend_protocol.contains(P::SHMEM),
        "virtiofsd 1.14 has no DAX"
    );
    assert!(!n.dax, "DAX disabled by the fallback");
    assert!(!fs.check_backend());

    // Hotplug: virtiofsd acknowledges ADD_MEM_REG and REM_MEM_REG (NEED_REPLY is on).
    let (file, _) = memfd(4 << 20, |_| 0);
    let hot = Arc::new(
        vm_memory::GuestRegionMmap::from_range(
            vm_memory::GuestAddress(1 << 30),
            4 << 20,
            Some(vm_memory::FileOffset::new(file, 0)),
        )
        .unwrap(),
    );
    let grown = mem.memory().insert_region(hot.clone()).unwrap();
    mem.lock().unwrap().replace(grown);
    fs.add_memory_region(&hot)
        .expect("ADD_MEM_REG acked by virtiofsd");
    fs.remove_memory_region(&hot)
        .expect("REM_MEM_REG acked by virtiofsd");
    let (shrunk, _) = mem
        .memory()
        .remove_region(vm_memory::GuestAddress(1 << 30), 4 << 20)
        .unwrap();
    mem.lock().unwrap().replace(shrunk);
    assert!(!fs.check_backend());

    // Kill -9: the device notices through its backend channel and reconnects to a restarted
    // virtiofsd.
    daemon.kill9();
    common::wait_backend_lost(&mut fs, Duration::from_secs(10), "kill -9");
    assert!(fs.backend_fd().is_none(), "the dead session is torn down");
    let _daemon = start_virtiofsd(&socket, &shared);
    fs.reconnect()
        .expect("reconnect to the restarted virtiofsd");
    let n2 = fs.session().unwrap().negotiated();
    assert_eq!(n2.protocol, n.protocol, "same negotiation after reconnect");
    assert!(!fs.check_backend());
    assert!(fs.shm_regions().is_empty(), "still no window");
    assert_eq!(fs.metrics().sessions_without_dax(), 0);

    // Reset keeps the connection for the next activation.
    assert!(fs.reset().is_some());
    fs.activate(mem, irq, activate_queues(2, 256))
        .expect("activate again after reset");
}

/// virtiofsd serving an empty tree in a temporary directory (dropped last): the directory, the
/// socket, the process.
fn virtiofsd_on_empty_tree() -> (tempfile::TempDir, std::path::PathBuf, PeerProcess) {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let socket = dir.path().join("vfs.sock");
    let daemon = start_virtiofsd(&socket, &shared);
    (dir, socket, daemon)
}

#[test]
fn dax_required_fails_at_connect_against_virtiofsd() {
    let (_dir, socket, _daemon) = virtiofsd_on_empty_tree();
    let mut fs = Fs::builder("myfs")
        .socket_path(&socket)
        .window_size(64 * MIB)
        .queue_size(256)
        .build()
        .unwrap();
    match fs.connect() {
        Err(Error::Session(frontend::Error::DaxUnsupported { missing, dialect })) => {
            assert_eq!(missing, P::SHMEM, "virtiofsd 1.14 has all but SHMEM");
            assert_eq!(dialect, Dialect::Standard);
        }
        other => panic!("a typed error before the guest sees the device: {other:?}"),
    }
    assert!(fs.window_offered(), "nothing changed on the device");
}

/// The legacy dialect has no feature bit: a backend channel that passes descriptors is all that
/// can be checked, and virtiofsd 1.14 has one (it just never sends FS_MAP). The window is
/// offered; the guest's SETUPMAPPING then fails in virtiofsd itself.
#[test]
fn legacy_dialect_cannot_tell_virtiofsd_has_no_dax() {
    let (_dir, socket, _daemon) = virtiofsd_on_empty_tree();
    let mut fs = Fs::builder("myfs")
        .socket_path(&socket)
        .window_size(64 * MIB)
        .dialect(Dialect::Legacy)
        .dax_fallback(DaxFallback::Disable)
        .queue_size(256)
        .build()
        .unwrap();
    fs.connect().unwrap();
    assert!(fs.window_offered());
    assert_eq!(fs.shm_regions().len(), 1);
}

/// Activation without connect: the guest may have seen the window, so it stays; the session
/// refuses on its own.
#[test]
fn dax_required_fails_against_virtiofsd() {
    let (_dir, socket, _daemon) = virtiofsd_on_empty_tree();
    let mut fs = Fs::builder("myfs")
        .socket_path(&socket)
        .window_size(64 * MIB)
        .queue_size(256)
        .build()
        .unwrap();
    let err = fs
        .activate(
            GuestMemoryAtomic::new(guest_memory(64 << 20)),
            Arc::new(CountingInterrupt::default()),
            activate_queues(2, 256),
        )
        .unwrap_err();
    assert!(
        format!("{:?}", err).contains("DaxUnsupported"),
        "a clear error when DAX is required: {err:?}"
    );
}

/// A driver that activates with a ring outside guest RAM gets a typed error, and the backend
/// stays connected: virtiofsd serves one session and exits when its connection closes, so
/// before this check a guest's bad ring address cost the device its backend. The driver's next
/// activation, with good rings, is served by the same virtiofsd process.
#[test]
fn a_bad_ring_address_keeps_virtiofsd_connected() {
    let (_dir, socket, mut daemon) = virtiofsd_on_empty_tree();
    let mut fs = Fs::builder("myfs")
        .socket_path(&socket)
        .queue_size(256)
        .build()
        .unwrap();
    fs.connect().unwrap();
    fs.ack_features(fs.features());
    let mem = GuestMemoryAtomic::new(guest_memory(64 << 20));
    let irq = Arc::new(CountingInterrupt::default());

    // Activates with the descriptor table of queue `index` at `gpa`: a typed error naming that
    // ring, and no session.
    let mut refused = |index: usize, gpa: u64| {
        let mut queues = activate_queues(2, 256);
        let ring = &mut queues[index].queue;
        ring.set_ready(false);
        ring.try_set_desc_table_address(vm_memory::GuestAddress(gpa))
            .unwrap();
        ring.set_ready(true);
        match fs.activate(mem.clone(), irq.clone(), queues) {
            Err(Error::Session(frontend::Error::QueueAddress { index: i, gpa: at })) => {
                assert_eq!((i, at), (index, gpa))
            }
            other => panic!("a typed error for queue {index}'s ring at {gpa:#x}: {other:?}"),
        }
        assert!(fs.session().is_none());
    };
    refused(1, 1 << 40);
    // A ring that starts inside RAM and runs past its end is refused too.
    refused(0, (64 << 20) - 16 * 128);
    std::thread::sleep(Duration::from_millis(300));
    assert!(daemon.is_running(), "virtiofsd lost its connection");

    fs.activate(mem, irq, activate_queues(2, 256))
        .expect("the same virtiofsd serves the next activation");
    assert!(fs.session().is_some());
    fs.reset();
}
