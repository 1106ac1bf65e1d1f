// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! End-to-end probe for `dax-backend`: plays the VMM (vhost 0.16 `Frontend`) and the guest driver
//! (split virtqueue in memfd guest RAM, FUSE requests built by hand), and serves the backend
//! channel itself, so a real DAX map request travels: FUSE_SETUPMAPPING -> PassthroughFs ->
//! FsCacheReqHandler -> SHMEM_MAP (or FS_MAP with --legacy) + fd -> here.
//!
//! usage: probe [--legacy] [--backend PATH]   (default backend: dax-backend next to this binary)

use std::io::{Read, Write};
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const MEM_SIZE: usize = 2 << 20;
const QSIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const REQ_BUF: u64 = 0x10000;
const RESP_BUF: u64 = 0x20000;
const RESP_LEN: u32 = 0x10000;
const SHMEM_BIT22: u64 = 1 << 22;

fn fail(msg: impl AsRef<str>) -> ! {
    eprintln!("probe: FAIL: {}", msg.as_ref());
    std::process::exit(1);
}

struct Guest {
    base: *mut u8,
    avail_idx: u16,
    used_seen: u16,
    unique: u64,
}

impl Guest {
    fn w(&self, gpa: u64, data: &[u8]) {
        assert!(gpa as usize + data.len() <= MEM_SIZE);
        // SAFETY: in bounds of our MEM_SIZE mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(gpa as usize), data.len())
        }
    }
    fn r(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        // SAFETY: in bounds of our MEM_SIZE mapping.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(gpa as usize), v.as_mut_ptr(), len) }
        v
    }
    fn r16(&self, gpa: u64) -> u16 {
        // SAFETY: aligned, in bounds; the backend writes it concurrently, so read volatile.
        unsafe { std::ptr::read_volatile(self.base.add(gpa as usize) as *const u16) }
    }

    /// Put one FUSE request on the queue, kick, wait for the used entry, return the reply bytes.
    fn call(&mut self, kick: &EventFd, opcode: u32, nodeid: u64, body: &[u8]) -> (i32, Vec<u8>) {
        self.unique += 1;
        let len = 40 + body.len() as u32;
        let mut req = Vec::new();
        req.extend_from_slice(&len.to_le_bytes());
        req.extend_from_slice(&opcode.to_le_bytes());
        req.extend_from_slice(&self.unique.to_le_bytes());
        req.extend_from_slice(&nodeid.to_le_bytes());
        req.extend_from_slice(&0u32.to_le_bytes()); // uid
        req.extend_from_slice(&0u32.to_le_bytes()); // gid
        req.extend_from_slice(&0u32.to_le_bytes()); // pid
        req.extend_from_slice(&0u16.to_le_bytes()); // total_extlen
        req.extend_from_slice(&0u16.to_le_bytes()); // padding
        req.extend_from_slice(body);
        self.w(REQ_BUF, &req);
        // desc 0: request (readable), next = 1; desc 1: response (writable).
        let mut d = Vec::new();
        d.extend_from_slice(&REQ_BUF.to_le_bytes());
        d.extend_from_slice(&(req.len() as u32).to_le_bytes());
        d.extend_from_slice(&1u16.to_le_bytes()); // NEXT
        d.extend_from_slice(&1u16.to_le_bytes());
        d.extend_from_slice(&RESP_BUF.to_le_bytes());
        d.extend_from_slice(&RESP_LEN.to_le_bytes());
        d.extend_from_slice(&2u16.to_le_bytes()); // WRITE
        d.extend_from_slice(&0u16.to_le_bytes());
        self.w(DESC, &d);
        let slot = (self.avail_idx % QSIZE) as u64;
        self.w(AVAIL + 4 + 2 * slot, &0u16.to_le_bytes());
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.w(AVAIL + 2, &self.avail_idx.to_le_bytes());
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        kick.write(1).unwrap();
        let t0 = Instant::now();
        while self.r16(USED + 2) == self.used_seen {
            if t0.elapsed() > Duration::from_secs(10) {
                fail(format!("no used entry for opcode {opcode}"));
            }
            thread::sleep(Duration::from_millis(1));
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let uslot = (self.used_seen % QSIZE) as u64;
        self.used_seen = self.used_seen.wrapping_add(1);
        let e = self.r(USED + 4 + 8 * uslot, 8);
        let used_len = u32::from_le_bytes(e[4..8].try_into().unwrap()) as usize;
        let out = self.r(RESP_BUF, used_len.max(16));
        let olen = u32::from_le_bytes(out[0..4].try_into().unwrap()) as usize;
        let err = i32::from_le_bytes(out[4..8].try_into().unwrap());
        let uniq = u64::from_le_bytes(out[8..16].try_into().unwrap());
        if uniq != self.unique {
            fail(format!("reply unique {uniq} != {}", self.unique));
        }
        (err, out[16..olen.max(16).min(out.len())].to_vec())
    }
}

fn raw_get_u64(sock: &mut UnixStream, code: u32) -> u64 {
    let mut m = Vec::new();
    m.extend_from_slice(&code.to_le_bytes());
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    sock.write_all(&m).unwrap();
    let mut r = [0u8; 20];
    sock.read_exact(&mut r).unwrap();
    u64::from_le_bytes(r[12..20].try_into().unwrap())
}

/// Serve the backend channel: answer every request with 0, record what came in.
fn channel_server(chan: UnixStream, legacy: bool) -> thread::JoinHandle<Vec<String>> {
    thread::spawn(move || {
        let mut log = Vec::new();
        loop {
            let mut hdr = [0u8; 12];
            let (n, file) = match chan.recv_with_fd(&mut hdr) {
                Ok(v) => v,
                Err(_) => break,
            };
            if n == 0 {
                break;
            }
            if n != 12 {
                log.push(format!("short header {n}"));
                break;
            }
            let code = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
            let flags = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
            let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
            let mut body = vec![0u8; size];
            let (m, file2) = if size > 0 {
                chan.recv_with_fd(&mut body).unwrap()
            } else {
                (0, None)
            };
            let mut bodyread = m;
            let mut c = &chan;
            while bodyread < size {
                bodyread += c.read(&mut body[bodyread..]).unwrap();
            }
            let file = file.or(file2);
            let u = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap());
            let desc = if legacy {
                format!(
                    "code={code} flags={flags:#x} size={size} fd={} entry0: fd_offset={:#x} cache_offset={:#x} len={:#x} flags={:#x}",
                    file.is_some(), u(0), u(64), u(128), u(192)
                )
            } else {
                format!(
                    "code={code} flags={flags:#x} size={size} fd={} shmid={} fd_offset={:#x} shm_offset={:#x} len={:#x} flags={:#x}",
                    file.is_some(), body[0], u(8), u(16), u(24), u(32)
                )
            };
            // Prove the fd is the shared file: read its first bytes.
            let mut content = String::new();
            if let Some(mut f) = file {
                let mut b = [0u8; 16];
                let k = f.read(&mut b).unwrap_or(0);
                content = format!(" fd content={:?}", String::from_utf8_lossy(&b[..k]));
            }
            log.push(format!("{desc}{content}"));
            if flags & 0x8 != 0 {
                let mut r = Vec::new();
                r.extend_from_slice(&code.to_le_bytes());
                r.extend_from_slice(&(0x1u32 | 0x4).to_le_bytes());
                r.extend_from_slice(&8u32.to_le_bytes());
                r.extend_from_slice(&0u64.to_le_bytes());
                (&chan).write_all(&r).unwrap();
            }
        }
        log
    })
}

fn main() {
    let mut legacy = false;
    let mut backend_bin: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--legacy" => legacy = true,
            "--backend" => backend_bin = args.next().map(PathBuf::from),
            _ => fail(format!("unknown arg {a}")),
        }
    }
    let backend_bin = backend_bin.unwrap_or_else(|| {
        std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .join("dax-backend")
    });

    let dir = std::env::temp_dir().join(format!("dax-probe-{}", std::process::id()));
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("hello.txt"), vec![b'D'; 8192]).unwrap();
    let sock_path = dir.join("vfs.sock");

    let mut cmd = Command::new(&backend_bin);
    cmd.arg("--socket-path")
        .arg(&sock_path)
        .arg("--shared-dir")
        .arg(&share);
    if legacy {
        cmd.arg("--legacy");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| fail(format!("spawn {backend_bin:?}: {e}")));

    let t0 = Instant::now();
    let mut sock = loop {
        match UnixStream::connect(&sock_path) {
            Ok(s) => break s,
            Err(_) if t0.elapsed() < Duration::from_secs(10) => {
                thread::sleep(Duration::from_millis(20))
            }
            Err(e) => fail(format!("connect: {e}")),
        }
    };
    println!(
        "probe: socket {} created and accepting",
        sock_path.display()
    );

    // Raw GET_FEATURES / GET_PROTOCOL_FEATURES: vhost 0.16's Frontend truncates unknown bit 22.
    let features = raw_get_u64(&mut sock, 1);
    let proto_raw = raw_get_u64(&mut sock, 15);
    println!("probe: GET_FEATURES = {features:#x}, GET_PROTOCOL_FEATURES = {proto_raw:#x}, bit22 (SHMEM) = {}, bit21 = {}",
        proto_raw & SHMEM_BIT22 != 0, proto_raw & (1 << 21) != 0);
    if !legacy && proto_raw & SHMEM_BIT22 == 0 {
        fail("standard mode must offer protocol bit 22");
    }

    let mut fe = Frontend::from_stream(sock, 2);
    fe.set_owner().unwrap();
    let f = fe.get_features().unwrap();
    fe.set_features(f).unwrap();
    let pf = fe.get_protocol_features().unwrap();
    let ack = VhostUserProtocolFeatures::from_bits_retain(
        (pf & (VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::BACKEND_SEND_FD
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::MQ))
            .bits()
            | (proto_raw & SHMEM_BIT22),
    );
    fe.set_protocol_features(ack).unwrap();
    println!("probe: acked protocol features {:#x}", ack.bits());

    let (chan_ours, chan_theirs) = UnixStream::pair().unwrap();
    fe.set_backend_request_fd(&chan_theirs).unwrap();
    drop(chan_theirs);
    let chan_thread = channel_server(chan_ours, legacy);

    // Guest RAM: memfd, GPA 0.
    // SAFETY: plain syscalls with valid arguments.
    let memfd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(memfd >= 0);
    // SAFETY: valid fd.
    assert_eq!(unsafe { libc::ftruncate(memfd, MEM_SIZE as i64) }, 0);
    // SAFETY: mapping a fresh memfd of MEM_SIZE bytes.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            memfd,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: base as u64,
        mmap_offset: 0,
        mmap_handle: memfd as RawFd,
    };
    fe.set_mem_table(&[region]).unwrap();

    let kick = EventFd::new(0).unwrap();
    let call = EventFd::new(0).unwrap();
    let q = 1; // request queue
    fe.set_vring_num(q, QSIZE).unwrap();
    fe.set_vring_addr(
        q,
        &VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: base as u64 + DESC,
            used_ring_addr: base as u64 + USED,
            avail_ring_addr: base as u64 + AVAIL,
            log_addr: None,
        },
    )
    .unwrap();
    fe.set_vring_base(q, 0).unwrap();
    fe.set_vring_call(q, &call).unwrap();
    fe.set_vring_kick(q, &kick).unwrap();
    fe.set_vring_enable(q, true).unwrap();

    let mut g = Guest {
        base: base as *mut u8,
        avail_idx: 0,
        used_seen: 0,
        unique: 0,
    };

    // FUSE_INIT 7.31 with INIT_EXT and PERFILE_DAX (flags2 bit 1).
    let mut body = Vec::new();
    body.extend_from_slice(&7u32.to_le_bytes());
    body.extend_from_slice(&31u32.to_le_bytes());
    body.extend_from_slice(&(128u32 * 1024).to_le_bytes());
    let init_flags: u32 = (1 << 30) | (1 << 26); // INIT_EXT | MAP_ALIGNMENT
    body.extend_from_slice(&init_flags.to_le_bytes());
    body.extend_from_slice(&2u32.to_le_bytes()); // flags2: PERFILE_DAX
    body.extend_from_slice(&[0u8; 44]);
    let (err, out) = g.call(&kick, 26, 0, &body);
    if err != 0 || out.len() < 24 {
        fail(format!("INIT err {err} len {}", out.len()));
    }
    let oflags = u32::from_le_bytes(out[12..16].try_into().unwrap());
    // fuse_init_out: ... max_pages u16 @28, map_alignment u16 @30, flags2 u32 @32.
    let map_align = if out.len() >= 32 {
        u16::from_le_bytes(out[30..32].try_into().unwrap())
    } else {
        0
    };
    let oflags2 = if out.len() >= 36 {
        u32::from_le_bytes(out[32..36].try_into().unwrap())
    } else {
        0
    };
    println!(
        "probe: INIT ok: flags={oflags:#x} flags2={oflags2:#x} PERFILE_DAX={} MAP_ALIGNMENT flag={} map_alignment={map_align}",
        oflags2 & 2 != 0,
        oflags & (1 << 26) != 0
    );

    // LOOKUP hello.txt under the root (nodeid 1).
    let (err, out) = g.call(&kick, 1, 1, b"hello.txt\0");
    if err != 0 {
        fail(format!("LOOKUP err {err}"));
    }
    let nodeid = u64::from_le_bytes(out[0..8].try_into().unwrap());
    println!("probe: LOOKUP hello.txt -> nodeid {nodeid}");

    // SETUPMAPPING: file offset 0, 4 KiB, READ|WRITE, window offset 2 MiB.
    let mut sm = Vec::new();
    for v in [0u64, 0, 4096, 0x3, 0x20_0000] {
        sm.extend_from_slice(&v.to_le_bytes());
    }
    let (err, _) = g.call(&kick, 48, nodeid, &sm);
    println!("probe: SETUPMAPPING reply error={err}");
    if err != 0 {
        fail("SETUPMAPPING failed");
    }

    // REMOVEMAPPING the same range.
    let mut rm = Vec::new();
    rm.extend_from_slice(&1u32.to_le_bytes());
    rm.extend_from_slice(&0x20_0000u64.to_le_bytes());
    rm.extend_from_slice(&4096u64.to_le_bytes());
    let (err, _) = g.call(&kick, 49, nodeid, &rm);
    println!("probe: REMOVEMAPPING reply error={err}");
    if err != 0 {
        fail("REMOVEMAPPING failed");
    }

    // Disconnect: the backend must exit.
    drop(fe);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            fail("backend did not exit after disconnect");
        }
        thread::sleep(Duration::from_millis(20));
    };
    println!("probe: backend exited after disconnect: {status}");
    let log = chan_thread.join().unwrap();
    for l in &log {
        println!("probe: backend channel: {l}");
    }
    // Legacy: the whole window given back at FUSE_INIT (FS_UNMAP, len u64::MAX, as virtiofsd
    // did), then the map and the unmap.
    let want: &[u32] = if legacy { &[7, 6, 7] } else { &[9, 10] };
    if legacy
        && !log
            .first()
            .is_some_and(|l| l.contains("len=0xffffffffffffffff"))
    {
        fail("expected the whole window given back at INIT first");
    }
    for (i, code) in want.iter().enumerate() {
        if !log
            .get(i)
            .is_some_and(|l| l.starts_with(&format!("code={code} ")))
        {
            fail(format!(
                "expected request {code} as message {i} on the backend channel"
            ));
        }
    }
    // SAFETY: unmapping what we mapped; closing our memfd.
    unsafe {
        libc::munmap(base, MEM_SIZE);
        let _ = std::fs::File::from_raw_fd(memfd);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = sock_path.as_path().as_os_str().len();
    let _ = call.as_raw_fd();
    println!(
        "probe: PASS ({} dialect)",
        if legacy { "legacy" } else { "standard" }
    );
}
