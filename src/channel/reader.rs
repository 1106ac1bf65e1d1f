// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The message reassembly: descriptor intake, then header, body and descriptors kept across
//! calls until a message is whole.

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::unix::net::UnixStream;

use rustix::io::Errno;
use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use vm_memory::ByteValued;

use super::{BackendChannel, Error, Result};
use crate::protocol::{RawHeader, HEADER_SIZE, MAX_BODY_SIZE, MAX_FDS};

/// Most bytes of an oversized body drained in one [`BackendChannel::handle_one`] call.
pub const DRAIN_BUDGET: usize = 256 << 10;

/// Most descriptors kept for one message; no request needs more than one. Further ones are
/// closed as they arrive and only counted, so a peer that spreads a message over many parts,
/// each with descriptors, cannot make the channel hold more than this.
const KEPT_FDS: usize = 4;

/// The descriptors received with one message: the first [`KEPT_FDS`] owned, the rest counted.
#[derive(Default)]
pub(super) struct Fds {
    pub(super) kept: Vec<File>,
    dropped: usize,
    /// The kernel dropped some of the message's descriptors (`MSG_CTRUNC`): the message is
    /// refused, and whatever descriptors did come are closed as they arrive.
    lost: bool,
}

impl Fds {
    fn take(&mut self, file: File) {
        if self.kept.len() < KEPT_FDS && !self.lost {
            self.kept.push(file);
        } else {
            self.dropped += 1;
        }
    }

    /// Marks the message's descriptors lost and closes the ones kept so far.
    fn lose(&mut self) {
        self.lost = true;
        self.dropped += self.kept.len();
        self.kept.clear();
    }

    pub(super) fn count(&self) -> usize {
        self.kept.len() + self.dropped
    }

    /// Whether the kernel dropped some of the message's descriptors.
    pub(super) fn lost(&self) -> bool {
        self.lost
    }
}

/// A received message: raw header, body (empty when it was oversized and drained), and the
/// descriptors that came along.
pub(super) struct Message {
    pub(super) raw: RawHeader,
    pub(super) body: Vec<u8>,
    pub(super) fds: Fds,
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
pub(super) struct Reader {
    stage: Stage,
    hdr: [u8; HEADER_SIZE],
    raw: RawHeader,
    got: usize,
    pub(super) body: Vec<u8>,
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
        matches!(self.stage, Stage::Header)
            && self.got == 0
            && self.fds.count() == 0
            && !self.fds.lost
    }

    /// Gives up the message in progress when the channel has failed: its descriptors are
    /// closed now, not when the channel is dropped.
    pub(super) fn abandon(&mut self) {
        self.fds = Fds::default();
        self.stage = Stage::Header;
        self.got = 0;
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
    /// Receives into `buf` without blocking, taking ownership of the descriptors that came along.
    ///
    /// The descriptors are close-on-exec from the moment they are installed
    /// (`MSG_CMSG_CLOEXEC`), so a process the VMM spawns meanwhile inherits none of them. When
    /// the kernel could not install them all (the process is at its `RLIMIT_NOFILE`), it drops the
    /// rest and sets `MSG_CTRUNC`; the bytes still come, so the stream stays in sync: the message
    /// is marked ([`Fds::lost`]) and refused once whole. The control buffer holds `MAX_FDS`
    /// (`SCM_MAX_FD`) descriptors, the most one `sendmsg` can carry, and a unix stream socket
    /// never hands out the descriptors of two sends in one `recvmsg`, so a truncation never
    /// comes from the buffer being too small.
    fn recv_part(sock: &UnixStream, buf: &mut [u8], fds: &mut Fds) -> Result<Recv> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        loop {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [IoSliceMut::new(buf)];
            let res = recvmsg(
                sock,
                &mut iov,
                &mut control,
                RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
            );
            match res {
                Ok(msg) => {
                    // Each received descriptor is an `OwnedFd`: closed exactly once, here or
                    // when the message is done with.
                    for cmsg in control.drain() {
                        if let RecvAncillaryMessage::ScmRights(received) = cmsg {
                            for fd in received {
                                fds.take(File::from(fd));
                            }
                        }
                    }
                    if msg.flags.contains(ReturnFlags::CTRUNC) {
                        fds.lose();
                    }
                    return Ok(Recv::Bytes(msg.bytes));
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Ok(Recv::WouldBlock),
                // The backend closed its end with replies unread: an end of stream like any.
                Err(Errno::CONNRESET) => return Ok(Recv::Bytes(0)),
                Err(e) => return Err(Error::Recv(io::Error::from(e))),
            }
        }
    }

    /// Advances the message in progress with what the socket holds now. `Ok(None)`: not whole
    /// yet (or the drain budget is spent); call again when the socket is readable.
    pub(super) fn poll_message(&mut self) -> Result<Option<Message>> {
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
}
