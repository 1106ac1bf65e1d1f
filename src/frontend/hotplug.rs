// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Memory hotplug: the guest RAM regions a [`Session`]'s backend has, added and removed.

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostUserMemoryRegionInfo;

use super::{Error, Result, Session};

impl Session {
    /// The guest memory regions the backend has, as `(guest address, size)`: the memory table
    /// of the session's start, with the regions added and removed since.
    pub fn mem_regions(&self) -> &[(u64, u64)] {
        &self.mem_regions
    }

    /// Sends `ADD_MEM_REG` for a hotplugged guest RAM region (never the DAX window: the caller
    /// checks). Fails without sending anything when `CONFIGURE_MEM_SLOTS` was not negotiated
    /// ([`Error::MemHotplugUnsupported`]), when the region is empty or overlaps one the backend
    /// has ([`Error::MemRegionOverlap`]), or when the backend's slots are all in use
    /// ([`Error::MemSlotsFull`], asked with `GET_MAX_MEM_SLOTS` the first time).
    pub fn add_mem_region(&mut self, region: &VhostUserMemoryRegionInfo) -> Result<()> {
        self.check_mem_slots()?;
        let (gpa, size) = (region.guest_phys_addr, region.memory_size);
        let end = gpa.checked_add(size);
        let overlaps = |&(g, s): &(u64, u64)| end.is_none_or(|e| gpa < g + s && g < e);
        if size == 0 || end.is_none() || self.mem_regions.iter().any(overlaps) {
            return Err(Error::MemRegionOverlap { gpa, size });
        }
        let max = match self.max_mem_slots {
            Some(m) => m,
            None => {
                let m = self
                    .conn
                    .frontend
                    .get_max_mem_slots()
                    .map_err(Error::GetMaxMemSlots)?;
                self.max_mem_slots = Some(m);
                m
            }
        };
        if self.mem_regions.len() as u64 >= max {
            return Err(Error::MemSlotsFull { max });
        }
        self.conn
            .frontend
            .add_mem_region(region)
            .map_err(|source| Error::AddMemReg { gpa, source })?;
        self.mem_regions.push((gpa, size));
        Ok(())
    }

    /// Sends `REM_MEM_REG` for a guest RAM region the backend has (same address and size),
    /// before the VMM unmaps it. Fails without sending anything when `CONFIGURE_MEM_SLOTS` was
    /// not negotiated ([`Error::MemHotplugUnsupported`]) or the backend does not have the
    /// region ([`Error::UnknownMemRegion`]).
    pub fn remove_mem_region(&mut self, region: &VhostUserMemoryRegionInfo) -> Result<()> {
        self.check_mem_slots()?;
        let key = (region.guest_phys_addr, region.memory_size);
        let Some(i) = self.mem_regions.iter().position(|r| *r == key) else {
            return Err(Error::UnknownMemRegion {
                gpa: key.0,
                size: key.1,
            });
        };
        self.conn
            .frontend
            .remove_mem_region(region)
            .map_err(|source| Error::RemMemReg { gpa: key.0, source })?;
        self.mem_regions.remove(i);
        Ok(())
    }

    fn check_mem_slots(&self) -> Result<()> {
        if self
            .negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
        {
            Ok(())
        } else {
            Err(Error::MemHotplugUnsupported)
        }
    }
}
