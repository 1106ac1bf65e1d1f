// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The bytes on the wire: sizes, header flags, request codes of both dialects and the packed
//! payload structs. Where vhost has the same thing (the standard request codes, the header flags,
//! the SHMEM_MAP / SHMEM_UNMAP payload), it is vhost's, re-exported or taken from it.

use std::mem::size_of;
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserMMapFlags};

use vm_memory::ByteValued;

pub use vhost::vhost_user::message::VhostUserMMap;

/// Size of the message header on the wire.
pub const HEADER_SIZE: usize = 12;
/// Largest body the channel accepts. Bodies announced as larger are drained and refused.
pub const MAX_BODY_SIZE: usize = 4096;
/// Header flag bits that carry the protocol version.
pub const VERSION_MASK: u32 = VhostUserHeaderFlag::VERSION.bits();
/// The only protocol version.
pub const VERSION: u32 = 0x1;
/// Header flag: this message is a reply.
pub const FLAG_REPLY: u32 = VhostUserHeaderFlag::REPLY.bits();
/// Header flag: the sender waits for a reply.
pub const FLAG_NEED_REPLY: u32 = VhostUserHeaderFlag::NEED_REPLY.bits();
/// Number of entries in a legacy [`FsBackendMsg`].
pub const FS_BACKEND_ENTRIES: usize = 8;
/// Legacy flag: map or transfer readable.
pub const FS_FLAG_MAP_R: u64 = 0x1;
/// Legacy flag: map writable; for FS_IO, write the file from guest memory.
pub const FS_FLAG_MAP_W: u64 = 0x2;
/// Standard flag of [`VhostUserMMap`]: the mapping is writable (read-only when clear).
pub const MMAP_FLAG_WRITABLE: u64 = VhostUserMMapFlags::WRITABLE.bits();
/// Maximum number of file descriptors one message may carry on Linux (`SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

/// Backend-to-frontend request codes of the standard vhost-user dialect: vhost's [`BackendReq`]
/// as `u32`, plus the proposed MEM_READ / MEM_WRITE that vhost does not have yet.
///
/// [`BackendReq`]: vhost::vhost_user::message::BackendReq
pub mod standard {
    use vhost::vhost_user::message::BackendReq;

    /// IOTLB miss or access failure (not supported here).
    pub const IOTLB_MSG: u32 = BackendReq::IOTLB_MSG as u32;
    /// Device configuration changed (not supported here).
    pub const CONFIG_CHANGE_MSG: u32 = BackendReq::CONFIG_CHANGE_MSG as u32;
    /// Vring host notifier (not supported here).
    pub const VRING_HOST_NOTIFIER_MSG: u32 = BackendReq::VRING_HOST_NOTIFIER_MSG as u32;
    /// Vring call (not supported here).
    pub const VRING_CALL: u32 = BackendReq::VRING_CALL as u32;
    /// Vring error (not supported here).
    pub const VRING_ERR: u32 = BackendReq::VRING_ERR as u32;
    /// Shared object add (not supported here).
    pub const SHARED_OBJECT_ADD: u32 = BackendReq::SHARED_OBJECT_ADD as u32;
    /// Shared object remove (not supported here).
    pub const SHARED_OBJECT_REMOVE: u32 = BackendReq::SHARED_OBJECT_REMOVE as u32;
    /// Shared object lookup (not supported here).
    pub const SHARED_OBJECT_LOOKUP: u32 = BackendReq::SHARED_OBJECT_LOOKUP as u32;
    /// Map a file range into a shared memory region.
    pub const SHMEM_MAP: u32 = BackendReq::SHMEM_MAP as u32;
    /// Unmap a range of a shared memory region.
    pub const SHMEM_UNMAP: u32 = BackendReq::SHMEM_UNMAP as u32;
    /// Read guest memory (proposed, feature `mem-rw`).
    pub const MEM_READ: u32 = 11;
    /// Write guest memory (proposed, feature `mem-rw`).
    pub const MEM_WRITE: u32 = 12;
}

/// Backend-to-frontend request codes of the legacy virtio-fs DAX dialect.
pub mod legacy {
    /// Map up to eight file ranges into the DAX window.
    pub const FS_MAP: u32 = 6;
    /// Unmap up to eight ranges of the DAX window.
    pub const FS_UNMAP: u32 = 7;
    /// `msync` up to eight ranges of the DAX window.
    pub const FS_SYNC: u32 = 8;
    /// Read or write a file from or to guest physical addresses.
    pub const FS_IO: u32 = 9;
}

/// Which set of request codes the channel speaks. The codes of the two dialects clash (9 is
/// SHMEM_MAP in one and FS_IO in the other), so the dialect is fixed per channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// SHMEM_MAP / SHMEM_UNMAP (protocol feature SHMEM, bit 22), one mapping per message.
    #[default]
    Standard,
    /// FS_MAP / FS_UNMAP / FS_SYNC / FS_IO with eight entries per message.
    Legacy,
}

/// The message header, as it is on the wire (little endian, packed).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawHeader {
    /// Request code.
    pub request: u32,
    /// Version and flag bits.
    pub flags: u32,
    /// Size of the body that follows.
    pub size: u32,
}

// SAFETY: RawHeader is packed plain old data: every byte pattern is a valid value.
unsafe impl ByteValued for RawHeader {}

/// Legacy FS_MAP / FS_UNMAP / FS_SYNC / FS_IO payload (`VhostUserFSBackendMsg`, 256 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsBackendMsg {
    /// File offsets.
    pub fd_offset: [u64; FS_BACKEND_ENTRIES],
    /// Window offsets (FS_MAP, FS_UNMAP, FS_SYNC) or guest physical addresses (FS_IO).
    pub cache_offset: [u64; FS_BACKEND_ENTRIES],
    /// Lengths; entries with length 0 are skipped.
    pub len: [u64; FS_BACKEND_ENTRIES],
    /// [`FS_FLAG_MAP_R`] and [`FS_FLAG_MAP_W`].
    pub flags: [u64; FS_BACKEND_ENTRIES],
}

// SAFETY: FsBackendMsg is packed plain old data: every byte pattern is a valid value.
unsafe impl ByteValued for FsBackendMsg {}

/// Fixed part of the proposed MEM_READ / MEM_WRITE payload (`VhostUserMemRWMsg`).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemRwHeader {
    /// Guest physical address.
    pub guest_address: u64,
    /// Number of bytes; MEM_WRITE carries them after this header.
    pub size: u32,
}

// SAFETY: MemRwHeader is packed plain old data: every byte pattern is a valid value.
unsafe impl ByteValued for MemRwHeader {}

// The wire sizes the decoder relies on, vhost's struct included.
const _: () = assert!(size_of::<RawHeader>() == HEADER_SIZE);
const _: () = assert!(size_of::<VhostUserMMap>() == 40);
const _: () = assert!(size_of::<FsBackendMsg>() == 256);
const _: () = assert!(size_of::<MemRwHeader>() == 12);
