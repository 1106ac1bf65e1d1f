// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The message reader: one `recvmsg` takes whatever the socket holds into a buffer the reader
//! owns, and messages are framed out of it by their headers, with the descriptors that came
//! along given to one message by a rule that never loses the stream's framing.
//!
//! # Which message a descriptor belongs to
//!
//! On a Linux unix stream socket, the descriptors of a `sendmsg` travel with the first of the
//! socket buffers it queued, and a `recvmsg` that returns any byte of that buffer returns its
//! descriptors too, then stops at the end of that buffer at the latest
//! (`unix_stream_read_generic`: `unix_detach_fds`, then `if (scm.fp) break;`). So the bytes of
//! one read end inside (or at the end of) the `sendmsg` whose descriptors came with it. The
//! reader gives a read's descriptors to the message that holds the **last byte of that read**.
//! A backend that sends each message with its descriptors in one `sendmsg` (vhost's `Backend`
//! does) gets them on that message however the reads fall; one that sends them with a part of a
//! message gets them on a message the part belongs to. Framing never depends on descriptors, so
//! whatever a peer does, the stream stays in sync: a message whose descriptor count is not the
//! one its request takes is refused and its descriptors closed.

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use vm_memory::ByteValued;

use super::{BackendChannel, Error, Result};
use crate::protocol::{RawHeader, HEADER_SIZE, MAX_BODY_SIZE, MAX_FDS};

/// Most bytes of an oversized body drained in one [`BackendChannel::handle_one`] call.
pub const DRAIN_BUDGET: usize = 256 << 10;

/// Size of the reader's buffer: room for a few of the largest messages a request can be, so that
/// one read takes in every message a backend has queued in the common case.
const BUF_SIZE: usize = 4 * (HEADER_SIZE + MAX_BODY_SIZE);

/// The descriptors received with one message: the first owned, the rest counted. No request
/// takes more than one; further ones are closed as they arrive and only counted, so a peer that
/// spreads a message over many parts, each with descriptors, cannot make the channel hold more
/// than one a message. Held inline: a message's descriptors cost no allocation.
#[derive(Default)]
pub(super) struct Fds {
    /// The first descriptor that came, unless they were lost.
    kept: Option<File>,
    /// Descriptors closed on arrival: every one after the first, and all of a lost message's.
    dropped: usize,
    /// The kernel dropped some of the message's descriptors (`MSG_CTRUNC`): the message is
    /// refused, and whatever descriptors did come are closed as they arrive.
    lost: bool,
}

impl Fds {
    fn take(&mut self, file: File) {
        if self.kept.is_none() && !self.lost {
            self.kept = Some(file);
        } else {
            self.dropped += 1;
        }
    }

    /// Marks the message's descriptors lost and closes the one kept so far.
    fn lose(&mut self) {
        self.lost = true;
        if self.kept.take().is_some() {
            self.dropped += 1;
        }
    }

    /// Adds `other`'s descriptors to these, under the same bound.
    fn merge(&mut self, other: Fds) {
        if self.is_empty() {
            *self = other;
            return;
        }
        if other.lost {
            self.lose();
        }
        self.dropped += other.dropped;
        if let Some(f) = other.kept {
            self.take(f);
        }
    }

    /// The descriptor kept, if any.
    pub(super) fn first(&self) -> Option<&File> {
        self.kept.as_ref()
    }

    pub(super) fn count(&self) -> usize {
        usize::from(self.kept.is_some()) + self.dropped
    }

    fn is_empty(&self) -> bool {
        self.count() == 0 && !self.lost
    }

    /// Whether the kernel dropped some of the message's descriptors.
    pub(super) fn lost(&self) -> bool {
        self.lost
    }
}

/// A received message: raw header, where its body lies in the reader's buffer (empty when it
/// was oversized and drained), and the descriptors that came along.
pub(super) struct Message {
    pub(super) raw: RawHeader,
    /// `Reader::body(body)` gives the bytes until the next read.
    pub(super) body: Range<usize>,
    pub(super) fds: Fds,
}

/// How a read may wait.
#[derive(Clone, Copy)]
pub(super) enum Wait {
    /// Never: `MSG_DONTWAIT`.
    No,
    /// Until this instant, in `recvmsg` itself (`SO_RCVTIMEO`).
    Until(Instant),
}

/// The byte stream, framed: a buffer of received bytes, the oversized message being drained,
/// and the descriptors not yet given to a message. Kept across calls so that no call waits for
/// the rest of a message.
#[derive(Default)]
pub(super) struct Reader {
    /// Received bytes; `buf[start..end]` are not yet framed. Allocated at the first read.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream position (bytes received before it) of `buf[start]`.
    pos: u64,
    /// An oversized message being drained: its header, and the bytes of its body still to come.
    drain: Option<(RawHeader, usize)>,
    /// Stream position where the message being drained ends.
    drain_end: u64,
    /// Descriptors of the message that begins at `start` (or is being drained).
    first: Fds,
    /// Descriptors of one read whose last byte lies at this stream position, beyond the first
    /// message's end (as far as that is known).
    later: Option<(u64, Fds)>,
    /// `SO_RCVTIMEO` as last set on the socket.
    rcvtimeo: Option<Duration>,
}

/// What one receive gave.
enum Recv {
    Bytes(usize),
    WouldBlock,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("buffered", &(self.end - self.start))
            .field("fds", &self.first.count())
            .finish_non_exhaustive()
    }
}

impl Reader {
    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Whether the stream stands between two messages, nothing of the next one received.
    fn idle(&self) -> bool {
        self.buffered() == 0
            && self.drain.is_none()
            && self.first.is_empty()
            && self.later.is_none()
    }

    /// Whether a whole message (or the end of a drained one) is buffered: serving it needs no
    /// read.
    pub(super) fn has_message(&self) -> bool {
        match self.drain {
            Some((_, left)) => self.buffered() >= left,
            None => self.header().is_some_and(|raw| {
                let size = raw.size as usize;
                size > MAX_BODY_SIZE || self.buffered() >= HEADER_SIZE + size
            }),
        }
    }

    /// The body of the message framed last (see [`Message::body`]).
    pub(super) fn body(&self, body: Range<usize>) -> &[u8] {
        self.buf.get(body).unwrap_or_default()
    }

    /// The header at `start`, when all of it is buffered.
    fn header(&self) -> Option<RawHeader> {
        // Most often nothing is buffered: that answer takes no slicing.
        if self.buffered() < HEADER_SIZE {
            return None;
        }
        let bytes = self.buf.get(self.start..self.start + HEADER_SIZE)?;
        Some(RawHeader::from_slice(bytes).copied().unwrap_or_default())
    }

    /// Gives up everything received: the descriptors are closed now, not when the channel is
    /// dropped.
    pub(super) fn abandon(&mut self) {
        self.pos += self.buffered() as u64;
        self.start = 0;
        self.end = 0;
        self.drain = None;
        self.first = Fds::default();
        self.later = None;
    }

    /// Consumes `n` buffered bytes.
    fn consume(&mut self, n: usize) {
        self.start += n;
        self.pos += n as u64;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
    }

    /// The descriptors of the message that ends at stream position `end`: the first message's,
    /// and those of a later read whose last byte lies before `end`.
    fn take_fds(&mut self, end: u64) -> Fds {
        let mut fds = std::mem::take(&mut self.first);
        if let Some((_, later)) = self.later.take_if(|(at, _)| *at < end) {
            fds.merge(later);
        }
        fds
    }

    /// Frames the next message out of the buffer, if it is there. Bytes of a drained body are
    /// discarded as they come.
    fn frame(&mut self) -> Option<Message> {
        if self.drain.is_some() {
            return self.frame_drained();
        }
        let raw = self.header()?;
        let size = raw.size as usize;
        if size > MAX_BODY_SIZE {
            return self.start_drain(raw);
        }
        let len = HEADER_SIZE + size;
        if self.buffered() < len {
            return None;
        }
        let body_at = self.start + HEADER_SIZE;
        // The bytes stay where they are until the next read: `consume` moves no bytes.
        self.consume(len);
        let fds = self.take_fds(self.pos);
        Some(Message {
            raw,
            body: body_at..body_at + size,
            fds,
        })
    }

    /// Starts draining the oversized message whose header is at `start`.
    #[cold]
    fn start_drain(&mut self, raw: RawHeader) -> Option<Message> {
        let size = raw.size as usize;
        self.consume(HEADER_SIZE);
        self.drain = Some((raw, size));
        self.drain_end = self.pos + size as u64;
        self.frame_drained()
    }

    /// [`Reader::frame`] while a message is drained: its body's bytes are discarded, and the
    /// message is given (with no body) once they all came.
    #[cold]
    fn frame_drained(&mut self) -> Option<Message> {
        let (raw, left) = self.drain?;
        let n = left.min(self.buffered());
        self.consume(n);
        let left = left - n;
        if left > 0 {
            self.drain = Some((raw, left));
            return None;
        }
        self.drain = None;
        let fds = self.take_fds(self.drain_end);
        Some(Message {
            raw,
            body: 0..0,
            fds,
        })
    }

    /// The error for the end of the stream: a disconnection between two messages, a truncation
    /// within one.
    #[cold]
    fn end_of_stream(&self) -> Error {
        if self.idle() {
            Error::Disconnected
        } else {
            let (got, expected) = self.progress();
            Error::Truncated { got, expected }
        }
    }

    /// Where the message in progress stands, for [`Error::Truncated`]: bytes received of its
    /// header, or of its body once the header is in, and how many were expected.
    fn progress(&self) -> (usize, usize) {
        if let Some((raw, left)) = self.drain {
            let size = raw.size as usize;
            return (size - left, size);
        }
        match self.header() {
            Some(raw) => (self.buffered() - HEADER_SIZE, raw.size as usize),
            None => (self.buffered(), HEADER_SIZE),
        }
    }

    /// Takes the descriptors of a read whose last byte lies at stream position `at`.
    fn file_away(&mut self, at: u64, fds: Fds) {
        if fds.is_empty() {
            return;
        }
        // Reads happen only while the first message is not whole, so descriptors kept from an
        // earlier read lie inside it.
        if let Some((_, earlier)) = self.later.take() {
            self.first.merge(earlier);
        }
        self.later = Some((at, fds));
    }
}

impl BackendChannel {
    /// One `recvmsg` into `buf`, taking ownership of the descriptors that came along.
    ///
    /// The descriptors are close-on-exec from the moment they are installed
    /// (`MSG_CMSG_CLOEXEC`), so a process the VMM spawns meanwhile inherits none of them. When
    /// the kernel could not install them all (the process is at its `RLIMIT_NOFILE`), it drops the
    /// rest and sets `MSG_CTRUNC`; the bytes still come, so the stream stays in sync: the message
    /// is marked ([`Fds::lost`]) and refused once whole. The control buffer holds `MAX_FDS`
    /// (`SCM_MAX_FD`) descriptors, the most one `sendmsg` can carry, and a unix stream socket
    /// never hands out the descriptors of two sends in one `recvmsg`, so a truncation never
    /// comes from the buffer being too small.
    fn recv_part(sock: &UnixStream, buf: &mut [u8], fds: &mut Fds, wait: bool) -> Result<Recv> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let flags = if wait {
            RecvFlags::CMSG_CLOEXEC
        } else {
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT
        };
        loop {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [IoSliceMut::new(buf)];
            match recvmsg(sock, &mut iov, &mut control, flags) {
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
                    // Drained to the end just above, the buffer holds no descriptor; its `Drop`
                    // would only walk it again. It borrows `space` and owns nothing.
                    std::mem::forget(control);
                    if msg.flags.contains(ReturnFlags::CTRUNC) {
                        fds.lose();
                    }
                    return Ok(Recv::Bytes(msg.bytes));
                }
                // A signal: the caller looks at its deadline again.
                Err(Errno::INTR) if wait => return Ok(Recv::WouldBlock),
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Ok(Recv::WouldBlock),
                // The backend closed its end with replies unread: an end of stream like any.
                Err(Errno::CONNRESET) => return Ok(Recv::Bytes(0)),
                Err(e) => return Err(Error::Recv(io::Error::from(e))),
            }
        }
    }

    /// Sets the socket's receive timeout for a read that waits until `deadline`; `false` when the
    /// deadline has passed (read without waiting). The timeout is set again only when the one in
    /// force would end more than a millisecond past the deadline, or before it: a caller that
    /// passes the same timeout every time pays one `setsockopt` in all.
    fn arm_timeout(&mut self, deadline: Instant) -> Result<bool> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_micros(1) {
            return Ok(false);
        }
        let set = self.reader.rcvtimeo;
        if set.is_some_and(|t| t >= left && t - left <= Duration::from_millis(1)) {
            return Ok(true);
        }
        self.sock
            .set_read_timeout(Some(left))
            .map_err(Error::Recv)?;
        self.reader.rcvtimeo = Some(left);
        Ok(true)
    }

    /// The next message, framed from what the reader holds or, when that holds no whole message,
    /// from what the socket gives now (waiting as `wait` says). `Ok(None)`: not whole yet, or the
    /// drain budget is spent; nothing whole is buffered then, so the socket's readiness announces
    /// whatever comes next.
    pub(super) fn poll_message(&mut self, wait: Wait) -> Result<Option<Message>> {
        self.ensure_blocking()?;
        let mut drained = 0;
        loop {
            if let Some(msg) = self.reader.frame() {
                return Ok(Some(msg));
            }
            let draining = self.reader.drain.is_some();
            if draining && drained >= DRAIN_BUDGET {
                return Ok(None);
            }
            let waits = match wait {
                Wait::No => false,
                Wait::Until(deadline) => self.arm_timeout(deadline)?,
            };
            let r = &mut self.reader;
            if r.buf.is_empty() {
                r.buf = vec![0; BUF_SIZE];
            }
            // Unframed bytes move to the front: at most one message's worth, usually none.
            if r.start > 0 {
                r.buf.copy_within(r.start..r.end, 0);
                r.end -= r.start;
                r.start = 0;
            }
            let mut room = r.buf.len() - r.end;
            if draining {
                room = room.min(DRAIN_BUDGET - drained);
            }
            let mut fds = Fds::default();
            let res = Self::recv_part(&self.sock, &mut r.buf[r.end..r.end + room], &mut fds, waits);
            let n = match res? {
                Recv::WouldBlock => return Ok(None),
                Recv::Bytes(0) => {
                    drop(fds);
                    return Err(r.end_of_stream());
                }
                Recv::Bytes(n) => n,
            };
            r.end += n;
            if draining {
                drained += n;
            }
            let last = r.pos + r.buffered() as u64 - 1;
            r.file_away(last, fds);
        }
    }
}
