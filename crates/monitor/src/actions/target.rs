//! What the actions act on and how they log in.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A backend as actions see it: identity for hooks (`%d`, `%h`, `%p`, `%D`)
/// and the address the builtin actions connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Position in the `backends` list (pgpool's node id, `%d` / `%m`).
    pub id: usize,
    /// `backends[N].name`, used in messages.
    pub name: String,
    /// Host name or IP address PostgreSQL listens on.
    pub host: String,
    /// TCP port PostgreSQL listens on.
    pub port: u16,
    /// The data directory (`%D` / `%R`); empty if unknown.
    pub data_dir: PathBuf,
}

impl Target {
    /// `name (host:port)`, how errors and logs name the backend.
    pub fn label(&self) -> String {
        format!("{} ({}:{})", self.name, self.host, self.port)
    }
}

impl From<&pgwarden_config::Backend> for Target {
    fn from(backend: &pgwarden_config::Backend) -> Self {
        Target {
            id: backend.id,
            name: backend.name.clone(),
            host: backend.host.clone(),
            port: backend.port,
            data_dir: backend.data_dir.clone(),
        }
    }
}

/// How the builtin actions log in: `failover.user` / `failover.password`,
/// database `postgres`. The role must be a superuser, or be granted
/// `pg_promote()`, `pg_is_wal_replay_paused()` and `pg_wal_replay_resume()`,
/// `ALTER SYSTEM` on `primary_conninfo` and `default_transaction_read_only`
/// (the fence), reading settings (`pg_read_all_settings`),
/// `pg_signal_backend` (the fence terminates client sessions; a superuser's
/// only a superuser can) and `REPLICATION` (to create slots).
///
/// `Debug` never prints the password.
#[derive(Clone)]
pub struct SqlLogin {
    /// Role name.
    pub user: String,
    /// Password, `None` for trust or a `.pgpass`-less peer setup.
    pub password: Option<String>,
    /// Database to connect to (`postgres`).
    pub database: String,
    /// Limit on establishing a connection (TCP connect, startup and
    /// authentication together).
    pub connect_timeout: Duration,
    /// TLS, as `server_tls` says.
    pub tls: pgwarden_tls::postgres::PgTls,
}

impl fmt::Debug for SqlLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlLogin")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

/// What a promotion produced: where the new primary's history starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promoted {
    /// The new primary's timeline (the old one + 1 after a promotion).
    pub timeline: u32,
    /// Its current WAL insert position (`pg_current_wal_lsn()`), as a 64-bit
    /// LSN.
    pub lsn: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let login = SqlLogin {
            user: "postgres".into(),
            password: Some("hunter2".into()),
            database: "postgres".into(),
            connect_timeout: Duration::from_secs(2),
            tls: pgwarden_tls::postgres::PgTls::disabled(),
        };
        let debug = format!("{login:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn label_names_the_address() {
        let target = Target {
            id: 1,
            name: "pg1".into(),
            host: "10.0.0.2".into(),
            port: 5433,
            data_dir: PathBuf::new(),
        };
        assert_eq!(target.label(), "pg1 (10.0.0.2:5433)");
    }
}
