// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `dax-vmm`: the reference VMM of virtio-fs-dax, built on the rust-vmm crates.
//!
//! This first step boots a Linux bzImage with an initramfs and a command line on KVM: guest RAM
//! of a given size, one vCPU, ACPI tables (RSDP, XSDT, hardware-reduced FADT, MADT, DSDT), an
//! 8250 serial console on stdout (vm-superio), and an exit port the guest writes its status to
//! (`0xf4`, one byte, as QEMU's isa-debug-exit), which ends the process with that status. A guest
//! that powers off (ACPI S5) ends it with status 0. virtio-fs devices come next.
//!
//! ```text
//! dax-vmm --kernel bzImage --initrd initrd.img [--cmdline "..."] [--mem-mib 512]
//! ```

mod acpi;
mod boot;

use std::fs::File;
use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vm_superio::serial::NoEvents;
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
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        kernel: String::new(),
        initrd: None,
        cmdline: "console=ttyS0 reboot=k panic=-1 pci=off".into(),
        mem_mib: 512,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--kernel" => args.kernel = value()?,
            "--initrd" => args.initrd = Some(value()?),
            "--cmdline" => args.cmdline = value()?,
            "--mem-mib" => args.mem_mib = value()?.parse().context("--mem-mib")?,
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

fn run(args: Args) -> Result<u8> {
    let kvm = Kvm::new().context("opening /dev/kvm")?;
    let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
    let mem_size = args.mem_mib << 20;
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size as usize)])
            .context("guest RAM")?;
    boot::register_memory(&vm, &mem)?;
    vm.set_tss_address(0xfffb_d000)
        .context("KVM_SET_TSS_ADDR")?;
    vm.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
    let pit = kvm_bindings::kvm_pit_config {
        flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).context("KVM_CREATE_PIT2")?;

    let mut kernel =
        File::open(&args.kernel).with_context(|| format!("opening {}", args.kernel))?;
    let initrd = match &args.initrd {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {p}"))?),
        None => None,
    };
    let rsdp = acpi::write_tables(&mem, 1, &[])?;
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

    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => match port {
                EXIT_PORT => {
                    let _ = io::stdout().flush();
                    return Ok(data.first().copied().unwrap_or(1));
                }
                acpi::SLEEP_CONTROL_PORT
                    if data.first().is_some_and(|&v| v & acpi::SLP_EN != 0) =>
                {
                    // The guest powered off (ACPI S5) without a status: a clean end.
                    let _ = io::stdout().flush();
                    return Ok(0);
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
            Ok(VcpuExit::MmioRead(_, data)) => data.fill(0xff),
            Ok(VcpuExit::MmioWrite(..)) => {}
            Ok(VcpuExit::Hlt) => bail!("the guest halted without writing its status"),
            Ok(VcpuExit::Shutdown) => {
                bail!("the guest shut down (triple fault or reset) without writing its status")
            }
            Ok(other) => bail!("unexpected vCPU exit {other:?}"),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(e).context("KVM_RUN"),
        }
    }
}

fn main() -> ExitCode {
    let _ = NoEvents;
    match parse_args().and_then(run) {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("dax-vmm: {e:#}");
            ExitCode::from(125)
        }
    }
}
