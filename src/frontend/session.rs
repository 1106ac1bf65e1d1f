// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`Session`]: the session setup, the vrings, the backend channel thread and the reset.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{
    dax_protocol_features, wanted_protocol_features, Connection, DaxFallback, Error,
    InflightRegion, Negotiated, Result, SessionConfig, VringSetup, VHOST_USER_F_PROTOCOL_FEATURES,
};
use crate::channel::{BackendChannel, ChannelThread};
use crate::io::IoSpace;
use crate::window::DaxWindow;

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
    pub(super) conn: Connection,
    pub(super) negotiated: Negotiated,
    /// Indices of the vrings the session started, stopped again by [`Session::reset`].
    vrings: Vec<usize>,
    /// The guest memory regions the backend has, `(gpa, size)`: the memory table, with the
    /// regions added and removed since.
    pub(super) mem_regions: Vec<(u64, u64)>,
    /// The backend's `GET_MAX_MEM_SLOTS`, once asked.
    pub(super) max_mem_slots: Option<u64>,
}

/// What ending a session stops and drops, in that order; dropping it does both.
#[derive(Debug)]
struct Teardown {
    channel: Option<ChannelThread>,
    window: Option<Arc<DaxWindow>>,
    timeout: Duration,
    name: String,
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
    ///
    /// When the backend offers `INFLIGHT_SHMFD` it is acked, and before the vrings the session
    /// hands the backend `inflight` (`SET_INFLIGHT_FD`), asking for a region first
    /// (`GET_INFLIGHT_FD`) when `inflight` is `None` and keeping it there: pass the same
    /// `inflight` to every session of one activation, and the backend of a later session
    /// resubmits what an earlier one left in flight (see [`InflightRegion`]). A region given to
    /// a backend that does not offer the feature fails the start with
    /// [`Error::InflightWithdrawn`].
    #[allow(clippy::too_many_arguments)]
    pub fn start<B: Bitmap>(
        conn: Connection,
        cfg: &SessionConfig,
        acked: u64,
        mem: &GuestMemoryMmap<B>,
        vrings: &[VringSetup<'_>],
        window: Option<&Arc<DaxWindow>>,
        io: &Arc<IoSpace>,
        inflight: &mut Option<InflightRegion>,
    ) -> Result<Session> {
        // What the guest and the VMM gave (ring addresses, file-backed memory) is checked before
        // anything is sent: a driver's bad ring address must not cost the backend its session.
        check_guest_input(mem, vrings)?;
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
        let mut dax = dax_wanted && missing.is_empty();
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
        // The backend's idea of the window, where it has one: a region 0 of another size would
        // have it map ranges the window refuses, or leave part of the window unserved.
        if let (true, true, Some(w)) = (
            dax && cfg.check_shmem_config,
            protocol.contains(VhostUserProtocolFeatures::SHMEM),
            window,
        ) {
            let config = frontend.get_shmem_config().map_err(Error::ShmemConfig)?;
            let sizes =
                &config.memory_sizes[..(config.nregions as usize).min(config.memory_sizes.len())];
            match sizes.first() {
                None => log::info!(
                    "{}: the backend describes no shared memory region; the window is {:#x} bytes",
                    cfg.name,
                    w.size()
                ),
                Some(&size) if size == w.size() => {}
                Some(&size) => match cfg.dax_fallback {
                    DaxFallback::Fail => {
                        return Err(Error::ShmemSizeMismatch {
                            backend: size,
                            window: w.size(),
                        })
                    }
                    DaxFallback::Disable => {
                        log::warn!(
                            "{}: the backend's shared memory region 0 is {size:#x} bytes, the \
                             window {:#x}: this session serves no window",
                            cfg.name,
                            w.size()
                        );
                        dax = false;
                    }
                },
            }
        }
        let table = mem_table(mem)?;
        frontend.set_mem_table(&table).map_err(Error::SetMemTable)?;
        if protocol.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD) {
            let region = match inflight.take() {
                Some(region) => region,
                None => InflightRegion::get(&mut frontend, vrings)?,
            };
            let sent = region.set(&mut frontend);
            // Kept whatever the answer: a failed SET leaves it for the next session.
            *inflight = Some(region);
            sent?;
        } else if inflight.is_some() {
            return Err(Error::InflightWithdrawn);
        }
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

/// Checks, without sending anything, what [`Session::start`] takes from the VMM and the guest:
/// guest memory that vhost-user can share (file backed), and every ring wholly inside it. A device
/// calls it before it hands over its connection, so that a guest's bad ring address fails the
/// activation and keeps the backend connected (a single-session backend such as virtiofsd exits
/// when its connection closes).
pub fn check_guest_input<B: Bitmap>(
    mem: &GuestMemoryMmap<B>,
    vrings: &[VringSetup<'_>],
) -> Result<()> {
    mem_table(mem)?;
    for v in vrings {
        let n = u64::from(v.size);
        // Descriptor table, available ring and used ring, each whole (split virtqueue layout,
        // event index words included).
        for (gpa, len) in [
            (v.desc_table, 16 * n),
            (v.avail_ring, 6 + 2 * n),
            (v.used_ring, 6 + 8 * n),
        ] {
            let whole = usize::try_from(len)
                .is_ok_and(|len| mem.check_range(vm_memory::GuestAddress(gpa), len));
            if !whole {
                return Err(Error::QueueAddress {
                    index: v.index,
                    gpa,
                });
            }
        }
    }
    Ok(())
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
