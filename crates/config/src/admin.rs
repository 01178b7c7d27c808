//! `[admin]`: the gRPC admin API over TCP with mutual TLS, for operators
//! elsewhere (`pgwardenctl --host`; pgpool's PCP port). Served by
//! pgwarden-monitor, which passes each call on to the daemon's unix socket.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use crate::error::ConfigError;
use crate::validate;

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// `admin.listen`: e.g. `"0.0.0.0:9898"`; `""` (the default) = off.
    #[serde(deserialize_with = "empty_as_off")]
    pub listen: Option<SocketAddr>,
    /// `admin.cert_file`: the node's certificate, which `pgwardenctl`
    /// checks against its `--ca` for the host it dials.
    pub cert_file: PathBuf,
    /// `admin.key_file`: its private key (mode 600 or 640).
    pub key_file: PathBuf,
    /// `admin.client_ca_file`: the CA that signs operators' client
    /// certificates; a client without one it signed is refused.
    pub client_ca_file: PathBuf,
}

impl AdminConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let files = [
            ("admin.cert_file", self.cert_file.as_path()),
            ("admin.key_file", self.key_file.as_path()),
            ("admin.client_ca_file", self.client_ca_file.as_path()),
        ];
        if self.listen.is_some()
            && let Some((key, _)) = files.iter().find(|(_, p)| p.as_os_str().is_empty())
        {
            return Err(ConfigError::invalid(
                *key,
                "required when admin.listen is set: the admin API is served only with mutual TLS",
            ));
        }
        validate::together(&files)
    }
}

/// `""` = off; anything else must be `address:port`.
pub(crate) fn empty_as_off<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let value = String::deserialize(d)?;
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        serde::de::Error::custom("expected \"address:port\" (e.g. \"0.0.0.0:9898\") or \"\"")
    })
}
