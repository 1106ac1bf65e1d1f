// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The descriptors of the backend channel: a process the VMM spawns inherits none of them (the
//! ones it received with a message, its eventfds, its epoll), and those of a message the
//! backend left unfinished are closed as soon as the channel fails, not when it is dropped.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::ByteValued;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use common::*;
use virtio_fs_dax::channel::Error as ChannelError;
use virtio_fs_dax::protocol::{standard, FLAG_NEED_REPLY, VERSION};
use virtio_fs_dax::{BackendChannel, DaxWindow};

/// Descriptor number to link target, as /proc/self/fd shows them in this process.
fn fd_table() -> BTreeMap<i32, String> {
    let mut table = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        let Ok(n) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // The directory's own descriptor is gone by the time it is read: skipped.
        if let Ok(target) = std::fs::read_link(entry.path()) {
            table.insert(n, target.to_string_lossy().into_owned());
        }
    }
    table
}

/// Descriptor number to link target in a child process spawned now, as `ls -l /proc/self/fd`
/// prints them there.
fn child_fd_table() -> BTreeMap<i32, String> {
    let out = Command::new("ls")
        .args(["-l", "/proc/self/fd"])
        .env("LC_ALL", "C")
        .output()
        .expect("spawn ls");
    assert!(out.status.success(), "ls: {out:?}");
    let mut table = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let Some((left, target)) = line.split_once(" -> ") else {
            continue;
        };
        let n = left
            .split_whitespace()
            .last()
            .unwrap()
            .parse::<i32>()
            .unwrap();
        table.insert(n, target.to_string());
    }
    assert!(
        table.contains_key(&1),
        "the child's table was read: {table:?}"
    );
    table
}

/// The descriptors that appeared since `before` and belong to the channel (or to the socket pair
/// the test made): eventfds, epolls, sockets, and the memfd named `name`.
fn channel_fds(before: &BTreeMap<i32, String>, name: &str) -> BTreeMap<i32, String> {
    fd_table()
        .into_iter()
        .filter(|(n, t)| {
            // The received memfd may take the slot its sender's copy had: the same number and
            // target as before.
            t.contains(name)
                || (before.get(n) != Some(t)
                    && (t == "anon_inode:[eventfd]"
                        || t == "anon_inode:[eventpoll]"
                        || t.starts_with("socket:[")))
        })
        .collect()
}

fn count(fds: &BTreeMap<i32, String>, pred: impl Fn(&str) -> bool) -> usize {
    fds.values().filter(|t| pred(t)).count()
}

/// Whether a descriptor of this process is the memfd named `name`.
fn holds(name: &str) -> bool {
    fd_table().values().any(|t| t.contains(name))
}

/// Sends the header of a SHMEM_MAP and half its body, with the memfd attached, then closes the
/// sender's copy: from then on only the channel (or the socket, until the channel reads it)
/// holds the memfd.
fn send_half_message(peer: &UnixStream, file: File) {
    let mut bytes = RawPeer::header(standard::SHMEM_MAP, VERSION | FLAG_NEED_REPLY, 40);
    bytes.extend_from_slice(&shmem_range(0, 2 * MIB).as_slice()[..20]);
    let n = peer
        .send_with_fds(&[&bytes[..]], &[file.as_raw_fd()])
        .unwrap();
    assert_eq!(n, bytes.len());
    drop(file);
}

/// Waits until this process holds the memfd named `name` again (the channel received it).
fn wait_received(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !holds(name) {
        assert!(
            Instant::now() < deadline,
            "the channel never received {name}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asserts the child's table holds none of `fds` (same number, same target).
fn assert_not_inherited(fds: &BTreeMap<i32, String>) {
    let child = child_fd_table();
    let inherited: Vec<_> = fds
        .iter()
        .filter(|(n, t)| child.get(n) == Some(t))
        .collect();
    assert!(
        inherited.is_empty(),
        "a spawned process inherited the channel's descriptors {inherited:?} (child: {child:?})"
    );
}

#[test]
fn a_spawned_process_inherits_nothing_of_a_channel_thread() {
    let _g = serial();
    let (file, name) = memfd(2 * MIB, |_| 1);
    let before = fd_table();
    let window = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let thread = BackendChannel::builder(ours)
        .window(window.clone())
        .build()
        .spawn()
        .unwrap();
    send_half_message(&theirs, file);
    wait_received(&name);

    let fds = channel_fds(&before, &name);
    // What the thread holds: the stop eventfd and its clone, the pause wakeup, the epoll, the
    // received memfd.
    assert_eq!(count(&fds, |t| t == "anon_inode:[eventfd]"), 3, "{fds:?}");
    assert_eq!(count(&fds, |t| t == "anon_inode:[eventpoll]"), 1, "{fds:?}");
    assert_eq!(count(&fds, |t| t.contains(&name)), 1, "{fds:?}");
    assert_not_inherited(&fds);

    // The channel did hold the half message all along.
    assert!(holds(&name));
    assert!(!thread.is_finished());
    thread.stop().unwrap();
    assert!(!holds(&name));
}

#[test]
fn a_spawned_process_inherits_nothing_of_a_channel_driven_by_handle_one() {
    let _g = serial();
    let (file, name) = memfd(2 * MIB, |_| 1);
    let before = fd_table();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut channel = BackendChannel::builder(ours).build();
    send_half_message(&theirs, file);
    assert!(!holds(&name), "in the socket, not yet received");
    assert_eq!(channel.handle_one().unwrap(), None, "half a message");
    assert!(holds(&name));

    let fds = channel_fds(&before, &name);
    assert_eq!(count(&fds, |t| t.contains(&name)), 1, "{fds:?}");
    assert_not_inherited(&fds);
    drop(channel);
    assert!(!holds(&name));
}

#[test]
fn a_failed_channel_closes_the_descriptors_of_its_unfinished_message_at_once() {
    let _g = serial();

    // Driven by handle_one: the channel object outlives the failure.
    let (file, name) = memfd(2 * MIB, |_| 1);
    let window = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut channel = BackendChannel::builder(ours).window(window.clone()).build();
    send_half_message(&theirs, file);
    assert!(!holds(&name), "in the socket, not yet received");
    assert_eq!(channel.handle_one().unwrap(), None, "half a message");
    assert!(
        holds(&name),
        "the channel keeps what it received until the message is whole"
    );
    drop(theirs);
    match channel.handle_one() {
        Err(ChannelError::Truncated {
            got: 20,
            expected: 40,
        }) => {}
        other => panic!("expected Truncated {{ got: 20, expected: 40 }}, got {other:?}"),
    }
    assert!(
        !holds(&name),
        "the failed channel still holds a descriptor of the unfinished message"
    );
    // Still failed, still holding nothing, and still alive until here.
    assert!(channel.handle_one().is_err());
    assert!(!holds(&name));
    drop(channel);

    // On its own thread: the `ChannelThread` outlives the failure.
    let (file, name) = memfd(2 * MIB, |_| 1);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let thread = BackendChannel::builder(ours)
        .window(window.clone())
        .build()
        .spawn()
        .unwrap();
    send_half_message(&theirs, file);
    wait_received(&name);
    drop(theirs);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !thread.is_finished() {
        assert!(Instant::now() < deadline, "the thread did not end");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!holds(&name), "the ended thread still holds a descriptor");
    assert!(matches!(
        thread.join(),
        Err(ChannelError::Truncated {
            got: 20,
            expected: 40
        })
    ));
}
