//! The monitor's settings: its part of the node config, taken once at start-up.

use std::path::PathBuf;
use std::time::Duration;

use pgwarden_config::{Config, FailoverMode, SynchronousMode};

use crate::actions::{SqlLogin, Target};
use crate::checks::CheckSettings;
use crate::machine::{BackendSpec, Limits, synchronous};

/// How failovers are carried out.
#[derive(Debug, Clone)]
pub struct FailoverSettings {
    /// Builtin SQL or pgpool-style hooks.
    pub mode: FailoverMode,
    /// Login for the builtin actions.
    pub login: SqlLogin,
    /// `failover.command`.
    pub command: String,
    /// `failover.follow_primary_command`.
    pub follow_command: String,
    /// Timeout of each action.
    pub timeout: Duration,
    /// `failover.rejoin_command` (empty: rejoin is refused).
    pub rejoin_command: String,
    /// `failover.rejoin_timeout`.
    pub rejoin_timeout: Duration,
    /// `failover.switchover_drain_timeout`.
    pub drain_timeout: Duration,
    /// `failover.synchronous_mode` and `failover.synchronous_count`.
    pub synchronous: (synchronous::Mode, u32),
}

/// The monitor's settings, from the node config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `node.name`.
    pub node: String,
    /// Where `monitor.sock` lives.
    pub runtime_dir: PathBuf,
    /// Where the state file lives.
    pub state_dir: PathBuf,
    /// The backends, by id.
    pub backends: Vec<Target>,
    /// `allow_failover` per backend.
    pub allow_failover: Vec<bool>,
    /// Thresholds.
    pub limits: Limits,
    /// Health checks.
    pub checks: CheckSettings,
    /// Failover actions.
    pub failover: FailoverSettings,
    /// `watchdog.enabled`: decide with the other nodes through the local
    /// watchdog (see [`crate::coordinator`]) instead of alone.
    pub consensus: bool,
    /// Where Prometheus scrapes `/metrics`.
    pub metrics_listen: std::net::SocketAddr,
    /// Where the status page is served (`monitor.http_listen`), if at all.
    pub http_listen: Option<std::net::SocketAddr>,
    /// The remote admin API (`[admin]`), when `admin.listen` is set.
    pub admin: Option<Admin>,
}

/// The remote admin API: where, and the mutual TLS it is served with.
#[derive(Clone)]
pub struct Admin {
    /// `admin.listen`.
    pub listen: std::net::SocketAddr,
    /// `admin.cert_file` and `key_file`; clients checked against
    /// `admin.client_ca_file`.
    pub tls: std::sync::Arc<pgwarden_tls::rustls::ServerConfig>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// `[admin]`, its files read and checked; `None` when `admin.listen` is off.
pub fn admin(c: &pgwarden_config::AdminConfig) -> Result<Option<Admin>, pgwarden_tls::TlsError> {
    use pgwarden_tls::PemFile;
    let Some(listen) = c.listen else {
        return Ok(None);
    };
    let tls = pgwarden_tls::mutual_server(
        PemFile {
            key: "admin.cert_file",
            path: &c.cert_file,
        },
        PemFile {
            key: "admin.key_file",
            path: &c.key_file,
        },
        PemFile {
            key: "admin.client_ca_file",
            path: &c.client_ca_file,
        },
    )?;
    Ok(Some(Admin { listen, tls }))
}

/// The monitor's TLS towards PostgreSQL, from `[server_tls]`.
pub fn server_tls(
    c: &pgwarden_config::ServerTlsConfig,
) -> Result<pgwarden_tls::postgres::PgTls, pgwarden_tls::TlsError> {
    Ok(match pgwarden_tls::for_servers(c)? {
        Some(config) => pgwarden_tls::postgres::PgTls::new(config, c.mode.required()),
        None => pgwarden_tls::postgres::PgTls::disabled(),
    })
}

impl Settings {
    /// Takes the monitor's part of the node config, reading the TLS files
    /// `[server_tls]` names.
    pub fn from_config(c: &Config) -> Result<Settings, pgwarden_tls::TlsError> {
        let hc = &c.health_check;
        let tls = server_tls(&c.server_tls)?;
        Ok(Settings {
            consensus: c.watchdog.enabled,
            metrics_listen: c.monitor.metrics_listen,
            http_listen: c.monitor.http_listen,
            admin: admin(&c.admin)?,
            node: c.node.name.clone(),
            runtime_dir: c.node.runtime_dir.clone(),
            state_dir: c.node.state_dir.clone(),
            backends: c
                .backends
                .iter()
                .map(|b| Target {
                    id: b.id,
                    name: b.name.clone(),
                    host: b.host.clone(),
                    port: b.port,
                    data_dir: b.data_dir.clone(),
                })
                .collect(),
            allow_failover: c.backends.iter().map(|b| b.allow_failover).collect(),
            limits: Limits {
                max_retries: hc.max_retries,
                max_lag_bytes: c.replication_check.max_lag_bytes,
            },
            checks: CheckSettings {
                period: hc.period,
                timeout: hc.timeout,
                retry_delay: hc.retry_delay,
                recheck_retry_delay: hc.recheck_retry_delay,
                user: hc.user.clone(),
                password: hc.password.as_ref().map(|p| p.expose().to_owned()),
                database: hc.database.clone(),
                tls: tls.clone(),
            },
            failover: FailoverSettings {
                mode: c.failover.mode,
                login: SqlLogin {
                    user: c.failover.user.clone(),
                    password: c.failover.password.as_ref().map(|p| p.expose().to_owned()),
                    database: hc.database.clone(),
                    connect_timeout: hc.timeout.max(Duration::from_secs(2)),
                    tls,
                },
                command: c.failover.command.clone(),
                follow_command: c.failover.follow_primary_command.clone(),
                timeout: c.failover.command_timeout,
                rejoin_command: c.failover.rejoin_command.clone(),
                rejoin_timeout: c.failover.rejoin_timeout,
                drain_timeout: c.failover.switchover_drain_timeout,
                synchronous: (
                    match c.failover.synchronous_mode {
                        SynchronousMode::Off => synchronous::Mode::Off,
                        SynchronousMode::On => synchronous::Mode::On,
                        SynchronousMode::Strict => synchronous::Mode::Strict,
                    },
                    c.failover.synchronous_count,
                ),
            },
        })
    }

    /// What keeps the primary's synchronous standbys
    /// (`failover.synchronous_mode`; "off" still clears a setting it made).
    pub fn keeper(&self) -> Option<synchronous::Keeper> {
        let (mode, count) = self.failover.synchronous;
        Some(synchronous::Keeper::new(mode, count))
    }

    /// The backends as the machine sees them.
    pub fn specs(&self) -> Vec<BackendSpec> {
        self.backends
            .iter()
            .zip(&self.allow_failover)
            .map(|(t, allow)| BackendSpec {
                name: t.name.clone(),
                host: t.host.clone(),
                port: t.port,
                allow_failover: *allow,
            })
            .collect()
    }

    /// Whether `failover.rejoin_command` is set (without it a rejoin is refused).
    pub fn rejoin_enabled(&self) -> bool {
        !self.failover.rejoin_command.trim().is_empty()
    }
}
