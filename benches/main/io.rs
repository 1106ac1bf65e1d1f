// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `io/*`: 2 MiB from a memfd into guest RAM through `IoSpace::transfer` and a legacy FS_IO,
//! against a raw `pread`.

use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use criterion::{Criterion, Throughput};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap};

use virtio_fs_dax::io::{Requester, Transfer};
use virtio_fs_dax::protocol::{legacy, Dialect, FsBackendMsg, FS_FLAG_MAP_R};
use virtio_fs_dax::{BackendChannel, IoSpace};

use crate::common::{memfd, message};
use crate::floor::{pread_all, AnonBuf};
use crate::paired::{paired, timed, Goal, Side};
use crate::placement::Placement;
use crate::server::{call, serve_channel, serve_raw, Drive, RawOp};
use crate::M2;

pub fn io(c: &mut Criterion) {
    let file = memfd(M2);
    let fd = file.as_raw_fd();
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), M2 as usize)]).unwrap();
    let space = Arc::new(IoSpace::with_guest_memory(Arc::new(ram)));
    // Fault guest RAM in, as the floor's buffer is.
    let first = space.transfer(&Requester::default(), 0, M2, Transfer::ReadFile(&file, 0));
    assert_eq!(first.unwrap(), M2);
    let mut buf = AnonBuf::new(M2);
    let mut fs_io = FsBackendMsg::default();
    fs_io.len[0] = M2;
    fs_io.flags[0] = FS_FLAG_MAP_R;
    let fs_io = message(legacy::FS_IO, fs_io.as_slice());

    let place = Placement::from_env();
    let mut g = c.benchmark_group("io");
    g.throughput(Throughput::Bytes(M2));
    let mut floor = Side::new("floor_pread_2m", |n| {
        timed(n, || {
            assert_eq!(pread_all(fd, black_box(buf.as_mut()), 0), M2 as usize)
        })
    });
    let mut transfer = Side::new("transfer_2m", |n| {
        timed(n, || {
            let done = space.transfer(
                &Requester::default(),
                black_box(0),
                M2,
                Transfer::ReadFile(&file, 0),
            );
            assert_eq!(done.unwrap(), M2);
        })
    });
    let mut raw = None;
    let mut floor_socket = Side::new("floor_socket_pread_2m", |n| {
        let s = raw.get_or_insert_with(|| serve_raw(&place, RawOp::Pread { len: M2 }));
        timed(n, || assert_eq!(call(&s.peer, &fs_io, Some(fd)), M2 as i64))
    });
    let mut served = None;
    let mut channel = Side::new("channel_fs_io_2m", |n| {
        let s = served.get_or_insert_with(|| {
            serve_channel(&place, Drive::Spawn, |ours| {
                BackendChannel::builder(ours)
                    .dialect(Dialect::Legacy)
                    .io_space(space.clone())
                    .build()
            })
        });
        timed(n, || assert_eq!(call(&s.peer, &fs_io, Some(fd)), M2 as i64))
    });
    floor.bench(&mut g);
    transfer.bench(&mut g);
    floor_socket.bench(&mut g);
    channel.bench(&mut g);
    g.finish();
    let goal = Goal::ThroughputAtLeast(0.9);
    paired("io", &mut transfer, &mut floor, 20, goal);
    paired("io", &mut channel, &mut floor, 20, goal);
    paired("io", &mut channel, &mut floor_socket, 20, goal);
}
