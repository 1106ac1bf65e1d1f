// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a VMM does to a running device besides the virtio lifecycle: pause and resume (for
//! snapshot and migration), export the counters, and follow guest memory hotplug.
//!
//! # Pause and resume
//!
//! [`Fs::pause`] parks the backend channel thread between two messages: from its return until
//! [`Fs::resume`], nothing is mapped into the window, unmapped or copied, and requests the
//! backend sends stay in the socket (neither read nor refused; the backend waits for its
//! replies). The device remembers that it is paused: a session started meanwhile (activation,
//! [`Fs::reconnect`]) starts its channel paused, so a reconnect in the middle of a migration
//! maps nothing either. Reset, a lost backend and drop stop a paused channel as they stop a
//! running one. A paused channel does not read its socket, so a backend that dies while the
//! device is paused is noticed through the vhost-user socket ([`Fs::check_backend`]) or at
//! resume. The queues are not touched: the VMM pauses the vCPUs, so the guest adds no request.
//!
//! # Memory hotplug
//!
//! After the VMM adds a guest RAM region (and puts it in the `GuestMemoryAtomic` the device was
//! activated with), [`Fs::add_memory_region`] gives it to the backend (`ADD_MEM_REG`); before
//! it takes one away, [`Fs::remove_memory_region`] (`REM_MEM_REG`). A backend without
//! `CONFIGURE_MEM_SLOTS` cannot follow: both fail with
//! [`crate::frontend::Error::MemHotplugUnsupported`], and the VMM fails the hotplug (or resets
//! the device: a new session sends the whole current memory). A session started later
//! (activation, reconnect) reads the device's `GuestMemoryAtomic` when it starts, so its memory
//! table holds every region hotplugged until then.

use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, GuestMemoryRegion, GuestRegionMmap};

use super::{Error, Fs, Result};
use crate::frontend;

impl Fs {
    /// Pauses the device for a snapshot or a migration: returns once the backend channel
    /// thread is parked between two messages, waiting at most
    /// [`super::FsBuilder::shutdown_timeout`]. Until [`Fs::resume`], nothing is mapped into the
    /// window, unmapped or copied, and requests the backend sends stay in the socket, neither
    /// read nor refused (the backend waits for its replies). When the thread does not park in
    /// time (it is inside a long FS_IO), this fails with [`frontend::Error::PauseChannel`] and
    /// the device is not paused.
    ///
    /// The device remembers that it is paused: a session started meanwhile (activation before
    /// any, [`Fs::reconnect`]) starts its channel paused. Reset, a lost backend and drop stop a
    /// paused channel as they stop a running one, and leave the device paused. A paused
    /// channel does not read its socket, so a backend that dies meanwhile is noticed through
    /// the vhost-user socket ([`Fs::check_backend`]) or at resume. The queues are not touched:
    /// the VMM pauses the vCPUs, so the guest adds no request.
    pub fn pause(&mut self) -> Result<()> {
        if let Some(session) = &self.session {
            session
                .pause_channel(self.session_cfg.shutdown_timeout)
                .map_err(Error::Session)?;
        }
        self.session_cfg.channel_start_paused = true;
        Ok(())
    }

    /// Resumes a paused device: the backend channel serves the requests that came while it was
    /// paused, in order. Does nothing on a device that is not paused.
    pub fn resume(&mut self) {
        self.session_cfg.channel_start_paused = false;
        if let Some(session) = &self.session {
            session.resume_channel();
        }
    }

    /// Whether the device is paused ([`Fs::pause`] without [`Fs::resume`] since).
    pub fn is_paused(&self) -> bool {
        self.session_cfg.channel_start_paused
    }

    /// The device's counters as `(name, value)` pairs with stable names
    /// ([`crate::FsMetrics::counters`]), for a VMM's `counters()`.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.metrics.counters()
    }

    /// Gives a hotplugged guest RAM region to the backend (`ADD_MEM_REG`), after the VMM put it
    /// in the `GuestMemoryAtomic` the device was activated with. The region must be file backed
    /// ([`frontend::Error::MemoryNotShareable`]) and never touch the DAX window
    /// ([`frontend::Error::WindowInMemTable`]). A backend without `CONFIGURE_MEM_SLOTS` cannot
    /// follow: [`frontend::Error::MemHotplugUnsupported`], nothing sent, and the VMM fails the
    /// hotplug (or resets the device: a new session sends the whole current memory). The
    /// backend's slots are respected ([`frontend::Error::MemSlotsFull`]); a region overlapping
    /// one the backend has is [`frontend::Error::MemRegionOverlap`].
    ///
    /// Without a session (not activated, or the backend is gone) there is nothing to send:
    /// `Ok`. Every session reads the `GuestMemoryAtomic` when it starts, so a later activation
    /// or [`Fs::reconnect`] sends a memory table with every region hotplugged until then.
    pub fn add_memory_region<B: Bitmap>(&mut self, region: &GuestRegionMmap<B>) -> Result<()> {
        let info = self.hotplug_region(region)?;
        match &mut self.session {
            Some(session) => session.add_mem_region(&info).map_err(Error::Session),
            None => Ok(()),
        }
    }

    /// Takes a guest RAM region away from the backend (`REM_MEM_REG`) before the VMM unmaps it:
    /// the same region as added (or as in the session's memory table). Without a session, `Ok`.
    pub fn remove_memory_region<B: Bitmap>(&mut self, region: &GuestRegionMmap<B>) -> Result<()> {
        let info = self.hotplug_region(region)?;
        match &mut self.session {
            Some(session) => session.remove_mem_region(&info).map_err(Error::Session),
            None => Ok(()),
        }
    }

    /// The region as vhost-user describes it, checked not to touch the window.
    fn hotplug_region<B: Bitmap>(
        &self,
        region: &GuestRegionMmap<B>,
    ) -> Result<vhost::VhostUserMemoryRegionInfo> {
        let gpa = region.start_addr().raw_value();
        let size = region.len();
        let host = region.as_ptr() as u64;
        let overlap =
            |a: u64, b: u64, len: u64| a < b.saturating_add(len) && b < a.saturating_add(size);
        if let Some(w) = &self.window {
            let in_window = overlap(host, w.host_addr(), w.size())
                || self
                    .window_gpa
                    .is_some_and(|wgpa| overlap(gpa, wgpa, w.size()));
            if in_window {
                return Err(Error::Session(frontend::Error::WindowInMemTable {
                    gpa,
                    size,
                }));
            }
        }
        vhost::VhostUserMemoryRegionInfo::from_guest_region(region)
            .map_err(|_| Error::Session(frontend::Error::MemoryNotShareable { gpa }))
    }
}
