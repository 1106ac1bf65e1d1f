// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `reserve/*`: `DaxWindow::new` of 64 GiB against a raw reservation, and the RSS of 1000 live
//! windows.

use std::hint::black_box;
use std::ptr::null_mut;

use criterion::Criterion;

use virtio_fs_dax::window::DaxWindow;

use crate::floor::RawReservation;
use crate::paired::{paired, timed, Goal, Side};
use crate::G64;

/// A field of /proc/self/status, in kB.
pub fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Growth of VmRSS and VmPTE (kB) while `n` reservations made by `make` are alive.
pub fn rss_growth<T>(n: usize, make: impl Fn() -> T) -> (u64, u64) {
    let (rss, pte) = (status_kb("VmRSS:"), status_kb("VmPTE:"));
    let live: Vec<T> = (0..n).map(|_| make()).collect();
    let (rss2, pte2) = (status_kb("VmRSS:"), status_kb("VmPTE:"));
    drop(live);
    (rss2.saturating_sub(rss), pte2.saturating_sub(pte))
}

pub fn report_rss() {
    // 1000 windows of 64 GiB: 64 TiB of the 128 TiB user address space, and RSS (counted in kB)
    // resolved to a few bytes per window.
    const N: usize = 1000;
    let (raw, raw_pte) = rss_growth(N, || RawReservation::new(G64));
    let (win, win_pte) = rss_growth(N, || DaxWindow::new(G64).unwrap());
    let per = win * 1024 / N as u64;
    println!(
        "rss reserve/window_new_64g: {N} live 64 GiB windows: VmRSS +{win} kB, VmPTE +{win_pte} \
         kB ({per} B per window; target < 1 MiB per window: {}); {N} raw reservations: VmRSS \
         +{raw} kB, VmPTE +{raw_pte} kB",
        if per < 1 << 20 { "met" } else { "MISSED" }
    );
    assert!(per < 1 << 20, "a 64 GiB window costs {per} B of RSS");
}

pub fn reserve(c: &mut Criterion) {
    let mut g = c.benchmark_group("reserve");
    let mut plain = Side::new("floor_mmap_64g", |n| {
        timed(n, || {
            // SAFETY: a fresh mapping at an address the kernel picks, unmapped right away;
            // nothing else knows of it.
            unsafe {
                let p = libc::mmap(
                    null_mut(),
                    G64 as usize,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                );
                assert_ne!(p, libc::MAP_FAILED);
                libc::munmap(black_box(p), G64 as usize);
            }
        })
    });
    let mut aligned = Side::new("floor_mmap_64g_aligned", |n| {
        timed(n, || drop(black_box(RawReservation::new(G64))))
    });
    let mut reported = false;
    let mut window = Side::new("window_new_64g", |n| {
        if !reported {
            reported = true;
            report_rss();
        }
        timed(n, || drop(black_box(DaxWindow::new(G64).unwrap())))
    });
    plain.bench(&mut g);
    aligned.bench(&mut g);
    window.bench(&mut g);
    g.finish();
    paired("reserve", &mut window, &mut plain, 20, Goal::Report);
    paired("reserve", &mut window, &mut aligned, 20, Goal::Report);
}
