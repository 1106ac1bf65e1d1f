// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The queues handed to the device at activation.

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// A queue handed to [`Fs::activate`](super::Fs::activate).
#[derive(Debug)]
pub struct ActivateQueue {
    /// Queue index.
    pub index: usize,
    /// The queue as the driver configured it.
    pub queue: Queue,
    /// Eventfd the guest's notifications write (ioeventfd).
    pub kick: EventFd,
    /// Eventfd the backend writes to interrupt the guest (irqfd).
    pub call: EventFd,
}
