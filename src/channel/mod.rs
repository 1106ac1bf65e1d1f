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
//! socket ([`BackendChannel::as_raw_fd`]) is readable, called until it returns `Ok(None)`, or
//! [`BackendChannel::spawn`] for a thread of its own that stops and joins cleanly, within a bound.
//! A plain thread of the VMM's can also loop on [`BackendChannel::handle_one_timeout`], which
//! waits in `recvmsg` itself.
//!
//! # Reading
//!
//! One `recvmsg` takes whatever the socket holds, up to a buffer of a few messages, and messages
//! are framed out of that buffer by their headers: a backend that has queued several requests
//! costs one read, not two per message. A message already in the buffer is served before the
//! channel reads or waits again: an event loop calls `handle_one` until it returns `Ok(None)`
//! (nothing whole is buffered any more), then waits for readiness; the channel's own thread does
//! the same by itself.
//!
//! The descriptors of a read go to the message that holds the read's last byte. On Linux a unix
//! stream `recvmsg` returns a `sendmsg`'s descriptors with the first read that returns any of its
//! bytes and never reads past the end of that `sendmsg`'s first buffer, so a backend that sends
//! each message with its descriptor in one `sendmsg` (vhost's `Backend` does) gets it on that
//! message however the reads fall. Framing never depends on descriptors: a message whose count
//! is not the one its request takes (one for SHMEM_MAP, FS_MAP and FS_IO, none for the others) is
//! refused with `EBADF` and its descriptors closed, and the next message is read as it was sent.
//! At most a few descriptors are kept per message; further ones are closed as they arrive.
//!
//! # Never blocking
//!
//! Reads and sends say `MSG_DONTWAIT`, except the wait of
//! [`BackendChannel::handle_one_timeout`]. A message is reassembled across calls, so a backend
//! that sends half a message and goes silent costs the caller one `recvmsg` that returns
//! `EAGAIN`, not a stalled thread. A body above
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
use std::io::{self, IoSlice};
use std::mem::size_of;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{sendmsg, SendAncillaryBuffer, SendFlags};
use vm_memory::ByteValued;

use crate::io::{CopyGate, IoSpace, Requester, Transfer};
use crate::metrics::FsMetrics;
use crate::protocol::{
    self, decode_body, encode_reply_with, DecodeError, Dialect, Header, IoDirection, Request,
    FLAG_NEED_REPLY,
};
use crate::window::{self, Policy, WindowLease};
use builder::ThreadConfig;
use reader::{Reader, Wait};

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
    /// The socket has been put in blocking mode ([`BackendChannel::ensure_blocking`]).
    mode_set: bool,
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

    /// Puts the socket in blocking mode, once: every read and send that must not wait says so
    /// itself (`MSG_DONTWAIT`), and [`BackendChannel::handle_one_timeout`] waits in `recvmsg`.
    fn ensure_blocking(&mut self) -> Result<()> {
        if !self.mode_set {
            self.sock.set_nonblocking(false).map_err(Error::Recv)?;
            self.mode_set = true;
        }
        Ok(())
    }

    /// Handles the next message without blocking: serves a whole message the channel has
    /// already received, or else receives what the socket holds (one `recvmsg` takes in every
    /// message queued, up to a buffer of a few messages) and serves the first whole one.
    /// `Ok(None)`: no whole message yet (part of one may be kept for the next call).
    /// A refused request is `Ok(Some(..))` (see [`Outcome::value`]).
    ///
    /// **Call it until it returns `Ok(None)`, then wait for the socket to be readable.** Messages
    /// received with an earlier one are served from the channel's buffer; no readiness event
    /// announces them, since they are no longer in the socket. `Ok(None)` means nothing whole is
    /// buffered, so the next message's bytes make the socket readable.
    ///
    /// `Err` means the channel is gone: the backend closed it, broke the protocol, or left its
    /// replies unread. The window lease is then ended ([`WindowLease::end`]): every mapping is
    /// dropped and the window moves to a new generation. Stop watching the socket.
    pub fn handle_one(&mut self) -> Result<Option<Outcome>> {
        self.handle_with(Wait::No)
    }

    /// As [`BackendChannel::handle_one`], but waits up to about `timeout` for a whole message,
    /// in `recvmsg` itself (the socket's `SO_RCVTIMEO`, set again only when `timeout` changes):
    /// a thread serving the channel in a loop of these makes one `recvmsg` a message, as a
    /// blocking reader does, and no `poll`. `Ok(None)` when no whole message came in time.
    /// A `timeout` of zero does not wait. Beyond what a request itself makes (see [`SYSCALLS`]),
    /// a thread driving the channel this way makes `recvmsg`, `sendmsg`, `setsockopt`
    /// (`SO_RCVTIMEO`, when the timeout changes) and, once, `ioctl(FIONBIO)`.
    pub fn handle_one_timeout(&mut self, timeout: Duration) -> Result<Option<Outcome>> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let wait = match deadline {
                Some(d) => Wait::Until(d),
                // Too far to represent: as good as forever.
                None => Wait::Until(Instant::now() + Duration::from_secs(1 << 30)),
            };
            if let Some(out) = self.handle_with(wait)? {
                return Ok(Some(out));
            }
            if deadline.is_none_or(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    fn handle_with(&mut self, wait: Wait) -> Result<Option<Outcome>> {
        let res = self.handle_ready(wait);
        if let Err(e) = &res {
            self.fail(e);
        }
        res
    }

    /// The channel is gone: what it received is given up, and the window lease ended.
    // Error paths are kept out of line (`#[cold]`), here and below, so that the code every
    // message runs lies in as few cache lines as it can.
    #[cold]
    fn fail(&mut self, e: &Error) {
        self.reader.abandon();
        self.end_lease(e);
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

    fn handle_ready(&mut self, wait: Wait) -> Result<Option<Outcome>> {
        let Some(msg) = self.poll_message(wait)? else {
            return Ok(None);
        };
        FsMetrics::add(&self.metrics.requests, 1);
        let request = msg.raw.request;
        let need_reply = msg.raw.flags & FLAG_NEED_REPLY != 0;
        // Set for a map that decoded: the latency counts from there to the reply.
        let mut arrived = None;
        let result = Header::parse(&msg.raw)
            .map_err(RequestError::from)
            .and_then(|h| {
                // Without all its descriptors the fd count is unknown: refused right after the
                // header, before anything that counts them.
                if msg.fds.lost() {
                    return Err(RequestError::FdsLost);
                }
                decode_body(
                    self.dialect,
                    &h,
                    self.reader.body(msg.body.clone()),
                    msg.fds.count(),
                )
                .map_err(Into::into)
            })
            .and_then(|req| {
                if matches!(req, Request::ShmemMap { .. } | Request::FsMap(_)) {
                    arrived = Some(Instant::now());
                }
                self.execute(req, msg.fds.first())
            });
        // Descriptors are not needed past this point (a mapping keeps its file alive by itself).
        drop(msg);
        let (value, payload) = match result {
            Ok(Reply::Value(v)) => (v as i64, None),
            Ok(Reply::Data(d)) => (0, Some(d)),
            Err(e) => (self.refuse(request, &e), None),
        };
        let replied = need_reply || payload.is_some();
        match payload {
            Some(data) => self.send_all(&encode_reply_with(request, &data))?,
            // The common reply, without an allocation.
            None if replied => self.send_all(&value_reply(request, value as u64))?,
            None => {}
        }
        if let Some(at) = arrived.filter(|_| value >= 0) {
            self.metrics.map_latency().record(at.elapsed());
        }
        Ok(Some(Outcome {
            request,
            value,
            replied,
        }))
    }

    /// Counts and logs a refused request; its reply value.
    #[cold]
    fn refuse(&self, request: u32, e: &RequestError) -> i64 {
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
        -i64::from(errno)
    }

    fn send_all(&self, bytes: &[u8]) -> Result<()> {
        let mut sent = 0;
        while sent < bytes.len() {
            // Never waits: EAGAIN means the backend left a socket buffer of replies unread.
            let res = sendmsg(
                &self.sock,
                &[IoSlice::new(&bytes[sent..])],
                &mut SendAncillaryBuffer::default(),
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            );
            match res {
                Ok(n) => sent += n,
                Err(Errno::INTR) => {}
                Err(e) => return Err(Error::Send(io::Error::from(e))),
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

    fn execute(
        &self,
        req: Request,
        first: Option<&File>,
    ) -> std::result::Result<Reply, RequestError> {
        self.check_current()?;
        let from = self.requester();
        // The decoder checked the descriptor count; `first` cannot be missing where it is used.
        let file = || {
            first.ok_or(RequestError::Decode(DecodeError::BadFdCount {
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

/// [`protocol::encode_reply`] into an array.
fn value_reply(request: u32, value: u64) -> [u8; protocol::HEADER_SIZE + 8] {
    let mut out = [0; protocol::HEADER_SIZE + 8];
    out[..4].copy_from_slice(&request.to_le_bytes());
    out[4..8].copy_from_slice(&(protocol::VERSION | protocol::FLAG_REPLY).to_le_bytes());
    out[8..12].copy_from_slice(&8u32.to_le_bytes());
    out[12..].copy_from_slice(&value.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_reply_is_encode_reply() {
        for (request, value) in [
            (9, 0),
            (10, (-i64::from(libc::EBADF)) as u64),
            (1, u64::MAX),
        ] {
            assert_eq!(
                value_reply(request, value).to_vec(),
                protocol::encode_reply(request, value)
            );
        }
    }
}
