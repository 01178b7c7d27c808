//! `[[backends]]`: the PostgreSQL servers, identified by position.

use std::net::Ipv6Addr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::validate;

/// One PostgreSQL server, from a `[[backends]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Position in the `backends` list (0, 1, 2...): the id used in the
    /// cluster state, metrics and hooks (pgpool's backend node id).
    pub id: usize,
    /// `backends[N].name`: unique; defaults to `"<host>:<port>"`.
    pub name: String,
    /// `backends[N].host`: host name or IP address. Required.
    pub host: String,
    /// `backends[N].port`.
    pub port: u16,
    /// `backends[N].data_dir`: passed to hooks as `%D`; empty if unknown.
    pub data_dir: PathBuf,
    /// `backends[N].weight`: relative share of load-balanced reads; 0 =
    /// never chosen for load balancing.
    pub weight: u32,
    /// `backends[N].allow_failover`: whether a failure of this backend
    /// triggers failover (false: it is only marked down).
    pub allow_failover: bool,
}

impl Backend {
    /// `"host:port"`, with IPv6 addresses in brackets, ready for
    /// `ToSocketAddrs` or a log line.
    pub fn addr(&self) -> String {
        if self.host.parse::<Ipv6Addr>().is_ok() {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Default of `backends[N].port`.
pub const DEFAULT_BACKEND_PORT: u16 = 5432;

/// A `[[backends]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    #[serde(default)]
    name: Option<String>,
    host: String,
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default)]
    data_dir: PathBuf,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default = "default_allow_failover")]
    allow_failover: bool,
}

fn default_port() -> u16 {
    DEFAULT_BACKEND_PORT
}

fn default_weight() -> u32 {
    1
}

fn default_allow_failover() -> bool {
    true
}

/// Validates the list: at least one backend, each well-formed, names and
/// addresses unique.
pub(crate) fn validate_backends(raw: Vec<RawBackend>) -> Result<Vec<Backend>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::invalid(
            "backends",
            "at least one [[backends]] table is required",
        ));
    }
    let mut backends: Vec<Backend> = Vec::with_capacity(raw.len());
    for (id, raw) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("backends[{id}].{field}");
        validate::host(&key("host"), &raw.host)?;
        validate::port(&key("port"), raw.port)?;
        let mut backend = Backend {
            id,
            name: String::new(),
            host: raw.host,
            port: raw.port,
            data_dir: raw.data_dir,
            weight: raw.weight,
            allow_failover: raw.allow_failover,
        };
        backend.name = match raw.name {
            Some(name) => {
                validate::non_empty(&key("name"), &name)?;
                name
            }
            None => backend.addr(),
        };
        if let Some(other) = backends.iter().find(|b| b.name == backend.name) {
            return Err(ConfigError::invalid(
                key("name"),
                format!(
                    "duplicate backend name {:?} (also backends[{}])",
                    backend.name, other.id
                ),
            ));
        }
        if let Some(other) = backends
            .iter()
            .find(|b| b.host == backend.host && b.port == backend.port)
        {
            return Err(ConfigError::invalid(
                key("host"),
                format!(
                    "duplicate backend address {} (also backends[{}])",
                    backend.addr(),
                    other.id
                ),
            ));
        }
        backends.push(backend);
    }
    Ok(backends)
}
