//! pgwarden-proxy: the endpoint clients connect to instead of PostgreSQL.
//!
//! It speaks the PostgreSQL protocol to clients, authenticates them against
//! its auth file (SCRAM-SHA-256 or md5), and gives each a server connection
//! to the primary from a cache keyed by user, database and startup
//! parameters, as pgpool-II's connection cache does, but with one task per
//! client instead of one process.
//!
//! - [`Proxy`]: binds, accepts and shuts down ([`Proxy::serve`]).
//! - [`frontend`]: the client side: the startup handshake, pg_hba rules,
//!   authentication, the session's life, the logged-in clients and their
//!   cancel keys.
//! - [`backend`]: one server connection: its login, reset and parameters.
//! - [`pool`]: the server connections cached per (backend, user, database)
//!   and the checkout that gives a client one.
//! - [`relay`]: the data paths: session mode's [`relay::pump`], and
//!   transaction mode's tracker and loop.
//! - [`route`]: which backend takes the next transaction: the primary, as
//!   the monitor says.
//! - `net`: the byte streams (plain TCP, TLS, unix sockets).
//! - [`admin`]: the admin API on `proxy.sock`; [`metrics`].

pub mod admin;
pub mod backend;
pub mod frontend;
pub mod metrics;
mod net;
pub mod pool;
pub mod relay;
pub mod route;
pub mod settings;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use pgwarden_proto::uds::{self, Daemon};
use pgwarden_wire::auth::auth_file::AuthFile;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use settings::Settings;

use crate::admin::AdminService;
use crate::frontend::auth::Users;
use crate::frontend::clients::ClientRegistry;
use crate::frontend::{handshake, hba, session, throttle};
use crate::net::tls;
use crate::pool::{PoolLimits, Pools};
use crate::route::Router;

/// Why the proxy could not start (or reload).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The auth file is missing, unreadable, too open or malformed.
    #[error("proxy.auth_file: {path}: {reason}")]
    AuthFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The admin socket could not be bound (another proxy runs with the
    /// same `node.runtime_dir`, or the directory is not writable).
    #[error("node.runtime_dir: cannot serve the admin API: {0}")]
    AdminSocket(String),
    /// The hba file is missing, unreadable or holds a line that cannot be
    /// honoured.
    #[error("proxy.hba_file: {path}: {reason}")]
    HbaFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A TLS file is missing, unreadable, too open or broken (the error
    /// names its key).
    #[error(transparent)]
    Tls(#[from] pgwarden_tls::TlsError),
    /// The listen address could not be bound.
    #[error("proxy.listen: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The read-only listen address could not be bound.
    #[error("proxy.read_only_listen: cannot listen on {addr}: {source}")]
    BindReadOnly {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// State every session shares.
#[derive(Debug)]
pub struct Shared {
    /// The settings the proxy started with.
    pub settings: Settings,
    users: RwLock<Arc<Users>>,
    /// The server connection cache.
    pub pools: Pools,
    /// The logged-in clients and their cancel keys.
    pub clients: Arc<ClientRegistry>,
    /// The places of logged-in clients (`max_client_connections`).
    pub client_slots: Arc<Semaphore>,
    /// Connections not logged in yet.
    pub handshakes: Arc<handshake::Handshakes>,
    /// True while an operator has paused the proxy: new sessions wait.
    pub paused: tokio::sync::watch::Sender<bool>,
    /// Counters for `/metrics`.
    pub counters: metrics::Counters,
    /// The current primary.
    pub router: Router,
    /// Fires when sessions must end now (shutdown timeout reached).
    pub hard_stop: CancellationToken,
    /// Key for mock SCRAM salts of unknown users (random per process).
    mock_key: [u8; 32],
    /// TLS with clients and with servers.
    pub tls: tls::Tls,
    /// The hba file's rules, when there is one.
    hba: RwLock<Option<Arc<hba::Hba>>>,
    /// Failed logins per address.
    pub throttle: throttle::Throttle,
}

impl Shared {
    /// Every pool's numbers with its clients' (PgBouncer's SHOW POOLS):
    /// clients holding a server connection count on that pool, those
    /// holding none (and not waiting) on the current primary's pool of
    /// their user and database.
    pub fn pool_report(&self) -> Vec<pool::PoolStats> {
        let mut rows = self.pools.stats();
        let primary = self.router.current().primary.as_ref().map(|b| b.id);
        for ((holding, user, database), (n, pinned)) in self.clients.usage() {
            let Some(backend) = holding.or(primary) else {
                continue;
            };
            let i = match rows
                .iter()
                .position(|r| r.backend == backend && r.user == user && r.database == database)
            {
                Some(i) => i,
                None => {
                    rows.push(pool::PoolStats::empty(backend, user, database));
                    rows.len() - 1
                }
            };
            let Some(r) = rows.get_mut(i) else { continue };
            if holding.is_some() {
                r.clients_active += n;
                r.clients_pinned += pinned;
            } else {
                // Waiting clients hold none either; they are counted apart.
                r.clients_idle += n.saturating_sub(r.waiting);
            }
        }
        rows.sort_by(|a, b| {
            (a.backend, &a.user, &a.database).cmp(&(b.backend, &b.user, &b.database))
        });
        rows
    }

    /// The hba rules in force, if any.
    pub fn hba(&self) -> Option<Arc<hba::Hba>> {
        self.hba.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts new hba rules in force.
    pub fn set_hba(&self, hba: Option<hba::Hba>) {
        *self.hba.write().unwrap_or_else(|p| p.into_inner()) = hba.map(Arc::new);
    }

    /// The current auth file.
    pub fn users(&self) -> Arc<Users> {
        Arc::clone(&self.users.read().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Reads the hba file, if there is one.
pub fn load_hba(settings: &Settings) -> Result<Option<hba::Hba>, StartError> {
    let path = &settings.hba_file;
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    let err = |reason: String| StartError::HbaFile {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let hba = hba::Hba::parse(&text).map_err(|e| err(e.to_string()))?;
    if hba.is_empty() {
        tracing::warn!(path = %path.display(), "the hba file holds no rule: every client is refused");
    }
    Ok(Some(hba))
}

/// Reads and checks the auth file.
pub fn load_users(settings: &Settings) -> Result<Users, StartError> {
    let path = &settings.auth_file;
    let err = |reason: String| StartError::AuthFile {
        path: path.clone(),
        reason,
    };
    pgwarden_config::check_secret_file_mode(path).map_err(err)?;
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let file = AuthFile::parse(&text).map_err(|e| err(e.to_string()))?;
    Ok(Users::new(&file, settings.plain_auth))
}

/// A bound proxy, ready to serve.
#[derive(Debug)]
pub struct Proxy {
    listener: TcpListener,
    /// `proxy.read_only_listen`'s, when set.
    read_only: Option<TcpListener>,
    admin: tokio::net::UnixListener,
    metrics: Option<TcpListener>,
    shared: Arc<Shared>,
}

/// A handle to a running proxy, for reloads.
#[derive(Debug, Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
}

impl ProxyHandle {
    /// Re-reads the auth file and the TLS files; what cannot be read
    /// keeps its old contents. What was reloaded, or what was not and why.
    pub async fn reload(&self) -> Result<String, String> {
        admin::reload(&self.shared).await
    }
}

impl Proxy {
    /// Loads the auth file and binds the listen address.
    pub async fn bind(settings: Settings) -> Result<Proxy, StartError> {
        let users = load_users(&settings)?;
        let tls = tls::Tls::load(&settings)?;
        let hba = load_hba(&settings)?.map(Arc::new);
        if users.is_empty() {
            tracing::warn!(path = %settings.auth_file.display(), "the auth file lists no users: nobody can log in");
        }
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let read_only = match settings.read_only_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::BindReadOnly { addr, source })?,
            ),
            None => None,
        };
        let admin_path = uds::socket_path(&settings.runtime_dir, Daemon::Proxy);
        let admin = uds::bind(&admin_path)
            .await
            .map_err(|e| StartError::AdminSocket(e.to_string()))?;
        let metrics = metrics::bind(settings.metrics_listen).await;
        let mut mock_key = [0u8; 32];
        rand::fill(&mut mock_key);
        let limits = PoolLimits {
            size: settings.pool_size,
            idle_timeout: settings.server_idle_timeout,
            lifetime: settings.server_lifetime,
        };
        let shared = Arc::new(Shared {
            users: RwLock::new(Arc::new(users)),
            pools: Pools::new(limits),
            clients: Arc::new(ClientRegistry::default()),
            client_slots: Arc::new(Semaphore::new(settings.max_client_connections)),
            handshakes: handshake::Handshakes::new(handshake::Handshakes::limit_for(
                settings.max_client_connections,
            )),
            paused: tokio::sync::watch::Sender::new(false),
            counters: metrics::Counters::default(),
            router: Router::default(),
            hard_stop: CancellationToken::new(),
            mock_key,
            tls,
            hba: RwLock::new(hba),
            throttle: throttle::Throttle::new(
                settings.auth_failure_delay,
                settings.auth_failure_max_delay,
            ),
            settings,
        });
        // A change of primary wakes the clients waiting on their alarms.
        let clients = Arc::clone(&shared.clients);
        shared.router.set_bell(Arc::new(move || clients.ring_all()));
        Ok(Proxy {
            listener,
            read_only,
            admin,
            metrics,
            shared,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle for reloads.
    pub fn handle(&self) -> ProxyHandle {
        ProxyHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves clients until `shutdown` completes, then stops accepting, lets
    /// sessions finish for up to `shutdown_timeout`, and closes the rest with
    /// 57P01.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Proxy {
            listener,
            read_only,
            admin,
            metrics,
            shared,
        } = self;
        let background = CancellationToken::new();
        let tasks = TaskTracker::new();
        // The admin API stays up while sessions drain, so an operator can
        // see who is left.
        let (sh, stop) = (Arc::clone(&shared), background.clone());
        tokio::spawn(async move {
            let (_health, health) =
                uds::health_service(pgwarden_proto::v1::proxy_server::SERVICE_NAME).await;
            let router = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(AdminService::new(sh).into_server());
            if let Err(e) = uds::serve(admin, router, stop.cancelled_owned()).await {
                tracing::error!(error = %e, "the admin API stopped");
            }
        });
        let (sh, stop) = (Arc::clone(&shared), background.clone());
        tokio::spawn(async move {
            let s = &sh.settings;
            if s.follow_monitor {
                route::follow::run(&sh, &stop).await;
            } else {
                route::discover(&sh.router, &s.backends, &s.discovery, &sh.tls, &stop).await;
            }
        });
        if let Some(listener) = metrics {
            let sh = Arc::clone(&shared);
            tokio::spawn(pgwarden_daemon::metrics::serve(
                listener,
                move |r| metrics::render(&sh, r),
                background.clone(),
            ));
        }
        let (sh, stop) = (Arc::clone(&shared), background.clone());
        tokio::spawn(async move {
            let period = sh.pools.reap_period();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(period) => sh.pools.reap(),
                }
            }
        });
        tracing::info!(listen = %shared.settings.listen, read_only_listen = ?shared.settings.read_only_listen, "pgwarden-proxy accepting clients");
        tokio::pin!(shutdown);
        let read_only_accept = || async {
            match &read_only {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        loop {
            let (accepted, read_only_client) = tokio::select! {
                _ = &mut shutdown => break,
                a = listener.accept() => (a, false),
                a = read_only_accept() => (a, true),
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            net::tune(&stream, shared.settings.tcp_keepalive);
            // Every connection starts in the handshake phase, which bounds
            // itself (see `handshake`); it counts against
            // max_client_connections once logged in.
            let handshake = shared.handshakes.enter();
            tasks.spawn(session::serve(
                Arc::clone(&shared),
                stream.into(),
                peer,
                handshake,
                read_only_client,
            ));
        }
        drop(listener);
        drop(read_only);
        tasks.close();
        let open = tasks.len();
        let grace = shared.settings.shutdown_timeout;
        if open > 0 {
            tracing::info!(
                sessions = open,
                ?grace,
                "shutting down: no new clients; waiting for sessions to end"
            );
        }
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::info!(
                sessions = tasks.len(),
                "shutdown timeout reached; closing the remaining sessions"
            );
            shared.hard_stop.cancel();
            shared.clients.ring_all();
            let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
        }
        background.cancel();
        tracing::info!("pgwarden-proxy stopped");
    }
}
