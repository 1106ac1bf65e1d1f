// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! How the device interrupts the guest: the VMM's side.

use std::io;

/// Kinds of interrupt a device raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioInterruptType {
    /// Configuration change.
    Config,
    /// Used buffers on a queue.
    Queue(u16),
}

/// The VMM's interrupt delivery.
pub trait VirtioInterrupt: Send + Sync {
    /// Raises an interrupt.
    fn trigger(&self, int_type: VirtioInterruptType) -> io::Result<()>;
}
