// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Errors of the device.

use std::io;

use vhost::vhost_user::message::VhostUserProtocolFeatures;

use super::MAX_QUEUE_SIZE;
use super::MAX_REQUEST_QUEUES;
use crate::protocol::Dialect;
use crate::{frontend, transport, window};

/// Errors of the device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The tag or queue count is invalid.
    #[error("invalid configuration")]
    Config(#[source] transport::ConfigError),
    /// Too many request queues.
    #[error("{0} request queues, at most {MAX_REQUEST_QUEUES}")]
    TooManyQueues(u32),
    /// The queue size is not a power of two in 1..=32768.
    #[error("queue size {0} is not a power of two of at most {MAX_QUEUE_SIZE}")]
    QueueSize(u16),
    /// No backend socket path was given.
    #[error("no backend socket path")]
    NoSocket,
    /// The window could not be created.
    #[error("DAX window")]
    Window(#[source] window::Error),
    /// The vhost-user session failed.
    #[error("vhost-user session")]
    Session(#[source] frontend::Error),
    /// The VMM's memory manager refused the window.
    #[error("memory manager refused the window at {gpa:#x}")]
    Memory {
        /// Guest physical address.
        gpa: u64,
        /// Its error.
        #[source]
        source: io::Error,
    },
    /// The device has no shared memory region with this id (only region 0, the DAX window,
    /// when the device has one).
    #[error("no shared memory region {id}")]
    NoSuchRegion {
        /// Region id asked for.
        id: u8,
    },
    /// The window's guest address is not 2 MiB aligned.
    #[error("shared memory region {id} at {gpa:#x}: not 2 MiB aligned")]
    ShmMisaligned {
        /// Region id.
        id: u8,
        /// Guest physical address.
        gpa: u64,
    },
    /// The DAX window was withdrawn at [`Fs::connect`](super::Fs::connect)
    /// ([`DaxFallback::Disable`](crate::frontend::DaxFallback::Disable) with a backend that cannot
    /// serve it): the device offers no shared memory region to place.
    #[error(
        "shared memory region {id}: the DAX window was withdrawn at connect, the backend lacks \
         {missing:?} ({dialect:?} dialect)"
    )]
    WindowWithdrawn {
        /// Region id asked for.
        id: u8,
        /// Protocol features the backend lacked.
        missing: VhostUserProtocolFeatures,
        /// Dialect configured.
        dialect: Dialect,
    },
    /// Registering the window in the IO space failed.
    #[error("IO space")]
    Io(#[source] crate::io::Error),
    /// Activation with the wrong number of queues.
    #[error("activate with {got} queues, the device has {expected}")]
    QueueCount {
        /// Queues given.
        got: usize,
        /// Queues the device has.
        expected: usize,
    },
    /// The device is not activated.
    #[error("the device is not activated")]
    NotActivated,
    /// Snapshot refused: the window has live mappings, whose file descriptors cannot be saved.
    #[error("snapshot refused: {live} live DAX mappings")]
    SnapshotWithMappings {
        /// Live mappings.
        live: usize,
    },
    /// A snapshot does not match this device or is malformed.
    #[error("snapshot does not match the device: {0}")]
    BadSnapshot(&'static str),
}

/// Result of device operations.
pub type Result<T> = std::result::Result<T, Error>;
