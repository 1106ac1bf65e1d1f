// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! How the device interrupts the guest: the VMM's side.

use std::io;

/// Kinds of interrupt a device raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioInterruptType {
    /// Configuration change.
    Config,
    /// Used buffers on a queue.
    Queue(u16),
}

/// The VMM's interrupt delivery.
pub trait VirtioInterrupt: Send + Sync {
    /// Raises an interrupt.
    fn trigger(&self, int_type: VirtioInterruptType) -> io::Result<()>;
}

/// A closure is an interrupt: the way a VMM hands in its own interrupt type without a wrapper
/// struct, e.g. `Arc::new(move |t| vmm_interrupt.trigger(to_vmm(t)))`.
impl<F> VirtioInterrupt for F
where
    F: Fn(VirtioInterruptType) -> io::Result<()> + Send + Sync,
{
    fn trigger(&self, int_type: VirtioInterruptType) -> io::Result<()> {
        self(int_type)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_closure_is_an_interrupt() {
        let raised = Arc::new(AtomicU32::new(0));
        let count = raised.clone();
        let irq: Arc<dyn VirtioInterrupt> = Arc::new(move |t| match t {
            VirtioInterruptType::Queue(q) => {
                count.fetch_add(u32::from(q) + 1, Ordering::Relaxed);
                Ok(())
            }
            VirtioInterruptType::Config => Err(io::Error::from_raw_os_error(libc::EIO)),
        });
        irq.trigger(VirtioInterruptType::Queue(1)).unwrap();
        assert!(irq.trigger(VirtioInterruptType::Config).is_err());
        assert_eq!(raised.load(Ordering::Relaxed), 2);
    }
}
