// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Replies to the backend: a header echoing the request code with the REPLY flag, then the
//! payload (`0` or `-errno` as a `u64`, or the bytes MEM_READ read).

use vm_memory::ByteValued;

use super::wire::{RawHeader, FLAG_REPLY, HEADER_SIZE, VERSION};

/// Encodes a reply: header (version 1, REPLY) echoing `request`, then the `u64` payload.
pub fn encode_reply(request: u32, value: u64) -> Vec<u8> {
    encode_reply_with(request, &value.to_le_bytes())
}

/// Encodes a reply with an arbitrary payload (MEM_READ returns the bytes it read).
pub fn encode_reply_with(request: u32, payload: &[u8]) -> Vec<u8> {
    let header = RawHeader {
        request,
        flags: VERSION | FLAG_REPLY,
        size: payload.len() as u32,
    };
    let mut out = Vec::with_capacity(HEADER_SIZE + payload.len());
    out.extend_from_slice(header.as_slice());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::standard;

    #[test]
    fn replies() {
        let r = encode_reply(standard::SHMEM_MAP, (-(libc::EINVAL as i64)) as u64);
        assert_eq!(r.len(), HEADER_SIZE + 8);
        assert_eq!(&r[0..4], &standard::SHMEM_MAP.to_le_bytes());
        assert_eq!(&r[4..8], &(VERSION | FLAG_REPLY).to_le_bytes());
        assert_eq!(&r[8..12], &8u32.to_le_bytes());
        assert_eq!(i64::from_le_bytes(r[12..].try_into().unwrap()), -22);
        let d = encode_reply_with(standard::MEM_READ, &[1, 2, 3]);
        assert_eq!(&d[8..12], &3u32.to_le_bytes());
        assert_eq!(&d[12..], &[1, 2, 3]);
    }
}
