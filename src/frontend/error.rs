// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`Error`]: each step of a vhost-user session, with its source.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures;

use crate::protocol::Dialect;

/// Errors of the vhost-user session. Each step has its own variant and keeps its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Connecting to the backend socket failed after every retry.
    #[error("connecting to {path} failed after {attempts} attempts")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: vhost::vhost_user::Error,
    },
    /// `SET_OWNER` failed.
    #[error("SET_OWNER failed")]
    SetOwner(#[source] vhost::Error),
    /// `GET_FEATURES` failed.
    #[error("GET_FEATURES failed")]
    GetFeatures(#[source] vhost::Error),
    /// `SET_FEATURES` failed.
    #[error("SET_FEATURES failed")]
    SetFeatures(#[source] vhost::Error),
    /// The backend does not offer `VHOST_USER_F_PROTOCOL_FEATURES`.
    #[error("the backend offers no protocol features (features {features:#x})")]
    NoProtocolFeatures {
        /// What the backend offered.
        features: u64,
    },
    /// `GET_PROTOCOL_FEATURES` failed.
    #[error("GET_PROTOCOL_FEATURES failed")]
    GetProtocolFeatures(#[source] vhost::Error),
    /// `SET_PROTOCOL_FEATURES` failed.
    #[error("SET_PROTOCOL_FEATURES failed")]
    SetProtocolFeatures(#[source] vhost::Error),
    /// The backend supports fewer queues than the device needs.
    #[error("the backend supports {supported} queues, the device needs {needed}")]
    QueueNum {
        /// Queues the backend supports.
        supported: u64,
        /// Queues the device needs.
        needed: usize,
    },
    /// `GET_QUEUE_NUM` failed.
    #[error("GET_QUEUE_NUM failed")]
    GetQueueNum(#[source] vhost::Error),
    /// The backend lacks protocol features the DAX dialect needs, and DAX is required.
    #[error(
        "the backend lacks protocol features {missing:?} needed for DAX ({dialect:?} dialect)"
    )]
    DaxUnsupported {
        /// Missing features.
        missing: VhostUserProtocolFeatures,
        /// Dialect configured.
        dialect: Dialect,
    },
    /// `GET_SHMEM_CONFIG` failed.
    #[error("GET_SHMEM_CONFIG failed")]
    ShmemConfig(#[source] vhost::Error),
    /// The backend's shared memory region 0 (`GET_SHMEM_CONFIG`) is not the window: it would map
    /// ranges the window refuses, or leave part of it unserved.
    #[error(
        "the backend's shared memory region 0 is {backend:#x} bytes, the DAX window {window:#x}"
    )]
    ShmemSizeMismatch {
        /// What the backend reported.
        backend: u64,
        /// The window's size.
        window: u64,
    },
    /// A guest memory region is not backed by a file descriptor, so the backend cannot map it.
    #[error("guest memory at {gpa:#x} is not backed by a shareable file")]
    MemoryNotShareable {
        /// Guest physical address of the region.
        gpa: u64,
    },
    /// `SET_MEM_TABLE` failed.
    #[error("SET_MEM_TABLE failed")]
    SetMemTable(#[source] vhost::Error),
    /// A queue's ring (descriptor table, available or used ring, starting at `gpa`) is not
    /// wholly in guest memory.
    #[error("queue {index}: the ring at {gpa:#x} is not wholly in guest memory")]
    QueueAddress {
        /// Queue index.
        index: usize,
        /// The address.
        gpa: u64,
    },
    /// A request about vring `index` failed: one of setting it up, or stopping it at reset
    /// (`GET_VRING_BASE`).
    #[error("queue {index}: {step} failed")]
    Vring {
        /// Queue index.
        index: usize,
        /// The request that failed.
        step: &'static str,
        /// The error.
        #[source]
        source: vhost::Error,
    },
    /// Creating the backend channel failed.
    #[error("creating the backend channel failed")]
    BackendChannel(#[source] io::Error),
    /// Starting the backend channel thread failed.
    #[error("starting the backend channel thread failed")]
    ChannelThread(#[source] crate::channel::Error),
    /// `SET_BACKEND_REQ_FD` failed.
    #[error("SET_BACKEND_REQ_FD failed")]
    SetBackendReqFd(#[source] vhost::Error),
    /// Pausing the backend channel thread failed ([`crate::channel::Error::PauseTimeout`]).
    #[error("pausing the backend channel thread failed")]
    PauseChannel(#[source] crate::channel::Error),
    /// Memory hotplug needs `CONFIGURE_MEM_SLOTS`, which the backend does not offer: its memory
    /// table cannot follow the guest's RAM in this session.
    #[error("the backend cannot follow memory hotplug (no CONFIGURE_MEM_SLOTS)")]
    MemHotplugUnsupported,
    /// `GET_MAX_MEM_SLOTS` failed.
    #[error("GET_MAX_MEM_SLOTS failed")]
    GetMaxMemSlots(#[source] vhost::Error),
    /// Every memory slot of the backend is in use.
    #[error("the backend's {max} memory slots are all in use")]
    MemSlotsFull {
        /// The backend's `GET_MAX_MEM_SLOTS`.
        max: u64,
    },
    /// The region to add overlaps one the backend has (or is empty).
    #[error(
        "memory region at {gpa:#x} ({size:#x} bytes) is empty or overlaps one the backend has"
    )]
    MemRegionOverlap {
        /// Guest physical address.
        gpa: u64,
        /// Size in bytes.
        size: u64,
    },
    /// The region to remove is not one the backend has (same address and size).
    #[error("memory region at {gpa:#x} ({size:#x} bytes) is not in the backend's table")]
    UnknownMemRegion {
        /// Guest physical address.
        gpa: u64,
        /// Size in bytes.
        size: u64,
    },
    /// A region given as guest RAM overlaps the DAX window (host or guest addresses): the
    /// window is never in the backend's memory table.
    #[error("memory region at {gpa:#x} ({size:#x} bytes) overlaps the DAX window")]
    WindowInMemTable {
        /// Guest physical address.
        gpa: u64,
        /// Size in bytes.
        size: u64,
    },
    /// `ADD_MEM_REG` failed.
    #[error("ADD_MEM_REG at {gpa:#x} failed")]
    AddMemReg {
        /// Guest physical address.
        gpa: u64,
        /// The error.
        #[source]
        source: vhost::Error,
    },
    /// `REM_MEM_REG` failed.
    #[error("REM_MEM_REG at {gpa:#x} failed")]
    RemMemReg {
        /// Guest physical address.
        gpa: u64,
        /// The error.
        #[source]
        source: vhost::Error,
    },
    /// `GET_INFLIGHT_FD` failed.
    #[error("GET_INFLIGHT_FD failed")]
    GetInflightFd(#[source] vhost::Error),
    /// `SET_INFLIGHT_FD` failed.
    #[error("SET_INFLIGHT_FD failed")]
    SetInflightFd(#[source] vhost::Error),
    /// The inflight region's descriptor could not be made close-on-exec.
    #[error("making the inflight region's descriptor close-on-exec failed")]
    InflightFd(#[source] io::Error),
    /// The session was given an inflight region to hand on, and the backend no longer offers
    /// `INFLIGHT_SHMFD`: without it the requests in flight would be replayed. Reconnect again
    /// (a device then fails them instead).
    #[error("the backend no longer offers INFLIGHT_SHMFD for the inflight region")]
    InflightWithdrawn,
    /// `RESET_DEVICE` failed.
    #[error("RESET_DEVICE failed")]
    ResetDevice(#[source] vhost::Error),
    /// The backend did not answer `RESET_DEVICE` within the bound; the connection was shut down.
    #[error("the backend did not answer RESET_DEVICE within {0:?}")]
    ResetTimeout(Duration),
}

/// Result of session operations.
pub type Result<T> = std::result::Result<T, Error>;
