// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `reset/*`: `unmap_all` of a full 64 GiB window against the raw `PROT_NONE` re-map.

use std::cell::OnceCell;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};

use crate::common::memfd;
use crate::floor::RawRange;
use crate::map::{fill_window, full_window};
use crate::paired::{paired, Goal, Side};
use crate::{G64, LIVE, M2};

pub fn reset(c: &mut Criterion) {
    let file = memfd(M2);
    // Both sides use one 64 GiB window, filled before each timed reset (32,768 maps, untimed).
    let window = OnceCell::new();
    let window = || window.get_or_init(full_window);
    let mut g = c.benchmark_group("reset");
    // Each iteration maps 32,768 ranges first (~0.2 s): few samples, one iteration each.
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut floor = Side::new("floor_remap_64g_live_32k", |n| {
        let w = window();
        let mut spent = Duration::ZERO;
        for _ in 0..n {
            fill_window(w, &file, LIVE);
            let t = Instant::now();
            RawRange::of_window(w).clear(0, G64);
            spent += t.elapsed();
            // The raw re-map left the window's table full: set it straight (one re-map of a
            // range that is all reservation again).
            w.unmap_all().unwrap();
        }
        spent
    });
    let mut unmap_all = Side::new("window_unmap_all_live_32k", |n| {
        let w = window();
        let mut spent = Duration::ZERO;
        for _ in 0..n {
            fill_window(w, &file, LIVE);
            assert_eq!(w.live_mappings() as u64, LIVE);
            let t = Instant::now();
            w.unmap_all().unwrap();
            spent += t.elapsed();
        }
        spent
    });
    floor.bench(&mut g);
    unmap_all.bench(&mut g);
    g.finish();
    paired("reset", &mut unmap_all, &mut floor, 10, Goal::Report);
}
