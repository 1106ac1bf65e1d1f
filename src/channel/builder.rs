// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`BackendChannelBuilder`]: the channel's window, dialect, IO space and thread.

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use super::reader::Reader;
use super::{BackendChannel, ThreadHook};
use crate::io::IoSpace;
use crate::metrics::FsMetrics;
use crate::protocol::Dialect;
use crate::window::{DaxWindow, Policy};

/// Builder for [`BackendChannel`].
#[derive(Debug)]
pub struct BackendChannelBuilder {
    sock: UnixStream,
    window: Option<Arc<DaxWindow>>,
    dialect: Dialect,
    replace_exact: bool,
    io: Option<Arc<IoSpace>>,
    name: String,
    thread: ThreadConfig,
}

/// How [`BackendChannel::spawn`] starts its thread.
#[derive(Clone, Debug, Default)]
pub(super) struct ThreadConfig {
    pub(super) name: Option<String>,
    pub(super) hook: Option<ThreadHook>,
    pub(super) paused: bool,
}

impl BackendChannelBuilder {
    /// The DAX window requests map into. Without one, every map is refused with `ENXIO` and a
    /// legacy unmap-all (which virtiofsd sends at mount even without DAX) succeeds.
    pub fn window(mut self, window: Arc<DaxWindow>) -> Self {
        self.window = Some(window);
        self
    }

    /// The dialect in force: [`Dialect::Standard`] when SHMEM was negotiated, or
    /// [`Dialect::Legacy`] when the VMM configures it. Default: standard.
    pub fn dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// Standard dialect only: let a map of exactly the range of one live mapping replace it (the
    /// Linux guest's read-only to writable upgrade). Default: off, as the specification says.
    pub fn replace_exact(mut self, enable: bool) -> Self {
        self.replace_exact = enable;
        self
    }

    /// The address space FS_IO and MEM_READ / MEM_WRITE serve. Default: an empty one (every IO
    /// refused with `EFAULT`).
    pub fn io_space(mut self, io: Arc<IoSpace>) -> Self {
        self.io = Some(io);
        self
    }

    /// Name used as the log prefix (the device tag).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Name of the thread [`BackendChannel::spawn`] starts (Linux keeps its first 15 bytes).
    /// Default: the log prefix ([`BackendChannelBuilder::name`]) and `-backend`.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread.name = Some(name.into());
        self
    }

    /// A hook [`BackendChannel::spawn`] runs on the new thread before it serves anything; spawn
    /// returns its outcome (see the module documentation). Default: none.
    pub fn on_thread_start(mut self, hook: ThreadHook) -> Self {
        self.thread.hook = Some(hook);
        self
    }

    /// Whether [`BackendChannel::spawn`] starts the thread paused, as if
    /// [`ChannelThread::pause`](super::ChannelThread::pause) had been called before its first read:
    /// it serves nothing until [`ChannelThread::resume`](super::ChannelThread::resume). Default:
    /// false.
    pub fn start_paused(mut self, paused: bool) -> Self {
        self.thread.paused = paused;
        self
    }

    /// Builds the channel. It takes a lease on the window's current generation
    /// ([`DaxWindow::lease`]).
    pub fn build(self) -> BackendChannel {
        let policy = match (self.dialect, self.replace_exact) {
            (Dialect::Legacy, _) => Policy::LEGACY,
            (Dialect::Standard, false) => Policy::STANDARD,
            (Dialect::Standard, true) => Policy::STANDARD_REPLACE,
        };
        let metrics = match &self.window {
            Some(w) => w.metrics().clone(),
            None => Arc::new(FsMetrics::new()),
        };
        BackendChannel {
            sock: self.sock,
            window: self.window.as_ref().map(DaxWindow::lease),
            dialect: self.dialect,
            policy,
            io: self.io.unwrap_or_default(),
            metrics,
            name: self.name,
            reader: Reader::default(),
            gate: Arc::default(),
            mode_set: false,
            thread: self.thread,
        }
    }
}

impl BackendChannel {
    /// Starts building a channel over `sock`, the frontend's end of the socket pair.
    pub fn builder(sock: UnixStream) -> BackendChannelBuilder {
        BackendChannelBuilder {
            sock,
            window: None,
            dialect: Dialect::Standard,
            replace_exact: false,
            io: None,
            name: String::from("virtio-fs"),
            thread: ThreadConfig::default(),
        }
    }
}
