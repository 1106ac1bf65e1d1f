// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The channel's reader on a real socket pair: one `recvmsg` takes in every message the backend
//! has queued, messages are framed out of the reader's buffer, descriptors go to the message that
//! holds the last byte of the read that brought them, and a thread serving the channel waits in
//! `recvmsg` itself.

mod common;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vm_memory::ByteValued;

use common::*;
use virtio_fs_dax::protocol::{standard, FLAG_NEED_REPLY, VERSION};
use virtio_fs_dax::{DaxWindow, Dialect, Refusal};

fn ro(offset: u64, len: u64) -> Vec<u8> {
    shmem_range(offset, len).as_slice().to_vec()
}

fn message(request: u32, body: &[u8]) -> Vec<u8> {
    let mut m = RawPeer::header(request, VERSION | FLAG_NEED_REPLY, body.len() as u32);
    m.extend_from_slice(body);
    m
}

/// Bytes the socket holds unread (`FIONREAD`).
fn unread(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer, which points at `n`.
    let ret = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    assert_eq!(ret, 0, "FIONREAD");
    n as usize
}

#[test]
fn one_read_takes_in_every_queued_message_and_each_is_served_from_the_buffer() {
    let _g = serial();
    let w = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    let (mut channel, peer) = standard_channel(&w, "reader");
    let (file, _) = memfd(2 * MIB, |_| 5);
    // An unmap of nothing, then a map: two messages in one send, the map's descriptor attached
    // (it goes to the message that ends the send); then another map in a send of its own.
    let mut all = message(standard::SHMEM_UNMAP, &ro(0, 2 * MIB));
    all.extend(message(standard::SHMEM_MAP, &ro(0, 2 * MIB)));
    let third = message(standard::SHMEM_MAP, &ro(2 * MIB, 2 * MIB));
    peer.send_bytes(&all, &[file.as_raw_fd()]);
    peer.send_bytes(&third, &[file.as_raw_fd()]);
    let enoent = -i64::from(libc::ENOENT);

    // The first call reads once, up to the end of the first send (its descriptor came with it).
    let out = channel.handle_one().unwrap().unwrap();
    assert_eq!((out.request, out.value), (standard::SHMEM_UNMAP, enoent));
    assert_eq!(
        unread(channel.as_raw_fd()),
        third.len(),
        "the first read left the second message of the same send in the socket"
    );
    // The second message is served from the buffer; nothing of the socket is read.
    let out = channel.handle_one().unwrap().unwrap();
    assert_eq!((out.request, out.value), (standard::SHMEM_MAP, 0));
    assert_eq!(unread(channel.as_raw_fd()), third.len());
    let out = channel.handle_one().unwrap().unwrap();
    assert_eq!((out.request, out.value), (standard::SHMEM_MAP, 0));
    assert_eq!(unread(channel.as_raw_fd()), 0);
    assert!(channel.handle_one().unwrap().is_none());
    for (r, v) in [
        (standard::SHMEM_UNMAP, enoent),
        (standard::SHMEM_MAP, 0),
        (standard::SHMEM_MAP, 0),
    ] {
        assert_eq!(peer.reply(r), v);
    }
    assert_eq!(w.live_mappings(), 2);
    assert_eq!(read_window(&w, 2 * MIB, 4), vec![5; 4]);
    assert_eq!(channel.metrics().refusals(Refusal::NotMapped), 1);
}

#[test]
fn descriptors_go_to_the_message_holding_the_last_byte_of_their_read() {
    let _g = serial();
    let base = fd_count();
    let w = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    let (mut channel, peer) = standard_channel(&w, "reader");
    let (file, _) = memfd(2 * MIB, |_| 9);
    peer.send_bytes(
        &message(standard::SHMEM_MAP, &ro(0, 2 * MIB)),
        &[file.as_raw_fd()],
    );
    assert_eq!(channel.handle_one().unwrap().unwrap().value, 0);
    assert_eq!(peer.reply(standard::SHMEM_MAP), 0);
    // An unmap and a map in one send, the map's descriptor attached: one read brings both, and
    // the descriptor belongs to the map, whose message ends the read.
    let mut both = message(standard::SHMEM_UNMAP, &ro(0, 2 * MIB));
    both.extend(message(standard::SHMEM_MAP, &ro(2 * MIB, 2 * MIB)));
    peer.send_bytes(&both, &[file.as_raw_fd()]);
    let mut outs = Vec::new();
    while let Some(out) = channel.handle_one().unwrap() {
        outs.push((out.request, out.value));
    }
    assert_eq!(
        outs,
        vec![(standard::SHMEM_UNMAP, 0), (standard::SHMEM_MAP, 0)],
        "the unmap got the map's descriptor"
    );
    assert_eq!(peer.reply(standard::SHMEM_UNMAP), 0);
    assert_eq!(peer.reply(standard::SHMEM_MAP), 0);
    assert_eq!(w.live_mappings(), 1);
    assert_eq!(read_window(&w, 2 * MIB, 4), vec![9; 4]);
    assert_eq!(channel.metrics().total_refusals(), 0);
    drop((channel, peer, file));
    assert_eq!(fd_count(), base, "descriptors leaked");
}

#[test]
fn a_descriptor_sent_across_two_messages_is_refused_with_both_and_the_stream_stays_in_sync() {
    let _g = serial();
    let base = fd_count();
    let w = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    let (mut channel, peer) = standard_channel(&w, "reader");
    let (file, _) = memfd(2 * MIB, |_| 3);
    let map = message(standard::SHMEM_MAP, &ro(0, 2 * MIB));
    let unmap = message(standard::SHMEM_UNMAP, &ro(0, 2 * MIB));
    // The map's first 30 bytes alone; its last 22 with the unmap's first 5 and the descriptor;
    // the rest of the unmap; then a valid map with its own descriptor.
    peer.send_bytes(&map[..30], &[]);
    let mut mid = map[30..].to_vec();
    mid.extend_from_slice(&unmap[..5]);
    peer.send_bytes(&mid, &[file.as_raw_fd()]);
    peer.send_bytes(&unmap[5..], &[]);
    let valid = message(standard::SHMEM_MAP, &ro(4 * MIB, 2 * MIB));
    peer.send_bytes(&valid, &[file.as_raw_fd()]);

    let mut outs = Vec::new();
    while let Some(out) = channel.handle_one().unwrap() {
        outs.push((out.request, out.value));
    }
    // The descriptor's read ended in the unmap: the map has none, the unmap one too many.
    let ebadf = -i64::from(libc::EBADF);
    assert_eq!(
        outs,
        vec![
            (standard::SHMEM_MAP, ebadf),
            (standard::SHMEM_UNMAP, ebadf),
            (standard::SHMEM_MAP, 0),
        ]
    );
    for (r, v) in [
        (standard::SHMEM_MAP, ebadf),
        (standard::SHMEM_UNMAP, ebadf),
        (standard::SHMEM_MAP, 0),
    ] {
        assert_eq!(peer.reply(r), v);
    }
    assert_eq!(channel.metrics().refusals(Refusal::FdCount), 2);
    assert_eq!(w.mappings().len(), 1);
    assert_eq!(read_window(&w, 4 * MIB, 4), vec![3; 4]);
    drop((channel, peer, file));
    assert_eq!(fd_count(), base, "descriptors leaked");
}

/// The syscall thread `tid` of this process is blocked in, from `/proc`; `None` while it runs.
fn blocked_in(tid: libc::pid_t) -> Option<i64> {
    let path = format!("/proc/self/task/{tid}/syscall");
    let text = std::fs::read_to_string(&path).unwrap();
    if text.trim() == "running" {
        return None;
    }
    let nr = text.split_whitespace().next().and_then(|n| n.parse().ok());
    Some(nr.unwrap_or_else(|| panic!("{path}: {text:?}")))
}

#[test]
fn a_thread_serving_with_handle_one_timeout_waits_in_recvmsg_not_in_poll() {
    let _g = serial();
    let w = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    let (channel, peer) = standard_channel(&w, "reader");
    let (tid_tx, tid_rx) = mpsc::channel();
    let server = thread::spawn(move || {
        let mut channel = channel;
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        let mut served = 0;
        while let Ok(out) = channel.handle_one_timeout(Duration::from_secs(30)) {
            served += usize::from(out.is_some());
        }
        served
    });
    let tid = tid_rx.recv().unwrap();
    let (file, _) = memfd(2 * MIB, |_| 1);
    for round in 0..3 {
        // Wait until the thread is asleep, then look at where.
        let start = Instant::now();
        let nr = loop {
            let nr = blocked_in(tid);
            if nr == Some(libc::SYS_recvmsg) || start.elapsed() > Duration::from_secs(5) {
                break nr;
            }
            thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            nr,
            Some(libc::SYS_recvmsg),
            "round {round}: the serving thread waits in syscall {nr:?}, not recvmsg"
        );
        let body = ro(0, 2 * MIB);
        assert_eq!(
            peer.call(standard::SHMEM_MAP, &body, &[file.as_raw_fd()]),
            0
        );
        assert_eq!(peer.call(standard::SHMEM_UNMAP, &body, &[]), 0);
    }
    drop(peer);
    assert_eq!(server.join().unwrap(), 6);
}

#[test]
fn a_channel_thread_serves_every_message_of_one_read_without_waiting_for_more() {
    let _g = serial();
    let h = Harness::new(Dialect::Standard, 8 * MIB);
    let (file, _) = memfd(2 * MIB, |_| 4);
    h.peer
        .sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Four requests in one send, the map's descriptor attached (the map ends the send); the
    // thread reads them at once and must answer all four with nothing more arriving.
    let mut all = message(standard::SHMEM_UNMAP, &ro(0, 2 * MIB));
    all.extend(message(standard::SHMEM_UNMAP, &ro(2 * MIB, 2 * MIB)));
    all.extend(message(standard::SHMEM_UNMAP, &ro(4 * MIB, 2 * MIB)));
    all.extend(message(standard::SHMEM_MAP, &ro(0, 2 * MIB)));
    h.peer.send_bytes(&all, &[file.as_raw_fd()]);
    let enoent = -i64::from(libc::ENOENT);
    for (r, v) in [
        (standard::SHMEM_UNMAP, enoent),
        (standard::SHMEM_UNMAP, enoent),
        (standard::SHMEM_UNMAP, enoent),
        (standard::SHMEM_MAP, 0),
    ] {
        assert_eq!(h.peer.reply(r), v);
    }
    assert_eq!(h.window.live_mappings(), 1);
    h.stop();
}
