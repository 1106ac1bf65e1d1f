// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A simulated guest driver, for running a virtio-fs device end to end where no guest kernel can
//! boot (feature `test-utils`).
//!
//! - [`memfd_guest_memory`]: guest RAM backed by a memfd, so a vhost-user backend can map it.
//! - [`SplitQueueDriver`]: the driver side of a split virtqueue in that RAM. It lays the rings
//!   out, hands the device a configured [`ActivateQueue`], adds descriptor chains, kicks and
//!   waits for used buffers.
//! - [`fuse`]: the FUSE wire structures of the Linux uapi `fuse.h` (protocol 7.31 and later,
//!   with the virtio-fs DAX requests `FUSE_SETUPMAPPING` / `FUSE_REMOVEMAPPING`), a request
//!   builder and a reply parser.
//! - [`FuseSession`]: a FUSE client over a request queue: INIT, LOOKUP, GETATTR, OPEN, READ,
//!   WRITE, SETUPMAPPING, REMOVEMAPPING, RELEASE, FORGET, one request at a time.
//! - [`guest_read`] / [`guest_write`]: guest loads and stores in the DAX window at its guest
//!   address, limited to live mappings.
//!
//! # Example
//!
//! The driver and a device side in the same process (the device side being what a vhost-user
//! backend does with the queue):
//!
//! ```
//! use virtio_fs_dax::test_utils::{memfd_guest_memory, SplitQueueDriver};
//! use virtio_queue::QueueT;
//! use vm_memory::{Bytes, GuestAddress};
//!
//! let mem = memfd_guest_memory(4 << 20).unwrap();
//! let mut driver = SplitQueueDriver::new(mem.clone(), GuestAddress(0x10_0000), 16).unwrap();
//! let mut device = driver.activate_queue(1).unwrap();
//!
//! mem.write_slice(b"ping", GuestAddress(0x20_0000)).unwrap();
//! let head = driver
//!     .add_chain(&[(GuestAddress(0x20_0000), 4)], &[(GuestAddress(0x20_1000), 4)])
//!     .unwrap();
//! driver.kick().unwrap();
//!
//! // Device side: take the chain, answer, return it.
//! let chain = device.queue.pop_descriptor_chain(&mem).unwrap();
//! let descs: Vec<_> = chain.collect();
//! assert!(!descs[0].is_write_only() && descs[1].is_write_only());
//! mem.write_slice(b"pong", descs[1].addr()).unwrap();
//! device.queue.add_used(&mem, head, 4).unwrap();
//!
//! assert_eq!(driver.wait_used(std::time::Duration::from_secs(1)), Some((head, 4)));
//! let mut reply = [0u8; 4];
//! mem.read_slice(&mut reply, GuestAddress(0x20_1000)).unwrap();
//! assert_eq!(&reply, b"pong");
//! ```

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::volatile_memory::VolatileSlice;
use vm_memory::{
    Address, ByteValued, Bytes, FileOffset, GuestAddress, GuestMemoryError, GuestMemoryMmap,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::ActivateQueue;
use crate::protocol::Access;
use crate::window::DaxWindow;

use self::fuse::*;

/// Errors of the simulated guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A guest memory access failed.
    #[error("guest memory")]
    Memory(#[from] GuestMemoryError),
    /// An eventfd or memfd operation failed.
    #[error("I/O")]
    Io(#[from] io::Error),
    /// The virtqueue was set up wrongly (size not a power of two, rings outside guest memory).
    #[error("bad queue: {0}")]
    BadQueue(&'static str),
    /// Not enough free descriptors for the chain.
    #[error("{needed} descriptors needed, {free} free")]
    QueueFull {
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors free.
        free: usize,
    },
    /// The device returned nothing in time.
    #[error("no reply to FUSE opcode {opcode} within {timeout:?}")]
    Timeout {
        /// The request's opcode.
        opcode: u32,
        /// How long it waited.
        timeout: Duration,
    },
    /// The device returned a used buffer other than the one in flight.
    #[error("used buffer {got}, expected {expected}")]
    WrongHead {
        /// Head returned.
        got: u16,
        /// Head in flight.
        expected: u16,
    },
    /// The reply is malformed.
    #[error("bad FUSE reply: {0}")]
    BadReply(String),
    /// The backend answered with an error: `error` is the negative errno of `fuse_out_header`.
    #[error("FUSE opcode {opcode} failed with errno {}", -error)]
    Fuse {
        /// The request's opcode.
        opcode: u32,
        /// Negative errno, as in `fuse_out_header.error`.
        error: i32,
    },
    /// The request or reply does not fit the session's scratch buffers.
    #[error("{len} bytes do not fit the {room} byte scratch buffer")]
    TooLarge {
        /// Bytes needed.
        len: usize,
        /// Bytes available.
        room: usize,
    },
    /// A guest access to the DAX window outside the window.
    #[error("guest access {gpa:#x}+{len:#x} is outside the window")]
    OutsideWindow {
        /// Guest physical address.
        gpa: u64,
        /// Length.
        len: usize,
    },
    /// A guest access to the DAX window touches a page that is not mapped (or, for a store, not
    /// mapped writable). A real guest would take a fault there.
    #[error("guest access {gpa:#x}+{len:#x} touches unmapped window pages")]
    Unmapped {
        /// Guest physical address.
        gpa: u64,
        /// Length.
        len: usize,
    },
}

impl GuestError {
    /// The negative errno of a FUSE error reply, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            GuestError::Fuse { error, .. } => Some(*error),
            _ => None,
        }
    }
}

/// Result of guest operations.
pub type Result<T> = std::result::Result<T, GuestError>;

/// Guest RAM of `size` bytes at guest address 0, backed by a memfd, so that the vhost-user
/// memory table can share it with a backend.
pub fn memfd_guest_memory(size: usize) -> io::Result<GuestMemoryMmap> {
    let name = c"virtio-fs-dax-guest-ram";
    // SAFETY: memfd_create reads a valid NUL-terminated string and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64)?;
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        size,
        Some(FileOffset::new(file, 0)),
    )])
    .map_err(|e| io::Error::other(format!("guest memory: {e:?}")))
}

/// `VRING_DESC_F_NEXT`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`.
pub const VRING_DESC_F_WRITE: u16 = 2;

/// The driver side of a split virtqueue living in guest memory.
///
/// The descriptor table, available ring and used ring are laid out one after the other from the
/// base address given to [`SplitQueueDriver::new`]; they take
/// [`SplitQueueDriver::footprint`] bytes, which the caller keeps for the queue. Descriptors are
/// allocated from a free list and given back when their chain comes back in the used ring.
///
/// Memory ordering follows the virtio specification: descriptors and the ring entry are written
/// before the available index is published with a release store, a full fence separates that
/// from the kick, and the used index is read with an acquire load before its entries.
#[derive(Debug)]
pub struct SplitQueueDriver {
    mem: GuestMemoryMmap,
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    kick: EventFd,
    call: EventFd,
    free: Vec<u16>,
    /// For each head in flight, the descriptors of its chain.
    chains: Vec<Option<Vec<u16>>>,
    next_avail: u16,
    last_used: u16,
}

impl SplitQueueDriver {
    /// Bytes of guest memory the rings of a queue of `size` take (16-byte aligned base).
    pub fn footprint(size: u16) -> u64 {
        let (_, _, used) = Self::layout(GuestAddress(0), size);
        used.0 + 6 + 8 * u64::from(size)
    }

    fn layout(base: GuestAddress, size: u16) -> (GuestAddress, GuestAddress, GuestAddress) {
        let avail = base.0 + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4);
        (base, GuestAddress(avail), GuestAddress(used))
    }

    /// A queue of `size` descriptors (a power of two, at most 32768) with its rings at `base`
    /// (16-byte aligned) in `mem`. The rings are zeroed.
    pub fn new(mem: GuestMemoryMmap, base: GuestAddress, size: u16) -> Result<Self> {
        if size == 0 || !size.is_power_of_two() || size > crate::device::MAX_QUEUE_SIZE {
            return Err(GuestError::BadQueue(
                "size is not a power of two of at most 32768",
            ));
        }
        if !base.0.is_multiple_of(16) {
            return Err(GuestError::BadQueue("base is not 16-byte aligned"));
        }
        let (desc, avail, used) = Self::layout(base, size);
        mem.write_slice(&vec![0u8; Self::footprint(size) as usize], base)?;
        Ok(SplitQueueDriver {
            mem,
            size,
            desc,
            avail,
            used,
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
            free: (0..size).rev().collect(),
            chains: vec![None; usize::from(size)],
            next_avail: 0,
            last_used: 0,
        })
    }

    /// A new driver on the same queue, as after a device reset: the rings zeroed and the
    /// driver's state back to the start, the kick and call eventfds kept (drained), as a VMM's
    /// transport keeps its eventfds across resets.
    pub fn restart(&mut self) -> Result<()> {
        self.mem
            .write_slice(&vec![0u8; Self::footprint(self.size) as usize], self.desc)?;
        self.free = (0..self.size).rev().collect();
        self.chains = vec![None; usize::from(self.size)];
        self.next_avail = 0;
        self.last_used = 0;
        let _ = self.kick.read();
        let _ = self.call.read();
        Ok(())
    }

    /// The guest memory the queue lives in.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest addresses of the descriptor table, available ring and used ring.
    pub fn addresses(&self) -> (GuestAddress, GuestAddress, GuestAddress) {
        (self.desc, self.avail, self.used)
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// The kick eventfd (the guest's notification; the device reads it).
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The call eventfd (the device's interrupt; the driver reads it).
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// What the driver tells the device at `DRIVER_OK` for queue `index`: a [`Queue`] with this
    /// driver's size and ring addresses, ready, and duplicates of the kick and call eventfds.
    pub fn activate_queue(&self, index: usize) -> Result<ActivateQueue> {
        let mut queue = Queue::new(self.size).map_err(|_| GuestError::BadQueue("queue size"))?;
        queue.set_size(self.size);
        let split = |a: GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
        let (lo, hi) = split(self.desc);
        queue.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail);
        queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used);
        queue.set_used_ring_address(lo, hi);
        queue.set_ready(true);
        Ok(ActivateQueue {
            index,
            queue,
            kick: self.kick.try_clone()?,
            call: self.call.try_clone()?,
        })
    }

    /// Adds a chain of device-readable buffers followed by device-writable ones (guest address
    /// and length each), publishes it in the available ring and returns its head. Does not kick.
    pub fn add_chain(
        &mut self,
        readable: &[(GuestAddress, u32)],
        writable: &[(GuestAddress, u32)],
    ) -> Result<u16> {
        let needed = readable.len() + writable.len();
        if needed == 0 {
            return Err(GuestError::BadQueue("empty chain"));
        }
        if needed > self.free.len() {
            return Err(GuestError::QueueFull {
                needed,
                free: self.free.len(),
            });
        }
        let ids: Vec<u16> = (0..needed).map(|_| self.free.pop().unwrap()).collect();
        let bufs = readable
            .iter()
            .map(|b| (b, 0))
            .chain(writable.iter().map(|b| (b, VRING_DESC_F_WRITE)));
        for (i, (&(addr, len), write)) in bufs.enumerate() {
            let last = i + 1 == needed;
            let flags = write | if last { 0 } else { VRING_DESC_F_NEXT };
            let next = if last { 0 } else { ids[i + 1] };
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.0.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            let at = self.desc.unchecked_add(16 * u64::from(ids[i]));
            if let Err(e) = self.mem.write_slice(&d, at) {
                self.free.extend(ids.iter().rev());
                return Err(e.into());
            }
        }
        let head = ids[0];
        self.chains[usize::from(head)] = Some(ids);
        // avail: flags u16, idx u16, ring[size] u16, used_event u16.
        let slot = self
            .avail
            .unchecked_add(4 + 2 * u64::from(self.next_avail % self.size));
        self.mem.write_obj(head.to_le(), slot)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        // The descriptors and ring entry are visible before the index that publishes them.
        fence(Ordering::Release);
        self.mem.store(
            self.next_avail.to_le(),
            self.avail.unchecked_add(2),
            Ordering::Release,
        )?;
        Ok(head)
    }

    /// Notifies the device (writes the kick eventfd). Always notifies: notification suppression
    /// by the device is only an optimization.
    pub fn kick(&self) -> Result<()> {
        // The published index is visible before the notification.
        fence(Ordering::SeqCst);
        self.kick.write(1)?;
        Ok(())
    }

    /// The next used buffer, if there is one: its head and the length the device wrote. Its
    /// descriptors are freed.
    pub fn pop_used(&mut self) -> Result<Option<(u16, u32)>> {
        let used_idx: u16 = u16::from_le(
            self.mem
                .load(self.used.unchecked_add(2), Ordering::Acquire)?,
        );
        if used_idx == self.last_used {
            // Ask for an interrupt at the next used buffer (honoured with EVENT_IDX).
            let used_event = self.avail.unchecked_add(4 + 2 * u64::from(self.size));
            self.mem
                .store(self.last_used.to_le(), used_event, Ordering::Release)?;
            fence(Ordering::SeqCst);
            let again: u16 = u16::from_le(
                self.mem
                    .load(self.used.unchecked_add(2), Ordering::Acquire)?,
            );
            if again == self.last_used {
                return Ok(None);
            }
        }
        // used: flags u16, idx u16, ring[size] of (id u32, len u32), avail_event u16.
        let elem = self
            .used
            .unchecked_add(4 + 8 * u64::from(self.last_used % self.size));
        let id = u32::from_le(self.mem.read_obj::<u32>(elem)?);
        let len = u32::from_le(self.mem.read_obj::<u32>(elem.unchecked_add(4))?);
        self.last_used = self.last_used.wrapping_add(1);
        let chain = u16::try_from(id)
            .ok()
            .and_then(|h| self.chains.get_mut(usize::from(h)))
            .and_then(Option::take)
            .ok_or(GuestError::BadQueue(
                "the device returned a head not in flight",
            ))?;
        self.free.extend(chain.iter().rev());
        Ok(Some((id as u16, len)))
    }

    /// Waits up to `timeout` for the next used buffer, polling the used ring and sleeping on
    /// the call eventfd in between. `None` on timeout or when the used ring is broken.
    pub fn wait_used(&mut self, timeout: Duration) -> Option<(u16, u32)> {
        self.try_wait_used(timeout).ok().flatten()
    }

    /// [`SplitQueueDriver::wait_used`] with errors.
    pub fn try_wait_used(&mut self, timeout: Duration) -> Result<Option<(u16, u32)>> {
        let start = Instant::now();
        loop {
            if let Some(used) = self.pop_used()? {
                return Ok(Some(used));
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(None);
            }
            // Sleep on the call eventfd, but not long: without interrupts (suppressed, or a
            // device that does not signal) the used ring is polled anyway.
            let mut pfd = libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, 10) as libc::c_int;
            // SAFETY: `pfd` is one valid pollfd that outlives the call.
            unsafe { libc::poll(&mut pfd, 1, ms) };
            // Drain the interrupt (non-blocking; EAGAIN when there was none).
            let _ = self.call.read();
        }
    }
}

/// The FUSE wire format of the Linux uapi `<linux/fuse.h>` (little endian, as virtio-fs
/// requires), as far as this simulator uses it.
pub mod fuse {
    use vm_memory::ByteValued;

    /// FUSE major version.
    pub const FUSE_KERNEL_VERSION: u32 = 7;
    /// FUSE minor version the simulated guest speaks.
    pub const FUSE_KERNEL_MINOR_VERSION: u32 = 38;
    /// Root inode.
    pub const FUSE_ROOT_ID: u64 = 1;

    /// `FUSE_LOOKUP`.
    pub const FUSE_LOOKUP: u32 = 1;
    /// `FUSE_FORGET` (no reply).
    pub const FUSE_FORGET: u32 = 2;
    /// `FUSE_GETATTR`.
    pub const FUSE_GETATTR: u32 = 3;
    /// `FUSE_OPEN`.
    pub const FUSE_OPEN: u32 = 14;
    /// `FUSE_READ`.
    pub const FUSE_READ: u32 = 15;
    /// `FUSE_WRITE`.
    pub const FUSE_WRITE: u32 = 16;
    /// `FUSE_RELEASE`.
    pub const FUSE_RELEASE: u32 = 18;
    /// `FUSE_INIT`.
    pub const FUSE_INIT: u32 = 26;
    /// `FUSE_SETUPMAPPING` (virtio-fs DAX).
    pub const FUSE_SETUPMAPPING: u32 = 48;
    /// `FUSE_REMOVEMAPPING` (virtio-fs DAX).
    pub const FUSE_REMOVEMAPPING: u32 = 49;

    /// INIT flag `FUSE_ASYNC_READ`.
    pub const FUSE_ASYNC_READ: u64 = 1 << 0;
    /// INIT flag `FUSE_BIG_WRITES`.
    pub const FUSE_BIG_WRITES: u64 = 1 << 5;
    /// INIT flag `FUSE_MAX_PAGES`.
    pub const FUSE_MAX_PAGES: u64 = 1 << 22;
    /// INIT flag `FUSE_MAP_ALIGNMENT`: the guest mounted with DAX; the reply's
    /// `map_alignment` is the log2 of the alignment of SETUPMAPPING offsets.
    pub const FUSE_MAP_ALIGNMENT: u64 = 1 << 26;
    /// INIT flag `FUSE_INIT_EXT`: `flags2` is valid.
    pub const FUSE_INIT_EXT: u64 = 1 << 30;
    /// INIT flag (in `flags2`) `FUSE_HAS_INODE_DAX`: per-inode DAX.
    pub const FUSE_HAS_INODE_DAX: u64 = 1 << 33;

    /// `FUSE_SETUPMAPPING_FLAG_WRITE`.
    pub const FUSE_SETUPMAPPING_FLAG_WRITE: u64 = 1 << 0;
    /// `FUSE_SETUPMAPPING_FLAG_READ`.
    pub const FUSE_SETUPMAPPING_FLAG_READ: u64 = 1 << 1;

    /// `struct fuse_in_header`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct InHeader {
        /// Total request length.
        pub len: u32,
        /// Opcode.
        pub opcode: u32,
        /// Request id.
        pub unique: u64,
        /// Inode.
        pub nodeid: u64,
        /// Caller uid.
        pub uid: u32,
        /// Caller gid.
        pub gid: u32,
        /// Caller pid.
        pub pid: u32,
        /// Length of extensions, in 8-byte units (7.38).
        pub total_extlen: u16,
        /// Padding.
        pub padding: u16,
    }

    /// `struct fuse_out_header`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct OutHeader {
        /// Total reply length.
        pub len: u32,
        /// 0 or a negative errno.
        pub error: i32,
        /// Request id.
        pub unique: u64,
    }

    /// `struct fuse_init_in` (7.36 and later layout).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct InitIn {
        /// Major version.
        pub major: u32,
        /// Minor version.
        pub minor: u32,
        /// Readahead.
        pub max_readahead: u32,
        /// Flags (low 32 bits).
        pub flags: u32,
        /// Flags (high 32 bits), with `FUSE_INIT_EXT`.
        pub flags2: u32,
        /// Unused.
        pub unused: [u32; 11],
    }

    /// `struct fuse_init_out`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct InitOut {
        /// Major version.
        pub major: u32,
        /// Minor version.
        pub minor: u32,
        /// Readahead.
        pub max_readahead: u32,
        /// Flags (low 32 bits).
        pub flags: u32,
        /// Background requests.
        pub max_background: u16,
        /// Congestion threshold.
        pub congestion_threshold: u16,
        /// Largest WRITE payload.
        pub max_write: u32,
        /// Timestamp granularity.
        pub time_gran: u32,
        /// Largest request in pages.
        pub max_pages: u16,
        /// log2 of the SETUPMAPPING alignment (with `FUSE_MAP_ALIGNMENT`).
        pub map_alignment: u16,
        /// Flags (high 32 bits).
        pub flags2: u32,
        /// Stacking depth (7.40).
        pub max_stack_depth: u32,
        /// Unused.
        pub unused: [u32; 6],
    }

    impl InitOut {
        /// All 64 flag bits.
        pub fn flags64(&self) -> u64 {
            u64::from(self.flags) | (u64::from(self.flags2) << 32)
        }
    }

    /// `struct fuse_attr`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Attr {
        /// Inode number.
        pub ino: u64,
        /// Size in bytes.
        pub size: u64,
        /// 512-byte blocks.
        pub blocks: u64,
        /// Access time, seconds.
        pub atime: u64,
        /// Modification time, seconds.
        pub mtime: u64,
        /// Change time, seconds.
        pub ctime: u64,
        /// Access time, nanoseconds.
        pub atimensec: u32,
        /// Modification time, nanoseconds.
        pub mtimensec: u32,
        /// Change time, nanoseconds.
        pub ctimensec: u32,
        /// File mode.
        pub mode: u32,
        /// Links.
        pub nlink: u32,
        /// Owner.
        pub uid: u32,
        /// Group.
        pub gid: u32,
        /// Device.
        pub rdev: u32,
        /// Block size.
        pub blksize: u32,
        /// Attribute flags (`FUSE_ATTR_*`).
        pub flags: u32,
    }

    /// `struct fuse_entry_out`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct EntryOut {
        /// Inode id.
        pub nodeid: u64,
        /// Generation.
        pub generation: u64,
        /// Entry cache timeout, seconds.
        pub entry_valid: u64,
        /// Attribute cache timeout, seconds.
        pub attr_valid: u64,
        /// Entry cache timeout, nanoseconds.
        pub entry_valid_nsec: u32,
        /// Attribute cache timeout, nanoseconds.
        pub attr_valid_nsec: u32,
        /// Attributes.
        pub attr: Attr,
    }

    /// `struct fuse_getattr_in`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct GetattrIn {
        /// `FUSE_GETATTR_FH` when `fh` is valid.
        pub getattr_flags: u32,
        /// Padding.
        pub dummy: u32,
        /// File handle.
        pub fh: u64,
    }

    /// `struct fuse_attr_out`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct AttrOut {
        /// Cache timeout, seconds.
        pub attr_valid: u64,
        /// Cache timeout, nanoseconds.
        pub attr_valid_nsec: u32,
        /// Padding.
        pub dummy: u32,
        /// Attributes.
        pub attr: Attr,
    }

    /// `struct fuse_open_in`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct OpenIn {
        /// `open(2)` flags.
        pub flags: u32,
        /// `FUSE_OPEN_*` flags.
        pub open_flags: u32,
    }

    /// `struct fuse_open_out`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct OpenOut {
        /// File handle.
        pub fh: u64,
        /// `FOPEN_*` flags.
        pub open_flags: u32,
        /// Backing id (7.40) or padding.
        pub backing_id: i32,
    }

    /// `struct fuse_read_in`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ReadIn {
        /// File handle.
        pub fh: u64,
        /// File offset.
        pub offset: u64,
        /// Bytes to read.
        pub size: u32,
        /// `FUSE_READ_*` flags.
        pub read_flags: u32,
        /// Lock owner.
        pub lock_owner: u64,
        /// `open(2)` flags.
        pub flags: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_write_in` (followed by the data).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct WriteIn {
        /// File handle.
        pub fh: u64,
        /// File offset.
        pub offset: u64,
        /// Bytes to write.
        pub size: u32,
        /// `FUSE_WRITE_*` flags.
        pub write_flags: u32,
        /// Lock owner.
        pub lock_owner: u64,
        /// `open(2)` flags.
        pub flags: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_write_out`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct WriteOut {
        /// Bytes written.
        pub size: u32,
        /// Padding.
        pub padding: u32,
    }

    /// `struct fuse_release_in`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ReleaseIn {
        /// File handle.
        pub fh: u64,
        /// `open(2)` flags.
        pub flags: u32,
        /// `FUSE_RELEASE_*` flags.
        pub release_flags: u32,
        /// Lock owner.
        pub lock_owner: u64,
    }

    /// `struct fuse_forget_in`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ForgetIn {
        /// Lookups to forget.
        pub nlookup: u64,
    }

    /// `struct fuse_setupmapping_in`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SetupmappingIn {
        /// File handle.
        pub fh: u64,
        /// File offset.
        pub foffset: u64,
        /// Length.
        pub len: u64,
        /// `FUSE_SETUPMAPPING_FLAG_*`.
        pub flags: u64,
        /// Offset in the DAX window.
        pub moffset: u64,
    }

    /// `struct fuse_removemapping_in` (followed by `count` [`RemovemappingOne`]).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct RemovemappingIn {
        /// Ranges that follow.
        pub count: u32,
    }

    /// `struct fuse_removemapping_one`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct RemovemappingOne {
        /// Offset in the DAX window.
        pub moffset: u64,
        /// Length.
        pub len: u64,
    }

    macro_rules! byte_valued {
        ($($t:ty),*) => {$(
            // SAFETY: a `repr(C)` struct of integers whose fields leave no padding (checked by
            // the size assertions in the tests), so every byte pattern is a valid value.
            unsafe impl ByteValued for $t {}
        )*};
    }
    byte_valued!(
        InHeader,
        OutHeader,
        InitIn,
        InitOut,
        Attr,
        EntryOut,
        GetattrIn,
        AttrOut,
        OpenIn,
        OpenOut,
        ReadIn,
        WriteIn,
        WriteOut,
        ReleaseIn,
        ForgetIn,
        SetupmappingIn,
        RemovemappingIn,
        RemovemappingOne
    );

    /// A request's bytes: the header (with `len` filled in) followed by `args`.
    pub fn request(mut header: InHeader, args: &[&[u8]]) -> Vec<u8> {
        let len = std::mem::size_of::<InHeader>() + args.iter().map(|a| a.len()).sum::<usize>();
        header.len = len as u32;
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(header.as_slice());
        for a in args {
            v.extend_from_slice(a);
        }
        v
    }

    /// Parses a reply: checks the header against `unique` and the bytes the device wrote, and
    /// returns the payload, or the header's negative errno as `Err`.
    pub fn parse_reply(
        bytes: &[u8],
        unique: u64,
    ) -> std::result::Result<std::result::Result<&[u8], i32>, String> {
        let hsize = std::mem::size_of::<OutHeader>();
        let Some(h) = bytes.get(..hsize) else {
            return Err(format!("{} bytes, no header", bytes.len()));
        };
        let header = OutHeader::from_slice(h).copied().unwrap_or_default();
        if header.unique != unique {
            return Err(format!("unique {} for request {unique}", header.unique));
        }
        let len = header.len as usize;
        if len < hsize || len > bytes.len() {
            return Err(format!(
                "header len {len} with {} bytes written",
                bytes.len()
            ));
        }
        if header.error != 0 {
            if header.error > 0 || header.error < -4095 {
                return Err(format!("error {} is not a negative errno", header.error));
            }
            return Ok(Err(header.error));
        }
        Ok(Ok(&bytes[hsize..len]))
    }

    /// Reads a `T` from the front of `payload`, zero-extending a short one (older protocol
    /// minors have shorter replies).
    pub fn read_struct<T: ByteValued + Default>(payload: &[u8]) -> T {
        let mut v = T::default();
        let n = payload.len().min(std::mem::size_of::<T>());
        v.as_mut_slice()[..n].copy_from_slice(&payload[..n]);
        v
    }
}

/// A FUSE client over a virtio-fs request queue, as the guest's FUSE driver is: one request at
/// a time, each a chain of device-readable `fuse_in_header` + arguments (+ WRITE data) and
/// device-writable `fuse_out_header` (+ reply payload).
///
/// The scratch area given to [`FuseSession::new`] holds the requests (first half) and replies
/// (second half), so a READ or WRITE moves at most about half of it.
#[derive(Debug)]
pub struct FuseSession {
    queue: SplitQueueDriver,
    hiprio: Option<SplitQueueDriver>,
    req_area: GuestAddress,
    reply_area: GuestAddress,
    half: usize,
    unique: u64,
    /// Timeout for each reply.
    pub timeout: Duration,
    /// uid put in request headers (the caller's effective uid by default).
    pub uid: u32,
    /// gid put in request headers.
    pub gid: u32,
    /// pid put in request headers.
    pub pid: u32,
    init: Option<InitOut>,
}

impl FuseSession {
    /// A session sending its requests on `queue`, with `scratch_len` bytes of guest memory at
    /// `scratch` for request and reply buffers (must not overlap the rings).
    pub fn new(queue: SplitQueueDriver, scratch: GuestAddress, scratch_len: usize) -> Result<Self> {
        let half = (scratch_len / 2) & !7;
        if half < 4096 {
            return Err(GuestError::TooLarge {
                len: 8192,
                room: scratch_len,
            });
        }
        // Fail now, not at the first request, if the area is not guest memory.
        queue.memory().write_slice(&vec![0u8; 2 * half], scratch)?;
        Ok(FuseSession {
            queue,
            hiprio: None,
            req_area: scratch,
            reply_area: scratch.unchecked_add(half as u64),
            half,
            unique: 0,
            timeout: Duration::from_secs(5),
            // SAFETY: geteuid, getegid and getpid cannot fail and touch no memory.
            uid: unsafe { libc::geteuid() },
            // SAFETY: as above.
            gid: unsafe { libc::getegid() },
            pid: std::process::id(),
            init: None,
        })
    }

    /// Sends FORGETs on `hiprio` (queue 0, the high priority queue), as the Linux driver does,
    /// instead of on the request queue.
    pub fn with_hiprio(mut self, hiprio: SplitQueueDriver) -> Self {
        self.hiprio = Some(hiprio);
        self
    }

    /// What the driver tells the device at `DRIVER_OK`: the high priority queue as queue 0 when
    /// there is one, then the request queue.
    pub fn activate_queues(&self) -> Result<Vec<ActivateQueue>> {
        let mut queues = Vec::new();
        if let Some(h) = &self.hiprio {
            queues.push(h.activate_queue(0)?);
        }
        queues.push(self.queue.activate_queue(queues.len())?);
        Ok(queues)
    }

    /// A new driver instance on the same queues and eventfds ([`SplitQueueDriver::restart`]),
    /// as after a device reset; [`FuseSession::init`] again before any other request.
    pub fn restart(&mut self) -> Result<()> {
        self.queue.restart()?;
        if let Some(h) = &mut self.hiprio {
            h.restart()?;
        }
        self.unique = 0;
        self.init = None;
        Ok(())
    }

    /// The request queue's driver.
    pub fn queue(&self) -> &SplitQueueDriver {
        &self.queue
    }

    /// The INIT reply, once [`FuseSession::init`] succeeded.
    pub fn init_out(&self) -> Option<&InitOut> {
        self.init.as_ref()
    }

    /// Largest READ / WRITE payload: what fits the scratch area (and, after INIT, `max_write`).
    pub fn max_io(&self) -> usize {
        let room = self.half - std::mem::size_of::<InHeader>() - std::mem::size_of::<WriteIn>();
        match self.init {
            Some(i) if i.max_write > 0 => room.min(i.max_write as usize),
            _ => room,
        }
    }

    fn header(&mut self, opcode: u32, nodeid: u64) -> InHeader {
        self.unique += 1;
        InHeader {
            len: 0,
            opcode,
            unique: self.unique,
            nodeid,
            uid: self.uid,
            gid: self.gid,
            pid: self.pid,
            total_extlen: 0,
            padding: 0,
        }
    }

    /// Sends one request and waits for it to come back. `reply_len` is the payload room after
    /// `fuse_out_header`; `None` for requests without a reply (FORGET). Returns the payload.
    fn call(
        &mut self,
        opcode: u32,
        nodeid: u64,
        args: &[&[u8]],
        data: &[u8],
        reply_len: Option<usize>,
    ) -> Result<Vec<u8>> {
        self.call_with(opcode, nodeid, args, data, reply_len, None)
            .map(|(payload, _)| payload)
    }

    /// [`Self::call`] whose reply data may go to a buffer of the caller's, `out`, instead of the
    /// scratch area (the reply header still lands in the scratch area). Returns the payload read
    /// from the scratch area, and the reply's length: the used length the device reported, or
    /// with `out`, the length the reply header gives (checked against the room offered).
    fn call_with(
        &mut self,
        opcode: u32,
        nodeid: u64,
        args: &[&[u8]],
        data: &[u8],
        reply_len: Option<usize>,
        out: Option<(GuestAddress, u32)>,
    ) -> Result<(Vec<u8>, u32)> {
        let header = self.header(opcode, nodeid);
        let unique = header.unique;
        let mut req = fuse::request(header, args);
        let arg_len = req.len();
        let total = arg_len + data.len();
        if total > self.half {
            return Err(GuestError::TooLarge {
                len: total,
                room: self.half,
            });
        }
        // `len` covers the data too; it travels in its own descriptor.
        req[0..4].copy_from_slice(&(total as u32).to_le_bytes());
        let mem = self.queue.memory().clone();
        mem.write_slice(&req, self.req_area)?;
        let mut readable = vec![(self.req_area, arg_len as u32)];
        if !data.is_empty() {
            let at = self.req_area.unchecked_add(arg_len as u64);
            mem.write_slice(data, at)?;
            readable.push((at, data.len() as u32));
        }
        let hsize = std::mem::size_of::<OutHeader>();
        let mut writable = Vec::new();
        if let Some(n) = reply_len {
            if hsize + n > self.half {
                return Err(GuestError::TooLarge {
                    len: hsize + n,
                    room: self.half,
                });
            }
            mem.write_slice(&vec![0u8; hsize + n], self.reply_area)?;
            writable.push((self.reply_area, hsize as u32));
            if n > 0 {
                writable.push((self.reply_area.unchecked_add(hsize as u64), n as u32));
            }
        }
        if let Some(buf) = out {
            writable.push(buf);
        }
        let timeout = self.timeout;
        let q = match (&mut self.hiprio, opcode) {
            (Some(h), FUSE_FORGET) => h,
            _ => &mut self.queue,
        };
        let head = q.add_chain(&readable, &writable)?;
        q.kick()?;
        let (got, len) = q
            .try_wait_used(timeout)?
            .ok_or(GuestError::Timeout { opcode, timeout })?;
        if got != head {
            return Err(GuestError::WrongHead {
                got,
                expected: head,
            });
        }
        let Some(n) = reply_len else {
            return Ok((Vec::new(), len));
        };
        if let Some((_, room)) = out {
            // The data went to the caller's buffer: check the header alone, whose `len` counts
            // that data too.
            let mut h = [0u8; std::mem::size_of::<OutHeader>()];
            mem.read_slice(&mut h, self.reply_area)?;
            let header = OutHeader::from_slice(&h).copied().unwrap_or_default();
            let limit = (hsize + n) as u64 + u64::from(room);
            let bad = if header.unique != unique {
                Some(format!("unique {} for request {unique}", header.unique))
            } else if u64::from(header.len) < hsize as u64 || u64::from(header.len) > limit {
                Some(format!("header len {} with room for {limit}", header.len))
            } else if header.error > 0 || header.error < -4095 {
                Some(format!("error {} is not a negative errno", header.error))
            } else {
                None
            };
            if let Some(bad) = bad {
                return Err(GuestError::BadReply(bad));
            }
            if header.error != 0 {
                return Err(GuestError::Fuse {
                    opcode,
                    error: header.error,
                });
            }
            return Ok((Vec::new(), header.len));
        }
        let written = (len as usize).min(hsize + n);
        let mut reply = vec![0u8; written];
        mem.read_slice(&mut reply, self.reply_area)?;
        match fuse::parse_reply(&reply, unique).map_err(GuestError::BadReply)? {
            Ok(payload) => Ok((payload.to_vec(), len)),
            Err(error) => Err(GuestError::Fuse { opcode, error }),
        }
    }

    /// INIT with the flags a plain (non-DAX) mount asks for.
    pub fn init(&mut self) -> Result<InitOut> {
        self.init_with_flags(FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES)
    }

    /// INIT asking for `flags` (add [`FUSE_MAP_ALIGNMENT`] for a DAX mount, as Linux does).
    /// Fails with [`GuestError::BadReply`] on a major version other than 7.
    pub fn init_with_flags(&mut self, flags: u64) -> Result<InitOut> {
        let flags = flags | FUSE_INIT_EXT;
        let init_in = InitIn {
            major: FUSE_KERNEL_VERSION,
            minor: FUSE_KERNEL_MINOR_VERSION,
            max_readahead: 128 << 10,
            flags: flags as u32,
            flags2: (flags >> 32) as u32,
            unused: [0; 11],
        };
        let payload = self.call(
            FUSE_INIT,
            0,
            &[init_in.as_slice()],
            &[],
            Some(std::mem::size_of::<InitOut>()),
        )?;
        if payload.len() < 24 {
            return Err(GuestError::BadReply(format!(
                "INIT reply of {} bytes",
                payload.len()
            )));
        }
        let out: InitOut = read_struct(&payload);
        if out.major != FUSE_KERNEL_VERSION {
            return Err(GuestError::BadReply(format!("FUSE major {}", out.major)));
        }
        self.init = Some(out);
        Ok(out)
    }

    /// LOOKUP `name` in directory `parent`: the node id and attributes.
    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<(u64, Attr)> {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        let payload = self.call(
            FUSE_LOOKUP,
            parent,
            &[&n],
            &[],
            Some(std::mem::size_of::<EntryOut>()),
        )?;
        let e: EntryOut = read_struct(&payload);
        Ok((e.nodeid, e.attr))
    }

    /// GETATTR of `nodeid`.
    pub fn getattr(&mut self, nodeid: u64) -> Result<Attr> {
        let arg = GetattrIn::default();
        let payload = self.call(
            FUSE_GETATTR,
            nodeid,
            &[arg.as_slice()],
            &[],
            Some(std::mem::size_of::<AttrOut>()),
        )?;
        Ok(read_struct::<AttrOut>(&payload).attr)
    }

    /// OPEN `nodeid` with `open(2)` flags: the file handle.
    pub fn open(&mut self, nodeid: u64, flags: u32) -> Result<u64> {
        let arg = OpenIn {
            flags,
            open_flags: 0,
        };
        let payload = self.call(
            FUSE_OPEN,
            nodeid,
            &[arg.as_slice()],
            &[],
            Some(std::mem::size_of::<OpenOut>()),
        )?;
        Ok(read_struct::<OpenOut>(&payload).fh)
    }

    /// READ up to `size` bytes at `offset`: the bytes read (fewer at end of file).
    pub fn read(&mut self, nodeid: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let arg = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        self.call(
            FUSE_READ,
            nodeid,
            &[arg.as_slice()],
            &[],
            Some(size as usize),
        )
    }

    /// READ up to `size` bytes at `offset` into the guest buffer at `buf`, which may lie anywhere
    /// in the guest's physical address space: in RAM, or in a DAX window, where the backend cannot
    /// see it and must have the front-end do the copy (legacy FS_IO). Only the reply header goes
    /// through the scratch area. Returns the number of bytes read.
    pub fn read_into(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
        buf: GuestAddress,
    ) -> Result<u32> {
        let arg = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let (_, used) = self.call_with(
            FUSE_READ,
            nodeid,
            &[arg.as_slice()],
            &[],
            Some(0),
            Some((buf, size)),
        )?;
        let hsize = std::mem::size_of::<OutHeader>() as u32;
        Ok(used - hsize)
    }

    /// WRITE `data` at `offset`: the bytes written.
    pub fn write(&mut self, nodeid: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        if data.len() > self.max_io() {
            return Err(GuestError::TooLarge {
                len: data.len(),
                room: self.max_io(),
            });
        }
        let arg = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        let payload = self.call(
            FUSE_WRITE,
            nodeid,
            &[arg.as_slice()],
            data,
            Some(std::mem::size_of::<WriteOut>()),
        )?;
        Ok(read_struct::<WriteOut>(&payload).size)
    }

    /// SETUPMAPPING: ask the backend to map `len` bytes of the open file `fh` at `foffset` into
    /// the DAX window at `moffset` (read-only, or read-write with `write`).
    pub fn setupmapping(
        &mut self,
        nodeid: u64,
        fh: u64,
        foffset: u64,
        len: u64,
        write: bool,
        moffset: u64,
    ) -> Result<()> {
        let flags = FUSE_SETUPMAPPING_FLAG_READ
            | if write {
                FUSE_SETUPMAPPING_FLAG_WRITE
            } else {
                0
            };
        let arg = SetupmappingIn {
            fh,
            foffset,
            len,
            flags,
            moffset,
        };
        self.call(FUSE_SETUPMAPPING, nodeid, &[arg.as_slice()], &[], Some(0))?;
        Ok(())
    }

    /// REMOVEMAPPING of `(moffset, len)` ranges of the DAX window.
    pub fn removemapping(&mut self, ranges: &[(u64, u64)]) -> Result<()> {
        let head = RemovemappingIn {
            count: ranges.len() as u32,
        };
        let mut args = head.as_slice().to_vec();
        for &(moffset, len) in ranges {
            args.extend_from_slice(RemovemappingOne { moffset, len }.as_slice());
        }
        // Linux sends REMOVEMAPPING with the node id of the inode whose ranges go; the backend
        // does not need it.
        self.call(FUSE_REMOVEMAPPING, 0, &[&args], &[], Some(0))?;
        Ok(())
    }

    /// RELEASE the file handle `fh` of `nodeid` (opened with `flags`).
    pub fn release(&mut self, nodeid: u64, fh: u64, flags: u32) -> Result<()> {
        let arg = ReleaseIn {
            fh,
            flags,
            ..Default::default()
        };
        self.call(FUSE_RELEASE, nodeid, &[arg.as_slice()], &[], Some(0))?;
        Ok(())
    }

    /// FORGET `nlookup` lookups of `nodeid`. There is no reply; this waits for the device to
    /// return the buffer.
    pub fn forget(&mut self, nodeid: u64, nlookup: u64) -> Result<()> {
        let arg = ForgetIn { nlookup };
        self.call(FUSE_FORGET, nodeid, &[arg.as_slice()], &[], None)?;
        Ok(())
    }
}

/// Checks that `[gpa, gpa + len)` lies in the window placed at `gpa_base` and is covered by
/// live mappings (writable ones for a store); returns the host address.
fn window_access(
    window: &DaxWindow,
    gpa_base: u64,
    gpa: u64,
    len: usize,
    write: bool,
) -> Result<*mut u8> {
    let outside = GuestError::OutsideWindow { gpa, len };
    let offset = gpa.checked_sub(gpa_base).ok_or(outside)?;
    let end = offset
        .checked_add(len as u64)
        .filter(|&e| e <= window.size())
        .ok_or(GuestError::OutsideWindow { gpa, len })?;
    let mut at = offset;
    for m in window.mappings() {
        if at >= end {
            break;
        }
        if m.offset + m.len <= at {
            continue;
        }
        if m.offset > at || (write && m.access != Access::ReadWrite) {
            break;
        }
        at = m.offset + m.len;
    }
    if at < end {
        return Err(GuestError::Unmapped { gpa, len });
    }
    Ok((window.host_addr() + offset) as *mut u8)
}

/// A guest load of `buf.len()` bytes at guest address `gpa` in the DAX window placed at
/// `gpa_base` (what the guest does with a DAX-mapped file).
///
/// Only live mappings ([`DaxWindow::mappings`]) can be read. A real guest faults on an
/// unmapped page (the window's reservation is `PROT_NONE`) and its driver would have set up a
/// mapping first; this returns [`GuestError::Unmapped`] instead, and
/// [`GuestError::OutsideWindow`] past the window.
///
/// The caller must make sure no mapping of the range is removed while the copy runs (the page
/// would become `PROT_NONE` and the process take a `SIGSEGV`), and that the file is not
/// truncated below the range (`SIGBUS`), as a guest driver does by holding its mappings.
pub fn guest_read(window: &DaxWindow, gpa_base: u64, gpa: u64, buf: &mut [u8]) -> Result<()> {
    let p = window_access(window, gpa_base, gpa, buf.len(), false)?;
    // SAFETY: `window_access` checked that `[p, p + buf.len())` is inside the window's
    // reservation and covered by live readable mappings; the caller keeps them live (see above).
    // Accessed only through volatile copies, since the backend or the file may change the bytes
    // under us.
    let slice = unsafe { VolatileSlice::new(p, buf.len()) };
    // vm-memory's copy: one volatile access up to a word, a memcpy beyond, as a guest's copy
    // loop would run.
    slice.copy_to(buf);
    Ok(())
}

/// A guest store of `data` at guest address `gpa` in the DAX window placed at `gpa_base`: the
/// bytes land in the mapped file. Only live writable mappings can be written; see
/// [`guest_read`] for the errors and what the caller must guarantee.
pub fn guest_write(window: &DaxWindow, gpa_base: u64, gpa: u64, data: &[u8]) -> Result<()> {
    let p = window_access(window, gpa_base, gpa, data.len(), true)?;
    // SAFETY: `window_access` checked that `[p, p + data.len())` is inside the window's
    // reservation and covered by live writable mappings, which the caller keeps live; accessed
    // only through volatile copies.
    let slice = unsafe { VolatileSlice::new(p, data.len()) };
    slice.copy_from(data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_sizes_match_fuse_h() {
        use std::mem::size_of;
        assert_eq!(size_of::<InHeader>(), 40);
        assert_eq!(size_of::<OutHeader>(), 16);
        assert_eq!(size_of::<InitIn>(), 64);
        assert_eq!(size_of::<InitOut>(), 64);
        assert_eq!(size_of::<Attr>(), 88);
        assert_eq!(size_of::<EntryOut>(), 128);
        assert_eq!(size_of::<GetattrIn>(), 16);
        assert_eq!(size_of::<AttrOut>(), 104);
        assert_eq!(size_of::<OpenIn>(), 8);
        assert_eq!(size_of::<OpenOut>(), 16);
        assert_eq!(size_of::<ReadIn>(), 40);
        assert_eq!(size_of::<WriteIn>(), 40);
        assert_eq!(size_of::<WriteOut>(), 8);
        assert_eq!(size_of::<ReleaseIn>(), 24);
        assert_eq!(size_of::<ForgetIn>(), 8);
        assert_eq!(size_of::<SetupmappingIn>(), 40);
        assert_eq!(size_of::<RemovemappingIn>(), 4);
        assert_eq!(size_of::<RemovemappingOne>(), 16);
    }

    #[test]
    fn reply_parsing() {
        let mut r = OutHeader {
            len: 20,
            error: 0,
            unique: 7,
        }
        .as_slice()
        .to_vec();
        r.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(fuse::parse_reply(&r, 7).unwrap(), Ok(&[1u8, 2, 3, 4][..]));
        assert!(fuse::parse_reply(&r, 8).is_err());
        assert!(fuse::parse_reply(&r[..18], 7).is_err());
        let e = OutHeader {
            len: 16,
            error: -libc::ENOSYS,
            unique: 7,
        };
        assert_eq!(
            fuse::parse_reply(e.as_slice(), 7).unwrap(),
            Err(-libc::ENOSYS)
        );
    }
}
