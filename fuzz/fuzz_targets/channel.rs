// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Fuzzes `BackendChannel` through a real unix socket pair.
//!
//! The input is a byte stream cut into chunks, each sent by the peer (the "backend") with one
//! `sendmsg` and 0..=7 file descriptors (memfds of a few sizes, or eventfds, which cannot be
//! mapped); see `parse` for the layout. Chunk boundaries fall anywhere, so a chunk may hold a
//! piece of one message, the end of one and the start of the next, or several whole ones, with
//! its descriptors on whatever it holds; the channel's reads merge chunks further (one `recvmsg`
//! takes what the socket holds, up to the end of a chunk carrying descriptors). A peer thread writes every chunk, shuts its write side
//! down and drains the replies until the channel closes; the fuzzed thread calls `handle_one`
//! until the channel reports the end of the stream.
//!
//! After every input:
//! - nothing panicked, and the stream ended the way it was cut: `Disconnected` after the last
//!   whole message, `Truncated` inside one; never a receive or send error;
//! - the channel handled exactly the whole messages of the stream, in order (it stays in sync,
//!   oversized bodies and refused requests included);
//! - descriptors go only to a message that shares a byte with the chunk that carried them
//!   (`check_fd_attribution`): the channel's reader gives a read's descriptors to the message
//!   holding the read's last byte, and the kernel ends that read inside the chunk;
//! - every reply is well formed, answers its request (`NEED_REPLY`, or a MEM_READ with data) and
//!   carries the value `handle_one` returned;
//! - the window is sound: the memfds are mapped only inside `[host_addr, host_addr + size)`,
//!   exactly on the live mappings of `window.mappings()` (with their protection), and every other
//!   page of the window is the `PROT_NONE` reservation (no hole);
//! - after `unmap_all` nothing but the reservation is left in the window and no memfd is mapped
//!   anywhere;
//! - no descriptor leaked: `/proc/self/fd` has as many entries as before the input, once the
//!   channel, the peer and the sent descriptors are gone.
//!
//! The window (4 MiB) and the IO space (64 KiB of guest RAM at 0, the window at 1 GiB) are
//! created once; `unmap_all` resets the window between inputs.

#![no_main]

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use virtio_fs_dax::channel::Error as ChannelError;
use virtio_fs_dax::protocol::{
    legacy, standard, Access, FLAG_NEED_REPLY, FLAG_REPLY, HEADER_SIZE, VERSION,
};
use virtio_fs_dax::{BackendChannel, DaxWindow, Dialect, IoSpace, Outcome};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const WINDOW_SIZE: u64 = 4 << 20;
/// Guest physical address of the window in the IO space.
const WINDOW_GPA: u64 = 1 << 30;
/// Guest RAM of the IO space: `[0, RAM_SIZE)`.
const RAM_SIZE: usize = 64 << 10;
const MEMFD_NAME: &std::ffi::CStr = c"virtio-fs-dax-fuzz-channel";
/// How a memfd of this target shows in `/proc/self/maps`.
const MEMFD_PATH: &str = "/memfd:virtio-fs-dax-fuzz-channel";
const MEMFD_PATH_DELETED: &str = "/memfd:virtio-fs-dax-fuzz-channel (deleted)";
/// Sizes a sent memfd may have (2 MiB is sparse: nothing is allocated unless written).
const MEMFD_SIZES: [u64; 4] = [0, 4096, 16 * 4096, 2 << 20];
/// Most descriptors one chunk carries (more than the channel keeps per message: it has to
/// count and close the rest).
const MAX_CHUNK_FDS: u8 = 7;
/// Bounds per input, so that one input stays cheap.
const MAX_STREAM: usize = 16 << 10;
const MAX_INPUT_FDS: usize = 32;

struct Shared {
    window: Arc<DaxWindow>,
    io: Arc<IoSpace>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let window = Arc::new(DaxWindow::new(WINDOW_SIZE).expect("create window"));
        let ram =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_SIZE)]).expect("guest RAM");
        let io = IoSpace::with_guest_memory(Arc::new(ram));
        io.add_window(WINDOW_GPA, window.clone())
            .expect("register window");
        Shared {
            window,
            io: Arc::new(io),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Input

/// What the descriptors of a chunk are.
#[derive(Clone, Copy, Debug)]
enum FdKind {
    /// A memfd of this size.
    Memfd(u64),
    /// An eventfd: `mmap` refuses it (`ENODEV`), so maps fail after the range checks.
    EventFd,
}

struct Chunk {
    data: Vec<u8>,
    fds: Vec<OwnedFd>,
}

struct Config {
    dialect: Dialect,
    replace_exact: bool,
    window: bool,
    io: bool,
}

fn new_fd(kind: FdKind) -> OwnedFd {
    match kind {
        FdKind::Memfd(size) => {
            // SAFETY: memfd_create with a valid NUL-terminated name; the result is checked.
            let fd = unsafe { libc::memfd_create(MEMFD_NAME.as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            let file = unsafe { File::from_raw_fd(fd) };
            file.set_len(size).expect("ftruncate memfd");
            file.into()
        }
        FdKind::EventFd => {
            // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            unsafe { OwnedFd::from_raw_fd(fd) }
        }
    }
}

/// Input layout:
///
/// - byte 0: bit 0 dialect (0 standard, 1 legacy), bit 1 `replace_exact`, bit 2 no window,
///   bit 3 no IO space (every FS_IO / MEM_READ / MEM_WRITE refused);
/// - then chunks, each: a spec byte, a length (one byte, or two little-endian bytes when spec
///   bit 5 is set), then the data: `length` bytes, or when spec bit 6 is set one byte repeated
///   `length` times. The last chunk may be short.
///
/// Spec byte: bits 0..=2 number of descriptors (0..=7), bits 3..=4 memfd size
/// ([`MEMFD_SIZES`]), bit 7 eventfds instead of memfds.
fn parse(data: &[u8]) -> Option<(Config, Vec<Chunk>)> {
    let (&first, mut rest) = data.split_first()?;
    let config = Config {
        dialect: if first & 1 == 0 {
            Dialect::Standard
        } else {
            Dialect::Legacy
        },
        replace_exact: first & 2 != 0,
        window: first & 4 == 0,
        io: first & 8 == 0,
    };
    let mut chunks = Vec::new();
    let (mut total, mut nfds) = (0, 0);
    while let Some((&spec, tail)) = rest.split_first() {
        rest = tail;
        let len = if spec & 0x20 != 0 {
            let (b, tail) = rest.split_at_checked(2).unwrap_or((rest, &[]));
            rest = tail;
            b.iter().rev().fold(0, |acc, &x| acc << 8 | usize::from(x))
        } else {
            let (b, tail) = rest.split_first().map_or((0, rest), |(&b, t)| (b, t));
            rest = tail;
            usize::from(b)
        };
        let len = len.min(MAX_STREAM - total);
        let bytes = if spec & 0x40 != 0 {
            let (&fill, tail) = rest.split_first().unwrap_or((&0, &[]));
            rest = tail;
            vec![fill; len]
        } else {
            let (b, tail) = rest.split_at(len.min(rest.len()));
            rest = tail;
            b.to_vec()
        };
        total += bytes.len();
        let kind = if spec & 0x80 != 0 {
            FdKind::EventFd
        } else {
            FdKind::Memfd(MEMFD_SIZES[usize::from(spec >> 3) & 3])
        };
        let n = usize::from(spec % (MAX_CHUNK_FDS + 1)).min(MAX_INPUT_FDS - nfds);
        nfds += n;
        let fds = (0..n).map(|_| new_fd(kind)).collect();
        chunks.push(Chunk { data: bytes, fds });
    }
    Some((config, chunks))
}

// ---------------------------------------------------------------------------------------------
// The peer

/// The backend's side: sends every chunk (with its descriptors), shuts its write side down, and
/// reads the replies, so that the channel never blocks on a full socket. Non-blocking: the
/// fuzzed thread drives it alone when the whole stream fits in the socket at once, and a thread
/// of its own drives it otherwise.
struct Peer {
    sock: UnixStream,
    chunks: Vec<Chunk>,
    /// Next chunk to send, and how much of it went already.
    next: usize,
    off: usize,
    /// Still sending (false once everything went and the write side is shut, or sending failed).
    writing: bool,
    /// Every byte the channel sent back.
    replies: Vec<u8>,
}

impl Peer {
    fn new(sock: UnixStream, chunks: Vec<Chunk>) -> Self {
        sock.set_nonblocking(true).expect("nonblocking peer");
        Peer {
            sock,
            chunks,
            next: 0,
            off: 0,
            writing: true,
            replies: Vec::new(),
        }
    }

    /// Whether every chunk was sent.
    fn sent_all(&self) -> bool {
        self.next == self.chunks.len()
    }

    /// Sends what the socket takes; shuts the write side down after the last chunk.
    fn send(&mut self) {
        while self.writing && !self.sent_all() {
            let chunk = &self.chunks[self.next];
            // The descriptors go with the first byte of the chunk.
            let fds: Vec<RawFd> = if self.off == 0 {
                chunk.fds.iter().map(AsRawFd::as_raw_fd).collect()
            } else {
                Vec::new()
            };
            match self.sock.send_with_fds(&[&chunk.data[self.off..]], &fds) {
                Ok(n) => {
                    self.off += n;
                    if self.off >= chunk.data.len() {
                        (self.next, self.off) = (self.next + 1, 0);
                    }
                }
                Err(e) if e.errno() == libc::EINTR => {}
                Err(e) if e.errno() == libc::EAGAIN => return,
                // The channel closed early: the caller's checks say what happened.
                Err(_) => self.writing = false,
            }
        }
        if self.writing {
            self.sock
                .shutdown(Shutdown::Write)
                .expect("shut the peer's write side");
            self.writing = false;
        }
    }

    /// Reads what came back; true at end of stream (the channel closed its end).
    fn recv(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match (&self.sock).read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => self.replies.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) => panic!("peer read: {e}"),
            }
        }
    }

    /// Sends and receives until the channel closes its end.
    fn run(mut self) -> Self {
        loop {
            self.send();
            if self.recv() {
                return self;
            }
            let mut pfd = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN | if self.writing { libc::POLLOUT } else { 0 },
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd, borrowed exclusively for the call.
            let r = unsafe { libc::poll(&mut pfd, 1, -1) };
            let err = std::io::Error::last_os_error();
            assert!(
                r >= 0 || err.kind() == ErrorKind::Interrupted,
                "poll: {err}"
            );
        }
    }
}

/// Runs the channel until the stream ends; returns what `handle_one` returned and the peer.
fn serve(mut channel: BackendChannel, mut peer: Peer) -> (Vec<Outcome>, ChannelError, Peer) {
    let mut outcomes = Vec::new();
    peer.send();
    if peer.writing {
        // The stream does not fit in the socket: the peer needs a thread of its own.
        let peer = thread::spawn(move || peer.run());
        let end = loop {
            match channel.handle_one_timeout(Duration::from_secs(10)) {
                Ok(Some(o)) => outcomes.push(o),
                Ok(None) => {}
                Err(e) => break e,
            }
        };
        drop(channel);
        return (outcomes, end, peer.join().expect("peer thread"));
    }
    // Everything is queued and the write side is shut: `handle_one` always finds input (or the
    // end of the stream), and it never finds the reply buffer full, as the replies are read
    // before every call. `None` only when an oversized body spent a call's drain budget.
    let end = loop {
        peer.recv();
        match channel.handle_one() {
            Ok(Some(o)) => outcomes.push(o),
            Ok(None) => {}
            Err(e) => break e,
        }
    };
    drop(channel);
    while !peer.recv() {}
    (outcomes, end, peer)
}

// ---------------------------------------------------------------------------------------------
// Checks

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap())
}

/// A whole message of the stream: request, flags, and the bytes of the stream it spans.
struct Msg {
    request: u32,
    flags: u32,
    span: std::ops::Range<usize>,
}

/// The whole messages of `stream`, and whether it ends between messages.
fn messages(stream: &[u8]) -> (Vec<Msg>, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    while stream.len() - at >= HEADER_SIZE {
        let h = &stream[at..at + HEADER_SIZE];
        let size = le32(&h[8..]) as usize;
        if stream.len() - at - HEADER_SIZE < size {
            return (out, false);
        }
        let end = at + HEADER_SIZE + size;
        out.push(Msg {
            request: le32(h),
            flags: le32(&h[4..]),
            span: at..end,
        });
        at = end;
    }
    (out, at == stream.len())
}

/// Whether `request` takes one descriptor (`Some(true)`) or none (`Some(false)`) in `dialect`.
fn takes_fd(dialect: Dialect, request: u32) -> Option<bool> {
    match (dialect, request) {
        (Dialect::Standard, standard::SHMEM_MAP) => Some(true),
        (Dialect::Standard, standard::SHMEM_UNMAP) => Some(false),
        (Dialect::Legacy, legacy::FS_MAP | legacy::FS_IO) => Some(true),
        (Dialect::Legacy, legacy::FS_UNMAP | legacy::FS_SYNC) => Some(false),
        _ => None,
    }
}

/// Descriptors go to a message that shares a byte with the chunk that carried them (the
/// message holding the last byte of the read that brought them): a message that shares no byte
/// with any chunk carrying descriptors has none, so a request that takes one is refused and one
/// that takes none is not refused for its descriptor count.
fn check_fd_attribution(
    config: &Config,
    want: &[Msg],
    outcomes: &[Outcome],
    fd_spans: &[std::ops::Range<usize>],
) {
    for (i, (m, o)) in want.iter().zip(outcomes).enumerate() {
        let shares = fd_spans
            .iter()
            .any(|c| c.start < m.span.end && m.span.start < c.end);
        if shares {
            continue;
        }
        match takes_fd(config.dialect, m.request) {
            Some(true) => assert!(
                o.value < 0,
                "message {i} ({}) got a descriptor from a chunk it shares no byte with",
                m.request
            ),
            Some(false) => assert_ne!(
                o.value,
                -i64::from(libc::EBADF),
                "message {i} ({}) was refused for descriptors it cannot have had",
                m.request
            ),
            None => {}
        }
    }
}

fn check_replies(config: &Config, want: &[Msg], outcomes: &[Outcome], mut replies: &[u8]) {
    assert_eq!(
        outcomes.len(),
        want.len(),
        "the channel handled {} messages, the stream holds {}",
        outcomes.len(),
        want.len()
    );
    for (i, (o, m)) in outcomes.iter().zip(want).enumerate() {
        let (request, flags) = (m.request, m.flags);
        assert_eq!(o.request, request, "message {i}: request code");
        let need_reply = flags & FLAG_NEED_REPLY != 0;
        // A MEM_READ that succeeded answers with the bytes, asked or not.
        let data_reply =
            config.dialect == Dialect::Standard && request == standard::MEM_READ && o.value == 0;
        assert_eq!(
            o.replied,
            need_reply || data_reply,
            "message {i} ({request}, flags {flags:#x}): replied"
        );
        if !o.replied {
            continue;
        }
        assert!(
            replies.len() >= HEADER_SIZE,
            "message {i}: reply missing ({} bytes left)",
            replies.len()
        );
        let (h, rest) = replies.split_at(HEADER_SIZE);
        assert_eq!(le32(h), request, "message {i}: reply request code");
        assert_eq!(
            le32(&h[4..]),
            VERSION | FLAG_REPLY,
            "message {i}: reply flags"
        );
        let size = le32(&h[8..]) as usize;
        assert!(rest.len() >= size, "message {i}: reply body cut short");
        let (body, rest) = rest.split_at(size);
        if data_reply {
            // The MEM_READ header (u64 address, u32 size) echoed, then the bytes read.
            assert!(size > 12, "message {i}: MEM_READ reply of {size} bytes");
            assert_eq!(
                le32(&body[8..]) as usize,
                size - 12,
                "message {i}: MEM_READ size"
            );
        } else {
            assert_eq!(size, 8, "message {i}: reply body size");
            let value = i64::from_le_bytes(body.try_into().unwrap());
            assert_eq!(value, o.value, "message {i}: reply value");
        }
        assert!(
            o.value >= 0 || (-4095..0).contains(&o.value),
            "message {i}: value {} is neither a count nor -errno",
            o.value
        );
        replies = rest;
    }
    assert!(replies.is_empty(), "{} stray reply bytes", replies.len());
}

struct Vma {
    start: u64,
    end: u64,
    perms: String,
    path: String,
}

impl Vma {
    fn ours(&self) -> bool {
        self.path.starts_with(MEMFD_PATH)
    }
}

/// The VMAs that intersect `[base, end)` or map one of our memfds, from `/proc/self/maps`.
fn vmas(base: u64, end: u64) -> Vec<Vma> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    let hex = |s| u64::from_str_radix(s, 16).unwrap();
    let mut out = Vec::new();
    for line in maps.lines() {
        let (range, rest) = line.split_once(' ').unwrap();
        let (start, stop) = range.split_once('-').unwrap();
        let (start, stop) = (hex(start), hex(stop));
        let ours = line.ends_with(MEMFD_PATH) || line.ends_with(MEMFD_PATH_DELETED);
        if (stop <= base || start >= end) && !ours {
            continue;
        }
        let mut f = rest.split_ascii_whitespace();
        let perms = f.next().unwrap().to_string();
        // offset, device, inode, then the path (which may hold spaces: " (deleted)").
        let path = f.skip(3).collect::<Vec<_>>().join(" ");
        out.push(Vma {
            start,
            end: stop,
            perms,
            path,
        });
    }
    out
}

/// The window as the kernel has it: our memfds only inside it and exactly on its live mappings,
/// the reservation everywhere else, no hole.
fn check_window(window: &DaxWindow, vmas: &[Vma]) {
    let (base, size) = (window.host_addr(), window.size());
    let end = base + size;
    for v in vmas {
        if v.ours() {
            assert!(
                v.start >= base && v.end <= end,
                "memfd mapped at {:#x}-{:#x}, outside the window {base:#x}-{end:#x}",
                v.start,
                v.end
            );
        }
    }
    let mappings = window.mappings();
    let mut want = mappings.iter().peekable();
    let mut at = base;
    for v in vmas.iter().filter(|v| v.end > base && v.start < end) {
        assert_eq!(v.start.max(base), at, "hole in the window at {at:#x}");
        let vend = v.end.min(end);
        if v.start < base || v.end > end {
            // Only the reservation may run past the window (merged with an alike neighbour).
            assert!(
                v.perms == "---p" && v.path.is_empty(),
                "{} {} at {:#x}-{:#x} crosses the window edge {base:#x}-{end:#x}",
                v.perms,
                v.path,
                v.start,
                v.end
            );
        }
        // Walk the table over [vstart, vend).
        while at < vend {
            let off = at - base;
            match want.peek() {
                Some(m) if m.offset <= off && off < m.offset + m.len => {
                    let perms = match m.access {
                        Access::ReadOnly => "r--s",
                        Access::ReadWrite => "rw-s",
                    };
                    assert!(
                        v.ours() && v.perms == perms,
                        "mapping {m:?} is {} {} at {at:#x}",
                        v.perms,
                        v.path
                    );
                    let stop = (base + m.offset + m.len).min(vend);
                    if stop == base + m.offset + m.len {
                        want.next();
                    }
                    at = stop;
                }
                next => {
                    assert!(
                        v.perms == "---p" && v.path.is_empty(),
                        "unmapped window offset {off:#x} is {} {}",
                        v.perms,
                        v.path
                    );
                    let stop = next.map_or(end, |m| base + m.offset).min(vend);
                    at = stop;
                }
            }
        }
    }
    assert_eq!(at, end, "hole at the end of the window at {at:#x}");
    assert!(want.next().is_none(), "mappings past the window's VMAs");
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

// ---------------------------------------------------------------------------------------------

fn run(data: &[u8]) {
    let shared = shared();
    let fds_before = open_fds();
    let Some((config, chunks)) = parse(data) else {
        return;
    };
    let stream: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
    let (want, clean_end) = messages(&stream);
    // The bytes of the stream each chunk that carries descriptors spans.
    let mut at = 0;
    let mut fd_spans = Vec::new();
    for c in &chunks {
        if !c.fds.is_empty() {
            fd_spans.push(at..at + c.data.len());
        }
        at += c.data.len();
    }

    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let mut builder = BackendChannel::builder(ours)
        .dialect(config.dialect)
        .replace_exact(config.replace_exact);
    if config.window {
        builder = builder.window(shared.window.clone());
    }
    if config.io {
        builder = builder.io_space(shared.io.clone());
    }
    let (outcomes, end, peer) = serve(builder.build(), Peer::new(theirs, chunks));

    match (&end, clean_end) {
        (ChannelError::Disconnected, true) | (ChannelError::Truncated { .. }, false) => {}
        _ => panic!("the stream ended with {end:?} (ends between messages: {clean_end})"),
    }
    assert!(
        peer.sent_all(),
        "the channel closed before the peer sent everything"
    );
    check_replies(&config, &want, &outcomes, &peer.replies);
    check_fd_attribution(&config, &want, &outcomes, &fd_spans);
    drop(peer);

    let window = &shared.window;
    let (base, end) = (window.host_addr(), window.host_addr() + window.size());
    check_window(window, &vmas(base, end));
    window.unmap_all().expect("unmap_all");
    assert!(window.mappings().is_empty());
    let after = vmas(base, end);
    check_window(window, &after);
    assert!(
        !after.iter().any(Vma::ours),
        "a memfd is still mapped after unmap_all"
    );
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
}

fuzz_target!(|data: &[u8]| run(data));
