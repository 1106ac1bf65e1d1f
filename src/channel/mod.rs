// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The backend channel: the frontend's end of the socket pair whose other end goes to the backend
//! (`set_backend_request_fd`). It receives requests with their file descriptors, decodes them
//! ([`crate::protocol`]), executes them on the [`DaxWindow`](crate::DaxWindow) or the [`IoSpace`],
//! and replies.
//!
//! Every refusal is a typed [`RequestError`], a `-errno` reply (when the backend asked for one),
//! a counter in [`FsMetrics`] and a log line (`warn!` the first time a reason occurs, `debug!`
//! after that), and the channel goes on serving. A refused message is consumed whole, descriptors
//! included (they are closed), so the stream stays in sync.
//!
//! Two ways to drive it: [`BackendChannel::handle_one`] from the VMM's own event loop when the
//! socket ([`BackendChannel::as_raw_fd`]) is readable, or [`BackendChannel::spawn`] for a thread
//! of its own that stops and joins cleanly, within a bound.
//!
//! # Never blocking
//!
//! The socket is non-blocking. A message is reassembled across calls (header, body, descriptors),
//! so a backend that sends half a message and goes silent costs the caller one `recvmsg` that
//! returns `EAGAIN`, not a stalled thread. Each call reads only the bytes of the message in
//! progress (header first, then exactly the body it announces), so descriptors are always
//! attributed to the message whose bytes carried them. A body above
//! [`MAX_BODY_SIZE`](crate::protocol::MAX_BODY_SIZE) is drained, at most [`DRAIN_BUDGET`] bytes a
//! call, then refused with `EMSGSIZE` like any refusal: the stream stays in sync and the event loop
//! is never held longer than that. Watch the socket level-triggered (the default of epoll).
//!
//! A reply is sent without blocking too. The backend reads each reply before it sends its next
//! request (vhost's `Backend` does); one that leaves replies unread until the socket buffer is
//! full ends the channel with [`Error::Send`] (`EAGAIN`).
//!
//! # When the channel ends
//!
//! When the channel fails ([`BackendChannel::handle_one`] returns `Err`: the backend closed it or
//! broke the protocol), its window lease is ended at once ([`WindowLease::end`]): every mapping is
//! dropped and the window moves to a new generation, whichever way the channel is driven. A channel
//! built before a [`DaxWindow::reset`](crate::DaxWindow::reset) refuses every request with
//! `ESTALE`.
//!
//! The descriptors of a message the backend left unfinished are closed as soon as the channel
//! fails, not when it is dropped.
//!
//! The thread's syscalls, for the seccomp filter a VMM installs on it: [`SYSCALLS`], each with
//! its number and what it is for; with feature `seccompiler`, `seccomp_rules` gives them as
//! `seccompiler` rules.
//!
//! # Descriptors
//!
//! Every descriptor the channel receives or makes is close-on-exec from the moment it exists
//! (`MSG_CMSG_CLOEXEC` on `recvmsg`, `EFD_CLOEXEC`, `EPOLL_CLOEXEC`), so a process the VMM
//! spawns inherits none of them. When the VMM is at its descriptor limit (`RLIMIT_NOFILE`), the
//! kernel drops the descriptors a message carries (`MSG_CTRUNC`); that message is still read
//! whole, the descriptors that did come are closed, and it is refused with `EMFILE`
//! ([`RequestError::FdsLost`]) like any refusal: the channel serves the next one.
//!
//! # The thread, as a VMM wants it
//!
//! - **Name and start hook.** [`BackendChannelBuilder::thread_name`] names the thread (Linux
//!   keeps the first 15 bytes), and [`BackendChannelBuilder::on_thread_start`] runs a
//!   [`ThreadHook`] on the new thread before it reads anything from the backend: the place for a
//!   seccomp filter (built from [`SYSCALLS`] or `seccomp_rules`), CPU affinity or scheduling
//!   policy. [`BackendChannel::spawn`] waits for the hook and returns its outcome: when it
//!   fails, the thread ends without serving, everything the channel held is closed, and `spawn`
//!   fails with [`Error::ThreadStart`], so a VMM knows its filter is in place before the backend
//!   can send a byte. Cloud-hypervisor's `spawn_virtio_thread` does the same for its device
//!   threads, but only logs a failed filter.
//! - **Pause and resume**, for snapshot and migration: [`ChannelThread::pause`] returns once the
//!   thread is parked between two messages (nothing half served: a message partly received
//!   stays partly received, nothing of it is executed), bounded by a timeout
//!   ([`Error::PauseTimeout`]; the pause is then withdrawn and the thread serves on). While
//!   paused the thread reads nothing: requests stay in the socket, neither read nor refused, and
//!   the backend waits for its replies. [`ChannelThread::resume`] serves them. Stopping (and
//!   dropping) works while paused. A paused thread does not watch the socket, so a backend
//!   that disconnects while the channel is paused is noticed at resume (or through the
//!   vhost-user socket, [`crate::Fs::check_backend`]), and its mappings are dropped then.
//!   [`BackendChannelBuilder::start_paused`] starts the thread parked.
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use virtio_fs_dax::channel::{BackendChannel, ThreadHook};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (ours, _theirs) = UnixStream::pair()?;
//! let channel = BackendChannel::builder(ours)
//!     .thread_name("fs0-backend")
//!     .on_thread_start(ThreadHook::new(|| {
//!         // seccompiler::apply_filter(&filter)?; pin the CPU; ...
//!         Ok(())
//!     }))
//!     .build()
//!     .spawn()?;
//! channel.pause()?; // snapshot: nothing is mapped from here on
//! channel.resume();
//! channel.stop()?;
//! # Ok(())
//! # }
//! ```

mod builder;
mod error;
mod reader;
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
mod syscalls;
mod thread;

pub use builder::BackendChannelBuilder;
pub use error::{Error, RequestError, Result};
pub use reader::DRAIN_BUDGET;
#[cfg(all(
    feature = "seccompiler",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
))]
pub use syscalls::{control_seccomp_rules, seccomp_rules};
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
pub use syscalls::{Syscall, CONTROL_SYSCALLS, SYSCALLS};
pub use thread::{
    ChannelThread, HookError, ThreadHook, DEFAULT_PAUSE_TIMEOUT, DEFAULT_STOP_TIMEOUT,
};

use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::ByteValued;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::io::{CopyGate, IoSpace, Requester, Transfer};
use crate::metrics::FsMetrics;
use crate::protocol::{
    self, decode_body, encode_reply, encode_reply_with, DecodeError, Dialect, Header, IoDirection,
    Request, FLAG_NEED_REPLY,
};
use crate::window::{self, Policy, WindowLease};
use builder::ThreadConfig;
use reader::{Message, Reader};

/// Shared memory region id of the virtio-fs cache window (`VIRTIO_FS_SHMCAP_ID_CACHE`).
pub const SHMID_CACHE: u8 = 0;

/// What [`BackendChannel::handle_one`] did with one message.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome {
    /// Request code of the message.
    pub request: u32,
    /// Reply value: 0 or bytes done on success, `-errno` on refusal.
    pub value: i64,
    /// Whether a reply was sent (the backend set NEED_REPLY).
    pub replied: bool,
}

/// The frontend's end of the backend channel. See the module documentation.
#[derive(Debug)]
pub struct BackendChannel {
    sock: UnixStream,
    window: Option<WindowLease>,
    dialect: Dialect,
    policy: Policy,
    io: Arc<IoSpace>,
    metrics: Arc<FsMetrics>,
    name: String,
    reader: Reader,
    /// Ended when the channel's thread is stopped: no copy into memory of this channel runs
    /// after that, even while a file syscall of it still stalls.
    gate: Arc<CopyGate>,
    nonblocking: bool,
    thread: ThreadConfig,
}

impl BackendChannel {
    /// The counters this channel updates (the window's, when it has one).
    pub fn metrics(&self) -> &Arc<FsMetrics> {
        &self.metrics
    }

    /// The dialect in force.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The window policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    fn ensure_nonblocking(&mut self) -> Result<()> {
        if !self.nonblocking {
            self.sock.set_nonblocking(true).map_err(Error::Recv)?;
            self.nonblocking = true;
        }
        Ok(())
    }

    /// Handles the next message if the socket holds all of it, without blocking:
    /// receives what has arrived, and once a whole message is in, decodes, executes and answers
    /// it. `Ok(None)`: no whole message yet (part of one may have been kept for the next call);
    /// call again when the socket is readable. A refused request is `Ok(Some(..))` (see
    /// [`Outcome::value`]).
    ///
    /// `Err` means the channel is gone: the backend closed it, broke the protocol, or left its
    /// replies unread. The window lease is then ended ([`WindowLease::end`]): every mapping is
    /// dropped and the window moves to a new generation. Stop watching the socket.
    pub fn handle_one(&mut self) -> Result<Option<Outcome>> {
        let res = self.handle_ready();
        if let Err(e) = &res {
            self.reader.abandon();
            self.end_lease(e);
        }
        res
    }

    /// As [`BackendChannel::handle_one`], but waits up to `timeout` for a whole message to
    /// arrive. For simple callers and tests; an event loop calls `handle_one` on readiness.
    pub fn handle_one_timeout(&mut self, timeout: Duration) -> Result<Option<Outcome>> {
        let deadline = Instant::now() + timeout;
        loop {
            // Whatever part of a message the reader holds, the rest is still in the socket: poll
            // sees all there is to wait for.
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: `pfd` is one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ready != 0 {
                // Readable, hung up, or poll failed (EINTR): handle_one finds out which.
                if let Some(out) = self.handle_one()? {
                    return Ok(Some(out));
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    fn end_lease(&self, e: &Error) {
        if let Some(lease) = &self.window {
            if lease.is_current() {
                log::warn!(
                    "{}: backend channel ended: {e}; dropping every mapping",
                    self.name
                );
            }
            if let Err(err) = lease.end() {
                log::warn!("{}: dropping mappings failed: {err}", self.name);
            }
        }
    }

    fn handle_ready(&mut self) -> Result<Option<Outcome>> {
        let Some(msg) = self.poll_message()? else {
            return Ok(None);
        };
        let arrived = Instant::now();
        FsMetrics::add(&self.metrics.requests, 1);
        let request = msg.raw.request;
        let need_reply = msg.raw.flags & FLAG_NEED_REPLY != 0;
        let mut is_map = false;
        let result = Header::parse(&msg.raw)
            .map_err(RequestError::from)
            .and_then(|h| {
                // Without all its descriptors the fd count is unknown: refused right after the
                // header, before anything that counts them.
                if msg.fds.lost() {
                    return Err(RequestError::FdsLost);
                }
                decode_body(self.dialect, &h, &msg.body, msg.fds.count()).map_err(Into::into)
            })
            .and_then(|req| {
                is_map = matches!(req, Request::ShmemMap { .. } | Request::FsMap(_));
                self.execute(req, &msg.fds.kept)
            });
        // The body buffer goes back to the reader; descriptors are not needed past this point
        // (a mapping keeps its file alive by itself).
        let Message { body, fds, .. } = msg;
        self.reader.body = body;
        drop(fds);
        let (value, payload) = match result {
            Ok(Reply::Value(v)) => (v as i64, None),
            Ok(Reply::Data(d)) => (0, Some(d)),
            Err(e) => {
                let errno = e.errno();
                let n = self.metrics.refuse(e.reason());
                if n == 1 {
                    log::warn!("{}: refused request {request}: {e} (-{errno}); later ones of this kind are logged at debug level", self.name);
                } else {
                    log::debug!(
                        "{}: refused request {request}: {e} (-{errno}), {n} so far",
                        self.name
                    );
                }
                (-i64::from(errno), None)
            }
        };
        let replied = need_reply || payload.is_some();
        if replied {
            let bytes = match payload {
                Some(data) => encode_reply_with(request, &data),
                None => encode_reply(request, value as u64),
            };
            self.send_all(&bytes)?;
        }
        if is_map && value >= 0 {
            self.metrics.map_latency().record(arrived.elapsed());
        }
        Ok(Some(Outcome {
            request,
            value,
            replied,
        }))
    }

    fn send_all(&self, bytes: &[u8]) -> Result<()> {
        let mut sent = 0;
        while sent < bytes.len() {
            // Non-blocking: EAGAIN means the backend left a socket buffer of replies unread.
            match self.sock.send_with_fds(&[&bytes[sent..]], &[]) {
                Ok(n) => sent += n,
                Err(e) if e.errno() == libc::EINTR => {}
                Err(e) => return Err(Error::Send(io::Error::from_raw_os_error(e.errno()))),
            }
        }
        Ok(())
    }

    fn window(&self, shmid: u8) -> std::result::Result<&WindowLease, RequestError> {
        match &self.window {
            Some(w) if shmid == SHMID_CACHE => Ok(w),
            _ => Err(RequestError::UnknownShmid { shmid }),
        }
    }

    /// Refuses the work of a session whose window generation has ended. Maps and unmaps are
    /// checked again under the window's lock; this covers the IO path, between its entries too.
    fn check_current(&self) -> std::result::Result<(), RequestError> {
        match &self.window {
            Some(lease) if !lease.is_current() => Err(RequestError::Window(window::Error::Stale {
                lease: lease.generation(),
                current: lease.window().generation(),
            })),
            _ => Ok(()),
        }
    }

    /// Who this channel's transfers are for: its window's session, and its own gate.
    fn requester(&self) -> Requester<'_> {
        Requester {
            lease: self.window.as_ref(),
            gate: Some(&self.gate),
        }
    }

    fn execute(&self, req: Request, files: &[File]) -> std::result::Result<Reply, RequestError> {
        self.check_current()?;
        let from = self.requester();
        // The decoder checked the descriptor count; `first` cannot be missing where it is used.
        let file = || {
            files
                .first()
                .ok_or(RequestError::Decode(DecodeError::BadFdCount {
                    request: 0,
                    got: 0,
                    expected: 1,
                }))
        };
        match req {
            Request::ShmemMap { shmid, entry } => {
                self.window(shmid)?.map(&[entry], file()?, self.policy)?;
            }
            Request::ShmemUnmap { shmid, range } => {
                self.window(shmid)?.unmap(&[range], self.policy)?
            }
            Request::FsMap(entries) => {
                if !entries.is_empty() {
                    self.window(SHMID_CACHE)?
                        .map(&entries, file()?, self.policy)?;
                }
            }
            Request::FsUnmap(ranges) => {
                if !ranges.is_empty() {
                    self.window(SHMID_CACHE)?.unmap(&ranges, self.policy)?;
                }
            }
            Request::FsUnmapAll => {
                if let Some(w) = &self.window {
                    w.unmap_all()?;
                }
            }
            Request::FsSync(ranges) => self.window(SHMID_CACHE)?.sync(&ranges)?,
            Request::FsIo(entries) => {
                let file = file()?;
                // Check every entry over its whole length before moving a byte.
                for e in &entries {
                    let check = Transfer::Check {
                        writes_memory: e.direction == IoDirection::ReadFile,
                    };
                    self.io.transfer(&from, e.gpa, e.len, check)?;
                }
                let mut total = 0;
                for e in &entries {
                    self.check_current()?;
                    let t = match e.direction {
                        IoDirection::ReadFile => Transfer::ReadFile(file, e.fd_offset),
                        IoDirection::WriteFile => Transfer::WriteFile(file, e.fd_offset),
                    };
                    let done = self.io.transfer(&from, e.gpa, e.len, t)?;
                    FsMetrics::add(&self.metrics.ios, 1);
                    FsMetrics::add(&self.metrics.io_bytes, done);
                    total += done;
                    if done < e.len {
                        break;
                    }
                }
                return Ok(Reply::Value(total));
            }
            Request::MemRead { gpa, size } => {
                let mut data = vec![0u8; size_of::<protocol::MemRwHeader>() + size as usize];
                let hdr = protocol::MemRwHeader {
                    guest_address: gpa,
                    size,
                };
                let (head, buf) = data.split_at_mut(size_of::<protocol::MemRwHeader>());
                head.copy_from_slice(hdr.as_slice());
                self.io
                    .transfer(&from, gpa, u64::from(size), Transfer::ToBuffer(buf))?;
                FsMetrics::add(&self.metrics.ios, 1);
                FsMetrics::add(&self.metrics.io_bytes, u64::from(size));
                return Ok(Reply::Data(data));
            }
            Request::MemWrite { gpa, data } => {
                let len = data.len() as u64;
                self.io
                    .transfer(&from, gpa, len, Transfer::FromBuffer(&data))?;
                FsMetrics::add(&self.metrics.ios, 1);
                FsMetrics::add(&self.metrics.io_bytes, len);
            }
        }
        Ok(Reply::Value(0))
    }
}

impl AsRawFd for BackendChannel {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

enum Reply {
    Value(u64),
    Data(Vec<u8>),
}
