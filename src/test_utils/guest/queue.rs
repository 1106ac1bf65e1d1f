// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The driver side of a split virtqueue.

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

use super::{GuestError, Result};
use crate::device::ActivateQueue;

/// `VRING_DESC_F_NEXT`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`.
pub const VRING_DESC_F_WRITE: u16 = 2;

/// The driver side of a split virtqueue living in guest memory.
///
/// The descriptor table, available ring and used ring are laid out one after the other from the
/// base address given to [`SplitQueueDriver::new`]; they take
/// [`SplitQueueDriver::footprint`] bytes, which the caller keeps for the queue. Descriptors are
/// allocated from a free list and given back when their chain comes back in the used ring.
///
/// Memory ordering follows the virtio specification: descriptors and the ring entry are written
/// before the available index is published with a release store, a full fence separates that
/// from the kick, and the used index is read with an acquire load before its entries.
#[derive(Debug)]
pub struct SplitQueueDriver {
    mem: GuestMemoryMmap,
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    kick: EventFd,
    call: EventFd,
    free: Vec<u16>,
    /// For each head in flight, the descriptors of its chain.
    chains: Vec<Option<Vec<u16>>>,
    next_avail: u16,
    last_used: u16,
}

impl SplitQueueDriver {
    /// Bytes of guest memory the rings of a queue of `size` take (16-byte aligned base).
    pub fn footprint(size: u16) -> u64 {
        let (_, _, used) = Self::layout(GuestAddress(0), size);
        used.0 + 6 + 8 * u64::from(size)
    }

    fn layout(base: GuestAddress, size: u16) -> (GuestAddress, GuestAddress, GuestAddress) {
        let avail = base.0 + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4);
        (base, GuestAddress(avail), GuestAddress(used))
    }

    /// A queue of `size` descriptors (a power of two, at most 32768) with its rings at `base`
    /// (16-byte aligned) in `mem`. The rings are zeroed.
    pub fn new(mem: GuestMemoryMmap, base: GuestAddress, size: u16) -> Result<Self> {
        if size == 0 || !size.is_power_of_two() || size > crate::device::MAX_QUEUE_SIZE {
            return Err(GuestError::BadQueue(
                "size is not a power of two of at most 32768",
            ));
        }
        if !base.0.is_multiple_of(16) {
            return Err(GuestError::BadQueue("base is not 16-byte aligned"));
        }
        let (desc, avail, used) = Self::layout(base, size);
        mem.write_slice(&vec![0u8; Self::footprint(size) as usize], base)?;
        Ok(SplitQueueDriver {
            mem,
            size,
            desc,
            avail,
            used,
            kick: EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)?,
            call: EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)?,
            free: (0..size).rev().collect(),
            chains: vec![None; usize::from(size)],
            next_avail: 0,
            last_used: 0,
        })
    }

    /// A new driver on the same queue, as after a device reset: the rings zeroed and the
    /// driver's state back to the start, the kick and call eventfds kept (drained), as a VMM's
    /// transport keeps its eventfds across resets.
    pub fn restart(&mut self) -> Result<()> {
        self.mem
            .write_slice(&vec![0u8; Self::footprint(self.size) as usize], self.desc)?;
        self.free = (0..self.size).rev().collect();
        self.chains = vec![None; usize::from(self.size)];
        self.next_avail = 0;
        self.last_used = 0;
        let _ = self.kick.read();
        let _ = self.call.read();
        Ok(())
    }

    /// The guest memory the queue lives in.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest addresses of the descriptor table, available ring and used ring.
    pub fn addresses(&self) -> (GuestAddress, GuestAddress, GuestAddress) {
        (self.desc, self.avail, self.used)
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// The kick eventfd (the guest's notification; the device reads it).
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The call eventfd (the device's interrupt; the driver reads it).
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// What the driver tells the device at `DRIVER_OK` for queue `index`: a [`Queue`] with this
    /// driver's size and ring addresses, ready, and duplicates of the kick and call eventfds.
    pub fn activate_queue(&self, index: usize) -> Result<ActivateQueue> {
        let mut queue = Queue::new(self.size).map_err(|_| GuestError::BadQueue("queue size"))?;
        queue.set_size(self.size);
        let split = |a: GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
        let (lo, hi) = split(self.desc);
        queue.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail);
        queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used);
        queue.set_used_ring_address(lo, hi);
        queue.set_ready(true);
        Ok(ActivateQueue {
            index,
            queue,
            kick: self.kick.try_clone()?,
            call: self.call.try_clone()?,
        })
    }

    /// Adds a chain of device-readable buffers followed by device-writable ones (guest address
    /// and length each), publishes it in the available ring and returns its head. Does not kick.
    pub fn add_chain(
        &mut self,
        readable: &[(GuestAddress, u32)],
        writable: &[(GuestAddress, u32)],
    ) -> Result<u16> {
        let needed = readable.len() + writable.len();
        if needed == 0 {
            return Err(GuestError::BadQueue("empty chain"));
        }
        if needed > self.free.len() {
            return Err(GuestError::QueueFull {
                needed,
                free: self.free.len(),
            });
        }
        let ids: Vec<u16> = (0..needed).map(|_| self.free.pop().unwrap()).collect();
        let bufs = readable
            .iter()
            .map(|b| (b, 0))
            .chain(writable.iter().map(|b| (b, VRING_DESC_F_WRITE)));
        for (i, (&(addr, len), write)) in bufs.enumerate() {
            let last = i + 1 == needed;
            let flags = write | if last { 0 } else { VRING_DESC_F_NEXT };
            let next = if last { 0 } else { ids[i + 1] };
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.0.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            let at = self.desc.unchecked_add(16 * u64::from(ids[i]));
            if let Err(e) = self.mem.write_slice(&d, at) {
                self.free.extend(ids.iter().rev());
                return Err(e.into());
            }
        }
        let head = ids[0];
        self.chains[usize::from(head)] = Some(ids);
        // avail: flags u16, idx u16, ring[size] u16, used_event u16.
        let slot = self
            .avail
            .unchecked_add(4 + 2 * u64::from(self.next_avail % self.size));
        self.mem.write_obj(head.to_le(), slot)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        // The descriptors and ring entry are visible before the index that publishes them.
        fence(Ordering::Release);
        self.mem.store(
            self.next_avail.to_le(),
            self.avail.unchecked_add(2),
            Ordering::Release,
        )?;
        Ok(head)
    }

    /// Notifies the device (writes the kick eventfd). Always notifies: notification suppression
    /// by the device is only an optimization.
    pub fn kick(&self) -> Result<()> {
        // The published index is visible before the notification.
        fence(Ordering::SeqCst);
        self.kick.write(1)?;
        Ok(())
    }

    /// The next used buffer, if there is one: its head and the length the device wrote. Its
    /// descriptors are freed.
    pub fn pop_used(&mut self) -> Result<Option<(u16, u32)>> {
        let used_idx: u16 = u16::from_le(
            self.mem
                .load(self.used.unchecked_add(2), Ordering::Acquire)?,
        );
        if used_idx == self.last_used {
            // Ask for an interrupt at the next used buffer (honoured with EVENT_IDX).
            let used_event = self.avail.unchecked_add(4 + 2 * u64::from(self.size));
            self.mem
                .store(self.last_used.to_le(), used_event, Ordering::Release)?;
            fence(Ordering::SeqCst);
            let again: u16 = u16::from_le(
                self.mem
                    .load(self.used.unchecked_add(2), Ordering::Acquire)?,
            );
            if again == self.last_used {
                return Ok(None);
            }
        }
        // used: flags u16, idx u16, ring[size] of (id u32, len u32), avail_event u16.
        let elem = self
            .used
            .unchecked_add(4 + 8 * u64::from(self.last_used % self.size));
        let id = u32::from_le(self.mem.read_obj::<u32>(elem)?);
        let len = u32::from_le(self.mem.read_obj::<u32>(elem.unchecked_add(4))?);
        self.last_used = self.last_used.wrapping_add(1);
        let chain = u16::try_from(id)
            .ok()
            .and_then(|h| self.chains.get_mut(usize::from(h)))
            .and_then(Option::take)
            .ok_or(GuestError::BadQueue(
                "the device returned a head not in flight",
            ))?;
        self.free.extend(chain.iter().rev());
        Ok(Some((id as u16, len)))
    }

    /// Waits up to `timeout` for the next used buffer, polling the used ring and sleeping on
    /// the call eventfd in between. `None` on timeout or when the used ring is broken.
    pub fn wait_used(&mut self, timeout: Duration) -> Option<(u16, u32)> {
        self.try_wait_used(timeout).ok().flatten()
    }

    /// [`SplitQueueDriver::wait_used`] with errors.
    pub fn try_wait_used(&mut self, timeout: Duration) -> Result<Option<(u16, u32)>> {
        let start = Instant::now();
        loop {
            if let Some(used) = self.pop_used()? {
                return Ok(Some(used));
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(None);
            }
            // Sleep on the call eventfd, but not long: without interrupts (suppressed, or a
            // device that does not signal) the used ring is polled anyway.
            let mut pfd = libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, 10) as libc::c_int;
            // SAFETY: `pfd` is one valid pollfd that outlives the call.
            unsafe { libc::poll(&mut pfd, 1, ms) };
            // Drain the interrupt (non-blocking; EAGAIN when there was none).
            let _ = self.call.read();
        }
    }
}
