// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The crate's [`Fs`] behind cloud-hypervisor's device trait.
//!
//! `mod cloud_hypervisor` below is a local copy of the shapes cloud-hypervisor's device manager
//! and transports use (its `virtio-devices` crate, `vm-device`'s `UserspaceMapping`,
//! `vm-migration`'s `Pausable`), so that this example builds without cloud-hypervisor.
//! [`VirtioFsDax`] implements that trait over [`Fs`] in a few lines per method.
//!
//! `main` plays cloud-hypervisor's device manager and transport: it reserves the cache region
//! the way cloud-hypervisor does (an anonymous `PROT_NONE` `MmapRegion<AtomicBitmap>`, a memory
//! slot over it), hands it to the device, reads the device through the trait, activates it with
//! `GuestMemoryMmap<AtomicBitmap>` against the crate's in-process vhost-user backend (feature
//! `test-utils`), lets the backend map a file, pauses and resumes, resets, moves the region, and
//! drops in cloud-hypervisor's order.
//!
//! ```text
//! cargo run --features test-utils --example cloud_hypervisor
//! ```

use std::collections::HashMap;
use std::num::Wrapping;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context, Result};
use vhost::vhost_user::message::VhostUserMMap;
use vhost::vhost_user::VhostUserFrontendReqHandler;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryAtomic, VolatileMemory};
use vmm_sys_util::eventfd::EventFd;

use virtio_fs_dax::device::{self, ActivateQueue};
use virtio_fs_dax::test_utils::{TestBackendConfig, TestBackendServer};
use virtio_fs_dax::{DaxWindow, Fs};

use cloud_hypervisor::{
    ActivateError, ActivateResult, ActivationContext, GuestMemoryMmap, MigratableError, MmapRegion,
    Pausable, Snapshot, Snapshottable, UserspaceMapping, VirtioDevice, VirtioInterrupt,
    VirtioInterruptType, VirtioSharedMemory, VirtioSharedMemoryList,
};

/// The shapes of cloud-hypervisor's device interfaces, as its `virtio-devices/src/device.rs` and
/// `virtio-devices/src/lib.rs` have them at commit 0242131e58ff (the `ActivationContext` form of
/// `activate`), with `vm-device`'s `UserspaceMapping` and `vm-migration`'s `Pausable` and
/// `Snapshottable`. Methods with defaults that a virtio-fs device leaves alone
/// (`interrupt_source_mutable`, `add_memory_region`, `read_config_from_slice`,
/// `set_access_platform`, `access_platform`) and the enum variants of other devices are left
/// out; `Snapshot` carries bytes where cloud-hypervisor's carries serde data.
#[allow(dead_code)]
mod cloud_hypervisor {
    use std::collections::HashMap;
    use std::io;
    use std::num::Wrapping;
    use std::sync::atomic::AtomicU8;
    use std::sync::Arc;

    use virtio_queue::Queue;
    use vm_memory::bitmap::AtomicBitmap;
    use vm_memory::{GuestAddress, GuestMemoryAtomic};
    use vmm_sys_util::eventfd::EventFd;

    /// `virtio-devices`' aliases: guest memory and regions track dirty pages.
    pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;
    /// See [`GuestMemoryMmap`].
    pub type MmapRegion = vm_memory::MmapRegion<AtomicBitmap>;

    /// `hypervisor::Vm`, reduced to a name.
    pub mod hypervisor {
        /// A VM of the hypervisor.
        pub trait Vm: Send + Sync {}
    }

    pub enum VirtioInterruptType {
        Config,
        Queue(u16),
    }

    pub trait VirtioInterrupt: Send + Sync {
        fn trigger(&self, int_type: VirtioInterruptType) -> io::Result<()>;
        fn notifier(&self, _int_type: VirtioInterruptType) -> Option<EventFd> {
            None
        }
        fn set_notifier(
            &self,
            int_type: u32,
            notifier: Option<EventFd>,
            vm: &dyn hypervisor::Vm,
        ) -> io::Result<()>;
    }

    #[derive(Clone)]
    pub struct VirtioSharedMemory {
        pub offset: u64,
        pub len: u64,
    }

    #[derive(Clone)]
    pub struct VirtioSharedMemoryList {
        pub mem_slot: u32,
        pub addr: GuestAddress,
        pub mapping: Arc<MmapRegion>,
        pub region_list: Vec<VirtioSharedMemory>,
    }

    /// `vm_device::UserspaceMapping`.
    #[derive(Clone)]
    pub struct UserspaceMapping {
        pub mem_slot: u32,
        pub addr: GuestAddress,
        pub mapping: Arc<MmapRegion>,
        pub mergeable: bool,
    }

    pub struct ActivationContext {
        pub mem: GuestMemoryAtomic<GuestMemoryMmap>,
        pub interrupt_cb: Arc<dyn VirtioInterrupt>,
        pub queues: Vec<(usize, Queue, EventFd)>,
        pub device_status: Arc<AtomicU8>,
    }

    #[derive(Debug, thiserror::Error)]
    pub enum ActivateError {
        #[error("Failed to activate virtio device")]
        BadActivate,
    }

    pub type ActivateResult = std::result::Result<(), ActivateError>;

    #[derive(Debug, thiserror::Error)]
    pub enum Error {
        #[error("Failed to set shared memory region")]
        SetShmRegionsNotSupported,
    }

    #[derive(Debug, thiserror::Error)]
    pub enum MigratableError {
        #[error("Failed to pause migratable component")]
        Pause(#[source] anyhow::Error),
        #[error("Failed to resume migratable component")]
        Resume(#[source] anyhow::Error),
        #[error("Failed to snapshot migratable component")]
        Snapshot(#[source] anyhow::Error),
    }

    pub trait Pausable {
        fn pause(&mut self) -> std::result::Result<(), MigratableError> {
            Ok(())
        }
        fn resume(&mut self) -> std::result::Result<(), MigratableError> {
            Ok(())
        }
    }

    #[derive(Default)]
    pub struct Snapshot {
        pub data: Vec<u8>,
    }

    pub trait Snapshottable: Pausable {
        fn id(&self) -> String;
        fn snapshot(&mut self) -> std::result::Result<Snapshot, MigratableError> {
            Ok(Snapshot::default())
        }
    }

    pub trait VirtioDevice: Send {
        fn device_type(&self) -> u32;
        fn queue_max_sizes(&self) -> &[u16];
        fn features(&self) -> u64 {
            0
        }
        fn ack_features(&mut self, value: u64) {
            let _ = value;
        }
        fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(&mut self, context: ActivationContext) -> ActivateResult;
        fn reset(&mut self) {}
        fn get_shm_regions(&self) -> Option<VirtioSharedMemoryList> {
            None
        }
        fn set_shm_regions(
            &mut self,
            _shm_regions: VirtioSharedMemoryList,
        ) -> std::result::Result<(), Error> {
            std::unimplemented!()
        }
        fn shutdown(&mut self) {}
        fn userspace_mappings(&self) -> Vec<UserspaceMapping> {
            Vec::new()
        }
        fn counters(&self) -> Option<HashMap<&'static str, Wrapping<u64>>> {
            None
        }
    }
}

/// The crate's device as cloud-hypervisor's: the device, its id, and the cache region the
/// device manager reserved and placed (cloud-hypervisor's memory slot and `Arc` of the region,
/// which its BAR moves and userspace mappings need back).
struct VirtioFsDax {
    id: String,
    fs: Fs,
    cache: Option<VirtioSharedMemoryList>,
}

impl VirtioFsDax {
    /// What `virtio_devices::vhost_user::Fs::new` takes, less seccomp and restore: the window is
    /// the region the device manager reserved, placed where the device manager put it. Connects,
    /// as cloud-hypervisor's constructor does, so the features reflect the backend.
    fn new(
        id: &str,
        socket: &std::path::Path,
        tag: &str,
        request_queues: u32,
        queue_size: u16,
        cache: Option<VirtioSharedMemoryList>,
    ) -> std::result::Result<Self, device::Error> {
        let mut builder = Fs::builder(tag)
            .socket_path(socket)
            .request_queues(request_queues)
            .queue_size(queue_size)
            // The Linux guest upgrades a read-only range to writable by mapping it again.
            .replace_exact(true);
        if let Some(c) = &cache {
            let window =
                DaxWindow::from_reservation(c.mapping.clone()).map_err(device::Error::Window)?;
            builder = builder.window(Arc::new(window));
        }
        let mut fs = builder.build()?;
        fs.connect()?;
        if let Some(c) = &cache {
            fs.set_shm_base(0, c.addr.0)?;
        }
        Ok(VirtioFsDax {
            id: id.to_owned(),
            fs,
            cache,
        })
    }
}

impl VirtioDevice for VirtioFsDax {
    fn device_type(&self) -> u32 {
        self.fs.device_type()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        self.fs.queue_max_sizes()
    }

    fn features(&self) -> u64 {
        self.fs.features()
    }

    fn ack_features(&mut self, value: u64) {
        self.fs.ack_features(value)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.fs.read_config(offset, data)
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.fs.write_config(offset, data)
    }

    fn activate(&mut self, context: ActivationContext) -> ActivateResult {
        let irq = context.interrupt_cb;
        // The backend interrupts the guest itself: each queue's call eventfd is the irqfd the
        // transport's interrupt hands out, as cloud-hypervisor's vhost-user devices use it.
        let queues = context
            .queues
            .into_iter()
            .map(|(index, queue, kick)| {
                let call = irq
                    .notifier(VirtioInterruptType::Queue(index as u16))
                    .ok_or(ActivateError::BadActivate)?;
                Ok(ActivateQueue {
                    index,
                    queue,
                    kick,
                    call,
                })
            })
            .collect::<std::result::Result<Vec<_>, ActivateError>>()?;
        let interrupt = Arc::new(move |t: device::VirtioInterruptType| {
            irq.trigger(match t {
                device::VirtioInterruptType::Config => VirtioInterruptType::Config,
                device::VirtioInterruptType::Queue(q) => VirtioInterruptType::Queue(q),
            })
        });
        self.fs
            .activate(context.mem, interrupt, queues)
            .map_err(|e| {
                log::error!("{}: {:#}", self.id, anyhow::Error::new(e));
                ActivateError::BadActivate
            })
    }

    fn reset(&mut self) {
        self.fs.reset();
    }

    fn get_shm_regions(&self) -> Option<VirtioSharedMemoryList> {
        self.cache.clone()
    }

    fn set_shm_regions(
        &mut self,
        shm_regions: VirtioSharedMemoryList,
    ) -> std::result::Result<(), cloud_hypervisor::Error> {
        // A BAR move: same region, new guest address and memory slot.
        match &self.cache {
            Some(c) if Arc::ptr_eq(&c.mapping, &shm_regions.mapping) => {}
            _ => return Err(cloud_hypervisor::Error::SetShmRegionsNotSupported),
        }
        self.fs
            .set_shm_base(0, shm_regions.addr.0)
            .map_err(|_| cloud_hypervisor::Error::SetShmRegionsNotSupported)?;
        self.cache = Some(shm_regions);
        Ok(())
    }

    fn shutdown(&mut self) {
        self.fs.reset();
    }

    fn userspace_mappings(&self) -> Vec<UserspaceMapping> {
        self.cache
            .iter()
            .map(|c| UserspaceMapping {
                mem_slot: c.mem_slot,
                addr: c.addr,
                mapping: c.mapping.clone(),
                mergeable: false,
            })
            .collect()
    }

    fn counters(&self) -> Option<HashMap<&'static str, Wrapping<u64>>> {
        // Stable names, exported as they are.
        Some(
            self.fs
                .counters()
                .into_iter()
                .map(|(name, value)| (name, Wrapping(value)))
                .collect(),
        )
    }
}

// Before a snapshot or a migration: no map is served until resume (requests wait in the socket).
impl Pausable for VirtioFsDax {
    fn pause(&mut self) -> std::result::Result<(), MigratableError> {
        self.fs
            .pause()
            .map_err(|e| MigratableError::Pause(e.into()))
    }

    fn resume(&mut self) -> std::result::Result<(), MigratableError> {
        self.fs.resume();
        Ok(())
    }
}

impl Snapshottable for VirtioFsDax {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn snapshot(&mut self) -> std::result::Result<Snapshot, MigratableError> {
        let snap = self
            .fs
            .snapshot()
            .map_err(|e| MigratableError::Snapshot(e.into()))?;
        Ok(Snapshot {
            data: snap.to_bytes(),
        })
    }
}

/// The transport's interrupt: one irqfd per queue and one for config changes.
struct Msix {
    vectors: Vec<EventFd>,
}

impl VirtioInterrupt for Msix {
    fn trigger(&self, int_type: VirtioInterruptType) -> std::io::Result<()> {
        let i = match int_type {
            VirtioInterruptType::Config => 0,
            VirtioInterruptType::Queue(q) => usize::from(q) + 1,
        };
        self.vectors.get(i).map_or(Ok(()), |e| e.write(1))
    }
    fn notifier(&self, int_type: VirtioInterruptType) -> Option<EventFd> {
        let i = match int_type {
            VirtioInterruptType::Config => 0,
            VirtioInterruptType::Queue(q) => usize::from(q) + 1,
        };
        self.vectors.get(i)?.try_clone().ok()
    }
    fn set_notifier(
        &self,
        _: u32,
        _: Option<EventFd>,
        _: &dyn cloud_hypervisor::hypervisor::Vm,
    ) -> std::io::Result<()> {
        Ok(())
    }
}

/// The memory manager's slots, as `create_userspace_mapping` / `remove_userspace_mapping` keep
/// them: (slot, guest address, host address, size).
#[derive(Default)]
struct MemoryManager {
    slots: Mutex<Vec<(u32, u64, u64, u64)>>,
}

impl MemoryManager {
    fn create_userspace_mapping(&self, gpa: u64, size: u64, host: u64) -> u32 {
        let mut slots = self.slots.lock().unwrap();
        let slot = (1..).find(|s| slots.iter().all(|x| x.0 != *s)).unwrap();
        slots.push((slot, gpa, host, size));
        println!("memory manager: slot {slot} = guest {gpa:#x} -> host {host:#x}, {size:#x} bytes");
        slot
    }
    fn remove_userspace_mapping(&self, slot: u32) {
        self.slots.lock().unwrap().retain(|s| s.0 != slot);
        println!("memory manager: slot {slot} removed");
    }
}

const MIB: u64 = 1 << 20;
const CACHE_SIZE: u64 = 64 * MIB;
const QUEUE_SIZE: u16 = 256;

fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("virtiofsd.sock");
    let backend = TestBackendServer::start(&socket, TestBackendConfig::default())?;
    let memory_manager = MemoryManager::default();

    // The device manager reserves the cache and gives it a slot at a 2 MiB aligned address.
    let region: Arc<MmapRegion> = Arc::new(MmapRegion::build(
        None,
        CACHE_SIZE as usize,
        libc::PROT_NONE,
        libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
    )?);
    let cache_base = 1 << 34;
    let mem_slot =
        memory_manager.create_userspace_mapping(cache_base, CACHE_SIZE, region.as_ptr() as u64);
    let cache = VirtioSharedMemoryList {
        mem_slot,
        addr: GuestAddress(cache_base),
        mapping: region.clone(),
        region_list: vec![VirtioSharedMemory {
            offset: 0,
            len: CACHE_SIZE,
        }],
    };
    let mut dev = VirtioFsDax::new("_fs0", &socket, "myfs", 1, QUEUE_SIZE, Some(cache))?;

    // The transport reads the device through the trait.
    let mut config = [0u8; 40];
    dev.read_config(0, &mut config);
    let tag = String::from_utf8_lossy(&config[..36])
        .trim_end_matches('\0')
        .to_owned();
    let queues = u32::from_le_bytes(config[36..].try_into()?);
    println!(
        "device type {}, queues {:?}, features {:#x}, tag {tag:?}, request queues {queues}",
        dev.device_type(),
        dev.queue_max_sizes(),
        dev.features()
    );
    let shm = dev.get_shm_regions().context("no cache region")?;
    println!(
        "shared memory: slot {}, guest {:#x}, {:#x} bytes at host {:p}",
        shm.mem_slot,
        shm.addr.0,
        shm.region_list[0].len,
        shm.mapping.as_ptr()
    );
    ensure!(dev.userspace_mappings().len() == 1);

    // The driver negotiates and sets DRIVER_OK: guest RAM (file backed, dirty tracked), queues
    // with their ioeventfds, the interrupt with one irqfd per vector.
    dev.ack_features(dev.features());
    let ram = tempfile::tempfile()?;
    ram.set_len(64 * MIB)?;
    let mem = GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        (64 * MIB) as usize,
        Some(FileOffset::new(ram, 0)),
    )])?;
    let queues = (0..dev.queue_max_sizes().len())
        .map(|i| -> Result<_> {
            let mut q = Queue::new(QUEUE_SIZE)?;
            let base = MIB * (i as u64 + 1);
            q.set_desc_table_address(Some(base as u32), Some(0));
            q.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
            q.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
            q.set_ready(true);
            Ok((i, q, EventFd::new(libc::EFD_NONBLOCK)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let vectors = (0..=queues.len())
        .map(|_| EventFd::new(libc::EFD_NONBLOCK))
        .collect::<std::io::Result<_>>()?;
    dev.activate(ActivationContext {
        mem: GuestMemoryAtomic::new(mem),
        interrupt_cb: Arc::new(Msix { vectors }),
        queues,
        device_status: Arc::new(AtomicU8::new(0)),
    })?;
    ensure!(
        backend.wait_for(|s| s.backend_channel, std::time::Duration::from_secs(5)),
        "no backend channel"
    );

    // The guest sends FUSE_SETUPMAPPING; the backend maps a file into the cache.
    let file = tempfile::tempfile()?;
    file.set_len(2 * MIB)?;
    std::os::unix::fs::FileExt::write_all_at(&file, b"hello from the page cache", 0)?;
    let map = VhostUserMMap {
        shmid: 0,
        padding: [0; 7],
        fd_offset: 0,
        shm_offset: 4 * MIB,
        len: 2 * MIB,
        flags: 1,
    };
    let channel = backend.backend_channel().context("no backend channel")?;
    channel.shmem_map(&map, &file)?;
    // The bytes are in the device manager's own region, where the guest sees them.
    let mut seen = [0u8; 25];
    region
        .get_slice(4 * MIB as usize, seen.len())?
        .read_slice(&mut seen, 0)?;
    println!("cache at +4 MiB reads {:?}", String::from_utf8_lossy(&seen));
    ensure!(&seen == b"hello from the page cache");
    print_counters(&dev);

    // Pause, as before a snapshot: a map the backend sends meanwhile waits in the socket, and is
    // served at resume.
    dev.pause()?;
    let late = std::thread::spawn(move || {
        let map = VhostUserMMap {
            shm_offset: 8 * MIB,
            ..map
        };
        channel.shmem_map(&map, &file)
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    ensure!(
        dev.counters().unwrap()["live_mappings"].0 == 1,
        "mapped while paused"
    );
    println!("paused: the backend's second map waits");
    dev.resume()?;
    late.join().expect("backend thread")?;
    ensure!(dev.counters().unwrap()["live_mappings"].0 == 2);
    println!("resumed: served");

    // Device reset: the mappings go, the region stays reserved and in its slot.
    dev.reset();
    print_counters(&dev);
    ensure!(dev.counters().unwrap()["live_mappings"].0 == 0);

    // A BAR move: the memory manager moves the slot, the device follows.
    let mut moved = dev.get_shm_regions().context("no cache region")?;
    memory_manager.remove_userspace_mapping(moved.mem_slot);
    moved.addr = GuestAddress(cache_base + (1 << 30));
    moved.mem_slot =
        memory_manager.create_userspace_mapping(moved.addr.0, CACHE_SIZE, region.as_ptr() as u64);
    dev.set_shm_regions(moved)?;
    println!(
        "moved: cache at guest {:#x}",
        dev.userspace_mappings()[0].addr.0
    );

    // Shutdown: the slot goes, then the device (and the window with it), then the region.
    let slot = dev.userspace_mappings()[0].mem_slot;
    dev.shutdown();
    memory_manager.remove_userspace_mapping(slot);
    drop(dev);
    drop(region);
    println!("done");
    Ok(())
}

fn print_counters(dev: &dyn VirtioDevice) {
    let mut counters: Vec<_> = dev.counters().unwrap_or_default().into_iter().collect();
    counters.sort();
    let line: Vec<String> = counters
        .iter()
        .map(|(k, v)| format!("{k}={}", v.0))
        .collect();
    println!("counters: {}", line.join(" "));
}
