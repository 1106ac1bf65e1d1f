// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The syscalls of the channel thread, for the seccomp filter a VMM installs on it.

#[cfg(feature = "seccompiler")]
use seccompiler::SeccompRule;
#[cfg(feature = "seccompiler")]
use std::collections::BTreeMap;

/// A syscall the channel thread makes: an entry of [`SYSCALLS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Syscall {
    /// The name, as `man 2` and libseccomp spell it.
    pub name: &'static str,
    /// The number on the target architecture (`libc::SYS_*`), as `seccompiler` keys it.
    pub number: i64,
    /// What the thread makes it for.
    pub reason: &'static str,
}

const fn sys(name: &'static str, number: i64, reason: &'static str) -> Syscall {
    Syscall {
        name,
        number,
        reason,
    }
}

/// Every syscall the backend channel thread
/// ([`BackendChannel::spawn`](super::BackendChannel::spawn)) makes from the moment its start hook
/// has returned to the moment it ends, with its number on the target architecture (x86_64,
/// aarch64 and riscv64: the architectures `seccompiler` supports) and, where they differ, for
/// the C library in use (glibc or musl). Entries the crate's code does not make itself say who
/// does: the memory allocator (request bodies, replies, the drain buffer and the mapping table
/// are allocated on the thread), the C library's and Rust's thread exit, Rust's `std` in builds
/// with debug assertions.
///
/// `tests/seccomp.rs` proves the list: it installs a filter that allows these and kills the
/// process on anything else, and drives both dialects, refusals, FS_SYNC, FS_IO, MEM_READ /
/// MEM_WRITE, pause, stop and a backend disconnect through it, also with glibc's allocator tuned
/// to return and map memory as often as it can. Leaving out any entry but `clock_gettime` (which
/// the vDSO answers on that host) makes the test die of SIGSYS.
///
/// Not in the list: what the VMM's hook does before it installs the filter, and the VMM's
/// logger. The thread logs refusals and a disconnect through the `log` crate, so a logger that
/// writes to a file or to stderr needs its own syscalls (usually `write`) in the filter too.
///
/// With feature `seccompiler`, `seccomp_rules` gives the list as `seccompiler` rules.
pub const SYSCALLS: &[Syscall] = &[
    // The channel.
    sys(
        "recvmsg",
        libc::SYS_recvmsg,
        "reads requests and the descriptors (SCM_RIGHTS) that come with them",
    ),
    sys("sendmsg", libc::SYS_sendmsg, "sends replies"),
    #[cfg(all(target_arch = "x86_64", not(target_env = "musl")))]
    sys(
        "epoll_wait",
        libc::SYS_epoll_wait,
        "waits for the socket, the stop and the pause eventfds (glibc's epoll_wait on x86_64)",
    ),
    #[cfg(any(not(target_arch = "x86_64"), target_env = "musl"))]
    sys(
        "epoll_pwait",
        libc::SYS_epoll_pwait,
        "waits for the socket, the stop and the pause eventfds (epoll_wait on musl, and on \
         architectures without an epoll_wait syscall)",
    ),
    sys(
        "read",
        libc::SYS_read,
        "consumes the stop and the pause eventfds",
    ),
    sys(
        "close",
        libc::SYS_close,
        "closes received descriptors, and the socket, the eventfds and the epoll at the end",
    ),
    sys(
        "fcntl",
        libc::SYS_fcntl,
        "F_GETFD only: in builds with debug assertions, Rust's std checks that a descriptor it \
         owns is open before closing it",
    ),
    sys(
        "futex",
        libc::SYS_futex,
        "the window's and the IO space's locks, pause and resume, the start and end signals",
    ),
    sys(
        "clock_gettime",
        libc::SYS_clock_gettime,
        "times each map; the vDSO answers without a syscall unless the clock source does not \
         allow it",
    ),
    // The window.
    sys(
        "mmap",
        libc::SYS_mmap,
        "maps file ranges into the window and the reservation back over them, refills the \
         ballast; the allocator (blocks above its mmap threshold, new heaps)",
    ),
    sys(
        "munmap",
        libc::SYS_munmap,
        "frees a ballast page at the process's map limit; the allocator; Rust's runtime frees \
         the thread's signal stack at the end",
    ),
    sys("msync", libc::SYS_msync, "MS_SYNC only: FS_SYNC"),
    // FS_IO.
    sys(
        "pread64",
        libc::SYS_pread64,
        "FS_IO without MAP_W: reads a file into guest memory",
    ),
    sys(
        "pwrite64",
        libc::SYS_pwrite64,
        "FS_IO with MAP_W: writes guest memory to a file",
    ),
    sys(
        "fstatfs",
        libc::SYS_fstatfs,
        "FS_IO: whether the file is on a local file system (IO straight into guest memory) or \
         one whose server can stall (through a buffer, no lock held)",
    ),
    // FS_IO through a buffer, MEM_READ / MEM_WRITE.
    sys(
        "process_vm_readv",
        libc::SYS_process_vm_readv,
        "copies window memory out (FS_IO through a buffer, MEM_READ): a fault is EFAULT, not a \
         signal",
    ),
    sys(
        "process_vm_writev",
        libc::SYS_process_vm_writev,
        "copies into window memory (FS_IO through a buffer, MEM_WRITE): a fault is EFAULT, not \
         a signal",
    ),
    sys(
        "getpid",
        libc::SYS_getpid,
        "the process_vm_* calls name this process",
    ),
    // The allocator.
    sys(
        "brk",
        libc::SYS_brk,
        "the allocator grows and trims the main heap: musl's, and glibc's, which a thread \
         shares once the number of arenas is at its limit",
    ),
    sys(
        "mprotect",
        libc::SYS_mprotect,
        "the allocator grows a heap of glibc's per-thread arenas (musl: its metadata area)",
    ),
    sys(
        "madvise",
        libc::SYS_madvise,
        "the allocator gives freed memory back; glibc drops the thread's stack pages at the end",
    ),
    sys(
        "mremap",
        libc::SYS_mremap,
        "the allocator resizes a block it mapped on its own (glibc: one above its mmap threshold)",
    ),
    #[cfg(target_env = "gnu")]
    sys(
        "openat",
        libc::SYS_openat,
        "read-only, close-on-exec opens only: the first time any thread of the process shrinks a \
         heap of a glibc arena, glibc reads /proc/sys/vm/overcommit_memory",
    ),
    // The end of the thread.
    sys(
        "sigaltstack",
        libc::SYS_sigaltstack,
        "Rust's runtime disables the thread's signal stack at the end",
    ),
    sys(
        "rt_sigprocmask",
        libc::SYS_rt_sigprocmask,
        "the C library blocks signals while the thread exits",
    ),
    sys("exit", libc::SYS_exit, "ends the thread"),
];

/// Every syscall a VMM's thread makes when it controls channel threads and windows, beyond
/// [`SYSCALLS`]: the socket pair for a new channel, [`BackendChannel::spawn`](super::BackendChannel::spawn)
/// (the thread's eventfds and epoll, the new thread), what the new thread makes before its start
/// hook runs, a start hook that installs a seccomp filter with `seccompiler`,
/// [`ChannelThread::pause`](super::ChannelThread::pause) / `resume` / `stop`, and
/// [`DaxWindow::reset`](crate::DaxWindow::reset). Numbers as in [`SYSCALLS`].
///
/// A new thread starts under the filter of the thread that spawns it, and a filter it installs
/// adds to that one: the channel thread can only make what both allow. A VMM that starts
/// channels from a thread under its own filter (cloud-hypervisor restarts the channel from its
/// virtio-fs thread when the backend reconnects) therefore allows this list and [`SYSCALLS`]
/// on that thread. `tests/seccomp_control.rs` proves it: a thread under a filter of these two
/// lists alone, killing on anything else, runs two channel sessions over one window.
///
/// With feature `seccompiler`, `control_seccomp_rules` gives the list as `seccompiler` rules.
pub const CONTROL_SYSCALLS: &[Syscall] = &[
    sys(
        "socketpair",
        libc::SYS_socketpair,
        "AF_UNIX only: the VMM's socket pair for a new channel (one end for the channel, one \
         for the backend)",
    ),
    sys(
        "eventfd2",
        libc::SYS_eventfd2,
        "spawn: the stop and the pause eventfds",
    ),
    sys(
        "ioctl",
        libc::SYS_ioctl,
        "FIONBIO only: spawn makes the channel's socket non-blocking",
    ),
    sys(
        "fcntl",
        libc::SYS_fcntl,
        "F_DUPFD_CLOEXEC only: spawn keeps clones of the socket and the stop eventfd (the \
         channel thread's own fcntl, F_GETFD, is in SYSCALLS)",
    ),
    sys(
        "epoll_create1",
        libc::SYS_epoll_create1,
        "spawn: the thread's epoll",
    ),
    sys(
        "epoll_ctl",
        libc::SYS_epoll_ctl,
        "spawn: the socket and the eventfds into the epoll",
    ),
    sys(
        "clone3",
        libc::SYS_clone3,
        "spawn: the new thread (glibc 2.34 and later)",
    ),
    sys(
        "clone",
        libc::SYS_clone,
        "spawn: the new thread (musl, and glibc where clone3 is refused)",
    ),
    sys(
        "set_robust_list",
        libc::SYS_set_robust_list,
        "the new thread, as the C library starts it",
    ),
    #[cfg(target_env = "gnu")]
    sys("rseq", libc::SYS_rseq, "the new thread, as glibc starts it"),
    sys(
        "sched_getaffinity",
        libc::SYS_sched_getaffinity,
        "the new thread: Rust's runtime reads the thread's stack bounds \
         (pthread_getattr_np)",
    ),
    sys(
        "gettid",
        libc::SYS_gettid,
        "the new thread: Rust's runtime, reading the thread's stack bounds",
    ),
    sys(
        "prctl",
        libc::SYS_prctl,
        "PR_SET_NAME: the new thread takes its name; PR_SET_NO_NEW_PRIVS: a start hook that \
         installs a seccomp filter",
    ),
    sys(
        "seccomp",
        libc::SYS_seccomp,
        "SECCOMP_SET_MODE_FILTER only: a start hook that installs a seccomp filter",
    ),
    sys(
        "write",
        libc::SYS_write,
        "pause, resume and stop signal the thread's eventfds",
    ),
    sys(
        "shutdown",
        libc::SYS_shutdown,
        "stop: shuts the channel's socket down, so a thread in the middle of a message ends too",
    ),
];

/// [`SYSCALLS`] as `seccompiler` rules, for the filter a VMM builds for the channel thread.
/// Each syscall maps to an empty rule list, which `seccompiler` reads as "allowed, whatever the
/// arguments", except those whose arguments the thread always passes alike: `fcntl` is allowed
/// with `F_GETFD` only, `msync` with `MS_SYNC` only, and `openat` (glibc) with the flags
/// `O_RDONLY | O_CLOEXEC` only.
///
/// To merge them into rules the VMM has for the thread already: for a syscall both name, join
/// the two lists, unless either is empty. An empty list allows the syscall whatever the
/// arguments and must stay empty: an argument rule added to it would restrict it.
///
/// ```
/// use seccompiler::{apply_filter, BpfProgram, SeccompAction, SeccompFilter};
/// use virtio_fs_dax::channel::{seccomp_rules, ThreadHook};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let filter: BpfProgram = SeccompFilter::new(
///     seccomp_rules()?,
///     SeccompAction::KillProcess,
///     SeccompAction::Allow,
///     std::env::consts::ARCH.try_into()?,
/// )?
/// .try_into()?;
/// // For `BackendChannelBuilder::on_thread_start` or `FsBuilder::on_channel_thread`.
/// let hook = ThreadHook::new(move || Ok(apply_filter(&filter)?));
/// # let _ = hook;
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "seccompiler")]
#[cfg_attr(docsrs, doc(cfg(feature = "seccompiler")))]
pub fn seccomp_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition};
    let only = |arg: u8, value: libc::c_int| -> Result<Vec<SeccompRule>, _> {
        let eq =
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value as u64)?;
        Ok(vec![SeccompRule::new(vec![eq])?])
    };
    SYSCALLS
        .iter()
        .map(|s| {
            let rules = match s.number {
                libc::SYS_fcntl => only(1, libc::F_GETFD)?,
                libc::SYS_msync => only(2, libc::MS_SYNC)?,
                libc::SYS_openat => only(2, libc::O_RDONLY | libc::O_CLOEXEC)?,
                _ => Vec::new(),
            };
            Ok((s.number, rules))
        })
        .collect()
}

/// [`CONTROL_SYSCALLS`] as `seccompiler` rules, for the filter of a VMM's thread that starts
/// and stops channels. Each syscall maps to an empty rule list ("allowed, whatever the
/// arguments") except: `socketpair` with `AF_UNIX` only, `fcntl` with `F_DUPFD_CLOEXEC` only,
/// `ioctl` with `FIONBIO` only, `prctl` with `PR_SET_NAME` or `PR_SET_NO_NEW_PRIVS` only, and
/// `seccomp` with `SECCOMP_SET_MODE_FILTER` only. Such a thread needs [`seccomp_rules`] too: merge the maps as
/// that function says (for a syscall both name, join the lists unless either is empty).
#[cfg(feature = "seccompiler")]
#[cfg_attr(docsrs, doc(cfg(feature = "seccompiler")))]
pub fn control_seccomp_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError>
{
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition};
    let any_of = |arg: u8, values: &[u64]| -> Result<Vec<SeccompRule>, _> {
        values
            .iter()
            .map(|&v| {
                let eq = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)?;
                SeccompRule::new(vec![eq])
            })
            .collect()
    };
    CONTROL_SYSCALLS
        .iter()
        .map(|s| {
            let rules = match s.number {
                libc::SYS_socketpair => any_of(0, &[libc::AF_UNIX as u64])?,
                libc::SYS_fcntl => any_of(1, &[libc::F_DUPFD_CLOEXEC as u64])?,
                // FIONBIO is a c_ulong with glibc and a c_int with musl.
                #[allow(clippy::unnecessary_cast)]
                libc::SYS_ioctl => any_of(1, &[libc::FIONBIO as u64])?,
                libc::SYS_prctl => any_of(
                    0,
                    &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
                )?,
                libc::SYS_seccomp => any_of(0, &[libc::SECCOMP_SET_MODE_FILTER as u64])?,
                _ => Vec::new(),
            };
            Ok((s.number, rules))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_are_unique() {
        let mut names: Vec<_> = SYSCALLS.iter().map(|s| s.name).collect();
        let mut numbers: Vec<_> = SYSCALLS.iter().map(|s| s.number).collect();
        names.sort_unstable();
        names.dedup();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(names.len(), SYSCALLS.len());
        assert_eq!(numbers.len(), SYSCALLS.len());
        assert!(SYSCALLS
            .iter()
            .all(|s| s.number >= 0 && !s.reason.is_empty()));
    }

    #[test]
    fn the_control_list_is_unique_and_apart_from_the_channel_list() {
        let mut numbers: Vec<_> = CONTROL_SYSCALLS.iter().map(|s| s.number).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), CONTROL_SYSCALLS.len());
        for c in CONTROL_SYSCALLS {
            // fcntl is in both, with other arguments.
            assert!(
                c.number == libc::SYS_fcntl
                    || SYSCALLS
                        .iter()
                        .all(|s| s.number != c.number && s.name != c.name),
                "{} is in both lists",
                c.name
            );
            assert!(!c.reason.is_empty());
        }
    }

    #[cfg(feature = "seccompiler")]
    #[test]
    fn control_rules_cover_the_list_and_restrict_five() {
        let rules = control_seccomp_rules().unwrap();
        assert_eq!(rules.len(), CONTROL_SYSCALLS.len());
        assert_eq!(rules[&libc::SYS_prctl].len(), 2);
        for nr in [
            libc::SYS_socketpair,
            libc::SYS_fcntl,
            libc::SYS_ioctl,
            libc::SYS_seccomp,
        ] {
            assert_eq!(rules[&nr].len(), 1);
        }
    }

    #[cfg(feature = "seccompiler")]
    #[test]
    fn rules_cover_the_list_and_restrict_three() {
        let rules = seccomp_rules().unwrap();
        assert_eq!(rules.len(), SYSCALLS.len());
        for s in SYSCALLS {
            let restricted =
                [libc::SYS_fcntl, libc::SYS_msync, libc::SYS_openat].contains(&s.number);
            assert_eq!(
                rules[&s.number].len(),
                usize::from(restricted),
                "{}",
                s.name
            );
        }
    }
}
