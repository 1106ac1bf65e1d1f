// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The VMM at its descriptor limit: the kernel drops the descriptors a message carries
//! (`MSG_CTRUNC`). That message alone is refused with `EMFILE`, and the channel serves the next
//! one. In a test binary of its own: `RLIMIT_NOFILE` holds for the whole process.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use vm_memory::ByteValued;

use common::*;
use virtio_fs_dax::protocol::standard;
use virtio_fs_dax::{BackendChannel, DaxWindow, Refusal};

const WAIT: Duration = Duration::from_secs(5);

/// Lowers the soft `RLIMIT_NOFILE` to `soft`; puts the old limits back when dropped.
struct Limit(libc::rlimit);

impl Limit {
    fn lower(soft: u64) -> Self {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `old` is a valid rlimit for the kernel to fill.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
        assert!(soft <= old.rlim_cur, "{soft} above the limit in force");
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        // SAFETY: `new` is a valid rlimit, only read.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) }, 0);
        Limit(old)
    }
}

impl Drop for Limit {
    fn drop(&mut self) {
        // SAFETY: `self.0` is a valid rlimit, only read.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.0) };
    }
}

/// Duplicates `file` until the table is full below the limit: the next descriptor the process
/// would get has no slot.
fn fill_table(file: &File) -> Vec<File> {
    let mut fillers = Vec::new();
    loop {
        match file.try_clone() {
            Ok(f) => fillers.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return fillers,
            Err(e) => panic!("dup: {e}"),
        }
    }
}

#[test]
fn a_message_whose_descriptors_were_dropped_is_refused_and_the_channel_serves_on() {
    let _g = serial();
    let window = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut channel = BackendChannel::builder(ours).window(window.clone()).build();
    let peer = RawPeer { sock: theirs };
    let (file, _) = memfd(2 * MIB, |_| 7);
    let fd = file.as_raw_fd();
    let base = fd_count();
    let m = window.metrics().clone();
    let map = |offset| shmem_range(offset, 2 * MIB).as_slice().to_vec();

    let highest = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    let limit = Limit::lower(highest + 16);
    let mut fillers = fill_table(&file);
    assert!(!fillers.is_empty());

    // No slot for the one descriptor: refused with EMFILE, the body read whole.
    peer.send(standard::SHMEM_MAP, &map(0), &[fd]);
    let out = channel
        .handle_one_timeout(WAIT)
        .unwrap()
        .expect("a whole message");
    assert_eq!(out.value, -i64::from(libc::EMFILE));
    assert!(out.replied);
    assert_eq!(peer.reply(standard::SHMEM_MAP), -i64::from(libc::EMFILE));
    assert_eq!(m.refusals(Refusal::FdsLost), 1);
    assert_eq!(m.total_refusals(), 1);
    assert_eq!(window.live_mappings(), 0);

    // One slot for two descriptors: the kernel installs the first and drops the second. The
    // message is refused the same way, and the one that came is closed: its slot is free again.
    let slot = fillers.pop().unwrap().as_raw_fd();
    peer.send(standard::SHMEM_MAP, &map(0), &[fd, fd]);
    let out = channel
        .handle_one_timeout(WAIT)
        .unwrap()
        .expect("a whole message");
    assert_eq!(out.value, -i64::from(libc::EMFILE));
    assert_eq!(peer.reply(standard::SHMEM_MAP), -i64::from(libc::EMFILE));
    assert_eq!(m.refusals(Refusal::FdsLost), 2);
    assert_eq!(m.total_refusals(), 2);
    let again = file
        .try_clone()
        .expect("the delivered descriptor was closed");
    assert_eq!(again.as_raw_fd(), slot);
    fillers.push(again);
    assert_eq!(
        m.counters()
            .iter()
            .find(|(n, _)| *n == "refusals_fds_lost")
            .unwrap()
            .1,
        2
    );

    // Room again: the next map on the same channel goes through.
    drop(fillers);
    drop(limit);
    peer.send(standard::SHMEM_MAP, &map(2 * MIB), &[fd]);
    let out = channel
        .handle_one_timeout(WAIT)
        .unwrap()
        .expect("a whole message");
    assert_eq!(out.value, 0);
    assert_eq!(peer.reply(standard::SHMEM_MAP), 0);
    assert_eq!(window.live_mappings(), 1);
    assert_eq!(read_window(&window, 2 * MIB, 4), vec![7; 4]);
    assert_eq!(m.requests(), 3, "the stream is in sync");
    assert_eq!(m.total_refusals(), 2);
    assert_eq!(fd_count(), base, "descriptors leaked");
}
