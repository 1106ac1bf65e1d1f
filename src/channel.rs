// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The backend channel: the frontend's end of the socket pair whose other end goes to the
//! backend (`set_backend_request_fd`). It receives requests with their file descriptors, decodes
//! them ([`crate::protocol`]), executes them on the [`DaxWindow`] or the [`IoSpace`], and replies.
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
//! The socket is non-blocking. A message is reassembled across calls (header, body,
//! descriptors), so a backend that sends half a message and goes silent costs the caller one
//! `recvmsg` that returns `EAGAIN`, not a stalled thread. Each call reads only the bytes of the
//! message in progress (header first, then exactly the body it announces), so descriptors are
//! always attributed to the message whose bytes carried them. A body above [`MAX_BODY_SIZE`] is
//! drained, at most [`DRAIN_BUDGET`] bytes a call, then refused with `EMSGSIZE` like any
//! refusal: the stream stays in sync and the event loop is never held longer than that. Watch
//! the socket level-triggered (the default of epoll).
//!
//! A reply is sent without blocking too. The backend reads each reply before it sends its next
//! request (vhost's `Backend` does); one that leaves replies unread until the socket buffer is
//! full ends the channel with [`Error::Send`] (`EAGAIN`).
//!
//! # When the channel ends
//!
//! When the channel fails ([`BackendChannel::handle_one`] returns `Err`: the backend closed it
//! or broke the protocol), its window lease is ended at once ([`WindowLease::end`]): every
//! mapping is dropped and the window moves to a new generation, whichever way the channel is
//! driven. A channel built before a [`DaxWindow::reset`] refuses every request with `ESTALE`.
//!
//! The thread needs these syscalls (for seccomp filters): [`SYSCALLS`].
//!
//! # The thread, as a VMM wants it
//!
//! - **Name and start hook.** [`BackendChannelBuilder::thread_name`] names the thread (Linux
//!   keeps the first 15 bytes), and [`BackendChannelBuilder::on_thread_start`] runs a
//!   [`ThreadHook`] on the new thread before it reads anything from the backend: the place for a
//!   seccomp filter (built from [`SYSCALLS`]), CPU affinity or scheduling policy.
//!   [`BackendChannel::spawn`] waits for the hook and returns its outcome: when it fails, the
//!   thread ends without serving, everything the channel held is closed, and `spawn` fails
//!   with [`Error::ThreadStart`], so a VMM knows its filter is in place before the backend can
//!   send a byte. Cloud-hypervisor's `spawn_virtio_thread` does the same for its device threads,
//!   but only logs a failed filter.
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

use std::fs::File;
use std::io;
use std::mem::size_of;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vm_memory::ByteValued;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::io::{IoSpace, Transfer};
use crate::metrics::{FsMetrics, Refusal};
use crate::protocol::{
    self, decode_body, encode_reply, encode_reply_with, DecodeError, Dialect, Header, IoDirection,
    RawHeader, Request, FLAG_NEED_REPLY, HEADER_SIZE, MAX_BODY_SIZE, MAX_FDS,
};
use crate::window::{self, DaxWindow, Policy, WindowLease};

/// Syscalls the channel thread makes, for VMMs that install seccomp filters on it.
pub const SYSCALLS: &[&str] = &[
    "recvmsg",
    "sendmsg",
    "mmap",
    "munmap",
    "msync",
    "pread64",
    "pwrite64",
    "process_vm_readv",
    "process_vm_writev",
    "getpid",
    "close",
    "epoll_wait",
    "epoll_pwait",
    "read",
    "write",
    "futex",
    "shutdown",
    "poll",
    "ppoll",
    "fcntl",
];

/// Most bytes of an oversized body drained in one [`BackendChannel::handle_one`] call.
pub const DRAIN_BUDGET: usize = 256 << 10;

/// How long [`ChannelThread::stop`] and dropping a [`ChannelThread`] wait for the thread.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`ChannelThread::pause`] waits for the thread to park.
pub const DEFAULT_PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The error a [`ThreadHook`] returns.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// A function run on the channel thread when it starts, before it reads anything from the
/// backend (see the module documentation): install a seccomp filter, set CPU affinity. It runs
/// once per thread, so a device runs it again for the channel of every session; `Err` stops
/// the thread and makes [`BackendChannel::spawn`] fail with [`Error::ThreadStart`].
#[derive(Clone)]
pub struct ThreadHook(Arc<dyn Fn() -> std::result::Result<(), HookError> + Send + Sync>);

impl ThreadHook {
    /// Wraps `hook`.
    pub fn new(
        hook: impl Fn() -> std::result::Result<(), HookError> + Send + Sync + 'static,
    ) -> Self {
        ThreadHook(Arc::new(hook))
    }

    fn run(&self) -> std::result::Result<(), HookError> {
        (self.0)()
    }
}

impl std::fmt::Debug for ThreadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadHook")
    }
}

/// Shared memory region id of the virtio-fs cache window (`VIRTIO_FS_SHMCAP_ID_CACHE`).
pub const SHMID_CACHE: u8 = 0;

/// Why one request was refused. [`RequestError::errno`] is the one place where refusals become
/// the errno the backend is told; [`RequestError::reason`] picks the counter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The message is malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The request names a shared memory region this device does not have.
    #[error("unknown shared memory region {shmid}")]
    UnknownShmid {
        /// The region id.
        shmid: u8,
    },
    /// The window refused or failed.
    #[error(transparent)]
    Window(#[from] window::Error),
    /// The IO path refused or failed.
    #[error(transparent)]
    Io(#[from] crate::io::Error),
}

impl RequestError {
    /// The errno that stands for this refusal on the wire.
    pub fn errno(&self) -> i32 {
        match self {
            RequestError::Decode(e) => match e {
                DecodeError::BadVersion { .. }
                | DecodeError::ReplyFlag { .. }
                | DecodeError::UnknownHeaderFlags { .. } => libc::EPROTO,
                DecodeError::Oversized { .. } => libc::EMSGSIZE,
                DecodeError::BadSize { .. } => libc::EINVAL,
                DecodeError::Unsupported { .. } => libc::ENOSYS,
                DecodeError::BadFdCount { .. } => libc::EBADF,
                DecodeError::ZeroLength => libc::EINVAL,
                DecodeError::Overflow { .. } => libc::EOVERFLOW,
                DecodeError::BadFlags { .. } => libc::EINVAL,
            },
            RequestError::UnknownShmid { .. } => libc::ENXIO,
            RequestError::Window(e) => e.errno(),
            RequestError::Io(e) => e.errno(),
        }
    }

    /// The counter this refusal goes to.
    pub fn reason(&self) -> Refusal {
        use window::RangeError as R;
        match self {
            RequestError::Decode(e) => match e {
                DecodeError::BadVersion { .. }
                | DecodeError::ReplyFlag { .. }
                | DecodeError::UnknownHeaderFlags { .. } => Refusal::Header,
                DecodeError::Oversized { .. } | DecodeError::BadSize { .. } => Refusal::Size,
                DecodeError::Unsupported { .. } => Refusal::Unsupported,
                DecodeError::BadFdCount { .. } => Refusal::FdCount,
                DecodeError::ZeroLength => Refusal::ZeroLength,
                DecodeError::Overflow { .. } => Refusal::Overflow,
                DecodeError::BadFlags { .. } => Refusal::Flags,
            },
            RequestError::UnknownShmid { .. } => Refusal::Shmid,
            RequestError::Window(e) => match e {
                window::Error::Range { reason, .. } => match reason {
                    R::Overflow => Refusal::Overflow,
                    R::OutOfWindow => Refusal::OutOfWindow,
                    R::Misaligned => Refusal::Misaligned,
                    R::Empty => Refusal::ZeroLength,
                    R::Busy => Refusal::Overlap,
                    R::NotMapped => Refusal::NotMapped,
                    R::Limit => Refusal::Limit,
                },
                window::Error::Stale { .. } => Refusal::Stale,
                window::Error::InvalidSize { .. }
                | window::Error::InvalidGranule { .. }
                | window::Error::Region { .. }
                | window::Error::Poisoned
                | window::Error::Reserve { .. }
                | window::Error::Map { .. }
                | window::Error::Unmap { .. }
                | window::Error::Sync { .. } => Refusal::Syscall,
            },
            RequestError::Io(e) => match e {
                crate::io::Error::BadAddress { .. } | crate::io::Error::WindowOverlap { .. } => {
                    Refusal::BadAddress
                }
                crate::io::Error::Transfer { .. } => Refusal::Syscall,
            },
        }
    }
}

/// Why the channel stopped serving. Refused requests are not errors of the channel: they are
/// answered and counted, and [`BackendChannel::handle_one`] returns `Ok`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend closed its end between two messages.
    #[error("the backend closed the channel")]
    Disconnected,
    /// The backend closed its end in the middle of a message.
    #[error(
        "the backend closed the channel in the middle of a message ({got} of {expected} bytes)"
    )]
    Truncated {
        /// Bytes received of the part being read (the header, or the body it announced).
        got: usize,
        /// Size of that part.
        expected: usize,
    },
    /// Receiving failed.
    #[error("receiving from the backend channel failed")]
    Recv(#[source] io::Error),
    /// Sending a reply failed.
    #[error("replying on the backend channel failed")]
    Send(#[source] io::Error),
    /// Setting up the channel thread failed.
    #[error("setting up the channel thread failed")]
    Thread(#[source] io::Error),
    /// The thread-start hook ([`BackendChannelBuilder::on_thread_start`]) failed: the thread
    /// ended without serving anything.
    #[error("the channel thread's start hook failed")]
    ThreadStart(#[source] HookError),
    /// The thread did not park within the bound (it was inside a request that took longer); the
    /// pause was withdrawn and the thread serves on.
    #[error("the channel thread did not pause within {0:?}")]
    PauseTimeout(Duration),
    /// The channel thread panicked.
    #[error("the channel thread panicked")]
    Panicked,
    /// The channel thread did not end within the bound; it was left to end by itself. Its
    /// window lease no longer maps once the window is reset.
    #[error("the channel thread did not stop within {0:?}")]
    StopTimeout(Duration),
}

/// Result of channel operations.
pub type Result<T> = std::result::Result<T, Error>;

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

/// Builder for [`BackendChannel`].
#[derive(Debug)]
pub struct BackendChannelBuilder {
    sock: UnixStream,
    window: Option<Arc<DaxWindow>>,
    dialect: Dialect,
    replace_exact: bool,
    io: Option<Arc<IoSpace>>,
    name: String,
    thread: ThreadConfig,
}

/// How [`BackendChannel::spawn`] starts its thread.
#[derive(Clone, Debug, Default)]
struct ThreadConfig {
    name: Option<String>,
    hook: Option<ThreadHook>,
    paused: bool,
}

impl BackendChannelBuilder {
    /// The DAX window requests map into. Without one, every map is refused with `ENXIO` and a
    /// legacy unmap-all (which virtiofsd sends at mount even without DAX) succeeds.
    pub fn window(mut self, window: Arc<DaxWindow>) -> Self {
        self.window = Some(window);
        self
    }

    /// The dialect in force: [`Dialect::Standard`] when SHMEM was negotiated, or
    /// [`Dialect::Legacy`] when the VMM configures it. Default: standard.
    pub fn dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// Standard dialect only: let a map of exactly the range of one live mapping replace it (the
    /// Linux guest's read-only to writable upgrade). Default: off, as the specification says.
    pub fn replace_exact(mut self, enable: bool) -> Self {
        self.replace_exact = enable;
        self
    }

    /// The address space FS_IO and MEM_READ / MEM_WRITE serve. Default: an empty one (every IO
    /// refused with `EFAULT`).
    pub fn io_space(mut self, io: Arc<IoSpace>) -> Self {
        self.io = Some(io);
        self
    }

    /// Name used as the log prefix (the device tag).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Name of the thread [`BackendChannel::spawn`] starts (Linux keeps its first 15 bytes).
    /// Default: the log prefix ([`BackendChannelBuilder::name`]) and `-backend`.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread.name = Some(name.into());
        self
    }

    /// A hook [`BackendChannel::spawn`] runs on the new thread before it serves anything; spawn
    /// returns its outcome (see the module documentation). Default: none.
    pub fn on_thread_start(mut self, hook: ThreadHook) -> Self {
        self.thread.hook = Some(hook);
        self
    }

    /// Whether [`BackendChannel::spawn`] starts the thread paused, as if
    /// [`ChannelThread::pause`] had been called before its first read: it serves nothing until
    /// [`ChannelThread::resume`]. Default: false.
    pub fn start_paused(mut self, paused: bool) -> Self {
        self.thread.paused = paused;
        self
    }

    /// Builds the channel. It takes a lease on the window's current generation
    /// ([`DaxWindow::lease`]).
    pub fn build(self) -> BackendChannel {
        let policy = match (self.dialect, self.replace_exact) {
            (Dialect::Legacy, _) => Policy::LEGACY,
            (Dialect::Standard, false) => Policy::STANDARD,
            (Dialect::Standard, true) => Policy::STANDARD_REPLACE,
        };
        let metrics = match &self.window {
            Some(w) => w.metrics().clone(),
            None => Arc::new(FsMetrics::new()),
        };
        BackendChannel {
            sock: self.sock,
            window: self.window.as_ref().map(DaxWindow::lease),
            dialect: self.dialect,
            policy,
            io: self.io.unwrap_or_default(),
            metrics,
            name: self.name,
            reader: Reader::default(),
            nonblocking: false,
            thread: self.thread,
        }
    }
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
    nonblocking: bool,
    thread: ThreadConfig,
}

/// Most descriptors kept for one message; no request needs more than one. Further ones are
/// closed as they arrive and only counted, so a peer that spreads a message over many parts,
/// each with descriptors, cannot make the channel hold more than this.
const KEPT_FDS: usize = 4;

/// The descriptors received with one message: the first [`KEPT_FDS`] owned, the rest counted.
#[derive(Default)]
struct Fds {
    kept: Vec<File>,
    dropped: usize,
}

impl Fds {
    fn take(&mut self, file: File) {
        if self.kept.len() < KEPT_FDS {
            self.kept.push(file);
        } else {
            self.dropped += 1;
        }
    }

    fn count(&self) -> usize {
        self.kept.len() + self.dropped
    }
}

/// A received message: raw header, body (empty when it was oversized and drained), and the
/// descriptors that came along.
struct Message {
    raw: RawHeader,
    body: Vec<u8>,
    fds: Fds,
}

/// Where the reassembly of the message in progress stands.
#[derive(Default)]
enum Stage {
    /// Reading the header; `got` bytes of it so far.
    #[default]
    Header,
    /// Reading a body that fits the limit into `body`; `got` bytes so far.
    Body,
    /// Draining an oversized body; `left` bytes to go.
    Drain { left: usize },
}

/// The message in progress, kept across calls so that no call waits for the rest of it.
#[derive(Default)]
struct Reader {
    stage: Stage,
    hdr: [u8; HEADER_SIZE],
    raw: RawHeader,
    got: usize,
    body: Vec<u8>,
    sink: Vec<u8>,
    fds: Fds,
}

/// What one receive gave.
enum Recv {
    Bytes(usize),
    WouldBlock,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("got", &self.got)
            .field("fds", &self.fds.count())
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Whether the stream stands between two messages.
    fn idle(&self) -> bool {
        matches!(self.stage, Stage::Header) && self.got == 0 && self.fds.count() == 0
    }

    /// The finished message; the reader starts on the next one.
    fn finish(&mut self) -> Message {
        let msg = Message {
            raw: self.raw,
            body: std::mem::take(&mut self.body),
            fds: std::mem::take(&mut self.fds),
        };
        self.stage = Stage::Header;
        self.got = 0;
        msg
    }
}

impl BackendChannel {
    /// Starts building a channel over `sock`, the frontend's end of the socket pair.
    pub fn builder(sock: UnixStream) -> BackendChannelBuilder {
        BackendChannelBuilder {
            sock,
            window: None,
            dialect: Dialect::Standard,
            replace_exact: false,
            io: None,
            name: String::from("virtio-fs"),
            thread: ThreadConfig::default(),
        }
    }

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

    /// Receives into `buf` without blocking, taking ownership of the descriptors that came along.
    fn recv_part(sock: &UnixStream, buf: &mut [u8], fds: &mut Fds) -> Result<Recv> {
        let mut raw = [-1 as RawFd; MAX_FDS];
        let mut iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        loop {
            // SAFETY: the iovec points at `buf`, an exclusive borrow of `buf.len()` bytes that may
            // hold any bytes.
            let res = unsafe { sock.recv_with_fds(&mut iov, &mut raw) };
            match res {
                Ok((n, nfds)) => {
                    for &fd in raw.iter().take(nfds) {
                        // SAFETY: recvmsg installed `nfds` new descriptors in our table for us
                        // alone; each is wrapped exactly once, so it is closed exactly once.
                        fds.take(unsafe { File::from_raw_fd(fd) });
                    }
                    return Ok(Recv::Bytes(n));
                }
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(e) if e.errno() == libc::EAGAIN => return Ok(Recv::WouldBlock),
                // The backend closed its end with replies unread: an end of stream like any.
                Err(e) if e.errno() == libc::ECONNRESET => return Ok(Recv::Bytes(0)),
                Err(e) => return Err(Error::Recv(io::Error::from_raw_os_error(e.errno()))),
            }
        }
    }

    fn ensure_nonblocking(&mut self) -> Result<()> {
        if !self.nonblocking {
            self.sock.set_nonblocking(true).map_err(Error::Recv)?;
            self.nonblocking = true;
        }
        Ok(())
    }

    /// Advances the message in progress with what the socket holds now. `Ok(None)`: not whole
    /// yet (or the drain budget is spent); call again when the socket is readable.
    fn poll_message(&mut self) -> Result<Option<Message>> {
        self.ensure_nonblocking()?;
        let r = &mut self.reader;
        let mut drained = 0;
        loop {
            let (buf, expected): (&mut [u8], usize) = match r.stage {
                Stage::Header => (&mut r.hdr[r.got..], HEADER_SIZE),
                Stage::Body => {
                    let len = r.body.len();
                    (&mut r.body[r.got..], len)
                }
                Stage::Drain { left } => {
                    if drained >= DRAIN_BUDGET {
                        return Ok(None);
                    }
                    if r.sink.is_empty() {
                        r.sink.resize(64 << 10, 0);
                    }
                    let chunk = left.min(r.sink.len()).min(DRAIN_BUDGET - drained);
                    (&mut r.sink[..chunk], r.raw.size as usize)
                }
            };
            let n = match Self::recv_part(&self.sock, buf, &mut r.fds)? {
                Recv::WouldBlock => return Ok(None),
                Recv::Bytes(0) => {
                    return Err(if r.idle() {
                        Error::Disconnected
                    } else {
                        Error::Truncated {
                            got: r.got,
                            expected,
                        }
                    })
                }
                Recv::Bytes(n) => n,
            };
            match &mut r.stage {
                Stage::Header => {
                    r.got += n;
                    if r.got < HEADER_SIZE {
                        continue;
                    }
                    r.raw = RawHeader::from_slice(&r.hdr).copied().unwrap_or_default();
                    let size = r.raw.size as usize;
                    r.got = 0;
                    if size > MAX_BODY_SIZE {
                        r.stage = Stage::Drain { left: size };
                    } else if size > 0 {
                        r.body.clear();
                        r.body.resize(size, 0);
                        r.stage = Stage::Body;
                    } else {
                        return Ok(Some(r.finish()));
                    }
                }
                Stage::Body => {
                    r.got += n;
                    if r.got == r.body.len() {
                        return Ok(Some(r.finish()));
                    }
                }
                Stage::Drain { left } => {
                    *left -= n;
                    r.got += n;
                    drained += n;
                    if *left == 0 {
                        r.body.clear();
                        return Ok(Some(r.finish()));
                    }
                }
            }
        }
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
            .and_then(|h| decode_body(self.dialect, &h, &msg.body, msg.fds.count()))
            .map_err(RequestError::from)
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

    fn execute(&self, req: Request, files: &[File]) -> std::result::Result<Reply, RequestError> {
        self.check_current()?;
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
                    self.io.transfer(e.gpa, e.len, check)?;
                }
                let mut total = 0;
                for e in &entries {
                    self.check_current()?;
                    let t = match e.direction {
                        IoDirection::ReadFile => Transfer::ReadFile(file, e.fd_offset),
                        IoDirection::WriteFile => Transfer::WriteFile(file, e.fd_offset),
                    };
                    let done = self.io.transfer(e.gpa, e.len, t)?;
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
                    .transfer(gpa, u64::from(size), Transfer::ToBuffer(buf))?;
                FsMetrics::add(&self.metrics.ios, 1);
                FsMetrics::add(&self.metrics.io_bytes, u64::from(size));
                return Ok(Reply::Data(data));
            }
            Request::MemWrite { gpa, data } => {
                let len = data.len() as u64;
                self.io.transfer(gpa, len, Transfer::FromBuffer(&data))?;
                FsMetrics::add(&self.metrics.ios, 1);
                FsMetrics::add(&self.metrics.io_bytes, len);
            }
        }
        Ok(Reply::Value(0))
    }

    /// Serves the channel on a thread of its own until [`ChannelThread::stop`] (or the
    /// `ChannelThread` is dropped) or until the channel ends. The thread reads exactly as
    /// [`BackendChannel::handle_one`] does, so when the backend disconnects, its window lease
    /// is ended: every mapping is dropped at once and the thread ends.
    ///
    /// With a start hook ([`BackendChannelBuilder::on_thread_start`]), this waits for the hook
    /// to return on the new thread: [`Error::ThreadStart`] when it failed (the thread has ended
    /// and everything the channel held is closed).
    pub fn spawn(self) -> Result<ChannelThread> {
        self.spawn_with(|name, f| thread::Builder::new().name(name).spawn(f))
    }

    fn spawn_with(
        mut self,
        spawn: impl FnOnce(
            String,
            Box<dyn FnOnce() -> Result<()> + Send>,
        ) -> io::Result<JoinHandle<Result<()>>>,
    ) -> Result<ChannelThread> {
        self.ensure_nonblocking()?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::Thread)?;
        let stop_thread = stop.try_clone().map_err(Error::Thread)?;
        let sock = self.sock.try_clone().map_err(Error::Thread)?;
        let epoll = Epoll::new().map_err(Error::Thread)?;
        let control = Arc::new(Control {
            state: Mutex::new(PauseState {
                wanted: self.thread.paused,
                ..PauseState::default()
            }),
            cv: Condvar::new(),
            wake: EventFd::new(libc::EFD_NONBLOCK).map_err(Error::Thread)?,
        });
        for (fd, data) in [
            (self.sock.as_raw_fd(), EV_SOCK),
            (stop_thread.as_raw_fd(), EV_STOP),
            (control.wake.as_raw_fd(), EV_WAKE),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, data),
                )
                .map_err(Error::Thread)?;
        }
        let name = self.name.clone();
        let thread_name = self
            .thread
            .name
            .clone()
            .unwrap_or_else(|| format!("{name}-backend"));
        let hook = self.thread.hook.take();
        let (done_tx, done) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel::<std::result::Result<(), HookError>>();
        let thread_control = control.clone();
        let handle = spawn(
            thread_name,
            Box::new(move || {
                // Dropped when the closure ends, however it ends: the stopper's signal, and the
                // pauser's.
                let _done = done_tx;
                let _ended = Ended(&thread_control);
                if let Some(hook) = hook {
                    if let Err(e) = hook.run() {
                        let _ = started_tx.send(Err(e));
                        return Ok(());
                    }
                }
                {
                    // A channel built paused is parked before `spawn` returns.
                    let mut s = thread_control.lock();
                    s.parked = s.wanted;
                }
                let _ = started_tx.send(Ok(()));
                self.serve(epoll, stop_thread, &thread_control)
            }),
        )
        .map_err(Error::Thread)?;
        match started.recv() {
            Ok(Ok(())) => Ok(ChannelThread {
                stop,
                sock,
                handle: Some(handle),
                done,
                name,
                control,
            }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(Error::ThreadStart(e))
            }
            // The hook panicked.
            Err(_) => {
                let _ = handle.join();
                Err(Error::Panicked)
            }
        }
    }

    fn serve(mut self, epoll: Epoll, stop: EventFd, control: &Control) -> Result<()> {
        let mut events = [EpollEvent::default(); 3];
        loop {
            if control.park() {
                return Ok(());
            }
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Recv(e)),
            };
            let ready = &events[..n];
            if ready.iter().any(|e| e.data() == EV_STOP) {
                return Ok(());
            }
            if ready.iter().any(|e| e.data() == EV_WAKE) {
                // A pause (or a withdrawn one): look again before reading anything.
                let _ = control.wake.read();
                continue;
            }
            // One message a wakeup: the socket is watched level-triggered, so whatever else
            // is there wakes the next `epoll_wait` at once, and a stop or a pause is seen in
            // between.
            if let Err(e) = self.handle_one() {
                if stop.read().is_ok() {
                    return Ok(());
                }
                return Err(e);
            }
        }
    }
}

/// Epoll tokens of the channel thread.
const EV_SOCK: u64 = 0;
const EV_STOP: u64 = 1;
const EV_WAKE: u64 = 2;

/// Where a pause stands; under [`Control::state`].
#[derive(Debug, Default)]
struct PauseState {
    /// A pause is asked for.
    wanted: bool,
    /// The thread is parked: it reads nothing until `wanted` is cleared.
    parked: bool,
    /// A stop is asked for: a parked thread ends.
    stopping: bool,
    /// The thread has ended.
    ended: bool,
}

/// What a [`ChannelThread`] and its thread share to pause it.
#[derive(Debug)]
struct Control {
    state: Mutex<PauseState>,
    cv: Condvar,
    /// Wakes the thread out of `epoll_wait` to look at `state`.
    wake: EventFd,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, PauseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// On the thread, between two messages: parks while a pause is wanted. Returns whether the
    /// thread is to stop.
    fn park(&self) -> bool {
        let mut s = self.lock();
        if s.wanted && !s.stopping {
            s.parked = true;
            self.cv.notify_all();
            while s.wanted && !s.stopping {
                s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
            }
        }
        s.parked = false;
        s.stopping
    }
}

/// Marks the thread ended when dropped, however the thread ends.
struct Ended<'a>(&'a Control);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.ended = true;
        s.parked = false;
        self.0.cv.notify_all();
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

/// A channel served on its own thread. Dropping it stops the thread and waits for it, as
/// [`ChannelThread::stop`] does.
#[derive(Debug)]
pub struct ChannelThread {
    stop: EventFd,
    sock: UnixStream,
    handle: Option<JoinHandle<Result<()>>>,
    done: mpsc::Receiver<()>,
    name: String,
    control: Arc<Control>,
}

impl ChannelThread {
    /// Pauses the thread, waiting at most [`DEFAULT_PAUSE_TIMEOUT`]. See
    /// [`ChannelThread::pause_timeout`].
    pub fn pause(&self) -> Result<()> {
        self.pause_timeout(DEFAULT_PAUSE_TIMEOUT)
    }

    /// Pauses the thread: returns once it is parked between two messages, so nothing is mapped,
    /// unmapped or copied until [`ChannelThread::resume`]; requests the backend sends meanwhile
    /// stay in the socket. A thread inside a request parks when the request is done; one that
    /// does not within `timeout` gets [`Error::PauseTimeout`], and the pause is withdrawn (the
    /// thread serves on as before). Pausing a paused thread, or one that has ended, returns `Ok`
    /// at once.
    pub fn pause_timeout(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut s = self.control.lock();
        s.wanted = true;
        if !s.parked && !s.ended {
            // Wakes the thread out of epoll_wait; a thread inside a request parks when it
            // comes back to the loop. An eventfd write fails only if its counter would
            // overflow, which a pending wakeup cannot make happen.
            let _ = self.control.wake.write(1);
        }
        while !s.parked && !s.ended {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                s.wanted = false;
                drop(s);
                log::warn!(
                    "{}: backend channel thread busy for {timeout:?}: not paused",
                    self.name
                );
                return Err(Error::PauseTimeout(timeout));
            }
            s = self
                .control
                .cv
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Resumes a paused thread: it serves the requests that came meanwhile, in order. Resuming
    /// a thread that is not paused does nothing.
    pub fn resume(&self) {
        let mut s = self.control.lock();
        s.wanted = false;
        self.control.cv.notify_all();
    }

    /// Whether the thread is parked by [`ChannelThread::pause`] (or
    /// [`BackendChannelBuilder::start_paused`]).
    pub fn is_paused(&self) -> bool {
        let s = self.control.lock();
        s.parked && s.wanted
    }

    /// Whether the thread has ended (the backend disconnected).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Stops the thread and joins it, waiting at most [`DEFAULT_STOP_TIMEOUT`]. See
    /// [`ChannelThread::stop_timeout`].
    pub fn stop(self) -> Result<()> {
        self.stop_timeout(DEFAULT_STOP_TIMEOUT)
    }

    /// Stops the thread and joins it, waiting at most `timeout`. The socket is shut down, so a
    /// thread in the middle of a message ends too; a thread inside a request (an FS_IO on a
    /// file that stalls) ends when the request does. Returns `Ok` when the thread stopped on
    /// request or had ended cleanly, the error that ended it (for example
    /// [`Error::Disconnected`]), or [`Error::StopTimeout`]: the thread is then left to end by
    /// itself, and [`DaxWindow::reset`] keeps it from mapping anything after.
    pub fn stop_timeout(mut self, timeout: Duration) -> Result<()> {
        self.signal_stop();
        self.join_within(timeout)
    }

    /// Waits for the thread to end by itself (the backend disconnecting) and returns why.
    pub fn join(mut self) -> Result<()> {
        match self.handle.take() {
            Some(h) => h.join().map_err(|_| Error::Panicked)?,
            None => Ok(()),
        }
    }

    fn signal_stop(&self) {
        {
            let mut s = self.control.lock();
            s.stopping = true;
            self.control.cv.notify_all();
        }
        let _ = self.stop.write(1);
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    fn join_within(&mut self, timeout: Duration) -> Result<()> {
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        match self.done.recv_timeout(timeout) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                log::warn!(
                    "{}: backend channel thread still busy after {timeout:?}; left to end by itself",
                    self.name
                );
                Err(Error::StopTimeout(timeout))
            }
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                handle.join().map_err(|_| Error::Panicked)?
            }
        }
    }
}

impl Drop for ChannelThread {
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.signal_stop();
            let _ = self.join_within(DEFAULT_STOP_TIMEOUT);
        }
    }
}
