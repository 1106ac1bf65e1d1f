// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The channel thread under a seccomp filter built from the crate's rules alone
//! (`channel::seccomp_rules`), which kills the process on any other syscall, installed through
//! the thread's start hook: both dialects with real senders (vhost 0.18's and 0.11's `Backend`),
//! refusals, FS_SYNC, FS_IO both ways (straight and through a buffer), MEM_READ / MEM_WRITE (feature `mem-rw`), pause, a
//! disconnect, stop, and a device's session from activation to reset.
//!
//! A syscall missing from the list kills this whole test binary with SIGSYS: that is the
//! failure this file exists to show, so it holds a single test. The test first shows, in a
//! child process, that the filter does kill on a syscall outside the list, then runs the
//! traffic here, and again in child processes whose allocator returns and maps memory more
//! often.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use seccompiler::{apply_filter, BpfProgram, SeccompAction, SeccompFilter};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};
use vhost_legacy::vhost_user::message::{VhostUserFSBackendMsg, VhostUserFSBackendMsgFlags};
use vhost_legacy::vhost_user::VhostUserFrontendReqHandler as _;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryAtomic};
use vm_memory_legacy::ByteValued as LegacyByteValued;

use common::*;
use virtio_fs_dax::channel::{self, seccomp_rules, ThreadHook, SYSCALLS};
use virtio_fs_dax::protocol::{legacy, standard, FLAG_NEED_REPLY, MAX_BODY_SIZE};
use virtio_fs_dax::test_utils::{FakeMemoryManager, TestBackendConfig, TestBackendServer};
use virtio_fs_dax::{BackendChannel, ChannelThread, DaxWindow, Dialect, Fs, IoSpace};

/// Set in a child process: what it runs.
const CHILD: &str = "VFD_SECCOMP_CHILD";
const TEST: &str = "channel_thread_serves_everything_under_a_kill_by_default_filter";
const WIN_GPA: u64 = 1 << 32;
const R: VhostUserFSBackendMsgFlags = VhostUserFSBackendMsgFlags::MAP_R;
const W: VhostUserFSBackendMsgFlags = VhostUserFSBackendMsgFlags::MAP_W;

fn neg(errno: i32) -> i64 {
    -i64::from(errno)
}

fn gettid() -> i64 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// Allows the crate's syscalls and kills the process on any other.
fn filter() -> BpfProgram {
    SeccompFilter::new(
        seccomp_rules().unwrap(),
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        std::env::consts::ARCH.try_into().unwrap(),
    )
    .unwrap()
    .try_into()
    .unwrap()
}

/// The threads the filter was installed on.
#[derive(Clone, Default)]
struct Filtered(Arc<Mutex<Vec<i64>>>);

impl Filtered {
    /// A start hook that records its thread (before the filter: gettid is not in the list)
    /// and installs the filter.
    fn hook(&self) -> ThreadHook {
        let program = filter();
        let tids = self.0.clone();
        ThreadHook::new(move || {
            tids.lock().unwrap().push(gettid());
            apply_filter(&program)?;
            Ok(())
        })
    }

    /// Asserts that the thread the hook ran on last runs under one filter more than this
    /// thread, which spawned it (the thread inherited this one's, whatever ran the tests).
    fn assert_last(&self) {
        let tid = *self.0.lock().unwrap().last().expect("the hook ran");
        let field = |status: &str, name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().parse::<u32>().unwrap())
                .unwrap()
        };
        let theirs = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        let ours = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        assert_eq!(
            field(&theirs, "Seccomp:"),
            2,
            "thread {tid} is in filter mode"
        );
        assert_eq!(
            field(&theirs, "Seccomp_filters:"),
            field(&ours, "Seccomp_filters:") + 1,
            "thread {tid} runs under the filter"
        );
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

#[test]
fn channel_thread_serves_everything_under_a_kill_by_default_filter() {
    match std::env::var(CHILD).as_deref() {
        Ok("kill") => return kill(),
        Ok("traffic") => return traffic(),
        _ => {}
    }
    // The filter kills: a syscall outside the list ends the process.
    assert!(SYSCALLS.iter().all(|s| s.number != libc::SYS_getppid));
    let out = child("kill", &[]);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "the filter let a syscall outside the list through: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    traffic();
    // Again in child processes whose allocator (glibc, tuned through its environment; others
    // ignore these variables) asks the kernel for memory as often as it can: it trims the heap
    // on every free (the first shrink of a thread's arena reads /proc/sys/vm/overcommit_memory)
    // and maps blocks of 64 KiB and more on their own (a growing one moves with mremap). Once
    // with an arena per thread (their heaps grow with mprotect), once with one arena for all
    // threads (the program break moves).
    let tuned = [
        ("MALLOC_TRIM_THRESHOLD_", "0"),
        ("MALLOC_TOP_PAD_", "0"),
        ("MALLOC_MMAP_THRESHOLD_", "65536"),
    ];
    for arenas in [None, Some("1")] {
        let mut env = tuned.to_vec();
        env.extend(arenas.map(|n| ("MALLOC_ARENA_MAX", n)));
        let out = child("traffic", &env);
        assert!(
            out.status.success(),
            "with {env:?}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs this test again in a child process, in the mode `mode`, with `env` set.
fn child(mode: &str, env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([TEST, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, mode)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn traffic() {
    let filtered = Filtered::default();
    standard_dialect(&filtered);
    legacy_dialect(&filtered);
    started_paused_then_stopped_while_paused(&filtered);
    device_session(&filtered);
    assert_eq!(
        filtered.count(),
        4,
        "every channel thread ran under the filter"
    );
}

/// A channel thread whose hook makes a syscall outside the list once the filter is in: the
/// process must die of it.
fn kill() {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads one valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) }, 0);
    let program = filter();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let thread = BackendChannel::builder(ours)
        .on_thread_start(ThreadHook::new(move || {
            apply_filter(&program)?;
            // SAFETY: getppid has no arguments and cannot fail.
            unsafe { libc::getppid() };
            Ok(())
        }))
        .build()
        .spawn();
    panic!("the filter let getppid through: {:?}", thread.map(drop));
}

/// vhost 0.18's `Backend` and a raw peer on the same stream, guest RAM and the window in the IO
/// space; ends with the backend disconnecting.
fn standard_dialect(filtered: &Filtered) {
    let ram = Arc::new(guest_memory(16 << 20));
    let io = Arc::new(IoSpace::with_guest_memory(ram.clone()));
    let window = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    io.add_window(WIN_GPA, window.clone()).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let thread = BackendChannel::builder(ours)
        .window(window.clone())
        .dialect(Dialect::Standard)
        .io_space(io.clone())
        .thread_name("vfd-seccomp")
        .on_thread_start(filtered.hook())
        .build()
        .spawn()
        .unwrap();
    filtered.assert_last();
    let raw = RawPeer {
        sock: theirs.try_clone().unwrap(),
    };
    let backend = Backend::from_stream(theirs);
    backend.set_reply_ack_flag(true);
    backend.set_shmem_flag(true);
    let (file, _) = memfd(4 * MIB, |p| (p % 251) as u8);

    // Maps, writable and read-only, used through the window.
    backend
        .shmem_map(&mmap_msg(2 * MIB, 2 * MIB, 2 * MIB, true), &file)
        .unwrap();
    backend
        .shmem_map(&mmap_msg(0, 0, 2 * MIB, false), &file)
        .unwrap();
    assert_eq!(perms_at(&window, 2 * MIB), "rw-s");
    assert_eq!(perms_at(&window, 0), "r--s");
    write_window(&window, 2 * MIB + 100, b"filtered");
    let mut buf = [0u8; 8];
    file.read_exact_at(&mut buf, 2 * MIB + 100).unwrap();
    assert_eq!(&buf, b"filtered");

    // Refusals through vhost's sender: overlap, past the end, unmap of nothing.
    assert!(backend
        .shmem_map(&mmap_msg(MIB, 0, 2 * MIB, false), &file)
        .is_err());
    assert!(backend
        .shmem_map(&mmap_msg(8 * MIB, 0, 2 * MIB, false), &file)
        .is_err());
    assert!(backend
        .shmem_unmap(&mmap_msg(6 * MIB, 0, 2 * MIB, false))
        .is_err());

    // Refusals only a raw peer sends: descriptor counts, unknown codes (a body of the largest
    // size read whole), a bad header, an oversized body drained over several reads.
    let fd = file.as_raw_fd();
    let body = mmap_msg(4 * MIB, 0, 2 * MIB, false);
    assert_eq!(
        raw.call(standard::SHMEM_MAP, body.as_slice(), &[]),
        neg(libc::EBADF)
    );
    assert_eq!(
        raw.call(standard::SHMEM_MAP, body.as_slice(), &[fd, fd, fd]),
        neg(libc::EBADF)
    );
    assert_eq!(
        raw.call(standard::SHMEM_UNMAP, body.as_slice(), &[fd]),
        neg(libc::EBADF)
    );
    assert_eq!(
        raw.call(77, &vec![7; MAX_BODY_SIZE], &[fd]),
        neg(libc::ENOSYS)
    );
    assert_eq!(
        raw.call(standard::SHARED_OBJECT_ADD, &[0; 16], &[]),
        neg(libc::ENOSYS)
    );
    raw.send_raw(
        standard::SHMEM_MAP,
        2 | FLAG_NEED_REPLY,
        40,
        body.as_slice(),
        &[fd],
    );
    assert_eq!(raw.reply(standard::SHMEM_MAP), neg(libc::EPROTO));
    let big = vec![0x5a; (1 << 20) + 3];
    let sender = {
        let sock = raw.sock.try_clone().unwrap();
        thread::spawn(move || RawPeer { sock }.send(standard::SHMEM_MAP, &big, &[fd]))
    };
    assert_eq!(raw.reply(standard::SHMEM_MAP), neg(libc::EMSGSIZE));
    sender.join().unwrap();

    #[cfg(feature = "mem-rw")]
    mem_read_write(&raw, &ram, &window);

    // Pause: a request waits unread in the socket until resume.
    thread.pause().unwrap();
    assert!(thread.is_paused());
    let maps = window.metrics().maps();
    raw.send(standard::SHMEM_MAP, body.as_slice(), &[fd]);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(window.metrics().maps(), maps, "nothing served while paused");
    thread.resume();
    assert_eq!(raw.reply(standard::SHMEM_MAP), 0);
    assert_eq!(perms_at(&window, 4 * MIB), "r--s");

    // Unmaps.
    backend
        .shmem_unmap(&mmap_msg(4 * MIB, 0, 2 * MIB, false))
        .unwrap();
    backend
        .shmem_unmap(&mmap_msg(0, 0, 2 * MIB, false))
        .unwrap();
    assert_eq!(window.live_mappings(), 1);
    assert_window_sound(&window);

    // The backend disconnects: the thread drops the mapping left and ends.
    drop(backend);
    drop(raw);
    assert!(matches!(thread.join(), Err(channel::Error::Disconnected)));
    assert_eq!(window.live_mappings(), 0);
    assert_eq!(perms_at(&window, 2 * MIB), "---p");
    assert_window_sound(&window);
}

/// MEM_WRITE and MEM_READ on guest RAM and on a writable mapping of the window, and one refused.
#[cfg(feature = "mem-rw")]
fn mem_read_write(raw: &RawPeer, ram: &vm_memory::GuestMemoryMmap, window: &DaxWindow) {
    use std::io::Read;
    let rw = |gpa: u64, data: Option<&[u8]>, size: u32| {
        let mut body = gpa.to_le_bytes().to_vec();
        body.extend_from_slice(&size.to_le_bytes());
        body.extend_from_slice(data.unwrap_or_default());
        body
    };
    let data = vec![0xc3; 2048];
    assert_eq!(
        raw.call(
            standard::MEM_WRITE,
            &rw(0x1000, Some(&data), data.len() as u32),
            &[]
        ),
        0
    );
    let mut got = vec![0; data.len()];
    ram.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
    assert_eq!(got, data);
    assert_eq!(
        raw.call(
            standard::MEM_WRITE,
            &rw(WIN_GPA + 2 * MIB + 64, Some(b"dax"), 3),
            &[]
        ),
        0
    );
    assert_eq!(read_window(window, 2 * MIB + 64, 3), b"dax");
    // A MEM_READ reply carries the bytes: header, gpa, size, data.
    raw.send(standard::MEM_READ, &rw(0x1000, None, 2048), &[]);
    let mut reply = vec![0u8; 12 + 12 + 2048];
    (&raw.sock).read_exact(&mut reply).unwrap();
    assert_eq!(reply[..4], standard::MEM_READ.to_le_bytes());
    assert_eq!(reply[24..], data[..]);
    assert_eq!(
        raw.call(standard::MEM_READ, &rw(WIN_GPA + 6 * MIB, None, 8), &[]),
        neg(libc::EFAULT)
    );
}

/// vhost 0.11's `Backend` for FS_MAP / FS_UNMAP, the raw peer for FS_SYNC and FS_IO; ends with
/// stop.
fn legacy_dialect(filtered: &Filtered) {
    const RAM: u64 = 16 * MIB;
    let ram = Arc::new(guest_memory(RAM as usize));
    let io = Arc::new(IoSpace::with_guest_memory(ram.clone()));
    let window = Arc::new(DaxWindow::new(128 * MIB).unwrap());
    io.add_window(WIN_GPA, window.clone()).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let thread = BackendChannel::builder(ours)
        .window(window.clone())
        .dialect(Dialect::Legacy)
        .io_space(io.clone())
        .on_thread_start(filtered.hook())
        .build()
        .spawn()
        .unwrap();
    filtered.assert_last();
    let raw = RawPeer {
        sock: theirs.try_clone().unwrap(),
    };
    let backend = vhost_legacy::vhost_user::Backend::from_stream(theirs);
    backend.set_reply_ack_flag(true);
    let call = |code: u32, m: &VhostUserFSBackendMsg, fds: &[&File]| {
        raw.call(code, m.as_slice(), &as_fds(fds))
    };

    // A multi-entry map (an empty entry skipped).
    let (file, _) = memfd(8 * MIB, |p| (p / 512) as u8 + 1);
    let m = fs_msg(&[
        (0, 0, 2 * MIB, R),
        (4 * MIB, 2 * MIB, 2 * MIB, R | W),
        (0, 0, 0, R),
        (6 * MIB, 6 * MIB, MIB, R),
    ]);
    backend.fs_backend_map(&m, &file).unwrap();
    assert_eq!(read_window(&window, 4 * MIB, 4), vec![2; 4]);
    // Thousands of one-page mappings, then one unmap over all of them: the mapping table and
    // the unmap's list of hits grow to hundreds of KiB, allocated and freed on the thread.
    const FILL: u64 = 1000;
    for i in 0..FILL {
        let entries: Vec<_> = (0..8u64)
            .map(|j| (64 * MIB + (i * 8 + j) * 2 * PAGE, 0, PAGE, R))
            .collect();
        backend.fs_backend_map(&fs_msg(&entries), &file).unwrap();
    }
    assert_eq!(window.live_mappings(), 3 + 8 * FILL as usize);
    backend
        .fs_backend_unmap(&fs_msg(&[(64 * MIB, 0, 64 * MIB, R)]))
        .unwrap();
    assert_eq!(window.live_mappings(), 3);
    // A failed entry rolls back the ones before it (a writable map of a read-only descriptor).
    let ro = File::open(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
    assert!(backend
        .fs_backend_map(
            &fs_msg(&[(2 * MIB, 0, MIB, R), (3 * MIB, 0, MIB, R | W)]),
            &ro
        )
        .is_err());
    assert_eq!(perms_at(&window, 2 * MIB), "---p");
    // Unmap of any range: half a mapping, and a range never mapped.
    backend
        .fs_backend_unmap(&fs_msg(&[(MIB, 0, MIB, R), (8 * MIB, 0, 4 * MIB, R)]))
        .unwrap();
    assert_eq!(window.live_mappings(), 3);

    // FS_SYNC of a file mapped writable.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let data = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    data.set_len(2 * MIB).unwrap();
    backend
        .fs_backend_map(&fs_msg(&[(12 * MIB, 0, 2 * MIB, R | W)]), &data)
        .unwrap();
    write_window(&window, 12 * MIB + PAGE, b"synced");
    assert_eq!(
        call(legacy::FS_SYNC, &fs_msg(&[(12 * MIB, 0, 2 * MIB, R)]), &[]),
        0
    );
    let mut buf = [0u8; 6];
    File::open(&path)
        .unwrap()
        .read_exact_at(&mut buf, PAGE)
        .unwrap();
    assert_eq!(&buf, b"synced");
    assert_eq!(
        call(legacy::FS_SYNC, &fs_msg(&[(128 * MIB, 0, MIB, R)]), &[]),
        neg(libc::ERANGE)
    );

    // FS_IO: file to guest RAM (short at end of file), guest RAM to file, file into the
    // window's writable mapping; refusals.
    let (src, _) = memfd(3 * PAGE + 100, |p| 0xa0 + p as u8);
    let m = fs_msg(&[(0x10000, 0, 2 * PAGE, R), (0x40000, 2 * PAGE, 2 * PAGE, R)]);
    assert_eq!(
        call(legacy::FS_IO, &m, &[&src]),
        (3 * PAGE + 100) as i64,
        "bytes done, short at end of file"
    );
    let mut got = [0u8; 4];
    ram.read_slice(&mut got, GuestAddress(0x10000 + PAGE))
        .unwrap();
    assert_eq!(got, [0xa1; 4]);
    ram.write_slice(b"from guest ram", GuestAddress(0x20000))
        .unwrap();
    assert_eq!(
        call(legacy::FS_IO, &fs_msg(&[(0x20000, 5, 14, W)]), &[&src]),
        14
    );
    let mut buf = [0u8; 14];
    src.read_exact_at(&mut buf, 5).unwrap();
    assert_eq!(&buf, b"from guest ram");
    assert_eq!(
        call(
            legacy::FS_IO,
            &fs_msg(&[(WIN_GPA + 4 * MIB + 16, 0, PAGE, R)]),
            &[&src]
        ),
        PAGE as i64
    );
    assert_eq!(read_window(&window, 4 * MIB + 16, 4), vec![0xa0; 4]);
    // The same through the buffer that a file whose server may stall goes through (procfs is
    // not a local file system): process_vm_writev into the window, then process_vm_readv out of
    // it into a buffer of this process, through /proc/self/mem.
    let version = File::open("/proc/version").unwrap();
    let mut expect = [0u8; 16];
    version.read_exact_at(&mut expect, 0).unwrap();
    assert_eq!(
        call(
            legacy::FS_IO,
            &fs_msg(&[(WIN_GPA + 4 * MIB + 64, 0, 16, R)]),
            &[&version]
        ),
        16
    );
    assert_eq!(read_window(&window, 4 * MIB + 64, 16), expect);
    let mut sink = [0u8; 16];
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")
        .unwrap();
    let at = sink.as_mut_ptr() as u64;
    assert_eq!(
        call(
            legacy::FS_IO,
            &fs_msg(&[(WIN_GPA + 4 * MIB + 64, at, 16, W)]),
            &[&mem]
        ),
        16
    );
    // SAFETY: `sink` is a live local array; the volatile read sees what the kernel stored.
    assert_eq!(unsafe { std::ptr::read_volatile(&sink) }, expect);
    assert_eq!(
        call(legacy::FS_IO, &fs_msg(&[(WIN_GPA, 0, PAGE, R)]), &[&src]),
        neg(libc::EFAULT),
        "read-only mapping"
    );
    assert_eq!(
        call(legacy::FS_IO, &fs_msg(&[(RAM - 8, 0, 16, R)]), &[&src]),
        neg(libc::EFAULT),
        "past guest RAM"
    );
    assert_eq!(
        call(legacy::FS_IO, &fs_msg(&[(0x20000, 0, 8, R)]), &[&src, &src]),
        neg(libc::EBADF)
    );
    assert_eq!(
        call(legacy::FS_MAP, &fs_msg(&[(0, 0, 2 * MIB, R)]), &[]),
        neg(libc::EBADF)
    );

    // Pause and resume with a map waiting, then unmap-all (len u64::MAX).
    thread.pause().unwrap();
    raw.send(
        legacy::FS_MAP,
        fs_msg(&[(2 * MIB, 0, 2 * MIB, R)]).as_slice(),
        &[file.as_raw_fd()],
    );
    thread::sleep(Duration::from_millis(50));
    assert_eq!(perms_at(&window, 2 * MIB), "---p");
    thread.resume();
    assert_eq!(raw.reply(legacy::FS_MAP), 0);
    assert_eq!(perms_at(&window, 2 * MIB), "r--s");
    backend
        .fs_backend_unmap(&fs_msg(&[(0, 0, u64::MAX, R)]))
        .unwrap();
    assert_eq!(window.live_mappings(), 0);
    assert_window_sound(&window);

    // Stop with the backend still connected.
    backend
        .fs_backend_map(&fs_msg(&[(0, 0, 2 * MIB, R)]), &file)
        .unwrap();
    thread.stop().unwrap();
    drop(backend);
}

/// A thread started paused serves once resumed, and is stopped while paused again.
fn started_paused_then_stopped_while_paused(filtered: &Filtered) {
    let window = Arc::new(DaxWindow::new(4 * MIB).unwrap());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let thread: ChannelThread = BackendChannel::builder(ours)
        .window(window.clone())
        .start_paused(true)
        .on_thread_start(filtered.hook())
        .build()
        .spawn()
        .unwrap();
    filtered.assert_last();
    assert!(thread.is_paused());
    let raw = RawPeer { sock: theirs };
    let (file, _) = memfd(2 * MIB, |_| 1);
    raw.send(
        standard::SHMEM_MAP,
        shmem_range(0, 2 * MIB).as_slice(),
        &[file.as_raw_fd()],
    );
    thread.resume();
    assert_eq!(raw.reply(standard::SHMEM_MAP), 0);
    thread.pause().unwrap();
    thread.stop().unwrap();
    assert_eq!(window.live_mappings(), 1);
}

/// A device session: the hook through `FsBuilder::on_channel_thread`, maps from the in-process
/// backend, the device paused and resumed, then reset.
fn device_session(filtered: &Filtered) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("be.sock");
    let server = TestBackendServer::start(&socket, TestBackendConfig::default()).unwrap();
    let mut fs = Fs::builder("seccomp")
        .socket_path(&socket)
        .window_size(16 * MIB)
        .queue_size(128)
        .memory_manager(Arc::new(FakeMemoryManager::new()))
        .on_channel_thread(filtered.hook())
        .build()
        .unwrap();
    fs.set_shm_base(0, WIN_GPA).unwrap();
    fs.connect().unwrap();
    let offered = fs.features();
    fs.ack_features(offered);
    fs.activate(
        GuestMemoryAtomic::new(guest_memory(32 << 20)),
        Arc::new(CountingInterrupt::default()),
        activate_queues(2, 128),
    )
    .unwrap();
    filtered.assert_last();
    assert!(server.wait_for(|s| s.backend_channel, Duration::from_secs(5)));
    let backend = server.backend_channel().unwrap();
    let (file, _) = memfd(2 * MIB, |_| 1);
    backend
        .shmem_map(&mmap_msg(0, 0, 2 * MIB, true), &file)
        .unwrap();
    fs.pause().unwrap();
    fs.resume();
    backend
        .shmem_map(&mmap_msg(2 * MIB, 0, 2 * MIB, false), &file)
        .unwrap();
    assert!(backend
        .shmem_unmap(&mmap_msg(8 * MIB, 0, 2 * MIB, false))
        .is_err());
    let window = fs.window().unwrap().clone();
    assert_eq!(window.live_mappings(), 2);
    fs.reset();
    assert_eq!(window.live_mappings(), 0);
}
