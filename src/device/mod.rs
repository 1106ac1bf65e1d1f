// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-fs device: [`Fs`], whose queues are served by a vhost-user backend and whose DAX
//! window is this crate's [`DaxWindow`].
//!
//! # Wiring it into a VMM
//!
//! 1. Build it: [`Fs::builder`] with the tag, queue count and size, backend socket, window size
//!    (0 for no DAX), dialect and policies. Bad configuration is a typed [`Error`]. A VMM whose
//!    device manager reserves device memory itself (cloud-hypervisor's cache region) hands that
//!    region in instead of a size: [`DaxWindow::from_reservation`] and [`FsBuilder::window`].
//! 2. [`Fs::connect`] before the guest can see the device, so [`Fs::features`] can
//!    offer what the backend supports (EVENT_IDX, INDIRECT_DESC), and so the device knows whether
//!    the backend can serve the window before the guest probes it: with
//!    [`DaxFallback::Disable`] a backend that cannot (virtiofsd 1.14) gets a device without a
//!    window ([`Fs::window_offered`]), with [`DaxFallback::Fail`] `connect` fails. Without
//!    `connect`, only `VIRTIO_F_VERSION_1` is offered, activation connects, and the window is
//!    offered whatever the backend.
//! 3. Expose shared memory region 0 ([`Fs::shm_regions`], empty when there is no
//!    window) through the transport: a PCI BAR with [`crate::transport::shm_pci_cap`], or the
//!    MMIO SHM registers ([`crate::transport::MmioShmRegs`]). Allocate its guest address
//!    ([`crate::transport::WINDOW_ALIGNMENT`] aligned; `transport::window_resource_constraint`
//!    with feature `vm-device`), then call [`Fs::set_shm_base`]:
//!    the device registers the window through the VMM's [`MemoryManager`] (and again on every
//!    BAR move). A VMM that makes the memory slot itself (cloud-hypervisor's device manager)
//!    builds the device without a memory manager and only tells it where the window is.
//! 4. On `DRIVER_OK`, [`Fs::activate`] with the VMM's guest memory (a
//!    `GuestMemoryAtomic<GuestMemoryMmap<B>>` with whatever dirty bitmap `B` it tracks), the
//!    interrupt (any [`VirtioInterrupt`], a closure included) and the queues with their kick and
//!    call eventfds. On device reset, [`Fs::reset`]: it
//!    stops the backend channel thread, then drops every mapping (a new window generation: no
//!    request of the old session can map again), then sends `RESET_DEVICE`, each step bounded
//!    by [`FsBuilder::shutdown_timeout`].
//! 5. Watch [`Fs::backend_fd`] for a hangup and call [`Fs::check_backend`]: when the backend is
//!    gone its mappings are dropped (the backend channel also drops them by itself the moment a
//!    killed backend's end closes); call [`Fs::reconnect`] once it is back.
//!
//! A VMM with its own device trait implements it by forwarding to these inherent methods, a few
//! lines a method: cloud-hypervisor's `VirtioDevice` maps onto them one for one (`activate`
//! with an `ActivationContext`, `get_shm_regions`/`set_shm_regions` with the region its device
//! manager reserved, `userspace_mappings`, `counters`, `Pausable`, `Snapshottable`), although
//! cloud-hypervisor itself, which has a vhost-user virtio-fs device of its own, takes only the
//! window and the backend channel (the repository's `integrations/cloud-hypervisor`).
//! Firecracker's trait maps the same way (its features as
//! `avail_features`/`set_acked_features`, its `activate` with a plain
//! `GuestMemoryMmap<Option<AtomicBitmap>>`: wrap it in `GuestMemoryAtomic::new`). In all three of
//! cloud-hypervisor's, Firecracker's and crosvm's traits `ack_features` and `write_config`
//! return nothing, and so do these: an unoffered feature or a write to the read-only
//! configuration is the guest's doing, which the device counts
//! ([`FsMetrics::driver_mistakes`]), logs the first few times, and ignores.
//!
//! A transport whose driver turns the BAR's memory decoding off takes the window out of the
//! guest's address space with [`Fs::clear_shm_base`] and puts it back with [`Fs::set_shm_base`].
//! For snapshot and migration, [`Fs::pause`] and [`Fs::resume`]; for the VMM's metrics,
//! [`Fs::counters`]; for memory hotplug, [`Fs::add_memory_region`] and
//! [`Fs::remove_memory_region`].
//!
//! # Example
//!
//! End to end against the in-process backend of the `test-utils` feature (a real vhost-user
//! peer; with virtiofsd, point `socket_path` at its `--socket-path`):
//!
//! ```
//! # #[cfg(feature = "test-utils")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use virtio_fs_dax::device::{ActivateQueue, VirtioInterrupt, VirtioInterruptType};
//! use virtio_fs_dax::test_utils::{FakeMemoryManager, TestBackendConfig, TestBackendServer};
//! use virtio_fs_dax::Fs;
//! use virtio_queue::{Queue, QueueT};
//! use vm_memory::{FileOffset, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
//! use vmm_sys_util::eventfd::EventFd;
//! # let dir = tempfile::tempdir()?;
//! # let socket = dir.path().join("fs.sock");
//! # let backend = TestBackendServer::start(&socket, TestBackendConfig::default())?;
//! # struct Irq;
//! # impl VirtioInterrupt for Irq {
//! #     fn trigger(&self, _: VirtioInterruptType) -> std::io::Result<()> { Ok(()) }
//! # }
//! let memory_manager = Arc::new(FakeMemoryManager::new()); // the VMM's, in real life
//! let mut fs = Fs::builder("myfs")
//!     .socket_path(&socket)
//!     .window_size(64 << 20)
//!     .queue_size(256)
//!     .memory_manager(memory_manager.clone())
//!     .build()?;
//! fs.connect()?;                        // so features() reflects the backend
//! fs.set_shm_base(0, 1 << 34)?;         // the BAR's address: registers the window
//! assert_eq!(memory_manager.live().len(), 1);
//!
//! // The driver negotiates ...
//! fs.ack_features(fs.features());
//! // ... with guest RAM that is file backed (vhost-user shares it with the backend) ...
//! let ram = tempfile::tempfile()?;
//! ram.set_len(32 << 20)?;
//! let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
//!     GuestAddress(0),
//!     32 << 20,
//!     Some(FileOffset::new(ram, 0)),
//! )])?;
//! // ... and two queues (high priority + one request queue) with their eventfds.
//! let queues = (0..2)
//!     .map(|index| {
//!         let mut queue = Queue::new(256)?;
//!         let base = (1u64 << 20) * (index as u64 + 1);
//!         queue.set_desc_table_address(Some(base as u32), Some(0));
//!         queue.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
//!         queue.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
//!         queue.set_ready(true);
//!         let kick = EventFd::new(0)?;
//!         let call = EventFd::new(0)?;
//!         Ok(ActivateQueue { index, queue, kick, call })
//!     })
//!     .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?;
//! fs.activate(GuestMemoryAtomic::new(mem), Arc::new(Irq), queues)?;
//! assert!(fs.session().unwrap().negotiated().dax);
//! # assert!(backend.wait_for(|s| s.backend_channel, std::time::Duration::from_secs(5)));
//!
//! // Device reset: mappings dropped, backend reset, window still registered.
//! fs.reset();
//! drop(fs);                             // the memory slot goes first, then the window
//! assert!(memory_manager.live().is_empty());
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "test-utils"))]
//! # fn main() {}
//! ```

mod builder;
mod control;
mod error;
mod inflight;
mod interrupt;
mod queue;
mod shm;
mod snapshot;

pub use builder::FsBuilder;
pub use error::{Error, Result};
pub use interrupt::{VirtioInterrupt, VirtioInterruptType};
pub use queue::ActivateQueue;
pub use shm::{SharedMemoryRegion, UserspaceMapping};
pub use snapshot::FsSnapshot;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use crate::frontend::{
    self, Connection, DaxFallback, InflightRegion, Session, SessionConfig, VringSetup,
};
use crate::io::IoSpace;
use crate::memory::{MemoryManager, WindowRegion};
use crate::metrics::FsMetrics;
use crate::ring::{OutOfMemory, SplitRing};

use crate::transport::{self, VirtioFsConfig, VIRTIO_FS_SHMCAP_ID_CACHE, VIRTIO_ID_FS};
use crate::window::DaxWindow;

/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Largest queue size (split virtqueue).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// How many driver mistakes a device logs before it only counts them.
const LOGGED_DRIVER_MISTAKES: u64 = 8;
/// Most request queues a device may have.
pub const MAX_REQUEST_QUEUES: u32 = 64;

/// The guest memory a device was activated with, whatever its dirty bitmap type: what a session
/// needs of it (the memory table, the queues' host addresses, the used rings).
trait ActiveMemory: Send + Sync {
    /// Where the backend resumes `queue`: its used ring's index.
    fn used_idx(&self, queue: &Queue) -> Option<u16>;

    /// Checks the memory and the rings before a session is started
    /// ([`frontend::check_guest_input`]).
    fn check(&self, vrings: &[VringSetup<'_>]) -> frontend::Result<()>;

    /// Returns the requests in flight on `queue` to the guest with `EIO`
    /// ([`inflight::fail_in_flight`]).
    fn fail_in_flight(&self, queue: &Queue) -> std::result::Result<inflight::Failed, OutOfMemory>;

    /// Starts a session over this memory ([`Session::start`]).
    #[allow(clippy::too_many_arguments)]
    fn start_session(
        &self,
        conn: Connection,
        cfg: &SessionConfig,
        acked: u64,
        vrings: &[VringSetup<'_>],
        window: Option<&Arc<DaxWindow>>,
        io: &Arc<IoSpace>,
        inflight: &mut Option<InflightRegion>,
    ) -> frontend::Result<Session>;
}

impl<B: Bitmap + Send + Sync + 'static> ActiveMemory for GuestMemoryAtomic<GuestMemoryMmap<B>> {
    fn used_idx(&self, queue: &Queue) -> Option<u16> {
        queue
            .used_idx(&*self.memory(), Ordering::Acquire)
            .ok()
            .map(|w| w.0)
    }

    fn check(&self, vrings: &[VringSetup<'_>]) -> frontend::Result<()> {
        frontend::check_guest_input(&self.memory(), vrings)
    }

    fn fail_in_flight(&self, queue: &Queue) -> std::result::Result<inflight::Failed, OutOfMemory> {
        let ring = SplitRing {
            desc: GuestAddress(queue.desc_table()),
            avail: GuestAddress(queue.avail_ring()),
            used: GuestAddress(queue.used_ring()),
            size: queue.size(),
        };
        inflight::fail_in_flight(&*self.memory(), &ring, libc::EIO)
    }

    fn start_session(
        &self,
        conn: Connection,
        cfg: &SessionConfig,
        acked: u64,
        vrings: &[VringSetup<'_>],
        window: Option<&Arc<DaxWindow>>,
        io: &Arc<IoSpace>,
        inflight: &mut Option<InflightRegion>,
    ) -> frontend::Result<Session> {
        Session::start(
            conn,
            cfg,
            acked,
            &self.memory(),
            vrings,
            window,
            io,
            inflight,
        )
    }
}

/// The queues as a session hands them to the backend, each starting at `bases[i]`.
fn vring_setups<'a>(queues: &'a [ActivateQueue], bases: &[u16]) -> Vec<VringSetup<'a>> {
    queues
        .iter()
        .zip(bases)
        .map(|(q, &base)| VringSetup {
            index: q.index,
            size: q.queue.size(),
            desc_table: q.queue.desc_table(),
            avail_ring: q.queue.avail_ring(),
            used_ring: q.queue.used_ring(),
            base,
            kick: &q.kick,
            call: &q.call,
        })
        .collect()
}

/// Where a restarted backend starts on each queue, once the requests the lost backend left in
/// flight are dealt with.
///
/// - The lost backend kept an inflight region and the new one offers `INFLIGHT_SHMFD`: the
///   session hands it the region, the backend resubmits what the region says is in flight and
///   goes on after it; the base is the used index, as QEMU sends it (libvhost-user and DPDK
///   start at the used index plus the requests they resubmit).
/// - Otherwise: every chain between the used and the available index is returned to the guest
///   with `EIO` ([`inflight`]), the driver is signalled on the queue's call eventfd, and the
///   backend starts at the available index. The region, if any, goes: it describes requests that
///   were just failed.
fn resume_bases(
    name: &str,
    metrics: &FsMetrics,
    mem: &dyn ActiveMemory,
    queues: &[ActivateQueue],
    region: &mut Option<InflightRegion>,
    conn: &Connection,
) -> Vec<u16> {
    let offered = conn
        .backend_protocol_features()
        .is_some_and(|p| p.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD));
    if offered && region.is_some() {
        log::info!("{name}: the backend resubmits the requests in flight (inflight region)");
        return queues
            .iter()
            .map(|q| mem.used_idx(&q.queue).unwrap_or(q.queue.next_avail()))
            .collect();
    }
    *region = None;
    let (mut failed, mut malformed, mut stale, mut broken) = (0, 0, 0, 0);
    let bases = queues
        .iter()
        .map(|q| {
            if !q.queue.ready() {
                // A queue the driver never enabled has no requests (and maybe no rings).
                return q.queue.next_avail();
            }
            match mem.fail_in_flight(&q.queue) {
                Ok(f) => {
                    if f.failed > 0 {
                        if let Err(e) = q.call.write(1) {
                            log::debug!("{name}: signalling queue {}: {e}", q.index);
                        }
                    }
                    failed += f.failed;
                    malformed += f.malformed;
                    stale += f.stale;
                    broken += u64::from(f.inconsistent);
                    f.next_avail
                }
                Err(OutOfMemory) => {
                    broken += 1;
                    q.queue.next_avail()
                }
            }
        })
        .collect();
    FsMetrics::add(&metrics.inflight_failed, failed);
    FsMetrics::add(&metrics.inflight_malformed, malformed);
    FsMetrics::add(&metrics.inflight_stale, stale);
    if failed + stale + broken > 0 {
        log::warn!(
            "{name}: the lost backend kept no inflight region: {failed} requests in flight \
             returned to the guest with EIO ({malformed} malformed), {stale} it had completed \
             out of order left alone, {broken} queues with inconsistent rings left alone"
        );
    }
    bases
}

struct Active {
    mem: Box<dyn ActiveMemory>,
    interrupt: Arc<dyn VirtioInterrupt>,
    queues: Vec<ActivateQueue>,
    io: Arc<IoSpace>,
    /// The backend's inflight region (`INFLIGHT_SHMFD`), kept across its restarts; discarded
    /// with the activation.
    inflight: Option<InflightRegion>,
}

/// The virtio-fs device. See the module documentation for how a VMM wires it.
pub struct Fs {
    session_cfg: SessionConfig,
    config: VirtioFsConfig,
    queue_sizes: Vec<u16>,
    window: Option<Arc<DaxWindow>>,
    window_gpa: Option<u64>,
    memory: Option<Arc<dyn MemoryManager>>,
    io: Option<Arc<IoSpace>>,
    metrics: Arc<FsMetrics>,
    conn: Option<Connection>,
    session: Option<Session>,
    active: Option<Active>,
    acked_features: u64,
    /// Set when connect withdrew the window: the protocol features the backend lacked.
    withdrawn: Option<VhostUserProtocolFeatures>,
    /// The guest may know the window (the device was activated, or restored): from then on the
    /// window is never withdrawn.
    window_seen: bool,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("name", &self.session_cfg.name)
            .field("queue_sizes", &self.queue_sizes)
            .field("window", &self.window)
            .field("window_gpa", &self.window_gpa)
            .field("session", &self.session)
            .field("activated", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Fs {
    /// The tag the guest mounts, as given to [`Fs::builder`].
    pub fn tag(&self) -> &str {
        // The builder took the tag from a `String`, so it is UTF-8.
        std::str::from_utf8(self.config.tag()).unwrap_or_default()
    }

    /// The device's counters (the window's included).
    pub fn metrics(&self) -> &Arc<FsMetrics> {
        &self.metrics
    }

    /// The DAX window, if the device has one.
    pub fn window(&self) -> Option<&Arc<DaxWindow>> {
        self.window.as_ref()
    }

    /// The vhost-user session, once activated.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Connects to the backend now (`SET_OWNER`, `GET_FEATURES`, `GET_PROTOCOL_FEATURES`), so
    /// that [`Fs::features`] offers what it supports, and decides whether the device
    /// offers its DAX window: call it before the guest can see the device (its driver reads the
    /// shared memory regions when it probes, long before activation). Activation connects if
    /// this was not called, and then the window is offered whatever the backend.
    ///
    /// When the device has a window and the backend cannot serve it in the configured dialect
    /// ([`Connection::dax_missing`]: it lacks `SHMEM`, or the backend channel, or `REPLY_ACK`):
    ///
    /// - [`DaxFallback::Fail`]: fails with [`frontend::Error::DaxUnsupported`] (in
    ///   [`Error::Session`]) and closes the connection.
    /// - [`DaxFallback::Disable`]: the window is withdrawn for the life of the device, and
    ///   `connect` succeeds. [`Fs::shm_regions`] and
    ///   [`Fs::userspace_mappings`] are empty, [`Fs::window`] is `None`,
    ///   [`Fs::window_offered`] is false; a window already placed with
    ///   [`Fs::set_shm_base`] is unregistered from the [`MemoryManager`] and the IO
    ///   space, and a later `set_shm_base` fails with [`Error::WindowWithdrawn`]. Should the
    ///   memory manager refuse to unregister it, `connect` fails with [`Error::Memory`], the
    ///   window stays, and calling `connect` again retries.
    ///
    /// Once the device was activated (or restored) the guest may know the window, so it is never
    /// withdrawn again: see [`Fs::reconnect`].
    ///
    /// # Example
    ///
    /// ```
    /// # #[cfg(feature = "test-utils")]
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use vhost::vhost_user::VhostUserProtocolFeatures as P;
    /// use virtio_fs_dax::frontend::DaxFallback;
    /// use virtio_fs_dax::test_utils::{TestBackendConfig, TestBackendServer};
    /// use virtio_fs_dax::Fs;
    ///
    /// # let dir = tempfile::tempdir()?;
    /// # let socket = dir.path().join("fs.sock");
    /// // A backend without SHMEM, like virtiofsd 1.14.
    /// let config = TestBackendConfig {
    ///     protocol_features: TestBackendConfig::default().protocol_features - P::SHMEM,
    ///     ..TestBackendConfig::default()
    /// };
    /// let _backend = TestBackendServer::start(&socket, config)?;
    /// let mut fs = Fs::builder("myfs")
    ///     .socket_path(&socket)
    ///     .window_size(64 << 20)
    ///     .dax_fallback(DaxFallback::Disable)
    ///     .build()?;
    /// assert!(fs.window_offered());
    /// fs.connect()?;
    /// // Decided before the guest sees anything: no window to expose.
    /// assert!(!fs.window_offered());
    /// assert!(fs.shm_regions().is_empty());
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "test-utils"))]
    /// # fn main() {}
    /// ```
    pub fn connect(&mut self) -> Result<()> {
        if self.conn.is_none() && self.session.is_none() {
            let conn = Connection::open(&self.session_cfg, self.queue_sizes.len() as u64)
                .map_err(Error::Session)?;
            self.conn = Some(conn);
        }
        self.decide_window()
    }

    /// Whether the device offers its DAX window to the guest (shared memory region 0 in
    /// [`Fs::shm_regions`]). True when the device was built with a window, until
    /// [`Fs::connect`] withdraws it ([`DaxFallback::Disable`] with a backend that cannot serve
    /// it); then false for the life of the device, whatever backend comes later.
    ///
    /// This is decided at connect and says what the guest sees; whether the current session
    /// serves the window is [`frontend::Negotiated::dax`].
    #[doc(alias = "dax_enabled")]
    pub fn window_offered(&self) -> bool {
        self.window.is_some()
    }

    /// Checks that the connected backend can serve the window; withdraws it or fails as the
    /// fallback says (see [`Fs::connect`]).
    fn decide_window(&mut self) -> Result<()> {
        let (Some(conn), Some(_)) = (&self.conn, &self.window) else {
            return Ok(());
        };
        let dialect = self.session_cfg.dialect;
        let missing = conn.dax_missing(dialect);
        if missing.is_empty() {
            return Ok(());
        }
        match self.session_cfg.dax_fallback {
            DaxFallback::Fail => {
                self.conn = None;
                Err(Error::Session(frontend::Error::DaxUnsupported {
                    missing,
                    dialect,
                }))
            }
            // The guest may know the window: keep it; the session starts without DAX.
            DaxFallback::Disable if self.window_seen => Ok(()),
            DaxFallback::Disable => self.withdraw_window(missing),
        }
    }

    /// Takes the window out of the VMM (memory slot first, then the IO space) and drops it.
    fn withdraw_window(&mut self, missing: VhostUserProtocolFeatures) -> Result<()> {
        if let (Some(mm), Some(region)) =
            (&self.memory, self.window_gpa.and_then(|g| self.region(g)))
        {
            mm.unregister_window(&region)
                .map_err(|source| Error::Memory {
                    gpa: region.gpa,
                    source,
                })?;
        }
        if let (Some(io), Some(gpa)) = (&self.io, self.window_gpa) {
            io.remove_window(gpa);
        }
        log::warn!(
            "{}: the backend lacks {missing:?} for DAX ({:?} dialect): the window is withdrawn",
            self.session_cfg.name,
            self.session_cfg.dialect
        );
        self.window = None;
        self.window_gpa = None;
        self.session_cfg.dax = false;
        self.withdrawn = Some(missing);
        Ok(())
    }

    /// Checks whether the backend is gone: it hung up the vhost-user socket, or the backend
    /// channel ended (a killed backend process does both). When it is, the session is torn down
    /// (the channel thread stopped, so nothing can map any more) and every mapping is dropped;
    /// then [`Fs::reconnect`] once the backend is back. Call it when [`Fs::backend_fd`] reports a
    /// hangup, or periodically.
    pub fn check_backend(&mut self) -> bool {
        let gone = self
            .session
            .as_ref()
            .is_some_and(|s| s.channel_finished() || s.hung_up());
        if gone {
            log::warn!("{}: backend gone; mappings dropped", self.session_cfg.name);
            self.end_session();
        }
        gone
    }

    /// The vhost-user socket of the live session, for a VMM that watches it for a hangup.
    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.session.as_ref().map(|s| s.socket_fd())
    }

    /// Drops the session with a dead backend and sets up a new one with a (restarted) backend:
    /// renegotiates, resends the memory table, the vrings and a fresh backend channel. Every
    /// mapping is dropped first: the new backend inherits none.
    ///
    /// The requests the lost backend left in flight (taken from the available ring and not
    /// completed, or not read at all) are neither replayed nor left waiting:
    ///
    /// - When the backend offers `INFLIGHT_SHMFD`, the first session of the activation got its
    ///   inflight region ([`InflightRegion`]) and the device keeps it: the restarted backend
    ///   gets the same region (`SET_INFLIGHT_FD`, before the vrings) and each vring base at the
    ///   used index, and it resubmits what the region says is in flight, each once; what was
    ///   completed is not.
    /// - Otherwise (virtiofsd 1.14 and `peers/dax-backend` do not offer it, or the new backend
    ///   does not), the device returns every chain between the used and the available index of
    ///   each queue to the guest itself, before the new backend sees the rings: a FUSE reply
    ///   with `EIO` and the request's `unique`, or length 0 for a request without reply
    ///   (`FORGET`) or a malformed chain; then it signals the queue's call eventfd and starts the
    ///   backend at the available index. A request the lost backend never read fails too (the
    ///   rings cannot tell it from one it executed). Counted in [`FsMetrics::inflight_failed`]
    ///   (and [`FsMetrics::inflight_malformed`]), logged once a reconnect. This relies on the
    ///   lost backend having completed in the order it took requests (virtiofsd without a thread
    ///   pool does). One that completed out of order can leave an outstanding request before
    ///   the used index, which then waits until the device is reset, and have a chain it already
    ///   completed returned again; the device finds and leaves alone such a chain when the driver
    ///   already reused its head or a descriptor ([`FsMetrics::inflight_stale`]). A backend that
    ///   completes out of order should offer `INFLIGHT_SHMFD`.
    ///
    /// Call it once the lost backend is gone ([`Fs::check_backend`]): a backend still running
    /// would complete requests the device returns.
    ///
    /// The guest's driver keeps the shared memory regions it probed, so the window does not
    /// change with the backend:
    ///
    /// - Window offered, new backend cannot serve it: with [`DaxFallback::Fail`] the reconnect
    ///   fails with [`frontend::Error::DaxUnsupported`] (the device stays without a session;
    ///   reconnect again once a capable backend is back). With [`DaxFallback::Disable`] the
    ///   session starts without DAX: the window stays offered and empty, every map request is
    ///   refused (the guest's FUSE_SETUPMAPPING fails), with a warning and
    ///   [`FsMetrics::sessions_without_dax`] counting it.
    /// - Window withdrawn at connect: a backend that can serve DAX does not bring it back.
    pub fn reconnect(&mut self) -> Result<()> {
        if self.active.is_none() {
            return Err(Error::NotActivated);
        }
        self.end_session();
        self.conn = None;
        self.start_session(true)
    }

    /// Ends the live session, if any, without `RESET_DEVICE`: its channel thread is stopped
    /// and joined (bounded) and then the window's generation ends, all its mappings dropped
    /// (the session's drop does both; with no session, the mappings still go).
    fn end_session(&mut self) {
        match self.session.take() {
            Some(session) => drop(session),
            None => self.drop_mappings(),
        }
    }

    /// Ends the window's generation: every mapping dropped, every lease taken before refused.
    /// Always after whatever could still map has been stopped.
    fn drop_mappings(&self) {
        if let Some(w) = &self.window {
            if let Err(e) = w.reset() {
                log::warn!("{}: dropping mappings: {e}", self.session_cfg.name);
            }
        }
    }

    /// Starts a session with the connected backend (connecting first if need be). At
    /// activation every vring starts where the queue is; at a reconnect (`resume`), where
    /// [`resume_bases`] says once the requests in flight are dealt with.
    fn start_session(&mut self, resume: bool) -> Result<()> {
        let Active {
            mem,
            queues,
            io,
            inflight,
            ..
        } = self.active.as_mut().ok_or(Error::NotActivated)?;
        let mut bases: Vec<u16> = queues.iter().map(|q| q.queue.next_avail()).collect();
        // A bad ring address (the guest's) fails here, before the connection is handed over: the
        // backend stays connected for the next activation.
        mem.check(&vring_setups(queues, &bases))
            .map_err(Error::Session)?;
        let conn = match self.conn.take() {
            Some(c) => c,
            None => Connection::open(&self.session_cfg, self.queue_sizes.len() as u64)
                .map_err(Error::Session)?,
        };
        if resume {
            bases = resume_bases(
                &self.session_cfg.name,
                &self.metrics,
                mem.as_ref(),
                queues,
                inflight,
                &conn,
            );
        }
        let session = mem.start_session(
            conn,
            &self.session_cfg,
            self.acked_features,
            &vring_setups(queues, &bases),
            self.window.as_ref(),
            io,
            inflight,
        );
        match session {
            Ok(session) => {
                if self.window.is_some() && !session.negotiated().dax {
                    // The guest sees a window this backend cannot serve (warned by the session).
                    FsMetrics::add(&self.metrics.sessions_without_dax, 1);
                }
                self.session = Some(session);
                Ok(())
            }
            Err(e) => {
                // A failed start stopped its channel thread already; nothing it mapped stays.
                self.drop_mappings();
                Err(Error::Session(e))
            }
        }
    }

    fn region(&self, gpa: u64) -> Option<WindowRegion> {
        self.window.as_ref().map(|w| WindowRegion {
            gpa,
            host_addr: w.host_addr(),
            size: w.size(),
        })
    }

    /// A snapshot of the device state: acked features, configuration and queue state. The
    /// window's mappings cannot be saved (their file descriptors are gone once mapped), so a
    /// snapshot is refused while any mapping exists; after a reset, or once the guest removed
    /// every mapping, it succeeds, and the window comes back empty on restore.
    pub fn snapshot(&self) -> Result<FsSnapshot> {
        if let Some(w) = &self.window {
            let live = w.live_mappings();
            if live > 0 {
                return Err(Error::SnapshotWithMappings { live });
            }
        }
        Ok(FsSnapshot {
            acked_features: self.acked_features,
            config: vm_memory::ByteValued::as_slice(&self.config).to_vec(),
            queues: self
                .active
                .as_ref()
                .map(|a| a.queues.iter().map(|q| q.queue.state()).collect())
                .unwrap_or_default(),
        })
    }

    /// Restores the acked features from `snap` and returns its queue states, for the VMM to
    /// rebuild the queues and [`Fs::activate`]. The configuration must match this
    /// device's (same tag and queue count).
    ///
    /// The restored guest knows the shared memory regions of the device it was saved from, and
    /// the snapshot does not record them: build the device with the same window size and
    /// connect it to a backend that can serve the window (or use [`DaxFallback::Fail`]), so that
    /// [`Fs::connect`] does not withdraw a window the guest uses. After `restore`, the window
    /// is never withdrawn.
    pub fn restore(&mut self, snap: &FsSnapshot) -> Result<Vec<QueueState>> {
        if snap.config != vm_memory::ByteValued::as_slice(&self.config) {
            return Err(Error::BadSnapshot("configuration differs"));
        }
        if !snap.queues.is_empty() && snap.queues.len() != self.queue_sizes.len() {
            return Err(Error::BadSnapshot("queue count differs"));
        }
        self.acked_features = snap.acked_features & self.features();
        self.window_seen = true;
        Ok(snap.queues.clone())
    }
}

impl Fs {
    /// The virtio device type: 26 ([`VIRTIO_ID_FS`]).
    pub fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    /// The maximum size of each queue: the high-priority queue, then the request queues.
    pub fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    /// The virtio features offered to the driver: `VIRTIO_F_VERSION_1`, and `EVENT_IDX` and
    /// `INDIRECT_DESC` where the connected backend offers them (see [`Fs::connect`]).
    pub fn features(&self) -> u64 {
        let backend = self.conn.as_ref().map_or(0, |c| c.backend_features());
        frontend::VIRTIO_F_VERSION_1
            | (backend & (VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC))
    }

    /// Records the features the driver acked; only offered ones are kept.
    /// An unoffered bit is a driver mistake: counted ([`FsMetrics::driver_mistakes`]) and logged
    /// the first few times.
    pub fn ack_features(&mut self, value: u64) {
        let offered = self.features();
        if value & !offered != 0 {
            self.driver_mistake(format_args!(
                "driver acked unoffered features {:#x}",
                value & !offered
            ));
        }
        self.acked_features |= value & offered;
    }

    /// Counts a mistake of the guest's driver, and logs the first [`LOGGED_DRIVER_MISTAKES`]: a
    /// guest must not be able to flood the VMM's log.
    fn driver_mistake(&self, what: std::fmt::Arguments<'_>) {
        let n = self.metrics.driver_mistakes.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= LOGGED_DRIVER_MISTAKES {
            let more = if n == LOGGED_DRIVER_MISTAKES {
                " (further driver mistakes are only counted)"
            } else {
                ""
            };
            log::warn!("{}: {what}{more}", self.session_cfg.name);
        }
    }

    /// Reads the device configuration space (tag, request queue count); bytes outside it read
    /// as 0.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        transport::read_config(vm_memory::ByteValued::as_slice(&self.config), offset, data);
    }

    /// Writes the device configuration space: virtio-fs has nothing writable, so this logs and
    /// changes nothing.
    ///
    /// Such a write is a driver mistake: counted ([`FsMetrics::driver_mistakes`]) and logged the
    /// first few times.
    pub fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.driver_mistake(format_args!(
            "guest wrote {} bytes of read-only config at {offset:#x}",
            data.len()
        ));
    }

    /// Activates the device on `DRIVER_OK`: starts the vhost-user session with the guest memory,
    /// the queues (with their kick and call eventfds) and the backend channel.
    ///
    /// `mem` is the VMM's own guest memory, with whatever dirty bitmap it tracks: `()`,
    /// cloud-hypervisor's `AtomicBitmap`, Firecracker's `Option<AtomicBitmap>`. Its regions must
    /// be file backed (the backend maps them). FS_IO requests that store into guest RAM (a file
    /// read into a buffer the guest gave) go through vm-memory's slices and mark the pages they
    /// wrote in that bitmap, so a VMM that migrates sees them dirty.
    pub fn activate<B>(
        &mut self,
        mem: GuestMemoryAtomic<GuestMemoryMmap<B>>,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivateQueue>,
    ) -> Result<()>
    where
        B: Bitmap + Send + Sync + 'static,
    {
        if queues.len() != self.queue_sizes.len() {
            return Err(Error::QueueCount {
                got: queues.len(),
                expected: self.queue_sizes.len(),
            });
        }
        // The driver read the shared memory regions before DRIVER_OK.
        self.window_seen = true;
        let io = match &self.io {
            Some(io) => io.clone(),
            None => {
                let io = Arc::new(IoSpace::with_guest_memory(mem.clone()));
                if let (Some(w), Some(gpa)) = (&self.window, self.window_gpa) {
                    io.add_window(gpa, w.clone()).map_err(Error::Io)?;
                }
                io
            }
        };
        self.active = Some(Active {
            mem: Box::new(mem),
            interrupt,
            queues,
            io,
            inflight: None,
        });
        if let Err(e) = self.start_session(false) {
            self.active = None;
            return Err(e);
        }
        Ok(())
    }

    /// Resets the device; returns the interrupt it was activated with.
    pub fn reset(&mut self) -> Option<Arc<dyn VirtioInterrupt>> {
        // The session stops its channel thread first, then drops the mappings, then resets the
        // backend (bounded); with no session, the mappings still go.
        match self.session.take() {
            Some(session) => match session.reset() {
                Ok(conn) => self.conn = Some(conn),
                Err(e) => log::warn!("{}: backend reset: {e}", self.session_cfg.name),
            },
            None => self.drop_mappings(),
        }
        self.acked_features = 0;
        self.active.take().map(|a| a.interrupt)
    }

    /// The shared memory regions to expose through the transport: region 0, the DAX window, or
    /// none when the device has no window (or [`Fs::connect`] withdrew it).
    pub fn shm_regions(&self) -> Vec<SharedMemoryRegion> {
        self.window
            .iter()
            .map(|w| SharedMemoryRegion {
                id: VIRTIO_FS_SHMCAP_ID_CACHE,
                gpa: self.window_gpa,
                len: w.size(),
                host_addr: w.host_addr(),
            })
            .collect()
    }

    /// Places (or moves) the window at `gpa` and registers it with the [`MemoryManager`] (the
    /// old place unregistered first). After [`Fs::connect`] withdrew the window it fails with
    /// [`Error::WindowWithdrawn`] and registers nothing: expose no region (build the transport
    /// from [`Fs::shm_regions`] after `connect`, and skip this call when it is empty).
    pub fn set_shm_base(&mut self, id: u8, gpa: u64) -> Result<()> {
        if let (VIRTIO_FS_SHMCAP_ID_CACHE, Some(missing)) = (id, self.withdrawn) {
            return Err(Error::WindowWithdrawn {
                id,
                missing,
                dialect: self.session_cfg.dialect,
            });
        }
        if id != VIRTIO_FS_SHMCAP_ID_CACHE {
            return Err(Error::NoSuchRegion { id });
        }
        if !gpa.is_multiple_of(transport::WINDOW_ALIGNMENT) {
            return Err(Error::ShmMisaligned { id, gpa });
        }
        let (Some(window), Some(new)) = (self.window.clone(), self.region(gpa)) else {
            return Err(Error::NoSuchRegion { id });
        };
        if self.window_gpa == Some(gpa) {
            return Ok(());
        }
        let old = self.window_gpa.and_then(|g| self.region(g));
        if let Some(mm) = &self.memory {
            if let Some(old) = &old {
                mm.unregister_window(old).map_err(|source| Error::Memory {
                    gpa: old.gpa,
                    source,
                })?;
            }
            if let Err(source) = mm.register_window(&new) {
                // Put the window back where it was, so a refused move changes nothing.
                if let Some(old) = &old {
                    if let Err(e) = mm.register_window(old) {
                        log::warn!(
                            "{}: restoring the window at {:#x}: {e}",
                            self.session_cfg.name,
                            old.gpa
                        );
                    }
                }
                return Err(Error::Memory { gpa, source });
            }
        }
        if let Some(io) = self.active.as_ref().map(|a| &a.io).or(self.io.as_ref()) {
            if let Some(old) = self.window_gpa {
                io.remove_window(old);
            }
            if let Err(e) = io.add_window(gpa, window.clone()) {
                // The IO space refused the new place (another device's window is there): put
                // the window back where it was, in the memory manager and the IO space, so a
                // refused move changes nothing.
                let name = &self.session_cfg.name;
                if let Some(mm) = &self.memory {
                    if let Err(err) = mm.unregister_window(&new) {
                        log::warn!("{name}: unregistering the window at {gpa:#x}: {err}");
                    }
                    if let Some(old) = &old {
                        if let Err(err) = mm.register_window(old) {
                            log::warn!("{name}: restoring the window at {:#x}: {err}", old.gpa);
                        }
                    }
                }
                if let Some(old) = self.window_gpa {
                    if let Err(err) = io.add_window(old, window) {
                        log::warn!("{name}: restoring the window at {old:#x}: {err}");
                    }
                }
                return Err(Error::Io(e));
            }
        }
        self.window_gpa = Some(gpa);
        Ok(())
    }

    /// Takes shared memory region `id` out of the guest physical address space: the window is
    /// unregistered from the [`MemoryManager`] and the IO space, and [`Fs::shm_regions`] shows it
    /// unplaced. For a PCI transport whose driver turns memory decoding off (Linux does while it
    /// sizes or rewrites a 64-bit BAR); [`Fs::set_shm_base`] places it again. The window's
    /// mappings stay: the guest cannot reach them meanwhile, and finds them again.
    ///
    /// A window not placed is not an error. Should the memory manager refuse, this fails with
    /// [`Error::Memory`] and nothing changes.
    pub fn clear_shm_base(&mut self, id: u8) -> Result<()> {
        if id != VIRTIO_FS_SHMCAP_ID_CACHE || self.window.is_none() {
            return Err(Error::NoSuchRegion { id });
        }
        let Some(gpa) = self.window_gpa else {
            return Ok(());
        };
        if let (Some(mm), Some(region)) = (&self.memory, self.region(gpa)) {
            mm.unregister_window(&region)
                .map_err(|source| Error::Memory { gpa, source })?;
        }
        if let Some(io) = self.active.as_ref().map(|a| &a.io).or(self.io.as_ref()) {
            io.remove_window(gpa);
        }
        self.window_gpa = None;
        Ok(())
    }

    /// Host memory the VMM maps into the guest for this device: the window, once placed.
    pub fn userspace_mappings(&self) -> Vec<UserspaceMapping> {
        match (&self.window, self.window_gpa) {
            (Some(w), Some(gpa)) => vec![UserspaceMapping {
                host_addr: w.host_addr(),
                gpa,
                len: w.size(),
            }],
            _ => Vec::new(),
        }
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        // Stop the backend first, then take the window out of the VMM (memory slot first), and
        // only then may the window's reservation be unmapped (when its last Arc goes).
        self.reset();
        if let (Some(mm), Some(region)) =
            (&self.memory, self.window_gpa.and_then(|g| self.region(g)))
        {
            if let Err(e) = mm.unregister_window(&region) {
                log::warn!("{}: unregistering the window: {e}", self.session_cfg.name);
            }
        }
        if let (Some(io), Some(gpa)) = (&self.io, self.window_gpa) {
            io.remove_window(gpa);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::FakeMemoryManager;
    use crate::window;
    use std::io;

    fn builder() -> FsBuilder {
        Fs::builder("myfs").socket_path("/nonexistent/vfs.sock")
    }

    #[test]
    fn tag_is_the_one_given() {
        let fs = builder().build().unwrap();
        assert_eq!(fs.tag(), "myfs");
        let long = "é".repeat(18); // 36 bytes: the longest tag, multi-byte characters
        let fs = Fs::builder(long.clone())
            .socket_path("/nonexistent/vfs.sock")
            .build()
            .unwrap();
        assert_eq!(fs.tag(), long);
    }

    #[test]
    fn bad_configuration_is_a_typed_error() {
        let err = |b: FsBuilder| b.build().unwrap_err();
        assert!(matches!(err(Fs::builder("")), Error::Config(_)));
        assert!(matches!(err(Fs::builder("x".repeat(37))), Error::Config(_)));
        assert!(matches!(err(builder().request_queues(0)), Error::Config(_)));
        assert!(matches!(
            err(builder().request_queues(65)),
            Error::TooManyQueues(65)
        ));
        for size in [0, 3, 1000] {
            assert!(matches!(
                err(builder().queue_size(size)),
                Error::QueueSize(_)
            ));
        }
        assert!(matches!(err(Fs::builder("myfs")), Error::NoSocket));
        assert!(matches!(
            err(builder().window_size(3 << 20)),
            Error::Window(_)
        ));
        let fs = builder().request_queues(2).queue_size(256).build().unwrap();
        assert_eq!(fs.queue_max_sizes(), &[256, 256, 256]);
        assert_eq!(fs.device_type(), 26);
        assert!(fs.shm_regions().is_empty());
        assert!(Fs::builder("x".repeat(36)).socket_path("s").build().is_ok());
    }

    #[test]
    fn features_and_config() {
        let mut fs = builder().request_queues(3).build().unwrap();
        // Not connected: only VERSION_1 is offered, and only offered bits are kept.
        assert_eq!(fs.features(), frontend::VIRTIO_F_VERSION_1);
        fs.ack_features(u64::MAX);
        assert_eq!(fs.acked_features, frontend::VIRTIO_F_VERSION_1);
        let mut tag = [0xffu8; 40];
        fs.read_config(0, &mut tag);
        assert_eq!(&tag[..4], b"myfs");
        assert!(tag[4..36].iter().all(|&b| b == 0));
        assert_eq!(&tag[36..], &3u32.to_le_bytes());
        let mut past = [0xffu8; 4];
        fs.read_config(u64::MAX - 1, &mut past);
        assert_eq!(past, [0; 4]);
        assert_eq!(fs.metrics().driver_mistakes(), 1, "the unoffered ack");
        fs.write_config(0, b"evil");
        fs.read_config(0, &mut past);
        assert_eq!(&past, b"myfs");
        // Every mistake is counted, however many (only the first few are logged).
        for _ in 0..100 {
            fs.write_config(4, b"x");
        }
        assert_eq!(fs.metrics().driver_mistakes(), 102);
        assert!(fs.counters().contains(&("driver_mistakes", 102)));
        // Activation needs the backend; with none, a typed error and no activation.
        let queues = Vec::new();
        let mem =
            GuestMemoryAtomic::new(GuestMemoryMmap::<()>::from_ranges(&[]).unwrap_or_default());
        struct Nop;
        impl VirtioInterrupt for Nop {
            fn trigger(&self, _: VirtioInterruptType) -> io::Result<()> {
                Ok(())
            }
        }
        let err = fs.activate(mem, Arc::new(Nop), queues).unwrap_err();
        assert!(matches!(
            err,
            Error::QueueCount {
                got: 0,
                expected: 4
            }
        ));
        assert!(matches!(fs.reconnect(), Err(Error::NotActivated)));
    }

    #[test]
    fn window_registration_follows_the_bar() {
        let mm = Arc::new(FakeMemoryManager::new());
        let io = Arc::new(IoSpace::new());
        let mut fs = builder()
            .window_size(8 << 20)
            .memory_manager(mm.clone())
            .io_space(io.clone())
            .build()
            .unwrap();
        let region = fs.shm_regions()[0];
        assert_eq!((region.id, region.gpa, region.len), (0, None, 8 << 20));
        assert!(fs.userspace_mappings().is_empty());
        assert!(matches!(
            fs.set_shm_base(1, 1 << 32),
            Err(Error::NoSuchRegion { id: 1 })
        ));
        assert!(matches!(
            fs.set_shm_base(0, (1 << 32) + 4096),
            Err(Error::ShmMisaligned { id: 0, .. })
        ));
        // Not placed yet: clearing changes nothing.
        fs.clear_shm_base(0).unwrap();
        assert!(mm.live().is_empty());
        fs.set_shm_base(0, 1 << 32).unwrap();
        let host = fs.window().unwrap().host_addr();
        let at = |gpa| WindowRegion {
            gpa,
            host_addr: host,
            size: 8 << 20,
        };
        assert_eq!(mm.live(), vec![at(1 << 32)]);
        assert_eq!(fs.userspace_mappings()[0].gpa, 1 << 32);
        // BAR move: unregister the old, register the new; the IO space follows.
        fs.set_shm_base(0, 1 << 33).unwrap();
        assert_eq!(mm.live(), vec![at(1 << 33)]);
        assert!(io.remove_window(1 << 32).is_none());
        // Memory decoding off: the window leaves the guest's address space, then comes back.
        fs.clear_shm_base(0).unwrap();
        assert!(mm.live().is_empty());
        assert_eq!(fs.shm_regions()[0].gpa, None);
        assert!(fs.userspace_mappings().is_empty());
        assert!(io.remove_window(1 << 33).is_none(), "still in the IO space");
        fs.clear_shm_base(0).unwrap();
        fs.set_shm_base(0, 1 << 33).unwrap();
        assert_eq!(mm.live(), vec![at(1 << 33)]);
        assert!(matches!(
            fs.clear_shm_base(1),
            Err(Error::NoSuchRegion { id: 1 })
        ));
        mm.fail_next();
        assert!(matches!(fs.clear_shm_base(0), Err(Error::Memory { .. })));
        assert_eq!(mm.live(), vec![at(1 << 33)]);
        assert_eq!(fs.shm_regions()[0].gpa, Some(1 << 33));
        // A refusal by the VMM is a typed error and changes nothing: refused unregistration ...
        mm.fail_next();
        assert!(matches!(
            fs.set_shm_base(0, 1 << 34),
            Err(Error::Memory { .. })
        ));
        assert_eq!(fs.shm_regions()[0].gpa, Some(1 << 33));
        assert_eq!(mm.live(), vec![at(1 << 33)]);
        // ... or a refused registration at the new address (an overlap, here).
        let squatter = WindowRegion {
            gpa: 1 << 35,
            host_addr: 0,
            size: 2 << 20,
        };
        mm.register_window(&squatter).unwrap();
        assert!(matches!(
            fs.set_shm_base(0, 1 << 35),
            Err(Error::Memory { .. })
        ));
        assert_eq!(fs.shm_regions()[0].gpa, Some(1 << 33));
        assert!(
            mm.live().contains(&at(1 << 33)),
            "restored: {:?}",
            mm.live()
        );
        mm.unregister_window(&squatter).unwrap();
        // ... or a new place the IO space refuses (another device's window is there): the
        // memory manager's registration is rolled back too.
        let other = Arc::new(DaxWindow::new(2 << 20).unwrap());
        io.add_window(1 << 36, other).unwrap();
        assert!(matches!(fs.set_shm_base(0, 1 << 36), Err(Error::Io(_))));
        assert_eq!(fs.shm_regions()[0].gpa, Some(1 << 33));
        assert_eq!(mm.live(), vec![at(1 << 33)], "the new slot was rolled back");
        let back = io.remove_window(1 << 33).expect("back in the IO space");
        assert!(Arc::ptr_eq(&back, fs.window().unwrap()));
        io.add_window(1 << 33, back).unwrap();
        assert!(io.remove_window(1 << 36).is_some());
        // Drop: the slot goes before the window.
        let window = Arc::downgrade(fs.window().unwrap());
        drop(fs);
        assert!(mm.live().is_empty());
        assert_eq!(mm.log().last(), Some(&(false, at(1 << 33))));
        assert!(
            window.upgrade().is_none(),
            "the window is gone after the slot"
        );
        assert!(io.remove_window(1 << 33).is_none());
    }

    #[test]
    fn snapshot_refused_while_mapped_and_round_trips() {
        let fs = builder().window_size(2 << 20).build().unwrap();
        let snap = fs.snapshot().unwrap();
        assert_eq!(FsSnapshot::from_bytes(&snap.to_bytes()).unwrap(), snap);
        let file = tempfile::tempfile().unwrap();
        file.set_len(2 << 20).unwrap();
        let entry = crate::protocol::MapEntry {
            offset: 0,
            fd_offset: 0,
            len: 2 << 20,
            access: crate::protocol::Access::ReadOnly,
        };
        fs.window()
            .unwrap()
            .map(&[entry], &file, window::Policy::STANDARD)
            .unwrap();
        assert!(matches!(
            fs.snapshot(),
            Err(Error::SnapshotWithMappings { live: 1 })
        ));
        fs.window().unwrap().unmap_all().unwrap();
        assert!(fs.snapshot().is_ok());

        let mut with_queue = snap.clone();
        with_queue.queues.push(QueueState {
            max_size: 256,
            size: 128,
            ready: true,
            desc_table: 0x1000,
            ..Default::default()
        });
        let bytes = with_queue.to_bytes();
        assert_eq!(FsSnapshot::from_bytes(&bytes).unwrap(), with_queue);
        for cut in 0..bytes.len() {
            assert!(FsSnapshot::from_bytes(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(FsSnapshot::from_bytes(&longer).is_err());

        let mut other = builder().build().unwrap();
        assert!(other.restore(&snap).is_ok());
        let mut wrong = snap.clone();
        wrong.config[0] = b'X';
        assert!(matches!(other.restore(&wrong), Err(Error::BadSnapshot(_))));
    }
}
