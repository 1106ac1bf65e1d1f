// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vfd-guest`: what dax-vmm's test guests need besides busybox.
//!
//! ```text
//! vfd-guest mmap-write FILE OFFSET TEXT   store TEXT at OFFSET through mmap(MAP_SHARED), msync
//! vfd-guest hold FILE                     map FILE, read every page through the mapping, print a
//!                                         checksum, then keep it mapped until killed; on SIGUSR1
//!                                         read every page again and print the checksum
//! vfd-guest bench seq FILE                read FILE twice in 1 MiB read()s: cold, then warm
//! vfd-guest bench rand FILE COUNT         COUNT 4 KiB pread()s at random offsets, twice
//! vfd-guest write-from-map SRC DST        map SRC (MAP_SHARED), create DST and write(2) the
//!                                         mapping into it; then read DST back and compare.
//!                                         Prints `copied` or `refused with errno N (NAME)`
//!                                         (DST then holds none of it), fails otherwise
//! vfd-guest read-into-map SRC DST         create DST as large as SRC, map it (MAP_SHARED,
//!                                         writable), read(2) SRC into the mapping, msync;
//!                                         then read DST back and compare with SRC
//! ```
//!
//! On a DAX mount, `write-from-map` hands the kernel a user buffer that is itself a DAX mapping:
//! a write that extends DST goes to the device as FUSE_WRITE whose data pages are the window's,
//! which the backend cannot see.
//!
//! Every result line starts with the subcommand, so a test script can grep for it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

type Result<T> = std::result::Result<T, String>;

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096)
}

/// A shared mapping of part of a file, unmapped on drop.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(file: &File, offset: u64, len: usize, write: bool) -> Result<Self> {
        let prot = if write {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let off = libc::off_t::try_from(offset).map_err(|_| "offset too large".to_string())?;
        // SAFETY: a new mapping chosen by the kernel (no MAP_FIXED) of an open file; nothing
        // else refers to the range it returns.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Self { addr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `addr..addr + len` is mapped readable for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `bytes`; mappings made with `write` are writable, and `&mut self` makes
        // this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
    }

    fn sync(&self) -> Result<()> {
        // SAFETY: msync of the range this mapping owns.
        if unsafe { libc::msync(self.addr, self.len, libc::MS_SYNC) } != 0 {
            return Err(format!("msync: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by `new` and no reference to it outlives `self`.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

fn mmap_write(path: &str, offset: &str, text: &str) -> Result<()> {
    let offset: u64 = offset
        .parse()
        .map_err(|e| format!("offset {offset}: {e}"))?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    let page = page_size();
    let start = offset / page * page;
    let end = (offset + text.len() as u64).div_ceil(page) * page;
    let mut map = Mapping::new(&file, start, (end - start) as usize, true)?;
    let at = (offset - start) as usize;
    map.bytes_mut()[at..at + text.len()].copy_from_slice(text.as_bytes());
    map.sync()?;
    drop(map);
    // Read it back through read(), which the DAX mount serves from the same host pages.
    let mut back = vec![0u8; text.len()];
    file.read_exact_at(&mut back, offset)
        .map_err(|e| format!("reading back: {e}"))?;
    if back != text.as_bytes() {
        return Err("read() does not see the store made through the mapping".into());
    }
    println!(
        "mmap-write: {} bytes at {offset} stored, msynced and read back",
        text.len()
    );
    Ok(())
}

static READ_AGAIN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    READ_AGAIN.store(true, Ordering::SeqCst);
}

fn checksum(map: &Mapping) -> u64 {
    let page = page_size() as usize;
    map.bytes()
        .iter()
        .step_by(page)
        .fold(0u64, |s, &b| s.wrapping_mul(31).wrapping_add(u64::from(b)))
}

fn hold(path: &str) -> Result<()> {
    let file = File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len() as usize;
    let map = Mapping::new(&file, 0, len, false)?;
    let pages = len / page_size() as usize;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t) };
    println!(
        "hold: {pages} pages of {path} mapped, checksum {:#x}",
        checksum(&map)
    );
    loop {
        // SAFETY: pause has no memory effects; the mapping stays until the process is killed.
        unsafe { libc::pause() };
        if READ_AGAIN.swap(false, Ordering::SeqCst) {
            println!("hold: reading the {pages} pages again");
            println!("hold: read again, checksum {:#x}", checksum(&map));
        }
    }
}

/// The whole of `path` mapped read-only (MAP_SHARED), with its length.
fn map_whole(path: &str) -> Result<(File, Mapping)> {
    let file = File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let len = file.metadata().map_err(|e| format!("{path}: {e}"))?.len() as usize;
    if len == 0 {
        return Err(format!("{path} is empty"));
    }
    let map = Mapping::new(&file, 0, len, false)?;
    Ok((file, map))
}

/// What `read()` gives for the whole of `path`.
fn read_back(path: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("reading {path} back: {e}"))
}

fn write_from_map(src: &str, dst: &str) -> Result<()> {
    let (_src_file, map) = map_whole(src)?;
    let want = map.bytes().to_vec();
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)
        .map_err(|e| format!("{dst}: {e}"))?;
    // One write(2) of the whole mapping: DST is empty, so the write extends it, and the kernel
    // sends it to the device with the mapping's own pages.
    match out.write(map.bytes()) {
        Ok(n) if n == want.len() => {}
        Ok(n) => return Err(format!("write: {n} of {} bytes", want.len())),
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(0);
            drop(out);
            let back = read_back(dst)?;
            if !back.is_empty() {
                return Err(format!(
                    "write failed ({e}) but {dst} holds {} bytes",
                    back.len()
                ));
            }
            println!("write-from-map: refused with errno {errno} ({e}); {dst} is empty");
            return Ok(());
        }
    }
    out.sync_all().map_err(|e| format!("fsync {dst}: {e}"))?;
    drop(out);
    if read_back(dst)? != want {
        return Err(format!("{dst} differs from the mapping of {src}"));
    }
    println!(
        "write-from-map: copied {} bytes from a mapping of {src} into {dst}, read back equal",
        want.len()
    );
    Ok(())
}

fn read_into_map(src: &str, dst: &str) -> Result<()> {
    let want = read_back(src)?;
    if want.is_empty() {
        return Err(format!("{src} is empty"));
    }
    let out = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)
        .map_err(|e| format!("{dst}: {e}"))?;
    out.set_len(want.len() as u64)
        .map_err(|e| format!("ftruncate {dst}: {e}"))?;
    let mut map = Mapping::new(&out, 0, want.len(), true)?;
    let mut file = File::open(src).map_err(|e| format!("{src}: {e}"))?;
    file.read_exact(map.bytes_mut())
        .map_err(|e| format!("read {src} into the mapping of {dst}: {e}"))?;
    map.sync()?;
    drop(map);
    drop(out);
    if read_back(dst)? != want {
        return Err(format!("{dst} differs from {src}"));
    }
    println!(
        "read-into-map: read {} bytes of {src} into a mapping of {dst}, read back equal",
        want.len()
    );
    Ok(())
}

/// Returns MiB/s of one sequential pass.
fn seq_pass(path: &str, buf: &mut [u8]) -> Result<(f64, u64)> {
    let mut file = File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let start = Instant::now();
    let mut total = 0u64;
    let mut sum = 0u64;
    loop {
        let n = file.read(buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        sum = sum.wrapping_add(u64::from(buf[0]));
        total += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((total as f64 / (1 << 20) as f64 / secs, sum))
}

/// Returns operations per second of `count` random 4 KiB reads.
fn rand_pass(path: &str, count: u64, seed: u64) -> Result<f64> {
    let file = File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let blocks = (len / 4096).max(1);
    let mut x = seed | 1;
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    for _ in 0..count {
        // xorshift64: the same offsets in every mode.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        file.read_exact_at(&mut buf, (x % blocks) * 4096)
            .map_err(|e| format!("pread: {e}"))?;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

fn bench(args: &[String]) -> Result<()> {
    match args {
        [kind, path] if kind == "seq" => {
            let mut buf = vec![0u8; 1 << 20];
            let (cold, a) = seq_pass(path, &mut buf)?;
            let (warm, b) = seq_pass(path, &mut buf)?;
            if a != b {
                return Err("two reads of the same file differ".into());
            }
            println!("bench: seq cold {cold:.1} MiB/s, warm {warm:.1} MiB/s");
            Ok(())
        }
        [kind, path, count] if kind == "rand" => {
            let count: u64 = count.parse().map_err(|e| format!("count {count}: {e}"))?;
            let cold = rand_pass(path, count, 0x9e37_79b9_7f4a_7c15)?;
            let warm = rand_pass(path, count, 0x9e37_79b9_7f4a_7c15)?;
            println!("bench: rand4k cold {cold:.0} reads/s, warm {warm:.0} reads/s");
            Ok(())
        }
        _ => Err("usage: vfd-guest bench seq FILE | bench rand FILE COUNT".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("mmap-write") if args.len() == 4 => mmap_write(&args[1], &args[2], &args[3]),
        Some("hold") if args.len() == 2 => hold(&args[1]),
        Some("bench") => bench(&args[1..]),
        Some("write-from-map") if args.len() == 3 => write_from_map(&args[1], &args[2]),
        Some("read-into-map") if args.len() == 3 => read_into_map(&args[1], &args[2]),
        _ => Err(
            "usage: vfd-guest mmap-write FILE OFFSET TEXT | hold FILE | bench seq FILE | \
             bench rand FILE COUNT | write-from-map SRC DST | read-into-map SRC DST"
                .into(),
        ),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vfd-guest: {e}");
            ExitCode::FAILURE
        }
    }
}
