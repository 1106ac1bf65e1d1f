// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`FsSnapshot`]: the device state saved for snapshot and live migration, and its encoding.

use virtio_queue::QueueState;

use super::{Error, Result};

/// A device snapshot. [`FsSnapshot::to_bytes`] and [`FsSnapshot::from_bytes`] give a stable
/// little-endian encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsSnapshot {
    /// Features the driver acked.
    pub acked_features: u64,
    /// Configuration space bytes.
    pub config: Vec<u8>,
    /// Queue states (empty when the device was not activated).
    pub queues: Vec<QueueState>,
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"VFSDAX01";

impl FsSnapshot {
    /// Encodes the snapshot.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = SNAPSHOT_MAGIC.to_vec();
        v.extend_from_slice(&self.acked_features.to_le_bytes());
        v.extend_from_slice(&(self.config.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.config);
        v.extend_from_slice(&(self.queues.len() as u32).to_le_bytes());
        for q in &self.queues {
            for x in [q.max_size, q.next_avail, q.next_used, q.size] {
                v.extend_from_slice(&x.to_le_bytes());
            }
            v.push(u8::from(q.event_idx_enabled));
            v.push(u8::from(q.ready));
            for x in [q.desc_table, q.avail_ring, q.used_ring] {
                v.extend_from_slice(&x.to_le_bytes());
            }
        }
        v
    }

    /// Decodes a snapshot; never panics on malformed input.
    pub fn from_bytes(bytes: &[u8]) -> Result<FsSnapshot> {
        let mut r = Reader(bytes);
        if r.take(SNAPSHOT_MAGIC.len()) != Some(SNAPSHOT_MAGIC) {
            return Err(Error::BadSnapshot("unknown format"));
        }
        let snap = (|| {
            let acked_features = r.u64()?;
            let n = r.u32()? as usize;
            let config = r.take(n)?.to_vec();
            let nq = r.u32()?;
            let mut queues = Vec::new();
            for _ in 0..nq {
                queues.push(QueueState {
                    max_size: r.u16()?,
                    next_avail: r.u16()?,
                    next_used: r.u16()?,
                    size: r.u16()?,
                    event_idx_enabled: r.take(1)?[0] != 0,
                    ready: r.take(1)?[0] != 0,
                    desc_table: r.u64()?,
                    avail_ring: r.u64()?,
                    used_ring: r.u64()?,
                });
            }
            r.0.is_empty().then_some(FsSnapshot {
                acked_features,
                config,
                queues,
            })
        })();
        snap.ok_or(Error::BadSnapshot("malformed bytes"))
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }
}
