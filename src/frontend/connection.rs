// Copyright 2026 The virtio-fs-dax Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`Connection`]: connecting to the backend and learning what it offers.

use std::io;
use std::thread;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;

use super::{Error, Result, SessionConfig, VHOST_USER_F_PROTOCOL_FEATURES};
use crate::protocol::Dialect;

/// Protocol features this crate asks for when the backend offers them. `SHMEM` is added when the
/// device has a window and speaks the standard dialect. `CONFIGURE_MEM_SLOTS` is for memory
/// hotplug (see the module documentation), `INFLIGHT_SHMFD` for the requests in flight when a
/// backend restarts ([`InflightRegion`](super::InflightRegion)).
pub fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::BACKEND_SEND_FD
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::RESET_DEVICE
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
}

/// Protocol features the DAX window needs in `dialect`.
pub fn dax_protocol_features(dialect: Dialect) -> VhostUserProtocolFeatures {
    let base = VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::BACKEND_SEND_FD
        | VhostUserProtocolFeatures::REPLY_ACK;
    match dialect {
        Dialect::Standard => base | VhostUserProtocolFeatures::SHMEM,
        // The legacy dialect has no feature bit of its own.
        Dialect::Legacy => base,
    }
}

/// A connected backend: `SET_OWNER` done, virtio and protocol features known. virtiofsd serves
/// one connection and exits when it closes, so the connection made to learn the features is the
/// one the session then uses.
pub struct Connection {
    pub(super) frontend: Frontend,
    pub(super) backend_features: u64,
    pub(super) backend_protocol: Option<VhostUserProtocolFeatures>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("backend_features", &self.backend_features)
            .field("backend_protocol", &self.backend_protocol)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects (with the configured bounded retry), sends `SET_OWNER`, reads the backend's virtio
    /// features and, when it offers `VHOST_USER_F_PROTOCOL_FEATURES`, its protocol features
    /// (`GET_PROTOCOL_FEATURES`; nothing is acked yet, [`Session::start`](super::Session::start)
    /// does that).
    pub fn open(cfg: &SessionConfig, max_queues: u64) -> Result<Connection> {
        let mut frontend = connect(cfg, max_queues)?;
        frontend.set_owner().map_err(Error::SetOwner)?;
        let backend_features = frontend.get_features().map_err(Error::GetFeatures)?;
        let backend_protocol = if backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            Some(
                frontend
                    .get_protocol_features()
                    .map_err(Error::GetProtocolFeatures)?,
            )
        } else {
            None
        };
        Ok(Connection {
            frontend,
            backend_features,
            backend_protocol,
        })
    }

    /// The virtio features the backend offers.
    pub fn backend_features(&self) -> u64 {
        self.backend_features
    }

    /// The protocol features the backend offers (its last answer to `GET_PROTOCOL_FEATURES`),
    /// or `None` when it does not offer `VHOST_USER_F_PROTOCOL_FEATURES`. Bits vhost does not
    /// know are dropped.
    pub fn backend_protocol_features(&self) -> Option<VhostUserProtocolFeatures> {
        self.backend_protocol
    }

    /// The protocol features of [`dax_protocol_features`]`(dialect)` this backend does not
    /// offer (all of them when it offers no protocol features): empty when it can serve a DAX
    /// window in `dialect`.
    ///
    /// The legacy dialect has no feature bit of its own, so any backend with a backend channel
    /// that passes file descriptors can serve it as far as this check knows, one that never
    /// sends `FS_MAP` (virtiofsd 1.14) included.
    pub fn dax_missing(&self, dialect: Dialect) -> VhostUserProtocolFeatures {
        dax_protocol_features(dialect)
            - self
                .backend_protocol
                .unwrap_or_else(VhostUserProtocolFeatures::empty)
    }
}

fn connect(cfg: &SessionConfig, max_queues: u64) -> Result<Frontend> {
    let attempts = cfg.connect_attempts.max(1);
    let mut n = 0;
    loop {
        n += 1;
        match Frontend::connect(&cfg.socket_path, max_queues) {
            Ok(f) => return Ok(f),
            Err(vhost::Error::VhostUserProtocol(source)) if n >= attempts => {
                return Err(Error::Connect {
                    path: cfg.socket_path.clone(),
                    attempts: n,
                    source,
                })
            }
            Err(vhost::Error::VhostUserProtocol(_)) => thread::sleep(cfg.connect_interval),
            Err(other) => {
                return Err(Error::Connect {
                    path: cfg.socket_path.clone(),
                    attempts: n,
                    source: vhost::vhost_user::Error::SocketConnect(io::Error::other(
                        other.to_string(),
                    )),
                })
            }
        }
    }
}
