// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A window the VMM reserved and handed in (cloud-hypervisor's device manager reserves the
//! virtio-fs cache itself): checked, taken over, mapped into, cleared, and given back, with real
//! mmaps seen in /proc/self/maps.

mod common;

use std::sync::Arc;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{FileOffset, MmapRegion};

use common::*;
use virtio_fs_dax::memory::WindowRegion;
use virtio_fs_dax::protocol::Range;
use virtio_fs_dax::test_utils::FakeMemoryManager;
use virtio_fs_dax::window::{self, RegionRefusal};
use virtio_fs_dax::{DaxWindow, Fs, Policy};

/// What cloud-hypervisor's device manager does for the cache: an anonymous PROT_NONE region.
fn vmm_region(size: u64, flags: i32) -> Arc<MmapRegion<AtomicBitmap>> {
    Arc::new(
        MmapRegion::build(
            None,
            size as usize,
            libc::PROT_NONE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | flags,
        )
        .unwrap(),
    )
}

#[test]
fn a_vmm_region_becomes_the_window() {
    let _g = serial();
    // Without MAP_NORESERVE, as cloud-hypervisor makes it: the window re-makes it its way.
    let region = vmm_region(8 * MIB, 0);
    let addr = region.as_ptr() as u64;
    let window = Arc::new(DaxWindow::from_reservation(region.clone()).unwrap());
    assert!(window.is_handed_in());
    assert_eq!((window.host_addr(), window.size()), (addr, 8 * MIB));
    assert_eq!(perms_at(&window, 0), "---p");
    assert_window_sound(&window);

    // A map lands inside the VMM's region; the bytes read through the region's address.
    let (file, _) = memfd(2 * MIB, |p| (p % 200) as u8 + 1);
    window
        .map(&[entry(2 * MIB, 2 * MIB)], &file, Policy::STANDARD)
        .unwrap();
    assert_eq!(perms_at(&window, 2 * MIB), "r--s");
    assert_eq!(read_window(&window, 2 * MIB + PAGE, 1), vec![2]);
    assert_window_sound(&window);
    assert_table_matches_kernel(&window);

    // Unmap puts PROT_NONE back: no hole in the VMM's range.
    window
        .unmap(
            &[Range {
                offset: 2 * MIB,
                len: 2 * MIB,
            }],
            Policy::STANDARD,
        )
        .unwrap();
    assert_eq!(perms_at(&window, 2 * MIB), "---p");
    assert_window_sound(&window);

    // Dropping the window with a live mapping: the range goes back to PROT_NONE, and stays
    // mapped while the VMM holds its region ...
    window
        .map(&[entry(0, 2 * MIB)], &file, Policy::STANDARD)
        .unwrap();
    drop(window);
    let lines = maps_in(addr, 8 * MIB);
    assert_eq!(
        lines.first().map(|l| (l.start, l.perms.as_str())),
        Some((addr, "---p"))
    );
    assert_eq!(lines.last().map(|l| l.end), Some(addr + 8 * MIB));
    assert!(lines.iter().all(|l| l.perms == "---p"), "{lines:#x?}");
    // ... and is unmapped with the region's last reference.
    drop(region);
    assert!(
        maps_in(addr, 8 * MIB)
            .iter()
            .all(|l| l.perms != "---p" || l.start != addr),
        "the region is gone"
    );
}

#[test]
fn unfit_regions_are_refused_untouched() {
    let _g = serial();
    let refused = |r: Result<DaxWindow, window::Error>| match r {
        Err(window::Error::Region { reason, .. }) => reason,
        other => panic!("expected a refusal: {other:?}"),
    };
    // Not a power of two, too small.
    for size in [3 * MIB, MIB] {
        let e = DaxWindow::from_reservation(vmm_region(size, 0)).unwrap_err();
        assert!(matches!(e, window::Error::InvalidSize { .. }), "{e:?}");
    }
    // Another size than the builder's.
    let reason = refused(
        DaxWindow::builder(4 * MIB)
            .reservation(vmm_region(8 * MIB, 0))
            .build(),
    );
    assert_eq!(reason, RegionRefusal::SizeDiffers { expected: 4 * MIB });
    // Accessible memory: someone may be reading it; the window would pull it away.
    let rw: MmapRegion<()> = MmapRegion::new(4 << 20).unwrap();
    let addr = rw.as_ptr() as u64;
    let reason = refused(DaxWindow::from_reservation(rw));
    assert_eq!(
        reason,
        RegionRefusal::Accessible {
            prot: libc::PROT_READ | libc::PROT_WRITE
        }
    );
    // File backed.
    let (file, _) = memfd(4 * MIB, |_| 0);
    let mapped = MmapRegion::<()>::build(
        Some(FileOffset::new(file, 0)),
        4 << 20,
        libc::PROT_NONE,
        libc::MAP_SHARED,
    )
    .unwrap();
    assert_eq!(
        refused(DaxWindow::from_reservation(mapped)),
        RegionRefusal::FileBacked
    );
    // The refused accessible region was left as it was (and is gone with its region).
    assert!(maps_in(addr, 4 * MIB).iter().all(|l| l.perms != "---p"));
}

#[test]
fn a_device_with_a_handed_in_window_keeps_the_drop_order() {
    let _g = serial();
    let region = vmm_region(16 * MIB, libc::MAP_NORESERVE);
    let addr = region.as_ptr() as u64;
    let window = Arc::new(DaxWindow::from_reservation(region.clone()).unwrap());
    let mm = Arc::new(FakeMemoryManager::new());
    let mut fs = Fs::builder("handed")
        .socket_path("/nonexistent/vfs.sock")
        .window_size(2 * MIB) // ignored: the window's size applies
        .window(window.clone())
        .memory_manager(mm.clone())
        .build()
        .unwrap();
    assert!(Arc::ptr_eq(fs.window().unwrap(), &window));
    assert!(
        Arc::ptr_eq(fs.metrics(), window.metrics()),
        "one set of counters"
    );
    let regions = fs.shm_regions();
    assert_eq!((regions[0].len, regions[0].host_addr), (16 * MIB, addr));
    fs.set_shm_base(0, 1 << 34).unwrap();
    let slot = WindowRegion {
        gpa: 1 << 34,
        host_addr: addr,
        size: 16 * MIB,
    };
    assert_eq!(mm.live(), vec![slot]);

    let (file, _) = memfd(2 * MIB, |_| 7);
    window
        .map(&[entry(0, 2 * MIB)], &file, Policy::STANDARD)
        .unwrap();
    assert_eq!(fs.metrics().live_mappings(), 1);
    // Reset drops the mappings; the window stays the VMM's region, registered.
    fs.reset();
    assert_eq!(perms_at(&window, 0), "---p");
    assert_eq!(mm.live(), vec![slot]);

    // Drop: the slot goes with the device, before the window does.
    window
        .map(&[entry(0, 2 * MIB)], &file, Policy::STANDARD)
        .unwrap();
    let weak = Arc::downgrade(&window);
    drop(window);
    drop(fs);
    assert_eq!(mm.log().last(), Some(&(false, slot)));
    assert!(
        weak.upgrade().is_none(),
        "the device held the last window reference"
    );
    // The VMM's region outlives the window: PROT_NONE over all of it, the file pages gone.
    assert!(maps_in(addr, 16 * MIB).iter().all(|l| l.perms == "---p"));
    drop(region);
}
