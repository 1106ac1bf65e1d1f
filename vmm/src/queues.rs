// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What both transports hand the crate at DRIVER_OK: the queues the driver set up, checked.

use anyhow::{anyhow, Context, Result};
use virtio_fs_dax::device::ActivateQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

/// One queue as the driver programmed it through the transport's registers.
#[derive(Clone, Copy, Debug, Default)]
pub struct DriverQueue {
    /// Queue size the driver chose.
    pub size: u16,
    /// Whether the driver enabled it.
    pub ready: bool,
    /// Descriptor table (guest physical).
    pub desc: u64,
    /// Driver (available) area.
    pub avail: u64,
    /// Device (used) area.
    pub used: u64,
}

/// The crate's `ActivateQueue`s for the driver's queues, each with duplicates of its kick and
/// call eventfds. A ready queue whose size or addresses virtio-queue refuses is an error here:
/// virtio-queue's plain setters would keep the old values silently. Rings outside guest RAM are
/// the crate's to refuse: `Fs::activate` checks them before it sends anything, so the backend
/// stays connected for the driver's next try.
pub fn activate_queues(
    driver: &[DriverQueue],
    max_sizes: &[u16],
    kicks: &[EventFd],
    calls: &[EventFd],
) -> Result<Vec<ActivateQueue>> {
    let mut queues = Vec::new();
    for (index, (r, &max)) in driver.iter().zip(max_sizes).enumerate() {
        let mut q = Queue::new(max).context("queue")?;
        if r.ready {
            q.try_set_size(r.size)
                .map_err(|e| anyhow!("queue {index}: size {}: {e:?}", r.size))?;
            q.try_set_desc_table_address(GuestAddress(r.desc))
                .map_err(|e| anyhow!("queue {index}: descriptors {:#x}: {e:?}", r.desc))?;
            q.try_set_avail_ring_address(GuestAddress(r.avail))
                .map_err(|e| anyhow!("queue {index}: driver area {:#x}: {e:?}", r.avail))?;
            q.try_set_used_ring_address(GuestAddress(r.used))
                .map_err(|e| anyhow!("queue {index}: device area {:#x}: {e:?}", r.used))?;
        }
        q.set_ready(r.ready);
        queues.push(ActivateQueue {
            index,
            queue: q,
            kick: kicks[index].try_clone().context("eventfd")?,
            call: calls[index].try_clone().context("eventfd")?,
        });
    }
    Ok(queues)
}
