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
//! only, never the DAX window), per queue `SET_VRING_NUM`, `SET_VRING_ADDR`, `SET_VRING_BASE`,
//! `SET_VRING_CALL`, `SET_VRING_KICK`, `SET_VRING_ENABLE`, and last `SET_BACKEND_REQ_FD` with the
//! backend's end of a fresh backend channel.
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

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::channel::{BackendChannel, ChannelThread, ThreadHook};
use crate::io::IoSpace;
use crate::protocol::Dialect;
use crate::window::DaxWindow;

/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// `VHOST_USER_F_PROTOCOL_FEATURES`: the backend speaks protocol features (never offered to the
/// guest).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

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
    /// A guest memory region is not backed by a file descriptor, so the backend cannot map it.
    #[error("guest memory at {gpa:#x} is not backed by a shareable file")]
    MemoryNotShareable {
        /// Guest physical address of the region.
        gpa: u64,
    },
    /// `SET_MEM_TABLE` failed.
    #[error("SET_MEM_TABLE failed")]
    SetMemTable(#[source] vhost::Error),
    /// A queue address is not in guest memory.
    #[error("queue {index}: address {gpa:#x} is not in guest memory")]
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
    /// `RESET_DEVICE` failed.
    #[error("RESET_DEVICE failed")]
    ResetDevice(#[source] vhost::Error),
    /// The backend did not answer `RESET_DEVICE` within the bound; the connection was shut down.
    #[error("the backend did not answer RESET_DEVICE within {0:?}")]
    ResetTimeout(Duration),
}

/// Result of session operations.
pub type Result<T> = std::result::Result<T, Error>;

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

/// Protocol features this crate asks for when the backend offers them. `SHMEM` is added when the
/// device has a window and speaks the standard dialect. `CONFIGURE_MEM_SLOTS` is for memory
/// hotplug (see the module documentation).
pub fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::BACKEND_SEND_FD
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::RESET_DEVICE
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
}

/// Protocol features the DAX window needs in `dialect`.
pub fn dax_protocol_features(dialect: Dialect) -> VhostUserProtocolFeatures {
    let base = VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::BACKEND_SEND_FD
        | VhostUserProtocolFeatures::REPLY_ACK;
    match dialect {
        Dialect::Standard => base | VhostUserProtocolFeatures::SHMEM,
        // The legacy dialect has no feature bit of its own.
        Dialect::Legacy => base,
    }
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

/// A connected backend: `SET_OWNER` done, virtio and protocol features known. virtiofsd serves
/// one connection and exits when it closes, so the connection made to learn the features is the
/// one the session then uses.
pub struct Connection {
    frontend: Frontend,
    backend_features: u64,
    backend_protocol: Option<VhostUserProtocolFeatures>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("backend_features", &self.backend_features)
            .field("backend_protocol", &self.backend_protocol)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects (with the configured bounded retry), sends `SET_OWNER`, reads the backend's
    /// virtio features and, when it offers `VHOST_USER_F_PROTOCOL_FEATURES`, its protocol
    /// features (`GET_PROTOCOL_FEATURES`; nothing is acked yet, [`Session::start`] does that).
    pub fn open(cfg: &SessionConfig, max_queues: u64) -> Result<Connection> {
        let mut frontend = connect(cfg, max_queues)?;
        frontend.set_owner().map_err(Error::SetOwner)?;
        let backend_features = frontend.get_features().map_err(Error::GetFeatures)?;
        let backend_protocol = if backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            Some(
                frontend
                    .get_protocol_features()
                    .map_err(Error::GetProtocolFeatures)?,
            )
        } else {
            None
        };
        Ok(Connection {
            frontend,
            backend_features,
            backend_protocol,
        })
    }

    /// The virtio features the backend offers.
    pub fn backend_features(&self) -> u64 {
        self.backend_features
    }

    /// The protocol features the backend offers (its last answer to `GET_PROTOCOL_FEATURES`),
    /// or `None` when it does not offer `VHOST_USER_F_PROTOCOL_FEATURES`. Bits vhost does not
    /// know are dropped.
    pub fn backend_protocol_features(&self) -> Option<VhostUserProtocolFeatures> {
        self.backend_protocol
    }

    /// The protocol features of [`dax_protocol_features`]`(dialect)` this backend does not
    /// offer (all of them when it offers no protocol features): empty when it can serve a DAX
    /// window in `dialect`.
    ///
    /// The legacy dialect has no feature bit of its own, so any backend with a backend channel
    /// that passes file descriptors can serve it as far as this check knows, one that never
    /// sends `FS_MAP` (virtiofsd 1.14) included.
    pub fn dax_missing(&self, dialect: Dialect) -> VhostUserProtocolFeatures {
        dax_protocol_features(dialect)
            - self
                .backend_protocol
                .unwrap_or_else(VhostUserProtocolFeatures::empty)
    }
}

/// A live vhost-user session.
///
/// Ending it, by [`Session::reset`] or by dropping it, first stops and joins the backend channel
/// thread (within [`SessionConfig::shutdown_timeout`]), then ends the window's generation
/// ([`DaxWindow::reset`]): every mapping of the session is dropped, and nothing of the session
/// can map again, not even a thread that missed the bound.
#[derive(Debug)]
pub struct Session {
    // Dropped first: the thread stops and the mappings go before the connection closes.
    teardown: Teardown,
    conn: Connection,
    negotiated: Negotiated,
    /// Indices of the vrings the session started, stopped again by [`Session::reset`].
    vrings: Vec<usize>,
    /// The guest memory regions the backend has, `(gpa, size)`: the memory table, with the
    /// regions added and removed since.
    mem_regions: Vec<(u64, u64)>,
    /// The backend's `GET_MAX_MEM_SLOTS`, once asked.
    max_mem_slots: Option<u64>,
}

/// What ending a session stops and drops, in that order; dropping it does both.
#[derive(Debug)]
struct Teardown {
    channel: Option<ChannelThread>,
    window: Option<Arc<DaxWindow>>,
    timeout: Duration,
    name: String,
}

fn connect(cfg: &SessionConfig, max_queues: u64) -> Result<Frontend> {
    let attempts = cfg.connect_attempts.max(1);
    let mut n = 0;
    loop {
        n += 1;
        match Frontend::connect(&cfg.socket_path, max_queues) {
            Ok(f) => return Ok(f),
            Err(vhost::Error::VhostUserProtocol(source)) if n >= attempts => {
                return Err(Error::Connect {
                    path: cfg.socket_path.clone(),
                    attempts: n,
                    source,
                })
            }
            Err(vhost::Error::VhostUserProtocol(_)) => thread::sleep(cfg.connect_interval),
            Err(other) => {
                return Err(Error::Connect {
                    path: cfg.socket_path.clone(),
                    attempts: n,
                    source: vhost::vhost_user::Error::SocketConnect(io::Error::other(
                        other.to_string(),
                    )),
                })
            }
        }
    }
}

/// The memory table: every guest RAM region, which must be file backed. The DAX window is not
/// guest RAM in this sense and is never passed here. Any dirty bitmap type `B` will do: the table
/// carries addresses and file descriptors only.
pub fn mem_table<B: Bitmap>(mem: &GuestMemoryMmap<B>) -> Result<Vec<VhostUserMemoryRegionInfo>> {
    mem.iter()
        .map(|r| {
            VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|_| Error::MemoryNotShareable {
                gpa: r.start_addr().raw_value(),
            })
        })
        .collect()
}

fn host_addr<B: Bitmap>(mem: &GuestMemoryMmap<B>, index: usize, gpa: u64) -> Result<u64> {
    mem.get_host_address(vm_memory::GuestAddress(gpa))
        .map(|p| p as u64)
        .map_err(|_| Error::QueueAddress { index, gpa })
}

impl Session {
    /// Runs the session setup on `conn`. `acked` are the virtio features the driver acked
    /// (without `VHOST_USER_F_PROTOCOL_FEATURES`). The backend channel, when DAX is on, serves
    /// `window` in the configured dialect with `io` for FS_IO.
    ///
    /// With a `window` (and [`SessionConfig::dax`]), the backend's answer to
    /// `GET_PROTOCOL_FEATURES` is checked as [`Connection::dax_missing`] does. When it cannot serve
    /// the window, [`DaxFallback::Fail`] fails with [`Error::DaxUnsupported`], and
    /// [`DaxFallback::Disable`] starts the session without DAX (`SHMEM` not acked,
    /// [`Negotiated::dax`] false): the backend channel, if any, serves no window and refuses
    /// every map request.
    pub fn start<B: Bitmap>(
        conn: Connection,
        cfg: &SessionConfig,
        acked: u64,
        mem: &GuestMemoryMmap<B>,
        vrings: &[VringSetup<'_>],
        window: Option<&Arc<DaxWindow>>,
        io: &Arc<IoSpace>,
    ) -> Result<Session> {
        let Connection {
            mut frontend,
            backend_features,
            ..
        } = conn;
        if backend_features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Err(Error::NoProtocolFeatures {
                features: backend_features,
            });
        }
        // Asked again rather than taken from the connection: a session negotiates from the
        // backend's current answer, and every session sends the same requests, on a fresh
        // connection or on one kept across a reset.
        let backend_protocol = frontend
            .get_protocol_features()
            .map_err(Error::GetProtocolFeatures)?;
        let dax_wanted = cfg.dax && window.is_some();
        let mut wanted = wanted_protocol_features();
        if dax_wanted {
            wanted |= dax_protocol_features(cfg.dialect);
        }
        // The check the device makes at connect (`Connection::dax_missing`), made again on
        // this answer: the device may have activated without connecting first, or the backend
        // may have changed.
        let missing = if dax_wanted {
            dax_protocol_features(cfg.dialect) - backend_protocol
        } else {
            VhostUserProtocolFeatures::empty()
        };
        let dax = dax_wanted && missing.is_empty();
        if dax_wanted && !dax {
            match cfg.dax_fallback {
                DaxFallback::Fail => {
                    return Err(Error::DaxUnsupported {
                        missing,
                        dialect: cfg.dialect,
                    })
                }
                DaxFallback::Disable => log::warn!(
                    "{}: the backend lacks {missing:?} for DAX ({:?} dialect): this session \
                     serves no window",
                    cfg.name,
                    cfg.dialect
                ),
            }
        }
        if !dax {
            wanted -= VhostUserProtocolFeatures::SHMEM;
        }
        let protocol = backend_protocol & wanted;
        frontend
            .set_protocol_features(protocol)
            .map_err(Error::SetProtocolFeatures)?;
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let supported = frontend.get_queue_num().map_err(Error::GetQueueNum)?;
            if supported < vrings.len() as u64 {
                return Err(Error::QueueNum {
                    supported,
                    needed: vrings.len(),
                });
            }
        }
        let features = (acked & backend_features) | VHOST_USER_F_PROTOCOL_FEATURES;
        frontend
            .set_features(features)
            .map_err(Error::SetFeatures)?;
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
        }
        let table = mem_table(mem)?;
        frontend.set_mem_table(&table).map_err(Error::SetMemTable)?;
        for v in vrings {
            setup_vring(&mut frontend, mem, v)?;
        }
        let mut session = Session {
            teardown: Teardown {
                channel: None,
                window: window.cloned(),
                timeout: cfg.shutdown_timeout,
                name: cfg.name.clone(),
            },
            conn: Connection {
                frontend,
                backend_features,
                backend_protocol: Some(backend_protocol),
            },
            negotiated: Negotiated {
                backend_features,
                backend_protocol,
                protocol,
                dax,
            },
            vrings: vrings.iter().map(|v| v.index).collect(),
            mem_regions: table
                .iter()
                .map(|r| (r.guest_phys_addr, r.memory_size))
                .collect(),
            max_mem_slots: None,
        };
        if protocol.contains(VhostUserProtocolFeatures::BACKEND_REQ) {
            let (ours, theirs) = UnixStream::pair().map_err(Error::BackendChannel)?;
            let mut builder = BackendChannel::builder(ours)
                .dialect(cfg.dialect)
                .replace_exact(cfg.replace_exact)
                .io_space(io.clone())
                .name(cfg.name.clone())
                .start_paused(cfg.channel_start_paused);
            if let Some(name) = &cfg.channel_thread_name {
                builder = builder.thread_name(name.clone());
            }
            if let Some(hook) = &cfg.channel_thread_hook {
                builder = builder.on_thread_start(hook.clone());
            }
            if let (true, Some(w)) = (dax, window) {
                builder = builder.window(w.clone());
            }
            session.teardown.channel = Some(builder.build().spawn().map_err(Error::ChannelThread)?);
            // From here on, a failure drops `session`, which stops the thread and drops whatever
            // it mapped.
            session
                .conn
                .frontend
                .set_backend_request_fd(&theirs)
                .map_err(Error::SetBackendReqFd)?;
        }
        Ok(session)
    }

    /// What was agreed.
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// Pauses the backend channel thread ([`ChannelThread::pause_timeout`]): nothing is mapped
    /// until [`Session::resume_channel`]. `Ok` when the session has no channel thread.
    pub fn pause_channel(&self, timeout: Duration) -> Result<()> {
        match &self.teardown.channel {
            Some(c) => c.pause_timeout(timeout).map_err(Error::PauseChannel),
            None => Ok(()),
        }
    }

    /// Resumes the backend channel thread ([`ChannelThread::resume`]).
    pub fn resume_channel(&self) {
        if let Some(c) = &self.teardown.channel {
            c.resume();
        }
    }

    /// Whether the backend channel thread is paused.
    pub fn channel_paused(&self) -> bool {
        self.teardown
            .channel
            .as_ref()
            .is_some_and(|c| c.is_paused())
    }

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

    /// Whether the backend channel thread has ended (the backend closed it or died). Its
    /// mappings were dropped when it ended.
    pub fn channel_finished(&self) -> bool {
        self.teardown
            .channel
            .as_ref()
            .is_some_and(|c| c.is_finished())
    }

    /// Whether the backend hung up the vhost-user socket (checked without blocking).
    pub fn hung_up(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.conn.frontend.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd for the duration of the call; timeout 0 never blocks.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0
    }

    /// The vhost-user socket, for a VMM that watches it for `EPOLLHUP`/`EPOLLRDHUP`.
    pub fn socket_fd(&self) -> RawFd {
        self.conn.frontend.as_raw_fd()
    }

    /// The vhost-user `Frontend`, for requests this crate does not make.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.conn.frontend
    }

    /// Reads `buf.len()` bytes of the backend's device config at `offset` (needs CONFIG).
    pub fn get_config(&mut self, offset: u32, buf: &mut [u8]) -> Option<()> {
        if !self
            .negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIG)
        {
            return None;
        }
        let zeros = vec![0u8; buf.len()];
        let (_, data) = self
            .conn
            .frontend
            .get_config(
                offset,
                buf.len() as u32,
                vhost::vhost_user::message::VhostUserConfigFlags::WRITABLE,
                &zeros,
            )
            .ok()?;
        buf.copy_from_slice(data.get(..buf.len())?);
        Some(())
    }

    /// Ends the session: stops and joins the backend channel thread, ends the window's
    /// generation (every mapping dropped), stops every vring (`GET_VRING_BASE`) and, when
    /// negotiated, asks the backend to reset (`RESET_DEVICE`), waiting at most
    /// [`SessionConfig::shutdown_timeout`] for each answer. Returns the connection for the next
    /// activation; a backend that failed or timed out is an error, and its connection is
    /// dropped.
    ///
    /// Stopping the rings is what tells a backend without `RESET_DEVICE` that the driver is gone:
    /// without it the backend goes on serving the old rings (in memory the next driver reuses),
    /// and one that keeps its kick eventfd registered while the next session hands it the same
    /// eventfd again (a VMM's transport keeps its eventfds across resets) watches it twice
    /// (vhost-user-backend 0.22 then stops its ring thread at the second wakeup).
    pub fn reset(mut self) -> Result<Connection> {
        self.teardown.stop();
        let shutdown_timeout = self.teardown.timeout;
        for &index in &self.vrings {
            bounded(&self.conn.frontend, shutdown_timeout, move |f| {
                f.get_vring_base(index).map(|_| ())
            })
            .map_err(|e| match e {
                Bounded::Failed(source) => Error::Vring {
                    index,
                    step: "GET_VRING_BASE",
                    source,
                },
                Bounded::TimedOut => Error::ResetTimeout(shutdown_timeout),
                Bounded::Spawn(e) => Error::ResetDevice(vhost::Error::VhostUserProtocol(
                    vhost::vhost_user::Error::SocketError(e),
                )),
            })?;
        }
        if self
            .negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::RESET_DEVICE)
        {
            reset_device_within(&self.conn.frontend, shutdown_timeout)?;
        }
        Ok(self.conn)
    }
}

impl Teardown {
    /// Stops and joins the channel thread (bounded), then ends the window's generation.
    fn stop(&mut self) {
        if let Some(c) = self.channel.take() {
            match c.stop_timeout(self.timeout) {
                // Stopped on request, or had ended with the backend: both fine.
                Ok(()) | Err(crate::channel::Error::Disconnected) => {}
                Err(e) => log::debug!("{}: backend channel thread: {e}", self.name),
            }
        }
        if let Some(w) = self.window.take() {
            if let Err(e) = w.reset() {
                log::warn!("{}: dropping the mappings: {e}", self.name);
            }
        }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why a request with a bounded wait did not succeed.
enum Bounded {
    /// The backend answered with an error.
    Failed(vhost::Error),
    /// No answer within the bound; the connection was shut down.
    TimedOut,
    /// The waiting thread could not be spawned.
    Spawn(io::Error),
}

/// Runs `request` on `frontend` and waits at most `timeout` for it. vhost's `Frontend` waits
/// for a reply without a bound (and spins on `EAGAIN`, so a socket timeout does not help), so
/// the request runs on a short-lived thread; past the bound the socket is shut down, which makes
/// that thread's wait fail and end, and the connection is given up.
fn bounded<F>(
    frontend: &Frontend,
    timeout: Duration,
    request: F,
) -> std::result::Result<(), Bounded>
where
    F: FnOnce(&mut Frontend) -> vhost::Result<()> + Send + 'static,
{
    // Read before the request: `as_raw_fd` takes the lock the waiting request holds.
    let fd = frontend.as_raw_fd();
    let mut f = frontend.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = thread::Builder::new()
        .name("vhost-user-stop".into())
        .spawn(move || {
            let _ = tx.send(request(&mut f));
        })
        .map_err(Bounded::Spawn)?;
    match rx.recv_timeout(timeout) {
        Ok(res) => {
            let _ = thread.join();
            res.map_err(Bounded::Failed)
        }
        Err(_) => {
            // SAFETY: shutdown(2) on the descriptor `frontend` owns, which stays open while it
            // is borrowed here; shutdown does not close or reuse it, it only ends the stream.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            Err(Bounded::TimedOut)
        }
    }
}

/// Sends `RESET_DEVICE` and waits at most `timeout` for the backend's answer ([`bounded`]).
fn reset_device_within(frontend: &Frontend, timeout: Duration) -> Result<()> {
    bounded(frontend, timeout, |f| f.reset_device()).map_err(|e| match e {
        Bounded::Failed(e) => Error::ResetDevice(e),
        Bounded::TimedOut => Error::ResetTimeout(timeout),
        Bounded::Spawn(e) => Error::ResetDevice(vhost::Error::VhostUserProtocol(
            vhost::vhost_user::Error::SocketError(e),
        )),
    })
}

fn setup_vring<B: Bitmap>(
    frontend: &mut Frontend,
    mem: &GuestMemoryMmap<B>,
    v: &VringSetup<'_>,
) -> Result<()> {
    let i = v.index;
    let step = |step: &'static str| {
        move |source| Error::Vring {
            index: i,
            step,
            source,
        }
    };
    frontend
        .set_vring_num(i, v.size)
        .map_err(step("SET_VRING_NUM"))?;
    let addr = VringConfigData {
        queue_max_size: v.size,
        queue_size: v.size,
        flags: 0,
        desc_table_addr: host_addr(mem, i, v.desc_table)?,
        used_ring_addr: host_addr(mem, i, v.used_ring)?,
        avail_ring_addr: host_addr(mem, i, v.avail_ring)?,
        log_addr: None,
    };
    frontend
        .set_vring_addr(i, &addr)
        .map_err(step("SET_VRING_ADDR"))?;
    frontend
        .set_vring_base(i, v.base)
        .map_err(step("SET_VRING_BASE"))?;
    frontend
        .set_vring_call(i, v.call)
        .map_err(step("SET_VRING_CALL"))?;
    frontend
        .set_vring_kick(i, v.kick)
        .map_err(step("SET_VRING_KICK"))?;
    frontend
        .set_vring_enable(i, true)
        .map_err(step("SET_VRING_ENABLE"))?;
    Ok(())
}
