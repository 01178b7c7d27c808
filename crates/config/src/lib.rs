//! The pgwarden node config: one TOML file per node, read by every daemon
//! and by `pgwardenctl`.
//!
//! [`Config::load`] reads the file (default [`DEFAULT_CONFIG_PATH`]),
//! overlays `PGWARDEN_*` environment variables (`__` separates levels:
//! `PGWARDEN_PROXY__LISTEN=127.0.0.1:7000` sets `proxy.listen`), then
//! parses and validates in two steps:
//!
//! 1. **Parse.** serde with `deny_unknown_fields` turns the text into typed
//!    values: durations (`"500ms"`, `"2s"`, `"10m"`) into
//!    [`std::time::Duration`], listen addresses into
//!    [`std::net::SocketAddr`], enums ([`PoolMode`], [`AuthType`],
//!    [`FailoverMode`]) into Rust enums. Unknown keys, missing required
//!    keys and malformed values fail here.
//! 2. **Validate.** Ranges (`proxy.pool_size >= 1`, ports `1..=65535`,
//!    timeouts above zero), cross-key rules (`failover.command` is required
//!    when `failover.mode = "command"`; `password` and `password_file` are
//!    exclusive), unique backend names, `host:port` peers; secret files are
//!    read and refused if world-readable.
//!
//! Either step's failure is a [`ConfigError`] that names the key
//! (`proxy.pool_size`, `backends[1].port`, `health_check.period`): a
//! daemon never starts on a config it half understood.
//!
//! The sections are plain structs with public fields: [`NodeConfig`],
//! [`ProxyConfig`], [`MonitorConfig`], [`Backend`] (one per
//! `[[backends]]`, its `id` being its position), [`HealthCheckConfig`],
//! [`ReplicationCheckConfig`], [`FailoverConfig`] and [`WatchdogConfig`].
//! Every key but `node.name` and `backends[N].host` has a default, shown in
//! `deploy/pgwarden.example.toml` (a test keeps that file and the
//! `Default` impls in step). Passwords are [`Secret`]s, which print as
//! `***`; [`check_secret_file_mode`] is the permission check the daemons
//! also apply to `proxy.auth_file` and `watchdog.auth_key_file`.

#[macro_use]
mod spelled;
#[macro_use]
mod secret;

mod admin;
mod backend;
mod checks;
mod env;
mod error;
mod failover;
mod monitor;
mod node;
mod proxy;
mod server_tls;
mod validate;
mod watchdog;

use std::fs;
use std::path::Path;

use figment::Figment;
use figment::providers::{Format as _, Toml};
use serde::Deserialize;

pub use admin::AdminConfig;
pub use backend::{Backend, DEFAULT_BACKEND_PORT};
pub use checks::{HealthCheckConfig, ReplicationCheckConfig};
pub use error::ConfigError;
pub use failover::{FailoverConfig, FailoverMode, SynchronousMode};
pub use monitor::MonitorConfig;
pub use node::{DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, NodeConfig};
pub use proxy::{AuthType, ClientTlsMode, LoadBalance, PoolMode, ProxyConfig};
pub use secret::{Secret, check_secret_file_mode};
pub use server_tls::{ServerTlsConfig, ServerTlsMode};
pub use watchdog::WatchdogConfig;

/// Where daemons and `pgwardenctl` look for the config without `--config`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/pgwarden/pgwarden.toml";

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "PGWARDEN_";

/// The whole node config, parsed and validated.
///
/// Only obtainable through [`Config::load`], [`Config::from_figment`] or
/// [`Config::from_toml_str`], so holding one means every check passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[node]`.
    pub node: NodeConfig,
    /// `[proxy]`.
    pub proxy: ProxyConfig,
    /// `[monitor]`.
    pub monitor: MonitorConfig,
    /// `[[backends]]`, in file order; `backends[i].id == i`. Never empty.
    pub backends: Vec<Backend>,
    /// `[health_check]`.
    pub health_check: HealthCheckConfig,
    /// `[replication_check]`.
    pub replication_check: ReplicationCheckConfig,
    /// `[failover]`.
    pub failover: FailoverConfig,
    /// `[watchdog]`.
    pub watchdog: WatchdogConfig,
    /// `[server_tls]`.
    pub server_tls: ServerTlsConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
}

/// The file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: NodeConfig,
    #[serde(default)]
    proxy: ProxyConfig,
    #[serde(default)]
    monitor: MonitorConfig,
    #[serde(default)]
    backends: Vec<backend::RawBackend>,
    #[serde(default)]
    health_check: checks::RawHealthCheck,
    #[serde(default)]
    replication_check: ReplicationCheckConfig,
    #[serde(default)]
    failover: failover::RawFailover,
    #[serde(default)]
    watchdog: WatchdogConfig,
    #[serde(default)]
    server_tls: ServerTlsConfig,
    #[serde(default)]
    admin: AdminConfig,
}

/// The keys that may hold a password in the config file itself.
const INLINE_SECRETS: &[&str] = &["health_check.password", "failover.password"];

/// Refuses a config file every local user can read when it holds a
/// password inline, as secret files are refused (the `*_password_file`
/// keys, or a tighter mode, are the way out).
fn check_inline_secrets(path: &Path) -> Result<(), ConfigError> {
    let file = Figment::from(Toml::file_exact(path));
    for key in INLINE_SECRETS {
        let inline = file
            .find_value(key)
            .ok()
            .and_then(|v| v.into_string())
            .is_some_and(|s| !s.is_empty());
        if !inline {
            continue;
        }
        if let Err(why) = check_secret_file_mode(path) {
            return Err(ConfigError::invalid(
                *key,
                format!(
                    "a password written in {}, which {why}; or put it in {key}_file",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

impl Config {
    /// Reads the TOML file at `path` (which must exist), applies
    /// `PGWARDEN_*` environment overrides, then parses and validates.
    ///
    /// Only variables with a `__` after the prefix are config keys
    /// (`PGWARDEN_PROXY__POOL_SIZE`); others such as `PGWARDEN_LOG` are left
    /// to whoever reads them. Values stay text (a password `0123` keeps its
    /// zero; numeric and boolean keys parse it), except arrays such as
    /// `PGWARDEN_WATCHDOG__PEERS='["pg02:9000"]'`. `backends` cannot be
    /// overridden from the environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        // Toml::file silently yields nothing for a missing file (and
        // searches parent directories for a relative one): check first.
        fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        check_inline_secrets(path)?;
        let figment = Figment::new()
            .merge(Toml::file_exact(path))
            .merge(env::EnvOverrides::new());
        Self::from_figment(figment)
    }

    /// Parses and validates whatever `figment` provides, for callers that
    /// assemble their own providers.
    ///
    /// Numbers and booleans given as strings (`"5"`, `"true"`) are accepted,
    /// as environment variables are always text.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let raw: RawConfig = figment
            .extract_lossy()
            .map_err(|e| ConfigError::from_figment(e, &figment))?;
        raw.validate()
    }

    /// Parses and validates a TOML document, without environment overrides
    /// (for tests and `pgwardenctl config check` on piped input).
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(toml)))
    }

    /// The backend with this id, if any.
    pub fn backend(&self, id: usize) -> Option<&Backend> {
        self.backends.get(id)
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        self.node.validate()?;
        self.proxy.validate()?;
        let backends = backend::validate_backends(self.backends)?;
        let health_check = self.health_check.validate()?;
        self.replication_check.validate()?;
        let failover = self.failover.validate()?;
        self.watchdog.validate()?;
        self.server_tls.validate()?;
        self.admin.validate()?;
        self.monitor.validate()?;
        Ok(Config {
            node: self.node,
            proxy: self.proxy,
            monitor: self.monitor,
            backends,
            health_check,
            replication_check: self.replication_check,
            failover,
            watchdog: self.watchdog,
            server_tls: self.server_tls,
            admin: self.admin,
        })
    }
}

#[cfg(test)]
mod tests;
