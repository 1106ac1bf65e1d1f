// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Wire format of the backend channel: header, request codes of both dialects, payload structs,
//! and a pure decoder.
//!
//! The decoder does no I/O and never panics: [`Header::parse`] takes the 12 header bytes,
//! [`decode_body`] takes the header, the body bytes and the number of file descriptors that came
//! with the message, and returns a typed [`Request`] or a typed [`DecodeError`]. The socket loop in
//! [`crate::channel`] only moves bytes and descriptors. [`decode_message`] chains both steps for
//! a contiguous buffer, which is what the fuzz target feeds.
//!
//! Only the shape of a message is checked here (sizes, flags, descriptor counts, arithmetic
//! overflow). Whether a range fits the window, is aligned, or clashes with a live mapping is the
//! window's business ([`crate::window`]), because only the window knows its size and its table.
//!
//! # Wire format
//!
//! Every message is a 12-byte [`RawHeader`] (request code, flags, body size; little endian) and
//! a body of at most [`MAX_BODY_SIZE`] bytes. The standard dialect's body is vhost's own
//! [`VhostUserMMap`]; the legacy dialect's is [`FsBackendMsg`] (eight entries), which vhost no
//! longer has.

mod decode;
mod encode;
mod request;
mod wire;

pub use self::decode::{decode_body, decode_message, DecodeError};
pub use self::encode::{encode_reply, encode_reply_with};
pub use self::request::{Access, Header, IoDirection, IoEntry, MapEntry, Range, Request};
pub use self::wire::{
    legacy, standard, Dialect, FsBackendMsg, MemRwHeader, RawHeader, VhostUserMMap,
    FLAG_NEED_REPLY, FLAG_REPLY, FS_BACKEND_ENTRIES, FS_FLAG_MAP_R, FS_FLAG_MAP_W, HEADER_SIZE,
    MAX_BODY_SIZE, MAX_FDS, MMAP_FLAG_WRITABLE, VERSION, VERSION_MASK,
};
