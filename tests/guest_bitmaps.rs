// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The VMM's own guest memory type, whatever dirty bitmap it tracks: cloud-hypervisor's
//! `GuestMemoryMmap<AtomicBitmap>`, Firecracker's `GuestMemoryMmap<Option<AtomicBitmap>>`.
//! The device activates with it against the in-process backend, and FS_IO stores into guest RAM
//! show in the bitmap.

mod common;

use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::VhostUserFrontendReqHandler;

use vm_memory::bitmap::{AtomicBitmap, Bitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend,
    GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use common::*;
use virtio_fs_dax::protocol::{legacy, FsBackendMsg, FS_FLAG_MAP_R, FS_FLAG_MAP_W};
use virtio_fs_dax::test_utils::{TestBackendConfig, TestBackendServer};
use virtio_fs_dax::{Dialect, Fs, IoSpace};

const RAM: usize = 32 << 20;

fn atomic_bitmap() -> AtomicBitmap {
    AtomicBitmap::new(RAM, NonZeroUsize::new(PAGE as usize).unwrap())
}

/// File-backed guest RAM at 0 with `bitmap`, built the way Firecracker builds its regions.
fn ram_with<B: Bitmap>(bitmap: B) -> GuestMemoryMmap<B> {
    let (file, _) = memfd(0, |_| 0);
    file.set_len(RAM as u64).unwrap();
    let region = MmapRegionBuilder::new_with_bitmap(RAM, bitmap)
        .with_file_offset(FileOffset::new(file, 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
        .build()
        .unwrap();
    GuestMemoryMmap::from_regions(vec![GuestRegionMmap::new(region, GuestAddress(0)).unwrap()])
        .unwrap()
}

fn activate_with<B: Bitmap + Send + Sync + 'static>(mem: GuestMemoryMmap<B>) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    let server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
    let mut fs = Fs::builder("bitmaps")
        .socket_path(&socket)
        .window_size(8 * MIB)
        .queue_size(128)
        .build()
        .unwrap();
    fs.connect().unwrap();
    fs.ack_features(fs.features());
    fs.set_shm_base(0, 1 << 34).unwrap();
    let irq = Arc::new(CountingInterrupt::default());
    fs.activate(GuestMemoryAtomic::new(mem), irq, activate_queues(2, 128))
        .unwrap();
    assert!(fs.session().unwrap().negotiated().dax);
    let s = server.state();
    assert_eq!(s.mem_table.len(), 1);
    assert_eq!(s.mem_table[0].memory_size, RAM as u64);
    assert!(s.mem_table[0].has_fd);
    assert!(server.wait_for(|s| s.backend_channel, Duration::from_secs(5)));
    // A map through the session lands in the window.
    let (file, _) = memfd(2 * MIB, |_| 0x5a);
    let backend = server.backend_channel().unwrap();
    backend.shmem_map(&shmem_range(0, 2 * MIB), &file).unwrap();
    assert_eq!(read_window(fs.window().unwrap(), 0, 2), vec![0x5a; 2]);
    // Reconnect reads the used rings through the same memory.
    fs.reconnect().unwrap();
    assert_eq!(fs.metrics().live_mappings(), 0);
    fs.reset();
}

#[test]
fn activates_with_cloud_hypervisor_memory() {
    let _g = serial();
    activate_with(ram_with(atomic_bitmap()));
}

#[test]
fn activates_with_firecracker_memory() {
    let _g = serial();
    activate_with(ram_with(Some(atomic_bitmap())));
    activate_with(ram_with(None::<AtomicBitmap>));
}

fn fs_io(gpa: u64, len: u64, flags: u64) -> Vec<u8> {
    let mut m = FsBackendMsg::default();
    m.cache_offset[0] = gpa;
    m.len[0] = len;
    m.flags[0] = flags;
    vm_memory::ByteValued::as_slice(&m).to_vec()
}

/// FS_IO that reads a file into guest RAM marks exactly the pages it wrote; FS_IO that writes
/// the file from guest RAM marks nothing.
fn fs_io_marks_dirty<B: Bitmap + Send + Sync + 'static>(
    mem: GuestMemoryMmap<B>,
    dirty: impl Fn(&GuestMemoryMmap<B>, u64) -> bool,
) {
    let ram = GuestMemoryAtomic::new(mem);
    let io = Arc::new(IoSpace::with_guest_memory(ram.clone()));
    let h = Harness::with(Dialect::Legacy, 8 * MIB, false, io);
    let (file, _) = memfd(4 * PAGE, |p| 0x30 + p as u8);
    let fd = file.as_raw_fd();
    let m = ram.memory();
    // Out of a file into guest RAM: two pages and a bit, from 0x10_0800.
    let (gpa, len) = (0x10_0800, 2 * PAGE + 16);
    assert_eq!(
        h.peer
            .call(legacy::FS_IO, &fs_io(gpa, len, FS_FLAG_MAP_R), &[fd]),
        len as i64
    );
    assert_eq!(m.read_obj::<u8>(GuestAddress(gpa)).unwrap(), 0x30);
    for page in [0x10_0000, 0x10_1000, 0x10_2000] {
        assert!(dirty(&m, page), "page {page:#x} written by FS_IO is dirty");
    }
    for page in [0x0f_f000, 0x10_3000] {
        assert!(!dirty(&m, page), "page {page:#x} untouched is clean");
    }
    // Out of guest RAM into the file: guest memory is only read.
    assert_eq!(
        h.peer
            .call(legacy::FS_IO, &fs_io(0x20_0000, PAGE, FS_FLAG_MAP_W), &[fd]),
        PAGE as i64
    );
    assert!(!dirty(&m, 0x20_0000));
    h.stop();
}

#[test]
fn fs_io_dirties_an_atomic_bitmap() {
    let _g = serial();
    fs_io_marks_dirty(ram_with(atomic_bitmap()), |m, gpa| {
        let r = m.find_region(GuestAddress(gpa)).unwrap();
        r.bitmap().dirty_at((gpa - r.start_addr().0) as usize)
    });
}

#[test]
fn fs_io_dirties_an_optional_atomic_bitmap() {
    let _g = serial();
    fs_io_marks_dirty(ram_with(Some(atomic_bitmap())), |m, gpa| {
        let r = m.find_region(GuestAddress(gpa)).unwrap();
        r.bitmap().dirty_at((gpa - r.start_addr().0) as usize)
    });
}

/// File-backed guest RAM with an atomic bitmap, and its file, which the test may cut short.
fn ram_and_file() -> (GuestMemoryMmap<AtomicBitmap>, std::fs::File) {
    let (file, _) = memfd(0, |_| 0);
    file.set_len(RAM as u64).unwrap();
    let region = MmapRegionBuilder::new_with_bitmap(RAM, atomic_bitmap())
        .with_file_offset(FileOffset::new(file.try_clone().unwrap(), 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
        .build()
        .unwrap();
    let mem =
        GuestMemoryMmap::from_regions(vec![GuestRegionMmap::new(region, GuestAddress(0)).unwrap()])
            .unwrap();
    (mem, file)
}

fn dirty_at(m: &GuestMemoryMmap<AtomicBitmap>, gpa: u64) -> bool {
    let r = m.find_region(GuestAddress(gpa)).unwrap();
    r.bitmap().dirty_at((gpa - r.start_addr().0) as usize)
}

/// An FS_IO that fails part way marks dirty what it stored before the failure, both where the
/// file is read straight into guest RAM (a memfd: the destination faults part way) and where
/// it goes through the bounce buffer (`/proc/self/mem`: the source fails part way).
#[test]
fn partial_fs_io_marks_what_it_stored() {
    let _g = serial();
    let (mem, ram_file) = ram_and_file();
    let ram = GuestMemoryAtomic::new(mem);
    let io = Arc::new(IoSpace::with_guest_memory(ram.clone()));
    let h = Harness::with(Dialect::Legacy, 8 * MIB, false, io);
    let m = ram.memory();

    // Straight into guest RAM: the RAM's file ends two pages into the range, so the read
    // stores two pages and then faults (EFAULT).
    let cut = 16 * MIB;
    ram_file.set_len(cut).unwrap();
    let (src, _) = memfd(4 * PAGE, |_| 0x42);
    let gpa = cut - 2 * PAGE;
    assert_eq!(
        h.peer.call(
            legacy::FS_IO,
            &fs_io(gpa, 4 * PAGE, FS_FLAG_MAP_R),
            &[src.as_raw_fd()]
        ),
        -i64::from(libc::EFAULT)
    );
    for page in [gpa, gpa + PAGE] {
        assert_eq!(m.read_obj::<u8>(GuestAddress(page)).unwrap(), 0x42);
        assert!(
            dirty_at(&m, page),
            "page {page:#x} stored before the fault is dirty"
        );
    }
    assert!(!dirty_at(&m, gpa - PAGE));

    // Through the bounce buffer: a source whose read fails after a chunk and a page. The
    // source is a mapping of a file cut short, read through /proc/self/mem.
    let chunk = virtio_fs_dax::io::IO_CHUNK as u64;
    let (backing, _) = memfd(chunk + 2 * PAGE, |_| 0x24);
    let source = MmapRegionBuilder::<()>::new((chunk + 2 * PAGE) as usize)
        .with_file_offset(FileOffset::new(backing.try_clone().unwrap(), 0))
        .with_mmap_prot(libc::PROT_READ)
        .with_mmap_flags(libc::MAP_SHARED)
        .build()
        .unwrap();
    backing.set_len(chunk + PAGE).unwrap();
    let proc_mem = std::fs::File::open("/proc/self/mem").unwrap();
    let msg = FsBackendMsg {
        fd_offset: [source.as_ptr() as u64, 0, 0, 0, 0, 0, 0, 0],
        cache_offset: [0x40_0000, 0, 0, 0, 0, 0, 0, 0],
        len: [chunk + 2 * PAGE, 0, 0, 0, 0, 0, 0, 0],
        flags: [FS_FLAG_MAP_R, 0, 0, 0, 0, 0, 0, 0],
    };
    let reply = h.peer.call(
        legacy::FS_IO,
        vm_memory::ByteValued::as_slice(&msg),
        &[proc_mem.as_raw_fd()],
    );
    assert!(reply < 0, "the read failed part way: {reply}");
    let mut stored = 0;
    for page in (0x40_0000..0x40_0000 + chunk + 2 * PAGE).step_by(PAGE as usize) {
        if m.read_obj::<u8>(GuestAddress(page)).unwrap() == 0x24 {
            stored += 1;
            assert!(dirty_at(&m, page), "page {page:#x} stored is dirty");
        }
    }
    assert!(stored > 0, "a part was stored before the failure");
    h.stop();
}
