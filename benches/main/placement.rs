// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Thread placement for the socket benchmarks.

use std::mem::size_of;

pub fn affinity() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t of the size passed; pid 0 is the calling thread.
    let ret = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(ret, 0, "sched_getaffinity");
    set
}

pub fn set_affinity(set: &libc::cpu_set_t) {
    // SAFETY: `set` is a live cpu_set_t of the size passed; pid 0 is the calling thread.
    let ret = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) };
    assert_eq!(ret, 0, "sched_setaffinity");
}

pub fn one_cpu(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: as in `affinity`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    assert!(cpu < libc::CPU_SETSIZE as usize);
    // SAFETY: CPU_SET writes one bit of `set`; `cpu` < CPU_SETSIZE was checked just above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    set
}

/// Where the peer (criterion's thread) and every server thread of a socket benchmark run,
/// from `VFD_BENCH_PIN`. Threads inherit their creator's affinity, so servers are spawned inside
/// [`Placement::server`]. Dropping it gives criterion's thread its CPUs back.
pub struct Placement {
    original: libc::cpu_set_t,
    peer: Option<libc::cpu_set_t>,
    server: Option<libc::cpu_set_t>,
}

impl Placement {
    pub fn from_env() -> Self {
        let original = affinity();
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: CPU_ISSET reads one bit of `original`; `c` < CPU_SETSIZE.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &original) })
            .collect();
        let mode = std::env::var("VFD_BENCH_PIN").unwrap_or_else(|_| "same".into());
        let (peer, server) = match mode.as_str() {
            "none" => (None, None),
            "cross" => (Some(cpus[0]), Some(*cpus.get(1).unwrap_or(&cpus[0]))),
            _ => (Some(cpus[0]), Some(cpus[0])),
        };
        let p = Placement {
            original,
            peer: peer.map(one_cpu),
            server: server.map(one_cpu),
        };
        if let Some(set) = &p.peer {
            set_affinity(set);
        }
        p
    }

    /// Runs `spawn` with the server threads' affinity, which the threads it creates inherit.
    pub fn server<T>(&self, spawn: impl FnOnce() -> T) -> T {
        if let Some(set) = &self.server {
            set_affinity(set);
        }
        let t = spawn();
        match &self.peer {
            Some(set) => set_affinity(set),
            None => set_affinity(&self.original),
        }
        t
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        set_affinity(&self.original);
    }
}
