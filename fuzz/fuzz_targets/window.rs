// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Fuzzes `DaxWindow` against a model.
//!
//! The input is a sequence of operations (map, unmap, unmap_all, sync, switch policy) on a fresh
//! 4 MiB window, with file ranges of one memfd. Offsets, lengths and file offsets are drawn from
//! the input so that valid (page aligned, in the window, over live mappings) and invalid
//! (misaligned, out of the window, overflowing, zero) values all occur.
//!
//! After every operation the result (Ok, which range error, mmap failure) and
//! `window.mappings()` must equal what a page-granular model predicts, and the metrics gauges
//! must agree. The model implements the policies independently:
//! - `Reject`: a map that overlaps any live mapping is refused;
//! - `ReplaceExact`: overlap is allowed only when the range is exactly one live mapping;
//! - under both, the entries of one request must not overlap each other;
//! - `Replace`: overlap trims or splits what it covers (later entries over earlier ones too);
//! - `Exact` unmap: the range must be exactly one live mapping;
//! - `Any` unmap: trims or splits, unmapped parts ignored.
//!
//! At the end of every input, `/proc/self/maps` must show the memfd only inside
//! `[host_addr, host_addr + size)`, exactly on the pages the model says are mapped (with the
//! model's protection and file offset), the rest of the window must be the `PROT_NONE`
//! reservation (no hole), and once the window is dropped nothing of the memfd may remain mapped.

#![no_main]

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use virtio_fs_dax::protocol::{Access, MapEntry, Range};
use virtio_fs_dax::window::{DaxWindow, Error, Mapping, Policy, RangeError};

const WINDOW_SIZE: u64 = 4 << 20;
const MEMFD_NAME: &std::ffi::CStr = c"virtio-fs-dax-fuzz-window";
const POLICIES: [Policy; 3] = [Policy::STANDARD, Policy::STANDARD_REPLACE, Policy::LEGACY];
/// Most entries one request may carry (the legacy message has eight).
const MAX_ENTRIES: u8 = 8;
/// Largest file offset the kernel maps (`off_t` is signed).
const OFF_T_MAX: u64 = i64::MAX as u64;

struct Memfd {
    file: File,
    ino: u64,
}

fn memfd() -> &'static Memfd {
    static MEMFD: OnceLock<Memfd> = OnceLock::new();
    MEMFD.get_or_init(|| {
        // SAFETY: memfd_create with a valid NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(MEMFD_NAME.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(WINDOW_SIZE).expect("ftruncate memfd");
        let ino = file.metadata().expect("fstat memfd").ino();
        Memfd { file, ino }
    })
}

// ---------------------------------------------------------------------------------------------
// Input decoding

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }

    fn u64(&mut self) -> Option<u64> {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8()?;
        }
        Some(u64::from_le_bytes(b))
    }
}

/// A window offset: mostly page aligned and low (so that ranges overlap), sometimes anywhere in
/// or just past the window, misaligned, huge, or raw.
fn gen_offset(inp: &mut Input, page: u64) -> Option<u64> {
    let pages = WINDOW_SIZE / page;
    Some(match inp.u8()? % 16 {
        0..=7 => u64::from(inp.u8()? % 32) * page,
        8..=11 => u64::from(inp.u16()?) % (pages + 8) * page,
        12 => WINDOW_SIZE - u64::from(inp.u8()? % 8) * page,
        13 => u64::from(inp.u8()? % 32) * page + 1 + u64::from(inp.u16()?) % (page - 1),
        14 => u64::MAX - u64::from(inp.u8()?) * page,
        _ => inp.u64()?,
    })
}

/// A length: mostly a few pages, sometimes large, zero, misaligned, overflowing, or raw.
fn gen_len(inp: &mut Input, page: u64) -> Option<u64> {
    let pages = WINDOW_SIZE / page;
    Some(match inp.u8()? % 16 {
        0..=9 => u64::from(1 + inp.u8()? % 16) * page,
        10..=11 => (1 + u64::from(inp.u16()?) % (pages + 4)) * page,
        12 => 0,
        13 => u64::from(inp.u8()? % 16) * page + 1 + u64::from(inp.u16()?) % (page - 1),
        14 => u64::MAX - u64::from(inp.u8()?) * page,
        _ => inp.u64()?,
    })
}

/// A file offset: mostly page aligned in the memfd, sometimes past its end, misaligned, close to
/// `i64::MAX` (past it, `off_t` overflows and the kernel would refuse the mmap), or raw.
fn gen_fd_offset(inp: &mut Input, page: u64) -> Option<u64> {
    Some(match inp.u8()? % 8 {
        0..=3 => u64::from(inp.u8()? % 64) * page,
        4 => u64::from(inp.u16()?) * page,
        5 => u64::from(inp.u16()?),
        6 => (1u64 << 63) - u64::from(inp.u8()? % 16) * page,
        _ => inp.u64()?,
    })
}

/// A window range: often exactly a live mapping, or one nudged by a page, else independent.
fn gen_range(inp: &mut Input, model: &Model) -> Option<(u64, u64)> {
    let page = model.page;
    let tag = inp.u8()?;
    let segs = model.segments();
    if !segs.is_empty() && tag % 4 < 2 {
        let m = segs[usize::from(inp.u8()?) % segs.len()];
        return Some(match (tag % 4, tag >> 4) {
            (0, _) => (m.offset, m.len),
            (_, 0..=3) => (m.offset.wrapping_sub(page), m.len + page),
            (_, 4..=7) => (m.offset + page, m.len.wrapping_sub(page)),
            (_, 8..=11) => (m.offset, m.len + page),
            _ => (m.offset, m.len.wrapping_sub(page)),
        });
    }
    Some((gen_offset(inp, page)?, gen_len(inp, page)?))
}

fn gen_count(inp: &mut Input, op: u8) -> Option<usize> {
    Some(if op & 0x80 == 0 {
        1
    } else {
        usize::from(inp.u8()? % (MAX_ENTRIES + 1))
    })
}

// ---------------------------------------------------------------------------------------------
// The model

/// One page of the window that holds a file page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Page {
    /// Which map entry put it there: runs of pages with one id are the live mappings.
    id: u64,
    access: Access,
    fd_offset: u64,
}

#[derive(Clone, Debug)]
struct Model {
    page: u64,
    /// Page index in the window -> the file page mapped there.
    pages: BTreeMap<u64, Page>,
    next_id: u64,
}

/// What an operation must do.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Refused before any syscall: the table is unchanged.
    Range {
        offset: u64,
        len: u64,
        reason: RangeError,
    },
    /// mmap failed. The model never expects it: the range checks refuse everything the kernel
    /// would (file ranges past `off_t`), so an mmap failure is a finding.
    MapFailed,
}

impl Model {
    fn new(page: u64) -> Self {
        Model {
            page,
            pages: BTreeMap::new(),
            next_id: 0,
        }
    }

    /// The live mappings: maximal runs of consecutive pages put there by one map entry.
    fn segments(&self) -> Vec<Mapping> {
        let mut out: Vec<(u64, u64, Page)> = Vec::new();
        for (&idx, &p) in &self.pages {
            match out.last_mut() {
                Some((start, n, first)) if *start + *n == idx && first.id == p.id => *n += 1,
                _ => out.push((idx, 1, p)),
            }
        }
        out.into_iter()
            .map(|(start, n, p)| Mapping::new(start * self.page, n * self.page, p.access))
            .collect()
    }

    fn any_in(&self, first: u64, n: u64) -> bool {
        self.pages.range(first..first + n).next().is_some()
    }

    /// Whether `[first, first + n)` is exactly one live mapping.
    fn is_one_mapping(&self, first: u64, n: u64) -> bool {
        let Some(p) = self.pages.get(&first) else {
            return false;
        };
        let same = |i: u64| self.pages.get(&i).is_some_and(|q| q.id == p.id);
        (first..first + n).all(same) && (first == 0 || !same(first - 1)) && !same(first + n)
    }

    fn insert(&mut self, first: u64, n: u64, access: Access, fd_offset: u64) {
        let id = self.next_id;
        self.next_id += 1;
        for i in 0..n {
            let fd_offset = fd_offset + i * self.page;
            self.pages.insert(
                first + i,
                Page {
                    id,
                    access,
                    fd_offset,
                },
            );
        }
    }

    fn remove(&mut self, first: u64, n: u64) {
        for i in first..first + n {
            self.pages.remove(&i);
        }
    }

    /// The documented range checks, in the documented order: empty, overflow (window end, then
    /// file end, which must fit `off_t`), out of the window, alignment.
    fn check(&self, offset: u64, len: u64, fd_offset: Option<u64>) -> Result<(), Outcome> {
        let err = |reason| Outcome::Range {
            offset,
            len,
            reason,
        };
        if len == 0 {
            return Err(err(RangeError::Empty));
        }
        let Some(end) = offset.checked_add(len) else {
            return Err(err(RangeError::Overflow));
        };
        if fd_offset.is_some_and(|f| f.checked_add(len).is_none_or(|end| end > OFF_T_MAX)) {
            return Err(err(RangeError::Overflow));
        }
        if end > WINDOW_SIZE {
            return Err(err(RangeError::OutOfWindow));
        }
        let misaligned = |v: u64| !v.is_multiple_of(self.page);
        if misaligned(offset) || misaligned(len) || fd_offset.is_some_and(misaligned) {
            return Err(err(RangeError::Misaligned));
        }
        Ok(())
    }

    /// Predicts a map. Every entry is checked before any is mapped; with the range checks
    /// passed, the kernel maps every range (the memfd may be shorter: mmap does not care).
    fn map(&mut self, entries: &[MapEntry], policy: Policy) -> Outcome {
        use virtio_fs_dax::window::OverlapPolicy as O;
        let page = self.page;
        for (i, e) in entries.iter().enumerate() {
            if let Err(o) = self.check(e.offset, e.len, Some(e.fd_offset)) {
                return o;
            }
            let (first, n) = (e.offset / page, e.len / page);
            let busy = match policy.overlap {
                O::Replace => false,
                // Against the live mappings, and the entries of one request must be disjoint.
                O::Reject | O::ReplaceExact => {
                    let live_ok = !self.any_in(first, n)
                        || (policy.overlap == O::ReplaceExact && self.is_one_mapping(first, n));
                    let end = e.offset + e.len;
                    let clash = entries[..i]
                        .iter()
                        .any(|p| p.offset < end && e.offset < p.offset + p.len);
                    !live_ok || clash
                }
            };
            if busy {
                return Outcome::Range {
                    offset: e.offset,
                    len: e.len,
                    reason: RangeError::Busy,
                };
            }
        }
        // All checked: the entries are mapped in order, later ones over earlier ones.
        for e in entries {
            self.insert(e.offset / page, e.len / page, e.access, e.fd_offset);
        }
        Outcome::Ok
    }

    fn unmap(&mut self, ranges: &[Range], policy: Policy) -> Outcome {
        use virtio_fs_dax::window::UnmapPolicy as U;
        let page = self.page;
        let mut planned = self.clone();
        for r in ranges {
            if let Err(o) = self.check(r.offset, r.len, None) {
                return o;
            }
            let (first, n) = (r.offset / page, r.len / page);
            if policy.unmap == U::Exact && !planned.is_one_mapping(first, n) {
                return Outcome::Range {
                    offset: r.offset,
                    len: r.len,
                    reason: RangeError::NotMapped,
                };
            }
            planned.remove(first, n);
        }
        *self = planned;
        Outcome::Ok
    }

    fn sync(&self, ranges: &[Range]) -> Outcome {
        for r in ranges {
            if let Err(o) = self.check(r.offset, r.len, None) {
                return o;
            }
        }
        Outcome::Ok
    }
}

fn outcome(res: Result<(), Error>) -> Outcome {
    match res {
        Ok(()) => Outcome::Ok,
        Err(Error::Range {
            offset,
            len,
            reason,
            ..
        }) => Outcome::Range {
            offset,
            len,
            reason,
        },
        Err(Error::Map { .. }) => Outcome::MapFailed,
        Err(e) => panic!("unexpected window error: {e:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// /proc/self/maps

struct Vma {
    start: u64,
    end: u64,
    perms: String,
    offset: u64,
    memfd: bool,
}

fn vmas(ino: u64) -> Vec<Vma> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .map(|line| {
            let mut f = line.split_ascii_whitespace();
            let (range, perms, offset) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            let (_dev, inode) = (f.next().unwrap(), f.next().unwrap());
            let path = f.next().unwrap_or("");
            let (start, end) = range.split_once('-').unwrap();
            let hex = |s| u64::from_str_radix(s, 16).unwrap();
            Vma {
                start: hex(start),
                end: hex(end),
                perms: perms.to_string(),
                offset: hex(offset),
                memfd: path.starts_with("/memfd:") && inode.parse::<u64>().unwrap() == ino,
            }
        })
        .collect()
}

/// The window's pages as the kernel has them, checked against the model.
fn check_address_space(window: &DaxWindow, model: &Model, ino: u64) {
    let (base, size, page) = (window.host_addr(), window.size(), model.page);
    let vmas = vmas(ino);
    for v in vmas.iter().filter(|v| v.memfd) {
        assert!(
            v.start >= base && v.end <= base + size,
            "memfd mapped at {:#x}-{:#x}, outside the window {base:#x}-{:#x}",
            v.start,
            v.end,
            base + size
        );
    }
    let mut expected = model.pages.iter().peekable();
    let mut at = base;
    for v in vmas
        .iter()
        .filter(|v| v.end > base && v.start < base + size)
    {
        assert_eq!(v.start.max(base), at, "hole in the window at {at:#x}");
        let end = v.end.min(base + size);
        while at < end {
            let idx = (at - base) / page;
            let want = match expected.peek() {
                Some(&(&i, p)) if i == idx => {
                    expected.next();
                    Some(p)
                }
                _ => None,
            };
            match want {
                Some(p) => {
                    let perms = match p.access {
                        Access::ReadOnly => "r--s",
                        Access::ReadWrite => "rw-s",
                    };
                    assert!(v.memfd, "page {idx} should be the memfd, is {}", v.perms);
                    assert_eq!(v.perms, perms, "protection of page {idx}");
                    assert_eq!(
                        v.offset + (at - v.start),
                        p.fd_offset,
                        "file offset of page {idx}"
                    );
                }
                None => {
                    assert!(
                        !v.memfd,
                        "page {idx} should be the reservation, is the memfd"
                    );
                    assert_eq!(
                        v.perms, "---p",
                        "page {idx} should be the PROT_NONE reservation"
                    );
                }
            }
            at += page;
        }
    }
    assert_eq!(at, base + size, "hole at the end of the window at {at:#x}");
    assert!(expected.next().is_none());
}

// ---------------------------------------------------------------------------------------------

fn run(data: &[u8]) {
    let memfd = memfd();
    let window = DaxWindow::new(WINDOW_SIZE).expect("create window");
    let page = window.page_size();
    let mut model = Model::new(page);
    let mut inp = Input(data);
    let Some(first) = inp.u8() else {
        return;
    };
    let mut policy_idx = usize::from(first) % POLICIES.len();

    while let Some(op) = inp.u8() {
        let policy = POLICIES[policy_idx];
        let (got, want) = match op % 16 {
            0..=6 => {
                let Some(n) = gen_count(&mut inp, op) else {
                    break;
                };
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let (Some((offset, len)), Some(fd_offset), Some(acc)) = (
                        gen_range(&mut inp, &model),
                        gen_fd_offset(&mut inp, page),
                        inp.u8(),
                    ) else {
                        break;
                    };
                    let access = if acc & 1 == 0 {
                        Access::ReadOnly
                    } else {
                        Access::ReadWrite
                    };
                    entries.push(MapEntry {
                        offset,
                        fd_offset,
                        len,
                        access,
                    });
                }
                let got = outcome(window.map(&entries, memfd.file.as_fd(), policy));
                (got, model.map(&entries, policy))
            }
            7..=11 => {
                let Some(n) = gen_count(&mut inp, op) else {
                    break;
                };
                let mut ranges = Vec::with_capacity(n);
                for _ in 0..n {
                    let Some((offset, len)) = gen_range(&mut inp, &model) else {
                        break;
                    };
                    ranges.push(Range { offset, len });
                }
                if op % 16 <= 10 {
                    let got = outcome(window.unmap(&ranges, policy));
                    (got, model.unmap(&ranges, policy))
                } else {
                    let got = outcome(window.sync(&ranges));
                    (got, model.sync(&ranges))
                }
            }
            12 => {
                let got = outcome(window.unmap_all());
                model.pages.clear();
                (got, Outcome::Ok)
            }
            _ => {
                policy_idx = (policy_idx + 1) % POLICIES.len();
                continue;
            }
        };
        assert_eq!(got, want, "op {op:#x} under {policy:?}");
        let segs = model.segments();
        assert_eq!(window.mappings(), segs, "after op {op:#x} under {policy:?}");
        let metrics = window.metrics();
        assert_eq!(
            metrics.live_mappings(),
            segs.len() as u64,
            "live_mappings gauge"
        );
        assert_eq!(
            metrics.mapped_bytes(),
            model.pages.len() as u64 * page,
            "mapped_bytes gauge"
        );
    }

    check_address_space(&window, &model, memfd.ino);
    drop(window);
    assert!(
        !vmas(memfd.ino).iter().any(|v| v.memfd),
        "memfd still mapped after the window was dropped"
    );
}

fuzz_target!(|data: &[u8]| run(data));
