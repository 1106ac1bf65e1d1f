// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The whole backend channel on one machine, no VM: a sample tree is mapped into a DAX window
//! by vhost's real `Backend` sender, read back through the window and checked against the files,
//! then map+unmap round trips are timed through the crate and through the raw syscall sequence
//! (the floor) in the same run.
//!
//! ```text
//! cargo run --release --example demo [-- --shared-dir DIR] [--pairs N]
//! ```

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vhost::vhost_user::message::VhostUserMMap;
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use virtio_fs_dax::protocol::{standard, FLAG_NEED_REPLY, VERSION};
use virtio_fs_dax::{BackendChannel, DaxWindow, Dialect};

const RANGE: u64 = 2 << 20;
const WINDOW: u64 = 256 << 20;

struct Args {
    shared_dir: Option<PathBuf>,
    pairs: usize,
}

fn args() -> Result<Args> {
    let mut out = Args {
        shared_dir: None,
        pairs: 20_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--shared-dir" => out.shared_dir = Some(it.next().context("--shared-dir DIR")?.into()),
            "--pairs" => out.pairs = it.next().context("--pairs N")?.parse()?,
            "-h" | "--help" => {
                println!("usage: demo [--shared-dir DIR] [--pairs N]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (try --help)"),
        }
    }
    Ok(out)
}

/// A sample tree: a few files of different sizes, each page stamped with its file and page.
fn sample_tree(dir: &Path) -> Result<()> {
    for (i, size) in [
        (0u64, 5 << 20),
        (1, 2 << 20),
        (2, 300 << 10),
        (3, 9 << 20),
        (4, 4096),
    ] {
        let mut data = vec![0u8; size as usize];
        for (p, page) in data.chunks_mut(4096).enumerate() {
            page.fill((i * 37 + p as u64 % 200) as u8);
        }
        std::fs::write(dir.join(format!("file-{i}.bin")), data)?;
    }
    Ok(())
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            files(&e.path(), out)?;
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(())
}

fn mmap_msg(shm_offset: u64, fd_offset: u64, len: u64) -> VhostUserMMap {
    VhostUserMMap {
        shmid: 0,
        padding: [0; 7],
        fd_offset,
        shm_offset,
        len,
        flags: 0,
    }
}

fn read_window(w: &DaxWindow, offset: u64, buf: &mut [u8]) {
    assert!(offset + buf.len() as u64 <= w.size());
    let src = (w.host_addr() + offset) as *const u8;
    // SAFETY: the range lies inside the window (asserted) and was mapped readable just before;
    // nothing remaps it until this copy returns (the demo drives both sides on this thread).
    unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
}

/// Maps every file into the window in 2 MiB ranges through vhost's Backend, reads each range
/// through the window and compares it with pread. Returns (files, bytes, mappings, time in the
/// window, time in pread).
fn map_tree(
    window: &DaxWindow,
    backend: &Backend,
    paths: &[PathBuf],
) -> Result<(u64, u64, Duration, Duration)> {
    let (mut bytes, mut mappings) = (0u64, 0u64);
    let (mut t_dax, mut t_pread) = (Duration::ZERO, Duration::ZERO);
    let mut next = 0u64;
    let mut via_window = vec![0u8; RANGE as usize];
    let mut via_pread = vec![0u8; RANGE as usize];
    for path in paths {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        let mut off = 0;
        while off < size {
            if next == window.size() {
                window.unmap_all()?;
                next = 0;
            }
            let len = RANGE.min(size - off);
            // Whole pages are mapped; the tail past EOF reads as zeros.
            let map_len = len.next_multiple_of(window.page_size());
            backend
                .shmem_map(&mmap_msg(next, off, map_len), &file)
                .map_err(|e| anyhow::anyhow!("map {}+{off:#x}: {e}", path.display()))?;
            mappings += 1;
            let t = Instant::now();
            read_window(window, next, &mut via_window[..len as usize]);
            t_dax += t.elapsed();
            let t = Instant::now();
            file.read_exact_at(&mut via_pread[..len as usize], off)?;
            t_pread += t.elapsed();
            if via_window[..len as usize] != via_pread[..len as usize] {
                bail!(
                    "{}: bytes at {off:#x} differ through the window",
                    path.display()
                );
            }
            bytes += len;
            off += len;
            next += RANGE;
        }
    }
    Ok((bytes, mappings, t_dax, t_pread))
}

/// The raw sender both measurements share: header + 40-byte body (+ fd), then a 20-byte reply.
fn send(sock: &UnixStream, code: u32, body: &VhostUserMMap, fd: Option<&File>) -> Result<i64> {
    let mut msg = Vec::with_capacity(52);
    msg.extend_from_slice(&code.to_le_bytes());
    msg.extend_from_slice(&(VERSION | FLAG_NEED_REPLY).to_le_bytes());
    msg.extend_from_slice(&40u32.to_le_bytes());
    msg.extend_from_slice(&[body.shmid; 1]);
    msg.extend_from_slice(&[0; 7]);
    for v in [body.fd_offset, body.shm_offset, body.len, body.flags] {
        msg.extend_from_slice(&v.to_le_bytes());
    }
    let fds: Vec<_> = fd.iter().map(|f| f.as_raw_fd()).collect();
    sock.send_with_fds(&[&msg[..]], &fds)?;
    let mut reply = [0u8; 20];
    (&*sock).read_exact(&mut reply)?;
    Ok(i64::from_le_bytes(reply[12..].try_into()?))
}

/// The floor: a frontend that does only the syscalls (recvmsg with fd, mmap MAP_FIXED or the
/// PROT_NONE re-map, close, sendmsg), no decoding, no checks, no table.
fn raw_frontend(sock: UnixStream) {
    let window = DaxWindow::new(RANGE).expect("floor reservation");
    let base = window.host_addr() as *mut libc::c_void;
    let mut buf = [0u8; 52];
    loop {
        let mut got = 0;
        let mut fd = None;
        while got < buf.len() {
            match sock.recv_with_fd(&mut buf[got..]) {
                Ok((0, _)) | Err(_) => return,
                Ok((n, f)) => {
                    got += n;
                    fd = fd.or(f);
                }
            }
        }
        let code = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let ret = match &fd {
            // SAFETY: `base` is a reservation of RANGE bytes owned by `window`, alive for this
            // whole function; MAP_FIXED replaces only those pages.
            Some(f) => unsafe {
                libc::mmap(
                    base,
                    RANGE as usize,
                    libc::PROT_READ,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    f.as_raw_fd(),
                    0,
                )
            },
            // SAFETY: as above, with the PROT_NONE reservation itself.
            None => unsafe {
                libc::mmap(
                    base,
                    RANGE as usize,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                    -1,
                    0,
                )
            },
        };
        drop(fd);
        let value: u64 = if ret == libc::MAP_FAILED { u64::MAX } else { 0 };
        let mut reply = Vec::with_capacity(20);
        reply.extend_from_slice(&code.to_le_bytes());
        reply.extend_from_slice(&(VERSION | 0x4).to_le_bytes());
        reply.extend_from_slice(&8u32.to_le_bytes());
        reply.extend_from_slice(&value.to_le_bytes());
        if sock.send_with_fds(&[&reply[..]], &[]).is_err() {
            return;
        }
    }
}

/// Times `pairs` map+unmap pairs of 2 MiB; returns per-pair map latencies and the total.
fn pairs(sock: &UnixStream, file: &File, n: usize) -> Result<(Vec<Duration>, Duration)> {
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let r = send(
            sock,
            standard::SHMEM_MAP,
            &mmap_msg(0, 0, RANGE),
            Some(file),
        )?;
        lat.push(t.elapsed());
        let u = send(sock, standard::SHMEM_UNMAP, &mmap_msg(0, 0, RANGE), None)?;
        if r != 0 || u != 0 {
            bail!("map/unmap refused: {r} {u}");
        }
    }
    Ok((lat, start.elapsed()))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn main() -> Result<()> {
    let args = args()?;
    let tmp = tempfile::tempdir()?;
    let dir = match &args.shared_dir {
        Some(d) => d.clone(),
        None => {
            sample_tree(tmp.path())?;
            tmp.path().to_path_buf()
        }
    };
    let mut paths = Vec::new();
    files(&dir, &mut paths)?;
    println!(
        "virtio-fs-dax demo: {} files under {}",
        paths.len(),
        dir.display()
    );

    // 1. The tree through the window, with vhost's own Backend as the sender.
    let window = Arc::new(DaxWindow::new(WINDOW)?);
    let (ours, theirs) = UnixStream::pair()?;
    let channel = BackendChannel::builder(ours)
        .window(window.clone())
        .dialect(Dialect::Standard)
        .name("demo")
        .build()
        .spawn()?;
    let backend = Backend::from_stream(theirs);
    backend.set_reply_ack_flag(true);
    backend.set_shmem_flag(true);
    let (bytes, mappings, t_dax, t_pread) = map_tree(&window, &backend, &paths)?;
    println!(
        "  mapped {mappings} ranges, {:.1} MiB read through the window, every byte equal to pread",
        bytes as f64 / (1 << 20) as f64
    );
    println!(
        "  first-touch read through the window {:.2} GB/s, pread {:.2} GB/s",
        bytes as f64 / t_dax.as_secs_f64() / 1e9,
        bytes as f64 / t_pread.as_secs_f64() / 1e9
    );
    window.unmap_all()?;
    channel.stop()?;

    // 2. Map+unmap round trips: the crate against the floor, same sender, alternating rounds.
    let (file, _) = (File::open(&paths[0])?, ());
    let (ours, crate_sock) = UnixStream::pair()?;
    let window = Arc::new(DaxWindow::new(WINDOW)?);
    let channel = BackendChannel::builder(ours)
        .window(window.clone())
        .build()
        .spawn()?;
    let (raw_ours, raw_sock) = UnixStream::pair()?;
    let raw = thread::spawn(move || raw_frontend(raw_ours));
    let rounds = 5;
    let per = (args.pairs / rounds).max(1);
    let (mut t_crate, mut t_raw) = (Vec::new(), Vec::new());
    let mut lat = Vec::new();
    pairs(&crate_sock, &file, per / 10 + 1)?; // warm up both
    pairs(&raw_sock, &file, per / 10 + 1)?;
    for _ in 0..rounds {
        let (_, t) = pairs(&raw_sock, &file, per)?;
        t_raw.push(t);
        let (l, t) = pairs(&crate_sock, &file, per)?;
        t_crate.push(t);
        lat.extend(l);
    }
    drop(raw_sock);
    let _ = raw.join();
    t_raw.sort();
    t_crate.sort();
    lat.sort();
    let med = |v: &[Duration]| v[v.len() / 2];
    let rate = |t: Duration| per as f64 / t.as_secs_f64();
    let m = window.metrics();
    println!("  map+unmap of 2 MiB over the socket ({rounds} rounds of {per} pairs, medians):");
    println!(
        "    through the crate: {:>8.0} pairs/s",
        rate(med(&t_crate))
    );
    println!(
        "    raw syscalls     : {:>8.0} pairs/s (the floor)",
        rate(med(&t_raw))
    );
    println!(
        "    ratio crate/floor: {:.2} (time per pair)",
        med(&t_crate).as_secs_f64() / med(&t_raw).as_secs_f64()
    );
    println!(
        "    map round trip p50 {:.1} us, p99 {:.1} us",
        pct(&lat, 0.5).as_secs_f64() * 1e6,
        pct(&lat, 0.99).as_secs_f64() * 1e6
    );
    println!(
        "  counters: {} maps, {} unmaps, {} refusals, {} live",
        m.maps(),
        m.unmaps(),
        m.total_refusals(),
        m.live_mappings()
    );
    channel.stop()?;
    Ok(())
}
