// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The FUSE wire format of the Linux uapi `<linux/fuse.h>` (little endian, as virtio-fs
//! requires), as far as this simulator uses it.

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
        assert_eq!(parse_reply(&r, 7).unwrap(), Ok(&[1u8, 2, 3, 4][..]));
        assert!(parse_reply(&r, 8).is_err());
        assert!(parse_reply(&r[..18], 7).is_err());
        let e = OutHeader {
            len: 16,
            error: -libc::ENOSYS,
            unique: 7,
        };
        assert_eq!(parse_reply(e.as_slice(), 7).unwrap(), Err(-libc::ENOSYS));
    }
}
