// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Benchmarks, each beside its floor (the raw syscalls, no crate) measured in the same run. The
//! machine these run on is shared and noisy: read the ratio of a crate figure to its floor, not
//! the absolute figures. `docs/BENCHMARKS.md` has a run and the ratios.
//!
//! - `decode/*`: the pure decoder on a SHMEM_MAP and a full legacy FS_MAP message.
//! - `reserve/*`: `DaxWindow::new` of 64 GiB against a raw `PROT_NONE | MAP_NORESERVE` mmap +
//!   munmap (and the aligned reservation the window needs); also prints the RSS growth of 1000
//!   live 64 GiB windows (criterion cannot report memory) and fails above 1 MiB a window.
//! - `map/*`: `DaxWindow` map + unmap of 2 MiB against the raw `mmap MAP_FIXED` pair, with 1 live
//!   mapping and with a full 64 GiB window (32,768 live mappings, the floor's reservation holding
//!   as many VMAs).
//! - `channel/*`: map + unmap of 2 MiB through `BackendChannel` over a unix socket pair (the
//!   SHMEM_MAP carries a memfd by SCM_RIGHTS) against a raw server doing the same
//!   recvmsg / mmap / sendmsg sequence.
//! - `dialect/*`: one legacy FS_MAP of 8 x 2 MiB (+ one FS_UNMAP) against 8 SHMEM_MAPs (+ 8
//!   SHMEM_UNMAPs), both through `BackendChannel`.
//! - `io/*`: 2 MiB from a memfd into guest RAM through `IoSpace::transfer` and through a legacy
//!   FS_IO on the channel, against a raw `pread` (and a raw server doing recvmsg + pread).
//! - `reset/*`: `unmap_all` of a full 64 GiB window (32,768 live mappings) against the raw
//!   `PROT_NONE` re-map of a reservation holding as many VMAs. Only the reset is timed.
//! - `handler/*`: map + unmap through `BackendChannel` against vhost's own `FrontendReqHandler`
//!   with a minimal mmap handler (what a VMM writes without the crate), the raw server and the
//!   lean checker (the raw server with the crate's checks in the least code), each
//!   crate drive (`spawn()`, a plain thread on `handle_one_timeout`) against the handler driven
//!   the same way (an epoll thread, a plain thread on blocking reads): 2 MiB and 4 KiB pairs, and
//!   2 MiB with 32,768 live mappings (each server in a child process: two such windows exceed
//!   the default `vm.max_map_count`).
//!
//! criterion measures one benchmark after the other, so load changes on a shared machine show up
//! in the ratio of two of its figures. After each group the bench therefore measures every pair
//! again, interleaved (see [`paired`]), and prints the median ratio on a line starting with
//! `paired`: those are the ratios to read (not in `--test` mode).
//!
//! Besides criterion's, the bench binary has two modes, chosen by the environment (see
//! [`handler`]): `VFD_BENCH_SERVER=<side>` (with `VFD_BENCH_SERVER_FD`) runs one server for a
//! parent bench process, and `VFD_BENCH_STRACE=<side>` (a `handler/` id without the group, e.g.
//! `vhost_epoll_2m` or `spawn_2m_live_32k`) runs 10,000 map+unmap pairs of that side and exits,
//! to count syscalls per pair: `strace -f -ff -o DIR/t <bench binary>`, one file per thread.
//!
//! Socket benchmarks run their two threads (criterion's, the peer; and the server) where
//! `VFD_BENCH_PIN` says: `same` (default: both on one CPU), `cross` (one CPU each) or `none`.
//! Both sides of every ratio get the same treatment.

mod channel;
mod common;
mod decode;
mod dialect;
mod floor;
mod handler;
mod io;
mod lean;
mod map;
mod paired;
mod placement;
mod reserve;
mod reset;
mod server;

use criterion::{criterion_group, Criterion};

const M2: u64 = 2 << 20;
const G64: u64 = 64 << 30;
/// 2 MiB ranges in a 64 GiB window: what a full window holds.
const LIVE: u64 = G64 / M2;
/// Window (and floor reservation) of the socket benchmarks: room for 8 ranges of 2 MiB.
const SOCKET_WINDOW: u64 = 16 << 20;

criterion_group!(
    benches,
    decode::decode,
    reserve::reserve,
    map::map,
    channel::channel,
    dialect::dialect,
    io::io,
    reset::reset,
    handler::handler
);

/// `criterion_main!`, after the bench binary's other modes (a server for a parent bench process,
/// a fixed run to count syscalls), which must come before criterion reads the arguments.
fn main() {
    if handler::run_mode() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
