// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Benchmarks, each beside its floor (the raw syscalls, no crate) measured in the same run. The
//! machine these run on is shared and noisy: read the ratio of a crate figure to its floor, not
//! the absolute figures. `docs/BENCHMARKS.md` has a run and the ratios.
//!
//! - `decode/*`: the pure decoder on a SHMEM_MAP and a full legacy FS_MAP message.
//! - `reserve/*`: `DaxWindow::new` of 64 GiB against a raw `PROT_NONE | MAP_NORESERVE` mmap +
//!   munmap (and the aligned reservation the window needs); also prints the RSS growth of 1000
//!   live 64 GiB windows (criterion cannot report memory) and fails above 1 MiB a window.
//! - `map/*`: `DaxWindow` map + unmap of 2 MiB against the raw `mmap MAP_FIXED` pair, with 1 live
//!   mapping and with a full 64 GiB window (32,768 live mappings, the floor's reservation holding
//!   as many VMAs).
//! - `channel/*`: map + unmap of 2 MiB through `BackendChannel` over a unix socket pair (the
//!   SHMEM_MAP carries a memfd by SCM_RIGHTS) against a raw server doing the same
//!   recvmsg / mmap / sendmsg sequence.
//! - `dialect/*`: one legacy FS_MAP of 8 x 2 MiB (+ one FS_UNMAP) against 8 SHMEM_MAPs (+ 8
//!   SHMEM_UNMAPs), both through `BackendChannel`.
//! - `io/*`: 2 MiB from a memfd into guest RAM through `IoSpace::transfer` and through a legacy
//!   FS_IO on the channel, against a raw `pread` (and a raw server doing recvmsg + pread).
//! - `reset/*`: `unmap_all` of a full 64 GiB window (32,768 live mappings) against the raw
//!   `PROT_NONE` re-map of a reservation holding as many VMAs. Only the reset is timed.
//!
//! criterion measures one benchmark after the other, so load changes on a shared machine show up
//! in the ratio of two of its figures. After each group the bench therefore measures every pair
//! again, interleaved (see [`paired`]), and prints the median ratio on a line starting with
//! `paired`: those are the ratios to read (not in `--test` mode).
//!
//! Socket benchmarks run their two threads (criterion's, the peer; and the server) where
//! `VFD_BENCH_PIN` says: `same` (default: both on one CPU), `cross` (one CPU each) or `none`.
//! Both sides of every ratio get the same treatment.

use std::cell::OnceCell;
use std::fs::File;
use std::hint::black_box;
use std::io::{Read, Write};
use std::mem::{size_of, size_of_val};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::ptr::null_mut;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use virtio_fs_dax::channel::ChannelThread;
use virtio_fs_dax::io::Transfer;
use virtio_fs_dax::protocol::{
    decode_message, legacy, standard, Access, Dialect, FsBackendMsg, MapEntry, Range,
    VhostUserMMap, FLAG_NEED_REPLY, FLAG_REPLY, FS_FLAG_MAP_R, HEADER_SIZE, VERSION,
};
use virtio_fs_dax::window::{DaxWindow, Policy};
use virtio_fs_dax::{BackendChannel, IoSpace};

const M2: u64 = 2 << 20;
const G64: u64 = 64 << 30;
/// 2 MiB ranges in a 64 GiB window: what a full window holds.
const LIVE: u64 = G64 / M2;
/// Window (and floor reservation) of the socket benchmarks: room for 8 ranges of 2 MiB.
const SOCKET_WINDOW: u64 = 16 << 20;

fn message(code: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&code.to_le_bytes());
    v.extend_from_slice(&(VERSION | FLAG_NEED_REPLY).to_le_bytes());
    v.extend_from_slice(&(body.len() as u32).to_le_bytes());
    v.extend_from_slice(body);
    v
}

fn memfd(len: u64) -> File {
    // SAFETY: memfd_create reads a valid NUL-terminated name and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"bench".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` was just created and is owned by nobody else.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(&vec![1u8; len as usize]).unwrap();
    f
}

fn mmap_msg(code: u32, shm_offset: u64, len: u64) -> Vec<u8> {
    let body = VhostUserMMap {
        shm_offset,
        len,
        ..Default::default()
    };
    message(code, body.as_slice())
}

/// A field of /proc/self/status, in kB.
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

// ---------------------------------------------------------------------------------------------
// The floor's mappings: the same syscalls as the window's, without the crate.

/// A `PROT_NONE` reserved range that the floors map into and clear with raw syscalls.
#[derive(Clone, Copy)]
struct RawRange {
    base: usize,
    size: usize,
}

impl RawRange {
    /// The reservation behind `w`, so that a floor sees exactly the VMAs the crate sees. The
    /// floors only use ranges the window has not mapped and put them back to `PROT_NONE` right
    /// away (or, for the reset floor, let `unmap_all` set the table straight before the window is
    /// used again).
    fn of_window(w: &DaxWindow) -> Self {
        RawRange {
            base: w.host_addr() as usize,
            size: w.size() as usize,
        }
    }

    fn at(&self, offset: u64, len: u64) -> *mut libc::c_void {
        assert!(offset + len <= self.size as u64);
        (self.base + offset as usize) as *mut libc::c_void
    }

    /// `mmap MAP_SHARED | MAP_FIXED` of `fd` over `[offset, offset + len)`, read-only.
    fn map(&self, offset: u64, len: u64, fd: RawFd, fd_offset: u64) {
        let at = self.at(offset, len);
        // SAFETY: `at` checked the range lies inside the reservation, which outlives this call
        // (its owner is borrowed by the caller); MAP_FIXED replaces only its pages, and no Rust
        // reference points into them.
        let ret = unsafe {
            libc::mmap(
                at,
                len as usize,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                fd_offset as libc::off_t,
            )
        };
        assert_ne!(ret, libc::MAP_FAILED);
    }

    /// Puts `[offset, offset + len)` back to the `PROT_NONE` reservation.
    fn clear(&self, offset: u64, len: u64) {
        let at = self.at(offset, len);
        // SAFETY: as in `map`, with fresh PROT_NONE anonymous pages.
        let ret = unsafe {
            libc::mmap(
                at,
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_ne!(ret, libc::MAP_FAILED);
    }
}

/// A raw reservation, 2 MiB aligned and trimmed like a window's, unmapped on drop.
struct RawReservation {
    range: RawRange,
}

impl RawReservation {
    fn new(size: u64) -> Self {
        let size = size as usize;
        let align = M2 as usize;
        let total = size + align;
        // SAFETY: a fresh mapping at an address the kernel picks (no MAP_FIXED): nothing that
        // exists is replaced.
        let raw = unsafe {
            libc::mmap(
                null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(raw, libc::MAP_FAILED);
        let start = raw as usize;
        let base = start.next_multiple_of(align);
        let (head, tail) = (base - start, total - (base - start) - size);
        // SAFETY: the head and tail are the parts of the mapping just made that lie outside the
        // aligned range; nobody else knows of them.
        unsafe {
            if head > 0 {
                assert_eq!(libc::munmap(start as *mut libc::c_void, head), 0);
            }
            if tail > 0 {
                assert_eq!(libc::munmap((base + size) as *mut libc::c_void, tail), 0);
            }
        }
        RawReservation {
            range: RawRange { base, size },
        }
    }
}

impl Drop for RawReservation {
    fn drop(&mut self) {
        let RawRange { base, size } = self.range;
        // SAFETY: the reservation was mapped by `new` and is unmapped exactly once, here.
        unsafe { libc::munmap(base as *mut libc::c_void, size) };
    }
}

/// A page-aligned anonymous buffer, every page faulted in: the floor's stand-in for guest RAM
/// (which vm-memory maps the same way). A heap `Vec` would start 16 bytes into a page, and a
/// misaligned destination makes the kernel's copy 5-8% slower on the development machine.
struct AnonBuf {
    addr: usize,
    len: usize,
}

impl AnonBuf {
    fn new(len: u64) -> Self {
        let len = len as usize;
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let mut buf = AnonBuf {
            addr: p as usize,
            len,
        };
        buf.as_mut().fill(1);
        buf
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `addr..addr + len` is a live read-write mapping this struct owns until drop;
        // the exclusive borrow of `self` makes this the only reference into it.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
    }
}

impl Drop for AnonBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new` and is unmapped exactly once, here.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// `pread` of `len` bytes at `offset` into `buf`, looping over short counts.
fn pread_all(fd: RawFd, buf: &mut [u8], offset: u64) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is an exclusive borrow of `rest.len()` bytes the kernel may write.
        let n = unsafe {
            libc::pread64(
                fd,
                rest.as_mut_ptr().cast(),
                rest.len(),
                (offset + done as u64) as i64,
            )
        };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
    done
}

// ---------------------------------------------------------------------------------------------
// Thread placement for the socket benchmarks.

fn affinity() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t of the size passed; pid 0 is the calling thread.
    let ret = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(ret, 0, "sched_getaffinity");
    set
}

fn set_affinity(set: &libc::cpu_set_t) {
    // SAFETY: `set` is a live cpu_set_t of the size passed; pid 0 is the calling thread.
    let ret = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) };
    assert_eq!(ret, 0, "sched_setaffinity");
}

fn one_cpu(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: as in `affinity`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    assert!(cpu < libc::CPU_SETSIZE as usize);
    // SAFETY: CPU_SET writes one bit of `set`; `cpu` < CPU_SETSIZE was checked just above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    set
}

/// Where the peer (criterion's thread) and every server thread of a socket benchmark run,
/// from `VFD_BENCH_PIN`. Threads inherit their creator's affinity, so servers are spawned inside
/// [`Placement::server`]. Dropping it gives criterion's thread its CPUs back.
struct Placement {
    original: libc::cpu_set_t,
    peer: Option<libc::cpu_set_t>,
    server: Option<libc::cpu_set_t>,
}

impl Placement {
    fn from_env() -> Self {
        let original = affinity();
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: CPU_ISSET reads one bit of `original`; `c` < CPU_SETSIZE.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &original) })
            .collect();
        let mode = std::env::var("VFD_BENCH_PIN").unwrap_or_else(|_| "same".into());
        let (peer, server) = match mode.as_str() {
            "none" => (None, None),
            "cross" => (Some(cpus[0]), Some(*cpus.get(1).unwrap_or(&cpus[0]))),
            _ => (Some(cpus[0]), Some(cpus[0])),
        };
        let p = Placement {
            original,
            peer: peer.map(one_cpu),
            server: server.map(one_cpu),
        };
        if let Some(set) = &p.peer {
            set_affinity(set);
        }
        p
    }

    /// Runs `spawn` with the server threads' affinity, which the threads it creates inherit.
    fn server<T>(&self, spawn: impl FnOnce() -> T) -> T {
        if let Some(set) = &self.server {
            set_affinity(set);
        }
        let t = spawn();
        match &self.peer {
            Some(set) => set_affinity(set),
            None => set_affinity(&self.original),
        }
        t
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        set_affinity(&self.original);
    }
}

// ---------------------------------------------------------------------------------------------
// Peers and servers over a socket pair.

/// Sends one message (with `fd` attached) and returns the reply's value.
fn call(sock: &UnixStream, msg: &[u8], fd: Option<RawFd>) -> i64 {
    let fds: &[RawFd] = match &fd {
        Some(f) => std::slice::from_ref(f),
        None => &[],
    };
    let n = sock.send_with_fds(&[msg], fds).unwrap();
    assert_eq!(n, msg.len());
    let mut reply = [0u8; HEADER_SIZE + 8];
    let mut s = sock;
    s.read_exact(&mut reply).unwrap();
    i64::from_le_bytes(reply[HEADER_SIZE..].try_into().unwrap())
}

enum Server {
    Channel(ChannelThread),
    Thread(JoinHandle<()>),
}

/// A server on its own thread and the peer's end of its socket; stops and joins on drop.
struct Served {
    peer: UnixStream,
    server: Option<Server>,
}

impl Drop for Served {
    fn drop(&mut self) {
        match self.server.take() {
            Some(Server::Channel(t)) => t.stop().unwrap(),
            Some(Server::Thread(h)) => {
                let _ = self.peer.shutdown(std::net::Shutdown::Both);
                h.join().unwrap();
            }
            None => {}
        }
    }
}

#[derive(Clone, Copy)]
enum Drive {
    /// `BackendChannel::spawn`: epoll + stop eventfd, the crate's own thread.
    Spawn,
    /// A plain thread as an event loop drives the channel: `poll(2)` for readiness, then the
    /// non-blocking `BackendChannel::handle_one` (`handle_one_timeout` does both).
    HandleOne,
}

fn serve_channel(
    place: &Placement,
    drive: Drive,
    build: impl FnOnce(UnixStream) -> BackendChannel,
) -> Served {
    let (ours, peer) = UnixStream::pair().unwrap();
    let channel = build(ours);
    let server = place.server(|| match drive {
        Drive::Spawn => Server::Channel(channel.spawn().unwrap()),
        Drive::HandleOne => Server::Thread(thread::spawn(move || {
            let mut channel = channel;
            while channel
                .handle_one_timeout(std::time::Duration::from_secs(3600))
                .is_ok()
            {}
        })),
    });
    Served {
        peer,
        server: Some(server),
    }
}

/// What the raw server does with a request.
#[derive(Clone, Copy)]
enum RawOp {
    /// SHMEM_MAP: `mmap MAP_FIXED` of the descriptor into a reservation of this size;
    /// SHMEM_UNMAP: the `PROT_NONE` re-map.
    Map { window: u64 },
    /// Legacy FS_IO (code 9 too): `pread` of entry 0 into an [`AnonBuf`] of this size.
    Pread { len: u64 },
}

fn serve_raw(place: &Placement, op: RawOp) -> Served {
    serve_raw_with(place, op, false)
}

/// As [`serve_raw`]; with `poll_first`, the server waits for readiness with `poll(2)` before each
/// message, as an event loop does.
fn serve_raw_with(place: &Placement, op: RawOp, poll_first: bool) -> Served {
    let (ours, peer) = UnixStream::pair().unwrap();
    let server =
        place.server(|| Server::Thread(thread::spawn(move || raw_server(ours, op, poll_first))));
    Served {
        peer,
        server: Some(server),
    }
}

/// `recvmsg` until `buf` is full, keeping the first descriptor that comes along. `None` at the
/// end of the stream.
fn raw_recv(fd: RawFd, buf: &mut [u8], file: &mut Option<OwnedFd>) -> Option<()> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        let mut iov = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        };
        // Room for one descriptor (CMSG_SPACE(4) is 24 bytes), 8-byte aligned.
        let mut control = [0u64; 4];
        // SAFETY: msghdr is plain data; all zeroes is a valid (empty) value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control) as _;
        // SAFETY: `msg` points at `iov` (an exclusive borrow of `rest`) and `control`, both
        // live for the call, with their lengths.
        let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
        if n <= 0 {
            return None;
        }
        // SAFETY: `msg` was filled in by recvmsg; CMSG_FIRSTHDR stays within `control`.
        let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        if !cmsg.is_null() {
            // SAFETY: `cmsg` points at a header the kernel wrote inside `control`.
            let (level, kind) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
            if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
                // SAFETY: an SCM_RIGHTS message that fit in `control` carries one descriptor
                // after its header, which recvmsg installed in our table for us alone.
                let owned = unsafe {
                    let raw = libc::CMSG_DATA(cmsg).cast::<RawFd>().read_unaligned();
                    OwnedFd::from_raw_fd(raw)
                };
                file.get_or_insert(owned);
            }
        }
        got += n as usize;
    }
    Some(())
}

/// The floor of the channel: header and body read as the channel reads them (two `recvmsg`),
/// no decoding, no checks, no table; the mmap (or pread), then a 20-byte reply.
fn raw_server(sock: UnixStream, op: RawOp, poll_first: bool) {
    let fd = sock.as_raw_fd();
    let reservation = match op {
        RawOp::Map { window } => Some(RawReservation::new(window)),
        RawOp::Pread { .. } => None,
    };
    let mut buf = match op {
        RawOp::Pread { len } => Some(AnonBuf::new(len)),
        RawOp::Map { .. } => None,
    };
    let mut hdr = [0u8; HEADER_SIZE];
    let mut body = [0u8; size_of::<FsBackendMsg>()];
    loop {
        if poll_first {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, -1) };
        }
        let mut file = None;
        if raw_recv(fd, &mut hdr, &mut file).is_none() {
            return;
        }
        let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
        let size = size.min(body.len());
        if raw_recv(fd, &mut body[..size], &mut file).is_none() {
            return;
        }
        let code = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let value = match (op, &reservation, &file) {
            (RawOp::Map { .. }, Some(r), Some(f)) => {
                let m = VhostUserMMap::from_slice(&body[..size_of::<VhostUserMMap>()]).unwrap();
                r.range.map(m.shm_offset, m.len, f.as_raw_fd(), m.fd_offset);
                0
            }
            (RawOp::Map { .. }, Some(r), None) => {
                let m = VhostUserMMap::from_slice(&body[..size_of::<VhostUserMMap>()]).unwrap();
                r.range.clear(m.shm_offset, m.len);
                0
            }
            (RawOp::Pread { .. }, _, Some(f)) => {
                let m = FsBackendMsg::from_slice(&body).unwrap();
                let (len, at) = (m.len[0] as usize, m.fd_offset[0]);
                let buf = buf.as_mut().unwrap().as_mut();
                pread_all(f.as_raw_fd(), &mut buf[..len], at) as u64
            }
            _ => return,
        };
        drop(file);
        let mut reply = [0u8; HEADER_SIZE + 8];
        reply[0..4].copy_from_slice(&code.to_le_bytes());
        reply[4..8].copy_from_slice(&(VERSION | FLAG_REPLY).to_le_bytes());
        reply[8..12].copy_from_slice(&8u32.to_le_bytes());
        reply[12..].copy_from_slice(&value.to_le_bytes());
        // SAFETY: send reads `reply.len()` bytes of `reply`.
        let n = unsafe { libc::send(fd, reply.as_ptr().cast(), reply.len(), libc::MSG_NOSIGNAL) };
        if n != reply.len() as isize {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sides of a comparison, and their interleaved ratio.

/// Whether criterion runs in `--test` mode (each benchmark once: the CI smoke run).
fn test_mode() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// Times `n` runs of `op`.
fn timed(n: u64, mut op: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        op();
    }
    t.elapsed()
}

/// One side of a comparison: a benchmark id and a routine that times `n` runs of its operation
/// (criterion's `iter_custom` contract: set-up inside it may stay out of the time). The routine
/// sets itself up on first use, so a filtered-out benchmark costs nothing.
struct Side<F> {
    id: &'static str,
    run: F,
    ran: bool,
}

impl<F: FnMut(u64) -> Duration> Side<F> {
    fn new(id: &'static str, run: F) -> Self {
        Side {
            id,
            run,
            ran: false,
        }
    }

    fn bench(&mut self, g: &mut BenchmarkGroup<'_, WallTime>) {
        let (ran, run) = (&mut self.ran, &mut self.run);
        g.bench_function(self.id, |b| {
            *ran = true;
            b.iter_custom(&mut *run)
        });
    }
}

/// What a comparison must show.
#[derive(Clone, Copy)]
enum Goal {
    /// Time per operation at most this multiple of the other side's.
    TimeAtMost(f64),
    /// Throughput at least this fraction of the other side's.
    ThroughputAtLeast(f64),
    /// Nothing: reported for context.
    Report,
}

fn human(secs: f64) -> String {
    match secs {
        s if s >= 1e-3 => format!("{:.2} ms", s * 1e3),
        s if s >= 1e-6 => format!("{:.2} us", s * 1e6),
        s => format!("{:.1} ns", s * 1e9),
    }
}

/// The ratio of two sides measured interleaved: `rounds` rounds, each timing `n` operations of
/// one side then `n` of the other (alternating which goes first), so that the load of a shared
/// machine weighs on both alike. Prints the median ratio of the rounds, its quartiles and the
/// median time per operation of each side; returns those medians (`a`, `b`). Runs only when
/// criterion ran both sides (the filter selected them), never in `--test` mode.
fn paired<A, B>(
    group: &str,
    a: &mut Side<A>,
    b: &mut Side<B>,
    rounds: usize,
    goal: Goal,
) -> Option<(f64, f64)>
where
    A: FnMut(u64) -> Duration,
    B: FnMut(u64) -> Duration,
{
    if !(a.ran && b.ran) || test_mode() {
        return None;
    }
    // Calibrate: about 50 ms a side a round.
    let mut n = 1u64;
    let per_op = loop {
        let d = (a.run)(n).max((b.run)(n));
        if d >= Duration::from_millis(20) || n >= 1 << 24 {
            break d.as_secs_f64() / n as f64;
        }
        n *= 2;
    };
    let n = ((0.05 / per_op) as u64).max(1);
    let (mut ratios, mut ta, mut tb) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (da, db) = if round % 2 == 0 {
            let da = (a.run)(n);
            (da, (b.run)(n))
        } else {
            let db = (b.run)(n);
            ((a.run)(n), db)
        };
        let (da, db) = (da.as_secs_f64() / n as f64, db.as_secs_f64() / n as f64);
        ratios.push(da / db);
        ta.push(da);
        tb.push(db);
    }
    for v in [&mut ratios, &mut ta, &mut tb] {
        v.sort_by(f64::total_cmp);
    }
    let q = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let (ratio, ma, mb) = (q(&ratios, 0.5), q(&ta, 0.5), q(&tb, 0.5));
    let verdict = match goal {
        Goal::TimeAtMost(x) => format!(
            "; target time ratio <= {x:.2}: {}",
            if ratio <= x { "met" } else { "MISSED" }
        ),
        Goal::ThroughputAtLeast(x) => format!(
            "; throughput ratio {:.3}, target >= {x:.2}: {}",
            1.0 / ratio,
            if 1.0 / ratio >= x { "met" } else { "MISSED" }
        ),
        Goal::Report => String::new(),
    };
    println!(
        "paired {group}/{} vs {group}/{}: time ratio {ratio:.3} (quartiles {:.3}..{:.3}, {rounds} \
         interleaved rounds of {n}); per op {} vs {}{verdict}",
        a.id,
        b.id,
        q(&ratios, 0.25),
        q(&ratios, 0.75),
        human(ma),
        human(mb),
    );
    Some((ma, mb))
}

// ---------------------------------------------------------------------------------------------
// The benchmarks.

fn decode(c: &mut Criterion) {
    let map = VhostUserMMap {
        len: M2,
        ..Default::default()
    };
    let shmem = message(standard::SHMEM_MAP, map.as_slice());
    let mut fs = FsBackendMsg::default();
    for i in 0..8 {
        fs.cache_offset[i] = i as u64 * M2;
        fs.len[i] = M2;
        fs.flags[i] = 1;
    }
    let fs = message(legacy::FS_MAP, fs.as_slice());
    c.bench_function("decode/shmem_map", |b| {
        b.iter(|| decode_message(Dialect::Standard, black_box(&shmem), 1))
    });
    c.bench_function("decode/fs_map_8", |b| {
        b.iter(|| decode_message(Dialect::Legacy, black_box(&fs), 1))
    });
}

/// Growth of VmRSS and VmPTE (kB) while `n` reservations made by `make` are alive.
fn rss_growth<T>(n: usize, make: impl Fn() -> T) -> (u64, u64) {
    let (rss, pte) = (status_kb("VmRSS:"), status_kb("VmPTE:"));
    let live: Vec<T> = (0..n).map(|_| make()).collect();
    let (rss2, pte2) = (status_kb("VmRSS:"), status_kb("VmPTE:"));
    drop(live);
    (rss2.saturating_sub(rss), pte2.saturating_sub(pte))
}

fn report_rss() {
    // 1000 windows of 64 GiB: 64 TiB of the 128 TiB user address space, and RSS (counted in kB)
    // resolved to a few bytes per window.
    const N: usize = 1000;
    let (raw, raw_pte) = rss_growth(N, || RawReservation::new(G64));
    let (win, win_pte) = rss_growth(N, || DaxWindow::new(G64).unwrap());
    let per = win * 1024 / N as u64;
    println!(
        "rss reserve/window_new_64g: {N} live 64 GiB windows: VmRSS +{win} kB, VmPTE +{win_pte} \
         kB ({per} B per window; target < 1 MiB per window: {}); {N} raw reservations: VmRSS \
         +{raw} kB, VmPTE +{raw_pte} kB",
        if per < 1 << 20 { "met" } else { "MISSED" }
    );
    assert!(per < 1 << 20, "a 64 GiB window costs {per} B of RSS");
}

fn reserve(c: &mut Criterion) {
    let mut g = c.benchmark_group("reserve");
    let mut plain = Side::new("floor_mmap_64g", |n| {
        timed(n, || {
            // SAFETY: a fresh mapping at an address the kernel picks, unmapped right away;
            // nothing else knows of it.
            unsafe {
                let p = libc::mmap(
                    null_mut(),
                    G64 as usize,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                );
                assert_ne!(p, libc::MAP_FAILED);
                libc::munmap(black_box(p), G64 as usize);
            }
        })
    });
    let mut aligned = Side::new("floor_mmap_64g_aligned", |n| {
        timed(n, || drop(black_box(RawReservation::new(G64))))
    });
    let mut reported = false;
    let mut window = Side::new("window_new_64g", |n| {
        if !reported {
            reported = true;
            report_rss();
        }
        timed(n, || drop(black_box(DaxWindow::new(G64).unwrap())))
    });
    plain.bench(&mut g);
    aligned.bench(&mut g);
    window.bench(&mut g);
    g.finish();
    paired("reserve", &mut window, &mut plain, 20, Goal::Report);
    paired("reserve", &mut window, &mut aligned, 20, Goal::Report);
}

/// Maps `ranges` 2 MiB ranges of `file` (file offset 0 each: no two neighbouring VMAs can
/// merge) from the start of the window.
fn fill_window(w: &DaxWindow, file: &File, ranges: u64) {
    for i in 0..ranges {
        let e = MapEntry {
            offset: i * M2,
            fd_offset: 0,
            len: M2,
            access: Access::ReadOnly,
        };
        w.map(&[e], file, Policy::STANDARD).unwrap();
    }
}

/// Map + unmap of 2 MiB at `offset` through the window.
fn window_pair(w: &DaxWindow, file: &File, offset: u64) {
    let entry = MapEntry {
        offset,
        fd_offset: 0,
        len: M2,
        access: Access::ReadOnly,
    };
    let range = Range { offset, len: M2 };
    w.map(black_box(&[entry]), file, Policy::STANDARD).unwrap();
    w.unmap(black_box(&[range]), Policy::STANDARD).unwrap();
}

/// The same two `mmap MAP_FIXED` calls, raw, over the window's own reservation.
fn raw_pair(w: &DaxWindow, file: &File, offset: u64) {
    let raw = RawRange::of_window(w);
    raw.map(black_box(offset), M2, file.as_raw_fd(), 0);
    raw.clear(black_box(offset), M2);
}

/// A 64 GiB window that may hold a mapping in every 2 MiB range (above the default bound).
fn full_window() -> DaxWindow {
    DaxWindow::builder(G64)
        .max_mappings(LIVE as usize)
        .build()
        .unwrap()
}

fn map(c: &mut Criterion) {
    let file = memfd(M2);
    // One live mapping: a 2 MiB window, the measured range replacing all of it.
    let one = OnceCell::new();
    let one = || one.get_or_init(|| DaxWindow::new(M2).unwrap());
    // A full 64 GiB window: 32,767 live mappings plus the measured one, in the last range. The
    // floor maps into the same reservation, so the kernel walks the same 32,768 VMAs.
    let full = OnceCell::new();
    let full = || {
        full.get_or_init(|| {
            let w = full_window();
            fill_window(&w, &file, LIVE - 1);
            w
        })
    };
    let last = (LIVE - 1) * M2;
    let mut g = c.benchmark_group("map");
    let mut floor_1 = Side::new("floor_mmap_pair_2m", |n| {
        let w = one();
        timed(n, || raw_pair(w, &file, 0))
    });
    let mut window_1 = Side::new("window_2m", |n| {
        let w = one();
        timed(n, || window_pair(w, &file, 0))
    });
    let mut floor_32k = Side::new("floor_mmap_pair_2m_live_32k", |n| {
        let w = full();
        timed(n, || raw_pair(w, &file, last))
    });
    let mut window_32k = Side::new("window_2m_live_32k", |n| {
        let w = full();
        timed(n, || window_pair(w, &file, last))
    });
    floor_1.bench(&mut g);
    window_1.bench(&mut g);
    floor_32k.bench(&mut g);
    window_32k.bench(&mut g);
    g.finish();
    let at_1 = paired("map", &mut window_1, &mut floor_1, 20, Goal::Report);
    let at_32k = paired(
        "map",
        &mut window_32k,
        &mut floor_32k,
        20,
        Goal::TimeAtMost(1.2),
    );
    paired(
        "map",
        &mut window_32k,
        &mut window_1,
        20,
        Goal::TimeAtMost(1.2),
    );
    paired("map", &mut floor_32k, &mut floor_1, 20, Goal::Report);
    if let (Some((c1, f1)), Some((c32, f32))) = (at_1, at_32k) {
        println!(
            "crate's own cost per map+unmap (crate - floor): {} with 1 live mapping, {} with \
             32,768",
            human(c1 - f1),
            human(c32 - f32)
        );
    }
}

fn channel(c: &mut Criterion) {
    let file = memfd(M2);
    let fd = file.as_raw_fd();
    let map = mmap_msg(standard::SHMEM_MAP, 0, M2);
    let unmap = mmap_msg(standard::SHMEM_UNMAP, 0, M2);
    let pair = |s: &Served| {
        assert_eq!(call(&s.peer, &map, Some(fd)), 0);
        assert_eq!(call(&s.peer, &unmap, None), 0);
    };
    let place = Placement::from_env();
    let standard = |ours: UnixStream| {
        BackendChannel::builder(ours)
            .window(Arc::new(DaxWindow::new(SOCKET_WINDOW).unwrap()))
            .dialect(Dialect::Standard)
            .build()
    };
    let mut g = c.benchmark_group("channel");
    let mut raw = None;
    let mut floor = Side::new("floor_socket_map_unmap_2m", |n| {
        let s = raw.get_or_insert_with(|| {
            serve_raw(
                &place,
                RawOp::Map {
                    window: SOCKET_WINDOW,
                },
            )
        });
        timed(n, || pair(s))
    });
    let mut raw_polled = None;
    let mut floor_polled = Side::new("floor_socket_poll_map_unmap_2m", |n| {
        let s = raw_polled.get_or_insert_with(|| {
            serve_raw_with(
                &place,
                RawOp::Map {
                    window: SOCKET_WINDOW,
                },
                true,
            )
        });
        timed(n, || pair(s))
    });
    let mut spawned = None;
    let mut crate_spawn = Side::new("map_unmap_2m", |n| {
        let s = spawned.get_or_insert_with(|| serve_channel(&place, Drive::Spawn, standard));
        timed(n, || pair(s))
    });
    let mut looped = None;
    let mut crate_loop = Side::new("map_unmap_2m_handle_one", |n| {
        let s = looped.get_or_insert_with(|| serve_channel(&place, Drive::HandleOne, standard));
        timed(n, || pair(s))
    });
    floor.bench(&mut g);
    floor_polled.bench(&mut g);
    crate_spawn.bench(&mut g);
    crate_loop.bench(&mut g);
    g.finish();
    let goal = Goal::TimeAtMost(1.25);
    paired("channel", &mut crate_spawn, &mut floor, 20, goal);
    paired("channel", &mut crate_loop, &mut floor, 20, goal);
    // The event-loop reader against a raw server that also waits for readiness first.
    paired("channel", &mut crate_loop, &mut floor_polled, 20, goal);
}

fn dialect(c: &mut Criterion) {
    let file = memfd(M2);
    let fd = file.as_raw_fd();
    let place = Placement::from_env();
    let (mut map, mut unmap) = (FsBackendMsg::default(), FsBackendMsg::default());
    for i in 0..8 {
        map.cache_offset[i] = i as u64 * M2;
        map.len[i] = M2;
        map.flags[i] = FS_FLAG_MAP_R;
        unmap.cache_offset[i] = i as u64 * M2;
        unmap.len[i] = M2;
    }
    let fs_map = message(legacy::FS_MAP, map.as_slice());
    let fs_unmap = message(legacy::FS_UNMAP, unmap.as_slice());
    let shmem_maps: Vec<_> = (0..8)
        .map(|i| mmap_msg(standard::SHMEM_MAP, i * M2, M2))
        .collect();
    let shmem_unmaps: Vec<_> = (0..8)
        .map(|i| mmap_msg(standard::SHMEM_UNMAP, i * M2, M2))
        .collect();
    let channel = |dialect: Dialect| {
        move |ours: UnixStream| {
            BackendChannel::builder(ours)
                .window(Arc::new(DaxWindow::new(SOCKET_WINDOW).unwrap()))
                .dialect(dialect)
                .build()
        }
    };
    let mut g = c.benchmark_group("dialect");
    let mut served_legacy = None;
    let mut legacy = Side::new("legacy_fs_map_8x2m", |n| {
        let s = served_legacy
            .get_or_insert_with(|| serve_channel(&place, Drive::Spawn, channel(Dialect::Legacy)));
        timed(n, || {
            assert_eq!(call(&s.peer, &fs_map, Some(fd)), 0);
            assert_eq!(call(&s.peer, &fs_unmap, None), 0);
        })
    });
    let mut served_standard = None;
    let mut standard = Side::new("standard_shmem_map_8x2m", |n| {
        let s = served_standard
            .get_or_insert_with(|| serve_channel(&place, Drive::Spawn, channel(Dialect::Standard)));
        timed(n, || {
            for m in &shmem_maps {
                assert_eq!(call(&s.peer, m, Some(fd)), 0);
            }
            for m in &shmem_unmaps {
                assert_eq!(call(&s.peer, m, None), 0);
            }
        })
    });
    legacy.bench(&mut g);
    standard.bench(&mut g);
    g.finish();
    paired("dialect", &mut standard, &mut legacy, 20, Goal::Report);
}

fn io(c: &mut Criterion) {
    let file = memfd(M2);
    let fd = file.as_raw_fd();
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), M2 as usize)]).unwrap();
    let space = Arc::new(IoSpace::with_guest_memory(Arc::new(ram)));
    // Fault guest RAM in, as the floor's buffer is.
    let first = space.transfer(0, M2, Transfer::ReadFile(&file, 0));
    assert_eq!(first.unwrap(), M2);
    let mut buf = AnonBuf::new(M2);
    let mut fs_io = FsBackendMsg::default();
    fs_io.len[0] = M2;
    fs_io.flags[0] = FS_FLAG_MAP_R;
    let fs_io = message(legacy::FS_IO, fs_io.as_slice());

    let place = Placement::from_env();
    let mut g = c.benchmark_group("io");
    g.throughput(Throughput::Bytes(M2));
    let mut floor = Side::new("floor_pread_2m", |n| {
        timed(n, || {
            assert_eq!(pread_all(fd, black_box(buf.as_mut()), 0), M2 as usize)
        })
    });
    let mut transfer = Side::new("transfer_2m", |n| {
        timed(n, || {
            let done = space.transfer(black_box(0), M2, Transfer::ReadFile(&file, 0));
            assert_eq!(done.unwrap(), M2);
        })
    });
    let mut raw = None;
    let mut floor_socket = Side::new("floor_socket_pread_2m", |n| {
        let s = raw.get_or_insert_with(|| serve_raw(&place, RawOp::Pread { len: M2 }));
        timed(n, || assert_eq!(call(&s.peer, &fs_io, Some(fd)), M2 as i64))
    });
    let mut served = None;
    let mut channel = Side::new("channel_fs_io_2m", |n| {
        let s = served.get_or_insert_with(|| {
            serve_channel(&place, Drive::Spawn, |ours| {
                BackendChannel::builder(ours)
                    .dialect(Dialect::Legacy)
                    .io_space(space.clone())
                    .build()
            })
        });
        timed(n, || assert_eq!(call(&s.peer, &fs_io, Some(fd)), M2 as i64))
    });
    floor.bench(&mut g);
    transfer.bench(&mut g);
    floor_socket.bench(&mut g);
    channel.bench(&mut g);
    g.finish();
    let goal = Goal::ThroughputAtLeast(0.9);
    paired("io", &mut transfer, &mut floor, 20, goal);
    paired("io", &mut channel, &mut floor, 20, goal);
    paired("io", &mut channel, &mut floor_socket, 20, goal);
}

fn reset(c: &mut Criterion) {
    let file = memfd(M2);
    // Both sides use one 64 GiB window, filled before each timed reset (32,768 maps, untimed).
    let window = OnceCell::new();
    let window = || window.get_or_init(full_window);
    let mut g = c.benchmark_group("reset");
    // Each iteration maps 32,768 ranges first (~0.2 s): few samples, one iteration each.
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut floor = Side::new("floor_remap_64g_live_32k", |n| {
        let w = window();
        let mut spent = Duration::ZERO;
        for _ in 0..n {
            fill_window(w, &file, LIVE);
            let t = Instant::now();
            RawRange::of_window(w).clear(0, G64);
            spent += t.elapsed();
            // The raw re-map left the window's table full: set it straight (one re-map of a
            // range that is all reservation again).
            w.unmap_all().unwrap();
        }
        spent
    });
    let mut unmap_all = Side::new("window_unmap_all_live_32k", |n| {
        let w = window();
        let mut spent = Duration::ZERO;
        for _ in 0..n {
            fill_window(w, &file, LIVE);
            assert_eq!(w.live_mappings() as u64, LIVE);
            let t = Instant::now();
            w.unmap_all().unwrap();
            spent += t.elapsed();
        }
        spent
    });
    floor.bench(&mut g);
    unmap_all.bench(&mut g);
    g.finish();
    paired("reset", &mut unmap_all, &mut floor, 10, Goal::Report);
}

criterion_group!(benches, decode, reserve, map, channel, dialect, io, reset);
criterion_main!(benches);
