// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Legacy virtio-fs DAX requests (FS_MAP = 6, FS_UNMAP = 7) written by hand on the backend channel.
//!
//! vhost 0.16's `Backend` cannot send them and does not expose its socket. So we find the socket it
//! was built from: the front-end's SET_BACKEND_REQ_FD fd is the only *unnamed* AF_UNIX stream socket
//! that appeared in this process since GET_PROTOCOL_FEATURES was answered (the vhost-user
//! connection socket, accepted on the listening path, has a name). We `dup` it and talk on the dup;
//! vhost's `Backend` keeps the original but is never used to send in legacy mode.

use std::io::{self, Read};
use std::os::unix::io::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;

use log::{debug, info, warn};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

pub const FS_MAP: u32 = 6;
pub const FS_UNMAP: u32 = 7;
pub const FS_IO: u32 = 9;
pub const MAP_R: u64 = 1;
pub const MAP_W: u64 = 2;
pub const MAX_ENTRIES: usize = 8;
const HDR_VERSION: u32 = 0x1;
const HDR_REPLY: u32 = 0x4;
const HDR_NEED_REPLY: u32 = 0x8;
const BODY_SIZE: usize = 4 * 8 * MAX_ENTRIES; // 256

/// Inodes of the sockets this process has open now.
pub fn socket_inodes() -> Vec<u64> {
    socket_fds().into_iter().map(|(_, ino)| ino).collect()
}

fn socket_fds() -> Vec<(RawFd, u64)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return out;
    };
    for ent in dir.flatten() {
        let Some(fd) = ent
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        else {
            continue;
        };
        let Ok(target) = std::fs::read_link(ent.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if let Some(ino) = t
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((fd, ino));
        }
    }
    out
}

/// True for an AF_UNIX SOCK_STREAM socket without a local name (socketpair end).
fn is_unnamed_unix_stream(fd: RawFd) -> bool {
    // SAFETY: plain getsockopt/getsockname into local, correctly sized buffers.
    unsafe {
        let mut ty: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            &mut ty as *mut _ as *mut libc::c_void,
            &mut len,
        ) != 0
            || ty != libc::SOCK_STREAM
        {
            return false;
        }
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        let mut alen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if libc::getsockname(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut alen) != 0 {
            return false;
        }
        addr.sun_family as i32 == libc::AF_UNIX
            && alen as usize <= std::mem::size_of::<libc::sa_family_t>()
    }
}

pub struct LegacyChannel {
    sock: UnixStream,
}

impl LegacyChannel {
    /// Find the backend-channel socket that appeared after `before` was taken, and dup it.
    pub fn discover(before: &[u64]) -> io::Result<Self> {
        let mut cands: Vec<RawFd> = socket_fds()
            .into_iter()
            .filter(|(_, ino)| !before.contains(ino))
            .map(|(fd, _)| fd)
            .filter(|fd| is_unnamed_unix_stream(*fd))
            .collect();
        cands.sort_unstable();
        let fd = match cands.as_slice() {
            [] => return Err(io::Error::other("no new unnamed unix stream socket")),
            [one] => *one,
            many => {
                warn!("several candidate backend-channel sockets {many:?}; using the newest");
                *many.last().unwrap()
            }
        };
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an fd we just saw open; the result is a new fd we own.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        info!("legacy mode: backend channel is fd {fd} (dup {dup})");
        // SAFETY: `dup` is a fresh fd owned by nobody else.
        let sock = unsafe { UnixStream::from_raw_fd(dup) };
        Ok(LegacyChannel { sock })
    }

    /// For tests: wrap a stream directly.
    #[allow(dead_code)]
    pub fn from_stream(sock: UnixStream) -> Self {
        LegacyChannel { sock }
    }

    fn request(
        &mut self,
        code: u32,
        entries: &[(u64, u64, u64, u64)],
        fd: Option<RawFd>,
    ) -> io::Result<u64> {
        assert!(entries.len() <= MAX_ENTRIES);
        let mut msg = Vec::with_capacity(12 + BODY_SIZE);
        msg.extend_from_slice(&code.to_le_bytes());
        msg.extend_from_slice(&(HDR_VERSION | HDR_NEED_REPLY).to_le_bytes());
        msg.extend_from_slice(&(BODY_SIZE as u32).to_le_bytes());
        let mut body = [[0u64; MAX_ENTRIES]; 4];
        for (i, &(fd_off, cache_off, len, flags)) in entries.iter().enumerate() {
            body[0][i] = fd_off;
            body[1][i] = cache_off;
            body[2][i] = len;
            body[3][i] = flags;
        }
        for arr in &body {
            for v in arr {
                msg.extend_from_slice(&v.to_le_bytes());
            }
        }
        let fds: Vec<RawFd> = fd.into_iter().collect();
        let sent = self
            .sock
            .send_with_fds(&[&msg[..]], &fds)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        if sent != msg.len() {
            return Err(io::Error::other(format!("short send {sent}/{}", msg.len())));
        }
        let mut reply = [0u8; 20];
        self.sock.read_exact(&mut reply)?;
        let rcode = u32::from_le_bytes(reply[0..4].try_into().unwrap());
        let rflags = u32::from_le_bytes(reply[4..8].try_into().unwrap());
        let rsize = u32::from_le_bytes(reply[8..12].try_into().unwrap());
        let val = u64::from_le_bytes(reply[12..20].try_into().unwrap());
        debug!("legacy reply code={rcode} flags={rflags:#x} size={rsize} value={val:#x}");
        if rcode != code || rflags & HDR_REPLY == 0 || rsize != 8 {
            return Err(io::Error::from_raw_os_error(libc::EPROTO));
        }
        // A negative errno is a refusal; anything else is the request's value.
        let signed = val as i64;
        if (-4095..0).contains(&signed) {
            return Err(io::Error::from_raw_os_error(-signed as i32));
        }
        Ok(val)
    }

    /// A request whose reply must be 0.
    fn request_ack(
        &mut self,
        code: u32,
        entries: &[(u64, u64, u64, u64)],
        fd: Option<RawFd>,
    ) -> io::Result<()> {
        match self.request(code, entries, fd)? {
            0 => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EIO)),
        }
    }

    /// FS_MAP with one fd for all entries `(fd_offset, cache_offset, len, flags)`.
    pub fn fs_map(&mut self, entries: &[(u64, u64, u64, u64)], fd: RawFd) -> io::Result<()> {
        self.request_ack(FS_MAP, entries, Some(fd))
    }

    /// FS_UNMAP of `(cache_offset, len)` ranges (at most 8).
    pub fn fs_unmap(&mut self, ranges: &[(u64, u64)]) -> io::Result<()> {
        let entries: Vec<_> = ranges.iter().map(|&(off, len)| (0, off, len, 0)).collect();
        self.request_ack(FS_UNMAP, &entries, None)
    }

    /// FS_IO of entries `(fd_offset, guest_address, len, flags)` (at most 8) on `fd`: the
    /// front-end copies between the file and guest memory (flags MAP_W: memory to file, else
    /// file to memory). Returns the bytes done.
    pub fn fs_io(&mut self, entries: &[(u64, u64, u64, u64)], fd: RawFd) -> io::Result<u64> {
        self.request(FS_IO, entries, Some(fd))
    }
}
