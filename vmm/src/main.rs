// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `dax-vmm`: the reference VMM of virtio-fs-dax, built on the rust-vmm crates.
//!
//! It boots a Linux bzImage with an initramfs and a command line on KVM: guest RAM of a given
//! size, one or more vCPUs (a thread each), ACPI tables (RSDP, XSDT, hardware-reduced FADT, MADT,
//! DSDT), an 8250 serial console on stdout (vm-superio), and an exit port the guest writes its
//! status to (`0xf4`, one byte, as QEMU's isa-debug-exit), which ends the process with that
//! status. A guest that powers off (ACPI S5) ends it with status 0; one that resets gets a new
//! VM around the same RAM and devices.
//!
//! One or more virtio-fs devices, each the crate's `Fs`, on virtio-mmio (described in the DSDT
//! as `LNRO0005`, the window above 4 GiB) or on virtio-pci (`pci.rs`, the window as BAR 2, its
//! memory reserved by the VMM and handed to the device), the window a KVM memory slot through
//! the crate's `MemoryManager`. The VMM's thread watches the
//! backends and reconnects a restarted one.
//!
//! ```text
//! dax-vmm --kernel bzImage --initrd initrd.img [--cmdline "..."] [--mem-mib 512] [--cpus 1]
//!         [--max-reboots 4]
//!         [--fs tag=T,socket=PATH,window=SIZE[,dialect=standard|legacy][,fallback=fail|disable]
//!               [,transport=mmio|pci][,shmem_check=on|off]]...
//! ```

mod acpi;
mod boot;
mod mce;
mod mistakes;
mod mmio;
mod msix;
mod pci;
mod queues;

use std::fs::File;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use virtio_fs_dax::frontend::DaxFallback;
use virtio_fs_dax::memory::{MemoryManager, WindowRegion};
use virtio_fs_dax::{DaxWindow, Dialect, Fs, IoSpace};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap, MmapRegion};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// I/O ports of the first 8250 UART.
const COM1: u16 = 0x3f8;
/// The UART's interrupt line.
const COM1_GSI: u32 = 4;
/// The exit port: the guest writes its status byte here.
const EXIT_PORT: u16 = 0xf4;
/// The i8042 command port, and the command that resets the machine (Linux's `reboot=k`).
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;

struct Args {
    kernel: String,
    initrd: Option<String>,
    cmdline: String,
    mem_mib: u64,
    cpus: u8,
    max_reboots: u32,
    fs: Vec<FsArg>,
}

/// `--fs tag=T,socket=PATH,window=SIZE[,dialect=standard|legacy][,fallback=fail|disable]
/// [,transport=mmio|pci][,shmem_check=on|off]`
struct FsArg {
    tag: String,
    socket: String,
    window: u64,
    dialect: Dialect,
    fallback: DaxFallback,
    transport: pci::Transport,
    shmem_check: bool,
}

fn parse_size(s: &str) -> Result<u64> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().with_context(|| format!("size {s}"))?;
    n.checked_mul(mult).with_context(|| format!("size {s}"))
}

fn parse_fs(spec: &str) -> Result<FsArg> {
    let mut fs = FsArg {
        tag: String::new(),
        socket: String::new(),
        window: 0,
        dialect: Dialect::Standard,
        fallback: DaxFallback::Fail,
        transport: pci::Transport::Mmio,
        shmem_check: false,
    };
    for kv in spec.split(',') {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--fs: {kv} is not key=value"))?;
        match k {
            "tag" => fs.tag = v.into(),
            "socket" => fs.socket = v.into(),
            "window" => fs.window = parse_size(v)?,
            "dialect" => {
                fs.dialect = match v {
                    "standard" => Dialect::Standard,
                    "legacy" => Dialect::Legacy,
                    _ => bail!("--fs: dialect {v} is neither standard nor legacy"),
                }
            }
            "fallback" => {
                fs.fallback = match v {
                    "fail" => DaxFallback::Fail,
                    "disable" => DaxFallback::Disable,
                    _ => bail!("--fs: fallback {v} is neither fail nor disable"),
                }
            }
            "transport" => fs.transport = pci::Transport::parse(v)?,
            "shmem_check" => {
                fs.shmem_check = match v {
                    "on" => true,
                    "off" => false,
                    _ => bail!("--fs: shmem_check {v} is neither on nor off"),
                }
            }
            _ => bail!("--fs: unknown key {k}"),
        }
    }
    if fs.tag.is_empty() || fs.socket.is_empty() {
        bail!("--fs needs tag= and socket=");
    }
    Ok(fs)
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        kernel: String::new(),
        initrd: None,
        cmdline: "console=ttyS0 reboot=k panic=-1 pci=off".into(),
        mem_mib: 512,
        cpus: 1,
        max_reboots: 4,
        fs: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--kernel" => args.kernel = value()?,
            "--initrd" => args.initrd = Some(value()?),
            "--cmdline" => args.cmdline = value()?,
            "--mem-mib" => args.mem_mib = value()?.parse().context("--mem-mib")?,
            "--cpus" => args.cpus = value()?.parse().context("--cpus")?,
            "--max-reboots" => args.max_reboots = value()?.parse().context("--max-reboots")?,
            "--fs" => args.fs.push(parse_fs(&value()?)?),
            "-h" | "--help" => {
                println!(
                    "usage: dax-vmm --kernel BZIMAGE [--initrd FILE] [--cmdline STR] [--mem-mib N] [--cpus N] [--max-reboots N] [--fs tag=T,socket=PATH,window=SIZE[,dialect=standard|legacy]]..."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if args.kernel.is_empty() {
        bail!("--kernel is required");
    }
    if args.fs.iter().any(|f| f.transport == pci::Transport::Pci) {
        if let Some(cmdline) = pci::drop_pci_off(&args.cmdline) {
            eprintln!("dax-vmm: dropping pci=off from the command line: a device is on PCI");
            args.cmdline = cmdline;
        }
    }
    if !(1..=16).contains(&args.cpus) {
        bail!("--cpus must be 1..=16");
    }
    if !(64..=3072).contains(&args.mem_mib) {
        bail!("--mem-mib must be 64..=3072 (RAM below the 32-bit hole)");
    }
    Ok(args)
}

/// The serial's interrupt: an eventfd the VM turns into GSI 4 (irqfd).
struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Registers DAX windows as KVM memory slots (the crate's `MemoryManager`). After a reboot the
/// VMM builds a new VM; [`KvmMemory::attach`] moves every window into it.
struct KvmMemory {
    vm: Mutex<Arc<VmFd>>,
    /// Every registered window and its slot.
    windows: Mutex<Vec<(WindowRegion, u32)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KvmMemory {
    fn set_slot(vm: &VmFd, slot: u32, r: &WindowRegion, size: u64) -> io::Result<()> {
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: r.gpa,
            memory_size: size,
            userspace_addr: r.host_addr,
        };
        // SAFETY: the window's reservation lives until `unregister_window`, which the device
        // calls before the window is unmapped (the crate's documented drop order); a zero size
        // deletes the slot.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    /// Makes `vm` the VM the windows belong to, and registers every window in it.
    fn attach(&self, vm: Arc<VmFd>) -> Result<()> {
        let mut current = lock(&self.vm);
        for (r, slot) in lock(&self.windows).iter() {
            Self::set_slot(&vm, *slot, r, r.size)
                .with_context(|| format!("window at {:#x} in the new VM", r.gpa))?;
        }
        *current = vm;
        Ok(())
    }
}

impl MemoryManager for KvmMemory {
    fn register_window(&self, r: &WindowRegion) -> io::Result<()> {
        // The lowest id no window holds (slot 0 is guest RAM): the ids of removed windows come
        // back, so a window that moves or whose BAR decoding toggles never runs out of them.
        let mut windows = lock(&self.windows);
        let slot = (1..)
            .find(|s| windows.iter().all(|&(_, used)| used != *s))
            .unwrap_or(u32::MAX);
        Self::set_slot(&lock(&self.vm), slot, r, r.size)?;
        windows.push((*r, slot));
        Ok(())
    }

    fn unregister_window(&self, r: &WindowRegion) -> io::Result<()> {
        let mut windows = lock(&self.windows);
        let Some(i) = windows.iter().position(|(w, _)| w.gpa == r.gpa) else {
            return Ok(());
        };
        let (_, slot) = windows.remove(i);
        Self::set_slot(&lock(&self.vm), slot, r, 0)
    }
}

/// Where virtio-mmio devices go, one page each, and their first interrupt.
const MMIO_BASE: u64 = 0xd000_0000;
const MMIO_GSI: u32 = 5;
/// Where DAX windows go: above 4 GiB, clear of RAM (at most 3 GiB) and of the MMIO hole.
const WINDOW_BASE: u64 = 1 << 32;

fn guest_ram(size: u64) -> Result<GuestMemoryMmap> {
    // File-backed, so that the backend can map it (vhost-user's memory table).
    let path = format!("/dev/shm/dax-vmm-{}-ram", std::process::id());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {path}"))?;
    std::fs::remove_file(&path).with_context(|| format!("unlinking {path}"))?;
    file.set_len(size).context("sizing guest RAM")?;
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        size as usize,
        Some(FileOffset::new(file, 0)),
    )])
    .context("guest RAM")
}

/// What ends a boot.
enum Event {
    /// The guest wrote its status to the exit port, or powered off (status 0).
    Exit(u8),
    /// The guest reset the machine (i8042 reset, or a triple fault).
    Reboot,
    /// A vCPU cannot go on.
    Fatal(String),
}

type Console = Serial<IrqTrigger, vm_superio::serial::NoEvents, io::Stdout>;

/// What the vCPU threads share: the devices, the serial port, and where they post the event
/// that ends the boot.
struct Platform {
    devices: Mutex<Vec<mmio::MmioFs>>,
    /// The virtio-pci devices and their host bridge; it holds the first VM (no reboot with it).
    pci: Mutex<pci::PciBus>,
    serial: Mutex<Console>,
    windows: Vec<(u64, u64)>,
    events: mpsc::Sender<Event>,
    /// Guest accesses to window pages with nothing mapped (the backend went away).
    unmapped_window_faults: AtomicU64,
}

impl Platform {
    fn io_out(&self, port: u16, data: &[u8]) -> Option<Event> {
        {
            let mut pci = lock(&self.pci);
            if pci.owns_port(port) {
                pci.io_write(port, data);
                return None;
            }
        }
        match port {
            EXIT_PORT => return Some(Event::Exit(data.first().copied().unwrap_or(1))),
            acpi::SLEEP_CONTROL_PORT if data.first().is_some_and(|&v| v & acpi::SLP_EN != 0) => {
                // The guest powered off (ACPI S5) without a status: a clean end.
                return Some(Event::Exit(0));
            }
            I8042_COMMAND if data.first() == Some(&I8042_RESET) => return Some(Event::Reboot),
            p if (COM1..COM1 + 8).contains(&p) => {
                if let Some(&b) = data.first() {
                    let _ = lock(&self.serial).write((p - COM1) as u8, b);
                }
            }
            _ => {}
        }
        None
    }

    fn io_in(&self, port: u16, data: &mut [u8]) {
        {
            let mut pci = lock(&self.pci);
            if pci.owns_port(port) {
                pci.io_read(port, data);
                return;
            }
        }
        if (COM1..COM1 + 8).contains(&port) {
            data[0] = lock(&self.serial).read((port - COM1) as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        {
            let mut pci = lock(&self.pci);
            if pci.owns_mmio(addr) {
                pci.mmio_read(addr, data);
                return;
            }
        }
        match lock(&self.devices).iter_mut().find(|d| d.contains(addr)) {
            Some(d) => d.read(addr, data),
            None => data.fill(0xff),
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        {
            let mut pci = lock(&self.pci);
            if pci.owns_mmio(addr) {
                pci.mmio_write(addr, data);
                return;
            }
        }
        if let Some(d) = lock(&self.devices).iter_mut().find(|d| d.contains(addr)) {
            d.write(addr, data);
        }
    }

    fn in_window(&self, gpa: u64) -> bool {
        self.windows.iter().any(|&(b, l)| gpa >= b && gpa - b < l)
    }
}

/// Machine checks for unmapped window pages before the VMM gives up on the guest.
const MAX_WINDOW_FAULTS: u64 = 1000;

/// Runs one vCPU until the boot ends or the VMM stops it.
fn vcpu_loop(mut vcpu: VcpuFd, id: u8, p: &Platform, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let event = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => p.io_out(port, data),
            Ok(VcpuExit::IoIn(port, data)) => {
                p.io_in(port, data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                p.mmio_read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                p.mmio_write(addr, data);
                None
            }
            Ok(VcpuExit::Hlt) => Some(Event::Fatal(format!("vCPU {id} halted"))),
            Ok(VcpuExit::Shutdown) => Some(Event::Reboot),
            Ok(VcpuExit::MemoryFault { gpa, .. }) if p.in_window(gpa) => {
                // The guest touched a window page that has no file behind it any more (its
                // backend went away and the mappings were dropped): the access cannot complete.
                // Tell the guest the page failed (a machine check), as hardware would.
                let n = p.unmapped_window_faults.fetch_add(1, Ordering::Relaxed) + 1;
                eprintln!(
                    "dax-vmm: vCPU {id} touched the DAX window at {gpa:#x}, where nothing is mapped: machine check injected ({n} so far)"
                );
                if n > MAX_WINDOW_FAULTS {
                    Some(Event::Fatal(format!(
                        "the guest touched unmapped window pages {n} times"
                    )))
                } else {
                    mce::inject(&vcpu, gpa)
                        .err()
                        .map(|e| Event::Fatal(format!("vCPU {id}: {e:#}")))
                }
            }
            Ok(other) => Some(Event::Fatal(format!(
                "vCPU {id}: unexpected exit {other:?}"
            ))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) if e.errno() == libc::EFAULT && !p.windows.is_empty() => {
                // A kernel without KVM_EXIT_MEMORY_FAULT (before 6.8) gives no address: most
                // likely a window page whose mapping was dropped (every other page of the guest
                // is RAM). The access cannot complete and the VMM cannot say which page failed:
                // reset the guest, as a machine would on an unrecoverable memory error.
                let n = p.unmapped_window_faults.fetch_add(1, Ordering::Relaxed) + 1;
                eprintln!(
                    "dax-vmm: vCPU {id} touched guest memory with nothing behind it (a DAX window page whose mapping was dropped); the kernel gave no address: resetting the guest ({n} so far)"
                );
                Some(Event::Reboot)
            }
            Err(e) => Some(Event::Fatal(format!("vCPU {id}: KVM_RUN: {e}"))),
        };
        if let Some(event) = event {
            let _ = p.events.send(event);
            return;
        }
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// What every boot shares: the host's KVM, the arguments, guest RAM, the windows' memory
/// manager, the devices and the serial port, and the events the vCPUs post.
struct Machine {
    kvm: Kvm,
    args: Args,
    mem: GuestMemoryMmap,
    memory: Arc<KvmMemory>,
    platform: Arc<Platform>,
    serial_irq: EventFd,
    dsdt: Vec<u8>,
    events: mpsc::Receiver<Event>,
}

/// One boot: a fresh VM around the same RAM and devices, until the guest exits or resets.
fn boot(m: &Machine, boot_no: u32) -> Result<Event> {
    let Machine {
        kvm,
        args,
        mem,
        memory,
        platform,
        serial_irq,
        dsdt,
        events,
    } = m;
    // The first boot runs in the VM the devices were placed in; every later one in a new VM.
    let vm = if boot_no == 0 {
        lock(&memory.vm).clone()
    } else {
        let vm = Arc::new(kvm.create_vm().context("KVM_CREATE_VM")?);
        memory.attach(vm.clone())?;
        vm
    };
    let mem_size = args.mem_mib << 20;
    boot::register_memory(&vm, mem)?;
    vm.set_tss_address(0xfffb_d000)
        .context("KVM_SET_TSS_ADDR")?;
    vm.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
    let pit = kvm_bindings::kvm_pit_config {
        flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).context("KVM_CREATE_PIT2")?;
    for d in lock(&platform.devices).iter() {
        d.wire(&vm)?;
    }
    vm.register_irqfd(serial_irq, COM1_GSI)
        .context("KVM_IRQFD")?;

    let mut kernel =
        File::open(&args.kernel).with_context(|| format!("opening {}", args.kernel))?;
    let initrd = match &args.initrd {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {p}"))?),
        None => None,
    };
    let rsdp = acpi::write_tables(mem, args.cpus, dsdt)?;
    let cmdline = format!("{} vfd.boot={boot_no}", args.cmdline);
    let entry = boot::load(
        mem,
        &mut kernel,
        initrd.as_deref(),
        &cmdline,
        mem_size,
        rsdp,
    )?;

    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for id in 0..args.cpus {
        let vcpu = vm.create_vcpu(u64::from(id)).context("KVM_CREATE_VCPU")?;
        boot::setup_vcpu(kvm, &vcpu, id, args.cpus)?;
        if let Err(e) = mce::setup(kvm, &vcpu) {
            // Without it, a touch of an unmapped window page ends the VM instead.
            eprintln!("dax-vmm: vCPU {id}: no machine-check recovery: {e:#}");
        }
        if id == 0 {
            boot::setup_boot_vcpu(&vcpu, mem, entry)?;
        }
        let (p, stop) = (platform.clone(), stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || vcpu_loop(vcpu, id, &p, &stop))
                .context("spawning a vCPU thread")?,
        );
    }

    // The VMM's thread: watch the backends while the vCPUs run.
    let event = loop {
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(e) => break e,
            Err(mpsc::RecvTimeoutError::Timeout) => watch_backends(platform),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Event::Fatal("every vCPU thread ended".into())
            }
        }
    };
    // Stop every vCPU: a signal takes a vCPU out of KVM_RUN, the flag keeps it out.
    stop.store(true, Ordering::Release);
    for t in &threads {
        while !t.is_finished() {
            let _ = t.kill(SIGRTMIN());
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for t in threads {
        let _ = t.join();
    }
    while events.try_recv().is_ok() {}
    // Take every eventfd out of this VM before the next one takes them: the first VM lives on
    // in the PCI bus, and KVM wakes only the oldest irqfd of an eventfd.
    for d in lock(&platform.devices).iter() {
        if let Err(e) = d.unwire(&vm) {
            eprintln!("dax-vmm: {e:#}");
        }
    }
    if let Err(e) = vm.unregister_irqfd(serial_irq, COM1_GSI) {
        eprintln!("dax-vmm: serial KVM_IRQFD deassign: {e}");
    }
    Ok(event)
}

/// Drops the session of a device whose backend went away (the crate drops its mappings), and
/// reconnects once the backend is back.
fn watch_backends(platform: &Platform) {
    for d in lock(&platform.devices).iter_mut() {
        let fs = d.fs_mut();
        if fs.check_backend() {
            eprintln!(
                "dax-vmm: virtio-fs {}: backend gone; mappings dropped (live mappings {})",
                fs.tag(),
                fs.metrics().live_mappings()
            );
            d.lost_backend = true;
        }
        if d.lost_backend {
            match d.fs_mut().reconnect() {
                Ok(()) => {
                    eprintln!("dax-vmm: virtio-fs {}: backend reconnected", d.fs().tag());
                    d.lost_backend = false;
                    d.counters.reconnects += 1;
                }
                // The driver reset the device meanwhile: its next activation connects anew.
                Err(virtio_fs_dax::device::Error::NotActivated) => d.lost_backend = false,
                // Not back yet: try again on the next tick.
                Err(_) => {}
            }
        }
    }
}

/// Connects to a backend that may still be starting: 50 attempts 100 ms apart.
fn connect(fs: &mut Fs) -> Result<()> {
    let mut tries = 0;
    loop {
        match fs.connect() {
            Ok(()) => return Ok(()),
            Err(virtio_fs_dax::device::Error::Session(
                virtio_fs_dax::frontend::Error::Connect { .. },
            )) if tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn run(args: Args) -> Result<u8> {
    let kvm = Kvm::new().context("opening /dev/kvm")?;
    let mem = guest_ram(args.mem_mib << 20)?;
    register_signal_handler(SIGRTMIN(), kick_handler).context("vCPU kick signal")?;

    // The virtio-fs devices: the crate's Fs on virtio-mmio, windows as KVM memory slots.
    let first_vm = Arc::new(kvm.create_vm().context("KVM_CREATE_VM")?);
    let memory = Arc::new(KvmMemory {
        vm: Mutex::new(first_vm.clone()),
        windows: Mutex::new(Vec::new()),
    });
    let atomic = GuestMemoryAtomic::new(mem.clone());
    // One IO space for every device, opted in to IO across their windows: the guest may hand a
    // buffer mapped from one device's window to a read or write on another, and this VMM's
    // backends are all the operator's, trusted alike.
    let io_space = Arc::new(IoSpace::with_guest_memory(atomic.clone()).cross_device(true));
    let mut devices = Vec::new();
    let mut dsdt = Vec::new();
    let mut windows = Vec::new();
    let mut window_at = WINDOW_BASE;
    let mut pci = pci::PciBus::new(first_vm.clone());
    for (i, f) in args.fs.iter().enumerate() {
        let on_pci = f.transport == pci::Transport::Pci;
        let mut builder = Fs::builder(f.tag.clone()).window_size(f.window);
        if on_pci && f.window > 0 {
            // The BAR's memory is reserved here, as a device manager reserves device memory,
            // and handed to the device, which takes the region over.
            let region = MmapRegion::<()>::build(
                None,
                usize::try_from(f.window).context("window size")?,
                libc::PROT_NONE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            )
            .with_context(|| format!("reserving the window of {}", f.tag))?;
            let window = DaxWindow::from_reservation(region)
                .with_context(|| format!("the window of {}", f.tag))?;
            builder = builder.window(Arc::new(window));
        }
        let mut fs = builder
            .socket_path(&f.socket)
            .queue_size(256)
            .dialect(f.dialect)
            .dax_fallback(f.fallback)
            .check_shmem_config(f.shmem_check)
            // One attempt a call: the VMM's thread retries a lost backend on its own schedule.
            .connect_retry(1, Duration::ZERO)
            // The Linux guest upgrades a read-only range to writable by mapping it again.
            .replace_exact(true)
            .memory_manager(memory.clone())
            .io_space(io_space.clone())
            .build()
            .with_context(|| format!("virtio-fs {}", f.tag))?;
        // Before the guest can see the device: the device decides here whether it offers the
        // window (a backend that cannot serve it, with fallback=disable, gets none).
        connect(&mut fs).with_context(|| format!("connecting to {}", f.socket))?;
        if on_pci {
            pci.add_fs(&f.tag, fs, atomic.clone())
                .with_context(|| format!("virtio-fs {} on PCI", f.tag))?;
            continue;
        }
        if fs.window_offered() {
            fs.set_shm_base(0, window_at)
                .with_context(|| format!("placing the window of {}", f.tag))?;
            windows.push((window_at, f.window));
            window_at += f.window.max(2 << 20);
        }
        let base = MMIO_BASE + i as u64 * mmio::MMIO_LEN;
        let gsi = MMIO_GSI + i as u32;
        dsdt.extend(acpi::virtio_mmio_device(i, base, mmio::MMIO_LEN, gsi));
        devices.push(mmio::MmioFs::new(base, gsi, fs, atomic.clone())?);
    }

    dsdt.extend(pci.dsdt());
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).context("eventfd")?;
    let serial = Serial::new(
        IrqTrigger(serial_irq.try_clone().context("eventfd clone")?),
        io::stdout(),
    );
    let (tx, events) = mpsc::channel();
    let platform = Arc::new(Platform {
        devices: Mutex::new(devices),
        pci: Mutex::new(pci),
        serial: Mutex::new(serial),
        windows,
        events: tx,
        unmapped_window_faults: AtomicU64::new(0),
    });

    let machine = Machine {
        kvm,
        args,
        mem,
        memory,
        platform,
        serial_irq,
        dsdt,
        events,
    };
    let mut boot_no = 0;
    let result = loop {
        let event = boot(&machine, boot_no);
        match event {
            Ok(Event::Reboot) if !lock(&machine.platform.pci).is_empty() => {
                break Err(anyhow!(
                    "the guest reset itself; rebooting with virtio-pci devices is not supported"
                ))
            }
            Ok(Event::Reboot) if boot_no < machine.args.max_reboots => {
                // The platform reset: every device resets, which drops its window's mappings.
                for d in lock(&machine.platform.devices).iter_mut() {
                    let before = d.fs().metrics().live_mappings();
                    d.platform_reset();
                    eprintln!(
                        "dax-vmm: reboot: virtio-fs {}: {before} mapping(s) before the reset, {} after",
                        d.fs().tag(),
                        d.fs().metrics().live_mappings()
                    );
                }
                boot_no += 1;
            }
            Ok(Event::Reboot) => {
                break Err(anyhow!(
                    "the guest reset itself more than {} time(s)",
                    machine.args.max_reboots
                ))
            }
            Ok(Event::Exit(status)) => break Ok(status),
            Ok(Event::Fatal(why)) => break Err(anyhow!(why)),
            Err(e) => break Err(e),
        }
    };
    let _ = io::stdout().flush();
    for d in lock(&machine.platform.devices).iter() {
        let m = d.fs().metrics().clone();
        let lat = m.map_latency();
        let us = |q| {
            lat.quantile(q)
                .map_or(0.0, |d: Duration| d.as_secs_f64() * 1e6)
        };
        eprintln!(
            "dax-vmm: virtio-fs {}: maps {}, unmaps {}, live mappings {}, refusals {}, bad register accesses {}, failed activations {}, reconnects {}, map round trip p50 {:.1} us p99 {:.1} us",
            d.fs().tag(),
            m.maps(),
            m.unmaps(),
            m.live_mappings(),
            m.total_refusals(),
            d.counters.bad_accesses,
            d.counters.failed_activations,
            d.counters.reconnects,
            us(0.5),
            us(0.99),
        );
    }
    lock(&machine.platform.pci).report();
    let faults = machine
        .platform
        .unmapped_window_faults
        .load(Ordering::Relaxed);
    if faults > 0 {
        eprintln!("dax-vmm: guest accesses to unmapped window pages: {faults}");
    }
    eprintln!("dax-vmm: boots {}", boot_no + 1);
    result
}

/// The crate's log lines on stderr: warnings and errors, and everything down to
/// `DAX_VMM_LOG` (`error`, `warn`, `info`, `debug`, `trace`) when it is set.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("dax-vmm: {} {}: {}", r.level(), r.target(), r.args());
        }
    }
    fn flush(&self) {}
}

fn main() -> ExitCode {
    let level = std::env::var("DAX_VMM_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Warn);
    if log::set_logger(&StderrLog).is_ok() {
        log::set_max_level(level);
    }
    match parse_args().and_then(run) {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("dax-vmm: {e:#}");
            ExitCode::from(125)
        }
    }
}
