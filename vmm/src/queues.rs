// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What both transports hand the crate at DRIVER_OK: the queues the driver set up, checked.

use anyhow::{anyhow, bail, Context, Result};
use virtio_fs_dax::device::ActivateQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
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
/// call eventfds. A ready queue whose size or addresses virtio-queue refuses, or whose rings are
/// not in guest RAM, is an error, found here before the device is touched: the crate refuses
/// such queues too, but only after it has used up its connection to the backend, which a
/// backend that serves one connection (virtiofsd, dax-backend) does not give again.
pub fn activate_queues(
    driver: &[DriverQueue],
    max_sizes: &[u16],
    ram: &GuestMemoryMmap,
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
            let size = usize::from(r.size);
            for (what, at, len) in [
                ("descriptor table", r.desc, 16 * size),
                ("driver area", r.avail, 6 + 2 * size),
                ("device area", r.used, 6 + 8 * size),
            ] {
                if !ram.check_range(GuestAddress(at), len) {
                    bail!("queue {index}: {what} at {at:#x} ({len} bytes) is not in guest RAM");
                }
            }
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
