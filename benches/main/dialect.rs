// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `dialect/*`: one legacy FS_MAP of 8 x 2 MiB (+ one FS_UNMAP) against 8 SHMEM_MAPs (+ 8
//! SHMEM_UNMAPs).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use criterion::Criterion;
use vm_memory::ByteValued;

use virtio_fs_dax::protocol::{legacy, standard, Dialect, FsBackendMsg, FS_FLAG_MAP_R};
use virtio_fs_dax::window::DaxWindow;
use virtio_fs_dax::BackendChannel;

use crate::common::{memfd, message, mmap_msg};
use crate::paired::{paired, timed, Goal, Side};
use crate::placement::Placement;
use crate::server::{call, serve_channel, Drive};
use crate::{M2, SOCKET_WINDOW};

pub fn dialect(c: &mut Criterion) {
    let file = memfd(M2);
    let fd = file.as_raw_fd();
    let place = Placement::from_env();
    let (mut map, mut unmap) = (FsBackendMsg::default(), FsBackendMsg::default());
    for i in 0..8 {
        map.cache_offset[i] = i as u64 * M2;
        map.len[i] = M2;
        map.flags[i] = FS_FLAG_MAP_R;
        unmap.cache_offset[i] = i as u64 * M2;
        unmap.len[i] = M2;
    }
    let fs_map = message(legacy::FS_MAP, map.as_slice());
    let fs_unmap = message(legacy::FS_UNMAP, unmap.as_slice());
    let shmem_maps: Vec<_> = (0..8)
        .map(|i| mmap_msg(standard::SHMEM_MAP, i * M2, M2))
        .collect();
    let shmem_unmaps: Vec<_> = (0..8)
        .map(|i| mmap_msg(standard::SHMEM_UNMAP, i * M2, M2))
        .collect();
    let channel = |dialect: Dialect| {
        move |ours: UnixStream| {
            BackendChannel::builder(ours)
                .window(Arc::new(DaxWindow::new(SOCKET_WINDOW).unwrap()))
                .dialect(dialect)
                .build()
        }
    };
    let mut g = c.benchmark_group("dialect");
    let mut served_legacy = None;
    let mut legacy = Side::new("legacy_fs_map_8x2m", |n| {
        let s = served_legacy
            .get_or_insert_with(|| serve_channel(&place, Drive::Spawn, channel(Dialect::Legacy)));
        timed(n, || {
            assert_eq!(call(&s.peer, &fs_map, Some(fd)), 0);
            assert_eq!(call(&s.peer, &fs_unmap, None), 0);
        })
    });
    let mut served_standard = None;
    let mut standard = Side::new("standard_shmem_map_8x2m", |n| {
        let s = served_standard
            .get_or_insert_with(|| serve_channel(&place, Drive::Spawn, channel(Dialect::Standard)));
        timed(n, || {
            for m in &shmem_maps {
                assert_eq!(call(&s.peer, m, Some(fd)), 0);
            }
            for m in &shmem_unmaps {
                assert_eq!(call(&s.peer, m, None), 0);
            }
        })
    });
    legacy.bench(&mut g);
    standard.bench(&mut g);
    g.finish();
    paired("dialect", &mut standard, &mut legacy, 20, Goal::Report);
}
