// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A VMM starts, pauses, resumes and stops channel threads, and drops a window's mappings, from
//! a thread under its own seccomp filter (cloud-hypervisor does it from its virtio-fs thread
//! when the backend reconnects). That thread's filter built from `channel::control_seccomp_rules`
//! and `channel::seccomp_rules` alone, killing the process on any other syscall, must be enough:
//! the channel thread inherits it, so it must hold what the channel thread makes too.
//!
//! A syscall missing from the lists kills this test binary with SIGSYS, so the work runs in a
//! child process and the test holds a single function. The child first shows that the filter
//! does kill on a syscall outside the lists.

mod common;

use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::thread;

use seccompiler::{apply_filter, BpfProgram, SeccompAction, SeccompFilter, SeccompRule};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};

use common::*;
use virtio_fs_dax::channel::{control_seccomp_rules, seccomp_rules, ThreadHook};
use virtio_fs_dax::{BackendChannel, DaxWindow};

/// Set in a child process: what it runs.
const CHILD: &str = "VFD_SECCOMP_CONTROL_CHILD";
const TEST: &str = "a_filtered_thread_starts_pauses_and_stops_channels";

/// The union of rule maps, as `control_seccomp_rules` documents it: a syscall both name is
/// allowed with either list, unconditionally if either is empty.
fn union(
    a: std::collections::BTreeMap<i64, Vec<SeccompRule>>,
    b: std::collections::BTreeMap<i64, Vec<SeccompRule>>,
) -> std::collections::BTreeMap<i64, Vec<SeccompRule>> {
    let mut out = a;
    for (nr, rules) in b {
        match out.get_mut(&nr) {
            None => {
                out.insert(nr, rules);
            }
            Some(have) if have.is_empty() => {}
            Some(have) if rules.is_empty() => have.clear(),
            Some(have) => have.extend(rules),
        }
    }
    out
}

fn program(
    rules: std::collections::BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
) -> BpfProgram {
    SeccompFilter::new(
        rules,
        mismatch,
        SeccompAction::Allow,
        std::env::consts::ARCH.try_into().unwrap(),
    )
    .unwrap()
    .try_into()
    .unwrap()
}

fn mismatch() -> SeccompAction {
    match std::env::var("VFD_SECCOMP_LOG").as_deref() {
        // For finding what is missing: the kernel logs each refused syscall, nothing dies.
        Ok("1") => SeccompAction::Log,
        _ => SeccompAction::KillProcess,
    }
}

#[test]
fn a_filtered_thread_starts_pauses_and_stops_channels() {
    match std::env::var(CHILD).as_deref() {
        Ok("kill") => return kill(),
        Ok("control") => return control(),
        _ => {}
    }
    let out = child("kill");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "the filter let a syscall outside the lists through: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let out = child("control");
    assert!(
        out.status.success(),
        "a syscall outside the lists (see the kernel log for its number): {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn child(mode: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([TEST, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, mode)
        .output()
        .unwrap()
}

/// Under the control filter, a syscall outside both lists ends the process.
fn kill() {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads one valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) }, 0);
    let filter = program(
        union(control_seccomp_rules().unwrap(), seccomp_rules().unwrap()),
        SeccompAction::KillProcess,
    );
    thread::spawn(move || {
        apply_filter(&filter).unwrap();
        // SAFETY: getppid has no arguments and cannot fail.
        unsafe { libc::getppid() };
    })
    .join()
    .unwrap();
    panic!("the filter let getppid through");
}

/// The VMM's thread, filtered, runs two channel sessions over one window, as a reconnect does:
/// a new socket pair and channel each time, each channel thread installing the channel filter
/// in its hook; pause and resume; stop; the window's mappings dropped.
fn control() {
    let window = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    let (file, _) = memfd(4 * MIB, |p| (p % 251) as u8);
    let control_filter = program(
        union(control_seccomp_rules().unwrap(), seccomp_rules().unwrap()),
        mismatch(),
    );
    let channel_filter = program(seccomp_rules().unwrap(), mismatch());
    // The backend's side, unfiltered: gets each new socket, maps, and says when it is done.
    let (to_backend, backend_rx) = std::sync::mpsc::channel::<UnixStream>();
    let (done_tx, done) = std::sync::mpsc::channel::<()>();
    let backend = thread::spawn(move || {
        // The previous connection is held until the next one comes (its channel stopped).
        let mut held = None;
        for sock in backend_rx {
            let backend = Backend::from_stream(sock);
            backend.set_reply_ack_flag(true);
            backend.set_shmem_flag(true);
            backend
                .shmem_map(&mmap_msg(0, 0, 2 * MIB, true), &file)
                .unwrap();
            held = Some(backend);
            done_tx.send(()).unwrap();
        }
        drop(held);
    });
    let vmm = thread::Builder::new()
        .name("vmm-fs".into())
        .spawn(move || {
            apply_filter(&control_filter).unwrap();
            for _ in 0..2 {
                // The channel of the lost backend is stopped and the window emptied first.
                window.reset().unwrap();
                let (ours, theirs) = UnixStream::pair().unwrap();
                let filter = channel_filter.clone();
                let thread = BackendChannel::builder(ours)
                    .window(window.clone())
                    .thread_name("vfd-ctl")
                    .on_thread_start(ThreadHook::new(move || Ok(apply_filter(&filter)?)))
                    .build()
                    .spawn()
                    .unwrap();
                to_backend.send(theirs).unwrap();
                done.recv().unwrap();
                assert_eq!(window.live_mappings(), 1);
                thread.pause().unwrap();
                thread.resume();
                thread.stop().unwrap();
            }
            window.reset().unwrap();
            assert_eq!(window.live_mappings(), 0);
        })
        .unwrap();
    vmm.join().unwrap();
    backend.join().unwrap();
}
