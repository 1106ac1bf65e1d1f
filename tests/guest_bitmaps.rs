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
