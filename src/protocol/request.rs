// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the decoder makes of a message: a validated [`Header`] and a typed [`Request`] made of
//! window ranges, map entries and IO transfers.

/// A validated header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Header {
    /// Request code (meaning depends on the dialect).
    pub request: u32,
    /// The sender waits for a reply.
    pub need_reply: bool,
    /// Body size announced by the header.
    pub size: u32,
}

/// Access a mapping grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// `PROT_READ`.
    ReadOnly,
    /// `PROT_READ | PROT_WRITE`.
    ReadWrite,
}

/// One range to map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// Offset in the window.
    pub offset: u64,
    /// Offset in the file.
    pub fd_offset: u64,
    /// Length.
    pub len: u64,
    /// Protection.
    pub access: Access,
}

/// One window range (unmap, sync).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// Offset in the window.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

/// Direction of an IO transfer, seen from the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDirection {
    /// pread: file to guest memory.
    ReadFile,
    /// pwrite: guest memory to file.
    WriteFile,
}

/// One legacy FS_IO transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoEntry {
    /// Guest physical address.
    pub gpa: u64,
    /// Offset in the file.
    pub fd_offset: u64,
    /// Length.
    pub len: u64,
    /// Direction.
    pub direction: IoDirection,
}

/// A decoded request. The file descriptors are not part of it: the socket loop owns them and
/// hands them to the window next to the request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// Standard SHMEM_MAP of one range of region `shmid`.
    ShmemMap {
        /// Shared memory region id.
        shmid: u8,
        /// The range.
        entry: MapEntry,
    },
    /// Standard SHMEM_UNMAP of one range of region `shmid`.
    ShmemUnmap {
        /// Shared memory region id.
        shmid: u8,
        /// The range.
        range: Range,
    },
    /// Legacy FS_MAP of up to eight ranges (entries of length 0 left out, as below).
    FsMap(Vec<MapEntry>),
    /// Legacy FS_UNMAP of up to eight ranges.
    FsUnmap(Vec<Range>),
    /// Legacy FS_UNMAP of the whole window (`len == u64::MAX`).
    FsUnmapAll,
    /// Legacy FS_SYNC of up to eight ranges.
    FsSync(Vec<Range>),
    /// Legacy FS_IO of up to eight transfers.
    FsIo(Vec<IoEntry>),
    /// Proposed MEM_READ: read `size` bytes of guest memory at `gpa`.
    MemRead {
        /// Guest physical address.
        gpa: u64,
        /// Number of bytes.
        size: u32,
    },
    /// Proposed MEM_WRITE: write `data` to guest memory at `gpa`.
    MemWrite {
        /// Guest physical address.
        gpa: u64,
        /// The bytes.
        data: Vec<u8>,
    },
}

impl Request {
    /// Number of file descriptors this request needs.
    pub fn fds_needed(&self) -> usize {
        match self {
            Request::ShmemMap { .. } | Request::FsMap(_) | Request::FsIo(_) => 1,
            Request::ShmemUnmap { .. }
            | Request::FsUnmap(_)
            | Request::FsUnmapAll
            | Request::FsSync(_)
            | Request::MemRead { .. }
            | Request::MemWrite { .. } => 0,
        }
    }
}
