// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Peers and servers over a socket pair.

use std::io::Read;
use std::mem::{size_of, size_of_val};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::thread::{self, JoinHandle};

use vm_memory::ByteValued;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use virtio_fs_dax::channel::ChannelThread;
use virtio_fs_dax::protocol::{FsBackendMsg, VhostUserMMap, FLAG_REPLY, HEADER_SIZE, VERSION};
use virtio_fs_dax::BackendChannel;

use crate::floor::{pread_all, AnonBuf, RawReservation};
use crate::lean::Lean;
use crate::placement::Placement;

/// Sends one message (with `fd` attached) and returns the reply's value.
pub fn call(sock: &UnixStream, msg: &[u8], fd: Option<RawFd>) -> i64 {
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

pub enum Server {
    Channel(ChannelThread),
    /// Stopped by shutting the socket down.
    Thread(JoinHandle<()>),
    /// Stopped by writing to the eventfd it waits on.
    Stoppable(EventFd, JoinHandle<()>),
    /// A server in a child process, killed and reaped; our end of the socket pair it started
    /// with (the child also ends when that closes).
    Process(Child, UnixStream),
}

/// A server (a thread, or a child process) and the peer's end of its socket; stops the server
/// and joins (or reaps) it on drop.
pub struct Served {
    pub peer: UnixStream,
    server: Option<Server>,
}

impl Served {
    pub fn new(peer: UnixStream, server: Server) -> Self {
        Served {
            peer,
            server: Some(server),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        match self.server.take() {
            Some(Server::Channel(t)) => t.stop().unwrap(),
            Some(Server::Thread(h)) => {
                let _ = self.peer.shutdown(std::net::Shutdown::Both);
                h.join().unwrap();
            }
            Some(Server::Stoppable(stop, h)) => {
                stop.write(1).unwrap();
                h.join().unwrap();
            }
            Some(Server::Process(mut child, _boot)) => {
                let _ = child.kill();
                child.wait().unwrap();
            }
            None => {}
        }
    }
}

#[derive(Clone, Copy)]
pub enum Drive {
    /// `BackendChannel::spawn`: epoll + stop eventfd, the crate's own thread.
    Spawn,
    /// A plain thread as an event loop drives the channel: `poll(2)` for readiness, then the
    /// non-blocking `BackendChannel::handle_one` (`handle_one_timeout` does both).
    HandleOne,
}

pub fn serve_channel(
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
    Served::new(peer, server)
}

/// What the raw server does with a request.
#[derive(Clone, Copy)]
pub enum RawOp {
    /// SHMEM_MAP: `mmap MAP_FIXED` of the descriptor into a reservation of this size;
    /// SHMEM_UNMAP: the `PROT_NONE` re-map.
    Map { window: u64 },
    /// Legacy FS_IO (code 9 too): `pread` of entry 0 into an [`AnonBuf`] of this size.
    Pread { len: u64 },
}

pub fn serve_raw(place: &Placement, op: RawOp) -> Served {
    serve_raw_with(place, op, false)
}

/// As [`serve_raw`]; with `wait_first`, the server waits for readiness with `epoll_wait` before each
/// message, as an event loop does.
pub fn serve_raw_with(place: &Placement, op: RawOp, wait_first: bool) -> Served {
    let reservation = match op {
        RawOp::Map { window } => Some(RawReservation::new(window)),
        RawOp::Pread { .. } => None,
    };
    spawn_raw(place, op, reservation, None, wait_first)
}

/// As [`serve_raw_with`] of [`RawOp::Map`], into a reservation the caller made (and filled);
/// with `lean`, the requests are checked by it first (see [`crate::lean`]).
pub fn serve_raw_into(
    place: &Placement,
    reservation: RawReservation,
    lean: Option<Lean>,
    wait_first: bool,
) -> Served {
    let op = RawOp::Map {
        window: reservation.range.size(),
    };
    spawn_raw(place, op, Some(reservation), lean, wait_first)
}

fn spawn_raw(
    place: &Placement,
    op: RawOp,
    reservation: Option<RawReservation>,
    lean: Option<Lean>,
    wait_first: bool,
) -> Served {
    let (ours, peer) = UnixStream::pair().unwrap();
    let server = place.server(|| {
        Server::Thread(thread::spawn(move || {
            raw_server(ours, op, reservation, lean, wait_first)
        }))
    });
    Served::new(peer, server)
}

/// `recvmsg` into `buf` until at least `min` bytes are in, keeping the first descriptor that comes
/// along; returns how many came. Each `recvmsg` asks for all of `buf`, so a message sent whole
/// (header and body in one `sendmsg`) takes one call. `None` at the end of the stream.
pub fn raw_recv(
    fd: RawFd,
    buf: &mut [u8],
    min: usize,
    file: &mut Option<OwnedFd>,
) -> Option<usize> {
    let mut got = 0;
    while got < min {
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
    Some(got)
}

/// The floor of the channel: a message read as the channel reads it (one `recvmsg` takes header
/// and body), no decoding, no checks, no table; the mmap (or pread), then a 20-byte reply. With
/// `wait_first`, an `epoll_wait` for readiness before each message, as the channel's own thread
/// makes. With `lean`, SHMEM_MAP and SHMEM_UNMAP are checked by it first (the `lean` sides).
fn raw_server(
    sock: UnixStream,
    op: RawOp,
    reservation: Option<RawReservation>,
    lean: Option<Lean>,
    wait_first: bool,
) {
    let fd = sock.as_raw_fd();
    let epoll = Epoll::new().unwrap();
    epoll
        .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
        .unwrap();
    let mut events = [EpollEvent::default(); 1];
    let mut buf = match op {
        RawOp::Pread { len } => Some(AnonBuf::new(len)),
        RawOp::Map { .. } => None,
    };
    let mut msg = [0u8; HEADER_SIZE + size_of::<FsBackendMsg>()];
    loop {
        if wait_first && epoll.wait(-1, &mut events).is_err() {
            return;
        }
        let mut file = None;
        let Some(got) = raw_recv(fd, &mut msg, HEADER_SIZE, &mut file) else {
            return;
        };
        let size = u32::from_le_bytes(msg[8..12].try_into().unwrap()) as usize;
        let end = HEADER_SIZE + size.min(size_of::<FsBackendMsg>());
        if got < end && raw_recv(fd, &mut msg[got..end], end - got, &mut file).is_none() {
            return;
        }
        let (hdr, body) = msg.split_at(HEADER_SIZE);
        let code = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let value = match (op, &reservation, &file, &lean) {
            (RawOp::Map { .. }, Some(r), f, Some(lean)) => {
                let fd = f.as_ref().map(|f| f.as_raw_fd());
                lean.handle(&r.range, &msg, got.max(end), fd) as u64
            }
            (RawOp::Map { .. }, Some(r), Some(f), None) => {
                let m = VhostUserMMap::from_slice(&body[..size_of::<VhostUserMMap>()]).unwrap();
                r.range.map(m.shm_offset, m.len, f.as_raw_fd(), m.fd_offset);
                0
            }
            (RawOp::Map { .. }, Some(r), None, None) => {
                let m = VhostUserMMap::from_slice(&body[..size_of::<VhostUserMMap>()]).unwrap();
                r.range.clear(m.shm_offset, m.len);
                0
            }
            (RawOp::Pread { .. }, _, Some(f), _) => {
                let m = FsBackendMsg::from_slice(body).unwrap();
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
