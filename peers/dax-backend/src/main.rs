// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `dax-backend`: a DAX-capable vhost-user virtio-fs backend.
//!
//! fuse-backend-rs's `PassthroughFs` served by its FUSE `Server` over the virtqueues
//! (vhost-user-backend), with SETUPMAPPING / REMOVEMAPPING forwarded to the front-end over the
//! vhost-user backend channel, either as standard SHMEM_MAP / SHMEM_UNMAP (default) or as legacy
//! FS_MAP / FS_UNMAP (`--legacy`).

mod legacy;
mod outside;

use std::collections::BTreeMap;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, RwLock};

use fuse_backend_rs::abi::virtio_fs::{RemovemappingOne, SetupmappingFlags};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::{Server, MAX_BUFFER_SIZE};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::{FsCacheReqHandler, Reader, VirtioFsWriter, Writer};
use log::{debug, error, info, warn};
use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringMutex, VringT};
use virtio_bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::{
    Address, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;

use outside::Stream;

/// Standard vhost-user protocol feature SHMEM (current spec): bit 22. vhost 0.16 names bit 21
/// `SHMEM`, which is really GPA_ADDRESSES, so it must not be used.
pub const PROTOCOL_F_SHMEM_STD: u64 = 1 << 22;

const QUEUE_SIZE: usize = 1024;
/// hiprio + one request queue.
const NUM_QUEUES: usize = 2;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

type Fs = PassthroughFs<()>;
type GuestMem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// Which wire dialect the map requests use on the backend channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    Standard,
    Legacy,
}

/// Sends FUSE DAX map/unmap requests to the front-end over the backend channel.
struct CacheHandler {
    dialect: Dialect,
    /// vhost's backend-channel proxy (standard dialect).
    backend: Option<Backend>,
    /// Our own dup of the backend-channel socket (legacy dialect).
    legacy: Option<legacy::LegacyChannel>,
    /// Ranges mapped through the standard dialect and not unmapped yet (offset -> length), so
    /// that a FUSE_DESTROY can give them all back (SHMEM_UNMAP has no "whole window" form).
    mapped: BTreeMap<u64, u64>,
}

impl CacheHandler {
    fn no_channel() -> io::Error {
        warn!("DAX request but the front-end gave no backend channel");
        io::Error::from_raw_os_error(libc::ENOSYS)
    }
}

fn vhost_err(e: io::Error) -> io::Error {
    // Backend::shmem_map maps any non-zero reply to FrontendInternalError; keep it an io::Error.
    error!("backend channel request failed: {e}");
    if e.raw_os_error().is_some() {
        e
    } else {
        io::Error::from_raw_os_error(libc::EIO)
    }
}

impl FsCacheReqHandler for CacheHandler {
    fn map(
        &mut self,
        foffset: u64,
        moffset: u64,
        len: u64,
        flags: u64,
        fd: RawFd,
    ) -> io::Result<()> {
        let write = flags & SetupmappingFlags::WRITE.bits() != 0;
        debug!(
            "map foffset={foffset:#x} moffset={moffset:#x} len={len:#x} flags={flags:#x} fd={fd}"
        );
        match self.dialect {
            Dialect::Standard => {
                let backend = self.backend.as_ref().ok_or_else(Self::no_channel)?;
                let msg = VhostUserMMap {
                    shmid: 0,
                    padding: [0; 7],
                    fd_offset: foffset,
                    shm_offset: moffset,
                    len,
                    flags: if write {
                        VhostUserMMapFlags::WRITABLE.bits()
                    } else {
                        0
                    },
                };
                struct Fd(RawFd);
                impl AsRawFd for Fd {
                    fn as_raw_fd(&self) -> RawFd {
                        self.0
                    }
                }
                backend.shmem_map(&msg, &Fd(fd)).map_err(vhost_err)?;
                self.mapped.insert(moffset, len);
                Ok(())
            }
            Dialect::Legacy => {
                let ch = self.legacy.as_mut().ok_or_else(Self::no_channel)?;
                let mut lflags = 0;
                if flags & SetupmappingFlags::READ.bits() != 0 || !write {
                    lflags |= legacy::MAP_R;
                }
                if write {
                    lflags |= legacy::MAP_W;
                }
                ch.fs_map(&[(foffset, moffset, len, lflags)], fd)
            }
        }
    }

    fn unmap(&mut self, requests: Vec<RemovemappingOne>) -> io::Result<()> {
        debug!("unmap {} range(s)", requests.len());
        match self.dialect {
            Dialect::Standard => {
                let backend = self.backend.as_ref().ok_or_else(Self::no_channel)?;
                for r in requests {
                    let msg = VhostUserMMap {
                        shmid: 0,
                        padding: [0; 7],
                        fd_offset: 0,
                        shm_offset: r.moffset,
                        len: r.len,
                        flags: 0,
                    };
                    backend.shmem_unmap(&msg).map_err(vhost_err)?;
                    self.mapped.remove(&r.moffset);
                }
                Ok(())
            }
            Dialect::Legacy => {
                let ch = self.legacy.as_mut().ok_or_else(Self::no_channel)?;
                let ranges: Vec<(u64, u64)> = requests.iter().map(|r| (r.moffset, r.len)).collect();
                for chunk in ranges.chunks(legacy::MAX_ENTRIES) {
                    ch.fs_unmap(chunk)?;
                }
                Ok(())
            }
        }
    }
}

impl CacheHandler {
    /// Gives back every range of the window, as virtiofsd did at FUSE_INIT and FUSE_DESTROY: the
    /// Linux guest sends no REMOVEMAPPING for the ranges still mapped when it unmounts (it ends
    /// the connection before it evicts the inodes), so without this they would stay mapped in the
    /// front-end until the device resets.
    fn unmap_everything(&mut self) -> io::Result<()> {
        match self.dialect {
            Dialect::Standard => {
                let ranges: Vec<RemovemappingOne> = std::mem::take(&mut self.mapped)
                    .into_iter()
                    .map(|(moffset, len)| RemovemappingOne { moffset, len })
                    .collect();
                if ranges.is_empty() {
                    return Ok(());
                }
                info!("giving back {} mapped range(s)", ranges.len());
                self.unmap(ranges)
            }
            Dialect::Legacy => {
                let Some(ch) = self.legacy.as_mut() else {
                    return Ok(());
                };
                info!("giving back the whole window (FS_UNMAP len u64::MAX)");
                ch.fs_unmap(&[(0, u64::MAX)])
            }
        }
    }
}

/// Catches the fd `PassthroughFs::setupmapping` would map, instead of mapping it: the way to the
/// open file behind a FUSE (nodeid, fh) for FS_IO.
#[derive(Default)]
struct FdCatcher(Option<OwnedFd>);

impl FsCacheReqHandler for FdCatcher {
    fn map(&mut self, _: u64, _: u64, _: u64, _: u64, fd: RawFd) -> io::Result<()> {
        // SAFETY: `fd` is open for the duration of this call (the passthrough fs holds it);
        // F_DUPFD_CLOEXEC makes a new fd that we own.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `dup` is a fresh fd owned by nobody else.
        self.0 = Some(unsafe { OwnedFd::from_raw_fd(dup) });
        Ok(())
    }

    fn unmap(&mut self, _: Vec<RemovemappingOne>) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
}

const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_INIT: u32 = 26;
const FUSE_DESTROY: u32 = 38;

struct FsBackend {
    server: Arc<Server<Arc<Fs>>>,
    fs: Arc<Fs>,
    mem: Option<GuestMem>,
    event_idx: bool,
    acked_features: u64,
    cache: CacheHandler,
    /// Socket inodes open when GET_PROTOCOL_FEATURES was answered (legacy channel discovery).
    sock_snapshot: Mutex<Vec<u64>>,
}

impl FsBackend {
    /// Serves every available request of `vring`. A request never ends the queue: each one goes
    /// back to the guest, with a reply or, where it left nowhere to write one, with used length
    /// 0. Only a queue the guest broke (its rings) ends it.
    fn process_queue(&mut self, vring: &VringMutex) -> io::Result<bool> {
        let Some(atomic) = self.mem.as_ref() else {
            return Ok(false);
        };
        let mem = atomic.memory();
        let chains: Vec<_> = vring
            .get_mut()
            .get_queue_mut()
            .iter(mem.clone())
            .map_err(|e| io::Error::other(format!("queue iter: {e}")))?
            .collect();
        let mut used_any = false;
        for chain in chains {
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.clone().collect();
            let stream = |writable: bool| {
                Stream::new(
                    &mem,
                    descs
                        .iter()
                        .filter(|d| d.is_write_only() == writable)
                        .map(|d| (d.addr().raw_value(), d.len())),
                )
            };
            let (readable, writable) = (stream(false), stream(true));
            let len = if readable.in_ram() && writable.in_ram() {
                self.serve(&mem, chain, &readable, &writable)
            } else {
                self.serve_outside_ram(&mem, &readable, &writable)
            };
            vring
                .add_used(head, len)
                .map_err(|e| io::Error::other(format!("add_used: {e}")))?;
            used_any = true;
        }
        if used_any {
            debug!("signalling used buffers");
            vring.signal_used_queue()?;
        }
        Ok(used_any)
    }

    /// A request whose buffers all lie in guest RAM: fuse-backend-rs's server. Returns the used
    /// length.
    fn serve(
        &mut self,
        mem: &GuestMemoryMmap<()>,
        chain: DescriptorChain<GuestMemoryLoadGuard<GuestMemoryMmap<()>>>,
        readable: &Stream,
        writable: &Stream,
    ) -> u32 {
        let header = outside::InHeader::read(mem, readable);
        let opcode = header.map(|h| h.opcode);
        let unique = header.map_or(0, |h| h.unique);
        debug!("request head {} opcode {opcode:?}", chain.head_index());
        // The buffers were checked as the reader and writer take them, but the guest can change
        // its descriptors under us: a failure here is refused like a buffer outside RAM.
        let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
            Ok(r) => r,
            Err(e) => {
                warn!("request {unique}: device-readable buffers: {e}");
                return outside::reply_error(mem, writable, unique, outside::UNREACHABLE);
            }
        };
        let writer = match VirtioFsWriter::new(mem, chain) {
            Ok(w) => Writer::VirtioFs(w),
            Err(e) => {
                warn!("request {unique}: device-writable buffers: {e}");
                return outside::reply_error(mem, writable, unique, outside::UNREACHABLE);
            }
        };
        let len = match self
            .server
            .handle_message(reader, writer, Some(&mut self.cache), None)
        {
            Ok(n) => u32::try_from(n).unwrap_or(u32::MAX),
            Err(e) => {
                // The server writes no reply on these (a request it cannot decode, a reply
                // that does not fit): answer EIO where there is room, so the guest does not
                // take an empty buffer for a reply.
                warn!("FUSE request {unique} (opcode {opcode:?}) failed: {e:?}");
                outside::reply_error(mem, writable, unique, libc::EIO)
            }
        };
        if matches!(opcode, Some(FUSE_INIT | FUSE_DESTROY)) {
            // At INIT the ranges tracked belong to a previous driver, whose window the
            // front-end reset: forget them (standard) or clear the window (legacy).
            if opcode == Some(FUSE_INIT) && self.cache.dialect == Dialect::Standard {
                self.cache.mapped.clear();
            } else if let Err(e) = self.cache.unmap_everything() {
                warn!("giving back the window: {e}");
            }
        }
        len
    }

    /// A request with a buffer outside guest RAM (in a DAX window, which this process cannot
    /// see: a guest `read(2)` or `write(2)` whose user buffer is itself a DAX mapping). In the
    /// legacy dialect a FUSE_READ or FUSE_WRITE is served by the front-end's copy (FS_IO, see
    /// [`FsBackend::io_read`] and [`FsBackend::io_write`]); anything else, and everything in the
    /// standard dialect, gets a [`outside::UNREACHABLE`] reply. Returns the used length.
    fn serve_outside_ram(
        &mut self,
        mem: &GuestMemoryMmap<()>,
        readable: &Stream,
        writable: &Stream,
    ) -> u32 {
        let Some(header) = outside::InHeader::read(mem, readable) else {
            warn!("a request whose header lies outside guest RAM: refused");
            return outside::reply_error(mem, writable, 0, outside::UNREACHABLE);
        };
        let refuse = |errno: i32, why: &str| {
            warn!(
                "request {} (opcode {}) with a buffer outside guest RAM: {why}: errno {errno}",
                header.unique, header.opcode
            );
            outside::reply_error(mem, writable, header.unique, errno)
        };
        if header.len > MAX_BUFFER_SIZE + 0x1000 {
            // As fuse-backend-rs's server answers a request longer than its buffers.
            return refuse(libc::ENOMEM, "too long");
        }
        if self.cache.legacy.is_none() {
            return refuse(outside::UNREACHABLE, "no FS_IO in this dialect");
        }
        let result = match header.opcode {
            FUSE_READ => self.io_read(mem, &header, readable, writable),
            FUSE_WRITE => self.io_write(mem, &header, readable, writable),
            _ => return refuse(outside::UNREACHABLE, "only READ and WRITE go through FS_IO"),
        };
        match result {
            Ok(len) => len,
            Err(e) => refuse(
                e.raw_os_error().unwrap_or(libc::EIO),
                &format!("through FS_IO: {e}"),
            ),
        }
    }

    /// The open file behind (nodeid, fh) for FS_IO: read-write for a write. fuse-backend-rs
    /// does not hand out a handle's descriptor; `PassthroughFs::setupmapping` opens the inode
    /// itself, as for a DAX mapping, and we keep that descriptor instead of mapping it.
    fn io_file(
        &self,
        h: &outside::InHeader,
        fh: u64,
        offset: u64,
        size: u64,
        write: bool,
    ) -> io::Result<OwnedFd> {
        let flags = if write {
            SetupmappingFlags::READ | SetupmappingFlags::WRITE
        } else {
            SetupmappingFlags::READ
        };
        let mut catcher = FdCatcher::default();
        self.fs.setupmapping(
            &h.ctx,
            h.nodeid,
            fh,
            offset,
            size,
            flags.bits(),
            0,
            &mut catcher,
        )?;
        catcher
            .0
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// FUSE_READ with data buffers outside guest RAM: the front-end copies the file into every
    /// data buffer (in RAM or not) with FS_IO (flags MAP_R). Its request and reply header must
    /// lie in guest RAM. Returns the used length; the reply counts the bytes done.
    fn io_read(
        &mut self,
        mem: &GuestMemoryMmap<()>,
        h: &outside::InHeader,
        readable: &Stream,
        writable: &Stream,
    ) -> io::Result<u32> {
        let (fh, offset, size) = outside::rw_args(mem, readable).ok_or_else(unreachable)?;
        if !writable.can_access(0, outside::OUT_HEADER) {
            return Err(unreachable());
        }
        let data = writable.pieces(outside::OUT_HEADER, u64::from(size));
        let want: u64 = data.iter().map(|p| p.len).sum();
        let fd = self.io_file(h, fh, offset, want, false)?;
        let ch = self.cache.legacy.as_mut().ok_or_else(unreachable)?;
        let done = outside::fs_io(ch, fd.as_raw_fd(), offset, &data, legacy::MAP_R)?;
        debug!("FUSE_READ through FS_IO: {done} of {size} bytes at {offset:#x}");
        Ok(outside::reply(mem, writable, h.unique, 0, &[], done))
    }

    /// FUSE_WRITE with data buffers outside guest RAM: the front-end writes every data buffer
    /// (in RAM or not) into the file with FS_IO (flags MAP_W). Its request and reply must lie
    /// in guest RAM. Returns the used length; the reply (`fuse_write_out`) counts the bytes
    /// done.
    fn io_write(
        &mut self,
        mem: &GuestMemoryMmap<()>,
        h: &outside::InHeader,
        readable: &Stream,
        writable: &Stream,
    ) -> io::Result<u32> {
        let (fh, offset, size) = outside::rw_args(mem, readable).ok_or_else(unreachable)?;
        // Nothing is written unless the reply can say how much was.
        if !writable.can_access(0, outside::OUT_HEADER + outside::WRITE_OUT) {
            return Err(unreachable());
        }
        let data = readable.pieces(outside::IN_HEADER + outside::RW_IN, u64::from(size));
        let want: u64 = data.iter().map(|p| p.len).sum();
        let fd = self.io_file(h, fh, offset, want, true)?;
        let ch = self.cache.legacy.as_mut().ok_or_else(unreachable)?;
        let done = outside::fs_io(ch, fd.as_raw_fd(), offset, &data, legacy::MAP_W)?;
        debug!("FUSE_WRITE through FS_IO: {done} of {size} bytes at {offset:#x}");
        // `fuse_write_out`: size, padding. `done` is at most `size`, a u32.
        let mut out = [0u8; outside::WRITE_OUT as usize];
        out[..4].copy_from_slice(&(done as u32).to_le_bytes());
        Ok(outside::reply(mem, writable, h.unique, 0, &out, 0))
    }
}

fn unreachable() -> io::Error {
    io::Error::from_raw_os_error(outside::UNREACHABLE)
}

impl VhostUserBackendMut for FsBackend {
    type Bitmap = ();
    type Vring = VringMutex<GuestMem>;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_F_NOTIFY_ON_EMPTY)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VHOST_USER_F_PROTOCOL_FEATURES
    }

    fn acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // Snapshot the sockets we have now: SET_BACKEND_REQ_FD can only come after this answer,
        // so the one new unnamed socket seen then is the backend channel (legacy mode).
        if self.cache.dialect == Dialect::Legacy {
            *self.sock_snapshot.lock().unwrap() = legacy::socket_inodes();
        }
        let mut f = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::BACKEND_SEND_FD
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        if self.cache.dialect == Dialect::Standard {
            // Bit 22 (standard SHMEM), set by value: vhost 0.16's `SHMEM` constant is bit 21.
            f = VhostUserProtocolFeatures::from_bits_retain(f.bits() | PROTOCOL_F_SHMEM_STD);
        }
        f
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn update_memory(&mut self, mem: GuestMem) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn set_backend_req_fd(&mut self, backend: Backend) {
        info!(
            "front-end set the backend channel ({:?} dialect)",
            self.cache.dialect
        );
        match self.cache.dialect {
            Dialect::Standard => {
                // vhost-user-backend 0.22 only calls set_shmem_flag(true) when *bit 21* was acked;
                // we offer bit 22 instead, so allow SHMEM_MAP/UNMAP here ourselves. REPLY_ACK is
                // set by vhost-user-backend from the acked protocol features.
                backend.set_shmem_flag(true);
                self.cache.backend = Some(backend);
            }
            Dialect::Legacy => {
                let before = self.sock_snapshot.lock().unwrap().clone();
                match legacy::LegacyChannel::discover(&before) {
                    Ok(ch) => self.cache.legacy = Some(ch),
                    Err(e) => error!("legacy mode: cannot find the backend channel socket: {e}"),
                }
                // Keep vhost's Backend alive (it owns the original fd) but never send through it.
                self.cache.backend = Some(backend);
            }
        }
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        let idx = device_event as usize;
        debug!("event on queue {idx}");
        let vring = vrings
            .get(idx)
            .ok_or_else(|| io::Error::other(format!("unknown device event {device_event}")))?;
        if self.event_idx {
            loop {
                vring
                    .disable_notification()
                    .map_err(|e| io::Error::other(format!("{e}")))?;
                self.process_queue(vring)?;
                if !vring
                    .enable_notification()
                    .map_err(|e| io::Error::other(format!("{e}")))?
                {
                    break;
                }
            }
        } else {
            self.process_queue(vring)?;
        }
        Ok(())
    }
}

struct Args {
    socket_path: String,
    shared_dir: String,
    legacy: bool,
}

fn usage() -> ! {
    eprintln!("usage: dax-backend --socket-path PATH --shared-dir DIR [--legacy]");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut socket_path = None;
    let mut shared_dir = None;
    let mut legacy = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        match key.as_str() {
            "--socket-path" => socket_path = inline.or_else(|| it.next()),
            "--shared-dir" => shared_dir = inline.or_else(|| it.next()),
            "--legacy" => legacy = true,
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("unknown argument: {a}");
                usage()
            }
        }
    }
    match (socket_path, shared_dir) {
        (Some(socket_path), Some(shared_dir)) => Args {
            socket_path,
            shared_dir,
            legacy,
        },
        _ => usage(),
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let args = parse_args();
    let dialect = if args.legacy {
        Dialect::Legacy
    } else {
        Dialect::Standard
    };

    let cfg = Config {
        root_dir: args.shared_dir.clone(),
        do_import: true,
        // The guest maps file pages directly; let it cache attributes/data normally.
        cache_policy: CachePolicy::Always,
        writeback: false,
        xattr: false,
        // Per-file DAX (FUSE_ATTR_DAX) for every file when the guest mounts with dax=inode.
        dax_file_size: Some(0),
        ..Default::default()
    };
    let fs = match Fs::new(cfg) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("dax-backend: passthrough fs: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = fs.import() {
        eprintln!("dax-backend: import {}: {e}", args.shared_dir);
        std::process::exit(1);
    }
    let fs = Arc::new(fs);
    let server = Arc::new(Server::new(fs.clone()));

    let backend = Arc::new(RwLock::new(FsBackend {
        server,
        fs,
        mem: None,
        event_idx: false,
        acked_features: 0,
        cache: CacheHandler {
            dialect,
            backend: None,
            legacy: None,
            mapped: BTreeMap::new(),
        },
        sock_snapshot: Mutex::new(Vec::new()),
    }));

    let mut daemon = match VhostUserDaemon::new(
        "dax-backend".to_string(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    ) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("dax-backend: daemon: {e}");
            std::process::exit(1);
        }
    };
    info!(
        "listening on {} (shared dir {}, {:?} dialect)",
        args.socket_path, args.shared_dir, dialect
    );
    match daemon.serve(&args.socket_path) {
        Ok(()) => {
            info!("front-end disconnected, exiting");
            // Exit now: dropping the daemon would wait for the vring worker threads.
            std::process::exit(0);
        }
        Err(e) => {
            error!("vhost-user daemon: {e}");
            std::process::exit(1);
        }
    }
}
