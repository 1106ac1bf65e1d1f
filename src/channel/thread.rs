// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The channel on a thread of its own: [`ChannelThread`], its start hook, pause and stop.

use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{BackendChannel, Error, Result};
use crate::io::CopyGate;

/// How long [`ChannelThread::stop`] and dropping a [`ChannelThread`] wait for the thread.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`ChannelThread::pause`] waits for the thread to park.
pub const DEFAULT_PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The error a [`ThreadHook`] returns.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// A function run on the channel thread when it starts, before it reads anything from the
/// backend (see the module documentation): install a seccomp filter, set CPU affinity. It runs
/// once per thread, so a device runs it again for the channel of every session; `Err` stops
/// the thread and makes [`BackendChannel::spawn`] fail with [`Error::ThreadStart`].
#[derive(Clone)]
pub struct ThreadHook(Arc<dyn Fn() -> std::result::Result<(), HookError> + Send + Sync>);

impl ThreadHook {
    /// Wraps `hook`.
    pub fn new(
        hook: impl Fn() -> std::result::Result<(), HookError> + Send + Sync + 'static,
    ) -> Self {
        ThreadHook(Arc::new(hook))
    }

    fn run(&self) -> std::result::Result<(), HookError> {
        (self.0)()
    }
}

impl std::fmt::Debug for ThreadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadHook")
    }
}

impl BackendChannel {
    /// Serves the channel on a thread of its own until [`ChannelThread::stop`] (or the
    /// `ChannelThread` is dropped) or until the channel ends. The thread reads exactly as
    /// [`BackendChannel::handle_one`] does, so when the backend disconnects, its window lease
    /// is ended: every mapping is dropped at once and the thread ends.
    ///
    /// With a start hook
    /// ([`BackendChannelBuilder::on_thread_start`](super::BackendChannelBuilder::on_thread_start)),
    /// this waits for the hook to return on the new thread: [`Error::ThreadStart`] when it failed
    /// (the thread has ended and everything the channel held is closed).
    pub fn spawn(self) -> Result<ChannelThread> {
        self.spawn_with(|name, f| thread::Builder::new().name(name).spawn(f))
    }

    fn spawn_with(
        mut self,
        spawn: impl FnOnce(
            String,
            Box<dyn FnOnce() -> Result<()> + Send>,
        ) -> io::Result<JoinHandle<Result<()>>>,
    ) -> Result<ChannelThread> {
        self.ensure_blocking()?;
        // Every descriptor made here is close-on-exec from its creation, so a process the VMM
        // spawns inherits none: the eventfds by EFD_CLOEXEC, the epoll by EPOLL_CLOEXEC
        // (`Epoll::new`), the clones by F_DUPFD_CLOEXEC (`try_clone`).
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::Thread)?;
        let stop_thread = stop.try_clone().map_err(Error::Thread)?;
        let sock = self.sock.try_clone().map_err(Error::Thread)?;
        let epoll = Epoll::new().map_err(Error::Thread)?;
        let control = Arc::new(Control {
            state: Mutex::new(PauseState {
                wanted: self.thread.paused,
                ..PauseState::default()
            }),
            cv: Condvar::new(),
            attention: AtomicBool::new(self.thread.paused),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::Thread)?,
        });
        for (fd, data) in [
            (self.sock.as_raw_fd(), EV_SOCK),
            (stop_thread.as_raw_fd(), EV_STOP),
            (control.wake.as_raw_fd(), EV_WAKE),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, data),
                )
                .map_err(Error::Thread)?;
        }
        let name = self.name.clone();
        let thread_name = self
            .thread
            .name
            .clone()
            .unwrap_or_else(|| format!("{name}-backend"));
        let hook = self.thread.hook.take();
        let gate = self.gate.clone();
        let (done_tx, done) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel::<std::result::Result<(), HookError>>();
        let thread_control = control.clone();
        let handle = spawn(
            thread_name,
            Box::new(move || {
                // Dropped when the closure ends, however it ends: the stopper's signal, and the
                // pauser's.
                let _done = done_tx;
                let _ended = Ended(&thread_control);
                if let Some(hook) = hook {
                    if let Err(e) = hook.run() {
                        let _ = started_tx.send(Err(e));
                        return Ok(());
                    }
                }
                {
                    // A channel built paused is parked before `spawn` returns.
                    let mut s = thread_control.lock();
                    s.parked = s.wanted;
                }
                let _ = started_tx.send(Ok(()));
                self.serve(epoll, stop_thread, &thread_control)
            }),
        )
        .map_err(Error::Thread)?;
        match started.recv() {
            Ok(Ok(())) => Ok(ChannelThread {
                stop,
                sock,
                gate,
                handle: Some(handle),
                done,
                name,
                control,
            }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(Error::ThreadStart(e))
            }
            // The hook panicked.
            Err(_) => {
                let _ = handle.join();
                Err(Error::Panicked)
            }
        }
    }

    fn serve(mut self, epoll: Epoll, stop: EventFd, control: &Control) -> Result<()> {
        let mut events = [EpollEvent::default(); 3];
        loop {
            if control.park() {
                return Ok(());
            }
            // Messages that came in with the last one are served before any wait: they are no
            // longer in the socket, so no readiness would announce them. A pause or a stop is
            // seen between any two of them.
            if !self.reader.has_message() {
                let n = match epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::Recv(e)),
                };
                let ready = &events[..n];
                if ready.iter().any(|e| e.data() == EV_STOP) {
                    return Ok(());
                }
                if ready.iter().any(|e| e.data() == EV_WAKE) {
                    // A pause (or a withdrawn one): look again before reading anything.
                    let _ = control.wake.read();
                    continue;
                }
            }
            // One message a turn. The socket is watched level-triggered, and the reader reads
            // only when it holds no whole message, so whatever is left unread wakes the next
            // `epoll_wait` at once.
            if let Err(e) = self.handle_one() {
                if stop.read().is_ok() {
                    return Ok(());
                }
                return Err(e);
            }
        }
    }
}

/// Epoll tokens of the channel thread.
const EV_SOCK: u64 = 0;
const EV_STOP: u64 = 1;
const EV_WAKE: u64 = 2;

/// Where a pause stands; under [`Control::state`].
#[derive(Debug, Default)]
struct PauseState {
    /// A pause is asked for.
    wanted: bool,
    /// The thread is parked: it reads nothing until `wanted` is cleared.
    parked: bool,
    /// A stop is asked for: a parked thread ends.
    stopping: bool,
    /// The thread has ended.
    ended: bool,
}

/// What a [`ChannelThread`] and its thread share to pause it.
#[derive(Debug)]
struct Control {
    state: Mutex<PauseState>,
    cv: Condvar,
    /// `wanted || stopping`, stored under `state`'s lock each time either changes: the thread
    /// reads it between two messages and takes the lock only when it is set.
    attention: AtomicBool,
    /// Wakes the thread out of `epoll_wait` to look at `state`.
    wake: EventFd,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, PauseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `s.wanted || s.stopping` to the thread. Called under the lock, after changing
    /// either.
    fn update(&self, s: &PauseState) {
        self.attention
            .store(s.wanted || s.stopping, Ordering::Release);
    }

    /// On the thread, between two messages: parks while a pause is wanted. Returns whether the
    /// thread is to stop. Without a pause or a stop asked for, it takes no lock: a pause or stop
    /// asked for meanwhile is seen at the next message, or sooner through the eventfd that wakes
    /// `epoll_wait`, as it would be with the lock.
    fn park(&self) -> bool {
        if !self.attention.load(Ordering::Acquire) {
            return false;
        }
        let mut s = self.lock();
        if s.wanted && !s.stopping {
            s.parked = true;
            self.cv.notify_all();
            while s.wanted && !s.stopping {
                s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
            }
        }
        s.parked = false;
        s.stopping
    }
}

/// Marks the thread ended when dropped, however the thread ends.
struct Ended<'a>(&'a Control);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.ended = true;
        s.parked = false;
        self.0.cv.notify_all();
    }
}

/// A channel served on its own thread. Dropping it stops the thread and waits for it, as
/// [`ChannelThread::stop`] does.
#[derive(Debug)]
pub struct ChannelThread {
    stop: EventFd,
    sock: UnixStream,
    gate: Arc<CopyGate>,
    handle: Option<JoinHandle<Result<()>>>,
    done: mpsc::Receiver<()>,
    name: String,
    control: Arc<Control>,
}

impl ChannelThread {
    /// Pauses the thread, waiting at most [`DEFAULT_PAUSE_TIMEOUT`]. See
    /// [`ChannelThread::pause_timeout`].
    pub fn pause(&self) -> Result<()> {
        self.pause_timeout(DEFAULT_PAUSE_TIMEOUT)
    }

    /// Pauses the thread: returns once it is parked between two messages, so nothing is mapped,
    /// unmapped or copied until [`ChannelThread::resume`]; requests the backend sends meanwhile
    /// stay in the socket. A thread inside a request parks when the request is done; one that
    /// does not within `timeout` gets [`Error::PauseTimeout`], and the pause is withdrawn (the
    /// thread serves on as before). Pausing a paused thread, or one that has ended, returns `Ok`
    /// at once.
    pub fn pause_timeout(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut s = self.control.lock();
        s.wanted = true;
        self.control.update(&s);
        if !s.parked && !s.ended {
            // Wakes the thread out of epoll_wait; a thread inside a request parks when it
            // comes back to the loop. An eventfd write fails only if its counter would
            // overflow, which a pending wakeup cannot make happen.
            let _ = self.control.wake.write(1);
        }
        while !s.parked && !s.ended {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                s.wanted = false;
                self.control.update(&s);
                drop(s);
                log::warn!(
                    "{}: backend channel thread busy for {timeout:?}: not paused",
                    self.name
                );
                return Err(Error::PauseTimeout(timeout));
            }
            s = self
                .control
                .cv
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Resumes a paused thread: it serves the requests that came meanwhile, in order. Resuming
    /// a thread that is not paused does nothing.
    pub fn resume(&self) {
        let mut s = self.control.lock();
        s.wanted = false;
        self.control.update(&s);
        self.control.cv.notify_all();
    }

    /// Whether the thread is parked by [`ChannelThread::pause`] (or
    /// [`BackendChannelBuilder::start_paused`](super::BackendChannelBuilder::start_paused)).
    pub fn is_paused(&self) -> bool {
        let s = self.control.lock();
        s.parked && s.wanted
    }

    /// Whether the thread has ended (the backend disconnected).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Stops the thread and joins it, waiting at most [`DEFAULT_STOP_TIMEOUT`]. See
    /// [`ChannelThread::stop_timeout`].
    pub fn stop(self) -> Result<()> {
        self.stop_timeout(DEFAULT_STOP_TIMEOUT)
    }

    /// Stops the thread and joins it, waiting at most `timeout`. The socket is shut down, so a
    /// thread in the middle of a message ends too; a thread inside a request (an FS_IO on a file
    /// that stalls) ends when the request does. Returns `Ok` when the thread stopped on request or
    /// had ended cleanly, the error that ended it (for example [`Error::Disconnected`]), or
    /// [`Error::StopTimeout`]: the thread is then left to end by itself, and
    /// [`DaxWindow::reset`](crate::DaxWindow::reset) keeps it from mapping anything after.
    pub fn stop_timeout(mut self, timeout: Duration) -> Result<()> {
        self.signal_stop();
        self.join_within(timeout)
    }

    /// Waits for the thread to end by itself (the backend disconnecting) and returns why.
    pub fn join(mut self) -> Result<()> {
        match self.handle.take() {
            Some(h) => h.join().map_err(|_| Error::Panicked)?,
            None => Ok(()),
        }
    }

    fn signal_stop(&self) {
        {
            let mut s = self.control.lock();
            s.stopping = true;
            self.control.update(&s);
            self.control.cv.notify_all();
        }
        let _ = self.stop.write(1);
        let _ = self.sock.shutdown(Shutdown::Both);
        // Waits for a memory copy in progress (bounded), never for a file syscall: whatever the
        // thread still does once it is told to stop stores nothing into memory any more.
        self.gate.end();
    }

    fn join_within(&mut self, timeout: Duration) -> Result<()> {
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        match self.done.recv_timeout(timeout) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                log::warn!(
                    "{}: backend channel thread still busy after {timeout:?}; left to end by itself",
                    self.name
                );
                Err(Error::StopTimeout(timeout))
            }
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                handle.join().map_err(|_| Error::Panicked)?
            }
        }
    }
}

impl Drop for ChannelThread {
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.signal_stop();
            let _ = self.join_within(DEFAULT_STOP_TIMEOUT);
        }
    }
}
