// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Legacy virtio-fs dialect (FS_MAP / FS_UNMAP / FS_SYNC / FS_IO) with vhost 0.11 as the peer.
//!
//! vhost 0.11's `Backend` is the last release that sends FS_MAP and FS_UNMAP
//! (`fs_backend_map`, `fs_backend_unmap`). It never sent FS_SYNC or FS_IO: in that release
//! `fs_backend_sync` and `fs_backend_io` exist only as default trait methods answering ENOSYS, and
//! its socket endpoint and header type are private. Those two are sent here with vhost 0.11's
//! request codes and payload struct (`BackendReq`, `VhostUserFSBackendMsg`) behind a header
//! written by hand, and the reply is read as vhost 0.11's `VhostUserU64`.

mod common;

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;

use vhost_legacy::vhost_user::message::{
    BackendReq, VhostUserFSBackendMsg, VhostUserFSBackendMsgFlags, VhostUserU64,
};
use vhost_legacy::vhost_user::{Backend, VhostUserFrontendReqHandler};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vm_memory_legacy::ByteValued as LegacyByteValued;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use common::*;
use virtio_fs_dax::protocol::Access;
use virtio_fs_dax::window::Policy;
use virtio_fs_dax::{BackendChannel, DaxWindow, Dialect, IoSpace};

const R: VhostUserFSBackendMsgFlags = VhostUserFSBackendMsgFlags::MAP_R;
const W: VhostUserFSBackendMsgFlags = VhostUserFSBackendMsgFlags::MAP_W;

struct Legacy {
    window: Arc<DaxWindow>,
    backend: Backend,
    raw: UnixStream,
    server: thread::JoinHandle<usize>,
}

fn setup(size: u64, io: Arc<IoSpace>) -> Legacy {
    let window = Arc::new(DaxWindow::new(size).unwrap());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut channel = BackendChannel::builder(ours)
        .window(window.clone())
        .dialect(Dialect::Legacy)
        .io_space(io)
        .build();
    assert_eq!(channel.policy(), Policy::LEGACY);
    let server = thread::spawn(move || {
        let mut served = 0;
        while let Ok(out) = channel.handle_one_timeout(std::time::Duration::from_secs(3600)) {
            served += usize::from(out.is_some());
        }
        served
    });
    let raw = theirs.try_clone().unwrap();
    let backend = Backend::from_stream(theirs);
    backend.set_reply_ack_flag(true);
    Legacy {
        window,
        backend,
        raw,
        server,
    }
}

impl Legacy {
    /// Sends FS_SYNC or FS_IO the way vhost 0.11 frames any backend request, and returns the
    /// reply value as the signed number the backend sees.
    fn send(&self, code: BackendReq, body: &VhostUserFSBackendMsg, fd: Option<&File>) -> i64 {
        let code = code as u32;
        let flags = 0x1 | 0x8; // version 1, NEED_REPLY
        let mut bytes = RawPeer::header(code, flags, std::mem::size_of_val(body) as u32);
        bytes.extend_from_slice(body.as_slice());
        let fds: Vec<_> = fd.iter().map(|f| f.as_raw_fd()).collect();
        self.raw.send_with_fds(&[&bytes[..]], &fds).unwrap();
        let mut reply = [0u8; 20];
        (&self.raw).read_exact(&mut reply).unwrap();
        assert_eq!(reply[..4], code.to_le_bytes(), "reply echoes the request");
        assert_eq!(reply[4..8], 0x5u32.to_le_bytes(), "version 1 and REPLY");
        assert_eq!(reply[8..12], 8u32.to_le_bytes());
        let mut value = VhostUserU64::default();
        value.as_mut_slice().copy_from_slice(&reply[12..]);
        value.value as i64
    }

    fn finish(self, served: usize) {
        drop(self.backend);
        drop(self.raw);
        assert_eq!(self.server.join().unwrap(), served);
    }
}

#[test]
fn multi_entry_map_then_unmap_all() {
    let _g = serial();
    let l = setup(16 * MIB, Arc::new(IoSpace::new()));
    let (file, _) = memfd(8 * MIB, |p| (p / 512) as u8 + 1);
    // Three entries of one message, one of them writable; an empty entry in between is skipped.
    let m = fs_msg(&[
        (0, 0, 2 * MIB, R),
        (4 * MIB, 2 * MIB, 2 * MIB, R | W),
        (0, 0, 0, R),
        (10 * MIB, 6 * MIB, MIB, R),
    ]);
    l.backend.fs_backend_map(&m, &file).unwrap();
    let w = &l.window;
    assert_eq!(perms_at(w, 0), "r--s");
    assert_eq!(perms_at(w, 4 * MIB), "rw-s");
    assert_eq!(perms_at(w, 10 * MIB), "r--s");
    assert_eq!(perms_at(w, 2 * MIB), "---p");
    assert_eq!(read_window(w, 0, 4), vec![1; 4]);
    assert_eq!(read_window(w, 4 * MIB, 4), vec![2; 4]);
    assert_eq!(read_window(w, 10 * MIB, 4), vec![4; 4]);
    write_window(w, 4 * MIB + 8, b"legacy");
    let mut buf = [0u8; 6];
    file.read_exact_at(&mut buf, 2 * MIB + 8).unwrap();
    assert_eq!(&buf, b"legacy");
    assert_eq!(w.metrics().maps(), 3);
    assert_eq!(w.live_mappings(), 3);
    assert_window_sound(w);

    // Overlapping map replaces (legacy policy): remap the middle of the first range.
    l.backend
        .fs_backend_map(&fs_msg(&[(MIB, 6 * MIB, MIB, R)]), &file)
        .unwrap();
    assert_eq!(read_window(w, MIB, 4), vec![4; 4]);
    assert_eq!(read_window(w, 0, 4), vec![1; 4]);
    assert_eq!(w.live_mappings(), 4);

    // Unmap of any range: half of a mapping, and a range that was never mapped.
    l.backend
        .fs_backend_unmap(&fs_msg(&[(5 * MIB, 0, MIB, R), (12 * MIB, 0, MIB, R)]))
        .unwrap();
    assert_eq!(perms_at(w, 5 * MIB), "---p");
    assert_eq!(perms_at(w, 4 * MIB), "rw-s");

    // Unmap-all: len u64::MAX, whatever the offset says.
    l.backend
        .fs_backend_unmap(&fs_msg(&[(8 * MIB, 0, u64::MAX, R)]))
        .unwrap();
    assert_eq!(w.live_mappings(), 0);
    assert_eq!(w.metrics().mapped_bytes(), 0);
    assert_eq!(
        maps_in(w.host_addr(), w.size()).len(),
        1,
        "one PROT_NONE range"
    );
    assert_window_sound(w);
    l.finish(4);
}

#[test]
fn failed_entry_rolls_back_the_entries_before_it() {
    let _g = serial();
    let l = setup(16 * MIB, Arc::new(IoSpace::new()));
    let (file, name) = memfd(8 * MIB, |_| 9);
    // A read-only descriptor of the same file: the writable third entry fails in mmap (EACCES)
    // after the first two were mapped.
    let ro = File::open(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
    let m = fs_msg(&[
        (0, 0, 2 * MIB, R),
        (2 * MIB, 2 * MIB, 2 * MIB, R),
        (4 * MIB, 4 * MIB, 2 * MIB, R | W),
    ]);
    assert!(l.backend.fs_backend_map(&m, &ro).is_err());
    let w = &l.window;
    assert_eq!(w.live_mappings(), 0);
    for off in [0, 2 * MIB, 4 * MIB] {
        assert_eq!(perms_at(w, off), "---p", "offset {off:#x} rolled back");
    }
    assert!(maps().iter().all(|m| !m.path.contains(&name)));
    assert_window_sound(w);
    assert_eq!(w.metrics().refusals(virtio_fs_dax::Refusal::Syscall), 1);

    // A bad entry caught by validation maps nothing at all.
    let m = fs_msg(&[(0, 0, 2 * MIB, R), (2 * MIB + 1, 0, 2 * MIB, R)]);
    assert!(l.backend.fs_backend_map(&m, &file).is_err());
    assert_eq!(w.live_mappings(), 0);
    assert_eq!(perms_at(w, 0), "---p");

    // And the channel goes on.
    l.backend
        .fs_backend_map(&fs_msg(&[(0, 0, 2 * MIB, R)]), &ro)
        .unwrap();
    assert_eq!(perms_at(w, 0), "r--s");
    l.finish(3);
}

#[test]
fn sync_flushes_mapped_ranges() {
    let _g = serial();
    let l = setup(8 * MIB, Arc::new(IoSpace::new()));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(2 * MIB).unwrap();
    l.backend
        .fs_backend_map(&fs_msg(&[(0, 0, 2 * MIB, R | W)]), &file)
        .unwrap();
    write_window(&l.window, 4096, b"synced");
    let sync = fs_msg(&[(0, 0, 2 * MIB, R), (4 * MIB, 0, MIB, R)]);
    assert_eq!(l.send(BackendReq::FS_SYNC, &sync, None), 0);
    assert_eq!(l.window.metrics().syncs(), 2);
    let mut buf = [0u8; 6];
    File::open(&path)
        .unwrap()
        .read_exact_at(&mut buf, 4096)
        .unwrap();
    assert_eq!(&buf, b"synced");
    // A range past the window is refused.
    let bad = fs_msg(&[(8 * MIB, 0, MIB, R)]);
    assert_eq!(
        l.send(BackendReq::FS_SYNC, &bad, None),
        -(libc::ERANGE as i64)
    );
    l.finish(3);
}

#[test]
fn io_into_guest_ram_and_into_windows() {
    let _g = serial();
    const RAM: u64 = 64 * MIB;
    const WIN_GPA: u64 = 1 << 32;
    const OTHER_GPA: u64 = 1 << 33;
    let ram =
        Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap());
    // The VMM opted in to IO across its devices' windows.
    let io = Arc::new(IoSpace::with_guest_memory(ram.clone()).cross_device(true));
    let l = setup(8 * MIB, io.clone());
    io.add_window(WIN_GPA, l.window.clone()).unwrap();
    // Another device's window on the same address space, mapped by its own channel.
    let other = Arc::new(DaxWindow::new(4 * MIB).unwrap());
    io.add_window(OTHER_GPA, other.clone()).unwrap();
    assert!(
        io.add_window(OTHER_GPA + MIB, other.clone()).is_err(),
        "overlap refused"
    );

    let (src, _) = memfd(3 * PAGE + 100, |p| 0xa0 + p as u8);

    // Read the file into guest RAM: two entries, the second stops at end of file.
    let m = fs_msg(&[(0x10000, 0, 2 * PAGE, R), (0x40000, 2 * PAGE, 2 * PAGE, R)]);
    assert_eq!(
        l.send(BackendReq::FS_IO, &m, Some(&src)),
        (2 * PAGE + PAGE + 100) as i64,
        "bytes done, short at EOF"
    );
    let mut got = vec![0u8; 2 * PAGE as usize];
    ram.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
    assert_eq!(&got[..PAGE as usize], &[0xa0; PAGE as usize][..]);
    assert_eq!(&got[PAGE as usize..], &[0xa1; PAGE as usize][..]);
    let mut got = [0u8; 101];
    ram.read_slice(&mut got, GuestAddress(0x40000 + PAGE))
        .unwrap();
    assert_eq!(&got[..100], &[0xa3; 100][..]);
    assert_eq!(got[100], 0, "nothing past EOF");

    // Write guest RAM to the file (MAP_W).
    ram.write_slice(b"from guest ram", GuestAddress(0x20000))
        .unwrap();
    let m = fs_msg(&[(0x20000, 5, 14, W)]);
    assert_eq!(l.send(BackendReq::FS_IO, &m, Some(&src)), 14);
    let mut buf = [0u8; 14];
    src.read_exact_at(&mut buf, 5).unwrap();
    assert_eq!(&buf, b"from guest ram");

    // IO into this device's window: only where a writable mapping lies.
    let (dst, _) = memfd(2 * MIB, |_| 0);
    l.backend
        .fs_backend_map(&fs_msg(&[(2 * MIB, 0, 2 * MIB, R | W)]), &dst)
        .unwrap();
    let m = fs_msg(&[(WIN_GPA + 2 * MIB + 16, 0, PAGE, R)]);
    assert_eq!(l.send(BackendReq::FS_IO, &m, Some(&src)), PAGE as i64);
    let mut buf = [0u8; 4];
    dst.read_exact_at(&mut buf, 16).unwrap();
    assert_eq!(
        buf, [0xa0; 4],
        "file bytes landed in the mapped file through the window"
    );
    // Unmapped part of the window, and a range running past the mapped one: EFAULT.
    let m = fs_msg(&[(WIN_GPA, 0, PAGE, R)]);
    assert_eq!(
        l.send(BackendReq::FS_IO, &m, Some(&src)),
        -(libc::EFAULT as i64)
    );
    let m = fs_msg(&[(WIN_GPA + 4 * MIB - PAGE, 0, 2 * PAGE, R)]);
    assert_eq!(
        l.send(BackendReq::FS_IO, &m, Some(&src)),
        -(libc::EFAULT as i64)
    );

    // IO into the other device's window, mapped read-only there: reading the file into it is
    // refused, writing the file from it works.
    let (ro_src, _) = memfd(2 * MIB, |_| 0x77);
    other
        .map(
            &[virtio_fs_dax::protocol::MapEntry {
                offset: 0,
                fd_offset: 0,
                len: 2 * MIB,
                access: Access::ReadOnly,
            }],
            &ro_src,
            Policy::STANDARD,
        )
        .unwrap();
    let m = fs_msg(&[(OTHER_GPA, 0, PAGE, R)]);
    assert_eq!(
        l.send(BackendReq::FS_IO, &m, Some(&src)),
        -(libc::EFAULT as i64)
    );
    let m = fs_msg(&[(OTHER_GPA + 8, 0, 32, W)]);
    assert_eq!(l.send(BackendReq::FS_IO, &m, Some(&src)), 32);
    let mut buf = [0u8; 32];
    src.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [0x77; 32], "bytes came from the other device's window");

    // Outside guest RAM and every window: EFAULT; an entry that fails validation means no
    // entry moved a byte.
    ram.write_slice(&[0u8; 8], GuestAddress(0x30000)).unwrap();
    let m = fs_msg(&[(0x30000, 0, 8, R), (RAM - 8, 0, 16, R)]);
    assert_eq!(
        l.send(BackendReq::FS_IO, &m, Some(&src)),
        -(libc::EFAULT as i64)
    );
    let mut got = [1u8; 8];
    ram.read_slice(&mut got, GuestAddress(0x30000)).unwrap();
    assert_eq!(got, [0; 8]);

    let metrics = l.window.metrics();
    assert_eq!(metrics.ios(), 5);
    assert_eq!(metrics.io_bytes(), 2 * PAGE + PAGE + 100 + 14 + PAGE + 32);
    assert_eq!(metrics.refusals(virtio_fs_dax::Refusal::BadAddress), 4);
    assert!(io.remove_window(OTHER_GPA).is_some());
    l.finish(9);
}

#[test]
fn io_into_another_devices_window_needs_the_opt_in() {
    let _g = serial();
    const RAM: u64 = 16 * MIB;
    const WIN_GPA: u64 = 1 << 32;
    const OTHER_GPA: u64 = 1 << 33;
    let ram =
        Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap());
    // One space for both devices, no opt-in.
    let io = Arc::new(IoSpace::with_guest_memory(ram.clone()));
    assert!(!io.allows_cross_device());
    let l = setup(8 * MIB, io.clone());
    io.add_window(WIN_GPA, l.window.clone()).unwrap();
    let other = Arc::new(DaxWindow::new(4 * MIB).unwrap());
    io.add_window(OTHER_GPA, other.clone()).unwrap();

    // The other device's window is mapped writable: only the opt-in stands in the way.
    let (theirs, _) = memfd(2 * MIB, |_| 0x77);
    other
        .map(
            &[virtio_fs_dax::protocol::MapEntry {
                access: Access::ReadWrite,
                ..entry(0, 2 * MIB)
            }],
            &theirs,
            Policy::STANDARD,
        )
        .unwrap();
    let (src, _) = memfd(2 * PAGE, |_| 0x5a);
    for flags in [R, W] {
        let m = fs_msg(&[(OTHER_GPA, 0, PAGE, flags)]);
        assert_eq!(
            l.send(BackendReq::FS_IO, &m, Some(&src)),
            -(libc::EFAULT as i64),
            "{flags:?}: another device's window is out of reach"
        );
    }
    let mut buf = [0u8; 8];
    theirs.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [0x77; 8], "nothing reached the other device's file");
    src.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [0x5a; 8], "nothing came from it either");

    // Its own window and guest RAM stay in reach.
    let (dst, _) = memfd(2 * MIB, |_| 0);
    l.backend
        .fs_backend_map(&fs_msg(&[(0, 0, 2 * MIB, R | W)]), &dst)
        .unwrap();
    let m = fs_msg(&[(WIN_GPA, 0, PAGE, R), (0x1000, 0, PAGE, R)]);
    assert_eq!(l.send(BackendReq::FS_IO, &m, Some(&src)), 2 * PAGE as i64);
    dst.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [0x5a; 8]);
    ram.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
    assert_eq!(buf, [0x5a; 8]);
    assert_eq!(
        l.window
            .metrics()
            .refusals(virtio_fs_dax::Refusal::BadAddress),
        2
    );
    l.finish(4);
}
