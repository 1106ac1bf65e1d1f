// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What both transports do with a guest's mistakes: log the first ones, then only count them.

use std::fmt;

/// Mistakes logged per device; the rest are only counted.
const LIMIT: u64 = 20;

/// A device's log of the guest's mistakes on stderr, bounded so that a guest cannot flood it.
#[derive(Debug, Default)]
pub struct MistakeLog {
    logged: u64,
}

impl MistakeLog {
    /// Logs `msg` about `who` if fewer than the limit were logged, and says so at the limit.
    pub fn log(&mut self, who: fmt::Arguments<'_>, msg: fmt::Arguments<'_>) {
        self.logged += 1;
        if self.logged <= LIMIT {
            eprintln!("dax-vmm: {who}: {msg}");
            if self.logged == LIMIT {
                eprintln!("dax-vmm: {who}: further guest mistakes are only counted");
            }
        }
    }
}
