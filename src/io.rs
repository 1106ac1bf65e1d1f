// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! IO for what a backend cannot map or see: legacy FS_IO and the proposed MEM_READ / MEM_WRITE.
//!
//! A vhost-user backend sees guest RAM (through the memory table) but not DAX windows. When a
//! guest passes a buffer that lies in a DAX window (its own device's or another device's) to
//! FUSE_READ or FUSE_WRITE, the backend asks the frontend to do the copy at a guest physical
//! address. [`IoSpace`] resolves such an address over guest RAM (a vm-memory address space the
//! VMM hands in) and over every registered [`DaxWindow`], checks the whole length, and lets the
//! kernel do the copy (`pread64`, `pwrite64`, `process_vm_readv`, `process_vm_writev`): a fault
//! (a page of the reservation, a truncated file) comes back as `EFAULT` instead of a signal.
//!
//! # Nothing waits for a file
//!
//! A file read or write can stall for as long as its file system likes (a hung FUSE or network
//! mount, a backend that hands in such a file on purpose). So a transfer between a file and
//! memory goes through a bounce buffer, [`IO_CHUNK`] bytes at a time: the file syscall runs with
//! no lock held, and only the memory copy of each chunk runs under the locks that keep a session
//! apart from the next: the requesting window's copy gate (whose generation is checked before
//! every chunk, so a [`DaxWindow::reset`] waits for at most one chunk's memory copy, and no chunk
//! of an ended session lands after it returns, in guest RAM or in a window) and, for a window,
//! the window's lock (so the range cannot be remapped under the copy). A reset, a BAR move
//! ([`IoSpace::add_window`] / [`IoSpace::remove_window`]) or a reconnect therefore never waits for
//! a stalled file. A memory copy can itself wait where a page of the target faults in from a
//! file that stalls (a window range mapped from a file on a hung mount): that bound is the file
//! system's, as it is for the guest's own accesses to the page.
//!
//! # Other devices' windows
//!
//! One `IoSpace` can serve every virtio-fs device of a VM. A device's backend reaches guest RAM
//! and its own device's window; another device's window only when the VMM opted in with
//! [`IoSpace::cross_device`] (the guest passes a buffer mapped from one device's window to a
//! read or write on another device). Without the opt-in such a transfer is refused with `EFAULT`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemory, Permissions, VolatileSlice};

use crate::window::{DaxWindow, WindowLease};

/// Largest piece of a transfer between a file and memory moved at a time: the file syscall of a
/// chunk runs with no lock held, its memory copy under the session's copy gate (see the module
/// documentation). Also the size of the bounce buffer a transfer allocates at most.
pub const IO_CHUNK: usize = 256 << 10;

/// Errors of the IO path. [`Error::errno`] gives the errno a peer is told.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The range is not (entirely) guest RAM or a mapped range of a registered window with the
    /// access needed.
    #[error("guest address {gpa:#x} length {len:#x} is not accessible guest memory")]
    BadAddress {
        /// Guest physical address.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// A window registration overlaps another one.
    #[error("window at guest address {gpa:#x} size {size:#x} overlaps a registered window")]
    WindowOverlap {
        /// Guest physical address.
        gpa: u64,
        /// Size.
        size: u64,
    },
    /// The copy syscall failed.
    #[error("transfer at guest address {gpa:#x} failed")]
    Transfer {
        /// Guest physical address.
        gpa: u64,
        /// The syscall error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The errno that stands for this error on the wire.
    pub fn errno(&self) -> i32 {
        match self {
            Error::BadAddress { .. } => libc::EFAULT,
            Error::WindowOverlap { .. } => libc::EEXIST,
            Error::Transfer { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// Result of IO operations.
pub type Result<T> = std::result::Result<T, Error>;

/// What a transfer does with a host memory segment.
///
/// Not part of the stable API: the backend channel builds these from FS_IO and MEM_READ /
/// MEM_WRITE requests; it is public only for the benchmarks.
#[doc(hidden)]
pub enum Transfer<'a> {
    /// Read the file at this offset into memory (FS_IO without MAP_W).
    ReadFile(&'a File, u64),
    /// Write memory to the file at this offset (FS_IO with MAP_W).
    WriteFile(&'a File, u64),
    /// Copy memory into this buffer (MEM_READ).
    ToBuffer(&'a mut [u8]),
    /// Copy this buffer into memory (MEM_WRITE).
    FromBuffer(&'a [u8]),
    /// Move nothing: only check that the range is accessible as a transfer that stores into
    /// memory (or not) would need.
    Check {
        /// Whether the real transfer stores into guest memory.
        writes_memory: bool,
    },
}

impl std::fmt::Debug for Transfer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transfer::ReadFile(_, o) => write!(f, "ReadFile(@{o:#x})"),
            Transfer::WriteFile(_, o) => write!(f, "WriteFile(@{o:#x})"),
            Transfer::ToBuffer(b) => write!(f, "ToBuffer({})", b.len()),
            Transfer::FromBuffer(b) => write!(f, "FromBuffer({})", b.len()),
            Transfer::Check { writes_memory } => write!(f, "Check({writes_memory})"),
        }
    }
}

impl Transfer<'_> {
    /// True when the transfer stores into guest memory.
    fn writes_memory(&self) -> bool {
        match self {
            Transfer::ReadFile(..) | Transfer::FromBuffer(_) => true,
            Transfer::WriteFile(..) | Transfer::ToBuffer(_) => false,
            Transfer::Check { writes_memory } => *writes_memory,
        }
    }
}

/// The file offset `done` bytes past `base`, as the kernel takes it.
fn file_offset(base: u64, done: usize) -> io::Result<u64> {
    base.checked_add(done as u64)
        .filter(|o| i64::try_from(*o).is_ok())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

/// Reads the file at `off` into `buf` until it is full or the file ends; returns the bytes read.
fn read_file(file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], file_offset(off, got)?) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Writes all of `buf` to the file at `off`.
fn write_file(file: &File, buf: &[u8], off: u64) -> io::Result<()> {
    let mut put = 0;
    while put < buf.len() {
        match file.write_at(&buf[put..], file_offset(off, put)?) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => put += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

thread_local! {
    /// The bounce buffer of the thread's transfers, [`IO_CHUNK`] bytes once a file transfer ran
    /// on the thread: allocated once, so a transfer costs no allocation and no page faults.
    static BOUNCE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with the thread's bounce buffer ([`IO_CHUNK`] bytes).
fn with_bounce<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    BOUNCE.with(|b| match b.try_borrow_mut() {
        Ok(mut buf) => {
            buf.resize(IO_CHUNK, 0);
            f(&mut buf)
        }
        // Only a transfer nested in another on one thread would find it taken; none is, and a
        // buffer of its own keeps even that case correct.
        Err(_) => f(&mut vec![0; IO_CHUNK]),
    })
}

/// File systems whose reads and writes of a chunk end in bounded time (local disks and memory):
/// a transfer with a file on one of these does its file syscall straight on the target memory
/// under the session's copy gate. Any other file (FUSE, NFS, 9p, CIFS, ... whose server can
/// stall for ever) goes through the bounce buffer, with no lock held across the file syscall.
const BOUNDED_FS: [i64; 7] = [
    0x0102_1994, // tmpfs (memfd, /dev/shm)
    0x9584_58f6, // hugetlbfs (hugetlb memfd)
    0xef53,      // ext2, ext3, ext4
    0x5846_5342, // xfs
    0x9123_683e, // btrfs
    0xf2f5_2010, // f2fs
    0x2fc1_2fc1, // zfs
];

/// Whether a chunk of IO on `file` ends in bounded time (see [`BOUNDED_FS`]).
fn bounded_file(file: &File) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs writes at most one `statfs` into the buffer, which is large enough and
    // lives across the call; the descriptor is borrowed from a live `File`.
    let ret = unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) };
    if ret != 0 {
        return false;
    }
    // SAFETY: fstatfs returned 0, so it filled the whole struct.
    let f_type = unsafe { st.assume_init() }.f_type;
    // `f_type` is i64 on glibc's 64-bit targets and an unsigned long on musl: widen, keep bits.
    #[allow(clippy::unnecessary_cast)]
    let f_type = f_type as i64;
    BOUNDED_FS.contains(&f_type)
}

/// A memory copy between guest memory and a local buffer or a file: what runs under the locks.
///
/// Not part of the stable API (it crosses the sealed [`GuestRam`] trait only).
#[doc(hidden)]
#[derive(Debug)]
pub enum MemCopy<'a> {
    /// Copy guest memory into this buffer.
    Out(&'a mut [u8]),
    /// Copy this buffer into guest memory.
    In(&'a [u8]),
    /// Read `len` bytes of the file at this offset straight into guest memory (a file whose IO
    /// ends in bounded time).
    FileIn(&'a File, u64, u64),
    /// Write `len` bytes of guest memory straight to the file at this offset (as above).
    FileOut(&'a File, u64, u64),
    /// Move nothing: only check `len` bytes are accessible as a copy that stores into memory
    /// (or not) would need.
    Check {
        /// Bytes to check.
        len: u64,
        /// Whether the real copy stores into guest memory.
        writes_memory: bool,
    },
}

impl MemCopy<'_> {
    /// True when the copy stores into guest memory.
    fn writes_memory(&self) -> bool {
        match self {
            MemCopy::In(_) | MemCopy::FileIn(..) => true,
            MemCopy::Out(_) | MemCopy::FileOut(..) => false,
            MemCopy::Check { writes_memory, .. } => *writes_memory,
        }
    }

    /// Bytes the copy moves (or checks).
    fn len(&self) -> u64 {
        match self {
            MemCopy::In(b) => b.len() as u64,
            MemCopy::Out(b) => b.len() as u64,
            MemCopy::FileIn(_, _, len) | MemCopy::FileOut(_, _, len) => *len,
            MemCopy::Check { len, .. } => *len,
        }
    }

    /// Moves up to `len` bytes at host address `addr`, `done` bytes into the copy, with the
    /// kernel doing the access (a fault is `EFAULT`, never a signal). Returns the bytes moved;
    /// 0 only at end of file.
    fn step(&mut self, addr: usize, len: usize, done: usize) -> io::Result<usize> {
        let ptr = addr as *mut libc::c_void;
        let remote = libc::iovec {
            iov_base: ptr,
            iov_len: len,
        };
        let ret = match self {
            MemCopy::Check { .. } => return Ok(len),
            MemCopy::FileIn(file, off, _) => {
                let at = file_offset(*off, done)? as i64;
                // SAFETY: `addr..addr + len` lies inside a live mapping the caller holds (a
                // window range under the window's lock, or a guest RAM slice under the guest
                // memory guard). The kernel does the access: a fault yields EFAULT, not a
                // signal, and no Rust reference to that memory exists.
                unsafe { libc::pread64(file.as_raw_fd(), ptr, len, at) }
            }
            MemCopy::FileOut(file, off, _) => {
                let at = file_offset(*off, done)? as i64;
                // SAFETY: as for pread64 above; the kernel only reads the range.
                unsafe { libc::pwrite64(file.as_raw_fd(), ptr, len, at) }
            }
            MemCopy::Out(buf) => {
                let local = buf
                    .get_mut(done..done + len)
                    .ok_or(io::ErrorKind::InvalidInput)?;
                let l = libc::iovec {
                    iov_base: local.as_mut_ptr().cast(),
                    iov_len: len,
                };
                // SAFETY: `local` is a live exclusive borrow of `len` bytes; the remote range is
                // as for pread64 above. Our own pid is always allowed.
                unsafe { libc::process_vm_readv(libc::getpid(), &l, 1, &remote, 1, 0) }
            }
            MemCopy::In(buf) => {
                let local = buf
                    .get(done..done + len)
                    .ok_or(io::ErrorKind::InvalidInput)?;
                let l = libc::iovec {
                    iov_base: local.as_ptr() as *mut _,
                    iov_len: len,
                };
                // SAFETY: `local` is a live borrow of `len` bytes the kernel only reads; the
                // remote range is as for pread64 above.
                unsafe { libc::process_vm_writev(libc::getpid(), &l, 1, &remote, 1, 0) }
            }
        };
        match usize::try_from(ret) {
            // Only a read of a file ends early; a write or a memory copy that moves nothing of
            // a non-empty range would loop for ever.
            Ok(0) if len > 0 && !matches!(self, MemCopy::FileIn(..)) => {
                Err(io::Error::from_raw_os_error(libc::EFAULT))
            }
            Ok(n) => Ok(n),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }

    /// Moves `len` bytes at `addr`, looping over short counts; `Ok(false)` when the file ended
    /// first. `done` counts what was moved, also when a later part fails.
    fn run(&mut self, addr: usize, len: usize, done: &mut usize) -> io::Result<bool> {
        let mut at = 0;
        while at < len {
            match self.step(addr + at, len - at, *done) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    at += n;
                    *done += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Guest RAM as the IO path sees it: what [`IoSpace::with_guest_memory`] takes. Implemented for
/// every vm-memory [`GuestAddressSpace`] (`GuestMemoryAtomic<GuestMemoryMmap>`,
/// `Arc<GuestMemoryMmap>`, ...).
///
/// The trait is sealed: the IO path relies on vm-memory's checks of a range and its slices, so
/// nothing else implements it.
pub trait GuestRam: sealed::GuestRamTransfer + Send + Sync {}

impl<S> GuestRam for S
where
    S: GuestAddressSpace + Send + Sync,
    S::M: GuestMemory,
{
}

mod sealed {
    use super::{MemCopy, Result};

    /// The private half of [`GuestRam`](super::GuestRam).
    pub trait GuestRamTransfer {
        /// Runs `copy` over `[gpa, gpa + len)` if it is all guest RAM; returns the bytes moved.
        fn copy(&self, gpa: u64, len: u64, copy: &mut MemCopy<'_>) -> Result<usize>;
    }
}

/// Runs `copy` over `slices`; returns the bytes moved. Guest RAM is the VMM's own memory, so a
/// buffer copy is a plain memory copy (vm-memory's, which marks what it stores in the dirty
/// bitmap); a file's IO goes straight to the slices, and what it stored is marked dirty also
/// when a later part fails.
fn slices_copy<B: BitmapSlice>(
    slices: Vec<VolatileSlice<'_, B>>,
    gpa: u64,
    copy: &mut MemCopy<'_>,
) -> Result<usize> {
    let mut done = 0;
    for s in &slices {
        let n = s.len();
        match copy {
            MemCopy::In(buf) => s.copy_from(&buf[done..done + n]),
            MemCopy::Out(buf) => {
                s.copy_to(&mut buf[done..done + n]);
            }
            MemCopy::Check { .. } => {}
            MemCopy::FileIn(..) | MemCopy::FileOut(..) => {
                let before = done;
                let res = copy.run(s.ptr_guard_mut().as_ptr() as usize, n, &mut done);
                if copy.writes_memory() && done > before {
                    s.bitmap().mark_dirty(0, done - before);
                }
                match res {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(source) => return Err(Error::Transfer { gpa, source }),
                }
            }
        }
        done += n;
    }
    Ok(done)
}

impl<S> sealed::GuestRamTransfer for S
where
    S: GuestAddressSpace + Send + Sync,
    S::M: GuestMemory,
{
    fn copy(&self, gpa: u64, len: u64, copy: &mut MemCopy<'_>) -> Result<usize> {
        let bad = || Error::BadAddress { gpa, len };
        let count = usize::try_from(len).map_err(|_| bad())?;
        let mem = self.memory();
        let access = if copy.writes_memory() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(GuestAddress(gpa), count, access) {
            return Err(bad());
        }
        let slices = mem
            .get_slices(GuestAddress(gpa), count, access)
            .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|_| bad())?;
        slices_copy(slices, gpa, copy)
    }
}

#[derive(Debug)]
struct WindowSlot {
    gpa: u64,
    window: Arc<DaxWindow>,
}

/// Who asks for a transfer: the session of one device's backend channel.
///
/// Not part of the stable API (the backend channel builds it; public for the benchmarks).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Requester<'a> {
    /// The requesting device's window, in the generation of the session: its copies stop when
    /// that generation ends, and it is the window the transfer may reach without
    /// [`IoSpace::cross_device`].
    pub lease: Option<&'a WindowLease>,
    /// The session's own gate (ended when its channel thread is stopped), for a session with
    /// no window to end.
    pub gate: Option<&'a CopyGate>,
}

/// A session's gate for copies into memory: once ended (a channel thread stopped, even when it
/// did not stop in time because a file syscall stalls), no further copy of that session runs,
/// and ending it waits for a copy in progress (a bounded memory copy).
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct CopyGate {
    ended: RwLock<bool>,
}

impl CopyGate {
    /// Ends the gate: waits for a copy in progress; refuses every copy from now on.
    pub fn end(&self) {
        *self.ended.write().unwrap_or_else(|p| p.into_inner()) = true;
    }

    /// Whether the gate was ended.
    pub fn is_ended(&self) -> bool {
        *self.ended.read().unwrap_or_else(|p| p.into_inner())
    }

    fn enter(&self) -> Option<RwLockReadGuard<'_, bool>> {
        let guard = self.ended.read().unwrap_or_else(|p| p.into_inner());
        (!*guard).then_some(guard)
    }
}

/// Where a transfer lands: guest RAM, or a range of a registered window.
enum Target {
    Ram,
    Window { window: Arc<DaxWindow>, offset: u64 },
}

/// The guest physical address space the IO path serves: guest RAM plus every registered DAX
/// window. One `IoSpace` may be shared (as `Arc`) by all the virtio-fs devices of a VM; IO into
/// another device's window then needs [`IoSpace::cross_device`].
#[derive(Default)]
pub struct IoSpace {
    ram: Option<Box<dyn GuestRam>>,
    windows: RwLock<Vec<WindowSlot>>,
    cross_device: bool,
}

impl std::fmt::Debug for IoSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoSpace")
            .field("ram", &self.ram.is_some())
            .field("windows", &self.windows)
            .field("cross_device", &self.cross_device)
            .finish()
    }
}

impl IoSpace {
    /// An address space with no guest RAM and no window: every IO is refused with `EFAULT`.
    pub fn new() -> Self {
        Self::default()
    }

    /// An address space over `ram`, typically a `GuestMemoryAtomic<GuestMemoryMmap>` (which
    /// follows memory hotplug by itself).
    pub fn with_guest_memory(ram: impl GuestRam + 'static) -> Self {
        IoSpace {
            ram: Some(Box::new(ram)),
            ..Self::default()
        }
    }

    /// Lets a device's backend reach the windows of the other devices registered here (`true`),
    /// or only guest RAM and its own device's window (`false`, the default). Opt in when the
    /// devices of one VM share this space and their guest may pass a buffer mapped from one
    /// device's window to IO on another (each backend then reads and writes what the other
    /// devices' backends mapped: give it only to devices whose backends are trusted alike).
    pub fn cross_device(mut self, allow: bool) -> Self {
        self.cross_device = allow;
        self
    }

    /// Whether IO into another device's window is allowed ([`IoSpace::cross_device`]).
    pub fn allows_cross_device(&self) -> bool {
        self.cross_device
    }

    /// Registers `window` at guest physical address `gpa`. Call again after a BAR move (remove,
    /// then add at the new address). Never waits for a transfer in progress.
    pub fn add_window(&self, gpa: u64, window: Arc<DaxWindow>) -> Result<()> {
        let size = window.size();
        let overlap = Error::WindowOverlap { gpa, size };
        let end = gpa
            .checked_add(size)
            .ok_or(Error::WindowOverlap { gpa, size })?;
        let mut windows = self.windows.write().unwrap_or_else(|p| p.into_inner());
        if windows
            .iter()
            .any(|s| s.gpa < end && gpa < s.gpa + s.window.size())
        {
            return Err(overlap);
        }
        windows.push(WindowSlot { gpa, window });
        Ok(())
    }

    /// Forgets the window registered at `gpa`; returns it if there was one. Never waits for a
    /// transfer in progress (one that resolved the window before goes on copying into it by its
    /// offset in the window, not by its guest address).
    pub fn remove_window(&self, gpa: u64) -> Option<Arc<DaxWindow>> {
        let mut windows = self.windows.write().unwrap_or_else(|p| p.into_inner());
        let i = windows.iter().position(|s| s.gpa == gpa)?;
        Some(windows.swap_remove(i).window)
    }

    /// Resolves `[gpa, gpa + len)` for `from`: a window range when it lies in a registered
    /// window it may reach, guest RAM otherwise (checked when copying). The list's lock is held
    /// for the lookup only.
    fn resolve(&self, from: &Requester<'_>, gpa: u64, len: u64) -> Result<Target> {
        let bad = Error::BadAddress { gpa, len };
        let end = gpa.checked_add(len).ok_or(Error::BadAddress { gpa, len })?;
        let windows = self.windows.read().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = windows
            .iter()
            .find(|s| gpa < s.gpa + s.window.size() && s.gpa < end)
        else {
            return Ok(Target::Ram);
        };
        let own = from
            .lease
            .is_some_and(|l| Arc::ptr_eq(l.window(), &slot.window));
        if (!own && !self.cross_device) || gpa < slot.gpa || end > slot.gpa + slot.window.size() {
            return Err(bad);
        }
        Ok(Target::Window {
            window: slot.window.clone(),
            offset: gpa - slot.gpa,
        })
    }

    /// One memory copy of a transfer, `at` bytes into `[gpa, ..)`, under the requester's gates
    /// (and, for a window, under that window's lock); returns the bytes moved (fewer only at
    /// the end of a file).
    fn copy(
        &self,
        from: &Requester<'_>,
        target: &Target,
        gpa: u64,
        at: usize,
        copy: &mut MemCopy<'_>,
    ) -> Result<usize> {
        let (gpa, len) = (gpa + at as u64, copy.len());
        let stale = || Error::Transfer {
            gpa,
            source: io::Error::from_raw_os_error(libc::ESTALE),
        };
        let _gate = match from.gate {
            Some(g) => Some(g.enter().ok_or_else(stale)?),
            None => None,
        };
        let _generation = match from.lease {
            Some(l) => Some(l.window().enter_copy(l.generation()).ok_or_else(stale)?),
            None => None,
        };
        match target {
            Target::Window { window, offset } => {
                let write = copy.writes_memory();
                let count = usize::try_from(len).map_err(|_| Error::BadAddress { gpa, len })?;
                window
                    .with_mapped(offset + at as u64, len, write, |addr| {
                        let mut done = 0;
                        copy.run(addr, count, &mut done)
                            .map(|_| done)
                            .map_err(|source| Error::Transfer { gpa, source })
                    })
                    .unwrap_or(Err(Error::BadAddress { gpa, len }))
            }
            Target::Ram => match &self.ram {
                Some(ram) => ram.copy(gpa, len, copy),
                None => Err(Error::BadAddress { gpa, len }),
            },
        }
    }

    /// Runs `transfer` over `[gpa, gpa + len)` for `from`. The range must lie entirely in guest
    /// RAM or entirely in live mappings of one registered window that `from` may reach (writable
    /// ones when the transfer stores into memory); it is checked whole before anything moves.
    /// Returns the bytes moved: less than `len` only at end of file. Moves [`IO_CHUNK`] bytes at
    /// a time; a file that may stall is read or written through a bounce buffer with no lock
    /// held (see the module documentation). A transfer that fails part way leaves the chunks
    /// before it done, and what reached guest RAM marked dirty.
    ///
    /// Not part of the stable API (the backend channel's, public for the benchmarks).
    #[doc(hidden)]
    pub fn transfer(
        &self,
        from: &Requester<'_>,
        gpa: u64,
        len: u64,
        transfer: Transfer<'_>,
    ) -> Result<u64> {
        let target = self.resolve(from, gpa, len)?;
        let count = usize::try_from(len).map_err(|_| Error::BadAddress { gpa, len })?;
        let writes_memory = transfer.writes_memory();
        // The whole range first (and the session still current), before a byte moves.
        let mut check = MemCopy::Check { len, writes_memory };
        self.copy(from, &target, gpa, 0, &mut check)?;
        let io_error = |source| Error::Transfer { gpa, source };
        let mut done = 0;
        match transfer {
            Transfer::Check { .. } => done = count,
            Transfer::ToBuffer(buf) => {
                let buf = buf.get_mut(..count).ok_or(Error::BadAddress { gpa, len })?;
                for chunk in buf.chunks_mut(IO_CHUNK) {
                    done += self.copy(from, &target, gpa, done, &mut MemCopy::Out(chunk))?;
                }
            }
            Transfer::FromBuffer(buf) => {
                let buf = buf.get(..count).ok_or(Error::BadAddress { gpa, len })?;
                for chunk in buf.chunks(IO_CHUNK) {
                    done += self.copy(from, &target, gpa, done, &mut MemCopy::In(chunk))?;
                }
            }
            Transfer::ReadFile(file, off) if bounded_file(file) => {
                while done < count {
                    let want = (count - done).min(IO_CHUNK);
                    let at = file_offset(off, done).map_err(io_error)?;
                    let chunk = &mut MemCopy::FileIn(file, at, want as u64);
                    let got = self.copy(from, &target, gpa, done, chunk)?;
                    done += got;
                    if got < want {
                        break;
                    }
                }
            }
            Transfer::WriteFile(file, off) if bounded_file(file) => {
                while done < count {
                    let n = (count - done).min(IO_CHUNK);
                    let at = file_offset(off, done).map_err(io_error)?;
                    let chunk = &mut MemCopy::FileOut(file, at, n as u64);
                    done += self.copy(from, &target, gpa, done, chunk)?;
                }
            }
            Transfer::ReadFile(file, off) => with_bounce(|bounce| {
                while done < count {
                    let want = (count - done).min(IO_CHUNK);
                    let at = file_offset(off, done).map_err(io_error)?;
                    // No lock held: this may wait as long as the file system does.
                    let got = read_file(file, &mut bounce[..want], at).map_err(io_error)?;
                    if got == 0 {
                        break;
                    }
                    let chunk = &mut MemCopy::In(&bounce[..got]);
                    done += self.copy(from, &target, gpa, done, chunk)?;
                    if got < want {
                        break;
                    }
                }
                Ok(())
            })?,
            Transfer::WriteFile(file, off) => with_bounce(|bounce| {
                while done < count {
                    let n = (count - done).min(IO_CHUNK);
                    let at = file_offset(off, done).map_err(io_error)?;
                    let chunk = &mut MemCopy::Out(&mut bounce[..n]);
                    self.copy(from, &target, gpa, done, chunk)?;
                    // No lock held: this may wait as long as the file system does.
                    write_file(file, &bounce[..n], at).map_err(io_error)?;
                    done += n;
                }
                Ok(())
            })?,
        }
        Ok(done as u64)
    }
}
