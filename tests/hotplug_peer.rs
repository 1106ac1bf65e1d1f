// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Memory hotplug against the `peers/dax-backend` process (vhost-user-backend, which offers
//! `CONFIGURE_MEM_SLOTS`): after `ADD_MEM_REG` the backend serves FUSE requests whose buffers
//! lie only in the hotplugged RAM, which its first memory table did not have.
//!
//! The backend binary is found through `$DAX_BACKEND`, else
//! `peers/dax-backend/target/release/dax-backend`.

mod common;

use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryAtomic, GuestRegionMmap};

use common::*;
use virtio_fs_dax::test_utils::{memfd_guest_memory, FuseSession, SplitQueueDriver};
use virtio_fs_dax::Fs;

const FUSE_ROOT_ID: u64 = 1;
const HOT: u64 = 1 << 30;

#[test]
fn dax_backend_serves_buffers_in_hotplugged_memory() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let data: Vec<u8> = (0..256 * 1024).map(|i| (i / 4096) as u8 ^ 0x33).collect();
    std::fs::write(shared.join("data.bin"), &data).unwrap();
    let socket = dir.path().join("dax.sock");
    let _backend = start_dax_backend(&socket, &shared, false);

    let mut fs = Fs::builder("hot")
        .socket_path(&socket)
        .window_size(16 * MIB)
        .queue_size(128)
        .build()
        .unwrap();
    fs.set_shm_base(0, 1 << 34).unwrap();
    fs.connect().unwrap();
    fs.ack_features(fs.features());

    // Boot RAM: 64 MiB with the rings; the region hotplugged later: 8 MiB at 1 GiB. The
    // simulated guest sees both (its requests go to the hotplugged RAM); the device is
    // activated with the boot RAM only.
    let boot = memfd_guest_memory(64 << 20).unwrap();
    let (file, _) = memfd(8 * MIB, |_| 0);
    let hot = Arc::new(
        GuestRegionMmap::from_range(GuestAddress(HOT), 8 << 20, Some(FileOffset::new(file, 0)))
            .unwrap(),
    );
    let grown = boot.insert_region(hot.clone()).unwrap();
    let hiprio = SplitQueueDriver::new(grown.clone(), GuestAddress(MIB), 128).unwrap();
    let request = SplitQueueDriver::new(grown.clone(), GuestAddress(2 * MIB), 128).unwrap();
    let queues = vec![
        hiprio.activate_queue(0).unwrap(),
        request.activate_queue(1).unwrap(),
    ];
    let mem = GuestMemoryAtomic::new(boot);
    fs.activate(mem.clone(), Arc::new(CountingInterrupt::default()), queues)
        .unwrap();
    let session = fs.session().unwrap();
    assert!(session
        .negotiated()
        .protocol
        .contains(vhost::vhost_user::VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS));
    assert_eq!(session.mem_regions(), [(0, 64 << 20)], "boot RAM only");

    // Hotplug, as a VMM does: its memory first, then the device.
    mem.lock().unwrap().replace(grown);
    fs.add_memory_region(&hot).unwrap();
    assert_eq!(
        fs.session().unwrap().mem_regions(),
        [(0, 64 << 20), (HOT, 8 << 20)]
    );

    // Every request and reply buffer of this FUSE session lies in the hotplugged RAM.
    let mut s = FuseSession::new(request, GuestAddress(HOT), (4 * MIB) as usize)
        .unwrap()
        .with_hiprio(hiprio);
    s.init().expect("INIT with buffers in hotplugged memory");
    let (nodeid, attr) = s.lookup(FUSE_ROOT_ID, "data.bin").expect("LOOKUP");
    assert_eq!(attr.size, data.len() as u64);
    let fh = s.open(nodeid, libc::O_RDONLY as u32).expect("OPEN");
    let got = s.read(nodeid, fh, 8192, 65536).expect("READ");
    assert_eq!(got, data[8192..8192 + 65536]);

    // Unplug: the backend acknowledges REM_MEM_REG.
    fs.remove_memory_region(&hot).unwrap();
    assert_eq!(fs.session().unwrap().mem_regions(), [(0, 64 << 20)]);
}
