// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Helpers shared by the integration tests: real memfds, /proc/self/maps and /proc/self/fd
//! readers, a raw peer that writes arbitrary messages, and a harness around a served channel.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use virtio_fs_dax::channel::ChannelThread;
use virtio_fs_dax::protocol::{RawHeader, FLAG_NEED_REPLY, FLAG_REPLY, HEADER_SIZE, VERSION};
use virtio_fs_dax::{BackendChannel, DaxWindow, Dialect, IoSpace};

pub const MIB: u64 = 1 << 20;
pub const PAGE: u64 = 4096;

static SERIAL: Mutex<()> = Mutex::new(());
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Tests that count descriptors or read /proc/self/maps take this lock: the tests of one binary
/// share a process.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A memfd of `len` bytes, filled with `fill(page index)` per page, with a unique name that
/// [`assert_window_sound`] looks for.
pub fn memfd(len: u64, fill: impl Fn(u64) -> u8) -> (File, String) {
    memfd_named("vfd-test", len, fill)
}

fn memfd_named(prefix: &str, len: u64, fill: impl Fn(u64) -> u8) -> (File, String) {
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let cname = std::ffi::CString::new(name.clone()).unwrap();
    // SAFETY: memfd_create reads a valid NUL-terminated string and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nobody else.
    let mut file = unsafe { File::from_raw_fd(fd) };
    let mut buf = Vec::with_capacity(len as usize);
    for page in 0..len.div_ceil(PAGE) {
        let n = PAGE.min(len - page * PAGE) as usize;
        buf.extend(std::iter::repeat_n(fill(page), n));
    }
    file.write_all(&buf).unwrap();
    (file, name)
}

/// One line of /proc/self/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub path: String,
}

pub fn maps() -> Vec<MapsLine> {
    let mut s = String::new();
    File::open("/proc/self/maps")
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    s.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let range = it.next()?;
            let perms = it.next()?.to_string();
            let path = it.nth(3).unwrap_or("").to_string();
            let (a, b) = range.split_once('-')?;
            Some(MapsLine {
                start: u64::from_str_radix(a, 16).ok()?,
                end: u64::from_str_radix(b, 16).ok()?,
                perms,
                path,
            })
        })
        .collect()
}

/// Lines of /proc/self/maps that intersect `[addr, addr + len)`, clipped to it.
pub fn maps_in(addr: u64, len: u64) -> Vec<MapsLine> {
    maps()
        .into_iter()
        .filter(|m| m.start < addr + len && m.end > addr)
        .map(|mut m| {
            m.start = m.start.max(addr);
            m.end = m.end.min(addr + len);
            m
        })
        .collect()
}

/// Asserts that the window is one unbroken range of mappings (no hole) and that every mapping
/// of a test memfd lies inside it.
pub fn assert_window_sound(w: &DaxWindow) {
    let (base, size) = (w.host_addr(), w.size());
    let inside = maps_in(base, size);
    let mut at = base;
    for m in &inside {
        assert_eq!(m.start, at, "hole in the window at {at:#x}: {inside:#x?}");
        at = m.end;
    }
    assert_eq!(at, base + size, "window ends early: {inside:#x?}");
    let ours = format!("vfd-test-{}-", std::process::id());
    for m in maps() {
        if m.path.contains(&ours) {
            assert!(
                m.start >= base && m.end <= base + size,
                "test file mapped outside the window: {m:#x?}"
            );
        }
    }
}

/// Every page of the window shows in /proc/self/maps what the mapping table says: the
/// reservation (`---p`) where nothing is mapped, `r--s` or `rw-s` where a mapping is.
pub fn assert_table_matches_kernel(w: &DaxWindow) {
    let lines = maps_in(w.host_addr(), w.size());
    let table = w.mappings();
    for off in (0..w.size()).step_by(w.page_size() as usize) {
        let addr = w.host_addr() + off;
        let perms = lines
            .iter()
            .find(|l| l.start <= addr && addr < l.end)
            .map(|l| l.perms.as_str())
            .unwrap_or("(hole)");
        let want = match table
            .iter()
            .find(|m| m.offset <= off && off < m.offset + m.len)
        {
            None => "---p",
            Some(m) if m.access == virtio_fs_dax::protocol::Access::ReadOnly => "r--s",
            Some(_) => "rw-s",
        };
        assert_eq!(
            perms, want,
            "window page {off:#x}: the kernel and the table disagree; table {table:#x?}"
        );
    }
    let m = w.metrics();
    assert_eq!(m.live_mappings(), table.len() as u64);
    assert_eq!(m.mapped_bytes(), table.iter().map(|m| m.len).sum::<u64>());
}

/// Permissions of the page at `offset` of the window, from /proc/self/maps.
pub fn perms_at(w: &DaxWindow, offset: u64) -> String {
    maps_in(w.host_addr() + offset, 1)
        .first()
        .map(|m| m.perms.clone())
        .unwrap_or_default()
}

/// Open descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Reads `len` bytes of the window at `offset` (the range must be mapped readable).
pub fn read_window(w: &DaxWindow, offset: u64, len: usize) -> Vec<u8> {
    assert!(offset + len as u64 <= w.size());
    let p = (w.host_addr() + offset) as *const u8;
    // SAFETY: the caller asserts the range is a live readable mapping inside the window; volatile
    // reads because the file may change under us.
    (0..len)
        .map(|i| unsafe { p.add(i).read_volatile() })
        .collect()
}

/// Writes `data` to the window at `offset` (the range must be mapped writable).
pub fn write_window(w: &DaxWindow, offset: u64, data: &[u8]) {
    assert!(offset + data.len() as u64 <= w.size());
    let p = (w.host_addr() + offset) as *mut u8;
    for (i, b) in data.iter().enumerate() {
        // SAFETY: the caller asserts the range is a live writable mapping inside the window.
        unsafe { p.add(i).write_volatile(*b) };
    }
}

/// A read-only SHMEM_MAP (or SHMEM_UNMAP) payload of region 0 at `offset`, file offset 0.
pub fn shmem_range(offset: u64, len: u64) -> vhost::vhost_user::message::VhostUserMMap {
    vhost::vhost_user::message::VhostUserMMap {
        shmid: 0,
        padding: [0; 7],
        fd_offset: 0,
        shm_offset: offset,
        len,
        flags: 0,
    }
}

/// A peer that writes whatever bytes and descriptors a test wants, and reads replies.
pub struct RawPeer {
    pub sock: UnixStream,
}

impl RawPeer {
    pub fn header(request: u32, flags: u32, size: u32) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_SIZE);
        v.extend_from_slice(&request.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&size.to_le_bytes());
        v
    }

    /// Sends a well-formed header (version 1, NEED_REPLY) announcing `body.len()`, then `body`,
    /// with `fds` attached to the first byte.
    pub fn send(&self, request: u32, body: &[u8], fds: &[RawFd]) {
        self.send_raw(
            request,
            VERSION | FLAG_NEED_REPLY,
            body.len() as u32,
            body,
            fds,
        );
    }

    pub fn send_raw(&self, request: u32, flags: u32, size: u32, body: &[u8], fds: &[RawFd]) {
        let mut msg = Self::header(request, flags, size);
        msg.extend_from_slice(body);
        let n = self.sock.send_with_fds(&[&msg[..]], fds).unwrap();
        assert_eq!(n, msg.len());
    }

    /// Reads one reply and returns its value as the signed number the backend sees.
    pub fn reply(&self, request: u32) -> i64 {
        let mut buf = [0u8; HEADER_SIZE + 8];
        (&self.sock).read_exact(&mut buf).unwrap();
        let (h, v) = buf.split_at(HEADER_SIZE);
        let hdr = RawHeader {
            request: u32::from_le_bytes(h[0..4].try_into().unwrap()),
            flags: u32::from_le_bytes(h[4..8].try_into().unwrap()),
            size: u32::from_le_bytes(h[8..12].try_into().unwrap()),
        };
        assert_eq!({ hdr.request }, request, "reply for another request");
        assert_eq!({ hdr.flags }, VERSION | FLAG_REPLY);
        assert_eq!({ hdr.size }, 8);
        u64::from_le_bytes(v.try_into().unwrap()) as i64
    }

    /// Sends `bytes` as they are, with `fds` attached, in one `sendmsg`.
    pub fn send_bytes(&self, bytes: &[u8], fds: &[RawFd]) {
        assert_eq!(self.sock.send_with_fds(&[bytes], fds).unwrap(), bytes.len());
    }

    /// Sends and waits for the reply.
    pub fn call(&self, request: u32, body: &[u8], fds: &[RawFd]) -> i64 {
        self.send(request, body, fds);
        self.reply(request)
    }
}

/// A standard-dialect channel over `w`, not yet driven, with a raw peer on the other end.
pub fn standard_channel(w: &Arc<DaxWindow>, name: &str) -> (BackendChannel, RawPeer) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let channel = BackendChannel::builder(ours)
        .window(w.clone())
        .dialect(Dialect::Standard)
        .name(name)
        .build();
    (channel, RawPeer { sock: theirs })
}

/// A window served by a channel thread, with a raw peer on the other end.
pub struct Harness {
    pub window: Arc<DaxWindow>,
    pub io: Arc<IoSpace>,
    pub peer: RawPeer,
    pub thread: Option<ChannelThread>,
}

impl Harness {
    pub fn new(dialect: Dialect, size: u64) -> Self {
        Self::with(dialect, size, false, Arc::new(IoSpace::new()))
    }

    pub fn with(dialect: Dialect, size: u64, replace_exact: bool, io: Arc<IoSpace>) -> Self {
        let window = Arc::new(DaxWindow::new(size).unwrap());
        let (ours, theirs) = UnixStream::pair().unwrap();
        let thread = BackendChannel::builder(ours)
            .window(window.clone())
            .dialect(dialect)
            .replace_exact(replace_exact)
            .io_space(io.clone())
            .name("test")
            .build()
            .spawn()
            .unwrap();
        Harness {
            window,
            io,
            peer: RawPeer { sock: theirs },
            thread: Some(thread),
        }
    }

    /// Stops the channel thread and asserts it ended cleanly.
    pub fn stop(mut self) {
        let t = self.thread.take().unwrap();
        assert!(t.stop().is_ok());
    }
}

pub fn as_fds(files: &[&File]) -> Vec<RawFd> {
    files.iter().map(|f| f.as_raw_fd()).collect()
}

/// Guest RAM backed by a memfd (the vhost-user memory table needs file-backed memory).
pub fn guest_memory(size: usize) -> vm_memory::GuestMemoryMmap {
    let (file, _) = memfd_named("vfd-ram", 0, |_| 0);
    file.set_len(size as u64).unwrap();
    vm_memory::GuestMemoryMmap::from_ranges_with_files([(
        vm_memory::GuestAddress(0),
        size,
        Some(vm_memory::FileOffset::new(file, 0)),
    )])
    .unwrap()
}

/// `n` queues of `size` descriptors laid out one after the other in guest RAM from 1 MiB on,
/// ready, with fresh kick and call eventfds.
pub fn activate_queues(n: usize, size: u16) -> Vec<virtio_fs_dax::device::ActivateQueue> {
    use virtio_queue::{Queue, QueueT};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
    (0..n)
        .map(|index| {
            let base = (1 << 20) + index as u64 * 0x10_0000;
            let mut queue = Queue::new(size).unwrap();
            queue.set_size(size);
            queue.set_desc_table_address(Some(base as u32), Some((base >> 32) as u32));
            let avail = base + 16 * u64::from(size);
            queue.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
            let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4);
            queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
            queue.set_ready(true);
            virtio_fs_dax::device::ActivateQueue {
                index,
                queue,
                kick: EventFd::new(EFD_NONBLOCK).unwrap(),
                call: EventFd::new(EFD_NONBLOCK).unwrap(),
            }
        })
        .collect()
}

/// An interrupt that counts what it is asked to raise.
#[derive(Default)]
pub struct CountingInterrupt(pub std::sync::atomic::AtomicUsize);

impl virtio_fs_dax::device::VirtioInterrupt for CountingInterrupt {
    fn trigger(&self, _: virtio_fs_dax::device::VirtioInterruptType) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A backend process started for a test, waited for until its socket exists, killed on drop.
pub struct PeerProcess(std::process::Child);

impl PeerProcess {
    /// Starts `program` with `args` and waits (10 s at most) for it to create `socket`.
    pub fn start(
        program: &std::path::Path,
        args: &[&std::ffi::OsStr],
        socket: &std::path::Path,
    ) -> Self {
        let _ = std::fs::remove_file(socket);
        let child = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let start = std::time::Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "{} made no socket",
                program.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        PeerProcess(child)
    }

    /// Waits (`timeout` at most) for the process to exit on its own, and returns how it ended.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < timeout, "the process did not exit");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Whether the process is still running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// Stops the process (SIGSTOP): it reads nothing more until killed.
    pub fn stop(&self) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        let r = unsafe { libc::kill(self.0.id() as i32, libc::SIGSTOP) };
        assert_eq!(r, 0);
        // kill only queues the signal: a thread on another CPU can still take a request until
        // the kernel stops it. Wait until every thread is in state T.
        let tasks = format!("/proc/{}/task", self.0.id());
        let start = std::time::Instant::now();
        let stopped = || -> bool {
            std::fs::read_dir(&tasks).unwrap().all(|t| {
                let stat =
                    std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
                // The state follows the command name, which is in parentheses.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            })
        };
        while !stopped() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "SIGSTOP not taken"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// kill -9, and checks that the signal is what ended it.
    pub fn kill9(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        let r = unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        assert_eq!(r, 0);
        let status = self.0.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (`timeout` at most) until `fs` notices that its backend is gone, and fails the test
/// with `what` if it does not.
pub fn wait_backend_lost(fs: &mut virtio_fs_dax::Fs, timeout: std::time::Duration, what: &str) {
    let start = std::time::Instant::now();
    while !fs.check_backend() {
        assert!(start.elapsed() < timeout, "{what} not noticed");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A read-only map entry of `len` bytes at window offset `offset`, from the file's start.
pub fn entry(offset: u64, len: u64) -> virtio_fs_dax::protocol::MapEntry {
    virtio_fs_dax::protocol::MapEntry {
        offset,
        fd_offset: 0,
        len,
        access: virtio_fs_dax::protocol::Access::ReadOnly,
    }
}

/// dax-backend: `$DAX_BACKEND`, else `peers/dax-backend/target/release/dax-backend` (which
/// `scripts/test.sh` builds). Panics with how to get it when missing.
pub fn dax_backend() -> std::path::PathBuf {
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers/dax-backend/target/release/dax-backend");
    let path = std::env::var_os("DAX_BACKEND")
        .map(std::path::PathBuf::from)
        .unwrap_or(built);
    assert!(
        path.is_file(),
        "dax-backend not found at {}: run scripts/test.sh, which builds it, or \
         `cd peers/dax-backend && cargo build --release`, or set $DAX_BACKEND",
        path.display()
    );
    path
}

/// Starts dax-backend serving `shared` on `socket`, in the legacy dialect when `legacy`.
pub fn start_dax_backend(
    socket: &std::path::Path,
    shared: &std::path::Path,
    legacy: bool,
) -> PeerProcess {
    let mut args = vec![
        "--socket-path".as_ref(),
        socket.as_os_str(),
        "--shared-dir".as_ref(),
        shared.as_os_str(),
    ];
    if legacy {
        args.push("--legacy".as_ref());
    }
    PeerProcess::start(&dax_backend(), &args, socket)
}

/// `$env`, then `~/.local/virtio-fs-dax/bin/NAME` (where `scripts/test.sh` installs the
/// peers), then, with `search_path`, `PATH`: the first that is a file.
fn find_peer(env: &str, name: &str, search_path: bool) -> Option<std::path::PathBuf> {
    use std::path::{Path, PathBuf};
    let home =
        std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/virtio-fs-dax/bin").join(name));
    let path = std::env::var_os("PATH")
        .filter(|_| search_path)
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    std::env::var_os(env)
        .map(PathBuf::from)
        .into_iter()
        .chain(home)
        .chain(path)
        .find(|c| c.is_file())
}

/// virtiofsd: `$VIRTIOFSD`, then `~/.local/virtio-fs-dax/bin/virtiofsd` (where
/// `scripts/test.sh` installs it), then `PATH`. Panics with how to get it when missing.
pub fn virtiofsd() -> std::path::PathBuf {
    find_peer("VIRTIOFSD", "virtiofsd", true).unwrap_or_else(|| {
        panic!(
            "virtiofsd not found: run scripts/test.sh, which installs it, or \
             `apt-get install -y libseccomp-dev libcap-ng-dev && \
             cargo install --locked virtiofsd@1.14.0 --root ~/.local/virtio-fs-dax`, \
             or point $VIRTIOFSD at a virtiofsd binary"
        )
    })
}

/// Starts virtiofsd on `socket`, serving `shared`, without a sandbox.
pub fn start_virtiofsd(socket: &std::path::Path, shared: &std::path::Path) -> PeerProcess {
    PeerProcess::start(&virtiofsd(), &virtiofsd_args(socket, shared), socket)
}

/// The arguments virtiofsd and virtiofsd-dax both start with in the tests: `socket`, `shared`,
/// no sandbox, errors only in the log.
fn virtiofsd_args<'a>(
    socket: &'a std::path::Path,
    shared: &'a std::path::Path,
) -> Vec<&'a std::ffi::OsStr> {
    vec![
        "--socket-path".as_ref(),
        socket.as_os_str(),
        "--shared-dir".as_ref(),
        shared.as_os_str(),
        "--sandbox".as_ref(),
        "none".as_ref(),
        "--log-level".as_ref(),
        "error".as_ref(),
    ]
}

/// virtiofsd-dax (virtiofsd with the patches of peers/virtiofsd-dax): `$VIRTIOFSD_DAX`, then
/// `~/.local/virtio-fs-dax/bin/virtiofsd-dax` (where `scripts/test.sh` installs it). Panics
/// with how to get it when missing.
pub fn virtiofsd_dax() -> std::path::PathBuf {
    find_peer("VIRTIOFSD_DAX", "virtiofsd-dax", false).unwrap_or_else(|| {
        panic!(
            "virtiofsd-dax not found: run scripts/test.sh, which builds it, or \
             `bash peers/virtiofsd-dax/build.sh ~/.local/virtio-fs-dax/bin` (needs \
             libseccomp-dev and libcap-ng-dev), or point $VIRTIOFSD_DAX at a virtiofsd-dax binary"
        )
    })
}

/// Starts virtiofsd-dax on `socket`, serving `shared` through a DAX window of `window` bytes,
/// without a sandbox, with `extra` arguments.
pub fn start_virtiofsd_dax(
    socket: &std::path::Path,
    shared: &std::path::Path,
    window: u64,
    extra: &[&str],
) -> PeerProcess {
    let window = window.to_string();
    let mut args = virtiofsd_args(socket, shared);
    args.extend([
        std::ffi::OsStr::new("--dax-window-size"),
        std::ffi::OsStr::new(&window),
    ]);
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    PeerProcess::start(&virtiofsd_dax(), &args, socket)
}

/// Activates `fs` (built with queue size 128) with a simulated guest: 64 MiB of memfd RAM, the
/// high-priority and one request queue at 1 MiB and 2 MiB, and a FUSE session whose buffers
/// live at 4..8 MiB. Returns the session, not yet initialised.
#[cfg(feature = "test-utils")]
pub fn activate_with_guest(
    fs: &mut virtio_fs_dax::Fs,
) -> Result<virtio_fs_dax::test_utils::FuseSession, virtio_fs_dax::device::Error> {
    use virtio_fs_dax::test_utils::{memfd_guest_memory, FuseSession, SplitQueueDriver};
    use vm_memory::{GuestAddress, GuestMemoryAtomic};
    let mem = memfd_guest_memory(64 << 20).unwrap();
    let hiprio = SplitQueueDriver::new(mem.clone(), GuestAddress(MIB), 128).unwrap();
    let request = SplitQueueDriver::new(mem.clone(), GuestAddress(2 * MIB), 128).unwrap();
    let queues = vec![
        hiprio.activate_queue(0).unwrap(),
        request.activate_queue(1).unwrap(),
    ];
    fs.activate(
        GuestMemoryAtomic::new(mem),
        Arc::new(CountingInterrupt::default()),
        queues,
    )?;
    Ok(
        FuseSession::new(request, GuestAddress(4 * MIB), (4 * MIB) as usize)
            .unwrap()
            .with_hiprio(hiprio),
    )
}

/// A device with a `window`-byte window at guest address `window_gpa`, connected to the
/// backend on `socket` (dax-backend) and activated by the simulated guest
/// ([`activate_with_guest`]), DAX negotiated; the guest's FUSE session, not yet initialised.
#[cfg(feature = "test-utils")]
pub fn dax_device(
    socket: &std::path::Path,
    window_gpa: u64,
    window: u64,
    dialect: Dialect,
) -> (virtio_fs_dax::Fs, virtio_fs_dax::test_utils::FuseSession) {
    dax_device_with(socket, window_gpa, window, dialect, true)
}

/// [`dax_device`], with the exact-range replace policy given (`false`: spec-strict).
#[cfg(feature = "test-utils")]
pub fn dax_device_with(
    socket: &std::path::Path,
    window_gpa: u64,
    window: u64,
    dialect: Dialect,
    replace_exact: bool,
) -> (virtio_fs_dax::Fs, virtio_fs_dax::test_utils::FuseSession) {
    let mut fs = virtio_fs_dax::Fs::builder("dax")
        .socket_path(socket)
        .window_size(window)
        .dialect(dialect)
        .replace_exact(replace_exact)
        .queue_size(128)
        .build()
        .unwrap();
    fs.set_shm_base(0, window_gpa).unwrap();
    fs.connect().unwrap();
    assert!(
        fs.window_offered(),
        "decided at connect: this backend serves the window"
    );
    fs.ack_features(fs.features());
    let s = activate_with_guest(&mut fs).expect("activate against the backend");
    assert!(fs.session().unwrap().negotiated().dax, "DAX negotiated");
    (fs, s)
}

/// A SHMEM_MAP body (vhost's `VhostUserMMap`) for shared memory region 0.
pub fn mmap_msg(
    shm_offset: u64,
    fd_offset: u64,
    len: u64,
    writable: bool,
) -> vhost::vhost_user::message::VhostUserMMap {
    use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
    VhostUserMMap {
        shmid: 0,
        padding: [0; 7],
        fd_offset,
        shm_offset,
        len,
        flags: if writable {
            VhostUserMMapFlags::WRITABLE.bits()
        } else {
            VhostUserMMapFlags::default().bits()
        },
    }
}

/// A legacy FS_* body (vhost 0.11's `VhostUserFSBackendMsg`) from (window offset or guest
/// physical address, file offset, len, flags) entries.
pub fn fs_msg(
    entries: &[(
        u64,
        u64,
        u64,
        vhost_legacy::vhost_user::message::VhostUserFSBackendMsgFlags,
    )],
) -> vhost_legacy::vhost_user::message::VhostUserFSBackendMsg {
    use vhost_legacy::vhost_user::message::{VhostUserFSBackendMsg, VHOST_USER_FS_BACKEND_ENTRIES};
    assert!(entries.len() <= VHOST_USER_FS_BACKEND_ENTRIES);
    let mut m = VhostUserFSBackendMsg::default();
    for (i, &(offset, fd_offset, len, flags)) in entries.iter().enumerate() {
        m.cache_offset[i] = offset;
        m.fd_offset[i] = fd_offset;
        m.len[i] = len;
        m.flags[i] = flags;
    }
    m
}
