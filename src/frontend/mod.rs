// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vhost-user session with the backend (vhost 0.18 `Frontend`): connect with bounded retry,
//! feature and protocol-feature negotiation, memory table, vrings, and the backend channel.
//!
//! Order of a session: [`Connection::open`] sends `SET_OWNER`, `GET_FEATURES` and, when the
//! backend offers `VHOST_USER_F_PROTOCOL_FEATURES`, `GET_PROTOCOL_FEATURES` (so a device can tell
//! whether the backend can serve its DAX window before the guest ever sees it); then
//! [`Session::start`] sends `GET_PROTOCOL_FEATURES` again (the answer it negotiates from),
//! `SET_PROTOCOL_FEATURES`, (`GET_QUEUE_NUM` when MQ), `SET_FEATURES`, `SET_MEM_TABLE` (guest RAM
//! only, never the DAX window), when the backend offers `INFLIGHT_SHMFD` (`GET_INFLIGHT_FD` at
//! the first session of an activation, then) `SET_INFLIGHT_FD` ([`InflightRegion`]), per queue
//! `SET_VRING_NUM`, `SET_VRING_ADDR`, `SET_VRING_BASE`, `SET_VRING_CALL`, `SET_VRING_KICK`,
//! `SET_VRING_ENABLE`, and last `SET_BACKEND_REQ_FD` with the backend's end of a fresh backend
//! channel.
//!
//! # Memory hotplug
//!
//! When the backend offers `CONFIGURE_MEM_SLOTS` (virtiofsd and vhost-user-backend based
//! backends do), it is acked, and [`Session::add_mem_region`] / [`Session::remove_mem_region`]
//! send `ADD_MEM_REG` / `REM_MEM_REG` so the backend's memory table follows the guest's RAM,
//! within the backend's `GET_MAX_MEM_SLOTS` (asked once, at the first hotplug). Without it they
//! fail with [`Error::MemHotplugUnsupported`] and send nothing: the backend cannot follow, and a
//! VMM fails the hotplug for this device (or resets it). A new session always sends the guest
//! memory it is given, so a VMM that passes its current memory (the device reads its
//! `GuestMemoryAtomic` at every start) gives a reconnected backend the hotplugged regions too.
//!
//! `GET_PROTOCOL_FEATURES` before `SET_FEATURES` is what the vhost-user spec and QEMU do; vhost's
//! `Frontend` only checks that `GET_FEATURES` offered `VHOST_USER_F_PROTOCOL_FEATURES`, and the
//! request changes none of its negotiation state (it only caches the answer), so asking twice on
//! one connection is harmless.

mod connection;
mod error;
mod hotplug;
mod inflight;
mod session;

pub use connection::{dax_protocol_features, wanted_protocol_features, Connection};
pub use error::{Error, Result};
pub use inflight::InflightRegion;
pub use session::{check_guest_input, mem_table, Session};

use std::path::PathBuf;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vmm_sys_util::eventfd::EventFd;

use crate::channel::ThreadHook;
use crate::protocol::Dialect;

/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// `VHOST_USER_F_PROTOCOL_FEATURES`: the backend speaks protocol features (never offered to the
/// guest).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// What to do when the backend cannot serve the DAX window in the configured dialect.
///
/// A device ([`crate::Fs`]) decides at [`crate::Fs::connect`], before the guest can see the
/// window; a session decides again when it starts ([`Session::start`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DaxFallback {
    /// Fail with [`Error::DaxUnsupported`]: at connect, at activation and at reconnect.
    #[default]
    Fail,
    /// Go on without DAX. At connect, the device withdraws its window (the guest never sees
    /// one); a session whose window the guest already saw starts without DAX: the window stays
    /// empty and every map request is refused.
    Disable,
}

/// How to reach the backend and what to ask of it.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The backend's vhost-user socket.
    pub socket_path: PathBuf,
    /// Connection attempts before giving up (the socket may not exist yet).
    pub connect_attempts: u32,
    /// Pause between attempts.
    pub connect_interval: Duration,
    /// Dialect of the backend channel, when the device has a window.
    pub dialect: Dialect,
    /// Whether the device has a DAX window.
    pub dax: bool,
    /// What to do when the backend cannot serve the window.
    pub dax_fallback: DaxFallback,
    /// Standard dialect: ask the backend for its shared memory regions (`GET_SHMEM_CONFIG`) and
    /// treat a region 0 of another size than the window as a backend that cannot serve it.
    pub check_shmem_config: bool,
    /// Standard dialect: exact-range replace policy.
    pub replace_exact: bool,
    /// Bound on each step of ending a session: joining the backend channel thread, and the
    /// backend's answer to `RESET_DEVICE`.
    pub shutdown_timeout: Duration,
    /// Log prefix.
    pub name: String,
    /// Name of the backend channel thread ([`crate::channel::BackendChannelBuilder::thread_name`]);
    /// `None` for the default.
    pub channel_thread_name: Option<String>,
    /// Run on every backend channel thread before it serves
    /// ([`crate::channel::BackendChannelBuilder::on_thread_start`]).
    pub channel_thread_hook: Option<ThreadHook>,
    /// Start the backend channel thread paused
    /// ([`crate::channel::BackendChannelBuilder::start_paused`]): a session started while the
    /// device is paused maps nothing until it is resumed.
    pub channel_start_paused: bool,
}

/// What was agreed with the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Negotiated {
    /// Virtio features the backend offered (before acking).
    pub backend_features: u64,
    /// Protocol features the backend offered.
    pub backend_protocol: VhostUserProtocolFeatures,
    /// Protocol features acked.
    pub protocol: VhostUserProtocolFeatures,
    /// Whether the backend channel serves the DAX window.
    pub dax: bool,
}

/// One queue as the session hands it to the backend.
#[derive(Debug)]
pub struct VringSetup<'a> {
    /// Queue index.
    pub index: usize,
    /// Queue size the driver chose.
    pub size: u16,
    /// Descriptor table (guest physical).
    pub desc_table: u64,
    /// Available ring (guest physical).
    pub avail_ring: u64,
    /// Used ring (guest physical).
    pub used_ring: u64,
    /// Where the backend starts in the available ring.
    pub base: u16,
    /// Eventfd the guest kicks.
    pub kick: &'a EventFd,
    /// Eventfd the backend signals (the VMM's interrupt).
    pub call: &'a EventFd,
}
