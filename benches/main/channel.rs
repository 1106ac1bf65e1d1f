// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `channel/*`: map + unmap of 2 MiB through `BackendChannel` over a socket pair against a raw
//! server.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use criterion::Criterion;

use virtio_fs_dax::protocol::{standard, Dialect};
use virtio_fs_dax::window::DaxWindow;
use virtio_fs_dax::BackendChannel;

use crate::common::{memfd, mmap_msg};
use crate::paired::{paired, timed, Goal, Side};
use crate::placement::Placement;
use crate::server::{call, serve_channel, serve_raw, serve_raw_with, Drive, RawOp, Served};
use crate::{M2, SOCKET_WINDOW};

pub fn channel(c: &mut Criterion) {
    let file = memfd(M2);
    let fd = file.as_raw_fd();
    let map = mmap_msg(standard::SHMEM_MAP, 0, M2);
    let unmap = mmap_msg(standard::SHMEM_UNMAP, 0, M2);
    let pair = |s: &Served| {
        assert_eq!(call(&s.peer, &map, Some(fd)), 0);
        assert_eq!(call(&s.peer, &unmap, None), 0);
    };
    let place = Placement::from_env();
    let standard = |ours: UnixStream| {
        BackendChannel::builder(ours)
            .window(Arc::new(DaxWindow::new(SOCKET_WINDOW).unwrap()))
            .dialect(Dialect::Standard)
            .build()
    };
    let mut g = c.benchmark_group("channel");
    let mut raw = None;
    let mut floor = Side::new("floor_socket_map_unmap_2m", |n| {
        let s = raw.get_or_insert_with(|| {
            serve_raw(
                &place,
                RawOp::Map {
                    window: SOCKET_WINDOW,
                },
            )
        });
        timed(n, || pair(s))
    });
    let mut raw_polled = None;
    let mut floor_epoll = Side::new("floor_socket_epoll_map_unmap_2m", |n| {
        let s = raw_polled.get_or_insert_with(|| {
            serve_raw_with(
                &place,
                RawOp::Map {
                    window: SOCKET_WINDOW,
                },
                true,
            )
        });
        timed(n, || pair(s))
    });
    let mut spawned = None;
    let mut crate_spawn = Side::new("map_unmap_2m", |n| {
        let s = spawned.get_or_insert_with(|| serve_channel(&place, Drive::Spawn, standard));
        timed(n, || pair(s))
    });
    let mut looped = None;
    let mut crate_loop = Side::new("map_unmap_2m_handle_one", |n| {
        let s = looped.get_or_insert_with(|| serve_channel(&place, Drive::HandleOne, standard));
        timed(n, || pair(s))
    });
    floor.bench(&mut g);
    floor_epoll.bench(&mut g);
    crate_spawn.bench(&mut g);
    crate_loop.bench(&mut g);
    g.finish();
    let goal = Goal::TimeAtMost(1.25);
    // The crate's thread waits in epoll_wait before each message: against a raw server that
    // does too. The plain-thread drive waits in recvmsg: against the plain raw server.
    paired("channel", &mut crate_spawn, &mut floor_epoll, 20, goal);
    paired("channel", &mut crate_loop, &mut floor, 20, goal);
}
