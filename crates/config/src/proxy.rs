//! `[proxy]`: the client-facing listener and its server connection pools.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::validate;

spelled_enum! {
    /// How long a server connection stays bound to one client.
    pub enum PoolMode {
        /// `"session"`: for the whole client session (pgpool's connection cache).
        #[default]
        Session = "session",
        /// `"transaction"`: only for the duration of a transaction.
        Transaction = "transaction",
    }
}

spelled_enum! {
    /// `proxy.load_balance`: where reads go.
    pub enum LoadBalance {
        /// `"off"`: everything goes to the primary.
        #[default]
        Off = "off",
        /// `"session"`: a client picks its read server once (pgpool's
        /// default), and keeps it while it is eligible.
        Session = "session",
        /// `"statement"`: each autocommit read or read-only transaction
        /// picks one.
        Statement = "statement",
    }
}

spelled_enum! {
    /// How clients whose `proxy.auth_file` secret is plain text are
    /// authenticated. SCRAM and md5 secrets always use their own method.
    pub enum AuthType {
        /// `"scram-sha-256"`.
        #[default]
        ScramSha256 = "scram-sha-256",
        /// `"md5"`, for old clients only.
        Md5 = "md5",
    }
}

spelled_enum! {
    /// `proxy.client_tls_mode`: TLS between clients and the proxy.
    pub enum ClientTlsMode {
        /// `"disable"`: SSLRequest is answered `N` (the default, as PgBouncer's).
        #[default]
        Disable = "disable",
        /// `"allow"`: TLS for clients that ask, plain text for the others.
        Allow = "allow",
        /// `"require"`: plain-text clients are refused (28000).
        Require = "require",
    }
}

/// `[proxy]`: the pgwarden-proxy daemon, the PostgreSQL endpoint clients
/// connect to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// `proxy.listen`: where clients connect.
    pub listen: SocketAddr,
    /// `proxy.max_client_connections`: client sessions accepted at once;
    /// more are refused with SQLSTATE 53300.
    pub max_client_connections: u32,
    /// `proxy.pool_mode`.
    pub pool_mode: PoolMode,
    /// `proxy.pool_size`: server connections per (user, database) per
    /// backend.
    pub pool_size: u32,
    /// `proxy.worker_threads`: threads running client sessions. One (the
    /// default, as PgBouncer) spends the least CPU per query on a host the
    /// proxy shares with PostgreSQL; more serve more clients at once where
    /// cores are free.
    pub worker_threads: u32,
    /// `proxy.max_prepared_statements`: in transaction mode, protocol-level
    /// prepared statements kept per server connection (PgBouncer's key, the
    /// same default); 0 = not tracked: a client that prepares a named
    /// statement keeps its server connection until it leaves.
    pub max_prepared_statements: u32,
    /// `proxy.auth_file`: `"user" "secret"` lines. Read by the proxy, which
    /// also checks its mode with [`crate::check_secret_file_mode`].
    pub auth_file: PathBuf,
    /// `proxy.auth_type`: how plain-text secrets are checked.
    pub auth_type: AuthType,
    /// `proxy.server_reset_query`: run when a session releases its server
    /// connection; empty = none.
    pub server_reset_query: String,
    /// `proxy.metrics_listen`: Prometheus `/metrics` of the proxy.
    pub metrics_listen: SocketAddr,
    /// `proxy.pool_timeout`: how long a client waits for a server
    /// connection when its pool is full.
    #[serde(with = "humantime_serde")]
    pub pool_timeout: Duration,
    /// `proxy.server_connect_timeout`: connecting and authenticating to a
    /// backend.
    #[serde(with = "humantime_serde")]
    pub server_connect_timeout: Duration,
    /// `proxy.server_idle_timeout`: cached idle server connections older
    /// than this are closed; zero = never.
    #[serde(with = "humantime_serde")]
    pub server_idle_timeout: Duration,
    /// `proxy.server_lifetime`: server connections are closed when released
    /// after this age; zero = never.
    #[serde(with = "humantime_serde")]
    pub server_lifetime: Duration,
    /// `proxy.client_login_timeout`: startup and authentication must finish
    /// within this.
    #[serde(with = "humantime_serde")]
    pub client_login_timeout: Duration,
    /// `proxy.shutdown_timeout`: on SIGTERM, how long sessions may continue
    /// before being closed.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// `proxy.max_message_bytes`: larger protocol messages are refused.
    pub max_message_bytes: u32,
    /// `proxy.tcp_keepalive`: TCP keepalive on client and server sockets.
    pub tcp_keepalive: bool,
    /// `proxy.follow_monitor`: route by the monitor's cluster state (from
    /// `monitor.sock`); `false` = find the primary alone with
    /// `pg_is_in_recovery()` (no failover handling; one server or tests).
    pub follow_monitor: bool,
    /// `proxy.monitor_stale_after`: with the monitor unreachable this long,
    /// the proxy stops routing (it can no longer know the primary) and says why.
    #[serde(with = "humantime_serde")]
    pub monitor_stale_after: Duration,
    /// `proxy.failover_hold_timeout`: when the primary cannot be reached,
    /// or there is none while a failover is under way, new logins and new
    /// transactions wait this long for a primary (the new one, or the old
    /// one back) before they get 57P03; zero = they fail at once (08006).
    #[serde(with = "humantime_serde")]
    pub failover_hold_timeout: Duration,
    /// `proxy.client_tls_mode`.
    pub client_tls_mode: ClientTlsMode,
    /// `proxy.client_tls_cert_file`: the proxy's certificate chain (PEM,
    /// leaf first); required unless `client_tls_mode = "disable"`.
    pub client_tls_cert_file: PathBuf,
    /// `proxy.client_tls_key_file`: its private key (PEM, mode 600 or 640).
    pub client_tls_key_file: PathBuf,
    /// `proxy.client_tls_ca_file`: CA certificates client certificates are
    /// checked against; empty = client certificates are not asked for.
    pub client_tls_ca_file: PathBuf,
    /// `proxy.hba_file`: host-based rules for clients, in pg_hba.conf's
    /// syntax; empty = every client may try, with the method its secret
    /// asks for.
    pub hba_file: PathBuf,
    /// `proxy.auth_failure_delay`: a failed login is answered after this,
    /// doubled per further failure from the same address (PostgreSQL's
    /// auth_delay); zero = at once.
    #[serde(with = "humantime_serde")]
    pub auth_failure_delay: Duration,
    /// `proxy.auth_failure_max_delay`: the most a failure is delayed.
    #[serde(with = "humantime_serde")]
    pub auth_failure_max_delay: Duration,
    /// `proxy.load_balance`: `"off"`, `"session"` or `"statement"`; reads
    /// (autocommit statements that only read, transactions begun READ
    /// ONLY) go to standbys by `backends[].weight`, among those under
    /// `replication_check.max_lag_bytes` and `max_lag_time`. Transaction
    /// pool mode only.
    pub load_balance: LoadBalance,
    /// `proxy.read_your_writes`: after a client's transaction on the
    /// primary, its reads go only to servers that have replayed the WAL
    /// the primary had when it ended.
    pub read_your_writes: bool,
    /// `proxy.read_only_functions`: function names (as called, without
    /// schema) a load-balanced `SELECT` may call besides the built-in list
    /// of read-only functions (pgpool's `read_only_function_list`); a call
    /// to any other function sends the statement to the primary.
    pub read_only_functions: Vec<String>,
    /// `proxy.read_only_listen`: a second listener (unset: none) whose
    /// clients run every transaction on a standby, chosen by
    /// `backends[].weight` among those `load_balance` would read from
    /// (the primary's own weight aside), for applications that send their
    /// reads apart (Odyssey's `target_session_attrs = "read-only"`). Their
    /// server connections start with `default_transaction_read_only = on`,
    /// so that, with no standby to read from, the primary serves them
    /// read-only. Transaction pool mode only.
    pub read_only_listen: Option<SocketAddr>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9999)),
            max_client_connections: 1000,
            pool_mode: PoolMode::Session,
            pool_size: 20,
            worker_threads: 1,
            max_prepared_statements: 200,
            auth_file: PathBuf::from("/etc/pgwarden/users.txt"),
            auth_type: AuthType::ScramSha256,
            server_reset_query: "DISCARD ALL".to_owned(),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9930)),
            pool_timeout: Duration::from_secs(30),
            server_connect_timeout: Duration::from_secs(5),
            server_idle_timeout: Duration::from_secs(10 * 60),
            server_lifetime: Duration::from_secs(60 * 60),
            client_login_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            // PostgreSQL's own limit (MaxAllocSize - 1).
            max_message_bytes: 0x3fff_ffff,
            tcp_keepalive: true,
            follow_monitor: true,
            monitor_stale_after: Duration::from_secs(10),
            failover_hold_timeout: Duration::from_secs(10),
            client_tls_mode: ClientTlsMode::Disable,
            client_tls_cert_file: PathBuf::new(),
            client_tls_key_file: PathBuf::new(),
            client_tls_ca_file: PathBuf::new(),
            hba_file: PathBuf::new(),
            auth_failure_delay: Duration::from_millis(500),
            auth_failure_max_delay: Duration::from_secs(10),
            load_balance: LoadBalance::Off,
            read_your_writes: true,
            read_only_functions: Vec::new(),
            read_only_listen: None,
        }
    }
}

impl ProxyConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        validate::at_least(
            "proxy.max_client_connections",
            self.max_client_connections,
            1,
        )?;
        validate::at_least("proxy.pool_size", self.pool_size, 1)?;
        validate::at_least("proxy.worker_threads", self.worker_threads, 1)?;
        validate::at_least("proxy.max_message_bytes", self.max_message_bytes, 1)?;
        if self.auth_file.as_os_str().is_empty() {
            return Err(ConfigError::invalid("proxy.auth_file", "must not be empty"));
        }
        validate::positive("proxy.pool_timeout", self.pool_timeout)?;
        validate::positive("proxy.server_connect_timeout", self.server_connect_timeout)?;
        validate::positive("proxy.client_login_timeout", self.client_login_timeout)?;
        validate::positive("proxy.shutdown_timeout", self.shutdown_timeout)?;
        validate::positive("proxy.monitor_stale_after", self.monitor_stale_after)?;
        if self.load_balance != LoadBalance::Off && self.pool_mode != PoolMode::Transaction {
            return Err(ConfigError::invalid(
                "proxy.load_balance",
                format!(
                    "\"{}\" needs proxy.pool_mode = \"transaction\" (in session mode a client holds one server connection, to the primary)",
                    self.load_balance
                ),
            ));
        }
        if let Some(addr) = self.read_only_listen {
            if self.pool_mode != PoolMode::Transaction {
                return Err(ConfigError::invalid(
                    "proxy.read_only_listen",
                    "needs proxy.pool_mode = \"transaction\" (its clients' transactions go to standbys one by one)",
                ));
            }
            if addr == self.listen {
                return Err(ConfigError::invalid(
                    "proxy.read_only_listen",
                    format!("{addr} is proxy.listen's address too"),
                ));
            }
        }
        for (i, f) in self.read_only_functions.iter().enumerate() {
            if f.is_empty() || f.contains(|c: char| c.is_whitespace() || c == '(') {
                return Err(ConfigError::invalid(
                    format!("proxy.read_only_functions[{i}]"),
                    "must be a function name, without parentheses or spaces",
                ));
            }
        }
        if self.client_tls_mode != ClientTlsMode::Disable {
            for (key, path) in [
                ("proxy.client_tls_cert_file", &self.client_tls_cert_file),
                ("proxy.client_tls_key_file", &self.client_tls_key_file),
            ] {
                if path.as_os_str().is_empty() {
                    return Err(ConfigError::invalid(
                        key,
                        format!(
                            "required when proxy.client_tls_mode is \"{}\"",
                            self.client_tls_mode
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
