//! What the proxy needs from the node config, typed and ready to use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How plain-text secrets in the auth file are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainAuth {
    /// SCRAM-SHA-256 (the default, as in PostgreSQL 14+).
    Scram,
    /// md5, for old drivers.
    Md5,
}

/// One PostgreSQL server the proxy may route to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendAddr {
    /// Position in `[[backends]]`.
    pub id: usize,
    /// `backends[].name`.
    pub name: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `backends[].weight`: its share of load-balanced reads.
    pub weight: u32,
}

/// How far behind a standby may be and still take load-balanced reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagBounds {
    /// `replication_check.max_lag_bytes`.
    pub bytes: u64,
    /// `replication_check.max_lag_time`.
    pub time: Duration,
}

/// How the proxy finds the primary until the monitor tells it: it asks every
/// backend `pg_is_in_recovery()` with the health-check role.
#[derive(Clone)]
pub struct Discovery {
    /// How often to ask.
    pub period: Duration,
    /// Connect and query timeout.
    pub timeout: Duration,
    /// Role to connect as.
    pub user: String,
    /// Its password, if any.
    pub password: Option<String>,
    /// Database to connect to.
    pub database: String,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("period", &self.period)
            .field("timeout", &self.timeout)
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// The proxy's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Clients beyond this get SQLSTATE 53300.
    pub max_client_connections: usize,
    /// Server connections per (backend, user, database, startup parameters).
    pub pool_size: usize,
    /// True: a client holds a server connection per transaction only.
    pub transaction_mode: bool,
    /// Transaction mode: prepared statements kept per server connection
    /// (0: named statements pin their client).
    pub max_prepared_statements: usize,
    /// The `"user" "secret"` file.
    pub auth_file: PathBuf,
    /// How plain-text secrets are checked.
    pub plain_auth: PlainAuth,
    /// Run when a client leaves, before the connection is cached; empty: none.
    pub server_reset_query: String,
    /// How long a client waits for a server connection from a full pool.
    pub pool_timeout: Duration,
    /// Connect + startup + authentication timeout for a new server connection.
    pub server_connect_timeout: Duration,
    /// Idle cached connections older than this are closed; `None`: never.
    pub server_idle_timeout: Option<Duration>,
    /// Connections older than this are closed when released; `None`: never.
    pub server_lifetime: Option<Duration>,
    /// Startup + authentication of a client must finish within this.
    pub client_login_timeout: Duration,
    /// On shutdown, how long sessions may go on before they are closed.
    pub shutdown_timeout: Duration,
    /// Longer protocol messages are refused.
    pub max_message_bytes: u32,
    /// TCP keepalive on client and server sockets.
    pub tcp_keepalive: bool,
    /// The backends, in id order.
    pub backends: Vec<BackendAddr>,
    /// Primary discovery (when not following the monitor).
    pub discovery: Discovery,
    /// Route by the monitor's cluster state.
    pub follow_monitor: bool,
    /// Stop routing when the monitor has been unreachable this long.
    pub monitor_stale_after: Duration,
    /// `watchdog.enabled`: route only under this node's lease (see
    /// `pgwarden_proto::lease`), taken from its watchdog.
    pub watchdog: bool,
    /// How long new work waits for a primary when there is none or it
    /// cannot be reached; zero = no wait.
    pub failover_hold_timeout: Duration,
    /// Where `monitor.sock` and `proxy.sock` live.
    pub runtime_dir: PathBuf,
    /// Where Prometheus scrapes `/metrics`.
    pub metrics_listen: std::net::SocketAddr,
    /// TLS with clients: the mode and the files.
    pub client_tls: ClientTlsFiles,
    /// TLS with servers (`[server_tls]`).
    pub server_tls: pgwarden_config::ServerTlsConfig,
    /// `proxy.hba_file` (empty: none).
    pub hba_file: PathBuf,
    /// `proxy.auth_failure_delay` (zero: none).
    pub auth_failure_delay: Duration,
    /// `proxy.auth_failure_max_delay`.
    pub auth_failure_max_delay: Duration,
    /// `proxy.load_balance`.
    pub load_balance: pgwarden_config::LoadBalance,
    /// `proxy.read_only_listen`.
    pub read_only_listen: Option<SocketAddr>,
    /// `proxy.read_your_writes`.
    pub read_your_writes: bool,
    /// Which statements only read (`proxy.read_only_functions` in it).
    pub classifier: std::sync::Arc<crate::route::classify::Classifier>,
    /// How far behind a standby may be and still take reads.
    pub lag_bounds: LagBounds,
    /// `replication_check.period`: how often the proxy takes the monitor's
    /// lag measurements when it balances reads.
    pub replication_period: Duration,
}

/// `proxy.client_tls_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// `proxy.client_tls_mode`.
    pub mode: pgwarden_config::ClientTlsMode,
    /// `proxy.client_tls_cert_file`.
    pub cert: PathBuf,
    /// `proxy.client_tls_key_file`.
    pub key: PathBuf,
    /// `proxy.client_tls_ca_file` (empty: none).
    pub ca: PathBuf,
}

impl Settings {
    /// True when some reads go to standbys (`load_balance`, or a
    /// `read_only_listen`): the proxy follows which servers may take them.
    pub fn reads_apart(&self) -> bool {
        self.load_balance != pgwarden_config::LoadBalance::Off || self.read_only_listen.is_some()
    }

    /// Takes the proxy's part of the node config.
    pub fn from_config(c: &pgwarden_config::Config) -> Settings {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        Settings {
            listen: c.proxy.listen,
            max_client_connections: c.proxy.max_client_connections as usize,
            pool_size: c.proxy.pool_size as usize,
            transaction_mode: c.proxy.pool_mode == pgwarden_config::PoolMode::Transaction,
            max_prepared_statements: c.proxy.max_prepared_statements as usize,
            auth_file: c.proxy.auth_file.clone(),
            plain_auth: match c.proxy.auth_type {
                pgwarden_config::AuthType::ScramSha256 => PlainAuth::Scram,
                pgwarden_config::AuthType::Md5 => PlainAuth::Md5,
            },
            server_reset_query: c.proxy.server_reset_query.clone(),
            pool_timeout: c.proxy.pool_timeout,
            server_connect_timeout: c.proxy.server_connect_timeout,
            server_idle_timeout: nonzero(c.proxy.server_idle_timeout),
            server_lifetime: nonzero(c.proxy.server_lifetime),
            client_login_timeout: c.proxy.client_login_timeout,
            shutdown_timeout: c.proxy.shutdown_timeout,
            max_message_bytes: c.proxy.max_message_bytes,
            tcp_keepalive: c.proxy.tcp_keepalive,
            backends: c
                .backends
                .iter()
                .map(|b| BackendAddr {
                    id: b.id,
                    name: b.name.clone(),
                    host: b.host.clone(),
                    port: b.port,
                    weight: b.weight,
                })
                .collect(),
            follow_monitor: c.proxy.follow_monitor,
            monitor_stale_after: c.proxy.monitor_stale_after,
            watchdog: c.watchdog.enabled,
            failover_hold_timeout: c.proxy.failover_hold_timeout,
            runtime_dir: c.node.runtime_dir.clone(),
            metrics_listen: c.proxy.metrics_listen,
            client_tls: ClientTlsFiles {
                mode: c.proxy.client_tls_mode,
                cert: c.proxy.client_tls_cert_file.clone(),
                key: c.proxy.client_tls_key_file.clone(),
                ca: c.proxy.client_tls_ca_file.clone(),
            },
            server_tls: c.server_tls.clone(),
            hba_file: c.proxy.hba_file.clone(),
            auth_failure_delay: c.proxy.auth_failure_delay,
            auth_failure_max_delay: c.proxy.auth_failure_max_delay,
            load_balance: c.proxy.load_balance,
            read_only_listen: c.proxy.read_only_listen,
            read_your_writes: c.proxy.read_your_writes,
            classifier: std::sync::Arc::new(crate::route::classify::Classifier::new(
                &c.proxy.read_only_functions,
            )),
            lag_bounds: LagBounds {
                bytes: c.replication_check.max_lag_bytes,
                time: c.replication_check.max_lag_time,
            },
            replication_period: c.replication_check.period,
            discovery: Discovery {
                period: c.health_check.period,
                timeout: c.health_check.timeout,
                user: c.health_check.user.clone(),
                password: c
                    .health_check
                    .password
                    .as_ref()
                    .map(|p| p.expose().to_owned()),
                database: c.health_check.database.clone(),
            },
        }
    }
}
