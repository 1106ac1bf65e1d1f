// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`RequestError`], why one request was refused, and [`Error`], why the channel stopped.

use std::io;
use std::time::Duration;

use super::HookError;
use crate::metrics::Refusal;
use crate::protocol::DecodeError;
use crate::window;

/// Why one request was refused. [`RequestError::errno`] is the one place where refusals become
/// the errno the backend is told; [`RequestError::reason`] picks the counter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The message is malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The request names a shared memory region this device does not have.
    #[error("unknown shared memory region {shmid}")]
    UnknownShmid {
        /// The region id.
        shmid: u8,
    },
    /// The window refused or failed.
    #[error(transparent)]
    Window(#[from] window::Error),
    /// The IO path refused or failed.
    #[error(transparent)]
    Io(#[from] crate::io::Error),
    /// The kernel dropped descriptors sent with the message (`MSG_CTRUNC`) because this process
    /// could not take them: it is at its descriptor limit (`RLIMIT_NOFILE`). The message was read
    /// whole and the descriptors that did come are closed.
    #[error("the descriptors sent with the message were dropped: this process is at its descriptor limit")]
    FdsLost,
}

impl RequestError {
    /// The errno that stands for this refusal on the wire.
    pub fn errno(&self) -> i32 {
        match self {
            RequestError::Decode(e) => match e {
                DecodeError::BadVersion { .. }
                | DecodeError::ReplyFlag { .. }
                | DecodeError::UnknownHeaderFlags { .. } => libc::EPROTO,
                DecodeError::Oversized { .. } => libc::EMSGSIZE,
                DecodeError::BadSize { .. } => libc::EINVAL,
                DecodeError::Unsupported { .. } => libc::ENOSYS,
                DecodeError::BadFdCount { .. } => libc::EBADF,
                DecodeError::ZeroLength => libc::EINVAL,
                DecodeError::Overflow { .. } => libc::EOVERFLOW,
                DecodeError::BadFlags { .. } => libc::EINVAL,
            },
            RequestError::UnknownShmid { .. } => libc::ENXIO,
            RequestError::Window(e) => e.errno(),
            RequestError::Io(e) => e.errno(),
            // The descriptors were dropped when the kernel could not give them a slot in this
            // process's table, which is what EMFILE means; ENFILE would blame the system-wide
            // file table, which received files (they exist already) do not touch.
            RequestError::FdsLost => libc::EMFILE,
        }
    }

    /// The counter this refusal goes to.
    pub fn reason(&self) -> Refusal {
        use window::RangeError as R;
        match self {
            RequestError::Decode(e) => match e {
                DecodeError::BadVersion { .. }
                | DecodeError::ReplyFlag { .. }
                | DecodeError::UnknownHeaderFlags { .. } => Refusal::Header,
                DecodeError::Oversized { .. } | DecodeError::BadSize { .. } => Refusal::Size,
                DecodeError::Unsupported { .. } => Refusal::Unsupported,
                DecodeError::BadFdCount { .. } => Refusal::FdCount,
                DecodeError::ZeroLength => Refusal::ZeroLength,
                DecodeError::Overflow { .. } => Refusal::Overflow,
                DecodeError::BadFlags { .. } => Refusal::Flags,
            },
            RequestError::UnknownShmid { .. } => Refusal::Shmid,
            RequestError::Window(e) => match e {
                window::Error::Range { reason, .. } => match reason {
                    R::Overflow => Refusal::Overflow,
                    R::OutOfWindow => Refusal::OutOfWindow,
                    R::Misaligned => Refusal::Misaligned,
                    R::Empty => Refusal::ZeroLength,
                    R::Busy => Refusal::Overlap,
                    R::NotMapped => Refusal::NotMapped,
                    R::Limit => Refusal::Limit,
                },
                window::Error::Stale { .. } => Refusal::Stale,
                window::Error::InvalidSize { .. }
                | window::Error::InvalidGranule { .. }
                | window::Error::Region { .. }
                | window::Error::Poisoned
                | window::Error::Reserve { .. }
                | window::Error::Map { .. }
                | window::Error::Unmap { .. }
                | window::Error::Sync { .. } => Refusal::Syscall,
            },
            RequestError::Io(e) => match e {
                crate::io::Error::BadAddress { .. } | crate::io::Error::WindowOverlap { .. } => {
                    Refusal::BadAddress
                }
                crate::io::Error::Transfer { .. } => Refusal::Syscall,
            },
            RequestError::FdsLost => Refusal::FdsLost,
        }
    }
}

/// Why the channel stopped serving. Refused requests are not errors of the channel: they are
/// answered and counted, and [`BackendChannel::handle_one`](super::BackendChannel::handle_one)
/// returns `Ok`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend closed its end between two messages.
    #[error("the backend closed the channel")]
    Disconnected,
    /// The backend closed its end in the middle of a message.
    #[error(
        "the backend closed the channel in the middle of a message ({got} of {expected} bytes)"
    )]
    Truncated {
        /// Bytes received of the part being read (the header, or the body it announced).
        got: usize,
        /// Size of that part.
        expected: usize,
    },
    /// Receiving failed.
    #[error("receiving from the backend channel failed")]
    Recv(#[source] io::Error),
    /// Sending a reply failed.
    #[error("replying on the backend channel failed")]
    Send(#[source] io::Error),
    /// Setting up the channel thread failed.
    #[error("setting up the channel thread failed")]
    Thread(#[source] io::Error),
    /// The thread-start hook
    /// ([`BackendChannelBuilder::on_thread_start`](super::BackendChannelBuilder::on_thread_start))
    /// failed: the thread ended without serving anything.
    #[error("the channel thread's start hook failed")]
    ThreadStart(#[source] HookError),
    /// The thread did not park within the bound (it was inside a request that took longer); the
    /// pause was withdrawn and the thread serves on.
    #[error("the channel thread did not pause within {0:?}")]
    PauseTimeout(Duration),
    /// The channel thread panicked.
    #[error("the channel thread panicked")]
    Panicked,
    /// The channel thread did not end within the bound; it was left to end by itself. Its
    /// window lease no longer maps once the window is reset.
    #[error("the channel thread did not stop within {0:?}")]
    StopTimeout(Duration),
}

/// Result of channel operations.
pub type Result<T> = std::result::Result<T, Error>;
