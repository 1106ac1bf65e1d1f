// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Benchmarks, each beside its floor measured in the same run:
//! - `decode/*`: the pure decoder on a SHMEM_MAP and a full legacy FS_MAP message;
//! - `window/map_unmap_2m` against `floor/mmap_pair_2m` (the two raw `mmap MAP_FIXED` calls);
//! - `window/map_unmap_2m_live_32k`: the same with 32,768 live mappings (must stay flat).

use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};

use criterion::{criterion_group, criterion_main, Criterion};

use virtio_fs_dax::protocol::{
    decode_message, legacy, standard, Access, Dialect, FsBackendMsg, MapEntry, Range,
    VhostUserMMap, FLAG_NEED_REPLY, VERSION,
};
use virtio_fs_dax::window::{DaxWindow, Policy};
use vm_memory::ByteValued;

const M2: u64 = 2 << 20;

fn message(code: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&code.to_le_bytes());
    v.extend_from_slice(&(VERSION | FLAG_NEED_REPLY).to_le_bytes());
    v.extend_from_slice(&(body.len() as u32).to_le_bytes());
    v.extend_from_slice(body);
    v
}

fn memfd(len: u64) -> File {
    // SAFETY: memfd_create reads a valid NUL-terminated name and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"bench".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` was just created and is owned by nobody else.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(&vec![1u8; len as usize]).unwrap();
    f
}

fn decode(c: &mut Criterion) {
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

fn window(c: &mut Criterion) {
    let file = memfd(M2);
    let entry = MapEntry {
        offset: 0,
        fd_offset: 0,
        len: M2,
        access: Access::ReadOnly,
    };
    let range = Range { offset: 0, len: M2 };

    let floor = DaxWindow::new(M2).unwrap();
    let base = floor.host_addr() as *mut libc::c_void;
    c.bench_function("floor/mmap_pair_2m", |b| {
        b.iter(|| {
            // SAFETY: `base` is the 2 MiB reservation owned by `floor`, alive for the whole
            // benchmark; MAP_FIXED replaces only its pages.
            unsafe {
                libc::mmap(
                    base,
                    M2 as usize,
                    libc::PROT_READ,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    0,
                );
                libc::mmap(
                    base,
                    M2 as usize,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                    -1,
                    0,
                );
            }
        })
    });

    let w = DaxWindow::new(M2).unwrap();
    c.bench_function("window/map_unmap_2m", |b| {
        b.iter(|| {
            w.map(black_box(&[entry]), &file, Policy::STANDARD).unwrap();
            w.unmap(black_box(&[range]), Policy::STANDARD).unwrap();
        })
    });

    // 32,768 live 4 KiB mappings (the table size of a 64 GiB window in 2 MiB ranges), plus the
    // measured one at the end of the window.
    let big = DaxWindow::new(256 << 20).unwrap();
    let page = memfd(4096);
    for i in 0..32_768u64 {
        let e = MapEntry {
            offset: i * 4096,
            fd_offset: 0,
            len: 4096,
            access: Access::ReadOnly,
        };
        big.map(&[e], &page, Policy::STANDARD).unwrap();
    }
    let far = MapEntry {
        offset: (256 << 20) - M2,
        ..entry
    };
    let far_range = Range {
        offset: far.offset,
        len: M2,
    };
    c.bench_function("window/map_unmap_2m_live_32k", |b| {
        b.iter(|| {
            big.map(black_box(&[far]), &file, Policy::STANDARD).unwrap();
            big.unmap(black_box(&[far_range]), Policy::STANDARD)
                .unwrap();
        })
    });
}

criterion_group!(benches, decode, window);
criterion_main!(benches);
