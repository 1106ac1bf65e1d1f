// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! End to end with a DAX-capable backend process (peers/dax-backend: fuse-backend-rs
//! passthrough served over vhost-user) and the simulated guest driver: FUSE_SETUPMAPPING goes
//! over the vrings to the backend, which sends SHMEM_MAP (or, with `--legacy`, FS_MAP) with the
//! file's fd on the backend channel; the device maps it into its window, and the guest reads
//! and writes the file through plain loads and stores at the window's guest address.
//!
//! The backend binary is found through `$DAX_BACKEND`, else
//! `peers/dax-backend/target/release/dax-backend` (which `scripts/test.sh` builds). Without it
//! these tests fail and say how to build it.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{perms_at, start_dax_backend, MIB};
use virtio_fs_dax::test_utils::guest::fuse::FUSE_ROOT_ID;
use virtio_fs_dax::test_utils::{guest_read, guest_write, FuseSession};
use virtio_fs_dax::{Dialect, Fs};
use vm_memory::GuestMemoryAtomic;

const WIN_GPA: u64 = 1 << 34;
const WINDOW: u64 = 64 * MIB;

/// A 6 MiB file whose every 4 KiB page holds its page number's low byte.
fn sample(shared: &Path) -> Vec<u8> {
    let data: Vec<u8> = (0..6 * MIB as usize).map(|i| (i / 4096) as u8).collect();
    std::fs::write(shared.join("data.bin"), &data).unwrap();
    data
}

/// The device with a `window`-byte window at `WIN_GPA`, connected to the backend on `socket`
/// and activated by the simulated guest, DAX negotiated; the guest's FUSE session, not yet
/// initialised.
fn device(socket: &Path, window: u64, dialect: Dialect) -> (Fs, FuseSession) {
    common::dax_device(socket, WIN_GPA, window, dialect)
}

fn run(dialect: Dialect) {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let data = sample(&shared);
    let socket = dir.path().join("dax.sock");
    let mut backend = start_dax_backend(&socket, &shared, dialect == Dialect::Legacy);

    let (mut fs, mut s) = device(&socket, WINDOW, dialect);
    let window = fs.window().unwrap().clone();

    s.init().expect("INIT");
    let (nodeid, _) = s.lookup(FUSE_ROOT_ID, "data.bin").expect("LOOKUP");
    let fh = s.open(nodeid, libc::O_RDWR as u32).expect("OPEN");

    // SETUPMAPPING of two 2 MiB ranges, read-only: the guest reads the file through the window.
    s.setupmapping(nodeid, fh, 0, 2 * MIB, false, 0)
        .expect("SETUPMAPPING 0");
    s.setupmapping(nodeid, fh, 4 * MIB, 2 * MIB, false, 2 * MIB)
        .expect("SETUPMAPPING 1");
    assert_eq!(window.live_mappings(), 2);
    assert_eq!(perms_at(&window, 0), "r--s");
    let mut buf = vec![0u8; 2 * MIB as usize];
    guest_read(&window, WIN_GPA, WIN_GPA, &mut buf).unwrap();
    assert_eq!(
        buf,
        data[..2 * MIB as usize],
        "file bytes through the window"
    );
    guest_read(&window, WIN_GPA, WIN_GPA + 2 * MIB, &mut buf).unwrap();
    assert_eq!(
        buf,
        data[4 * MIB as usize..],
        "second range, other file offset"
    );

    // The Linux guest's writable upgrade: SETUPMAPPING again, same range, writable.
    s.setupmapping(nodeid, fh, 0, 2 * MIB, true, 0)
        .expect("writable upgrade");
    assert_eq!(perms_at(&window, 0), "rw-s");
    guest_write(&window, WIN_GPA, WIN_GPA + 4096, b"stored by the guest").unwrap();
    let mut back = [0u8; 19];
    std::fs::File::open(shared.join("data.bin"))
        .unwrap()
        .read_exact_at(&mut back, 4096)
        .unwrap();
    assert_eq!(
        &back, b"stored by the guest",
        "a store through the window lands in the file"
    );

    // REMOVEMAPPING, then reclaim-style reuse of the range for another part of the file.
    s.removemapping(&[(0, 2 * MIB)]).expect("REMOVEMAPPING");
    assert_eq!(perms_at(&window, 0), "---p");
    s.setupmapping(nodeid, fh, 2 * MIB, 2 * MIB, false, 0)
        .expect("remap");
    guest_read(&window, WIN_GPA, WIN_GPA, &mut buf[..4096]).unwrap();
    assert_eq!(buf[..4096], data[2 * MIB as usize..2 * MIB as usize + 4096]);
    assert_eq!(fs.metrics().total_refusals(), 0);

    // A FUSE_READ whose buffer lies inside the window (a guest read() into a DAX-mapped
    // buffer): the backend cannot see the window, so it asks the device to do the copy (FS_IO,
    // legacy dialect). The target is a writable mapping of another file.
    let other: Vec<u8> = (0..2 * MIB as usize).map(|i| (i % 251) as u8).collect();
    std::fs::write(shared.join("other.bin"), vec![0u8; other.len()]).unwrap();
    let (onode, _) = s.lookup(FUSE_ROOT_ID, "other.bin").expect("LOOKUP other");
    let ofh = s.open(onode, libc::O_RDWR as u32).expect("OPEN other");
    s.setupmapping(onode, ofh, 0, 2 * MIB, true, 4 * MIB)
        .expect("SETUPMAPPING other, writable");
    let target = WIN_GPA + 4 * MIB + 4096;
    let len = 256 * 1024;
    let from = MIB + 123;
    let ios = fs.metrics().ios();
    match dialect {
        Dialect::Legacy => {
            let n = s
                .read_into(nodeid, fh, from, len, vm_memory::GuestAddress(target))
                .expect("FUSE_READ into the window through FS_IO");
            assert_eq!(n, len);
            let mut got = vec![0u8; len as usize];
            guest_read(&window, WIN_GPA, target, &mut got).unwrap();
            let want = &data[from as usize..(from + u64::from(len)) as usize];
            assert!(got == want, "the file bytes landed in the window");
            assert!(fs.metrics().ios() > ios, "served through the IO path");
            let mut host = vec![0u8; len as usize];
            std::fs::File::open(shared.join("other.bin"))
                .unwrap()
                .read_exact_at(&mut host, 4096)
                .unwrap();
            assert!(
                host == want,
                "and, through the shared mapping, in the other file"
            );

            // Into a part of the window that nothing maps: refused with EFAULT, and the session
            // goes on.
            let err = s
                .read_into(
                    nodeid,
                    fh,
                    0,
                    4096,
                    vm_memory::GuestAddress(WIN_GPA + 8 * MIB),
                )
                .expect_err("a read into an unmapped window range");
            assert_eq!(err.errno(), Some(-libc::EFAULT), "{err}");
            assert!(fs.metrics().total_refusals() > 0);
            assert_eq!(
                s.getattr(nodeid).expect("GETATTR after").size,
                data.len() as u64
            );
        }
        Dialect::Standard => {
            // The standard dialect has no FS_IO (MEM_READ/MEM_WRITE is experimental and not
            // sent by this backend): the read fails, cleanly (EFAULT: a buffer the backend
            // cannot reach), and the session goes on.
            let err = s
                .read_into(nodeid, fh, from, len, vm_memory::GuestAddress(target))
                .expect_err("no IO path in the standard dialect");
            assert_eq!(err.errno(), Some(-libc::EFAULT), "{err}");
            assert_eq!(fs.metrics().ios(), ios);
            assert_eq!(
                s.getattr(nodeid).expect("GETATTR after").size,
                data.len() as u64
            );
        }
    }

    // The backend killed while ranges are mapped: the mappings are gone.
    backend.kill9();
    common::wait_backend_lost(&mut fs, Duration::from_secs(10), "backend death");
    assert_eq!(window.live_mappings(), 0);
    assert_eq!(perms_at(&window, 0), "---p");
    assert_eq!(perms_at(&window, 2 * MIB), "---p");

    // A restarted backend serves again: reconnect, a new FUSE session over the same queues, and
    // a fresh mapping of the file.
    let _backend = start_dax_backend(&socket, &shared, dialect == Dialect::Legacy);
    fs.reconnect().expect("reconnect to the restarted backend");
    assert!(
        fs.session().unwrap().negotiated().dax,
        "DAX after reconnect"
    );
    assert!(!fs.check_backend());
    s.init().expect("INIT on the restarted backend");
    let (nodeid, _) = s.lookup(FUSE_ROOT_ID, "data.bin").expect("LOOKUP again");
    let fh = s.open(nodeid, libc::O_RDONLY as u32).expect("OPEN again");
    s.setupmapping(nodeid, fh, 4 * MIB, 2 * MIB, false, 0)
        .expect("SETUPMAPPING after restart");
    guest_read(&window, WIN_GPA, WIN_GPA, &mut buf).unwrap();
    assert!(
        buf == data[4 * MIB as usize..],
        "file bytes after the restart"
    );
    assert_eq!(window.live_mappings(), 1);
}

/// A window smaller than the file: the guest reads the whole file through two 2 MiB slots,
/// evicting the older slot's range (REMOVEMAPPING) before mapping the next (SETUPMAPPING), as
/// the Linux guest's DAX range reclaim does.
fn reclaim(dialect: Dialect) {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let data: Vec<u8> = (0..16 * MIB as usize)
        .map(|i| ((i / 4096) as u8) ^ (i as u8))
        .collect();
    std::fs::write(shared.join("big.bin"), &data).unwrap();
    let socket = dir.path().join("dax.sock");
    let _backend = start_dax_backend(&socket, &shared, dialect == Dialect::Legacy);
    let slots = 2;
    let (fs, mut s) = device(&socket, slots * 2 * MIB, dialect);
    let window = fs.window().unwrap().clone();
    s.init().expect("INIT");
    let (nodeid, _) = s.lookup(FUSE_ROOT_ID, "big.bin").expect("LOOKUP");
    let fh = s.open(nodeid, libc::O_RDONLY as u32).expect("OPEN");

    // The window is too small for the file: mapping past its end is refused (ERANGE; vhost
    // 0.16's `Backend`, which the standard dialect's peer sends through, turns every refusal
    // into EIO), and the session goes on.
    let err = s
        .setupmapping(nodeid, fh, 0, 2 * MIB, false, slots * 2 * MIB)
        .expect_err("a range past the window's end");
    let expected = match dialect {
        Dialect::Legacy => libc::ERANGE,
        Dialect::Standard => libc::EIO,
    };
    assert_eq!(err.errno(), Some(-expected), "{err}");
    assert_eq!(
        fs.metrics().refusals(virtio_fs_dax::Refusal::OutOfWindow),
        1
    );

    let mut held: Vec<Option<u64>> = vec![None; slots as usize];
    let mut chunk = vec![0u8; 2 * MIB as usize];
    for (i, want) in data.chunks(2 * MIB as usize).enumerate() {
        let slot = i % slots as usize;
        let moffset = slot as u64 * 2 * MIB;
        if held[slot].take().is_some() {
            s.removemapping(&[(moffset, 2 * MIB)]).expect("evict");
            assert_eq!(perms_at(&window, moffset), "---p");
        }
        s.setupmapping(nodeid, fh, i as u64 * 2 * MIB, 2 * MIB, false, moffset)
            .expect("map the next range");
        held[slot] = Some(i as u64);
        guest_read(&window, WIN_GPA, WIN_GPA + moffset, &mut chunk).unwrap();
        assert!(chunk == want, "range {i} through slot {slot}");
        assert!(window.live_mappings() <= slots as usize);
    }
    let m = fs.metrics();
    assert_eq!(m.maps(), 8, "one SETUPMAPPING per 2 MiB of the file");
    // The legacy backend also clears the whole window at FUSE_INIT, as virtiofsd did.
    let at_init = match dialect {
        Dialect::Legacy => 1,
        Dialect::Standard => 0,
    };
    assert_eq!(
        m.unmaps(),
        6 + at_init,
        "every range but the last two was evicted"
    );
    assert_eq!(
        m.total_refusals(),
        1,
        "only the out-of-window request was refused"
    );
}

#[test]
fn standard_dialect_end_to_end() {
    run(Dialect::Standard);
}

#[test]
fn legacy_dialect_end_to_end() {
    run(Dialect::Legacy);
}

#[test]
fn standard_window_smaller_than_the_file() {
    reclaim(Dialect::Standard);
}

#[test]
fn legacy_window_smaller_than_the_file() {
    reclaim(Dialect::Legacy);
}

/// The window is offered after connect when the backend process can serve it in the device's
/// dialect, and withdrawn (`DaxFallback::Disable`) when it cannot: a standard-dialect device
/// against the backend in `--legacy` mode, which offers no SHMEM. The legacy dialect has no
/// feature bit, so the standard-mode backend passes its check too.
#[test]
fn window_decided_at_connect() {
    for (dialect, legacy_backend, offered) in [
        (Dialect::Standard, false, true),
        (Dialect::Legacy, true, true),
        (Dialect::Legacy, false, true),
        (Dialect::Standard, true, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::write(shared.join("hello"), b"hello").unwrap();
        let socket = dir.path().join("dax.sock");
        let _backend = start_dax_backend(&socket, &shared, legacy_backend);
        let mut fs = Fs::builder("dax")
            .socket_path(&socket)
            .window_size(WINDOW)
            .dialect(dialect)
            .dax_fallback(virtio_fs_dax::frontend::DaxFallback::Disable)
            .queue_size(128)
            .build()
            .unwrap();
        fs.connect().unwrap();
        let case = format!("{dialect:?} device, legacy backend {legacy_backend}");
        assert_eq!(fs.window_offered(), offered, "{case}");
        assert_eq!(fs.shm_regions().len(), usize::from(offered), "{case}");
        if offered {
            fs.set_shm_base(0, WIN_GPA).unwrap();
        }
        fs.ack_features(fs.features());
        let mut s = common::activate_with_guest(&mut fs).expect("activate");
        assert_eq!(fs.session().unwrap().negotiated().dax, offered, "{case}");
        // FUSE is served either way.
        s.init().expect("INIT");
        let (nodeid, _) = s.lookup(FUSE_ROOT_ID, "hello").expect("LOOKUP");
        let fh = s.open(nodeid, libc::O_RDONLY as u32).expect("OPEN");
        assert_eq!(s.read(nodeid, fh, 0, 4096).expect("READ"), b"hello");
        if !offered {
            // The guest saw no window: had it asked anyway, nothing could be mapped.
            let err = s
                .setupmapping(nodeid, fh, 0, 2 * MIB, false, 0)
                .expect_err("no window");
            assert!(err.errno().is_some_and(|e| e < 0), "{err}");
            assert_eq!(fs.metrics().live_mappings(), 0);
        }
        fs.reset();
    }
}

/// A driver reset (a guest reboot) and a new driver on the same backend process and
/// connection: the second driver's requests are served as the first's were, with mappings.
/// `same_eventfds`: the new driver comes through the same kick and call eventfds, as a VMM's
/// transport keeps them across resets (dax-backend offers no RESET_DEVICE: the device must stop
/// the rings itself, or the backend goes on with the old ones).
#[test]
fn a_new_driver_after_reset_is_served() {
    new_driver_after_reset(false);
}

#[test]
fn a_new_driver_on_the_same_eventfds_after_reset_is_served() {
    new_driver_after_reset(true);
}

fn new_driver_after_reset(same_eventfds: bool) {
    for legacy in [false, true] {
        let dialect = if legacy {
            Dialect::Legacy
        } else {
            Dialect::Standard
        };
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::write(shared.join("hello"), b"hello").unwrap();
        let socket = dir.path().join("dax.sock");
        let _backend = start_dax_backend(&socket, &shared, legacy);
        let (mut fs, mut s) = device(&socket, WINDOW, dialect);
        for round in 0..2 {
            if round > 0 {
                fs.reset();
                assert_eq!(fs.metrics().live_mappings(), 0, "{dialect:?}");
                fs.ack_features(fs.features());
                if same_eventfds {
                    s.restart().unwrap();
                    let mem = GuestMemoryAtomic::new(s.queue().memory().clone());
                    let irq = Arc::new(common::CountingInterrupt::default());
                    fs.activate(mem, irq, s.activate_queues().unwrap())
                        .expect("activate again");
                } else {
                    s = common::activate_with_guest(&mut fs).expect("activate again");
                }
            }
            s.init().expect("INIT");
            for _ in 0..3 {
                let (nodeid, _) = s.lookup(FUSE_ROOT_ID, "hello").expect("LOOKUP");
                let fh = s.open(nodeid, libc::O_RDONLY as u32).expect("OPEN");
                assert_eq!(s.read(nodeid, fh, 0, 4096).expect("READ"), b"hello");
                s.setupmapping(nodeid, fh, 0, 2 * MIB, false, 0)
                    .expect("SETUPMAPPING");
                s.removemapping(&[(0, 2 * MIB)]).expect("REMOVEMAPPING");
            }
        }
    }
}
