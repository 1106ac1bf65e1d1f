// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `dax-vmm`: the reference VMM of virtio-fs-dax, built on the rust-vmm crates.
//!
//! This first step boots a Linux bzImage with an initramfs and a command line on KVM: guest RAM
//! of a given size, one vCPU, ACPI tables (RSDP, XSDT, hardware-reduced FADT, MADT, DSDT), an
//! 8250 serial console on stdout (vm-superio), and an exit port the guest writes its status to
//! (`0xf4`, one byte, as QEMU's isa-debug-exit), which ends the process with that status. A guest
//! that powers off (ACPI S5) ends it with status 0.
//!
//! One or more virtio-fs devices on virtio-mmio (described in the DSDT as `LNRO0005`), each the
//! crate's `Fs` with its DAX window placed above 4 GiB and registered as a KVM memory slot
//! through the crate's `MemoryManager`:
//!
//! ```text
//! dax-vmm --kernel bzImage --initrd initrd.img [--cmdline "..."] [--mem-mib 512]
//!         [--fs tag=T,socket=PATH,window=SIZE[,dialect=standard|legacy][,transport=mmio|pci]]...
//! ```
//!
//! `transport=pci` puts the device on virtio-pci (modern) behind a PCI host bridge instead
//! (`pci.rs`); the command line then loses `pci=off`.

mod acpi;
mod boot;
mod mmio;
mod msix;
mod pci;

use std::fs::File;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use kvm_ioctls::{Kvm, VcpuExit, VmFd};
use virtio_fs_dax::device::VirtioDevice;
use virtio_fs_dax::memory::{MemoryManager, WindowRegion};
use virtio_fs_dax::{Dialect, Fs};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

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
    fs: Vec<FsArg>,
}

/// `--fs tag=T,socket=PATH,window=SIZE[,dialect=standard|legacy][,transport=mmio|pci]`
struct FsArg {
    tag: String,
    socket: String,
    window: u64,
    dialect: Dialect,
    transport: pci::Transport,
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
        transport: pci::Transport::Mmio,
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
            "transport" => fs.transport = pci::Transport::parse(v)?,
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
            "--fs" => args.fs.push(parse_fs(&value()?)?),
            "-h" | "--help" => {
                println!(
                    "usage: dax-vmm --kernel BZIMAGE [--initrd FILE] [--cmdline STR] [--mem-mib N]"
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

/// Registers DAX windows as KVM memory slots (the crate's `MemoryManager`).
struct KvmMemory {
    vm: Arc<VmFd>,
    /// Slot of each window, by guest address.
    slots: Mutex<Vec<(u64, u32)>>,
}

impl MemoryManager for KvmMemory {
    fn register_window(&self, r: &WindowRegion) -> io::Result<()> {
        // The lowest id no window holds (slot 0 is guest RAM): the ids of removed windows come
        // back, so a window that moves or whose BAR decoding toggles never runs out of them.
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = (1..)
            .find(|s| slots.iter().all(|&(_, used)| used != *s))
            .unwrap_or(u32::MAX);
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: r.gpa,
            memory_size: r.size,
            userspace_addr: r.host_addr,
        };
        // SAFETY: the window's reservation lives until `unregister_window`, which the device
        // calls before the window is unmapped (the crate's documented drop order).
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        slots.push((r.gpa, slot));
        Ok(())
    }

    fn unregister_window(&self, r: &WindowRegion) -> io::Result<()> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let Some(i) = slots.iter().position(|&(gpa, _)| gpa == r.gpa) else {
            return Ok(());
        };
        let (_, slot) = slots.remove(i);
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: r.gpa,
            memory_size: 0,
            userspace_addr: r.host_addr,
        };
        // SAFETY: a zero-sized region deletes the slot; nothing is mapped through it after.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
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

fn run(args: Args) -> Result<u8> {
    let kvm = Kvm::new().context("opening /dev/kvm")?;
    let vm = Arc::new(kvm.create_vm().context("KVM_CREATE_VM")?);
    let mem_size = args.mem_mib << 20;
    let mem = guest_ram(mem_size)?;
    boot::register_memory(&vm, &mem)?;
    vm.set_tss_address(0xfffb_d000)
        .context("KVM_SET_TSS_ADDR")?;
    vm.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
    let pit = kvm_bindings::kvm_pit_config {
        flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).context("KVM_CREATE_PIT2")?;

    // The virtio-fs devices: the crate's Fs on virtio-mmio, windows as KVM memory slots.
    let memory = Arc::new(KvmMemory {
        vm: vm.clone(),
        slots: Mutex::new(Vec::new()),
    });
    let atomic = GuestMemoryAtomic::new(mem.clone());
    let mut devices = Vec::new();
    let mut dsdt = Vec::new();
    let mut window_at = WINDOW_BASE;
    let mut pci = pci::PciBus::new(vm.clone());
    for (i, f) in args.fs.iter().enumerate() {
        // On PCI the window's memory slot follows the BAR's memory decoding.
        let gate =
            (f.transport == pci::Transport::Pci).then(|| pci::WindowGate::new(memory.clone()));
        let mm: Arc<dyn MemoryManager> = match &gate {
            Some(g) => g.clone(),
            None => memory.clone(),
        };
        let mut fs = Fs::builder(f.tag.clone())
            .socket_path(&f.socket)
            .window_size(f.window)
            .queue_size(256)
            .dialect(f.dialect)
            // The Linux guest upgrades a read-only range to writable by mapping it again.
            .replace_exact(true)
            .memory_manager(mm)
            .build()
            .with_context(|| format!("virtio-fs {}", f.tag))?;
        fs.connect()
            .with_context(|| format!("connecting to {}", f.socket))?;
        if let Some(gate) = gate {
            pci.add_fs(&f.tag, fs, gate, atomic.clone())
                .with_context(|| format!("virtio-fs {} on PCI", f.tag))?;
            continue;
        }
        if f.window > 0 {
            fs.set_shm_base(0, window_at)
                .with_context(|| format!("placing the window of {}", f.tag))?;
            window_at += f.window.max(2 << 20);
        }
        let base = MMIO_BASE + i as u64 * mmio::MMIO_LEN;
        let gsi = MMIO_GSI + i as u32;
        dsdt.extend(acpi::virtio_mmio_device(i, base, mmio::MMIO_LEN, gsi));
        devices.push(mmio::MmioFs::new(&vm, base, gsi, fs, atomic.clone())?);
    }

    let mut kernel =
        File::open(&args.kernel).with_context(|| format!("opening {}", args.kernel))?;
    let initrd = match &args.initrd {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {p}"))?),
        None => None,
    };
    dsdt.extend(pci.dsdt());
    let rsdp = acpi::write_tables(&mem, 1, &dsdt)?;
    let entry = boot::load(
        &mem,
        &mut kernel,
        initrd.as_deref(),
        &args.cmdline,
        mem_size,
        rsdp,
    )?;

    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).context("eventfd")?;
    vm.register_irqfd(&serial_irq, COM1_GSI)
        .context("KVM_IRQFD")?;
    let mut serial = Serial::new(
        IrqTrigger(serial_irq.try_clone().context("eventfd clone")?),
        io::stdout(),
    );

    let mut vcpu = vm.create_vcpu(0).context("KVM_CREATE_VCPU")?;
    boot::setup_vcpu(&kvm, &vcpu, &mem, entry)?;

    let status = loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) if pci.owns_port(port) => pci.io_write(port, data),
            Ok(VcpuExit::IoIn(port, data)) if pci.owns_port(port) => pci.io_read(port, data),
            Ok(VcpuExit::MmioRead(addr, data)) if pci.owns_mmio(addr) => pci.mmio_read(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) if pci.owns_mmio(addr) => {
                pci.mmio_write(addr, data)
            }
            Ok(VcpuExit::IoOut(port, data)) => match port {
                EXIT_PORT => break data.first().copied().unwrap_or(1),
                acpi::SLEEP_CONTROL_PORT
                    if data.first().is_some_and(|&v| v & acpi::SLP_EN != 0) =>
                {
                    // The guest powered off (ACPI S5) without a status: a clean end.
                    break 0;
                }
                I8042_COMMAND if data.first() == Some(&I8042_RESET) => {
                    bail!("the guest reset itself without writing its status")
                }
                p if (COM1..COM1 + 8).contains(&p) => {
                    if let Some(&b) = data.first() {
                        let _ = serial.write((p - COM1) as u8, b);
                    }
                }
                _ => {}
            },
            Ok(VcpuExit::IoIn(port, data)) => {
                if (COM1..COM1 + 8).contains(&port) {
                    data[0] = serial.read((port - COM1) as u8);
                } else {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                match devices.iter_mut().find(|d| d.contains(addr)) {
                    Some(d) => d.read(addr, data),
                    None => data.fill(0xff),
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if let Some(d) = devices.iter_mut().find(|d| d.contains(addr)) {
                    d.write(addr, data);
                }
            }
            Ok(VcpuExit::Hlt) => bail!("the guest halted without writing its status"),
            Ok(VcpuExit::Shutdown) => {
                bail!("the guest shut down (triple fault or reset) without writing its status")
            }
            Ok(other) => bail!("unexpected vCPU exit {other:?}"),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(e).context("KVM_RUN"),
        }
    };
    let _ = io::stdout().flush();
    let on_mmio = args
        .fs
        .iter()
        .filter(|f| f.transport == pci::Transport::Mmio);
    for (d, f) in devices.iter_mut().zip(on_mmio) {
        let m = d.fs().metrics().clone();
        eprintln!(
            "dax-vmm: virtio-fs {}: maps {}, unmaps {}, live mappings {}, refusals {}, bad register accesses {}, failed activations {}",
            f.tag,
            m.maps(),
            m.unmaps(),
            m.live_mappings(),
            m.total_refusals(),
            d.counters.bad_accesses,
            d.counters.failed_activations,
        );
    }
    pci.report();
    Ok(status)
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("dax-vmm: {e:#}");
            ExitCode::from(125)
        }
    }
}
