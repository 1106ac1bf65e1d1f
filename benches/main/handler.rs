// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `handler/*`: map + unmap through `BackendChannel` against what a VMM writes without the
//! crate: vhost's own `FrontendReqHandler` with a small mmap handler ([`MmapHandler`]), each
//! driven both ways (an epoll thread; a plain thread on blocking reads), beside the raw floor.
//!
//! Sides (criterion ids `handler/<kind>_<case>`): `spawn` (`BackendChannel::spawn()`),
//! `handle_one` (a plain thread on `handle_one_timeout`), `vhost_epoll` (an epoll thread on the
//! handler's socket and a stop eventfd, one `handle_request()` a wakeup), `vhost_blocking` (a
//! plain thread looping on the blocking `handle_request()`), `floor` and `floor_epoll` (the raw
//! server, one `recvmsg` a message, without and with an `epoll_wait` before each message: the
//! floors of the plain-thread and the epoll drive), `lean` and `lean_epoll` (those floors with
//! the crate's checks on the two requests in the least code, [`crate::lean`]). Cases: `2m` and
//! `4k` (one map+unmap pair at offset 0 of a 16 MiB window) and `2m_live_32k` (the pair on the
//! last 2 MiB of a 64 GiB window whose other 32,767 ranges are mapped). Every side of a case gets
//! the same bytes and a window of the same size.
//!
//! Two windows of 32,768 VMAs each do not fit one process under the default
//! `vm.max_map_count` (65,530), so every server of the 32k case runs in a process of its own:
//! the bench binary again, with `VFD_BENCH_SERVER=<kind>_<case>` and `VFD_BENCH_SERVER_FD=<fd>`
//! (its end of a socket pair, inherited). The child fills its window, starts the server, sends
//! the peer's end of the server's socket back over that pair and waits; the parent kills and
//! reaps it when done. The child inherits the server CPU of [`Placement`].
//!
//! `VFD_BENCH_STRACE=<kind>_<case>` runs 10,000 pairs of that side and exits, for
//! `strace -f -ff -o DIR/t` (one file per thread: the server thread's counts divided by 10,000
//! are its syscalls per pair).

use std::env;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use criterion::Criterion;
use vhost::vhost_user::message::VhostUserMMap;
use vhost::vhost_user::{Error as VhostError, FrontendReqHandler, VhostUserFrontendReqHandler};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use virtio_fs_dax::protocol::{standard, Dialect, MMAP_FLAG_WRITABLE};
use virtio_fs_dax::window::DaxWindow;
use virtio_fs_dax::BackendChannel;

use crate::common::{memfd, mmap_msg};
use crate::floor::RawReservation;
use crate::lean::Lean;
use crate::map::{fill_window, full_window};
use crate::paired::{paired, timed, Goal, Side};
use crate::placement::Placement;
use crate::server::{call, serve_channel, serve_raw_into, Drive, Served, Server};
use crate::{G64, LIVE, M2, SOCKET_WINDOW};

/// Runs the server of a side in this process for a parent bench process.
const SERVER_ENV: &str = "VFD_BENCH_SERVER";
/// The descriptor number of the child's end of the parent's socket pair.
const SERVER_FD_ENV: &str = "VFD_BENCH_SERVER_FD";
/// Runs [`STRACE_PAIRS`] pairs of a side and exits.
const STRACE_ENV: &str = "VFD_BENCH_STRACE";
const STRACE_PAIRS: u64 = 10_000;
const ROUNDS: usize = 15;
const K4: u64 = 4 << 10;

/// A VMM's own handler for the two requests, without the crate: checks each range against the
/// window (id 0, non-empty, no overflow, inside, page aligned), then one `mmap MAP_FIXED` of the
/// descriptor into the window (read-only or read-write from the flags), or the `PROT_NONE`
/// anonymous re-map for an unmap. A refusal is an `io::Error`, which `FrontendReqHandler`
/// replies with. No table: it neither refuses overlaps nor counts mappings.
pub struct MmapHandler {
    window: RawReservation,
    page: u64,
}

impl MmapHandler {
    pub fn new(size: u64) -> Self {
        // SAFETY: sysconf reads and writes no memory of ours.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        MmapHandler {
            window: RawReservation::new(size),
            page: page as u64,
        }
    }

    /// `(offset, len)` of a request that lies inside the window, page aligned.
    fn range(&self, req: &VhostUserMMap) -> io::Result<(u64, u64)> {
        let (shmid, offset, len) = (req.shmid, req.shm_offset, req.len);
        let end = offset.checked_add(len);
        if shmid != 0
            || len == 0
            || end.is_none_or(|end| end > self.window.range.size())
            || (offset | len) % self.page != 0
        {
            return Err(einval());
        }
        Ok((offset, len))
    }
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

impl VhostUserFrontendReqHandler for MmapHandler {
    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> io::Result<u64> {
        let (offset, len) = self.range(req)?;
        // vhost has refused unknown flags and a file range that overflows; mmap takes an off_t.
        let (fd_offset, flags) = (req.fd_offset, req.flags);
        if fd_offset % self.page != 0 || fd_offset + len > i64::MAX as u64 {
            return Err(einval());
        }
        let prot = match flags & MMAP_FLAG_WRITABLE {
            0 => libc::PROT_READ,
            _ => libc::PROT_READ | libc::PROT_WRITE,
        };
        let file = Some((fd.as_raw_fd(), fd_offset));
        self.window.range.remap(offset, len, prot, file)?;
        Ok(0)
    }

    fn shmem_unmap(&self, req: &VhostUserMMap) -> io::Result<u64> {
        let (offset, len) = self.range(req)?;
        self.window
            .range
            .remap(offset, len, libc::PROT_NONE, None)?;
        Ok(0)
    }
}

type Handler = FrontendReqHandler<MmapHandler>;

/// One request; `false` once the channel is done. A handler's refusal has been replied to.
fn serve_one(h: &mut Handler) -> bool {
    matches!(
        h.handle_request(),
        Ok(_) | Err(VhostError::ReqHandlerError(_))
    )
}

/// `FrontendReqHandler` over `handler`, reply-ack on, served by an epoll thread (`epoll`) or a
/// plain thread on blocking reads (stopped by shutting the socket down).
fn serve_vhost(place: &Placement, handler: MmapHandler, epoll: bool) -> Served {
    let mut h = FrontendReqHandler::new(Arc::new(handler)).unwrap();
    h.set_reply_ack_flag(true);
    // SAFETY: the handler's own end for the backend (`get_tx_raw_fd`), open while `h` lives,
    // which outlives this borrow (it ends with the duplicate made at once, as a VMM's
    // SET_BACKEND_REQ_FD makes one in the backend).
    let tx = unsafe { BorrowedFd::borrow_raw(h.get_tx_raw_fd()) };
    let peer = UnixStream::from(tx.try_clone_to_owned().unwrap());
    if !epoll {
        let t = place.server(|| thread::spawn(move || while serve_one(&mut h) {}));
        return Served::new(peer, Server::Thread(t));
    }
    const EV_SOCK: u64 = 0;
    const EV_STOP: u64 = 1;
    let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap();
    let stop_thread = stop.try_clone().unwrap();
    let ep = Epoll::new().unwrap();
    for (fd, data) in [(h.as_raw_fd(), EV_SOCK), (stop_thread.as_raw_fd(), EV_STOP)] {
        let ev = EpollEvent::new(EventSet::IN, data);
        ep.ctl(ControlOperation::Add, fd, ev).unwrap();
    }
    let t = place.server(|| {
        thread::spawn(move || {
            let _stop = stop_thread;
            let mut events = [EpollEvent::default(); 2];
            loop {
                let n = match ep.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                if events[..n].iter().any(|e| e.data() == EV_STOP) || !serve_one(&mut h) {
                    return;
                }
            }
        })
    });
    Served::new(peer, Server::Stoppable(stop, t))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Spawn,
    HandleOne,
    VhostEpoll,
    VhostBlocking,
    Floor,
    FloorEpoll,
    Lean,
    LeanEpoll,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::Spawn,
        Kind::HandleOne,
        Kind::VhostEpoll,
        Kind::VhostBlocking,
        Kind::Floor,
        Kind::FloorEpoll,
        Kind::Lean,
        Kind::LeanEpoll,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Spawn => "spawn",
            Kind::HandleOne => "handle_one",
            Kind::VhostEpoll => "vhost_epoll",
            Kind::VhostBlocking => "vhost_blocking",
            Kind::Floor => "floor",
            Kind::FloorEpoll => "floor_epoll",
            Kind::Lean => "lean",
            Kind::LeanEpoll => "lean_epoll",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    M2,
    K4,
    Live32k,
}

impl Case {
    const ALL: [Case; 3] = [Case::M2, Case::K4, Case::Live32k];

    fn name(self) -> &'static str {
        match self {
            Case::M2 => "2m",
            Case::K4 => "4k",
            Case::Live32k => "2m_live_32k",
        }
    }

    /// Length of the measured range (and of the memfd it maps).
    fn len(self) -> u64 {
        match self {
            Case::K4 => K4,
            Case::M2 | Case::Live32k => M2,
        }
    }

    fn window(self) -> u64 {
        match self {
            Case::M2 | Case::K4 => SOCKET_WINDOW,
            Case::Live32k => G64,
        }
    }

    /// Ranges of 2 MiB mapped before the run, from the start of the window.
    fn others(self) -> u64 {
        match self {
            Case::M2 | Case::K4 => 0,
            Case::Live32k => LIVE - 1,
        }
    }

    /// Where the measured range starts: after the others.
    fn offset(self) -> u64 {
        self.others() * M2
    }
}

fn id(kind: Kind, case: Case) -> String {
    format!("{}_{}", kind.name(), case.name())
}

fn parse(side: &str) -> (Kind, Case) {
    Kind::ALL
        .into_iter()
        .flat_map(|k| Case::ALL.map(|c| (k, c)))
        .find(|&(k, c)| id(k, c) == side)
        .unwrap_or_else(|| panic!("no handler/ side named {side:?}"))
}

/// The server of a side in this process, its window filled as the case says.
fn serve_here(place: &Placement, kind: Kind, case: Case) -> Served {
    // The others all map the first 2 MiB of one memfd: no two neighbouring VMAs merge.
    let filler = memfd(M2);
    match kind {
        Kind::Spawn | Kind::HandleOne => {
            let window = match case {
                Case::Live32k => full_window(),
                _ => DaxWindow::new(case.window()).unwrap(),
            };
            fill_window(&window, &filler, case.others());
            let drive = match kind {
                Kind::Spawn => Drive::Spawn,
                _ => Drive::HandleOne,
            };
            serve_channel(place, drive, |ours| {
                BackendChannel::builder(ours)
                    .window(Arc::new(window))
                    .dialect(Dialect::Standard)
                    .build()
            })
        }
        Kind::VhostEpoll | Kind::VhostBlocking => {
            let handler = MmapHandler::new(case.window());
            handler.window.range.fill(&filler, case.others());
            serve_vhost(place, handler, kind == Kind::VhostEpoll)
        }
        Kind::Floor | Kind::FloorEpoll | Kind::Lean | Kind::LeanEpoll => {
            let reservation = RawReservation::new(case.window());
            reservation.range.fill(&filler, case.others());
            let lean = matches!(kind, Kind::Lean | Kind::LeanEpoll).then(|| {
                crate::lean::self_check();
                let mut lean = Lean::new(case.window());
                lean.fill(case.others());
                lean
            });
            let epoll = matches!(kind, Kind::FloorEpoll | Kind::LeanEpoll);
            serve_raw_into(place, reservation, lean, epoll)
        }
    }
}

/// The server of a side in a child process (the bench binary again, see the module doc).
fn serve_in_child(place: &Placement, kind: Kind, case: Case) -> Served {
    let (boot, theirs) = UnixStream::pair().unwrap();
    rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty()).unwrap();
    let mut cmd = Command::new(env::current_exe().unwrap());
    cmd.env(SERVER_ENV, id(kind, case))
        .env(SERVER_FD_ENV, theirs.as_raw_fd().to_string())
        .env_remove(STRACE_ENV);
    let child = place.server(|| cmd.spawn().unwrap());
    drop(theirs);
    let (n, peer) = boot.recv_with_fd(&mut [0u8]).unwrap();
    let peer =
        peer.unwrap_or_else(|| panic!("server {} sent no socket ({n} bytes)", id(kind, case)));
    Served::new(
        UnixStream::from(OwnedFd::from(peer)),
        Server::Process(child, boot),
    )
}

fn serve(place: &Placement, kind: Kind, case: Case) -> Served {
    match case {
        Case::Live32k => serve_in_child(place, kind, case),
        Case::M2 | Case::K4 => serve_here(place, kind, case),
    }
}

/// The messages of a case: SHMEM_MAP (with a memfd of the range's length) and SHMEM_UNMAP.
struct Pair {
    map: Vec<u8>,
    unmap: Vec<u8>,
    file: File,
}

impl Pair {
    fn new(case: Case) -> Self {
        Pair {
            map: mmap_msg(standard::SHMEM_MAP, case.offset(), case.len()),
            unmap: mmap_msg(standard::SHMEM_UNMAP, case.offset(), case.len()),
            file: memfd(case.len()),
        }
    }

    fn run(&self, s: &Served) {
        let fd = self.file.as_raw_fd();
        assert_eq!(call(&s.peer, &self.map, Some(fd)), 0);
        assert_eq!(call(&s.peer, &self.unmap, None), 0);
    }
}

fn side<'a>(
    place: &'a Placement,
    pair: &'a Pair,
    kind: Kind,
    case: Case,
) -> Side<impl FnMut(u64) -> Duration + 'a> {
    let mut served = None;
    Side::new(id(kind, case), move |n| {
        let s = served.get_or_insert_with(|| {
            let s = serve(place, kind, case);
            // Untimed: the first reply waits for the server's set-up.
            pair.run(&s);
            s
        });
        timed(n, || pair.run(s))
    })
}

/// The modes of the bench binary besides criterion's (see the module doc); `true` when this
/// process ran one and must exit.
pub fn run_mode() -> bool {
    if let Ok(side) = env::var(SERVER_ENV) {
        let (kind, case) = parse(&side);
        let fd: RawFd = env::var(SERVER_FD_ENV).unwrap().parse().unwrap();
        // SAFETY: the parent left this descriptor (its socket pair's other end) open across exec
        // for this process alone and named it in SERVER_FD_ENV; nothing else here owns it.
        let boot = unsafe { UnixStream::from_raw_fd(fd) };
        let place = Placement::from_env();
        let served = serve_here(&place, kind, case);
        boot.send_with_fd(&[0u8][..], served.peer.as_raw_fd())
            .unwrap();
        // Serve until the parent kills us, or goes.
        let _ = (&boot).read(&mut [0u8]);
        return true;
    }
    if let Ok(side) = env::var(STRACE_ENV) {
        let (kind, case) = parse(&side);
        let place = Placement::from_env();
        let pair = Pair::new(case);
        let served = serve(&place, kind, case);
        let t = timed(STRACE_PAIRS, || pair.run(&served));
        eprintln!("{STRACE_ENV}: {STRACE_PAIRS} map+unmap pairs of handler/{side} in {t:?}");
        return true;
    }
    false
}

pub fn handler(c: &mut Criterion) {
    let place = Placement::from_env();
    for case in Case::ALL {
        let pair = Pair::new(case);
        let mut g = c.benchmark_group("handler");
        let mut sides = Kind::ALL.map(|kind| side(&place, &pair, kind, case));
        for s in &mut sides {
            s.bench(&mut g);
        }
        g.finish();
        let [spawn, handle_one, vhost_epoll, vhost_blocking, floor, floor_epoll, lean, lean_epoll] =
            &mut sides;
        let (better, near_floor) = (Goal::TimeAtMost(0.90), Goal::TimeAtMost(1.05));
        // Each drive against the handler driven the same way, against the raw server that
        // waits the same way, and against the lean checker (that server with the crate's checks).
        paired("handler", spawn, vhost_epoll, ROUNDS, better);
        paired("handler", spawn, floor_epoll, ROUNDS, near_floor);
        paired("handler", vhost_epoll, floor_epoll, ROUNDS, Goal::Report);
        paired("handler", lean_epoll, vhost_epoll, ROUNDS, Goal::Report);
        paired("handler", spawn, lean_epoll, ROUNDS, Goal::Report);
        // On a plain thread the handler is only 11-14% above the floor (medians): no checking
        // server is at 0.90 of it in every case, and the floor only just (docs/BENCHMARKS.md,
        // section 9). The target there is the lean checker, the least any server making the
        // crate's checks costs.
        paired("handler", handle_one, vhost_blocking, ROUNDS, Goal::Report);
        paired("handler", handle_one, floor, ROUNDS, near_floor);
        paired("handler", vhost_blocking, floor, ROUNDS, Goal::Report);
        paired("handler", lean, vhost_blocking, ROUNDS, Goal::Report);
        paired("handler", handle_one, lean, ROUNDS, Goal::TimeAtMost(1.03));
    }
}
