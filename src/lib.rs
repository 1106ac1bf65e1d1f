// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A virtio-fs DAX window and its vhost-user backend channel, for rust-vmm based VMMs.
//!
//! A virtio-fs device served by a vhost-user backend (virtiofsd or similar) can give its guest a
//! **DAX window**: a range of guest physical memory (virtio shared memory region 0) into which
//! the backend asks the VMM to map file ranges. The guest then reads and writes those files with
//! plain loads and stores: no copies, no exits, one page cache shared by host and guest.
//!
//! This crate is the VMM's side of that window:
//!
//! - [`DaxWindow`] reserves the window once (`PROT_NONE`, `MAP_NORESERVE`: it costs no memory),
//!   maps file ranges into it with `MAP_FIXED` only after checking them, and puts the reservation
//!   back on unmap so the window never has a hole. Its host address and size are what the VMM
//!   registers as guest memory.
//! - [`BackendChannel`] is the frontend's end of the backend channel (the socket pair whose other
//!   end goes to the backend with `set_backend_request_fd`). It reads requests with their file
//!   descriptors, decodes them with a pure decoder ([`protocol`]), executes them, replies `0` or
//!   `-errno`, and keeps serving after any refusal. It speaks both dialects: the standard
//!   SHMEM_MAP / SHMEM_UNMAP and the legacy FS_MAP / FS_UNMAP / FS_SYNC / FS_IO.
//! - [`IoSpace`] serves FS_IO (and the proposed MEM_READ / MEM_WRITE, feature `mem-rw`): copies
//!   between a file and guest memory at a guest physical address that the backend cannot see
//!   (a DAX window, this device's or another's).
//! - [`FsMetrics`] counts everything, refusals by reason.
//! - [`Fs`] (module [`device`]) puts it all together as a virtio-fs device (id 26) whose
//!   inherent methods are what a VMM's own device trait forwards to: the [`device`] module docs
//!   walk through the wiring. A VMM with a vhost-user virtio-fs device of its own (such as
//!   cloud-hypervisor) takes only [`DaxWindow`] and [`BackendChannel`] instead. The device takes the VMM's guest memory with whatever dirty bitmap
//!   it tracks, and a window the VMM reserved itself ([`DaxWindow::from_reservation`]) as well
//!   as one it reserves.
//!
//! # Two sockets, one window
//!
//! ```text
//!  guest driver ──virtqueues──► backend ──backend channel (requests + fds)──► BackendChannel
//!      │ loads/stores                                                           │ validate, mmap
//!      ▼                                                                        ▼
//!  DAX window (guest physical) ═══ one memory slot ═══ DaxWindow (host, PROT_NONE reservation)
//! ```
//!
//! The vhost-user socket (front-end to backend) is driven with `vhost::vhost_user::Frontend`.
//! The backend channel is this crate's: vhost 0.18's `FrontendReqHandler` cannot parse the legacy
//! codes.
//!
//! # Lifecycle and ownership
//!
//! - The VMM owns the memory slot over the window and must remove it **before** the last
//!   `Arc<DaxWindow>` is dropped (dropping unmaps the reservation).
//! - Device reset and backend disconnect drop every mapping ([`DaxWindow::unmap_all`]: one
//!   `PROT_NONE` re-map over the window); the window stays reserved and registered. A channel
//!   thread does this by itself when the backend disconnects.
//! - Keep the window out of the vhost-user memory table and out of VFIO DMA maps.
//! - Host-side truncation of a mapped file makes guest accesses to it fault: DAX is for trees not
//!   shared with other writers.
//!
//! # Threat model
//!
//! The backend is less trusted than the VMM, and the guest (which drives the backend) is not
//! trusted at all. Nothing the backend sends may panic, abort, leak a descriptor or map outside
//! the window: every request is checked (header, size, descriptor count, region id, length,
//! overflow, bounds, alignment, flags, overlap policy) before any syscall, and every refusal is a
//! typed error, a `-errno` reply, a counter and a rate-limited log line.
//!
//! # Example
//!
//! A window served on its own thread, with vhost's real `Backend` sending a map request:
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use std::sync::Arc;
//!
//! use vhost::vhost_user::message::VhostUserMMap;
//! use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};
//! use virtio_fs_dax::{BackendChannel, DaxWindow, Dialect, IoSpace};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Reserve the window once; register (host_addr, size) as guest memory at a 2 MiB aligned
//! // guest address, and expose it as shared memory region 0.
//! let window = Arc::new(DaxWindow::new(64 << 20)?);
//! let gpa = 1 << 34;
//! // vmm.add_memory_slot(gpa, window.host_addr(), window.size());
//!
//! // One IoSpace per VM, with guest RAM and every window, for FS_IO.
//! let io = Arc::new(IoSpace::new());
//! io.add_window(gpa, window.clone())?;
//!
//! // The backend channel: `theirs` goes to the backend with set_backend_request_fd.
//! let (ours, theirs) = UnixStream::pair()?;
//! let channel = BackendChannel::builder(ours)
//!     .window(window.clone())
//!     .dialect(Dialect::Standard) // SHMEM was negotiated
//!     .io_space(io)
//!     .name("myfs")
//!     .build()
//!     .spawn()?;
//!
//! // What a backend does when the guest sends FUSE_SETUPMAPPING.
//! # let backend = Backend::from_stream(theirs);
//! # backend.set_reply_ack_flag(true);
//! # backend.set_shmem_flag(true);
//! let file = tempfile::tempfile()?;
//! file.set_len(2 << 20)?;
//! let map = VhostUserMMap { shmid: 0, padding: [0; 7], fd_offset: 0, shm_offset: 0, len: 2 << 20, flags: 1 };
//! backend.shmem_map(&map, &file)?;
//! assert_eq!(window.metrics().live_mappings(), 1);
//!
//! // A map past the end of the window is refused, and the channel goes on.
//! let bad = VhostUserMMap { shm_offset: 64 << 20, ..map };
//! assert!(backend.shmem_map(&bad, &file).is_err());
//! assert_eq!(window.metrics().total_refusals(), 1);
//!
//! // Reset: first stop the channel thread (bounded; nothing can map after it), then end the
//! // window's generation: every mapping dropped, and the old channel refused if it ever ran on.
//! channel.stop()?;
//! window.reset()?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "virtio-fs-dax supports Linux only (vhost-user, and the DAX window's Linux mmap flags)"
);

pub mod channel;
pub mod device;
pub mod frontend;
pub mod io;
pub mod memory;
pub mod metrics;
pub mod protocol;
mod ring;
#[cfg(feature = "test-utils")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-utils")))]
pub mod test_utils;
pub mod transport;
pub mod window;

pub use channel::{
    BackendChannel, BackendChannelBuilder, ChannelThread, Outcome, RequestError, ThreadHook,
};
pub use device::{Fs, FsBuilder};
pub use frontend::DaxFallback;
pub use io::IoSpace;
pub use memory::{MemoryManager, WindowRegion};
pub use metrics::{FsMetrics, LatencyHistogram, Refusal};
pub use protocol::Dialect;
pub use window::{DaxWindow, DaxWindowBuilder, Policy, WindowLease};

// The rust-vmm crates whose types cross this crate's API, so that a VMM can use exactly the
// versions the crate was built with (or check that its own match: vhost 0.18, vm-memory 0.18,
// virtio-queue 0.18, vmm-sys-util 0.15).
/// vhost, whose vhost-user types (`VhostUserProtocolFeatures`, `VhostUserMMap`,
/// `VhostUserMemoryRegionInfo`) cross the API.
pub use vhost;
/// virtio-queue, whose `Queue` the device is activated with.
pub use virtio_queue;
/// vm-memory, whose `GuestMemoryAtomic`, `GuestMemoryMmap`, `GuestRegionMmap` and `MmapRegion`
/// the device takes.
pub use vm_memory;
/// vmm-sys-util, whose `EventFd` carries the queues' kicks and calls.
pub use vmm_sys_util;
