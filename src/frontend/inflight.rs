// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`InflightRegion`]: the shared memory a backend with `INFLIGHT_SHMFD` tracks its requests in
//! flight in, kept by the frontend across backend restarts.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::{Frontend, VhostUserFrontend};

use super::{Error, Result, VringSetup};

/// The inflight I/O tracking region of the vhost-user protocol feature `INFLIGHT_SHMFD`.
///
/// The backend hands it out (`GET_INFLIGHT_FD`, at the first session of an activation) and
/// records in it which descriptor chains it took from the available rings and has not completed
/// yet. The frontend keeps it (the descriptor and the sizes the backend gave) for the life of
/// the activation and hands the same region to every later session (`SET_INFLIGHT_FD`, before
/// the vrings), so that a restarted backend resubmits exactly the requests the lost one left in
/// flight. A device reset, or a new activation, discards it: the next session gets a new one.
///
/// The descriptor is close-on-exec.
pub struct InflightRegion {
    info: VhostUserInflight,
    file: File,
}

impl std::fmt::Debug for InflightRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The message struct is packed: copy the fields out.
        let VhostUserInflight {
            mmap_size,
            mmap_offset,
            num_queues,
            queue_size,
        } = self.info;
        f.debug_struct("InflightRegion")
            .field("mmap_size", &mmap_size)
            .field("mmap_offset", &mmap_offset)
            .field("num_queues", &num_queues)
            .field("queue_size", &queue_size)
            .field("fd", &self.file.as_raw_fd())
            .finish()
    }
}

impl InflightRegion {
    /// Asks the backend for a region (`GET_INFLIGHT_FD`) for `vrings`: as many queues, each the
    /// size of the largest.
    pub(super) fn get(frontend: &mut Frontend, vrings: &[VringSetup<'_>]) -> Result<Self> {
        let num_queues = u16::try_from(vrings.len()).unwrap_or(u16::MAX);
        let queue_size = vrings.iter().map(|v| v.size).max().unwrap_or(0);
        let (info, file) = frontend
            .get_inflight_fd(&VhostUserInflight::new(0, 0, num_queues, queue_size))
            .map_err(Error::GetInflightFd)?;
        set_cloexec(&file).map_err(Error::InflightFd)?;
        Ok(InflightRegion { info, file })
    }

    /// Hands the region to the backend (`SET_INFLIGHT_FD`).
    pub(super) fn set(&self, frontend: &mut Frontend) -> Result<()> {
        frontend
            .set_inflight_fd(&self.info, self.file.as_raw_fd())
            .map_err(Error::SetInflightFd)
    }

    /// What the backend described it as: `mmap_size`, `mmap_offset`, `num_queues`,
    /// `queue_size`.
    pub fn info(&self) -> VhostUserInflight {
        self.info
    }

    /// The region's descriptor.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Sets `FD_CLOEXEC` on a descriptor received from the backend (vhost receives without
/// `MSG_CMSG_CLOEXEC`), so that no child the VMM starts inherits the region.
fn set_cloexec(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl(F_GETFD) on a descriptor `file` owns and keeps open; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above, F_SETFD with an integer argument.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloexec_is_set() {
        let file = tempfile::tempfile().unwrap();
        // SAFETY: clearing the flag on a descriptor the test owns; no memory is passed.
        let cleared = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFD, 0) };
        assert_eq!(cleared, 0);
        set_cloexec(&file).unwrap();
        // SAFETY: reading the flags of a descriptor the test owns; no memory is passed.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
