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
//! of its own that stops and joins cleanly.
//!
//! The thread needs these syscalls (for seccomp filters): [`SYSCALLS`].

use std::fs::File;
use std::io;
use std::mem::size_of;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

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
use crate::window::{self, DaxWindow, Policy};

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
];

/// Shared memory region id of the virtio-fs cache window (`VIRTIO_FS_SHMCAP_ID_CACHE`).
pub const SHMID_CACHE: u8 = 0;

/// Why one request was refused. [`RequestError::errno`] is the one place where refusals become
/// the errno the backend is told; [`RequestError::reason`] picks the counter.
#[derive(Debug, thiserror::Error)]
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
                },
                window::Error::InvalidSize { .. }
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
pub enum Error {
    /// The backend closed its end between two messages.
    #[error("the backend closed the channel")]
    Disconnected,
    /// The backend closed its end in the middle of a message.
    #[error(
        "the backend closed the channel in the middle of a message ({got} of {expected} bytes)"
    )]
    Truncated {
        /// Bytes received of the part being read.
        got: usize,
        /// Bytes expected.
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
    /// The channel thread panicked.
    #[error("the channel thread panicked")]
    Panicked,
}

/// Result of channel operations.
pub type Result<T> = std::result::Result<T, Error>;

/// What [`BackendChannel::handle_one`] did with one message.
#[derive(Debug, PartialEq, Eq)]
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

    /// Builds the channel.
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
            window: self.window,
            dialect: self.dialect,
            policy,
            io: self.io.unwrap_or_default(),
            metrics,
            name: self.name,
            body: Vec::with_capacity(MAX_BODY_SIZE),
        }
    }
}

/// The frontend's end of the backend channel. See the module documentation.
#[derive(Debug)]
pub struct BackendChannel {
    sock: UnixStream,
    window: Option<Arc<DaxWindow>>,
    dialect: Dialect,
    policy: Policy,
    io: Arc<IoSpace>,
    metrics: Arc<FsMetrics>,
    name: String,
    body: Vec<u8>,
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

/// A received message: raw header (its body is in `BackendChannel::body`, or was drained), and
/// the descriptors that came along.
struct Message {
    raw: RawHeader,
    fds: Fds,
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

    /// Receives into `buf`, taking ownership of the descriptors that came along.
    fn recv_part(&self, buf: &mut [u8], fds: &mut Fds) -> Result<usize> {
        let mut raw = [-1 as RawFd; MAX_FDS];
        let mut iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        loop {
            // SAFETY: the iovec points at `buf`, an exclusive borrow of `buf.len()` bytes that may
            // hold any bytes.
            let res = unsafe { self.sock.recv_with_fds(&mut iov, &mut raw) };
            match res {
                Ok((n, nfds)) => {
                    for &fd in raw.iter().take(nfds) {
                        // SAFETY: recvmsg installed `nfds` new descriptors in our table for us
                        // alone; each is wrapped exactly once, so it is closed exactly once.
                        fds.take(unsafe { File::from_raw_fd(fd) });
                    }
                    return Ok(n);
                }
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(e) => return Err(Error::Recv(io::Error::from_raw_os_error(e.errno()))),
            }
        }
    }

    /// Fills `buf` completely, or reports where the stream ended.
    fn recv_exact(&self, buf: &mut [u8], fds: &mut Fds, first: bool) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let n = self.recv_part(&mut buf[got..], fds)?;
            if n == 0 {
                return Err(if first && got == 0 {
                    Error::Disconnected
                } else {
                    Error::Truncated {
                        got,
                        expected: buf.len(),
                    }
                });
            }
            got += n;
        }
        Ok(())
    }

    /// Receives one whole message: header, then the announced body (into `self.body` when it fits
    /// the limit, drained otherwise), with every descriptor that came along.
    fn recv_message(&mut self) -> Result<Message> {
        let mut fds = Fds::default();
        let mut hdr = [0u8; HEADER_SIZE];
        self.recv_exact(&mut hdr, &mut fds, true)?;
        let raw = RawHeader::from_slice(&hdr).copied().unwrap_or_default();
        let size = raw.size as usize;
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        let res = if size <= MAX_BODY_SIZE {
            body.resize(size, 0);
            self.recv_exact(&mut body, &mut fds, false)
        } else {
            // Drain what the header announced so the stream stays in sync.
            let mut left = size;
            let mut sink = [0u8; 4096];
            let mut res = Ok(());
            while left > 0 && res.is_ok() {
                let chunk = left.min(sink.len());
                res = self.recv_exact(&mut sink[..chunk], &mut fds, false);
                left -= chunk;
            }
            res
        };
        self.body = body;
        res?;
        Ok(Message { raw, fds })
    }

    /// Receives, decodes, executes and answers one message. Blocks until a whole message has
    /// arrived. A refused request is `Ok` (see [`Outcome::value`]); `Err` means the channel is
    /// gone (or the reply could not be sent).
    pub fn handle_one(&mut self) -> Result<Outcome> {
        let msg = self.recv_message()?;
        FsMetrics::add(&self.metrics.requests, 1);
        let request = msg.raw.request;
        let need_reply = msg.raw.flags & FLAG_NEED_REPLY != 0;
        let result = Header::parse(&msg.raw)
            .and_then(|h| {
                let body = if msg.raw.size as usize <= MAX_BODY_SIZE {
                    &self.body[..]
                } else {
                    &[]
                };
                decode_body(self.dialect, &h, body, msg.fds.count())
            })
            .map_err(RequestError::from)
            .and_then(|req| self.execute(req, &msg.fds.kept));
        // Descriptors are not needed past this point: a mapping keeps its file alive by itself.
        drop(msg.fds);
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
        Ok(Outcome {
            request,
            value,
            replied,
        })
    }

    fn send_all(&self, bytes: &[u8]) -> Result<()> {
        let mut sent = 0;
        while sent < bytes.len() {
            match self.sock.send_with_fds(&[&bytes[sent..]], &[]) {
                Ok(n) => sent += n,
                Err(e) if e.errno() == libc::EINTR => {}
                Err(e) => return Err(Error::Send(io::Error::from_raw_os_error(e.errno()))),
            }
        }
        Ok(())
    }

    fn window(&self, shmid: u8) -> std::result::Result<&Arc<DaxWindow>, RequestError> {
        match &self.window {
            Some(w) if shmid == SHMID_CACHE => Ok(w),
            _ => Err(RequestError::UnknownShmid { shmid }),
        }
    }

    fn execute(&self, req: Request, files: &[File]) -> std::result::Result<Reply, RequestError> {
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

    /// Serves the channel on a thread of its own until [`ChannelThread::stop`] or until the
    /// backend disconnects. When the backend disconnects, every mapping of the window is dropped
    /// at once (a reconnected backend must not inherit them) and the thread ends.
    pub fn spawn(self) -> Result<ChannelThread> {
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::Thread)?;
        let stop_thread = stop.try_clone().map_err(Error::Thread)?;
        let sock = self.sock.try_clone().map_err(Error::Thread)?;
        let epoll = Epoll::new().map_err(Error::Thread)?;
        epoll
            .ctl(
                ControlOperation::Add,
                self.sock.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .map_err(Error::Thread)?;
        epoll
            .ctl(
                ControlOperation::Add,
                stop_thread.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 1),
            )
            .map_err(Error::Thread)?;
        let name = format!("{}-backend", self.name);
        let handle = thread::Builder::new()
            .name(name)
            .spawn(move || self.serve(epoll, stop_thread))
            .map_err(Error::Thread)?;
        Ok(ChannelThread { stop, sock, handle })
    }

    fn serve(mut self, epoll: Epoll, stop: EventFd) -> Result<()> {
        let mut events = [EpollEvent::default(); 2];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Recv(e)),
            };
            if events[..n].iter().any(|e| e.data() == 1) {
                return Ok(());
            }
            match self.handle_one() {
                Ok(_) => {}
                Err(e) => {
                    if stop.read().is_ok() {
                        return Ok(());
                    }
                    log::warn!(
                        "{}: backend channel closed: {e}; dropping every mapping",
                        self.name
                    );
                    if let Some(w) = &self.window {
                        if let Err(err) = w.unmap_all() {
                            log::warn!("{}: dropping mappings failed: {err}", self.name);
                        }
                    }
                    return Err(e);
                }
            }
        }
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

/// A channel served on its own thread. Dropping it without [`ChannelThread::stop`] leaves the
/// thread running until the backend disconnects.
#[derive(Debug)]
pub struct ChannelThread {
    stop: EventFd,
    sock: UnixStream,
    handle: JoinHandle<Result<()>>,
}

impl ChannelThread {
    /// Whether the thread has ended (the backend disconnected).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Stops the thread and joins it. The socket is shut down, so a thread blocked in the middle
    /// of a message wakes up too. Returns `Ok` when the thread stopped on request or had ended
    /// cleanly, or the error that ended it (for example [`Error::Disconnected`]).
    pub fn stop(self) -> Result<()> {
        let _ = self.stop.write(1);
        let _ = self.sock.shutdown(Shutdown::Both);
        self.handle.join().map_err(|_| Error::Panicked)?
    }

    /// Waits for the thread to end by itself (the backend disconnecting) and returns why.
    pub fn join(self) -> Result<()> {
        self.handle.join().map_err(|_| Error::Panicked)?
    }
}
