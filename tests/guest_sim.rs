// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The simulated guest driver of `test_utils::guest`: its split virtqueue against an in-process
//! device side, its loads and stores in a DAX window, and FUSE over the vrings of an activated
//! [`Fs`] against a real virtiofsd process.
//!
//! virtiofsd is found through `$VIRTIOFSD`, then `~/.local/virtio-fs-dax/bin/virtiofsd` (where
//! `scripts/test.sh` installs it), then `PATH`. Without it the virtiofsd test fails and says how
//! to get it.

mod common;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use virtio_fs_dax::frontend::DaxFallback;
use virtio_fs_dax::protocol::{Access, MapEntry};
use virtio_fs_dax::test_utils::guest::fuse::FUSE_ROOT_ID;
use virtio_fs_dax::test_utils::{
    guest_read, guest_write, memfd_guest_memory, GuestError, SplitQueueDriver,
};
use virtio_fs_dax::{DaxWindow, Fs, Policy};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

/// The driver against an in-process device side (virtio-queue's own device code): chains of
/// several descriptors, the ring wrapping many times, descriptors recycled.
#[test]
fn split_queue_driver_against_device_side() {
    let mem = memfd_guest_memory(4 << 20).unwrap();
    let mut driver = SplitQueueDriver::new(mem.clone(), GuestAddress(0x1_0000), 4).unwrap();
    assert!(SplitQueueDriver::footprint(4) <= 0x1000);
    let mut device = driver.activate_queue(0).unwrap();
    assert!(device.queue.ready());
    let buf = |i: u64| GuestAddress(0x10_0000 + i * 0x1000);
    for round in 0u32..40 {
        let msg = round.to_le_bytes();
        mem.write_slice(&msg, buf(0)).unwrap();
        mem.write_slice(&msg, buf(1)).unwrap();
        let head = driver
            .add_chain(&[(buf(0), 4), (buf(1), 4)], &[(buf(2), 8)])
            .unwrap();
        assert_eq!(driver.free_descriptors(), 1);
        // A chain of 3 does not fit next to it.
        assert!(matches!(
            driver.add_chain(&[(buf(0), 1)], &[(buf(2), 1), (buf(3), 1)]),
            Err(GuestError::QueueFull { needed: 3, free: 1 })
        ));
        driver.kick().unwrap();
        assert_eq!(device.kick.read().unwrap(), 1);

        let chain = device.queue.pop_descriptor_chain(&mem).unwrap();
        assert_eq!(chain.head_index(), head);
        let descs: Vec<_> = chain.collect();
        assert_eq!(descs.len(), 3);
        assert!(!descs[0].is_write_only() && !descs[1].is_write_only());
        assert!(descs[2].is_write_only());
        let mut reply = Vec::new();
        for d in &descs[..2] {
            let mut b = [0u8; 4];
            mem.read_slice(&mut b, d.addr()).unwrap();
            reply.extend_from_slice(&b);
        }
        mem.write_slice(&reply, descs[2].addr()).unwrap();
        device.queue.add_used(&mem, head, 8).unwrap();
        device.call.write(1).unwrap();

        assert_eq!(driver.wait_used(Duration::from_secs(1)), Some((head, 8)));
        assert_eq!(driver.free_descriptors(), 4);
        let mut got = [0u8; 8];
        mem.read_slice(&mut got, buf(2)).unwrap();
        assert_eq!(got[..4], msg);
        assert_eq!(got[4..], msg);
    }
    assert_eq!(driver.wait_used(Duration::from_millis(20)), None);
}

fn memfd_file(bytes: &[u8]) -> File {
    // SAFETY: memfd_create reads a valid NUL-terminated string and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"guest-sim".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` was just created and is owned by nobody else.
    let mut f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.write_all(bytes).unwrap();
    f
}

/// Guest loads and stores in a window at its guest address reach the mapped file, and only
/// within live mappings.
#[test]
fn guest_loads_and_stores_in_the_window() {
    let window = DaxWindow::new(4 * MIB).unwrap();
    let base = 1u64 << 34;
    let file = memfd_file(&vec![0xab; 2 * PAGE as usize]);
    window
        .map(
            &[
                MapEntry {
                    offset: 0x10_0000,
                    fd_offset: 0,
                    len: PAGE,
                    access: Access::ReadWrite,
                },
                MapEntry {
                    offset: 0x10_0000 + PAGE,
                    fd_offset: PAGE,
                    len: PAGE,
                    access: Access::ReadOnly,
                },
            ],
            &file,
            Policy::STANDARD,
        )
        .unwrap();
    let gpa = base + 0x10_0000;

    // A load across both mappings.
    let mut buf = vec![0u8; 2 * PAGE as usize];
    guest_read(&window, base, gpa, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0xab));

    // A store lands in the file.
    guest_write(&window, base, gpa + 10, b"guest").unwrap();
    let mut f = [0u8; 5];
    file.read_exact_at(&mut f, 10).unwrap();
    assert_eq!(&f, b"guest");

    // Stores into the read-only mapping, loads or stores of unmapped pages, and accesses outside
    // the window are refused (a real guest would fault).
    assert!(matches!(
        guest_write(&window, base, gpa + PAGE, b"x"),
        Err(GuestError::Unmapped { .. })
    ));
    assert!(matches!(
        guest_write(&window, base, gpa + PAGE - 1, b"xy"),
        Err(GuestError::Unmapped { .. })
    ));
    assert!(matches!(
        guest_read(&window, base, gpa - 1, &mut [0u8; 2]),
        Err(GuestError::Unmapped { .. })
    ));
    assert!(matches!(
        guest_read(&window, base, gpa + 2 * PAGE, &mut [0u8; 1]),
        Err(GuestError::Unmapped { .. })
    ));
    assert!(matches!(
        guest_read(&window, base, base - 1, &mut [0u8; 1]),
        Err(GuestError::OutsideWindow { .. })
    ));
    assert!(matches!(
        guest_read(&window, base, base + 4 * MIB - 1, &mut [0u8; 2]),
        Err(GuestError::OutsideWindow { .. })
    ));

    window.unmap_all().unwrap();
    assert!(matches!(
        guest_read(&window, base, gpa, &mut [0u8; 1]),
        Err(GuestError::Unmapped { .. })
    ));
}

/// FUSE over the vrings of an activated device, served by virtiofsd: INIT, LOOKUP, GETATTR,
/// OPEN, READ, WRITE, SETUPMAPPING refused (no DAX in virtiofsd), READ again, RELEASE, FORGET.
#[test]
fn fuse_over_vrings_against_virtiofsd() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let content = b"hello from the host, through virtio-fs\n";
    std::fs::write(shared.join("hello.txt"), content).unwrap();
    let socket = dir.path().join("vfs.sock");
    let _daemon = common::start_virtiofsd(&socket, &shared);

    // A window, but virtiofsd has no DAX: with the Disable fallback the device goes on without,
    // and withdraws the window at connect, before a guest could see it.
    let mut fs = Fs::builder("myfs")
        .socket_path(&socket)
        .window_size(64 * MIB)
        .dax_fallback(DaxFallback::Disable)
        .queue_size(128)
        .build()
        .unwrap();
    fs.connect().unwrap();
    assert!(!fs.window_offered());
    assert!(fs.shm_regions().is_empty());
    fs.ack_features(fs.features());

    let mut s = common::activate_with_guest(&mut fs).expect("activate against virtiofsd");
    assert!(!fs.session().unwrap().negotiated().dax);

    let init = s.init().expect("INIT");
    eprintln!("virtiofsd INIT reply: {init:?}");
    assert_eq!(init.major, 7);
    assert!(init.minor >= 31, "minor {}", init.minor);
    assert!(init.max_write > 0);

    let (nodeid, attr) = s.lookup(FUSE_ROOT_ID, "hello.txt").expect("LOOKUP");
    assert_ne!(nodeid, 0);
    assert_eq!(attr.size, content.len() as u64);
    assert_eq!(attr.mode & libc::S_IFMT, libc::S_IFREG);
    let missing = s.lookup(FUSE_ROOT_ID, "missing").unwrap_err();
    assert_eq!(missing.errno(), Some(-libc::ENOENT), "{missing:?}");

    let attr2 = s.getattr(nodeid).expect("GETATTR");
    assert_eq!(attr2.ino, attr.ino);
    assert_eq!(attr2.size, content.len() as u64);

    let flags = libc::O_RDWR as u32;
    let fh = s.open(nodeid, flags).expect("OPEN");

    let data = s.read(nodeid, fh, 0, 4096).expect("READ");
    assert_eq!(data, content);
    let tail = s.read(nodeid, fh, 6, 4).expect("READ at an offset");
    assert_eq!(tail, b"from");

    let new = b"HELLO";
    assert_eq!(
        s.write(nodeid, fh, 0, new).expect("WRITE"),
        new.len() as u32
    );
    let on_host = std::fs::read(shared.join("hello.txt")).unwrap();
    let mut expected = content.to_vec();
    expected[..new.len()].copy_from_slice(new);
    assert_eq!(on_host, expected, "the WRITE reached the host file");

    // A larger write, several pages, past the end.
    let big: Vec<u8> = (0..3 * PAGE as usize).map(|i| (i % 251) as u8).collect();
    let at = content.len() as u64;
    assert_eq!(s.write(nodeid, fh, at, &big).unwrap(), big.len() as u32);
    expected.extend_from_slice(&big);
    assert_eq!(std::fs::read(shared.join("hello.txt")).unwrap(), expected);
    assert_eq!(s.getattr(nodeid).unwrap().size, expected.len() as u64);

    // virtiofsd has no DAX: SETUPMAPPING is refused with an errno, nothing is mapped, and the
    // session goes on.
    let err = s
        .setupmapping(nodeid, fh, 0, 2 * MIB, true, 0)
        .expect_err("virtiofsd 1.14 has no DAX");
    eprintln!("SETUPMAPPING: {err}");
    let errno = err.errno().expect("a FUSE error reply");
    assert!(errno < 0, "{err:?}");
    assert!(fs.window().is_none());
    assert_eq!(fs.metrics().live_mappings(), 0);
    let rm = s.removemapping(&[(0, 2 * MIB)]).expect_err("no DAX");
    assert!(rm.errno().is_some_and(|e| e < 0), "{rm:?}");

    let again = s
        .read(nodeid, fh, 0, expected.len() as u32)
        .expect("READ after SETUPMAPPING");
    assert_eq!(again, expected);

    s.release(nodeid, fh, flags).expect("RELEASE");
    s.forget(nodeid, 1).expect("FORGET");
    // The session still works after FORGET of another node.
    assert_eq!(
        s.getattr(FUSE_ROOT_ID).unwrap().mode & libc::S_IFMT,
        libc::S_IFDIR
    );
    assert_eq!(s.queue().free_descriptors(), 128);

    fs.reset();
}
