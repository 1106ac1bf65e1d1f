// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A FUSE client over a virtio-fs request queue.

use std::time::Duration;

use vm_memory::{Address, ByteValued, Bytes, GuestAddress};

use super::fuse::{self, *};
use super::{GuestError, Result, SplitQueueDriver};
use crate::device::ActivateQueue;

/// A FUSE client over a virtio-fs request queue, as the guest's FUSE driver is: one request at
/// a time, each a chain of device-readable `fuse_in_header` + arguments (+ WRITE data) and
/// device-writable `fuse_out_header` (+ reply payload).
///
/// The scratch area given to [`FuseSession::new`] holds the requests (first half) and replies
/// (second half), so a READ or WRITE moves at most about half of it.
#[derive(Debug)]
pub struct FuseSession {
    queue: SplitQueueDriver,
    hiprio: Option<SplitQueueDriver>,
    req_area: GuestAddress,
    reply_area: GuestAddress,
    half: usize,
    unique: u64,
    /// Timeout for each reply.
    pub timeout: Duration,
    /// uid put in request headers (the caller's effective uid by default).
    pub uid: u32,
    /// gid put in request headers.
    pub gid: u32,
    /// pid put in request headers.
    pub pid: u32,
    init: Option<InitOut>,
}

impl FuseSession {
    /// A session sending its requests on `queue`, with `scratch_len` bytes of guest memory at
    /// `scratch` for request and reply buffers (must not overlap the rings).
    pub fn new(queue: SplitQueueDriver, scratch: GuestAddress, scratch_len: usize) -> Result<Self> {
        let half = (scratch_len / 2) & !7;
        if half < 4096 {
            return Err(GuestError::TooLarge {
                len: 8192,
                room: scratch_len,
            });
        }
        // Fail now, not at the first request, if the area is not guest memory.
        queue.memory().write_slice(&vec![0u8; 2 * half], scratch)?;
        Ok(FuseSession {
            queue,
            hiprio: None,
            req_area: scratch,
            reply_area: scratch.unchecked_add(half as u64),
            half,
            unique: 0,
            timeout: Duration::from_secs(5),
            // SAFETY: geteuid, getegid and getpid cannot fail and touch no memory.
            uid: unsafe { libc::geteuid() },
            // SAFETY: as above.
            gid: unsafe { libc::getegid() },
            pid: std::process::id(),
            init: None,
        })
    }

    /// Sends FORGETs on `hiprio` (queue 0, the high priority queue), as the Linux driver does,
    /// instead of on the request queue.
    pub fn with_hiprio(mut self, hiprio: SplitQueueDriver) -> Self {
        self.hiprio = Some(hiprio);
        self
    }

    /// What the driver tells the device at `DRIVER_OK`: the high priority queue as queue 0 when
    /// there is one, then the request queue.
    pub fn activate_queues(&self) -> Result<Vec<ActivateQueue>> {
        let mut queues = Vec::new();
        if let Some(h) = &self.hiprio {
            queues.push(h.activate_queue(0)?);
        }
        queues.push(self.queue.activate_queue(queues.len())?);
        Ok(queues)
    }

    /// A new driver instance on the same queues and eventfds ([`SplitQueueDriver::restart`]),
    /// as after a device reset; [`FuseSession::init`] again before any other request.
    pub fn restart(&mut self) -> Result<()> {
        self.queue.restart()?;
        if let Some(h) = &mut self.hiprio {
            h.restart()?;
        }
        self.unique = 0;
        self.init = None;
        Ok(())
    }

    /// The request queue's driver.
    pub fn queue(&self) -> &SplitQueueDriver {
        &self.queue
    }

    /// The INIT reply, once [`FuseSession::init`] succeeded.
    pub fn init_out(&self) -> Option<&InitOut> {
        self.init.as_ref()
    }

    /// Largest READ / WRITE payload: what fits the scratch area (and, after INIT, `max_write`).
    pub fn max_io(&self) -> usize {
        let room = self.half - std::mem::size_of::<InHeader>() - std::mem::size_of::<WriteIn>();
        match self.init {
            Some(i) if i.max_write > 0 => room.min(i.max_write as usize),
            _ => room,
        }
    }

    fn header(&mut self, opcode: u32, nodeid: u64) -> InHeader {
        self.unique += 1;
        InHeader {
            len: 0,
            opcode,
            unique: self.unique,
            nodeid,
            uid: self.uid,
            gid: self.gid,
            pid: self.pid,
            total_extlen: 0,
            padding: 0,
        }
    }

    /// Sends one request and waits for it to come back. `reply_len` is the payload room after
    /// `fuse_out_header`; `None` for requests without a reply (FORGET). Returns the payload.
    fn call(
        &mut self,
        opcode: u32,
        nodeid: u64,
        args: &[&[u8]],
        data: &[u8],
        reply_len: Option<usize>,
    ) -> Result<Vec<u8>> {
        self.call_with(opcode, nodeid, args, data, &[], reply_len, &[])
            .map(|(payload, _)| payload)
    }

    /// [`Self::call`] whose request data may also come from buffers of the caller's, `data_at`
    /// (after `data`, one descriptor each), and whose reply data may go to buffers of the
    /// caller's, `out`, instead of the scratch area (the reply header and `reply_len` bytes
    /// still land in the scratch area). Returns the payload read from the scratch area, and the
    /// reply's length: the used length the device reported, or with `out`, the length the reply
    /// header gives (checked against the room offered).
    #[allow(clippy::too_many_arguments)]
    fn call_with(
        &mut self,
        opcode: u32,
        nodeid: u64,
        args: &[&[u8]],
        data: &[u8],
        data_at: &[(GuestAddress, u32)],
        reply_len: Option<usize>,
        out: &[(GuestAddress, u32)],
    ) -> Result<(Vec<u8>, u32)> {
        let header = self.header(opcode, nodeid);
        let unique = header.unique;
        let mut req = fuse::request(header, args);
        let arg_len = req.len();
        let in_scratch = arg_len + data.len();
        if in_scratch > self.half {
            return Err(GuestError::TooLarge {
                len: in_scratch,
                room: self.half,
            });
        }
        let total = data_at
            .iter()
            .fold(in_scratch as u64, |t, b| t + u64::from(b.1));
        // `len` covers the data too; it travels in its own descriptors.
        req[0..4].copy_from_slice(&(total as u32).to_le_bytes());
        let mem = self.queue.memory().clone();
        mem.write_slice(&req, self.req_area)?;
        let mut readable = vec![(self.req_area, arg_len as u32)];
        if !data.is_empty() {
            let at = self.req_area.unchecked_add(arg_len as u64);
            mem.write_slice(data, at)?;
            readable.push((at, data.len() as u32));
        }
        readable.extend_from_slice(data_at);
        let hsize = std::mem::size_of::<OutHeader>();
        let mut writable = Vec::new();
        if let Some(n) = reply_len {
            if hsize + n > self.half {
                return Err(GuestError::TooLarge {
                    len: hsize + n,
                    room: self.half,
                });
            }
            mem.write_slice(&vec![0u8; hsize + n], self.reply_area)?;
            writable.push((self.reply_area, hsize as u32));
            if n > 0 {
                writable.push((self.reply_area.unchecked_add(hsize as u64), n as u32));
            }
        }
        writable.extend_from_slice(out);
        let timeout = self.timeout;
        let q = match (&mut self.hiprio, opcode) {
            (Some(h), FUSE_FORGET) => h,
            _ => &mut self.queue,
        };
        let head = q.add_chain(&readable, &writable)?;
        q.kick()?;
        let (got, len) = q
            .try_wait_used(timeout)?
            .ok_or(GuestError::Timeout { opcode, timeout })?;
        if got != head {
            return Err(GuestError::WrongHead {
                got,
                expected: head,
            });
        }
        let Some(n) = reply_len else {
            return Ok((Vec::new(), len));
        };
        if !out.is_empty() {
            // The data went to the caller's buffers: check the header alone, whose `len` counts
            // that data too.
            let mut h = [0u8; std::mem::size_of::<OutHeader>()];
            mem.read_slice(&mut h, self.reply_area)?;
            let header = OutHeader::from_slice(&h).copied().unwrap_or_default();
            let room: u64 = out.iter().map(|b| u64::from(b.1)).sum();
            let limit = (hsize + n) as u64 + room;
            let bad = if header.unique != unique {
                Some(format!("unique {} for request {unique}", header.unique))
            } else if u64::from(header.len) < hsize as u64 || u64::from(header.len) > limit {
                Some(format!("header len {} with room for {limit}", header.len))
            } else if header.error > 0 || header.error < -4095 {
                Some(format!("error {} is not a negative errno", header.error))
            } else {
                None
            };
            if let Some(bad) = bad {
                return Err(GuestError::BadReply(bad));
            }
            if header.error != 0 {
                return Err(GuestError::Fuse {
                    opcode,
                    error: header.error,
                });
            }
            let mut payload = vec![0u8; n];
            mem.read_slice(&mut payload, self.reply_area.unchecked_add(hsize as u64))?;
            return Ok((payload, header.len));
        }
        let written = (len as usize).min(hsize + n);
        let mut reply = vec![0u8; written];
        mem.read_slice(&mut reply, self.reply_area)?;
        match fuse::parse_reply(&reply, unique).map_err(GuestError::BadReply)? {
            Ok(payload) => Ok((payload.to_vec(), len)),
            Err(error) => Err(GuestError::Fuse { opcode, error }),
        }
    }

    /// INIT with the flags a plain (non-DAX) mount asks for.
    pub fn init(&mut self) -> Result<InitOut> {
        self.init_with_flags(FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES)
    }

    /// INIT asking for `flags` (add [`FUSE_MAP_ALIGNMENT`] for a DAX mount, as Linux does).
    /// Fails with [`GuestError::BadReply`] on a major version other than 7.
    pub fn init_with_flags(&mut self, flags: u64) -> Result<InitOut> {
        let flags = flags | FUSE_INIT_EXT;
        let init_in = InitIn {
            major: FUSE_KERNEL_VERSION,
            minor: FUSE_KERNEL_MINOR_VERSION,
            max_readahead: 128 << 10,
            flags: flags as u32,
            flags2: (flags >> 32) as u32,
            unused: [0; 11],
        };
        let payload = self.call(
            FUSE_INIT,
            0,
            &[init_in.as_slice()],
            &[],
            Some(std::mem::size_of::<InitOut>()),
        )?;
        if payload.len() < 24 {
            return Err(GuestError::BadReply(format!(
                "INIT reply of {} bytes",
                payload.len()
            )));
        }
        let out: InitOut = read_struct(&payload);
        if out.major != FUSE_KERNEL_VERSION {
            return Err(GuestError::BadReply(format!("FUSE major {}", out.major)));
        }
        self.init = Some(out);
        Ok(out)
    }

    /// LOOKUP `name` in directory `parent`: the node id and attributes.
    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<(u64, Attr)> {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        let payload = self.call(
            FUSE_LOOKUP,
            parent,
            &[&n],
            &[],
            Some(std::mem::size_of::<EntryOut>()),
        )?;
        let e: EntryOut = read_struct(&payload);
        Ok((e.nodeid, e.attr))
    }

    /// GETATTR of `nodeid`.
    pub fn getattr(&mut self, nodeid: u64) -> Result<Attr> {
        let arg = GetattrIn::default();
        let payload = self.call(
            FUSE_GETATTR,
            nodeid,
            &[arg.as_slice()],
            &[],
            Some(std::mem::size_of::<AttrOut>()),
        )?;
        Ok(read_struct::<AttrOut>(&payload).attr)
    }

    /// OPEN `nodeid` with `open(2)` flags: the file handle.
    pub fn open(&mut self, nodeid: u64, flags: u32) -> Result<u64> {
        let arg = OpenIn {
            flags,
            open_flags: 0,
        };
        let payload = self.call(
            FUSE_OPEN,
            nodeid,
            &[arg.as_slice()],
            &[],
            Some(std::mem::size_of::<OpenOut>()),
        )?;
        Ok(read_struct::<OpenOut>(&payload).fh)
    }

    /// READ up to `size` bytes at `offset`: the bytes read (fewer at end of file).
    pub fn read(&mut self, nodeid: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let arg = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        self.call(
            FUSE_READ,
            nodeid,
            &[arg.as_slice()],
            &[],
            Some(size as usize),
        )
    }

    /// READ up to `size` bytes at `offset` into the guest buffer at `buf`, which may lie anywhere
    /// in the guest's physical address space: in RAM, or in a DAX window, where the backend cannot
    /// see it and must have the front-end do the copy (legacy FS_IO). Only the reply header goes
    /// through the scratch area. Returns the number of bytes read.
    pub fn read_into(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
        buf: GuestAddress,
    ) -> Result<u32> {
        self.read_into_bufs(nodeid, fh, offset, &[(buf, size)])
    }

    /// READ at `offset` into the guest buffers `bufs` (address and length each, one descriptor
    /// each, in RAM or in a DAX window, as a `readv(2)` or a `read(2)` into memory that is only
    /// partly a DAX mapping gives), as many bytes as they hold together. Returns the number of
    /// bytes read.
    pub fn read_into_bufs(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        bufs: &[(GuestAddress, u32)],
    ) -> Result<u32> {
        let size = total_len(bufs)?;
        let arg = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let (_, used) = self.call_with(
            FUSE_READ,
            nodeid,
            &[arg.as_slice()],
            &[],
            &[],
            Some(0),
            bufs,
        )?;
        let hsize = std::mem::size_of::<OutHeader>() as u32;
        Ok(used - hsize)
    }

    /// WRITE `size` bytes at `offset` from the guest buffer at `buf`, which may lie anywhere in
    /// the guest's physical address space: in RAM, or in a DAX window (a guest `write(2)` from a
    /// DAX-mapped buffer), where the backend cannot see it and must have the front-end do the
    /// copy (legacy FS_IO). Returns the bytes written.
    pub fn write_from(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
        buf: GuestAddress,
    ) -> Result<u32> {
        self.write_from_bufs(nodeid, fh, offset, &[(buf, size)])
    }

    /// WRITE at `offset` the bytes of the guest buffers `bufs` (address and length each, one
    /// descriptor each, in RAM or in a DAX window), in order. Returns the bytes written.
    pub fn write_from_bufs(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        bufs: &[(GuestAddress, u32)],
    ) -> Result<u32> {
        let size = total_len(bufs)?;
        let arg = WriteIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let (payload, _) = self.call_with(
            FUSE_WRITE,
            nodeid,
            &[arg.as_slice()],
            &[],
            bufs,
            Some(std::mem::size_of::<WriteOut>()),
            &[],
        )?;
        Ok(read_struct::<WriteOut>(&payload).size)
    }

    /// Any request, with request data in the caller's guest buffers `data_at` (after `args`,
    /// one descriptor each) and reply room in the caller's guest buffers `out` (after the
    /// reply header and `reply_len` bytes in the scratch area), each anywhere in the guest's
    /// physical address space. Returns the `reply_len` bytes of the scratch area after the
    /// reply header and the reply's length (as the header gives it when `out` is not empty,
    /// else the used length), or the error the reply carries.
    pub fn request_with_bufs(
        &mut self,
        opcode: u32,
        nodeid: u64,
        args: &[&[u8]],
        data_at: &[(GuestAddress, u32)],
        reply_len: usize,
        out: &[(GuestAddress, u32)],
    ) -> Result<(Vec<u8>, u32)> {
        self.call_with(opcode, nodeid, args, &[], data_at, Some(reply_len), out)
    }

    /// The request queue's driver, to send chains by hand.
    pub fn queue_mut(&mut self) -> &mut SplitQueueDriver {
        &mut self.queue
    }

    /// WRITE `data` at `offset`: the bytes written.
    pub fn write(&mut self, nodeid: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        if data.len() > self.max_io() {
            return Err(GuestError::TooLarge {
                len: data.len(),
                room: self.max_io(),
            });
        }
        let arg = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        let payload = self.call(
            FUSE_WRITE,
            nodeid,
            &[arg.as_slice()],
            data,
            Some(std::mem::size_of::<WriteOut>()),
        )?;
        Ok(read_struct::<WriteOut>(&payload).size)
    }

    /// SETUPMAPPING: ask the backend to map `len` bytes of the open file `fh` at `foffset` into
    /// the DAX window at `moffset` (read-only, or read-write with `write`).
    pub fn setupmapping(
        &mut self,
        nodeid: u64,
        fh: u64,
        foffset: u64,
        len: u64,
        write: bool,
        moffset: u64,
    ) -> Result<()> {
        let flags = FUSE_SETUPMAPPING_FLAG_READ
            | if write {
                FUSE_SETUPMAPPING_FLAG_WRITE
            } else {
                0
            };
        let arg = SetupmappingIn {
            fh,
            foffset,
            len,
            flags,
            moffset,
        };
        self.call(FUSE_SETUPMAPPING, nodeid, &[arg.as_slice()], &[], Some(0))?;
        Ok(())
    }

    /// REMOVEMAPPING of `(moffset, len)` ranges of the DAX window.
    pub fn removemapping(&mut self, ranges: &[(u64, u64)]) -> Result<()> {
        let head = RemovemappingIn {
            count: ranges.len() as u32,
        };
        let mut args = head.as_slice().to_vec();
        for &(moffset, len) in ranges {
            args.extend_from_slice(RemovemappingOne { moffset, len }.as_slice());
        }
        // Linux sends REMOVEMAPPING with the node id of the inode whose ranges go; the backend
        // does not need it.
        self.call(FUSE_REMOVEMAPPING, 0, &[&args], &[], Some(0))?;
        Ok(())
    }

    /// RELEASE the file handle `fh` of `nodeid` (opened with `flags`).
    pub fn release(&mut self, nodeid: u64, fh: u64, flags: u32) -> Result<()> {
        let arg = ReleaseIn {
            fh,
            flags,
            ..Default::default()
        };
        self.call(FUSE_RELEASE, nodeid, &[arg.as_slice()], &[], Some(0))?;
        Ok(())
    }

    /// FORGET `nlookup` lookups of `nodeid`. There is no reply; this waits for the device to
    /// return the buffer.
    pub fn forget(&mut self, nodeid: u64, nlookup: u64) -> Result<()> {
        let arg = ForgetIn { nlookup };
        self.call(FUSE_FORGET, nodeid, &[arg.as_slice()], &[], None)?;
        Ok(())
    }
}

/// The length of `bufs` together, which a READ or WRITE size (a `u32`) must hold.
fn total_len(bufs: &[(GuestAddress, u32)]) -> Result<u32> {
    let total: u64 = bufs.iter().map(|b| u64::from(b.1)).sum();
    u32::try_from(total).map_err(|_| GuestError::TooLarge {
        len: usize::try_from(total).unwrap_or(usize::MAX),
        room: u32::MAX as usize,
    })
}
