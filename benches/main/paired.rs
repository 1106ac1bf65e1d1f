// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Sides of a comparison, and their interleaved ratio.

use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::BenchmarkGroup;

/// Whether criterion runs in `--test` mode (each benchmark once: the CI smoke run).
pub fn test_mode() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// Times `n` runs of `op`.
pub fn timed(n: u64, mut op: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        op();
    }
    t.elapsed()
}

/// One side of a comparison: a benchmark id and a routine that times `n` runs of its operation
/// (criterion's `iter_custom` contract: set-up inside it may stay out of the time). The routine
/// sets itself up on first use, so a filtered-out benchmark costs nothing.
pub struct Side<F> {
    id: String,
    run: F,
    ran: bool,
}

impl<F: FnMut(u64) -> Duration> Side<F> {
    pub fn new(id: impl Into<String>, run: F) -> Self {
        Side {
            id: id.into(),
            run,
            ran: false,
        }
    }

    pub fn bench(&mut self, g: &mut BenchmarkGroup<'_, WallTime>) {
        let (ran, run) = (&mut self.ran, &mut self.run);
        g.bench_function(&self.id, |b| {
            *ran = true;
            b.iter_custom(&mut *run)
        });
    }
}

/// What a comparison must show.
#[derive(Clone, Copy)]
pub enum Goal {
    /// Time per operation at most this multiple of the other side's.
    TimeAtMost(f64),
    /// Throughput at least this fraction of the other side's.
    ThroughputAtLeast(f64),
    /// Nothing: reported for context.
    Report,
}

pub fn human(secs: f64) -> String {
    match secs {
        s if s >= 1e-3 => format!("{:.2} ms", s * 1e3),
        s if s >= 1e-6 => format!("{:.2} us", s * 1e6),
        s => format!("{:.1} ns", s * 1e9),
    }
}

/// The ratio of two sides measured interleaved: `rounds` rounds, each timing `n` operations of
/// one side then `n` of the other (alternating which goes first), so that the load of a shared
/// machine weighs on both alike. Prints the median ratio of the rounds, its quartiles and the
/// median time per operation of each side; returns those medians (`a`, `b`). Runs only when
/// criterion ran both sides (the filter selected them), never in `--test` mode.
pub fn paired<A, B>(
    group: &str,
    a: &mut Side<A>,
    b: &mut Side<B>,
    rounds: usize,
    goal: Goal,
) -> Option<(f64, f64)>
where
    A: FnMut(u64) -> Duration,
    B: FnMut(u64) -> Duration,
{
    if !(a.ran && b.ran) || test_mode() {
        return None;
    }
    // Calibrate: about 50 ms a side a round.
    let mut n = 1u64;
    let per_op = loop {
        let d = (a.run)(n).max((b.run)(n));
        if d >= Duration::from_millis(20) || n >= 1 << 24 {
            break d.as_secs_f64() / n as f64;
        }
        n *= 2;
    };
    let n = ((0.05 / per_op) as u64).max(1);
    let (mut ratios, mut ta, mut tb) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (da, db) = if round % 2 == 0 {
            let da = (a.run)(n);
            (da, (b.run)(n))
        } else {
            let db = (b.run)(n);
            ((a.run)(n), db)
        };
        let (da, db) = (da.as_secs_f64() / n as f64, db.as_secs_f64() / n as f64);
        ratios.push(da / db);
        ta.push(da);
        tb.push(db);
    }
    for v in [&mut ratios, &mut ta, &mut tb] {
        v.sort_by(f64::total_cmp);
    }
    let q = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let (ratio, ma, mb) = (q(&ratios, 0.5), q(&ta, 0.5), q(&tb, 0.5));
    let verdict = match goal {
        Goal::TimeAtMost(x) => format!(
            "; target time ratio <= {x:.2}: {}",
            if ratio <= x { "met" } else { "MISSED" }
        ),
        Goal::ThroughputAtLeast(x) => format!(
            "; throughput ratio {:.3}, target >= {x:.2}: {}",
            1.0 / ratio,
            if 1.0 / ratio >= x { "met" } else { "MISSED" }
        ),
        Goal::Report => String::new(),
    };
    println!(
        "paired {group}/{} vs {group}/{}: time ratio {ratio:.3} (quartiles {:.3}..{:.3}, {rounds} \
         interleaved rounds of {n}); per op {} vs {}{verdict}",
        a.id,
        b.id,
        q(&ratios, 0.25),
        q(&ratios, 0.75),
        human(ma),
        human(mb),
    );
    Some((ma, mb))
}
