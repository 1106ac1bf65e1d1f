// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The device's shared memory regions (the DAX window) as the VMM places and maps them.

/// A virtio shared memory region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedMemoryRegion {
    /// Region id (0: the DAX cache window).
    pub id: u8,
    /// Guest physical address, once placed.
    pub gpa: Option<u64>,
    /// Length.
    pub len: u64,
    /// Host address of the memory behind it.
    pub host_addr: u64,
}

/// Host memory the VMM must map into the guest for this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserspaceMapping {
    /// Host virtual address.
    pub host_addr: u64,
    /// Guest physical address.
    pub gpa: u64,
    /// Length.
    pub len: u64,
}
