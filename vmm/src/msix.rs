// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The MSI-X table of a PCI function: the vector entries the guest programs, the capability's
//! enable and function-mask bits, and which vectors may fire now. No I/O: the PCI transport turns
//! [`MsixTable::active`] into KVM routes and irqfds.
//!
//! Pending bits are not kept: a vector that is masked has no irqfd attached, so its interrupts
//! accumulate in the eventfd and KVM delivers them the moment the irqfd is attached again (on
//! unmask). The PBA therefore always reads zero.

/// Size of one table entry: message address (low, high), message data, vector control.
pub const ENTRY_SIZE: u64 = 16;
/// Vector control bit 0: the vector is masked.
const VECTOR_MASKED: u32 = 1;
/// Message control: MSI-X enable.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Value of a queue's or the config's vector register meaning "no vector".
pub const NO_VECTOR: u16 = 0xffff;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Default for Entry {
    fn default() -> Self {
        // Every vector is masked after reset (PCI spec).
        Entry {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            control: VECTOR_MASKED,
        }
    }
}

/// One MSI message that may be delivered now: the vector, its address and data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    /// Vector index in the table.
    pub vector: u16,
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// An MSI-X table and the capability's control bits.
#[derive(Debug)]
pub struct MsixTable {
    entries: Vec<Entry>,
    enabled: bool,
    function_masked: bool,
}

impl MsixTable {
    /// A table of `n` vectors (1 to 2048), all masked, MSI-X disabled.
    pub fn new(n: u16) -> Self {
        let n = n.clamp(1, 2048);
        MsixTable {
            entries: vec![Entry::default(); usize::from(n)],
            enabled: false,
            function_masked: false,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Size of the table in bytes.
    pub fn table_bytes(&self) -> u64 {
        u64::from(self.len()) * ENTRY_SIZE
    }

    /// Size of the pending bit array in bytes (whole qwords).
    pub fn pba_bytes(&self) -> u64 {
        u64::from(self.len()).div_ceil(64) * 8
    }

    /// The message control register: table size - 1, function mask, enable.
    pub fn control(&self) -> u16 {
        let mut v = (self.len() - 1) & 0x7ff;
        if self.function_masked {
            v |= CONTROL_FUNCTION_MASK;
        }
        if self.enabled {
            v |= CONTROL_ENABLE;
        }
        v
    }

    /// The guest wrote the message control register; only enable and function mask are
    /// writable.
    pub fn set_control(&mut self, v: u16) {
        self.enabled = v & CONTROL_ENABLE != 0;
        self.function_masked = v & CONTROL_FUNCTION_MASK != 0;
    }

    /// Whether `v` names a vector of the table.
    pub fn has_vector(&self, v: u16) -> bool {
        usize::from(v) < self.entries.len()
    }

    /// The message of vector `v` if it may fire now: MSI-X enabled, function not masked, vector
    /// not masked.
    pub fn active(&self, v: u16) -> Option<Message> {
        if !self.enabled || self.function_masked {
            return None;
        }
        let e = self.entries.get(usize::from(v))?;
        (e.control & VECTOR_MASKED == 0).then_some(Message {
            vector: v,
            address: u64::from(e.addr_lo) | (u64::from(e.addr_hi) << 32),
            data: e.data,
        })
    }

    /// Every message that may fire now.
    pub fn active_messages(&self) -> impl Iterator<Item = Message> + '_ {
        (0..self.len()).filter_map(|v| self.active(v))
    }

    fn dword(&self, index: u64) -> Option<u32> {
        let e = self.entries.get(usize::try_from(index / 4).ok()?)?;
        Some(match index % 4 {
            0 => e.addr_lo,
            1 => e.addr_hi,
            2 => e.data,
            _ => e.control,
        })
    }

    fn set_dword(&mut self, index: u64, v: u32) -> bool {
        let Some(e) = usize::try_from(index / 4)
            .ok()
            .and_then(|i| self.entries.get_mut(i))
        else {
            return false;
        };
        match index % 4 {
            0 => e.addr_lo = v,
            1 => e.addr_hi = v,
            2 => e.data = v,
            // Only the mask bit is writable; the reserved bits read as zero.
            _ => e.control = v & VECTOR_MASKED,
        }
        true
    }

    /// A guest read of the table at `offset`: aligned dword or qword accesses. Returns `false`
    /// (and zeroes `data`) for anything else.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> bool {
        data.fill(0);
        let (len, first) = (data.len() as u64, offset / 4);
        if !(len == 4 || len == 8) || !offset.is_multiple_of(len) {
            return false;
        }
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            match self.dword(first + i as u64) {
                Some(v) => chunk.copy_from_slice(&v.to_le_bytes()),
                None => return false,
            }
        }
        true
    }

    /// A guest write of the table at `offset`: aligned dword or qword accesses. Returns `false`
    /// for anything else, and changes nothing then.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        let (len, first) = (data.len() as u64, offset / 4);
        if !(len == 4 || len == 8)
            || !offset.is_multiple_of(len)
            || self.dword(first + len / 4 - 1).is_none()
        {
            return false;
        }
        for (i, chunk) in data.chunks(4).enumerate() {
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            self.set_dword(first + i as u64, u32::from_le_bytes(b));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(t: &mut MsixTable, v: u16, addr: u64, data: u32) {
        let base = u64::from(v) * ENTRY_SIZE;
        assert!(t.write(base, &addr.to_le_bytes()));
        assert!(t.write(base + 8, &data.to_le_bytes()));
        assert!(t.write(base + 12, &0u32.to_le_bytes()));
    }

    #[test]
    fn fires_only_when_enabled_and_unmasked() {
        let mut t = MsixTable::new(3);
        assert_eq!(t.control(), 2);
        program(&mut t, 1, 0xfee0_0000, 0x41);
        assert_eq!(t.active(1), None, "MSI-X disabled");
        t.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        assert_eq!(t.active(1), None, "function masked");
        t.set_control(CONTROL_ENABLE);
        assert_eq!(
            t.active(1),
            Some(Message {
                vector: 1,
                address: 0xfee0_0000,
                data: 0x41
            })
        );
        assert_eq!(t.active(0), None, "vector 0 still masked");
        assert_eq!(t.active(3), None, "no such vector");
        assert_eq!(t.active_messages().count(), 1);
        assert!(t.write(16 + 12, &1u32.to_le_bytes()));
        assert_eq!(t.active(1), None, "masked again");
    }

    #[test]
    fn bad_accesses_change_nothing() {
        let mut t = MsixTable::new(2);
        let before = format!("{t:?}");
        assert!(!t.write(2, &[1, 2, 3, 4]), "misaligned");
        assert!(!t.write(0, &[1, 2]), "short");
        assert!(!t.write(4, &[0; 8]), "misaligned qword");
        assert!(!t.write(32, &[0; 4]), "past the table");
        assert!(!t.write(u64::MAX - 3, &[0; 4]), "huge offset");
        assert!(!t.write(28, &[0; 8]), "qword past the end");
        assert_eq!(before, format!("{t:?}"));
        let mut d = [0xaa; 4];
        assert!(!t.read(u64::MAX - 3, &mut d));
        assert_eq!(d, [0; 4]);
        let mut d = [0; 4];
        assert!(t.read(12, &mut d));
        assert_eq!(u32::from_le_bytes(d), 1, "masked after reset");
        assert!(t.write(12, &0xffff_fffeu32.to_le_bytes()));
        assert!(t.read(12, &mut d));
        assert_eq!(u32::from_le_bytes(d), 0, "reserved control bits read zero");
    }

    #[test]
    fn sizes() {
        assert_eq!(MsixTable::new(3).table_bytes(), 48);
        assert_eq!(MsixTable::new(3).pba_bytes(), 8);
        assert_eq!(MsixTable::new(65).pba_bytes(), 16);
        assert_eq!(MsixTable::new(0).len(), 1);
    }
}
