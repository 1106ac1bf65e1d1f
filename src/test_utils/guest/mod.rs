// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A simulated guest driver, for running a virtio-fs device end to end where no guest kernel can
//! boot (feature `test-utils`).
//!
//! - [`memfd_guest_memory`]: guest RAM backed by a memfd, so a vhost-user backend can map it.
//! - [`SplitQueueDriver`]: the driver side of a split virtqueue in that RAM. It lays the rings
//!   out, hands the device a configured [`ActivateQueue`](crate::device::ActivateQueue), adds
//!   descriptor chains, kicks and waits for used buffers.
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

mod memory;
mod queue;
mod session;
mod window;

pub mod fuse;

use std::io;
use std::time::Duration;

use vm_memory::GuestMemoryError;

pub use self::memory::memfd_guest_memory;
pub use self::queue::{SplitQueueDriver, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
pub use self::session::FuseSession;
pub use self::window::{guest_read, guest_write};

/// Errors of the simulated guest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
