// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A backend's file that stalls: FS_IO and FS_SYNC on a file of a FUSE mount whose server holds
//! the READ or WRITE for as long as the test likes. Reset, BAR moves and stop must complete
//! while the request stalls, and nothing of the ended session may land in memory afterwards.
//!
//! The FUSE server is a minimal one of its own (`/dev/fuse`, mount(2)): it needs root and the
//! fuse module, which every machine the test script runs on has.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use common::*;
use virtio_fs_dax::protocol::{legacy, Access, Dialect, FsBackendMsg, MapEntry};
use virtio_fs_dax::protocol::{FS_FLAG_MAP_R, FS_FLAG_MAP_W};
use virtio_fs_dax::window::Policy;
use virtio_fs_dax::{BackendChannel, DaxWindow, IoSpace};

const MIB: u64 = 1 << 20;
const FILE_SIZE: u64 = 4 * MIB;
/// What the FUSE file reads as.
const PATTERN: u8 = 0xab;
/// How long a reset or a BAR move may take while a request stalls: far below the stall, far
/// above what either costs on a loaded machine.
const BOUND: Duration = Duration::from_millis(500);
const WIN_GPA: u64 = 1 << 32;

/// What the FUSE server holds back, and what it has parked.
#[derive(Default)]
struct StallState {
    reads: bool,
    writes: bool,
    parked: usize,
    released: bool,
    /// FLUSHes served: one for every close of a descriptor of the file.
    flushes: usize,
}

struct Control {
    state: Mutex<StallState>,
    cv: Condvar,
}

impl Control {
    /// Parks the server's loop while requests of this kind are held.
    fn park_if(&self, held: impl Fn(&StallState) -> bool) {
        let mut s = self.state.lock().unwrap();
        if !held(&s) {
            return;
        }
        s.parked += 1;
        self.cv.notify_all();
        while !s.released {
            s = self.cv.wait(s).unwrap();
        }
    }
}

/// A FUSE mount with one file, `data` ([`FILE_SIZE`] bytes of [`PATTERN`], writable), whose
/// server can hold READs or WRITEs until released.
struct StallFs {
    dir: PathBuf,
    control: Arc<Control>,
    server: Option<JoinHandle<()>>,
}

impl StallFs {
    fn mount() -> StallFs {
        let dir = std::env::temp_dir().join(format!("vfd-stall-{}-{:?}", std::process::id(), {
            thread::current().id()
        }));
        std::fs::create_dir_all(&dir).unwrap();
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .expect("opening /dev/fuse: this test needs root and the fuse module (modprobe fuse)");
        let opts = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0\0",
            dev.as_raw_fd()
        );
        let target = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: every pointer is a NUL-terminated string that lives across the call.
        let ret = unsafe {
            libc::mount(
                c"vfd-stall".as_ptr(),
                target.as_ptr(),
                c"fuse.vfd-stall".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(
            ret,
            0,
            "mounting a FUSE file system needs root and the fuse module: {}",
            std::io::Error::last_os_error()
        );
        let control = Arc::new(Control {
            state: Mutex::new(StallState::default()),
            cv: Condvar::new(),
        });
        let c = control.clone();
        let server = thread::spawn(move || serve(dev, &c));
        StallFs {
            dir,
            control,
            server: Some(server),
        }
    }

    /// Opens `data`, read-only or read-write.
    fn open(&self, write: bool) -> File {
        OpenOptions::new()
            .read(true)
            .write(write)
            .open(self.dir.join("data"))
            .unwrap()
    }

    fn hold(&self, reads: bool, writes: bool) {
        let mut s = self.control.state.lock().unwrap();
        s.reads = reads;
        s.writes = writes;
        s.released = false;
    }

    /// Waits until the server parks a held request.
    fn wait_parked(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = self.control.state.lock().unwrap();
        while s.parked == 0 {
            let left = deadline
                .checked_duration_since(Instant::now())
                .expect("no request reached the FUSE server");
            s = self.control.cv.wait_timeout(s, left).unwrap().0;
        }
    }

    fn flushes(&self) -> usize {
        self.control.state.lock().unwrap().flushes
    }

    /// Waits until the file has been closed more than `before` times.
    fn wait_flush(&self, before: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = self.control.state.lock().unwrap();
        while s.flushes <= before {
            let left = deadline
                .checked_duration_since(Instant::now())
                .expect("the descriptor was not closed");
            s = self.control.cv.wait_timeout(s, left).unwrap().0;
        }
    }

    fn release(&self) {
        let mut s = self.control.state.lock().unwrap();
        s.reads = false;
        s.writes = false;
        s.released = true;
        s.parked = 0;
        self.control.cv.notify_all();
    }
}

impl Drop for StallFs {
    fn drop(&mut self) {
        self.release();
        // Abort the connection (fusectl), so that nothing waits on this server once it is gone,
        // not even when a test failed with a request held.
        if let Ok(meta) = std::fs::metadata(&self.dir) {
            use std::os::unix::fs::MetadataExt;
            let conns = Path::new("/sys/fs/fuse/connections");
            if !conns.join("0").exists()
                && std::fs::read_dir(conns).is_ok_and(|mut d| d.next().is_none())
            {
                let _ = std::process::Command::new("mount")
                    .args(["-t", "fusectl", "none", "/sys/fs/fuse/connections"])
                    .status();
            }
            let _ = std::fs::write(
                conns
                    .join(libc::minor(meta.dev()).to_string())
                    .join("abort"),
                "1",
            );
        }
        let target = std::ffi::CString::new(self.dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that lives across the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        // The server ends when the kernel ends the connection (the last file closed).
        if let Some(s) = self.server.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !s.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if s.is_finished() {
                s.join().unwrap();
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

// FUSE opcodes and structures (include/uapi/linux/fuse.h), only what the server needs.
const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_RELEASE: u32 = 18;
const FUSE_FSYNC: u32 = 20;
const FUSE_FLUSH: u32 = 25;
const FUSE_INIT: u32 = 26;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_BATCH_FORGET: u32 = 42;
const IN_HEADER: usize = 40;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// `fuse_attr` of the root (1) or of `data` (2).
fn attr(node: u64) -> Vec<u8> {
    let (mode, size, nlink) = match node {
        1 => (libc::S_IFDIR | 0o755, 0, 2u32),
        _ => (libc::S_IFREG | 0o666, FILE_SIZE, 1),
    };
    let mut a = Vec::with_capacity(88);
    for v in [node, size, size.div_ceil(512), 0, 0, 0] {
        a.extend_from_slice(&v.to_le_bytes());
    }
    for v in [0u32, 0, 0, mode, nlink, 0, 0, 0, 4096, 0] {
        a.extend_from_slice(&v.to_le_bytes());
    }
    a
}

fn serve(mut dev: File, control: &Control) {
    let mut buf = vec![0u8; 1 << 20 | 4096];
    loop {
        let n = match dev.read(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ENOENT)) => continue,
            Err(_) => return,
        };
        let req = &buf[..n];
        let (opcode, unique, node) = (u32_at(req, 4), u64_at(req, 8), u64_at(req, 16));
        let body = &req[IN_HEADER..];
        let reply: Result<Vec<u8>, i32> = match opcode {
            FUSE_INIT => {
                let mut out = Vec::with_capacity(64);
                for v in [7u32, 31, u32_at(body, 8), 0] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&16u16.to_le_bytes());
                out.extend_from_slice(&12u16.to_le_bytes());
                out.extend_from_slice(&(128u32 << 10).to_le_bytes());
                out.extend_from_slice(&1u32.to_le_bytes());
                out.resize(64, 0);
                Ok(out)
            }
            FUSE_LOOKUP if node == 1 && body.split(|b| *b == 0).next() == Some(b"data") => {
                let mut out = Vec::new();
                for v in [2u64, 0, 3600, 3600] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&[0; 8]);
                out.extend(attr(2));
                Ok(out)
            }
            FUSE_LOOKUP => Err(libc::ENOENT),
            FUSE_GETATTR => {
                let mut out = Vec::new();
                out.extend_from_slice(&3600u64.to_le_bytes());
                out.extend_from_slice(&[0; 8]);
                out.extend(attr(node));
                Ok(out)
            }
            FUSE_OPEN => Ok(vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            FUSE_READ => {
                control.park_if(|s| s.reads);
                let (off, size) = (u64_at(body, 8), u64::from(u32_at(body, 16)));
                let len = size.min(FILE_SIZE.saturating_sub(off));
                Ok(vec![PATTERN; len as usize])
            }
            FUSE_WRITE => {
                control.park_if(|s| s.writes);
                let mut out = u32_at(body, 16).to_le_bytes().to_vec();
                out.extend_from_slice(&[0; 4]);
                Ok(out)
            }
            FUSE_FLUSH => {
                control.state.lock().unwrap().flushes += 1;
                control.cv.notify_all();
                Ok(Vec::new())
            }
            FUSE_RELEASE | FUSE_FSYNC => Ok(Vec::new()),
            FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT => continue,
            _ => Err(libc::ENOSYS),
        };
        let (error, payload) = match reply {
            Ok(p) => (0, p),
            Err(e) => (-e, Vec::new()),
        };
        let mut out = Vec::with_capacity(16 + payload.len());
        out.extend_from_slice(&(16 + payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&error.to_le_bytes());
        out.extend_from_slice(&unique.to_le_bytes());
        out.extend(payload);
        // A request the kernel gave up on (an interrupted one) answers ENOENT: nothing to do.
        let _ = std::io::Write::write(&mut dev, &out);
    }
}

/// One FS_IO (or FS_SYNC) entry.
fn fs_msg(gpa: u64, fd_offset: u64, len: u64, flags: u64) -> Vec<u8> {
    let mut m = FsBackendMsg::default();
    m.fd_offset[0] = fd_offset;
    m.cache_offset[0] = gpa;
    m.len[0] = len;
    m.flags[0] = flags;
    m.as_slice().to_vec()
}

/// A legacy channel over a window placed at [`WIN_GPA`] of guest RAM, served by `handle_one`
/// on a thread the test joins.
struct Setup {
    ram: Arc<GuestMemoryMmap>,
    io: Arc<IoSpace>,
    window: Arc<DaxWindow>,
    peer: RawPeer,
    server: JoinHandle<()>,
}

fn setup() -> Setup {
    let ram = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap());
    let io = Arc::new(IoSpace::with_guest_memory(ram.clone()));
    let window = Arc::new(DaxWindow::new(8 * MIB).unwrap());
    io.add_window(WIN_GPA, window.clone()).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut channel = BackendChannel::builder(ours)
        .window(window.clone())
        .dialect(Dialect::Legacy)
        .io_space(io.clone())
        .build();
    let server =
        thread::spawn(
            move || {
                while channel.handle_one_timeout(Duration::from_secs(60)).is_ok() {}
            },
        );
    Setup {
        ram,
        io,
        window,
        peer: RawPeer { sock: theirs },
        server,
    }
}

impl Setup {
    /// Ends the peer and waits for the channel's thread.
    fn finish(self) {
        drop(self.peer);
        self.server.join().unwrap();
    }
}

/// Maps the first 2 MiB of `file` writable at offset 0, in the current generation.
fn map_rw(window: &DaxWindow, file: &File) {
    let e = MapEntry {
        access: Access::ReadWrite,
        ..entry(0, 2 * MIB)
    };
    window.map(&[e], file, Policy::LEGACY).unwrap();
}

fn assert_zero(bytes: &[u8], what: &str) {
    assert!(bytes.iter().all(|b| *b == 0), "{what}");
}

/// Runs `f` and asserts it took less than [`BOUND`]. Should it not return in time, the held
/// request is released (so that the test fails instead of waiting for ever) before the panic.
fn within_bound<T: Send>(fs: &StallFs, what: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = Instant::now();
        let worker = scope.spawn(move || {
            let r = f();
            let _ = tx.send(());
            r
        });
        let on_time = rx.recv_timeout(BOUND).is_ok();
        if !on_time {
            fs.release();
        }
        let r = worker.join().unwrap();
        assert!(
            on_time,
            "{what} took {:?} while a request stalls",
            t.elapsed()
        );
        r
    })
}

/// A BAR move, as a device does it: the window out of the IO space and back at a new address.
fn bar_move(fs: &StallFs, io: &IoSpace, window: &Arc<DaxWindow>, from: u64, to: u64) {
    within_bound(fs, "a BAR move", || {
        assert!(io.remove_window(from).is_some());
        io.add_window(to, window.clone()).unwrap();
    });
}

#[test]
fn stalled_read_into_guest_ram_holds_up_nothing_and_lands_nowhere() {
    let _g = serial();
    let fs = StallFs::mount();
    let file = fs.open(false);
    let s = setup();
    fs.hold(true, false);
    s.peer.send(
        legacy::FS_IO,
        &fs_msg(0x10000, 0, 512 << 10, FS_FLAG_MAP_R),
        &[file.as_raw_fd()],
    );
    fs.wait_parked();

    // The channel's thread waits in the file's read: the VMM's side goes on.
    within_bound(&fs, "reset", || s.window.reset().unwrap());
    bar_move(&fs, &s.io, &s.window, WIN_GPA, WIN_GPA << 1);
    let mapped = memfd(2 * MIB, |_| 0).0;
    within_bound(&fs, "a map of the new session", || {
        s.window
            .map(&[entry(0, 2 * MIB)], &mapped, Policy::LEGACY)
            .unwrap()
    });

    // The read completes after the reset: the ended session's bytes go nowhere.
    fs.release();
    assert_eq!(s.peer.reply(legacy::FS_IO), -i64::from(libc::ESTALE));
    let mut got = vec![1u8; 512 << 10];
    s.ram.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
    assert_zero(&got, "a stale read landed in guest RAM");
    s.finish();
}

#[test]
fn stalled_read_into_the_window_never_reaches_the_next_sessions_mapping() {
    let _g = serial();
    let fs = StallFs::mount();
    let file = fs.open(false);
    let s = setup();
    let (old, _) = memfd(2 * MIB, |_| 0);
    map_rw(&s.window, &old);
    fs.hold(true, false);
    s.peer.send(
        legacy::FS_IO,
        &fs_msg(WIN_GPA, 0, 2 * MIB, FS_FLAG_MAP_R),
        &[file.as_raw_fd()],
    );
    fs.wait_parked();

    within_bound(&fs, "reset", || s.window.reset().unwrap());
    // The next session maps a file of its own over the same range.
    let (new, _) = memfd(2 * MIB, |_| 0);
    map_rw(&s.window, &new);
    fs.release();
    assert_eq!(s.peer.reply(legacy::FS_IO), -i64::from(libc::ESTALE));
    let mut got = vec![1u8; 2 * MIB as usize];
    new.read_exact_at(&mut got, 0).unwrap();
    assert_zero(&got, "stale bytes in the new session's file");
    old.read_exact_at(&mut got, 0).unwrap();
    assert_zero(&got, "stale bytes in the old session's file");
    s.finish();
}

#[test]
fn stalled_write_from_guest_ram_holds_up_nothing() {
    let _g = serial();
    let fs = StallFs::mount();
    let file = fs.open(true);
    let s = setup();
    s.ram
        .write_slice(&[0x5a; 4096], GuestAddress(0x20000))
        .unwrap();
    fs.hold(false, true);
    s.peer.send(
        legacy::FS_IO,
        &fs_msg(0x20000, 0, 4096, FS_FLAG_MAP_W),
        &[file.as_raw_fd()],
    );
    fs.wait_parked();
    within_bound(&fs, "reset", || s.window.reset().unwrap());
    bar_move(&fs, &s.io, &s.window, WIN_GPA, WIN_GPA << 1);
    fs.release();
    // The bytes were copied out before the reset: the write itself completes.
    assert_eq!(s.peer.reply(legacy::FS_IO), 4096);
    s.finish();
}

#[test]
fn stalled_sync_holds_up_nothing() {
    let _g = serial();
    let fs = StallFs::mount();
    let file = fs.open(true);
    let s = setup();
    // The session maps the FUSE file writable and dirties it through the window.
    map_rw(&s.window, &file);
    write_window(&s.window, 0, &[0x66; 8192]);
    fs.hold(false, true);
    s.peer.send(legacy::FS_SYNC, &fs_msg(0, 0, 2 * MIB, 0), &[]);
    fs.wait_parked();
    // The msync waits for the file's writeback: the window's other ranges are served meanwhile.
    // (A reset would wait here too, in the kernel: removing a FUSE file's shared mapping writes
    // it back first, whoever removes it.)
    let (other, _) = memfd(2 * MIB, |_| 0);
    within_bound(
        &fs,
        "a map and an unmap beside the range being synced",
        || {
            s.window
                .map(&[entry(2 * MIB, 2 * MIB)], &other, Policy::LEGACY)
                .unwrap();
            assert_eq!(s.window.live_mappings(), 2);
            s.window
                .unmap(
                    &[virtio_fs_dax::protocol::Range {
                        offset: 2 * MIB,
                        len: 2 * MIB,
                    }],
                    Policy::LEGACY,
                )
                .unwrap();
        },
    );
    fs.release();
    assert_eq!(s.peer.reply(legacy::FS_SYNC), 0);
    within_bound(&fs, "reset", || s.window.reset().unwrap());
    assert_window_sound(&s.window);
    s.finish();
}

#[test]
fn stopped_thread_of_a_windowless_channel_stores_nothing_after_stop() {
    let _g = serial();
    let fs = StallFs::mount();
    let file = fs.open(false);
    let ram = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap());
    let io = Arc::new(IoSpace::with_guest_memory(ram.clone()));
    let (ours, theirs) = UnixStream::pair().unwrap();
    let thread = BackendChannel::builder(ours)
        .dialect(Dialect::Legacy)
        .io_space(io)
        .build()
        .spawn()
        .unwrap();
    let peer = RawPeer { sock: theirs };
    fs.hold(true, false);
    peer.send(
        legacy::FS_IO,
        &fs_msg(0x1000, 0, 64 << 10, FS_FLAG_MAP_R),
        &[file.as_raw_fd()],
    );
    fs.wait_parked();
    // The thread cannot stop while it waits in the read: the stop times out on time.
    let stopped = within_bound(&fs, "stop", || {
        thread.stop_timeout(Duration::from_millis(100))
    });
    assert!(stopped.is_err(), "the thread was stuck in the read");
    let flushes = fs.flushes();
    fs.release();
    // The request is over when the channel closes its descriptor of the file.
    fs.wait_flush(flushes);
    let mut got = vec![1u8; 64 << 10];
    ram.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
    assert_zero(&got, "a stopped thread's read landed in guest RAM");
}

/// The FUSE file serves what the tests expect when nothing is held, so the stalls above are
/// the only difference.
#[test]
fn unheld_fuse_file_reads_through_fs_io() {
    let _g = serial();
    let fs = StallFs::mount();
    let file = fs.open(false);
    let s = setup();
    assert_eq!(
        s.peer.call(
            legacy::FS_IO,
            &fs_msg(0x10000, 0, 300 << 10, FS_FLAG_MAP_R),
            &[file.as_raw_fd()],
        ),
        300 << 10
    );
    let mut got = vec![0u8; 300 << 10];
    s.ram.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
    assert!(got.iter().all(|b| *b == PATTERN));
    s.finish();
}
