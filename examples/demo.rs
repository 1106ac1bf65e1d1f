// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The whole device on one machine, no VM: a real DAX-capable backend process
//! (`peers/dax-backend`, fuse-backend-rs passthrough over vhost-user) serves a directory; the
//! device connects to it and is activated by the simulated guest driver (guest RAM in a memfd,
//! split virtqueues, FUSE requests). The guest then reads every file twice, through the DAX
//! window (FUSE_SETUPMAPPING, then plain loads at the window's guest address) and through
//! FUSE_READ over the vrings, checks every byte against the host file, and the demo prints a
//! short report.
//!
//! ```text
//! cargo run --release --features test-utils --example demo [-- --shared-dir DIR] [--legacy] [--window-mib N]
//!                                                            [--rounds N] [--backend dax-backend|virtiofsd]
//! ```
//!
//! The first run builds `peers/dax-backend` (its own workspace) when `$DAX_BACKEND` does not
//! name a binary. `--backend virtiofsd` runs the non-DAX path against a real virtiofsd
//! (`$VIRTIOFSD`, `~/.local/virtio-fs-dax/bin/virtiofsd` or `PATH`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vm_memory::{GuestAddress, GuestMemoryAtomic};

use virtio_fs_dax::device::{VirtioInterrupt, VirtioInterruptType};
use virtio_fs_dax::frontend::DaxFallback;
use virtio_fs_dax::test_utils::guest::fuse::{self, FUSE_ROOT_ID};
use virtio_fs_dax::test_utils::{guest_read, memfd_guest_memory, FuseSession, SplitQueueDriver};
use virtio_fs_dax::{Dialect, Fs};

const MIB: u64 = 1 << 20;
/// The DAX range size a Linux guest uses.
const RANGE: u64 = 2 * MIB;
/// Where the window sits in the simulated guest's physical address space.
const WINDOW_GPA: u64 = 1 << 34;
const GUEST_RAM: usize = 256 << 20;
const QUEUE_SIZE: u16 = 128;
/// FUSE scratch buffers in guest RAM: requests and replies of up to half of this.
const SCRATCH: GuestAddress = GuestAddress(64 * MIB);
const SCRATCH_LEN: usize = 8 << 20;
/// FUSE_READ request size, as a Linux guest with 256 pages per request sends.
const READ_CHUNK: u32 = 1 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
enum BackendKind {
    Dax,
    Virtiofsd,
}

struct Args {
    shared_dir: Option<PathBuf>,
    backend: BackendKind,
    legacy: bool,
    window: u64,
    rounds: usize,
}

const USAGE: &str = "usage: demo [--shared-dir DIR] [--backend dax-backend|virtiofsd] [--legacy] \
                     [--window-mib N] [--rounds N]";

fn args() -> Result<Args> {
    let mut out = Args {
        shared_dir: None,
        backend: BackendKind::Dax,
        legacy: false,
        window: 32 * MIB,
        rounds: 2000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--shared-dir" => out.shared_dir = Some(it.next().context("--shared-dir DIR")?.into()),
            "--backend" => {
                out.backend = match it.next().as_deref() {
                    Some("dax-backend" | "dax") => BackendKind::Dax,
                    Some("virtiofsd") => BackendKind::Virtiofsd,
                    _ => bail!("--backend dax-backend|virtiofsd"),
                }
            }
            "--legacy" => out.legacy = true,
            "--window-mib" => {
                let mib: u64 = it.next().context("--window-mib N")?.parse()?;
                ensure!(
                    mib >= 2 && mib.is_power_of_two(),
                    "--window-mib: a power of two, at least 2"
                );
                out.window = mib * MIB;
            }
            "--rounds" => out.rounds = it.next().context("--rounds N")?.parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    Ok(out)
}

/// A sample tree: files of assorted sizes (some not page multiples), one in a subdirectory,
/// every byte depending on its file, page and position.
fn sample_tree(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("docs"))?;
    let sizes: [(&str, u64); 8] = [
        ("disk.img", 24 * MIB),
        ("video.bin", 16 * MIB),
        ("lib.so", 9 * MIB + 4096),
        ("docs/manual.pdf", 5 * MIB + 777),
        ("archive.tar", 4 * MIB),
        ("data.json", 2 * MIB),
        ("small.txt", 300 * 1024 + 5),
        ("docs/README", 1234),
    ];
    for (i, (name, size)) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..*size)
            .map(|b| (b / 4096) as u8 ^ (b as u8).rotate_left(3) ^ (i as u8).wrapping_mul(37))
            .collect();
        std::fs::write(dir.join(name), data)?;
    }
    Ok(())
}

/// Regular files under `root`, as paths relative to it, sorted.
fn files(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, u64)>) -> Result<()> {
    for e in std::fs::read_dir(root.join(rel))? {
        let e = e?;
        let t = e.file_type()?;
        let r = rel.join(e.file_name());
        if t.is_dir() {
            files(root, &r, out)?;
        } else if t.is_file() {
            out.push((r, e.metadata()?.len()));
        }
    }
    out.sort();
    Ok(())
}

/// A backend process, killed when dropped.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dax_backend() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("DAX_BACKEND") {
        return Ok(p.into());
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/dax-backend");
    let bin = dir.join("target/release/dax-backend");
    if !bin.is_file() {
        eprintln!("building the dax-backend peer (first run only; a few minutes)...");
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "build",
                "--release",
                "--locked",
                "--quiet",
                "--manifest-path",
            ])
            .arg(dir.join("Cargo.toml"))
            .status()
            .context("running cargo to build peers/dax-backend")?;
        ensure!(status.success(), "building peers/dax-backend failed");
    }
    Ok(bin)
}

fn virtiofsd() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/virtio-fs-dax/bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::var_os("VIRTIOFSD")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            home.into_iter()
                .chain(std::env::split_paths(&path))
                .map(|d| d.join("virtiofsd")),
        )
        .find(|p| p.is_file())
        .context(
            "virtiofsd not found: `apt-get install -y libseccomp-dev libcap-ng-dev && cargo \
             install --locked virtiofsd@1.14.0 --root ~/.local/virtio-fs-dax` (scripts/test.sh \
             does it), or set $VIRTIOFSD",
        )
}

fn start_backend(args: &Args, shared: &Path, socket: &Path, log: &Path) -> Result<(Peer, String)> {
    let (program, mut extra): (PathBuf, Vec<&str>) = match args.backend {
        BackendKind::Dax => (dax_backend()?, vec![]),
        BackendKind::Virtiofsd => (
            virtiofsd()?,
            vec!["--sandbox", "none", "--log-level", "warn"],
        ),
    };
    if args.legacy && args.backend == BackendKind::Dax {
        extra.push("--legacy");
    }
    let child = Command::new(&program)
        .arg("--socket-path")
        .arg(socket)
        .arg("--shared-dir")
        .arg(shared)
        .args(&extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let peer = Peer(child);
    let start = Instant::now();
    while !socket.exists() {
        ensure!(
            start.elapsed() < Duration::from_secs(10),
            "{} made no socket; its log is {}",
            program.display(),
            log.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((peer, name))
}

/// The simulated guest's interrupt line: the guest polls its used rings, so nothing to do.
struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn trigger(&self, _: VirtioInterruptType) -> std::io::Result<()> {
        Ok(())
    }
}

/// Activates `fs` with a simulated guest and returns its FUSE session.
fn activate(fs: &mut Fs) -> Result<FuseSession> {
    let mem = memfd_guest_memory(GUEST_RAM)?;
    let hiprio = SplitQueueDriver::new(mem.clone(), GuestAddress(MIB), QUEUE_SIZE)?;
    let request = SplitQueueDriver::new(mem.clone(), GuestAddress(2 * MIB), QUEUE_SIZE)?;
    let queues = vec![hiprio.activate_queue(0)?, request.activate_queue(1)?];
    fs.activate(GuestMemoryAtomic::new(mem), Arc::new(NoInterrupt), queues)
        .context("activating the device")?;
    Ok(FuseSession::new(request, SCRATCH, SCRATCH_LEN)?.with_hiprio(hiprio))
}

/// LOOKUP of every component of `rel`; the last one's nodeid.
fn lookup_path(s: &mut FuseSession, rel: &Path) -> Result<u64> {
    let mut node = FUSE_ROOT_ID;
    for c in rel.components() {
        let name = c.as_os_str().to_str().context("non-UTF-8 file name")?;
        node = s.lookup(node, name)?.0;
    }
    Ok(node)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn rate(bytes: u64, t: Duration) -> String {
    let gbs = bytes as f64 / t.as_secs_f64().max(1e-9) / 1e9;
    format!("{gbs:.2} GB/s")
}

fn us(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

/// The DAX window as the guest driver uses it: `slots` 2 MiB ranges, reused round-robin (the
/// oldest range is removed before its slot maps another, as the guest's range reclaim does).
struct Dax {
    window: Arc<virtio_fs_dax::DaxWindow>,
    slots: Vec<bool>,
    next: usize,
    setup: Vec<Duration>,
    remove: Vec<Duration>,
    evictions: u64,
    t_map: Duration,
    t_load: Duration,
}

impl Dax {
    /// Maps `[foffset, foffset + RANGE)` of the open file into the next slot; its window offset.
    fn map(&mut self, s: &mut FuseSession, node: u64, fh: u64, foffset: u64) -> Result<u64> {
        let slot = self.next;
        self.next = (self.next + 1) % self.slots.len();
        let moffset = slot as u64 * RANGE;
        let t = Instant::now();
        if self.slots[slot] {
            s.removemapping(&[(moffset, RANGE)])?;
            self.remove.push(t.elapsed());
            self.evictions += 1;
        }
        let t1 = Instant::now();
        s.setupmapping(node, fh, foffset, RANGE, false, moffset)?;
        self.setup.push(t1.elapsed());
        self.t_map += t.elapsed();
        self.slots[slot] = true;
        Ok(moffset)
    }

    /// Loads `buf.len()` bytes at window offset `moffset`, as guest loads would.
    fn load(&mut self, moffset: u64, buf: &mut [u8]) -> Result<()> {
        let t = Instant::now();
        guest_read(&self.window, WINDOW_GPA, WINDOW_GPA + moffset, buf)?;
        self.t_load += t.elapsed();
        Ok(())
    }
}

fn main() -> Result<()> {
    let args = args()?;
    let tmp = tempfile::tempdir()?;
    let shared = match &args.shared_dir {
        Some(d) => d
            .canonicalize()
            .with_context(|| format!("{}", d.display()))?,
        None => {
            let d = tmp.path().join("shared");
            sample_tree(&d)?;
            d
        }
    };
    let mut list = Vec::new();
    files(&shared, Path::new(""), &mut list)?;
    ensure!(
        !list.is_empty(),
        "no regular files under {}",
        shared.display()
    );
    let total: u64 = list.iter().map(|(_, n)| n).sum();

    let socket = tmp.path().join("fs.sock");
    let log = tmp.path().join("backend.log");
    let (peer, backend_name) = start_backend(&args, &shared, &socket, &log)?;
    let dialect = if args.legacy {
        Dialect::Legacy
    } else {
        Dialect::Standard
    };
    let mut fs = Fs::builder("demo")
        .socket_path(&socket)
        .window_size(args.window)
        .dialect(dialect)
        .queue_size(QUEUE_SIZE)
        .dax_fallback(DaxFallback::Disable)
        .build()?;
    fs.set_shm_base(0, WINDOW_GPA)?;
    fs.connect()
        .with_context(|| format!("connecting; the backend's log is {}", log.display()))?;
    fs.ack_features(fs.features());
    let mut s = activate(&mut fs)?;
    let dax = fs.session().map(|x| x.negotiated().dax).unwrap_or(false);
    let init = s.init_with_flags(
        fuse::FUSE_ASYNC_READ
            | fuse::FUSE_BIG_WRITES
            | fuse::FUSE_MAX_PAGES
            | fuse::FUSE_MAP_ALIGNMENT,
    )?;
    let chunk = READ_CHUNK;

    let bar = ProgressBar::with_draw_target(
        Some(total * if dax { 2 } else { 1 }),
        ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec}")?
            .progress_chars("=> "),
    );

    let window = fs.window().cloned();
    let mut d = window.as_ref().map(|w| Dax {
        window: w.clone(),
        slots: vec![false; (w.size() / RANGE) as usize],
        next: 0,
        setup: Vec::new(),
        remove: Vec::new(),
        evictions: 0,
        t_map: Duration::ZERO,
        t_load: Duration::ZERO,
    });
    let mut t_fuse = Duration::ZERO;
    let mut host = vec![0u8; RANGE as usize];
    let mut guest = vec![0u8; RANGE as usize];
    for (rel, size) in &list {
        let node = lookup_path(&mut s, rel)?;
        let fh = s.open(node, libc::O_RDONLY as u32)?;
        let file = File::open(shared.join(rel))?;

        // Through FUSE_READ: the bytes travel in the request queue's buffers.
        bar.set_message("FUSE_READ");
        let mut off = 0;
        while off < *size {
            let want = (*size - off).min(u64::from(chunk));
            let t = Instant::now();
            let got = s.read(node, fh, off, want as u32)?;
            t_fuse += t.elapsed();
            ensure!(got.len() as u64 == want, "{}: short read", rel.display());
            file.read_exact_at(&mut host[..want as usize], off)?;
            ensure!(
                got == host[..want as usize],
                "{}: FUSE_READ bytes differ at {off:#x}",
                rel.display()
            );
            off += want;
            bar.inc(want);
        }

        // Through the DAX window: map 2 MiB ranges, then plain loads.
        if let (true, Some(d)) = (dax, d.as_mut()) {
            bar.set_message("DAX");
            let mut off = 0;
            while off < *size {
                let len = (*size - off).min(RANGE) as usize;
                let moffset = d.map(&mut s, node, fh, off)?;
                d.load(moffset, &mut guest[..len])?;
                file.read_exact_at(&mut host[..len], off)?;
                ensure!(
                    guest[..len] == host[..len],
                    "{}: bytes through the window differ at {off:#x}",
                    rel.display()
                );
                off += len as u64;
                bar.inc(len as u64);
            }
        }
        s.release(node, fh, libc::O_RDONLY as u32)?;
    }

    // SETUPMAPPING round trips on their own: map and remove one range, `rounds` times.
    if let (true, Some(d), Some((rel, _))) = (dax, d.as_mut(), list.first()) {
        bar.finish_and_clear();
        let bar =
            ProgressBar::with_draw_target(Some(args.rounds as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg:>12} [{bar:32}] {pos}/{len} round trips")?
                .progress_chars("=> "),
        );
        bar.set_message("SETUPMAPPING");
        let node = lookup_path(&mut s, rel)?;
        let fh = s.open(node, libc::O_RDONLY as u32)?;
        for slot in 0..d.slots.len() {
            if std::mem::take(&mut d.slots[slot]) {
                s.removemapping(&[(slot as u64 * RANGE, RANGE)])?;
            }
        }
        for _ in 0..args.rounds {
            let t = Instant::now();
            s.setupmapping(node, fh, 0, RANGE, false, 0)?;
            d.setup.push(t.elapsed());
            let t = Instant::now();
            s.removemapping(&[(0, RANGE)])?;
            d.remove.push(t.elapsed());
            bar.inc(1);
        }
        s.release(node, fh, libc::O_RDONLY as u32)?;
        bar.finish_and_clear();
    }
    bar.finish_and_clear();

    // Report.
    let m = fs.metrics().clone();
    let pid = peer.0.id();
    println!(
        "virtio-fs-dax demo: {backend_name} (pid {pid}, {}) serving {}",
        match (dax, args.legacy) {
            (false, _) => "no DAX",
            (true, true) => "legacy dialect",
            (true, false) => "standard dialect",
        },
        if args.shared_dir.is_some() {
            shared.display().to_string()
        } else {
            "a sample tree".to_string()
        }
    );
    println!(
        "  device       tag \"demo\", FUSE {}.{}, queue size {QUEUE_SIZE}, DAX {}",
        init.major,
        init.minor,
        match (&window, dax) {
            (Some(w), true) => format!(
                "window {} MiB at guest {WINDOW_GPA:#x} ({} ranges of 2 MiB)",
                w.size() / MIB,
                w.size() / RANGE
            ),
            _ => "not offered by the backend (the device goes on without it)".to_string(),
        }
    );
    println!(
        "  files        {} files, {:.1} MiB, every byte checked against the host file",
        list.len(),
        total as f64 / MIB as f64
    );
    let fuse_line = format!(
        "{} ({} KiB requests over the vrings)",
        rate(total, t_fuse),
        chunk / 1024
    );
    match (dax, &d) {
        (true, Some(d)) => {
            let mut setup = d.setup.clone();
            setup.sort();
            let mut remove = d.remove.clone();
            remove.sort();
            let t_dax = d.t_map + d.t_load;
            println!(
                "  mappings     {} ranges of 2 MiB mapped to read the files, {} evicted to reuse the \
                 window; {} maps and {} unmaps in all",
                d.setup.len() - args.rounds,
                d.evictions,
                m.maps(),
                m.unmaps()
            );
            println!(
                "  DAX          {} first read (SETUPMAPPING + loads), {} loads alone",
                rate(total, t_dax),
                rate(total, d.t_load)
            );
            println!("  FUSE_READ    {fuse_line}");
            println!(
                "  DAX/FUSE     {:.2}x first read, {:.2}x once mapped",
                t_fuse.as_secs_f64() / t_dax.as_secs_f64().max(1e-9),
                t_fuse.as_secs_f64() / d.t_load.as_secs_f64().max(1e-9)
            );
            println!(
                "  SETUPMAPPING p50 {}, p99 {} ({} round trips guest -> backend -> device)",
                us(pct(&setup, 0.50)),
                us(pct(&setup, 0.99)),
                setup.len()
            );
            println!(
                "  REMOVEMAPPING p50 {}, p99 {} ({} round trips)",
                us(pct(&remove, 0.50)),
                us(pct(&remove, 0.99)),
                remove.len()
            );
        }
        _ => println!("  FUSE_READ    {fuse_line}"),
    }
    println!(
        "  refusals     {}, live mappings {}",
        m.total_refusals(),
        window.as_ref().map_or(0, |w| w.live_mappings())
    );
    ensure!(
        m.total_refusals() == 0,
        "the device refused requests; see the log"
    );
    drop(s);
    drop(fs);
    drop(peer);
    Ok(())
}
