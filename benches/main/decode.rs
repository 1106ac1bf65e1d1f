// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `decode/*`: the pure decoder on a SHMEM_MAP and a full legacy FS_MAP message.

use std::hint::black_box;

use criterion::Criterion;
use vm_memory::ByteValued;

use virtio_fs_dax::protocol::{
    decode_message, legacy, standard, Dialect, FsBackendMsg, VhostUserMMap,
};

use crate::common::message;
use crate::M2;

pub fn decode(c: &mut Criterion) {
    let map = VhostUserMMap {
        len: M2,
        ..Default::default()
    };
    let shmem = message(standard::SHMEM_MAP, map.as_slice());
    let mut fs = FsBackendMsg::default();
    for i in 0..8 {
        fs.cache_offset[i] = i as u64 * M2;
        fs.len[i] = M2;
        fs.flags[i] = 1;
    }
    let fs = message(legacy::FS_MAP, fs.as_slice());
    c.bench_function("decode/shmem_map", |b| {
        b.iter(|| decode_message(Dialect::Standard, black_box(&shmem), 1))
    });
    c.bench_function("decode/fs_map_8", |b| {
        b.iter(|| decode_message(Dialect::Legacy, black_box(&fs), 1))
    });
}
