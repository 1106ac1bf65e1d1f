// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`FsBuilder`]: the device's configuration, checked when it is built.

use std::sync::Arc;
use std::time::Duration;

use super::{Error, Fs, Result, MAX_QUEUE_SIZE, MAX_REQUEST_QUEUES};
use crate::channel::ThreadHook;
use crate::frontend::{DaxFallback, SessionConfig};
use crate::io::IoSpace;
use crate::memory::MemoryManager;
use crate::metrics::FsMetrics;
use crate::protocol::Dialect;
use crate::transport::VirtioFsConfig;
use crate::window::{self, DaxWindow};

/// Builder for [`Fs`].
#[derive(Debug)]
pub struct FsBuilder {
    tag: String,
    request_queues: u32,
    queue_size: u16,
    socket_path: Option<std::path::PathBuf>,
    window_size: u64,
    window: Option<Arc<DaxWindow>>,
    dialect: Dialect,
    replace_exact: bool,
    dax_fallback: DaxFallback,
    check_shmem_config: bool,
    memory: Option<Arc<dyn MemoryManager>>,
    io: Option<Arc<IoSpace>>,
    connect_attempts: u32,
    connect_interval: Duration,
    shutdown_timeout: Duration,
    max_mappings: usize,
    granule: Option<u64>,
    channel_thread_name: Option<String>,
    channel_thread_hook: Option<ThreadHook>,
}

impl std::fmt::Debug for dyn MemoryManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryManager")
    }
}

impl FsBuilder {
    /// Request queues (the high-priority queue comes on top). Default 1.
    pub fn request_queues(mut self, n: u32) -> Self {
        self.request_queues = n;
        self
    }
    /// Size of every queue. Default 1024.
    pub fn queue_size(mut self, size: u16) -> Self {
        self.queue_size = size;
        self
    }
    /// The backend's vhost-user socket.
    pub fn socket_path(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.socket_path = Some(path.into());
        self
    }
    /// DAX window size: 0 for none, else a power of two of at least 2 MiB.
    pub fn window_size(mut self, size: u64) -> Self {
        self.window_size = size;
        self
    }
    /// The DAX window, built by the VMM: a region its device manager reserved
    /// ([`DaxWindow::from_reservation`]), or a window with settings of its own
    /// ([`DaxWindow::builder`]). It replaces [`FsBuilder::window_size`],
    /// [`FsBuilder::max_mappings`] and [`FsBuilder::map_granule`] (the window's own apply), and
    /// the device counts into the window's metrics ([`DaxWindow::metrics`]).
    ///
    /// A window serves one device: the device ends the window's generation (drops every mapping)
    /// whenever a session of its own ends. Keep other references only to read it (its host
    /// address, its mappings); the drop order is the device's ([`Fs`] unregisters the window from
    /// the [`MemoryManager`] when dropped, before its reference to the window goes).
    pub fn window(mut self, window: Arc<DaxWindow>) -> Self {
        self.window = Some(window);
        self
    }
    /// Backend-channel dialect. Default standard.
    pub fn dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }
    /// Standard dialect: allow exact-range replace (the Linux guest's writable upgrade).
    pub fn replace_exact(mut self, enable: bool) -> Self {
        self.replace_exact = enable;
        self
    }
    /// What to do when the backend cannot serve the window. Default [`DaxFallback::Fail`]:
    /// [`Fs::connect`] (or activation, without it) fails. [`DaxFallback::Disable`]: `connect`
    /// withdraws the window (see [`Fs::window_offered`]).
    pub fn dax_fallback(mut self, fallback: DaxFallback) -> Self {
        self.dax_fallback = fallback;
        self
    }
    /// Standard dialect: at every session, ask the backend for the sizes of its shared memory
    /// regions (`GET_SHMEM_CONFIG`) and check region 0 against the window. A backend that
    /// describes no region passes; one whose region 0 has another size is a backend that cannot
    /// serve the window ([`frontend::Error::ShmemSizeMismatch`](crate::frontend::Error), or a
    /// session without DAX under [`DaxFallback::Disable`]). Default off: the specification
    /// requires every backend that offers `SHMEM` to answer, but one built on
    /// vhost-user-backend without a `get_shmem_config` (its default is an error) or on a vhost
    /// older than 0.18 (which checks `SHMEM` at bit 21) ends its connection instead.
    /// virtiofsd with `peers/virtiofsd-dax` answers with its `--dax-window-size`.
    pub fn check_shmem_config(mut self, enable: bool) -> Self {
        self.check_shmem_config = enable;
        self
    }
    /// The VMM's memory manager, which registers the window as guest memory.
    pub fn memory_manager(mut self, memory: Arc<dyn MemoryManager>) -> Self {
        self.memory = Some(memory);
        self
    }
    /// The VM-wide IO space for FS_IO (shared by every virtio-fs device; the device registers
    /// its window in it where it is placed). Its backend reaches guest RAM and this device's
    /// window, and the other devices' windows only if the space opted in
    /// ([`IoSpace::cross_device`]). Default: a private one over the guest memory given at
    /// activation, with this device's window only.
    pub fn io_space(mut self, io: Arc<IoSpace>) -> Self {
        self.io = Some(io);
        self
    }
    /// Connection attempts and the pause between them. Default 50 × 100 ms.
    pub fn connect_retry(mut self, attempts: u32, interval: Duration) -> Self {
        self.connect_attempts = attempts;
        self.connect_interval = interval;
        self
    }

    /// Bound on each step of ending a session (reset, a lost backend, reconnect, drop): joining
    /// the backend channel thread, and the backend's answer to `RESET_DEVICE`. Default 2 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }
    /// Most live mappings in the window ([`crate::window::DaxWindowBuilder::max_mappings`]).
    /// Default [`window::DEFAULT_MAX_MAPPINGS`].
    pub fn max_mappings(mut self, max: usize) -> Self {
        self.max_mappings = max;
        self
    }
    /// Smallest map unit in the window ([`crate::window::DaxWindowBuilder::granule`]). Default
    /// the page size; `2 << 20` fits a device served to Linux guests only.
    pub fn map_granule(mut self, granule: u64) -> Self {
        self.granule = Some(granule);
        self
    }

    /// Name of the backend channel thread of every session (Linux keeps its first 15 bytes).
    /// Default: the log prefix `virtio-fs(<tag>)` and `-backend`, cut to 15 bytes by Linux.
    pub fn channel_thread_name(mut self, name: impl Into<String>) -> Self {
        self.channel_thread_name = Some(name.into());
        self
    }

    /// A hook run on the backend channel thread of every session before it serves anything:
    /// install the VMM's seccomp filter for it ([`crate::channel::SYSCALLS`], or with feature
    /// `seccompiler` `crate::channel::seccomp_rules`), set its CPU affinity. When it fails,
    /// the session does not start: activation (or reconnect) fails with
    /// [`crate::channel::Error::ThreadStart`] inside [`crate::frontend::Error::ChannelThread`].
    /// Default: none.
    pub fn on_channel_thread(mut self, hook: ThreadHook) -> Self {
        self.channel_thread_hook = Some(hook);
        self
    }

    /// Validates the configuration, reserves the window and builds the device. Does not connect.
    pub fn build(self) -> Result<Fs> {
        let config = VirtioFsConfig::new(&self.tag, self.request_queues).map_err(Error::Config)?;
        if self.request_queues > MAX_REQUEST_QUEUES {
            return Err(Error::TooManyQueues(self.request_queues));
        }
        if self.queue_size == 0
            || self.queue_size > MAX_QUEUE_SIZE
            || !self.queue_size.is_power_of_two()
        {
            return Err(Error::QueueSize(self.queue_size));
        }
        let socket_path = self.socket_path.ok_or(Error::NoSocket)?;
        let metrics = match &self.window {
            Some(w) => w.metrics().clone(),
            None => Arc::new(FsMetrics::new()),
        };
        let window = match (self.window, self.window_size) {
            (Some(w), _) => Some(w),
            (None, 0) => None,
            (None, size) => {
                let mut b = DaxWindow::builder(size)
                    .metrics(metrics.clone())
                    .max_mappings(self.max_mappings);
                if let Some(g) = self.granule {
                    b = b.granule(g);
                }
                Some(Arc::new(b.build().map_err(Error::Window)?))
            }
        };
        let queues = self.request_queues as usize + 1;
        Ok(Fs {
            session_cfg: SessionConfig {
                socket_path,
                connect_attempts: self.connect_attempts,
                connect_interval: self.connect_interval,
                dialect: self.dialect,
                dax: window.is_some(),
                dax_fallback: self.dax_fallback,
                check_shmem_config: self.check_shmem_config,
                replace_exact: self.replace_exact,
                shutdown_timeout: self.shutdown_timeout,
                name: format!("virtio-fs({})", self.tag),
                channel_thread_name: self.channel_thread_name,
                channel_thread_hook: self.channel_thread_hook,
                channel_start_paused: false,
            },
            config,
            queue_sizes: vec![self.queue_size; queues],
            window,
            window_gpa: None,
            memory: self.memory,
            io: self.io,
            metrics,
            conn: None,
            session: None,
            active: None,
            acked_features: 0,
            withdrawn: None,
            window_seen: false,
        })
    }
}

impl Fs {
    /// Starts building a device with `tag` (1 to 36 bytes, the name the guest mounts).
    pub fn builder(tag: impl Into<String>) -> FsBuilder {
        FsBuilder {
            tag: tag.into(),
            request_queues: 1,
            queue_size: 1024,
            socket_path: None,
            window_size: 0,
            window: None,
            dialect: Dialect::Standard,
            replace_exact: false,
            dax_fallback: DaxFallback::Fail,
            check_shmem_config: false,
            memory: None,
            io: None,
            connect_attempts: 50,
            connect_interval: Duration::from_millis(100),
            shutdown_timeout: crate::channel::DEFAULT_STOP_TIMEOUT,
            max_mappings: window::DEFAULT_MAX_MAPPINGS,
            granule: None,
            channel_thread_name: None,
            channel_thread_hook: None,
        }
    }
}
