// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A virtio-fs DAX window and its vhost-user backend channel, for rust-vmm based VMMs.
//!
//! See the README for the threat model and the two commands.
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod channel;
pub mod io;
pub mod metrics;
pub mod protocol;
pub mod window;

pub use channel::{BackendChannel, BackendChannelBuilder, ChannelThread, Outcome, RequestError};
pub use io::IoSpace;
pub use metrics::{FsMetrics, Refusal};
pub use protocol::Dialect;
pub use window::{DaxWindow, Policy};
