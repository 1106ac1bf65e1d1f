// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Standard dialect (SHMEM_MAP / SHMEM_UNMAP) with vhost 0.18's `Backend` as the sending peer.

mod common;

use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;

use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};

use common::*;
use virtio_fs_dax::protocol::Access;
use virtio_fs_dax::{BackendChannel, DaxWindow, Dialect, Policy};

/// A channel served by `handle_one` on a thread, with vhost's `Backend` on the other end
/// (REPLY_ACK and SHMEM negotiated on both sides).
fn setup(size: u64, replace_exact: bool) -> (Arc<DaxWindow>, Backend, thread::JoinHandle<usize>) {
    let window = Arc::new(DaxWindow::new(size).unwrap());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut channel = BackendChannel::builder(ours)
        .window(window.clone())
        .dialect(Dialect::Standard)
        .replace_exact(replace_exact)
        .build();
    assert_eq!(
        channel.policy(),
        if replace_exact {
            Policy::STANDARD_REPLACE
        } else {
            Policy::STANDARD
        }
    );
    let server = thread::spawn(move || {
        let mut served = 0;
        while let Ok(out) = channel.handle_one_timeout(std::time::Duration::from_secs(3600)) {
            served += usize::from(out.is_some());
        }
        served
    });
    let backend = Backend::from_stream(theirs);
    backend.set_reply_ack_flag(true);
    backend.set_shmem_flag(true);
    (window, backend, server)
}

#[test]
fn map_write_read_unmap_through_vhost_backend() {
    let _g = serial();
    let (window, backend, server) = setup(8 * MIB, false);
    let (file, _) = memfd(4 * MIB, |p| (p % 251) as u8);

    // Map the second 2 MiB of the file, writable, at window offset 2 MiB.
    backend
        .shmem_map(&mmap_msg(2 * MIB, 2 * MIB, 2 * MIB, true), &file)
        .unwrap();
    assert_eq!(perms_at(&window, 2 * MIB), "rw-s");
    assert_window_sound(&window);
    let first_page = (2 * MIB / PAGE % 251) as u8;
    assert_eq!(read_window(&window, 2 * MIB, 16), vec![first_page; 16]);

    // Bytes written through the window appear in the file ...
    write_window(&window, 2 * MIB + 100, b"through the window");
    let mut buf = [0u8; 18];
    file.read_exact_at(&mut buf, 2 * MIB + 100).unwrap();
    assert_eq!(&buf, b"through the window");
    // ... and bytes written to the file appear in the window.
    file.write_all_at(b"from the file", 3 * MIB).unwrap();
    assert_eq!(read_window(&window, 3 * MIB, 13), b"from the file");

    let m = window.metrics();
    assert_eq!(
        (m.maps(), m.live_mappings(), m.mapped_bytes()),
        (1, 1, 2 * MIB)
    );

    // The map's round trip was timed; a refused map is not.
    assert_eq!(m.map_latency().count(), 1);
    assert!(backend
        .shmem_map(&mmap_msg(7 * MIB, 0, 2 * MIB, true), &file)
        .is_err());
    assert_eq!(m.map_latency().count(), 1);
    assert!(m.map_latency().quantile(0.5).unwrap() > std::time::Duration::ZERO);

    // Unmap restores PROT_NONE, and the window has no hole.
    backend
        .shmem_unmap(&mmap_msg(2 * MIB, 0, 2 * MIB, false))
        .unwrap();
    assert_eq!(perms_at(&window, 2 * MIB), "---p");
    assert_window_sound(&window);
    assert_eq!((m.unmaps(), m.live_mappings(), m.mapped_bytes()), (1, 0, 0));
    assert!(window.mappings().is_empty());

    drop(backend);
    assert_eq!(server.join().unwrap(), 3);
}

#[test]
fn read_only_mapping_is_r_s() {
    let _g = serial();
    let (window, backend, server) = setup(4 * MIB, false);
    let (file, _) = memfd(2 * MIB, |_| 0x5a);
    backend
        .shmem_map(&mmap_msg(0, 0, 2 * MIB, false), &file)
        .unwrap();
    assert_eq!(perms_at(&window, 0), "r--s");
    assert_eq!(read_window(&window, 0, 8), vec![0x5a; 8]);
    assert_eq!(
        window.mappings()[0].access,
        Access::ReadOnly,
        "table records the access"
    );
    assert_window_sound(&window);
    drop(backend);
    assert_eq!(server.join().unwrap(), 1);
}

#[test]
fn refusals_reach_the_backend_and_the_channel_goes_on() {
    let _g = serial();
    let (window, backend, server) = setup(4 * MIB, false);
    let (file, _) = memfd(4 * MIB, |_| 1);
    backend
        .shmem_map(&mmap_msg(0, 0, 2 * MIB, false), &file)
        .unwrap();
    // Overlap (spec-strict), past the end, unmap of nothing: each an Err at the backend.
    assert!(backend
        .shmem_map(&mmap_msg(MIB, 0, 2 * MIB, false), &file)
        .is_err());
    assert!(backend
        .shmem_map(&mmap_msg(4 * MIB, 0, 2 * MIB, false), &file)
        .is_err());
    assert!(backend
        .shmem_unmap(&mmap_msg(2 * MIB, 0, 2 * MIB, false))
        .is_err());
    // The exact-range upgrade is refused by default.
    assert!(backend
        .shmem_map(&mmap_msg(0, 0, 2 * MIB, true), &file)
        .is_err());
    assert_eq!(perms_at(&window, 0), "r--s");
    // And the channel still serves.
    backend
        .shmem_map(&mmap_msg(2 * MIB, 2 * MIB, 2 * MIB, true), &file)
        .unwrap();
    assert_eq!(window.metrics().total_refusals(), 4);
    assert_eq!(window.live_mappings(), 2);
    assert_window_sound(&window);
    drop(backend);
    assert_eq!(server.join().unwrap(), 6);
}

#[test]
fn exact_range_replace_upgrades_to_writable() {
    let _g = serial();
    let (window, backend, server) = setup(4 * MIB, true);
    let (file, _) = memfd(2 * MIB, |_| 7);
    backend
        .shmem_map(&mmap_msg(0, 0, 2 * MIB, false), &file)
        .unwrap();
    assert_eq!(perms_at(&window, 0), "r--s");
    backend
        .shmem_map(&mmap_msg(0, 0, 2 * MIB, true), &file)
        .unwrap();
    assert_eq!(perms_at(&window, 0), "rw-s");
    assert_eq!(window.live_mappings(), 1);
    // A partial overlap is still refused.
    assert!(backend
        .shmem_map(&mmap_msg(MIB, 0, MIB, true), &file)
        .is_err());
    write_window(&window, 0, b"upgraded");
    let mut buf = [0u8; 8];
    file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"upgraded");
    drop(backend);
    assert_eq!(server.join().unwrap(), 3);
}

#[test]
fn disconnect_drops_every_mapping() {
    let _g = serial();
    let window = Arc::new(DaxWindow::new(4 * MIB).unwrap());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let thread = BackendChannel::builder(ours)
        .window(window.clone())
        .build()
        .spawn()
        .unwrap();
    let backend = Backend::from_stream(theirs);
    backend.set_reply_ack_flag(true);
    backend.set_shmem_flag(true);
    let (file, _) = memfd(2 * MIB, |_| 3);
    backend
        .shmem_map(&mmap_msg(0, 0, 2 * MIB, false), &file)
        .unwrap();
    assert_eq!(perms_at(&window, 0), "r--s");
    drop(backend);
    // The thread notices, drops the mappings and ends with Disconnected.
    assert!(matches!(
        thread.join(),
        Err(virtio_fs_dax::channel::Error::Disconnected)
    ));
    assert_eq!(window.live_mappings(), 0);
    assert_eq!(perms_at(&window, 0), "---p");
    assert_window_sound(&window);
}

#[test]
fn stop_joins_cleanly_even_mid_message() {
    let _g = serial();
    let window = Arc::new(DaxWindow::new(4 * MIB).unwrap());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let thread = BackendChannel::builder(ours)
        .window(window.clone())
        .build()
        .spawn()
        .unwrap();
    // Half a header: the thread blocks waiting for the rest.
    use std::io::Write;
    (&theirs).write_all(&[9, 0, 0, 0, 9]).unwrap();
    thread::sleep(std::time::Duration::from_millis(50));
    assert!(!thread.is_finished());
    assert!(thread.stop().is_ok());
}
