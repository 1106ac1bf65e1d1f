// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Test helpers for VMM authors (feature `test-utils`).
//!
//! - [`TestBackendServer`]: an in-process vhost-user backend on a unix socket, built on vhost's
//!   own backend-side parser, that records everything the frontend does and can send SHMEM_MAP /
//!   SHMEM_UNMAP on the backend channel. It is for testing a VMM's integration of this crate where
//!   a real backend cannot show things: virtiofsd (1.14) offers neither the SHMEM protocol
//!   feature nor CONFIG, and it does not let a test look at what it was told.
//! - [`FakeMemoryManager`]: a [`MemoryManager`](crate::memory::MemoryManager) that records and
//!   checks the window (un)registrations.
//! - [`guest`]: a simulated guest driver (split virtqueues, a FUSE client, loads and stores in
//!   the DAX window) to run the device end to end without booting a guest.

pub mod backend;
pub mod guest;
mod vrings;

pub use crate::memory::FakeMemoryManager;
pub use backend::{
    MemRegionRecord, SetConfigCall, TestBackend, TestBackendConfig, TestBackendServer,
    TestBackendState, VringAddrRecord, VringRecord, DEFAULT_MAX_MEM_SLOTS,
};
pub use guest::{
    guest_read, guest_write, memfd_guest_memory, FuseSession, GuestError, SplitQueueDriver,
};
pub use vrings::{InflightRecord, PoppedRequest};
