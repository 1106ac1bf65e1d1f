// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Proposed MEM_READ / MEM_WRITE (feature `mem-rw`), over guest RAM and a DAX window.

mod common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use common::*;
use virtio_fs_dax::protocol::{standard, Access, MapEntry, FLAG_REPLY, VERSION};
use virtio_fs_dax::{Dialect, IoSpace, Policy, Refusal};

const WIN_GPA: u64 = 1 << 32;

fn mem_write(gpa: u64, data: &[u8]) -> Vec<u8> {
    let mut body = gpa.to_le_bytes().to_vec();
    body.extend_from_slice(&(data.len() as u32).to_le_bytes());
    body.extend_from_slice(data);
    body
}

fn mem_read(gpa: u64, size: u32) -> Vec<u8> {
    let mut body = gpa.to_le_bytes().to_vec();
    body.extend_from_slice(&size.to_le_bytes());
    body
}

/// Reads a MEM_READ reply: the header echoes the request, then gpa, size and the bytes.
fn read_data_reply(peer: &RawPeer, gpa: u64, size: u32) -> Vec<u8> {
    let mut hdr = [0u8; 12];
    (&peer.sock).read_exact(&mut hdr).unwrap();
    assert_eq!(hdr[..4], standard::MEM_READ.to_le_bytes());
    assert_eq!(hdr[4..8], (VERSION | FLAG_REPLY).to_le_bytes());
    assert_eq!(hdr[8..12], (12 + size).to_le_bytes());
    let mut body = vec![0u8; 12 + size as usize];
    (&peer.sock).read_exact(&mut body).unwrap();
    assert_eq!(body[..8], gpa.to_le_bytes());
    assert_eq!(body[8..12], size.to_le_bytes());
    body.split_off(12)
}

#[test]
fn mem_write_then_read_guest_ram_and_window() {
    let _g = serial();
    let ram = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap());
    let io = Arc::new(IoSpace::with_guest_memory(ram.clone()));
    let h = Harness::with(Dialect::Standard, 4 * MIB, false, io.clone());
    io.add_window(WIN_GPA, h.window.clone()).unwrap();

    // Guest RAM.
    assert_eq!(
        h.peer
            .call(standard::MEM_WRITE, &mem_write(0x1000, b"hello ram"), &[]),
        0
    );
    let mut got = [0u8; 9];
    ram.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
    assert_eq!(&got, b"hello ram");
    h.peer.send(standard::MEM_READ, &mem_read(0x1000, 9), &[]);
    assert_eq!(read_data_reply(&h.peer, 0x1000, 9), b"hello ram");

    // A writable mapping in the window: bytes reach the mapped file.
    let (file, _) = memfd(2 * MIB, |_| 0);
    let entry = MapEntry {
        offset: 0,
        fd_offset: 0,
        len: 2 * MIB,
        access: Access::ReadWrite,
    };
    h.window.map(&[entry], &file, Policy::STANDARD).unwrap();
    assert_eq!(
        h.peer
            .call(standard::MEM_WRITE, &mem_write(WIN_GPA + 64, b"dax"), &[]),
        0
    );
    assert_eq!(read_window(&h.window, 64, 3), b"dax");
    h.peer
        .send(standard::MEM_READ, &mem_read(WIN_GPA + 64, 3), &[]);
    assert_eq!(read_data_reply(&h.peer, WIN_GPA + 64, 3), b"dax");

    // The unmapped half of the window and addresses outside everything: EFAULT, no signal.
    let efault = -(libc::EFAULT as i64);
    assert_eq!(
        h.peer.call(
            standard::MEM_WRITE,
            &mem_write(WIN_GPA + 3 * MIB, b"x"),
            &[]
        ),
        efault
    );
    assert_eq!(
        h.peer
            .call(standard::MEM_READ, &mem_read(WIN_GPA + 3 * MIB, 1), &[]),
        efault
    );
    assert_eq!(
        h.peer.call(standard::MEM_READ, &mem_read(16 << 20, 1), &[]),
        efault
    );
    assert_eq!(h.window.metrics().refusals(Refusal::BadAddress), 3);

    // Size bounds: a MEM_READ larger than a message can carry, and a MEM_WRITE whose size field
    // disagrees with its body, are refused before anything is allocated or copied.
    assert_eq!(
        h.peer.call(standard::MEM_READ, &mem_read(0, 1 << 30), &[]),
        -(libc::EINVAL as i64)
    );
    let mut lying = mem_write(0x2000, b"abcd");
    lying[8..12].copy_from_slice(&100u32.to_le_bytes());
    assert_eq!(
        h.peer.call(standard::MEM_WRITE, &lying, &[]),
        -(libc::EINVAL as i64)
    );
    assert_eq!(h.window.metrics().refusals(Refusal::Size), 2);

    // Descriptors sent with MEM_WRITE are refused and closed.
    let before = fd_count();
    h.peer.send(
        standard::MEM_WRITE,
        &mem_write(0x1000, b"z"),
        &[file.as_raw_fd()],
    );
    assert_eq!(h.peer.reply(standard::MEM_WRITE), -(libc::EBADF as i64));
    assert_eq!(fd_count(), before);

    assert_eq!(h.window.metrics().ios(), 4);
    assert_window_sound(&h.window);
    h.stop();
}
