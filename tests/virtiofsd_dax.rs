// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtiofsd-dax (virtiofsd 1.14.0 with the patches of `peers/virtiofsd-dax`) as the device's
//! backend, driven by the simulated guest: FUSE_SETUPMAPPING reaches the daemon over the
//! vrings, the daemon sends SHMEM_MAP with the file on the backend channel, and the device maps
//! it into its window, spec-strict (no exact-range replace): the daemon unmaps a range itself
//! before mapping it again.
//!
//! The binary is found through `$VIRTIOFSD_DAX`, else `~/.local/virtio-fs-dax/bin/virtiofsd-dax`
//! (which `scripts/test.sh` builds). Without it these tests fail and say how to build it.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::{perms_at, start_virtiofsd_dax, virtiofsd_dax, MIB};
use vhost::vhost_user::message::{VhostUserProtocolFeatures as P, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use virtio_fs_dax::test_utils::guest::fuse::{
    FUSE_ASYNC_READ, FUSE_BIG_WRITES, FUSE_MAP_ALIGNMENT, FUSE_MAX_PAGES, FUSE_ROOT_ID,
};
use virtio_fs_dax::test_utils::{guest_read, guest_write, FuseSession};
use virtio_fs_dax::{Dialect, Fs};

const WIN_GPA: u64 = 1 << 34;
const WINDOW: u64 = 64 * MIB;

/// A shared directory with `name` holding `data`.
fn shared_with(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join(name), data).unwrap();
    shared
}

/// The device (standard dialect, spec-strict) with a `window`-byte window, connected to the
/// daemon on `socket` and activated by the simulated guest; the FUSE session initialised as a
/// DAX mount does (MAP_ALIGNMENT asked).
fn device(socket: &Path, window: u64) -> (Fs, FuseSession) {
    let (fs, mut s) = common::dax_device_with(socket, WIN_GPA, window, Dialect::Standard, false);
    let n = fs.session().unwrap().negotiated();
    assert!(n.dax, "DAX negotiated");
    assert!(n.backend_protocol.contains(P::SHMEM), "bit 22");
    let out = s
        .init_with_flags(FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_MAP_ALIGNMENT)
        .expect("INIT");
    assert!(
        u64::from(out.flags) & FUSE_MAP_ALIGNMENT != 0,
        "MAP_ALIGNMENT in the reply"
    );
    assert_eq!(out.map_alignment, 12, "page-aligned mappings");
    (fs, s)
}

fn errno(e: virtio_fs_dax::test_utils::GuestError) -> i32 {
    -e.errno().unwrap_or_else(|| panic!("not a FUSE error: {e}"))
}

#[test]
fn maps_reads_writes_upgrades_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..6 * MIB as usize).map(|i| (i / 4096) as u8).collect();
    let shared = shared_with(dir.path(), "data.bin", &data);
    let socket = dir.path().join("vfs.sock");
    let mut daemon = start_virtiofsd_dax(&socket, &shared, WINDOW, &[]);
    let (mut fs, mut s) = device(&socket, WINDOW);
    let window = fs.window().unwrap().clone();

    let (nodeid, _) = s.lookup(FUSE_ROOT_ID, "data.bin").expect("LOOKUP");
    let fh = s.open(nodeid, libc::O_RDWR as u32).expect("OPEN");
    // The Linux guest sends no file handle with SETUPMAPPING.
    let no_fh = u64::MAX;
    s.setupmapping(nodeid, no_fh, 0, 2 * MIB, false, 0)
        .expect("SETUPMAPPING 0");
    s.setupmapping(nodeid, no_fh, 4 * MIB, 2 * MIB, false, 2 * MIB)
        .expect("SETUPMAPPING 1");
    assert_eq!(window.live_mappings(), 2);
    assert_eq!(perms_at(&window, 0), "r--s");
    let mut buf = vec![0u8; 2 * MIB as usize];
    guest_read(&window, WIN_GPA, WIN_GPA, &mut buf).unwrap();
    assert!(
        buf == data[..2 * MIB as usize],
        "file bytes through the window"
    );
    guest_read(&window, WIN_GPA, WIN_GPA + 2 * MIB, &mut buf).unwrap();
    assert!(
        buf == data[4 * MIB as usize..],
        "second range, other file offset"
    );

    // The writable upgrade: the same range again. The device is spec-strict (a map over a
    // mapping is refused), so the daemon unmaps the range first.
    s.setupmapping(nodeid, no_fh, 0, 2 * MIB, true, 0)
        .expect("writable upgrade");
    assert_eq!(perms_at(&window, 0), "rw-s");
    assert_eq!(
        fs.metrics().unmaps(),
        1,
        "the daemon unmapped before mapping again"
    );
    guest_write(&window, WIN_GPA, WIN_GPA + 4096, b"stored by the guest").unwrap();
    let mut back = [0u8; 19];
    std::fs::File::open(shared.join("data.bin"))
        .unwrap()
        .read_exact_at(&mut back, 4096)
        .unwrap();
    assert_eq!(&back, b"stored by the guest", "a store lands in the file");

    // Refused by the daemon before the device sees them: a range past the window, a range not
    // page aligned, a range overlapping another mapping partially.
    for (foffset, len, moffset) in [(0, 2 * MIB, WINDOW), (0, 4096, 512), (0, 2 * MIB, MIB)] {
        let e = s
            .setupmapping(nodeid, no_fh, foffset, len, false, moffset)
            .expect_err("refused");
        assert_eq!(errno(e), libc::EINVAL, "{len:#x} at {moffset:#x}");
    }
    assert_eq!(
        fs.metrics().total_refusals(),
        0,
        "nothing bad reached the device"
    );
    assert_eq!(window.live_mappings(), 2);

    // REMOVEMAPPING: held ranges are unmapped, a range never mapped is no error.
    s.removemapping(&[(0, 2 * MIB), (8 * MIB, 2 * MIB)])
        .expect("REMOVEMAPPING");
    assert_eq!(perms_at(&window, 0), "---p");
    assert_eq!(window.live_mappings(), 1);
    s.setupmapping(nodeid, no_fh, 2 * MIB, 2 * MIB, false, 0)
        .expect("the range again, another part of the file");
    guest_read(&window, WIN_GPA, WIN_GPA, &mut buf[..4096]).unwrap();
    assert_eq!(buf[..4096], data[2 * MIB as usize..2 * MIB as usize + 4096]);

    // A FUSE_READ whose buffer is in the window (a guest read(2) into a DAX mapping): the
    // daemon cannot reach it and the standard dialect has no way to have the device copy it, so
    // the request fails with EFAULT, and the daemon serves the next one (stock virtiofsd exits).
    let e = s
        .read_into(
            nodeid,
            fh,
            0,
            4096,
            vm_memory::GuestAddress(WIN_GPA + 2 * MIB),
        )
        .expect_err("a buffer in the window");
    assert_eq!(errno(e), libc::EFAULT);
    assert_eq!(
        s.getattr(nodeid).expect("served after").size,
        data.len() as u64
    );
    // The same for a FUSE_WRITE from the window (a guest write(2) from a DAX mapping): EFAULT,
    // nothing written, the daemon goes on.
    let e = s
        .write_from(
            nodeid,
            fh,
            0,
            4096,
            vm_memory::GuestAddress(WIN_GPA + 2 * MIB),
        )
        .expect_err("a buffer in the window");
    assert_eq!(errno(e), libc::EFAULT);
    let mut first = [0u8; 8];
    std::fs::File::open(shared.join("data.bin"))
        .unwrap()
        .read_exact_at(&mut first, 0)
        .unwrap();
    assert_eq!(first, data[..8], "nothing written");
    assert!(daemon.is_running());
    s.release(nodeid, fh, 0).expect("RELEASE");

    // The daemon killed with ranges mapped: the device drops them; a restarted daemon serves a
    // new FUSE session, and its first mapping of a range the old one held is no overlap.
    daemon.kill9();
    common::wait_backend_lost(&mut fs, Duration::from_secs(10), "virtiofsd-dax killed");
    assert_eq!(window.live_mappings(), 0);
    let _daemon = start_virtiofsd_dax(&socket, &shared, WINDOW, &[]);
    fs.reconnect().expect("reconnect to the restarted daemon");
    s.init_with_flags(FUSE_ASYNC_READ | FUSE_MAP_ALIGNMENT)
        .expect("INIT after the restart");
    let (nodeid, _) = s.lookup(FUSE_ROOT_ID, "data.bin").expect("LOOKUP again");
    s.setupmapping(nodeid, no_fh, 4 * MIB, 2 * MIB, false, 0)
        .expect("SETUPMAPPING after the restart");
    guest_read(&window, WIN_GPA, WIN_GPA, &mut buf).unwrap();
    assert!(
        buf == data[4 * MIB as usize..],
        "file bytes after the restart"
    );
    assert_eq!(fs.metrics().total_refusals(), 0);
}

/// A window smaller than the file: the guest reads it all through two 2 MiB slots, evicting a
/// slot's range before mapping the next, as the Linux guest's range reclaim does.
#[test]
fn window_smaller_than_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..16 * MIB as usize)
        .map(|i| ((i / 4096) as u8) ^ (i as u8))
        .collect();
    let shared = shared_with(dir.path(), "big.bin", &data);
    let socket = dir.path().join("vfs.sock");
    let window_size = 4 * MIB;
    let _daemon = start_virtiofsd_dax(&socket, &shared, window_size, &[]);
    let (fs, mut s) = device(&socket, window_size);
    let window = fs.window().unwrap().clone();
    let (nodeid, _) = s.lookup(FUSE_ROOT_ID, "big.bin").expect("LOOKUP");
    let mut chunk = vec![0u8; 2 * MIB as usize];
    for (i, want) in data.chunks(2 * MIB as usize).enumerate() {
        let moffset = (i as u64 % 2) * 2 * MIB;
        if i >= 2 {
            s.removemapping(&[(moffset, 2 * MIB)]).expect("evict");
        }
        s.setupmapping(
            nodeid,
            u64::MAX,
            i as u64 * 2 * MIB,
            2 * MIB,
            false,
            moffset,
        )
        .expect("map the next range");
        guest_read(&window, WIN_GPA, WIN_GPA + moffset, &mut chunk).unwrap();
        assert!(chunk == want, "range {i}");
        assert!(window.live_mappings() <= 2);
    }
    let m = fs.metrics();
    assert_eq!((m.maps(), m.unmaps(), m.total_refusals()), (8, 6, 0));
}

/// `--readonly`: read-only mappings are served, writable ones refused with EROFS, and the file
/// is untouched.
#[test]
fn a_read_only_share_refuses_writable_mappings() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_with(dir.path(), "ro.bin", &vec![7u8; 2 * MIB as usize]);
    let socket = dir.path().join("vfs.sock");
    let _daemon = start_virtiofsd_dax(&socket, &shared, WINDOW, &["--readonly"]);
    let (fs, mut s) = device(&socket, WINDOW);
    let window = fs.window().unwrap().clone();
    let (nodeid, _) = s.lookup(FUSE_ROOT_ID, "ro.bin").expect("LOOKUP");
    let e = s
        .setupmapping(nodeid, u64::MAX, 0, 2 * MIB, true, 0)
        .expect_err("writable on a read-only share");
    assert_eq!(errno(e), libc::EROFS);
    assert_eq!(window.live_mappings(), 0);
    s.setupmapping(nodeid, u64::MAX, 0, 2 * MIB, false, 0)
        .expect("read-only");
    assert_eq!(perms_at(&window, 0), "r--s");
    let mut b = [0u8; 4];
    guest_read(&window, WIN_GPA, WIN_GPA + 8, &mut b).unwrap();
    assert_eq!(b, [7; 4]);
    // A directory has nothing to map.
    let e = s
        .setupmapping(FUSE_ROOT_ID, u64::MAX, 0, 2 * MIB, false, 2 * MIB)
        .expect_err("a directory");
    assert_eq!(errno(e), libc::ENODEV);
}

/// What a front-end asks before it gives the device a window: the SHMEM bit (22, not vhost
/// 0.16's 21) and the region's size in GET_SHMEM_CONFIG; and a clean exit when it leaves.
#[test]
fn offers_shmem_at_bit_22_and_reports_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_with(dir.path(), "f", b"f");
    let socket = dir.path().join("vfs.sock");
    let mut daemon = start_virtiofsd_dax(&socket, &shared, 256 * MIB, &[]);
    let mut fe = Frontend::connect(&socket, 2).unwrap();
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    assert!(features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0);
    fe.set_features(VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
        .unwrap();
    let offered = fe.get_protocol_features().unwrap();
    assert!(offered.contains(P::SHMEM), "{offered:?}");
    assert_eq!(P::SHMEM.bits(), 1 << 22);
    assert!(!offered.contains(P::GPA_ADDRESSES), "bit 21 is not offered");
    fe.set_protocol_features(P::SHMEM).unwrap();
    let config = fe.get_shmem_config().unwrap();
    assert_eq!(config.nregions, 1);
    assert_eq!(config.memory_sizes[0], 256 * MIB);

    // The front-end goes away: the daemon ends on its own, not killed by its own seccomp
    // filter (vhost-user-backend 0.24 shuts the connection down on the way out).
    drop(fe);
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

/// With `check_shmem_config`, the device asks the daemon for its window (`GET_SHMEM_CONFIG`,
/// which virtiofsd-dax answers with `--dax-window-size`): the same size serves, another is
/// refused at activation before the daemon can map anything.
#[test]
fn the_device_checks_the_daemons_window_size() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared_with(dir.path(), "f", &vec![7u8; 2 * MIB as usize]);
    for (daemon_window, ok) in [(WINDOW, true), (2 * WINDOW, false), (WINDOW / 2, false)] {
        let socket = dir.path().join("vfs.sock");
        let _ = std::fs::remove_file(&socket);
        let _daemon = start_virtiofsd_dax(&socket, &shared, daemon_window, &[]);
        let mut fs = Fs::builder("dax")
            .socket_path(&socket)
            .window_size(WINDOW)
            .queue_size(128)
            .check_shmem_config(true)
            .build()
            .unwrap();
        fs.set_shm_base(0, WIN_GPA).unwrap();
        fs.ack_features(fs.features());
        match common::activate_with_guest(&mut fs) {
            Ok(mut s) => {
                assert!(
                    ok,
                    "activated against a {daemon_window:#x}-byte daemon window"
                );
                assert!(fs.session().unwrap().negotiated().dax);
                s.init_with_flags(FUSE_MAP_ALIGNMENT).expect("INIT");
                let (nodeid, _) = s.lookup(FUSE_ROOT_ID, "f").expect("LOOKUP");
                s.setupmapping(nodeid, u64::MAX, 0, 2 * MIB, false, 0)
                    .expect("SETUPMAPPING");
                assert_eq!(fs.window().unwrap().live_mappings(), 1);
            }
            Err(virtio_fs_dax::device::Error::Session(
                virtio_fs_dax::frontend::Error::ShmemSizeMismatch { backend, window },
            )) => {
                assert!(!ok, "refused the daemon's matching window");
                assert_eq!((backend, window), (daemon_window, WINDOW));
            }
            Err(e) => panic!("{daemon_window:#x}: {e:?}"),
        }
    }
}

/// A window size that is zero or not page aligned: the daemon refuses to start, and says why.
#[test]
fn a_bad_window_size_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vfs.sock");
    for size in ["0", "4097", "1X"] {
        let out = std::process::Command::new(virtiofsd_dax())
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(dir.path())
            .args(["--sandbox", "none", "--dax-window-size", size])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{size}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("DAX window size") || err.contains("dax-window-size"),
            "{size}: {err}"
        );
    }
}
