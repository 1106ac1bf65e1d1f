// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest RAM a vhost-user backend can map.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// Guest RAM of `size` bytes at guest address 0, backed by a memfd, so that the vhost-user
/// memory table can share it with a backend.
pub fn memfd_guest_memory(size: usize) -> io::Result<GuestMemoryMmap> {
    let name = c"virtio-fs-dax-guest-ram";
    // SAFETY: memfd_create reads a valid NUL-terminated string and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64)?;
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        size,
        Some(FileOffset::new(file, 0)),
    )])
    .map_err(|e| io::Error::other(format!("guest memory: {e:?}")))
}
