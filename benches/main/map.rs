// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `map/*`: `DaxWindow` map + unmap of 2 MiB against the raw `mmap MAP_FIXED` pair, with 1 and
//! with 32,768 live mappings.

use std::cell::OnceCell;
use std::fs::File;
use std::hint::black_box;
use std::os::fd::AsRawFd;

use criterion::Criterion;

use virtio_fs_dax::protocol::{Access, MapEntry, Range};
use virtio_fs_dax::window::{DaxWindow, Policy};

use crate::common::memfd;
use crate::floor::RawRange;
use crate::paired::{human, paired, timed, Goal, Side};
use crate::{G64, LIVE, M2};

/// Maps `ranges` 2 MiB ranges of `file` (file offset 0 each: no two neighbouring VMAs can
/// merge) from the start of the window.
pub fn fill_window(w: &DaxWindow, file: &File, ranges: u64) {
    for i in 0..ranges {
        let e = MapEntry {
            offset: i * M2,
            fd_offset: 0,
            len: M2,
            access: Access::ReadOnly,
        };
        w.map(&[e], file, Policy::STANDARD).unwrap();
    }
}

/// Map + unmap of 2 MiB at `offset` through the window.
pub fn window_pair(w: &DaxWindow, file: &File, offset: u64) {
    let entry = MapEntry {
        offset,
        fd_offset: 0,
        len: M2,
        access: Access::ReadOnly,
    };
    let range = Range { offset, len: M2 };
    w.map(black_box(&[entry]), file, Policy::STANDARD).unwrap();
    w.unmap(black_box(&[range]), Policy::STANDARD).unwrap();
}

/// The same two `mmap MAP_FIXED` calls, raw, over the window's own reservation.
pub fn raw_pair(w: &DaxWindow, file: &File, offset: u64) {
    let raw = RawRange::of_window(w);
    raw.map(black_box(offset), M2, file.as_raw_fd(), 0);
    raw.clear(black_box(offset), M2);
}

/// A 64 GiB window that may hold a mapping in every 2 MiB range (above the default bound).
pub fn full_window() -> DaxWindow {
    DaxWindow::builder(G64)
        .max_mappings(LIVE as usize)
        .build()
        .unwrap()
}

pub fn map(c: &mut Criterion) {
    let file = memfd(M2);
    // One live mapping: a 2 MiB window, the measured range replacing all of it.
    let one = OnceCell::new();
    let one = || one.get_or_init(|| DaxWindow::new(M2).unwrap());
    // A full 64 GiB window: 32,767 live mappings plus the measured one, in the last range. The
    // floor maps into the same reservation, so the kernel walks the same 32,768 VMAs.
    let full = OnceCell::new();
    let full = || {
        full.get_or_init(|| {
            let w = full_window();
            fill_window(&w, &file, LIVE - 1);
            w
        })
    };
    let last = (LIVE - 1) * M2;
    let mut g = c.benchmark_group("map");
    let mut floor_1 = Side::new("floor_mmap_pair_2m", |n| {
        let w = one();
        timed(n, || raw_pair(w, &file, 0))
    });
    let mut window_1 = Side::new("window_2m", |n| {
        let w = one();
        timed(n, || window_pair(w, &file, 0))
    });
    let mut floor_32k = Side::new("floor_mmap_pair_2m_live_32k", |n| {
        let w = full();
        timed(n, || raw_pair(w, &file, last))
    });
    let mut window_32k = Side::new("window_2m_live_32k", |n| {
        let w = full();
        timed(n, || window_pair(w, &file, last))
    });
    floor_1.bench(&mut g);
    window_1.bench(&mut g);
    floor_32k.bench(&mut g);
    window_32k.bench(&mut g);
    g.finish();
    let at_1 = paired("map", &mut window_1, &mut floor_1, 20, Goal::Report);
    let at_32k = paired(
        "map",
        &mut window_32k,
        &mut floor_32k,
        20,
        Goal::TimeAtMost(1.2),
    );
    paired(
        "map",
        &mut window_32k,
        &mut window_1,
        20,
        Goal::TimeAtMost(1.2),
    );
    paired("map", &mut floor_32k, &mut floor_1, 20, Goal::Report);
    if let (Some((c1, f1)), Some((c32, f32))) = (at_1, at_32k) {
        println!(
            "crate's own cost per map+unmap (crate - floor): {} with 1 live mapping, {} with \
             32,768",
            human(c1 - f1),
            human(c32 - f32)
        );
    }
}
