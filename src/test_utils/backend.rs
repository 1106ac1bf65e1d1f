// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! An in-process vhost-user backend that records what the frontend does, for tests.
//!
//! A VMM that integrates this crate talks to a real backend (virtiofsd) over the vhost-user
//! socket. Some of what it must get right cannot be shown with virtiofsd: version 1.14 offers
//! neither the SHMEM protocol feature (so the standard SHMEM_MAP / SHMEM_UNMAP dialect is never
//! negotiated) nor CONFIG, and nothing in it tells a test which features were acked, which
//! memory table was sent or whether the device was reset. [`TestBackendServer`] is a stand-in:
//!
//! - it listens on a unix socket path, like virtiofsd's `--socket-path`, and serves one frontend
//!   connection after the other on a thread of its own;
//! - it parses requests with vhost's own backend side ([`BackendReqHandler`]), so the wire format
//!   is vhost's, and answers from a [`TestBackendConfig`] (features, protocol features, queue
//!   count, device config space);
//! - it records everything the frontend did ([`TestBackendState`]): acked features, owner, memory
//!   table, vrings, resets, config writes, the order of requests and the requests it refused;
//! - once the frontend has sent `SET_BACKEND_REQ_FD`, [`TestBackendServer::backend_channel`]
//!   gives vhost's [`Backend`] on that channel, so a test can send `shmem_map` / `shmem_unmap` to
//!   the VMM as a backend would when the guest sets up a DAX mapping;
//! - [`TestBackendServer::disconnect`] makes the backend die under the frontend, and the next
//!   connection starts afresh (reconnect tests).
//!
//! It moves no data by itself: a test takes the requests on a vring with
//! [`TestBackendServer::pop_requests`], which holds them in flight, and answers each with
//! [`TestBackendServer::complete`] (used ring, then the call eventfd), in any order; a backend
//! that dies (or is dropped) with requests held or unread leaves them in flight for the
//! frontend. With `INFLIGHT_SHMFD` offered ([`TestBackendConfig::protocol_features`]) it hands
//! out an inflight area of the specification's split-ring layout (`GET_INFLIGHT_FD`), tracks the
//! requests it takes and completes in the area it is given (`SET_INFLIGHT_FD`), and when a ring
//! starts it resubmits what the area says is in flight, in the order it was taken
//! ([`PoppedRequest::resubmitted`]). It keeps the descriptors of its memory table
//! (`SET_MEM_TABLE`, `ADD_MEM_REG`, `REM_MEM_REG`), so a test can read and write guest memory as
//! the backend sees it ([`TestBackendServer::read_memory`], [`TestBackendServer::write_memory`]).
//!
//! # vhost 0.18 behaviour to know about
//!
//! - vhost's parser always adds `REPLY_ACK` to the protocol features a backend offers.
//! - A `GET_*` request whose handler fails gets **no reply** at all (the frontend blocks), so this
//!   backend answers every `GET_*` it implements.
//! - `GET_CONFIG` is the exception, and worse: a failure gets a reply without payload, and
//!   vhost's own `Frontend` then waits for the payload it asked for, forever. So this backend
//!   never fails it: bytes past the end of [`TestBackendConfig::config`] read as zeros, and the
//!   read is recorded in [`TestBackendState::errors`].
//! - A refused `SET_*` request is only visible to the frontend if it asked for a reply
//!   (`NEED_REPLY`, with `REPLY_ACK` negotiated; vhost's `Frontend` does so only after
//!   `set_hdr_flags`). It always appears in [`TestBackendState::errors`].
//! - A request the parser itself refuses before calling the handler (a protocol feature it needs
//!   not acked, a malformed message) gets no reply, even with `NEED_REPLY`: it is only in
//!   [`TestBackendState::errors`].
//! - vhost's `BackendListener` hands its handler to the first connection it accepts and panics on
//!   a second `accept`: the server makes one per connection.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
//! use vhost::VhostBackend;
//! use virtio_fs_dax::test_utils::{TestBackendConfig, TestBackendServer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("fs.sock");
//! let server = TestBackendServer::start(&path, TestBackendConfig::default())?;
//!
//! // The VMM's side (here vhost's Frontend, driven by hand).
//! let mut frontend = Frontend::connect(&path, 2)?;
//! frontend.set_owner()?;
//! let features = frontend.get_features()?;
//! frontend.set_features(features)?;
//! let offered = frontend.get_protocol_features()?;
//! assert!(offered.contains(VhostUserProtocolFeatures::SHMEM));
//! frontend.set_protocol_features(offered)?;
//!
//! assert!(server.wait_for(
//!     |s| s.acked_protocol_features == Some(offered),
//!     Duration::from_secs(5),
//! ));
//! assert!(server.state().owner);
//! # Ok(())
//! # }
//! ```

use std::ffi::CStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::net::Shutdown;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserShMemConfig, VhostUserSharedMsg,
    VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
    VHOST_USER_MAX_VRINGS,
};
use vhost::vhost_user::{
    Backend, BackendListener, BackendReqHandler, Error as VhostUserError, GpuBackend, Listener,
    Result as VhostUserResult, VhostUserBackendReqHandlerMut, VhostUserProtocolFeatures,
    VhostUserVirtioFeatures,
};
use vhost::VhostUserMemoryRegionBase;
use vm_memory::GuestAddress;

use super::vrings::{inflight_queue_region, InflightRecord, PoppedRequest, Vrings};
use crate::ring::SplitRing;

/// How often the accept loop looks at the stop flag, and [`TestBackendServer::wait_for`] at the
/// state.
const POLL: Duration = Duration::from_millis(5);

/// What `GET_MAX_MEM_SLOTS` answers by default (QEMU's and vhost-user-backend's usual value).
pub const DEFAULT_MAX_MEM_SLOTS: u64 = 509;

/// Most shared memory regions `GET_SHMEM_CONFIG` can describe.
const MAX_SHMEM_REGIONS: usize = 256;

/// What the backend offers and answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestBackendConfig {
    /// Virtio features offered by `GET_FEATURES`. Default: `VIRTIO_F_VERSION_1` and
    /// `VHOST_USER_F_PROTOCOL_FEATURES`.
    pub features: u64,
    /// Protocol features offered by `GET_PROTOCOL_FEATURES`. vhost's parser always adds
    /// `REPLY_ACK`. Default: `MQ | REPLY_ACK | BACKEND_REQ | BACKEND_SEND_FD | CONFIG |
    /// RESET_DEVICE | SHMEM | CONFIGURE_MEM_SLOTS`.
    pub protocol_features: VhostUserProtocolFeatures,
    /// Number of queues `GET_QUEUE_NUM` answers, and the number of vrings recorded. Default: 2
    /// (virtio-fs: one hiprio queue and one request queue).
    pub queue_num: u64,
    /// The device config space `GET_CONFIG` reads from (offsets are into this buffer). Bytes past
    /// its end read as zeros, and such a read is recorded as an error (see the module
    /// documentation for why it is not refused). Default: empty.
    pub config: Vec<u8>,
    /// How long `RESET_DEVICE` takes before it is answered: a stalled backend. Default: 0.
    pub reset_device_delay: Duration,
    /// What `GET_MAX_MEM_SLOTS` answers. Default: [`DEFAULT_MAX_MEM_SLOTS`].
    pub max_mem_slots: u64,
}

impl Default for TestBackendConfig {
    fn default() -> Self {
        TestBackendConfig {
            features: crate::frontend::VIRTIO_F_VERSION_1
                | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            protocol_features: VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::BACKEND_REQ
                | VhostUserProtocolFeatures::BACKEND_SEND_FD
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::RESET_DEVICE
                | VhostUserProtocolFeatures::SHMEM
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
            queue_num: 2,
            config: Vec::new(),
            reset_device_delay: Duration::ZERO,
            max_mem_slots: DEFAULT_MAX_MEM_SLOTS,
        }
    }
}

/// One guest memory region the frontend sent (`SET_MEM_TABLE` or `ADD_MEM_REG`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MemRegionRecord {
    /// Guest physical address.
    pub guest_phys_addr: u64,
    /// Size in bytes.
    pub memory_size: u64,
    /// The frontend's host virtual address of the region.
    pub userspace_addr: u64,
    /// Offset of the region in its file.
    pub mmap_offset: u64,
    /// Whether a file descriptor came with the region (vhost's parser refuses a memory table
    /// whose descriptor count does not match, so this is true for every accepted region).
    pub has_fd: bool,
}

impl From<&VhostUserMemoryRegion> for MemRegionRecord {
    fn from(r: &VhostUserMemoryRegion) -> Self {
        // The message structs are packed: copy the fields out.
        let (guest_phys_addr, memory_size, userspace_addr, mmap_offset) =
            (r.guest_phys_addr, r.memory_size, r.user_addr, r.mmap_offset);
        MemRegionRecord {
            guest_phys_addr,
            memory_size,
            userspace_addr,
            mmap_offset,
            has_fd: false,
        }
    }
}

/// The addresses of one vring (`SET_VRING_ADDR`), as the frontend sent them (host virtual
/// addresses unless GPA_ADDRESSES was negotiated).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VringAddrRecord {
    /// Vring address flags (bit 0: log dirty used ring).
    pub flags: u32,
    /// Descriptor table.
    pub desc: u64,
    /// Used ring.
    pub used: u64,
    /// Available ring.
    pub avail: u64,
    /// Dirty log address.
    pub log: u64,
}

/// What the frontend told the backend about one vring.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VringRecord {
    /// Queue size (`SET_VRING_NUM`), `None` until sent.
    pub num: Option<u32>,
    /// Ring addresses (`SET_VRING_ADDR`), `None` until sent.
    pub addr: Option<VringAddrRecord>,
    /// Next available index the frontend sent (`SET_VRING_BASE`). `GET_VRING_BASE` answers
    /// it moved past the requests taken since ([`TestBackendServer::pop_requests`]).
    pub base: u32,
    /// Whether the last `SET_VRING_KICK` came with a descriptor (false: none sent, or polling).
    pub kick: bool,
    /// Whether the last `SET_VRING_CALL` came with a descriptor.
    pub call: bool,
    /// Whether the last `SET_VRING_ERR` came with a descriptor.
    pub err: bool,
    /// Whether the last `SET_VRING_ENABLE` enabled the ring (false until one is sent; the
    /// spec's "enabled from the start without VHOST_USER_F_PROTOCOL_FEATURES" is not modelled).
    pub enabled: bool,
    /// Whether the ring is started: a `SET_VRING_KICK` came and no `GET_VRING_BASE` since.
    pub started: bool,
}

/// One `SET_CONFIG` request. The config space that `GET_CONFIG` reads is not changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SetConfigCall {
    /// Offset into the device config space.
    pub offset: u32,
    /// Bytes written.
    pub data: Vec<u8>,
    /// `VhostUserConfigFlags` bits.
    pub flags: u32,
}

/// A snapshot of what the frontend did, from [`TestBackendServer::state`] or
/// [`TestBackend::state`].
///
/// All fields but `connection` and `previous` are per connection: a new connection starts with
/// them empty, and the ones of earlier connections are kept in `previous`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestBackendState {
    /// Number of the connection these fields belong to: 1 for the first, 0 before any.
    pub connection: usize,
    /// Whether that connection is still being served.
    pub connected: bool,
    /// Whether `SET_OWNER` came (and no `RESET_OWNER` since).
    pub owner: bool,
    /// Virtio features of the last `SET_FEATURES`.
    pub acked_features: Option<u64>,
    /// Protocol features of the last `SET_PROTOCOL_FEATURES` (unknown bits kept).
    pub acked_protocol_features: Option<VhostUserProtocolFeatures>,
    /// The memory table: the regions of the last `SET_MEM_TABLE`, with `ADD_MEM_REG` /
    /// `REM_MEM_REG` applied.
    pub mem_table: Vec<MemRegionRecord>,
    /// One record per queue (`TestBackendConfig::queue_num` of them). `RESET_DEVICE` clears
    /// them.
    pub vrings: Vec<VringRecord>,
    /// Number of `RESET_DEVICE` requests.
    pub reset_device_count: usize,
    /// Every `SET_CONFIG`, in order.
    pub set_config_calls: Vec<SetConfigCall>,
    /// Whether `SET_BACKEND_REQ_FD` came (the backend channel exists).
    pub backend_channel: bool,
    /// Every request that reached the handler, in order, by its spec name (`"SET_OWNER"`, ...).
    /// Requests vhost's parser refused before the handler (say, `GET_QUEUE_NUM` without `MQ`
    /// acked) are only in `errors`.
    pub requests: Vec<&'static str>,
    /// Every refused request or protocol error, as text, in order.
    pub errors: Vec<String>,
    /// Every request taken from a vring ([`TestBackendServer::pop_requests`]), in order.
    pub popped: Vec<PoppedRequest>,
    /// The inflight area the last `GET_INFLIGHT_FD` handed out.
    pub get_inflight: Option<InflightRecord>,
    /// The inflight area the last `SET_INFLIGHT_FD` gave.
    pub set_inflight: Option<InflightRecord>,
    /// The per-connection state of every earlier connection, as it ended (their own `previous`
    /// is empty).
    pub previous: Vec<TestBackendState>,
}

impl TestBackendState {
    /// Whether `SET_PROTOCOL_FEATURES` acked all of `features`.
    pub fn protocol_acked(&self, features: VhostUserProtocolFeatures) -> bool {
        self.acked_protocol_features
            .is_some_and(|acked| acked.contains(features))
    }
}

/// The backend's state and request handler: vhost's [`BackendReqHandler`] calls it (through the
/// blanket `VhostUserBackendReqHandler` impl for `Mutex<T>`) for each request.
///
/// [`TestBackendServer`] serves one on a socket path; it can also be served by hand on a
/// connected socket with `BackendReqHandler::from_stream(sock, Arc::new(Mutex::new(backend)))`.
pub struct TestBackend {
    config: TestBackendConfig,
    state: TestBackendState,
    channel: Option<Backend>,
    shmem_sizes: Vec<u64>,
    /// The memory table's regions with their descriptors.
    memory: Vec<(MemRegionRecord, File)>,
    /// The vrings as the backend serves them.
    vrings: Vrings,
}

impl fmt::Debug for TestBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestBackend")
            .field("config", &self.config)
            .field("state", &self.state)
            .field("channel", &self.channel.is_some())
            .field("shmem_sizes", &self.shmem_sizes)
            .finish()
    }
}

impl TestBackend {
    /// A backend that answers from `config`, with nothing recorded.
    pub fn new(config: TestBackendConfig) -> Self {
        let mut backend = TestBackend {
            config,
            state: TestBackendState::default(),
            channel: None,
            shmem_sizes: Vec::new(),
            memory: Vec::new(),
            vrings: Vrings::default(),
        };
        backend.state.vrings = backend.fresh_vrings();
        backend.vrings = Vrings::new(backend.state.vrings.len());
        backend
    }

    /// The configuration it answers from.
    pub fn config(&self) -> &TestBackendConfig {
        &self.config
    }

    /// A snapshot of what was recorded.
    pub fn state(&self) -> TestBackendState {
        self.state.clone()
    }

    /// vhost's [`Backend`] on the backend channel of the current connection, once the frontend
    /// sent `SET_BACKEND_REQ_FD`. Its `REPLY_ACK` and `SHMEM` flags follow the acked protocol
    /// features.
    pub fn backend_channel(&self) -> Option<Backend> {
        self.channel.clone()
    }

    /// Sets the region sizes `GET_SHMEM_CONFIG` answers (region ids are the indices; at most
    /// 256). Default: none (`nregions` 0).
    pub fn set_shmem_sizes(&mut self, sizes: &[u64]) {
        self.shmem_sizes = sizes.iter().take(MAX_SHMEM_REGIONS).copied().collect();
    }

    /// Reads guest memory at `gpa` through the descriptor of the memory table region that holds
    /// all of `buf` (the backend's view of guest RAM, not the frontend's mapping).
    pub fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
        let (file, offset) = self.memory_at(gpa, buf.len())?;
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }

    /// Writes guest memory at `gpa` through the descriptor of the memory table region that holds
    /// all of `data`.
    pub fn write_memory(&self, gpa: u64, data: &[u8]) -> io::Result<()> {
        let (file, offset) = self.memory_at(gpa, data.len())?;
        std::os::unix::fs::FileExt::write_all_at(file, data, offset)
    }

    /// Takes every request now on vring `queue`, and holds each until [`TestBackend::complete`]:
    /// those resubmitted from the inflight area first, then the available ring's from where the
    /// ring is. Each is recorded in [`TestBackendState::popped`] and, with an inflight area, in
    /// flight there. Fails when the ring is not set up (size, addresses, memory table) or the
    /// guest's ring or a chain is broken.
    pub fn pop_requests(&mut self, queue: usize) -> io::Result<Vec<PoppedRequest>> {
        let ring = self.split_ring(queue)?;
        let popped = self.vrings.pop(queue, &ring, &self.memory)?;
        self.state.popped.extend(popped.iter().cloned());
        Ok(popped)
    }

    /// Completes the request `head` held on vring `queue` with `reply` written to its writable
    /// buffers (as much as fits): the used ring gets it, the inflight area forgets it, and the
    /// call eventfd is signalled. Returns the length written.
    pub fn complete(&mut self, queue: usize, head: u16, reply: &[u8]) -> io::Result<u32> {
        let ring = self.split_ring(queue)?;
        self.vrings
            .complete(queue, &ring, &self.memory, head, reply)
    }

    /// Vring `queue` at guest physical addresses: the frontend sent its host virtual addresses,
    /// translated through the memory table.
    fn split_ring(&self, queue: usize) -> io::Result<SplitRing> {
        let vring = self.state.vrings.get(queue);
        let (Some(num), Some(addr)) = (vring.and_then(|v| v.num), vring.and_then(|v| v.addr))
        else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("vring {queue} is not set up"),
            ));
        };
        let gpa = |va: u64| {
            self.state
                .mem_table
                .iter()
                .find(|r| va >= r.userspace_addr && va - r.userspace_addr < r.memory_size)
                .map(|r| GuestAddress(va - r.userspace_addr + r.guest_phys_addr))
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("no memory table region holds address {va:#x}"),
                    )
                })
        };
        Ok(SplitRing {
            desc: gpa(addr.desc)?,
            avail: gpa(addr.avail)?,
            used: gpa(addr.used)?,
            size: u16::try_from(num).unwrap_or(0),
        })
    }

    fn memory_at(&self, gpa: u64, len: usize) -> io::Result<(&File, u64)> {
        self.memory
            .iter()
            .find(|(r, _)| {
                gpa >= r.guest_phys_addr
                    && (gpa - r.guest_phys_addr)
                        .checked_add(len as u64)
                        .is_some_and(|end| end <= r.memory_size)
            })
            .map(|(r, f)| (f, r.mmap_offset + (gpa - r.guest_phys_addr)))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no memory table region holds {gpa:#x}+{len:#x}"),
                )
            })
    }

    fn fresh_vrings(&self) -> Vec<VringRecord> {
        let n = self.config.queue_num.min(VHOST_USER_MAX_VRINGS) as usize;
        vec![VringRecord::default(); n]
    }

    /// A new connection: the per-connection state of the last one goes to `previous`.
    fn begin_connection(&mut self) {
        let mut previous = std::mem::take(&mut self.state.previous);
        let connection = self.state.connection;
        if connection > 0 {
            previous.push(std::mem::take(&mut self.state));
        }
        self.state = TestBackendState {
            connection: connection + 1,
            connected: true,
            vrings: self.fresh_vrings(),
            previous,
            ..TestBackendState::default()
        };
        self.channel = None;
        self.memory.clear();
        self.vrings = Vrings::new(self.state.vrings.len());
    }

    /// The connection ended: its backend channel fails from now on (in every clone).
    fn end_connection(&mut self) {
        self.state.connected = false;
        self.memory.clear();
        // A backend that dies forgets the requests it held.
        self.vrings = Vrings::new(self.state.vrings.len());
        if let Some(channel) = self.channel.take() {
            channel.set_failed(libc::ECONNRESET);
        }
    }

    fn record_error(&mut self, error: &VhostUserError) {
        self.state.errors.push(error.to_string());
    }

    /// Records a refusal that vhost's parser answers but does not return to the server loop.
    fn refuse(&mut self, error: VhostUserError) -> VhostUserError {
        self.record_error(&error);
        error
    }

    fn request(&mut self, name: &'static str) {
        debug!("test backend: {name}");
        self.state.requests.push(name);
    }

    fn vring(&mut self, index: u32) -> VhostUserResult<&mut VringRecord> {
        self.state
            .vrings
            .get_mut(index as usize)
            .ok_or(VhostUserError::InvalidParam)
    }

    /// Protocol features this backend offers, as vhost's parser sends them.
    fn offered_protocol_features(&self) -> VhostUserProtocolFeatures {
        self.config.protocol_features | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn acked(&self, feature: VhostUserProtocolFeatures) -> bool {
        self.state.protocol_acked(feature)
    }

    fn apply_channel_flags(&self) {
        if let Some(channel) = &self.channel {
            channel.set_reply_ack_flag(self.acked(VhostUserProtocolFeatures::REPLY_ACK));
            channel.set_shmem_flag(self.acked(VhostUserProtocolFeatures::SHMEM));
            channel.set_shared_object_flag(self.acked(VhostUserProtocolFeatures::SHARED_OBJECT));
        }
    }
}

/// The error for requests this backend does not implement.
fn unsupported() -> VhostUserError {
    VhostUserError::ReqHandlerError(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// An empty memfd of `len` bytes.
fn memfd(name: &CStr, len: u64) -> io::Result<File> {
    // SAFETY: memfd_create reads a valid NUL-terminated string and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len)?;
    Ok(file)
}

impl VhostUserBackendReqHandlerMut for TestBackend {
    fn set_owner(&mut self) -> VhostUserResult<()> {
        self.request("SET_OWNER");
        if self.state.owner {
            return Err(VhostUserError::InvalidOperation("already owned"));
        }
        self.state.owner = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostUserResult<()> {
        self.request("RESET_OWNER");
        self.state.owner = false;
        Ok(())
    }

    fn reset_device(&mut self) -> VhostUserResult<()> {
        self.request("RESET_DEVICE");
        thread::sleep(self.config.reset_device_delay);
        self.state.reset_device_count += 1;
        self.state.vrings = self.fresh_vrings();
        self.vrings = Vrings::new(self.state.vrings.len());
        Ok(())
    }

    fn get_features(&mut self) -> VhostUserResult<u64> {
        self.request("GET_FEATURES");
        Ok(self.config.features)
    }

    fn set_features(&mut self, features: u64) -> VhostUserResult<()> {
        self.request("SET_FEATURES");
        self.state.acked_features = Some(features);
        if features & !self.config.features != 0 {
            return Err(VhostUserError::InvalidParam);
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VhostUserResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        self.request("SET_MEM_TABLE");
        self.state.mem_table = ctx
            .iter()
            .enumerate()
            .map(|(i, r)| MemRegionRecord {
                has_fd: i < files.len(),
                ..MemRegionRecord::from(r)
            })
            .collect();
        self.memory = self.state.mem_table.iter().copied().zip(files).collect();
        self.vrings.forget_memory();
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostUserResult<()> {
        self.request("SET_VRING_NUM");
        self.vring(index)?.num = Some(num);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        log: u64,
    ) -> VhostUserResult<()> {
        self.request("SET_VRING_ADDR");
        self.vring(index)?.addr = Some(VringAddrRecord {
            flags: flags.bits(),
            desc: descriptor,
            used,
            avail: available,
            log,
        });
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostUserResult<()> {
        self.request("SET_VRING_BASE");
        self.vring(index)?.base = base;
        self.vrings.set_base(index as usize, base as u16);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostUserResult<VhostUserVringState> {
        self.request("GET_VRING_BASE");
        // A failed GET gets no reply at all from vhost's parser: answer 0 and record the error.
        match self.vring(index) {
            Ok(vring) => {
                vring.started = false;
                let base = vring.base;
                let next = self.vrings.next_avail(index as usize).map(u32::from);
                Ok(VhostUserVringState::new(index, next.unwrap_or(base)))
            }
            Err(e) => {
                self.record_error(&e);
                Ok(VhostUserVringState::new(index, 0))
            }
        }
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        self.request("SET_VRING_KICK");
        let vring = self.vring(index.into())?;
        vring.kick = fd.is_some();
        vring.started = true;
        // With an inflight area, the ring's start settles it and queues what it holds.
        if self.vrings.tracks(index.into()) {
            let started = self
                .split_ring(index.into())
                .and_then(|ring| self.vrings.start(index.into(), &ring, &self.memory));
            if let Err(e) = started {
                self.record_error(&VhostUserError::ReqHandlerError(e));
            }
        }
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        self.request("SET_VRING_CALL");
        self.vring(index.into())?.call = fd.is_some();
        self.vrings.set_call(index.into(), fd);
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        self.request("SET_VRING_ERR");
        self.vring(index.into())?.err = fd.is_some();
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VhostUserResult<VhostUserProtocolFeatures> {
        self.request("GET_PROTOCOL_FEATURES");
        Ok(self.config.protocol_features)
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostUserResult<()> {
        self.request("SET_PROTOCOL_FEATURES");
        self.state.acked_protocol_features =
            Some(VhostUserProtocolFeatures::from_bits_retain(features));
        self.apply_channel_flags();
        if features & !self.offered_protocol_features().bits() != 0 {
            return Err(VhostUserError::InvalidParam);
        }
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostUserResult<u64> {
        self.request("GET_QUEUE_NUM");
        Ok(self.config.queue_num)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostUserResult<()> {
        self.request("SET_VRING_ENABLE");
        self.vring(index)?.enabled = enable;
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostUserResult<Vec<u8>> {
        self.request("GET_CONFIG");
        // vhost's parser answers a failure with an empty payload, but vhost's Frontend then waits
        // for the payload it asked for and never returns. So bytes past the end of the config
        // space read as zeros, and the read is recorded as an error.
        let start = offset as usize;
        let end = start + size as usize;
        let len = self.config.config.len();
        if end > len {
            self.record_error(&VhostUserError::ReqHandlerError(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("GET_CONFIG of {start:#x}..{end:#x} past the end of the {len:#x}-byte config space"),
            )));
        }
        let mut bytes = vec![0u8; size as usize];
        if let Some(available) = self.config.config.get(start..) {
            let n = available.len().min(bytes.len());
            bytes[..n].copy_from_slice(&available[..n]);
        }
        Ok(bytes)
    }

    fn set_config(
        &mut self,
        offset: u32,
        buf: &[u8],
        flags: VhostUserConfigFlags,
    ) -> VhostUserResult<()> {
        self.request("SET_CONFIG");
        self.state.set_config_calls.push(SetConfigCall {
            offset,
            data: buf.to_vec(),
            flags: flags.bits(),
        });
        Ok(())
    }

    fn set_backend_req_fd(&mut self, backend: Backend) {
        self.request("SET_BACKEND_REQ_FD");
        if let Some(old) = self.channel.replace(backend) {
            old.set_failed(libc::ECONNRESET);
        }
        self.apply_channel_flags();
        self.state.backend_channel = true;
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VhostUserResult<()> {
        self.request("GPU_SET_SOCKET");
        Err(unsupported())
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VhostUserResult<File> {
        // vhost's parser answers a failure with a reply without descriptor, and does not return
        // it.
        self.request("GET_SHARED_OBJECT");
        Err(self.refuse(unsupported()))
    }

    fn get_inflight_fd(
        &mut self,
        inflight: &VhostUserInflight,
    ) -> VhostUserResult<(VhostUserInflight, File)> {
        self.request("GET_INFLIGHT_FD");
        // A failed GET gets no reply: always hand out an area, zeroed (version 0: never used),
        // of the specification's split-ring layout.
        let size =
            (u64::from(inflight.num_queues) * inflight_queue_region(inflight.queue_size)).max(4096);
        let file =
            memfd(c"vfd-test-backend-inflight", size).map_err(VhostUserError::ReqHandlerError)?;
        let info = VhostUserInflight {
            mmap_size: size,
            mmap_offset: 0,
            num_queues: inflight.num_queues,
            queue_size: inflight.queue_size,
        };
        self.state.get_inflight = InflightRecord::new(&info, &file).ok();
        Ok((info, file))
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VhostUserResult<()> {
        self.request("SET_INFLIGHT_FD");
        let record =
            InflightRecord::new(inflight, &file).map_err(VhostUserError::ReqHandlerError)?;
        let needed = u64::from(record.num_queues) * inflight_queue_region(record.queue_size);
        let len = file
            .metadata()
            .map_err(VhostUserError::ReqHandlerError)?
            .len();
        if record.mmap_size < needed || record.mmap_offset.saturating_add(needed) > len {
            return Err(self.refuse(VhostUserError::InvalidParam));
        }
        self.state.set_inflight = Some(record);
        self.vrings.set_inflight(record, file);
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> VhostUserResult<u64> {
        self.request("GET_MAX_MEM_SLOTS");
        Ok(self.config.max_mem_slots)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VhostUserResult<Option<VhostUserMemoryRegionBase>> {
        self.request("ADD_MEM_REG");
        let record = MemRegionRecord {
            has_fd: true,
            ..MemRegionRecord::from(&**region)
        };
        self.state.mem_table.push(record);
        self.memory.push((record, fd));
        self.vrings.forget_memory();
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VhostUserResult<()> {
        self.request("REM_MEM_REG");
        let gone = MemRegionRecord::from(&**region);
        let before = self.state.mem_table.len();
        let key = |r: &MemRegionRecord| (r.guest_phys_addr, r.memory_size);
        self.state.mem_table.retain(|r| key(r) != key(&gone));
        self.memory.retain(|(r, _)| key(r) != key(&gone));
        self.vrings.forget_memory();
        if self.state.mem_table.len() == before {
            return Err(VhostUserError::InvalidParam);
        }
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VhostUserResult<Option<File>> {
        // vhost's parser answers a failure with an error value, and does not return it.
        self.request("SET_DEVICE_STATE_FD");
        Err(self.refuse(unsupported()))
    }

    fn check_device_state(&mut self) -> VhostUserResult<()> {
        // Same as SET_DEVICE_STATE_FD.
        self.request("CHECK_DEVICE_STATE");
        Err(self.refuse(unsupported()))
    }

    fn get_shmem_config(&mut self) -> VhostUserResult<VhostUserShMemConfig> {
        self.request("GET_SHMEM_CONFIG");
        Ok(VhostUserShMemConfig::new(
            self.shmem_sizes.len() as u32,
            &self.shmem_sizes,
        ))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VhostUserResult<()> {
        // vhost's parser sends no reply when this fails.
        self.request("SET_LOG_BASE");
        Ok(())
    }
}

/// Whether an error of `handle_request` means the connection is gone (rather than one request
/// refused).
fn connection_lost(error: &VhostUserError) -> bool {
    matches!(
        error,
        VhostUserError::Disconnected
            | VhostUserError::PartialMessage
            | VhostUserError::SocketBroken(_)
            | VhostUserError::SocketError(_)
            | VhostUserError::SocketRetry(_)
    )
}

/// What the server and its thread share.
#[derive(Debug)]
struct Shared {
    backend: Arc<Mutex<TestBackend>>,
    stop: AtomicBool,
    /// A clone of the socket of the connection being served, to shut it down.
    current: Mutex<Option<UnixStream>>,
}

impl Shared {
    fn backend(&self) -> MutexGuard<'_, TestBackend> {
        self.backend.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> MutexGuard<'_, Option<UnixStream>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shuts the current connection down, if there is one: its `handle_request` returns.
    fn shutdown_current(&self) {
        if let Some(sock) = self.current().as_ref() {
            if let Err(e) = sock.shutdown(Shutdown::Both) {
                debug!("test backend: shutting the connection down: {e}");
            }
        }
    }
}

/// A [`TestBackend`] served on a unix socket path by a thread of its own. See the module
/// documentation.
///
/// Connections are served one after the other: a frontend that connects while another is
/// served waits in the listen backlog. Dropping the server stops and joins the thread and
/// removes the socket path.
#[derive(Debug)]
pub struct TestBackendServer {
    shared: Arc<Shared>,
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl TestBackendServer {
    /// Binds `socket_path` (removing a stale file there first) and serves it on a new thread.
    /// The socket is listening when this returns, so a frontend can connect right away.
    pub fn start(socket_path: &Path, config: TestBackendConfig) -> io::Result<TestBackendServer> {
        let listener = Listener::new(socket_path, true).map_err(io_error)?;
        listener.set_nonblocking(true).map_err(io_error)?;
        let shared = Arc::new(Shared {
            backend: Arc::new(Mutex::new(TestBackend::new(config))),
            stop: AtomicBool::new(false),
            current: Mutex::new(None),
        });
        let thread = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("vfd-test-backend".into())
                .spawn(move || run(listener, &shared))?
        };
        info!("test backend: listening on {}", socket_path.display());
        Ok(TestBackendServer {
            shared,
            path: socket_path.to_owned(),
            thread: Some(thread),
        })
    }

    /// The socket path it listens on.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// A snapshot of what the frontend did.
    pub fn state(&self) -> TestBackendState {
        self.shared.backend().state()
    }

    /// Polls the state every few milliseconds until `pred` holds (true) or `timeout` passes
    /// (false). The frontend's requests are handled on the server thread, so a test waits for
    /// their effect rather than reading the state right after sending them.
    pub fn wait_for(&self, pred: impl Fn(&TestBackendState) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.state()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL);
        }
    }

    /// vhost's [`Backend`] on the backend channel of the current connection, once the frontend
    /// sent `SET_BACKEND_REQ_FD`: send `shmem_map` / `shmem_unmap` with it
    /// (`vhost::vhost_user::VhostUserFrontendReqHandler`). Its `REPLY_ACK` and `SHMEM` flags
    /// follow the acked protocol features, so without SHMEM acked vhost refuses to send the
    /// requests.
    ///
    /// When the connection ends, the backend channel fails in every clone, but its socket is
    /// only closed (and the frontend's end only sees the disconnect) once every clone is
    /// dropped.
    pub fn backend_channel(&self) -> Option<Backend> {
        self.shared.backend().backend_channel()
    }

    /// Reads guest memory as the backend sees it ([`TestBackend::read_memory`]): through the
    /// descriptors of the current connection's memory table.
    pub fn read_memory(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
        self.shared.backend().read_memory(gpa, buf)
    }

    /// Writes guest memory as the backend would ([`TestBackend::write_memory`]).
    pub fn write_memory(&self, gpa: u64, data: &[u8]) -> io::Result<()> {
        self.shared.backend().write_memory(gpa, data)
    }

    /// Takes every request now on vring `queue` of the current connection and holds it
    /// ([`TestBackend::pop_requests`]).
    pub fn pop_requests(&self, queue: usize) -> io::Result<Vec<PoppedRequest>> {
        self.shared.backend().pop_requests(queue)
    }

    /// Completes a held request with `reply` ([`TestBackend::complete`]).
    pub fn complete(&self, queue: usize, head: u16, reply: &[u8]) -> io::Result<u32> {
        self.shared.backend().complete(queue, head, reply)
    }

    /// Number of connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.backend().state.connection
    }

    /// Sets the region sizes `GET_SHMEM_CONFIG` answers (see [`TestBackend::set_shmem_sizes`]).
    pub fn set_shmem_sizes(&self, sizes: &[u64]) {
        self.shared.backend().set_shmem_sizes(sizes);
    }

    /// Shuts the current connection's socket down, as if the backend died: the frontend's next
    /// request fails and the server goes back to accepting. Does nothing without a connection.
    pub fn disconnect(&self) {
        self.shared.shutdown_current();
    }
}

impl Drop for TestBackendServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.shutdown_current();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                warn!("test backend: the server thread panicked");
            }
        }
    }
}

fn io_error(e: VhostUserError) -> io::Error {
    match e {
        VhostUserError::SocketError(e) | VhostUserError::SocketConnect(e) => e,
        e => io::Error::other(e),
    }
}

/// The server thread: accept, serve until the connection ends, repeat until stopped.
fn run(mut listener: Listener, shared: &Shared) {
    loop {
        let Some(mut handler) = accept(&mut listener, shared) else {
            return;
        };
        let sock = match handler.try_clone_connection() {
            Ok(sock) => sock,
            Err(e) => {
                warn!("test backend: cloning the connection: {e}");
                continue;
            }
        };
        // Linux does not pass the listener's O_NONBLOCK on, but be sure: the handler blocks.
        if let Err(e) = sock.set_nonblocking(false) {
            warn!("test backend: making the connection blocking: {e}");
        }
        {
            // Under the lock, so that a concurrent drop either sees this connection or this
            // thread sees its stop flag.
            let mut current = shared.current();
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            *current = Some(sock);
        }
        let connection = {
            let mut backend = shared.backend();
            backend.begin_connection();
            backend.state.connection
        };
        info!("test backend: connection {connection} accepted");
        serve(&mut handler, shared);
        *shared.current() = None;
        shared.backend().end_connection();
        info!("test backend: connection {connection} ended");
    }
}

/// Waits for a connection; `None` once the server is stopped.
fn accept(
    listener: &mut Listener,
    shared: &Shared,
) -> Option<BackendReqHandler<Mutex<TestBackend>>> {
    // vhost's BackendListener hands its backend to the first connection it accepts, and panics
    // on a second accept: make one per connection.
    let mut backend_listener = match BackendListener::new(listener, shared.backend.clone()) {
        Ok(l) => l,
        Err(e) => {
            warn!("test backend: {e}");
            return None;
        }
    };
    while !shared.stop.load(Ordering::SeqCst) {
        match backend_listener.accept() {
            Ok(Some(handler)) => return Some(handler),
            Ok(None) => thread::sleep(POLL),
            Err(e) => {
                warn!("test backend: accept: {e}");
                thread::sleep(POLL);
            }
        }
    }
    None
}

/// Handles requests until the connection is lost. Refused requests are recorded and serving
/// goes on.
fn serve(handler: &mut BackendReqHandler<Mutex<TestBackend>>, shared: &Shared) {
    loop {
        match handler.handle_request() {
            Ok(()) => {}
            Err(VhostUserError::Disconnected) => return,
            Err(e) if connection_lost(&e) => {
                debug!("test backend: connection lost: {e}");
                return;
            }
            Err(e) => {
                debug!("test backend: request refused: {e}");
                shared.backend().record_error(&e);
            }
        }
    }
}
