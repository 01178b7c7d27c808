//! The server connection cache (pgpool-II's connection cache, PgBouncer's
//! session pools).
//!
//! A [`Pool`] holds the connections of one [`PoolKey`]: one backend, one
//! user, one database and one set of startup parameters, so a cached
//! connection always looks to the next client exactly like a fresh one.
//! A pool's semaphore has `pool_size` permits; a client needs one to hold a
//! connection. Connections are opened only when no idle one is left, so a
//! pool never has more than `pool_size` connections open: at the moment one
//! is opened, every other is held by a permit holder.

pub mod checkout;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::ServerConn;

/// What makes server connections interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Backend id.
    pub backend: usize,
    /// The server connection's startup parameters (user, database, and
    /// those that cannot be replayed), sorted by name.
    pub params: Vec<(String, String)>,
}

impl PoolKey {
    /// The key for a backend and a server connection's startup parameters.
    pub fn new(backend: usize, params: &[(String, String)]) -> PoolKey {
        let mut params = params.to_vec();
        params.sort();
        PoolKey { backend, params }
    }
}

/// Limits shared by every pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Connections per pool.
    pub size: usize,
    /// Close idle connections older than this.
    pub idle_timeout: Option<Duration>,
    /// Close connections older than this when they are released.
    pub lifetime: Option<Duration>,
}

/// The connections of one key.
#[derive(Debug)]
pub struct Pool {
    key: PoolKey,
    permits: Arc<Semaphore>,
    // Boxed: a connection is handed out and back whole, so a pointer
    // moves at each checkout, not the connection.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<ServerConn>>>,
    /// Clients waiting for a permit.
    waiting: AtomicUsize,
    /// Transactions run on the pool's connections: load-balanced reads,
    /// and the rest (transaction mode).
    reads: AtomicU64,
    writes: AtomicU64,
}

/// One pool's numbers, for the admin API (PgBouncer's SHOW POOLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    /// Backend id.
    pub backend: usize,
    /// The pool's user.
    pub user: String,
    /// The pool's database.
    pub database: String,
    /// Server connections held (or being opened) by clients.
    pub active: usize,
    /// Cached server connections.
    pub idle: usize,
    /// Clients waiting for a server connection.
    pub waiting: usize,
    /// Clients holding a server connection of the pool.
    pub clients_active: usize,
    /// Clients holding none and not waiting (on the primary's pool).
    pub clients_idle: usize,
    /// Clients pinned to their server connection.
    pub clients_pinned: usize,
    /// Transactions whose first request was a load-balanced read.
    pub reads: u64,
    /// Every other transaction (transaction mode).
    pub writes: u64,
}

impl PoolStats {
    /// A pool with nothing in it yet.
    pub fn empty(backend: usize, user: String, database: String) -> PoolStats {
        PoolStats {
            backend,
            user,
            database,
            active: 0,
            idle: 0,
            waiting: 0,
            clients_active: 0,
            clients_idle: 0,
            clients_pinned: 0,
            reads: 0,
            writes: 0,
        }
    }
}

/// The right to hold one server connection of a pool.
#[derive(Debug)]
pub struct Slot {
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
    limits: PoolLimits,
}

/// No permit came free in time.
#[derive(Debug, thiserror::Error)]
#[error("no server connection came free within {0:?} (pool_size {1})")]
pub struct PoolTimeout(pub Duration, pub usize);

/// All pools of the proxy.
#[derive(Debug)]
pub struct Pools {
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    limits: PoolLimits,
    /// Per server startup parameters (sorted), what a welcome is made of.
    welcomes: Mutex<HashMap<Vec<(String, String)>, Welcome>>,
}

/// What the proxy learnt of the ParameterStatus messages a server sends,
/// so a transaction-mode client can be welcomed without a server
/// connection (while every one is busy).
#[derive(Debug, Default)]
struct Welcome {
    /// What a fresh connection reports.
    defaults: Vec<(String, String)>,
    /// Those of the settings clients' sessions track, shared by every
    /// client of the pool.
    tracked: Arc<[(String, String)]>,
    /// (setting in lower case, value a client asked for) → the value the
    /// server reported for it (`utf8` → `UTF8`, `ISO` → `ISO, MDY`).
    reported: HashMap<(String, String), String>,
}

/// Bound on the `reported` values learnt per set of server parameters.
const MAX_REPORTED: usize = 1024;

fn sorted(params: &[(String, String)]) -> Vec<(String, String)> {
    let mut p = params.to_vec();
    p.sort();
    p
}

impl Pools {
    /// No pools yet; they appear with their first client.
    pub fn new(limits: PoolLimits) -> Pools {
        Pools {
            pools: Mutex::new(HashMap::new()),
            limits,
            welcomes: Mutex::new(HashMap::new()),
        }
    }

    /// Records what a fresh connection opened with `server_params`
    /// reported.
    pub fn learn_defaults(
        &self,
        server_params: &[(String, String)],
        reported: &[(String, String)],
    ) {
        let mut w = self.welcomes.lock().unwrap_or_else(|p| p.into_inner());
        let w = w.entry(sorted(server_params)).or_default();
        w.defaults = reported.to_vec();
        w.tracked = reported
            .iter()
            .filter(|(k, _)| crate::relay::features::is_tracked(k))
            .cloned()
            .collect();
    }

    /// Records what a connection reports after a client's settings
    /// (`wanted`) were applied to it.
    pub fn learn_reported(
        &self,
        server_params: &[(String, String)],
        wanted: &[(String, String)],
        reported: &[(String, String)],
    ) {
        if wanted.is_empty() {
            return;
        }
        let mut w = self.welcomes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = w.get_mut(&sorted(server_params)) else {
            return;
        };
        if w.reported.len() > MAX_REPORTED {
            w.reported.clear();
        }
        for (name, value) in wanted {
            if let Some((_, r)) = reported.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
                w.reported
                    .insert((name.to_ascii_lowercase(), value.clone()), r.clone());
            }
        }
    }

    /// The tracked settings a fresh server connection reports: what a
    /// client that did not set them believes they are.
    pub fn tracked_defaults(&self, server_params: &[(String, String)]) -> Arc<[(String, String)]> {
        let w = self.welcomes.lock().unwrap_or_else(|p| p.into_inner());
        w.get(&sorted(server_params))
            .map_or_else(|| Arc::from(Vec::new()), |w| Arc::clone(&w.tracked))
    }

    /// The ParameterStatus values a server would welcome a client with
    /// `wanted` settings with, when all of them are known.
    pub fn welcome(
        &self,
        server_params: &[(String, String)],
        wanted: &[(String, String)],
    ) -> Option<Vec<(String, String)>> {
        let w = self.welcomes.lock().unwrap_or_else(|p| p.into_inner());
        let w = w.get(&sorted(server_params))?;
        if w.defaults.is_empty() {
            return None;
        }
        let mut params = w.defaults.clone();
        for (name, value) in wanted {
            let Some(slot) = params
                .iter_mut()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
            else {
                // Not a reported setting: nothing in the welcome.
                continue;
            };
            slot.1 = w
                .reported
                .get(&(name.to_ascii_lowercase(), value.clone()))?
                .clone();
        }
        Some(params)
    }

    /// The pool of `key`, made on first use. A client keeps it from one
    /// checkout to the next (see [`Pools::acquire`]).
    pub fn pool(&self, key: &PoolKey) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pools.get(key) {
            return Arc::clone(p);
        }
        let p = Arc::new(Pool {
            key: key.clone(),
            permits: Arc::new(Semaphore::new(self.limits.size)),
            idle: Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        });
        pools.insert(key.clone(), Arc::clone(&p));
        p
    }

    /// Waits up to `timeout` for the right to hold a connection of `pool`
    /// (from [`Pools::pool`]), and hands over a cached live connection if
    /// there is one. A pool someone holds is never forgotten by
    /// [`Pools::reap`], so it stays the one of its key.
    pub async fn acquire(
        &self,
        pool: &Arc<Pool>,
        timeout: Duration,
    ) -> Result<(Slot, Option<Box<ServerConn>>), PoolTimeout> {
        let pool = Arc::clone(pool);
        let permit = match Arc::clone(&pool.permits).try_acquire_owned() {
            Ok(p) => p,
            // Boxed: the state of a wait is not in every checkout's future.
            Err(_) => Box::pin(self.wait_for_permit(&pool, timeout)).await?,
        };
        let conn = pool.take_idle();
        Ok((
            Slot {
                pool,
                _permit: permit,
                limits: self.limits,
            },
            conn,
        ))
    }

    async fn wait_for_permit(
        &self,
        pool: &Pool,
        timeout: Duration,
    ) -> Result<OwnedSemaphorePermit, PoolTimeout> {
        // Counted while waiting, however the wait ends (a client
        // terminated or timed out drops this future mid-wait).
        let _waiting = Waiting::new(&pool.waiting);
        let r = tokio::time::timeout(timeout, Arc::clone(&pool.permits).acquire_owned()).await;
        match r {
            Ok(Ok(p)) => Ok(p),
            // The semaphore is never closed; treat it like a timeout anyway.
            Ok(Err(_)) | Err(_) => Err(PoolTimeout(timeout, self.limits.size)),
        }
    }

    /// Closes idle connections past `idle_timeout`, and forgets pools with
    /// no connections and no clients.
    pub fn reap(&self) {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|_, pool| {
            if let Some(limit) = self.limits.idle_timeout {
                let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
                idle.retain(|c| c.idle_since.elapsed() < limit);
            }
            let unused = Arc::strong_count(pool) == 1
                && pool.permits.available_permits() == self.limits.size
                && pool.idle.lock().map(|i| i.is_empty()).unwrap_or(false);
            !unused
        });
    }

    /// Server connections to `backend` held (or being opened) by clients.
    pub fn active_on(&self, backend: usize) -> usize {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .values()
            .filter(|p| p.key.backend == backend)
            .map(|p| self.active(p))
            .sum()
    }

    /// Server connections of `pool` held (or being opened) by clients.
    fn active(&self, pool: &Pool) -> usize {
        self.limits
            .size
            .saturating_sub(pool.permits.available_permits())
    }

    /// Closes every idle connection to `backend` (it failed or was demoted).
    pub fn close_idle(&self, backend: usize) {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        for pool in pools.values().filter(|p| p.key.backend == backend) {
            pool.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// The numbers per backend, user and database, sorted so: pools that
    /// differ only in other startup parameters (application_name,
    /// TimeZone...) are added up, as operators think of them as one.
    pub fn stats(&self) -> Vec<PoolStats> {
        let mut all: Vec<PoolStats> = Vec::new();
        for p in self.each_stats() {
            match all
                .iter_mut()
                .find(|a| (a.backend, &a.user, &a.database) == (p.backend, &p.user, &p.database))
            {
                Some(a) => {
                    a.active += p.active;
                    a.idle += p.idle;
                    a.waiting += p.waiting;
                    a.reads += p.reads;
                    a.writes += p.writes;
                }
                None => all.push(p),
            }
        }
        all.sort_by(|a, b| {
            (a.backend, &a.user, &a.database).cmp(&(b.backend, &b.user, &b.database))
        });
        all
    }

    fn each_stats(&self) -> Vec<PoolStats> {
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .values()
            .map(|pool| {
                let param = |name: &str| {
                    pool.key
                        .params
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                PoolStats {
                    clients_active: 0,
                    clients_idle: 0,
                    clients_pinned: 0,
                    backend: pool.key.backend,
                    user: param("user"),
                    database: param("database"),
                    active: self.active(pool),
                    idle: pool.idle.lock().map(|i| i.len()).unwrap_or(0),
                    waiting: pool.waiting.load(Ordering::Relaxed),
                    reads: pool.reads.load(Ordering::Relaxed),
                    writes: pool.writes.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// How often [`Pools::reap`] should run.
    pub fn reap_period(&self) -> Duration {
        let base = self.limits.idle_timeout.unwrap_or(Duration::from_secs(60));
        (base / 4).clamp(Duration::from_millis(100), Duration::from_secs(30))
    }
}

/// One client counted in a pool's `waiting` for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// The key of the pool's connections.
    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    /// The backend of the pool's connections.
    pub fn backend(&self) -> usize {
        self.key.backend
    }

    fn take_idle(&self) -> Option<Box<ServerConn>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Most recently used first: it is the likeliest to be warm and alive.
        while let Some(mut c) = idle.pop() {
            if !c.is_stale() {
                return Some(c);
            }
            tracing::debug!(
                backend = c.backend,
                "dropping a cached server connection the server closed"
            );
        }
        None
    }
}

impl Slot {
    /// Counts a transaction run on the slot's connection: a load-balanced
    /// read or not.
    pub fn count(&self, read: bool) {
        let n = if read {
            &self.pool.reads
        } else {
            &self.pool.writes
        };
        n.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns a clean, idle connection to the cache (or closes it when it
    /// is past `server_lifetime`), and frees the permit.
    pub fn release(self, mut conn: Box<ServerConn>) {
        if self.limits.lifetime.is_some_and(|l| conn.age() >= l) {
            return;
        }
        conn.idle_since = std::time::Instant::now();
        self.pool
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }
}
