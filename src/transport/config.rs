// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-fs config space: [`VirtioFsConfig`] and [`read_config`].

use std::mem::size_of;

use vm_memory::{ByteValued, Le32};

/// Feature bit number (not mask) of `VIRTIO_FS_F_NOTIFICATION`: the device has a notification
/// queue, and the config space grows a `le32 notify_buf_size` (see [`VirtioFsConfig`]).
pub const VIRTIO_FS_F_NOTIFICATION: u64 = 0;

/// Length of the `tag` field of the config space.
pub const VIRTIO_FS_TAG_LEN: usize = 36;

/// Errors of [`VirtioFsConfig::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The tag is empty.
    #[error("the virtio-fs tag is empty")]
    EmptyTag,
    /// The tag does not fit the 36-byte field.
    #[error("the virtio-fs tag is {len} bytes long, more than {VIRTIO_FS_TAG_LEN}")]
    TagTooLong {
        /// Length of the tag in bytes (UTF-8).
        len: usize,
    },
    /// The tag contains a NUL byte, which would end it early in the guest.
    #[error("the virtio-fs tag contains a NUL byte")]
    TagHasNul,
    /// The device must have at least one request queue.
    #[error("a virtio-fs device needs at least one request queue")]
    NoRequestQueues,
}

/// The virtio-fs device configuration space (`struct virtio_fs_config`), 40 bytes.
///
/// | offset | field                       |
/// |--------|-----------------------------|
/// | 0      | `u8 tag[36]`                |
/// | 36     | `le32 num_request_queues`   |
///
/// The tag is UTF-8, padded with NUL bytes, and not NUL-terminated when it takes all 36 bytes.
/// The config space is read-only for the driver: a VMM ignores config writes.
///
/// With [`VIRTIO_FS_F_NOTIFICATION`] negotiated the spec appends `le32 notify_buf_size` at
/// offset 40. This crate does not implement the notification queue (nor does the Linux guest); a
/// VMM that offers it serves `config.as_slice()` followed by `notify_buf_size.to_le_bytes()`.
///
/// Build it with [`VirtioFsConfig::new`]; serve it with [`read_config`] over
/// [`ByteValued::as_slice`].
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioFsConfig {
    tag: [u8; VIRTIO_FS_TAG_LEN],
    num_request_queues: Le32,
}

// SAFETY: VirtioFsConfig is packed plain old data: every byte pattern is a valid value.
unsafe impl ByteValued for VirtioFsConfig {}

const _: () = assert!(size_of::<VirtioFsConfig>() == 40);

impl VirtioFsConfig {
    /// A config space with `tag` (the name the guest mounts: `mount -t virtiofs <tag> <dir>`)
    /// and `num_request_queues` request queues (not counting the high-priority queue).
    ///
    /// The tag must be 1 to 36 bytes of UTF-8 without NUL bytes; there must be at least one
    /// request queue.
    pub fn new(tag: &str, num_request_queues: u32) -> Result<Self, ConfigError> {
        let bytes = tag.as_bytes();
        if bytes.is_empty() {
            return Err(ConfigError::EmptyTag);
        }
        if bytes.len() > VIRTIO_FS_TAG_LEN {
            return Err(ConfigError::TagTooLong { len: bytes.len() });
        }
        if bytes.contains(&0) {
            return Err(ConfigError::TagHasNul);
        }
        if num_request_queues == 0 {
            return Err(ConfigError::NoRequestQueues);
        }
        let mut padded = [0u8; VIRTIO_FS_TAG_LEN];
        for (dst, src) in padded.iter_mut().zip(bytes) {
            *dst = *src;
        }
        Ok(Self {
            tag: padded,
            num_request_queues: Le32::from(num_request_queues),
        })
    }

    /// The tag bytes, without the NUL padding.
    pub fn tag(&self) -> &[u8] {
        let tag = &self.tag;
        let len = tag.iter().position(|&b| b == 0).unwrap_or(tag.len());
        tag.get(..len).unwrap_or(tag)
    }

    /// The number of request queues.
    pub fn num_request_queues(&self) -> u32 {
        // Copy the packed field out before using it.
        let n = self.num_request_queues;
        n.to_native()
    }
}

/// Serves a read of `data.len()` bytes at `offset` of a config space `config`.
///
/// The part of the read that overlaps `config` is copied; every other byte of `data` is set to
/// zero. It never panics, whatever the offset and the length (an offset near `u64::MAX`
/// included), the way cloud-hypervisor's `VirtioDevice::read_config` serves out-of-range reads.
pub fn read_config(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    let Some(src) = config.get(start..) else {
        return;
    };
    for (dst, src) in data.iter_mut().zip(src) {
        *dst = *src;
    }
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;

    // ---- config space ----

    #[test]
    fn config_layout() {
        assert_eq!(size_of::<VirtioFsConfig>(), 40);
        assert_eq!(offset_of!(VirtioFsConfig, tag), 0);
        assert_eq!(offset_of!(VirtioFsConfig, num_request_queues), 36);

        let config = VirtioFsConfig::new("myfs", 0x0102_0304).unwrap();
        let bytes = config.as_slice();
        assert_eq!(bytes.len(), 40);
        assert_eq!(&bytes[..4], b"myfs");
        assert!(bytes[4..36].iter().all(|&b| b == 0), "tag is NUL padded");
        assert_eq!(&bytes[36..40], &[0x04, 0x03, 0x02, 0x01], "little endian");
        assert_eq!(config.tag(), b"myfs");
        assert_eq!(config.num_request_queues(), 0x0102_0304);
    }

    #[test]
    fn config_round_trips_through_bytes() {
        let config = VirtioFsConfig::new("a-tag", 7).unwrap();
        let mut bytes = [0u8; 40];
        bytes.copy_from_slice(config.as_slice());
        let back = VirtioFsConfig::from_slice(&bytes).unwrap();
        assert_eq!(*back, config);
    }

    #[test]
    fn config_full_length_tag_is_not_terminated() {
        let tag = "x".repeat(36);
        let config = VirtioFsConfig::new(&tag, 1).unwrap();
        assert_eq!(&config.as_slice()[..36], tag.as_bytes());
        assert_eq!(config.tag(), tag.as_bytes());
        assert_eq!(config.as_slice()[36], 1);
    }

    #[test]
    fn config_tag_validation() {
        assert_eq!(VirtioFsConfig::new("", 1), Err(ConfigError::EmptyTag));
        assert_eq!(
            VirtioFsConfig::new(&"x".repeat(37), 1),
            Err(ConfigError::TagTooLong { len: 37 })
        );
        assert_eq!(VirtioFsConfig::new("a\0b", 1), Err(ConfigError::TagHasNul));
        assert_eq!(VirtioFsConfig::new("\0", 1), Err(ConfigError::TagHasNul));
        assert_eq!(VirtioFsConfig::new("tag\0", 1), Err(ConfigError::TagHasNul));
        assert_eq!(
            VirtioFsConfig::new("fs", 0),
            Err(ConfigError::NoRequestQueues)
        );
        assert!(VirtioFsConfig::new(&"x".repeat(36), 1).is_ok());
        assert!(VirtioFsConfig::new("x", u32::MAX).is_ok());
    }

    #[test]
    fn config_tag_length_counts_utf8_bytes() {
        // 12 three-byte characters: 36 bytes, fits; 13: 39 bytes, refused.
        let fits = "€".repeat(12);
        let config = VirtioFsConfig::new(&fits, 1).unwrap();
        assert_eq!(config.tag(), fits.as_bytes());
        assert_eq!(
            VirtioFsConfig::new(&"€".repeat(13), 1),
            Err(ConfigError::TagTooLong { len: 39 })
        );
    }

    #[test]
    fn config_errors_display() {
        for e in [
            ConfigError::EmptyTag,
            ConfigError::TagTooLong { len: 40 },
            ConfigError::TagHasNul,
            ConfigError::NoRequestQueues,
        ] {
            assert!(!e.to_string().is_empty());
        }
        assert!(ConfigError::TagTooLong { len: 40 }
            .to_string()
            .contains("40"));
    }

    /// A reference model of `read_config`: byte by byte, with checked arithmetic.
    fn model_read(config: &[u8], offset: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| {
                offset
                    .checked_add(i)
                    .and_then(|o| usize::try_from(o).ok())
                    .and_then(|o| config.get(o).copied())
                    .unwrap_or(0)
            })
            .collect()
    }

    #[test]
    fn read_config_edges() {
        let config = VirtioFsConfig::new("edge", 2).unwrap();
        let bytes = config.as_slice();

        // Inside.
        let mut data = [0xaa; 4];
        read_config(bytes, 0, &mut data);
        assert_eq!(&data, b"edge");
        read_config(bytes, 36, &mut data);
        assert_eq!(data, [2, 0, 0, 0]);

        // Partial overlap at the end: the rest is zero, not left as it was.
        let mut data = [0xaa; 8];
        read_config(bytes, 36, &mut data);
        assert_eq!(data, [2, 0, 0, 0, 0, 0, 0, 0]);
        let mut data = [0xaa; 4];
        read_config(bytes, 38, &mut data);
        assert_eq!(data, [0, 0, 0, 0]);

        // Exactly at the end, and past it.
        for offset in [40, 41, 4096] {
            let mut data = [0xaa; 4];
            read_config(bytes, offset, &mut data);
            assert_eq!(data, [0; 4], "offset {offset}");
        }

        // Huge offsets: no panic, no wrap-around to the start.
        for offset in [
            u64::MAX,
            u64::MAX - 1,
            u64::MAX - 3,
            u64::MAX - 39,
            1 << 63,
            u64::from(u32::MAX),
            usize::MAX as u64,
        ] {
            let mut data = [0xaa; 64];
            read_config(bytes, offset, &mut data);
            assert_eq!(data, [0; 64], "offset {offset:#x}");
        }

        // Empty reads and an empty config.
        read_config(bytes, u64::MAX, &mut []);
        read_config(bytes, 0, &mut []);
        let mut data = [0xaa; 3];
        read_config(&[], 0, &mut data);
        assert_eq!(data, [0; 3]);

        // A read longer than the whole config.
        let mut data = [0xaa; 100];
        read_config(bytes, 0, &mut data);
        assert_eq!(&data[..40], bytes);
        assert!(data[40..].iter().all(|&b| b == 0));
    }

    #[test]
    fn read_config_matches_model_everywhere() {
        let config = VirtioFsConfig::new("model-tag", 0xdead_beef).unwrap();
        let bytes = config.as_slice();
        for offset in 0..=48u64 {
            for len in 0..=48usize {
                let mut data = vec![0x5a; len];
                read_config(bytes, offset, &mut data);
                assert_eq!(
                    data,
                    model_read(bytes, offset, len),
                    "offset {offset} len {len}"
                );
            }
        }
    }
}
