//! `[server_tls]`: TLS on every connection pgwarden makes to PostgreSQL
//! (the proxy's pools, the monitor's checks, builtin failover, rejoin's
//! `primary_conninfo`), with libpq's `sslmode` meanings.

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::ConfigError;

spelled_enum! {
    /// `server_tls.mode`, as libpq's `sslmode`.
    pub enum ServerTlsMode {
        /// `"disable"`: plain text.
        Disable = "disable",
        /// `"prefer"` (the default, as libpq's): TLS when the server offers
        /// it, plain text otherwise; the certificate is not checked.
        #[default]
        Prefer = "prefer",
        /// `"require"`: TLS or no connection; the certificate is not checked.
        Require = "require",
        /// `"verify-ca"`: TLS, with a certificate signed by `ca_file`.
        VerifyCa = "verify-ca",
        /// `"verify-full"`: that, and the certificate names the backend's host.
        VerifyFull = "verify-full",
    }
}

impl ServerTlsMode {
    /// TLS is asked for at all.
    pub fn enabled(self) -> bool {
        self != Self::Disable
    }

    /// A server that does not offer TLS is refused.
    pub fn required(self) -> bool {
        !matches!(self, Self::Disable | Self::Prefer)
    }
}

/// `[server_tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// `server_tls.mode`.
    pub mode: ServerTlsMode,
    /// `server_tls.ca_file`: CA certificates the servers' certificates are
    /// checked against; required by `verify-ca` and `verify-full`.
    pub ca_file: PathBuf,
    /// `server_tls.cert_file`: a client certificate for servers that ask
    /// for one (`cert` auth in pg_hba.conf); with `key_file`.
    pub cert_file: PathBuf,
    /// `server_tls.key_file`: its private key (mode 600 or 640).
    pub key_file: PathBuf,
}

impl ServerTlsConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if matches!(
            self.mode,
            ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull
        ) && self.ca_file.as_os_str().is_empty()
        {
            return Err(ConfigError::invalid(
                "server_tls.ca_file",
                format!("required when server_tls.mode is \"{}\"", self.mode),
            ));
        }
        crate::validate::together(&[
            ("server_tls.cert_file", self.cert_file.as_path()),
            ("server_tls.key_file", self.key_file.as_path()),
        ])?;
        Ok(())
    }
}
