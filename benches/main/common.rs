// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Messages and files the benchmarks send and map.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;

use vm_memory::ByteValued;

use virtio_fs_dax::protocol::{VhostUserMMap, FLAG_NEED_REPLY, VERSION};

pub fn message(code: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&code.to_le_bytes());
    v.extend_from_slice(&(VERSION | FLAG_NEED_REPLY).to_le_bytes());
    v.extend_from_slice(&(body.len() as u32).to_le_bytes());
    v.extend_from_slice(body);
    v
}

pub fn memfd(len: u64) -> File {
    // SAFETY: memfd_create reads a valid NUL-terminated name and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"bench".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` was just created and is owned by nobody else.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(&vec![1u8; len as usize]).unwrap();
    f
}

pub fn mmap_msg(code: u32, shm_offset: u64, len: u64) -> Vec<u8> {
    let body = VhostUserMMap {
        shm_offset,
        len,
        ..Default::default()
    };
    message(code, body.as_slice())
}
