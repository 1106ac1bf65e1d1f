// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest loads and stores in the DAX window.

use vm_memory::volatile_memory::VolatileSlice;

use super::{GuestError, Result};
use crate::protocol::Access;
use crate::window::DaxWindow;

/// Checks that `[gpa, gpa + len)` lies in the window placed at `gpa_base` and is covered by
/// live mappings (writable ones for a store); returns the host address.
fn window_access(
    window: &DaxWindow,
    gpa_base: u64,
    gpa: u64,
    len: usize,
    write: bool,
) -> Result<*mut u8> {
    let outside = GuestError::OutsideWindow { gpa, len };
    let offset = gpa.checked_sub(gpa_base).ok_or(outside)?;
    let end = offset
        .checked_add(len as u64)
        .filter(|&e| e <= window.size())
        .ok_or(GuestError::OutsideWindow { gpa, len })?;
    let mut at = offset;
    for m in window.mappings() {
        if at >= end {
            break;
        }
        if m.offset + m.len <= at {
            continue;
        }
        if m.offset > at || (write && m.access != Access::ReadWrite) {
            break;
        }
        at = m.offset + m.len;
    }
    if at < end {
        return Err(GuestError::Unmapped { gpa, len });
    }
    Ok((window.host_addr() + offset) as *mut u8)
}

/// A guest load of `buf.len()` bytes at guest address `gpa` in the DAX window placed at
/// `gpa_base` (what the guest does with a DAX-mapped file).
///
/// Only live mappings ([`DaxWindow::mappings`]) can be read. A real guest faults on an
/// unmapped page (the window's reservation is `PROT_NONE`) and its driver would have set up a
/// mapping first; this returns [`GuestError::Unmapped`] instead, and
/// [`GuestError::OutsideWindow`] past the window.
///
/// The caller must make sure no mapping of the range is removed while the copy runs (the page
/// would become `PROT_NONE` and the process take a `SIGSEGV`), and that the file is not
/// truncated below the range (`SIGBUS`), as a guest driver does by holding its mappings.
pub fn guest_read(window: &DaxWindow, gpa_base: u64, gpa: u64, buf: &mut [u8]) -> Result<()> {
    let p = window_access(window, gpa_base, gpa, buf.len(), false)?;
    // SAFETY: `window_access` checked that `[p, p + buf.len())` is inside the window's
    // reservation and covered by live readable mappings; the caller keeps them live (see above).
    // Accessed only through volatile copies, since the backend or the file may change the bytes
    // under us.
    let slice = unsafe { VolatileSlice::new(p, buf.len()) };
    // vm-memory's copy: one volatile access up to a word, a memcpy beyond, as a guest's copy
    // loop would run.
    slice.copy_to(buf);
    Ok(())
}

/// A guest store of `data` at guest address `gpa` in the DAX window placed at `gpa_base`: the
/// bytes land in the mapped file. Only live writable mappings can be written; see
/// [`guest_read`] for the errors and what the caller must guarantee.
pub fn guest_write(window: &DaxWindow, gpa_base: u64, gpa: u64, data: &[u8]) -> Result<()> {
    let p = window_access(window, gpa_base, gpa, data.len(), true)?;
    // SAFETY: `window_access` checked that `[p, p + data.len())` is inside the window's
    // reservation and covered by live writable mappings, which the caller keeps live; accessed
    // only through volatile copies.
    let slice = unsafe { VolatileSlice::new(p, data.len()) };
    slice.copy_from(data);
    Ok(())
}
