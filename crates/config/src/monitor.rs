//! `[monitor]`: the pgwarden-monitor daemon (health and replication checks).

use std::net::SocketAddr;

use serde::Deserialize;

/// `[monitor]`: settings of the monitor daemon itself; what it checks is in
/// [`crate::HealthCheckConfig`] and [`crate::ReplicationCheckConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// `monitor.metrics_listen`: Prometheus `/metrics` of the monitor.
    pub metrics_listen: SocketAddr,
    /// `monitor.http_listen`: the read-only status page (`GET /`, its JSON
    /// under `/api/`, and a stream of changes); off unless set. The same
    /// address as `metrics_listen` serves both on one listener; `""` = off.
    #[serde(deserialize_with = "crate::admin::empty_as_off")]
    pub http_listen: Option<SocketAddr>,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9931)),
            http_listen: None,
        }
    }
}

impl MonitorConfig {
    /// One port, two addresses (`0.0.0.0:9931` and `127.0.0.1:9931`) cannot
    /// be bound twice: the same address shares one listener, another port
    /// gets its own.
    pub(crate) fn validate(&self) -> Result<(), crate::ConfigError> {
        match self.http_listen {
            Some(http)
                if http.port() == self.metrics_listen.port() && http != self.metrics_listen =>
            {
                Err(crate::ConfigError::invalid(
                    "monitor.http_listen",
                    format!(
                        "shares its port with monitor.metrics_listen ({}) on another address: \
                         give both the same address (one listener serves the page and /metrics) \
                         or another port",
                        self.metrics_listen
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}
