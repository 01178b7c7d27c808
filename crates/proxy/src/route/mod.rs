//! Which backend takes the clients: the primary.
//!
//! [`Router`] publishes the current [`Route`] on a watch channel. Normally
//! the monitor's cluster state feeds it (see [`crate::route::follow`]); with
//! `proxy.follow_monitor = false`, [`discover`] finds the primary alone:
//! every `health_check.period` it asks each backend `pg_is_in_recovery()`
//! with the health-check role. Either way a backend that stops being the
//! primary is withdrawn at once: sessions on it end, and clients get a clear
//! 57P03 rather than writes to a server that may be a standby.

pub mod classify;
pub mod follow;
pub mod readers;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::settings::{BackendAddr, Discovery};

/// Where clients go now.
#[derive(Debug, Clone)]
pub struct Route {
    /// Generation of the cluster state this route comes from (0 when the
    /// proxy finds the primary itself).
    pub generation: u64,
    /// The primary, or `None` with the reason in `why_none`.
    pub primary: Option<Arc<BackendAddr>>,
    /// Why there is no primary.
    pub why_none: String,
    /// Fired when the primary changes: sessions on it must end.
    pub ended: Ended,
    /// Cancelled when the primary stops taking new work: at the change, or
    /// when a switchover's drain begins (`ended` then fires later). Idle
    /// session-mode sessions move to the new primary from here on.
    pub withdrawn: CancellationToken,
    /// When this primary first gave a client a server (for the failover
    /// history); new at each change of primary.
    pub first_use: Arc<FirstUse>,
}

/// A route's end: a token for session-mode sessions to wait on, and a flag
/// that transaction-mode clients look at without a lock once their alarm
/// rang. Fired only through [`Ended::fire`], which rings the bell after,
/// so no waiter on an alarm misses it.
#[derive(Debug, Clone, Default)]
pub struct Ended {
    token: CancellationToken,
    fired: Arc<AtomicBool>,
}

impl Ended {
    /// The token, cancelled when the route ends.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// True once the route ended (a load, no lock).
    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Ends the route: the flag, the token, then the bell; once (a drained
    /// route's end fired already by its timer is not rung again).
    pub(crate) fn fire(&self, bell: Option<&Bell>) {
        if self.fired.swap(true, Ordering::SeqCst) {
            return;
        }
        self.token.cancel();
        if let Some(Bell(ring)) = bell {
            ring();
        }
    }
}

/// The first checkout on a route's primary.
#[derive(Debug, Default)]
pub struct FirstUse {
    /// Unix ms; 0 until then.
    at_ms: std::sync::atomic::AtomicI64,
    done: Notify,
}

impl FirstUse {
    /// A checkout got a server on this route's primary: the first one
    /// records the time (one relaxed load for every other).
    pub fn mark(&self) {
        use std::sync::atomic::Ordering;
        if self.at_ms.load(Ordering::Relaxed) != 0 {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        if self
            .at_ms
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.done.notify_one();
        }
    }

    /// Waits for the first checkout; its time in unix ms.
    pub async fn first(&self) -> i64 {
        use std::sync::atomic::Ordering;
        loop {
            let at = self.at_ms.load(Ordering::Relaxed);
            if at != 0 {
                return at;
            }
            self.done.notified().await;
        }
    }
}

/// Publishes the current route.
#[derive(Debug)]
pub struct Router {
    tx: watch::Sender<Arc<Route>>,
    recheck: Notify,
    /// During a switchover: the old primary's `ended`, not fired yet, so
    /// its running transactions finish; fired at the next route change.
    draining: std::sync::Mutex<Option<Ended>>,
    /// The servers load-balanced reads may go to (see [`readers`]).
    readers: watch::Sender<Arc<readers::Readers>>,
    /// Rung after a route's `ended` fires (see [`Router::set_bell`]).
    bell: std::sync::OnceLock<Bell>,
}

/// What [`Router::set_bell`] calls.
#[derive(Clone)]
pub(crate) struct Bell(Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Bell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bell")
    }
}

impl Default for Router {
    fn default() -> Self {
        let route = Route {
            generation: 0,
            primary: None,
            why_none: "the primary is not known yet".to_owned(),
            ended: Ended::default(),
            withdrawn: CancellationToken::new(),
            first_use: Arc::default(),
        };
        Router {
            tx: watch::channel(Arc::new(route)).0,
            recheck: Notify::new(),
            draining: std::sync::Mutex::new(None),
            readers: watch::channel(Arc::default()).0,
            bell: std::sync::OnceLock::new(),
        }
    }
}

impl Router {
    /// The route to a primary, waiting up to `timeout` for one; otherwise
    /// why there is none. Runs at every checkout: with a primary, it
    /// costs a read lock and a reference count.
    pub async fn route(&self, timeout: Duration) -> Result<Arc<Route>, String> {
        {
            let now = self.tx.borrow();
            if now.primary.is_some() {
                return Ok(Arc::clone(&now));
            }
        }
        Box::pin(self.wait_for_primary(timeout)).await
    }

    /// The route, when it has a primary now.
    pub fn ready(&self) -> Option<Arc<Route>> {
        let now = self.tx.borrow();
        now.primary.is_some().then(|| Arc::clone(&now))
    }

    /// Waits up to `timeout` for a primary (boxed by [`Router::route`], so
    /// its state is not in every checkout's future).
    async fn wait_for_primary(&self, timeout: Duration) -> Result<Arc<Route>, String> {
        let mut rx = self.tx.subscribe();
        let wait = rx.wait_for(|r| r.primary.is_some());
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(r)) => Ok(Arc::clone(&r)),
            _ => Err(self.tx.borrow().why_none.clone()),
        }
    }

    /// Waits up to `timeout` for a route other than `seen` (a new
    /// generation, another primary); true when there is one.
    pub async fn changed(&self, seen: &Route, timeout: Duration) -> bool {
        let mut rx = self.tx.subscribe();
        let id = seen.primary.as_ref().map(|b| b.id);
        let generation = seen.generation;
        let wait =
            rx.wait_for(|r| r.generation != generation || r.primary.as_ref().map(|b| b.id) != id);
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(_)))
    }

    /// The current route.
    pub fn current(&self) -> Arc<Route> {
        Arc::clone(&self.tx.borrow())
    }

    /// Every route from now on.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Route>> {
        self.tx.subscribe()
    }

    /// Sets the route. When the primary changes (or goes away), sessions on
    /// the old one are told to end; returns the old primary's id then.
    pub fn set(
        &self,
        generation: u64,
        primary: Option<BackendAddr>,
        why_none: &str,
    ) -> Option<usize> {
        self.set_draining(generation, primary, why_none, None)
    }

    /// [`Router::set`]; with `drain` (an operator's switchover withdrew the
    /// primary), sessions on the old primary are not told to end yet: their
    /// running transactions finish while new ones wait for the new primary.
    /// They are told at the next change of primary, or after `drain` at the
    /// latest.
    pub fn set_draining(
        &self,
        generation: u64,
        primary: Option<BackendAddr>,
        why_none: &str,
        drain: Option<Duration>,
    ) -> Option<usize> {
        let mut replaced = None;
        let bell = self.bell.get().cloned();
        let mut draining = self.draining.lock().unwrap_or_else(|p| p.into_inner());
        self.tx.send_modify(|cur| {
            let cur = Arc::make_mut(cur);
            let same = cur.primary.as_ref().map(|b| b.id) == primary.as_ref().map(|b| b.id);
            cur.generation = generation;
            cur.why_none = why_none.to_owned();
            if same {
                return;
            }
            match &primary {
                Some(p) => {
                    tracing::info!(generation, backend = p.id, name = %p.name, "routing to primary")
                }
                None => tracing::warn!(
                    generation,
                    reason = why_none,
                    "no primary: clients are refused"
                ),
            }
            replaced = cur.primary.as_ref().map(|b| b.id);
            if let Some(t) = draining.take() {
                t.fire(bell.as_ref());
            }
            std::mem::replace(&mut cur.withdrawn, CancellationToken::new()).cancel();
            let old = std::mem::take(&mut cur.ended);
            match drain {
                Some(cap) if primary.is_none() && cur.primary.is_some() => {
                    tracing::info!(
                        generation,
                        "switchover: running transactions on the old primary may finish; new ones wait"
                    );
                    let late = old.clone();
                    let bell = bell.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(cap).await;
                        late.fire(bell.as_ref());
                    });
                    *draining = Some(old);
                }
                _ => old.fire(bell.as_ref()),
            }
            cur.primary = primary.map(Arc::new);
            cur.first_use = Arc::default();
        });
        replaced
    }

    /// Sets what is called after a route's `ended` fired (once; the proxy
    /// rings its clients' alarms with it, see
    /// [`crate::frontend::clients::CancelKey::alarm`]). It is called with
    /// the router's state locked: it must not use the router.
    pub fn set_bell(&self, ring: Arc<dyn Fn() + Send + Sync>) {
        let _ = self.bell.set(Bell(ring));
    }

    /// The servers reads may go to now.
    pub fn readers(&self) -> Arc<readers::Readers> {
        Arc::clone(&self.readers.borrow())
    }

    /// Sets the servers reads may go to (logged when the set changes).
    pub fn set_readers(&self, next: readers::Readers) {
        self.readers.send_if_modified(|cur| {
            if **cur == next {
                return false;
            }
            let ids = |r: &readers::Readers| r.list.iter().map(|x| x.addr.id).collect::<Vec<_>>();
            if ids(cur) != ids(&next) {
                tracing::info!(
                    generation = next.generation,
                    readers = ?next.list.iter().map(|x| x.addr.name.as_str()).collect::<Vec<_>>(),
                    "servers taking load-balanced reads"
                );
            }
            *cur = Arc::new(next);
            true
        });
    }

    /// Asks for a check now, e.g. after a connection to the primary failed.
    /// The proxy never decides a backend's status from what its clients see;
    /// it only asks the checks to look sooner.
    pub fn recheck(&self) {
        self.recheck.notify_one();
    }

    /// Completes when [`Router::recheck`] was called.
    pub async fn recheck_requested(&self) {
        self.recheck.notified().await;
    }
}

/// Role of a backend as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Primary,
    Standby,
    Unreachable,
}

/// Finds the primary until `stop` fires.
pub async fn discover(
    router: &Router,
    backends: &[BackendAddr],
    d: &Discovery,
    tls: &crate::net::tls::Tls,
    stop: &CancellationToken,
) {
    let mut clients: Vec<Option<tokio_postgres::Client>> = backends.iter().map(|_| None).collect();
    loop {
        let mut seen = Vec::with_capacity(backends.len());
        let pg = tls.to_server().postgres();
        for (b, client) in backends.iter().zip(clients.iter_mut()) {
            seen.push(probe(b, client, d, &pg).await);
        }
        let current = router.current().primary.as_deref().cloned();
        let still = current.filter(|p| seen.get(p.id) == Some(&Seen::Primary));
        let next = still.or_else(|| {
            backends
                .iter()
                .zip(&seen)
                .find(|(_, s)| **s == Seen::Primary)
                .map(|(b, _)| b.clone())
        });
        if seen.iter().filter(|s| **s == Seen::Primary).count() > 1 {
            tracing::warn!("more than one backend is out of recovery; keeping the current primary");
        }
        let why = if next.is_none() {
            "no backend is out of recovery"
        } else {
            ""
        };
        router.set(0, next, why);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(d.period) => {}
            _ = router.recheck.notified() => {}
        }
    }
}

async fn probe(
    b: &BackendAddr,
    client: &mut Option<tokio_postgres::Client>,
    d: &Discovery,
    tls: &pgwarden_tls::postgres::PgTls,
) -> Seen {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = connect(b, d, tls).await;
    }
    let Some(c) = client.as_ref() else {
        return Seen::Unreachable;
    };
    match tokio::time::timeout(d.timeout, c.query_one("SELECT pg_is_in_recovery()", &[])).await {
        Ok(Ok(row)) => match row.try_get::<_, bool>(0) {
            Ok(true) => Seen::Standby,
            Ok(false) => Seen::Primary,
            Err(_) => Seen::Unreachable,
        },
        Ok(Err(e)) => {
            tracing::debug!(backend = b.id, error = %e, "role check failed");
            *client = None;
            Seen::Unreachable
        }
        Err(_) => {
            *client = None;
            Seen::Unreachable
        }
    }
}

async fn connect(
    b: &BackendAddr,
    d: &Discovery,
    tls: &pgwarden_tls::postgres::PgTls,
) -> Option<tokio_postgres::Client> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&b.host)
        .port(b.port)
        .user(&d.user)
        .dbname(&d.database)
        .application_name("pgwarden-proxy")
        .connect_timeout(d.timeout);
    if let Some(p) = &d.password {
        cfg.password(p);
    }
    let tls = tls.apply(&mut cfg);
    match tokio::time::timeout(d.timeout, cfg.connect(tls)).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Some(client)
        }
        Ok(Err(e)) => {
            tracing::debug!(backend = b.id, error = %e, "role check cannot connect");
            None
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn backend(id: usize) -> BackendAddr {
        BackendAddr {
            id,
            name: format!("pg{id}"),
            host: "127.0.0.1".into(),
            port: 5432,
            weight: 1,
        }
    }

    #[tokio::test]
    async fn the_bell_rings_after_each_ended_token_fires_at_once_or_after_a_drain() {
        let router = Router::default();
        let rings = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&rings);
        router.set_bell(Arc::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        router.set(1, Some(backend(0)), "");
        let first = router.current();
        // The first route had no primary: its ended fired, a ring.
        assert_eq!(rings.load(Ordering::SeqCst), 1);
        // The same primary again: nothing ends, no ring.
        router.set(2, Some(backend(0)), "");
        assert_eq!(rings.load(Ordering::SeqCst), 1);
        assert!(!first.ended.is_fired());
        // A switchover's drain: the old primary's transactions go on, so
        // its ended fires (and rings) only when the drain is over.
        router.set_draining(3, None, "switchover", Some(Duration::from_millis(200)));
        assert!(!first.ended.is_fired());
        assert_eq!(rings.load(Ordering::SeqCst), 1);
        tokio::time::timeout(Duration::from_secs(5), first.ended.token().cancelled())
            .await
            .unwrap();
        // The ring comes right after the token fired, in the same task.
        tokio::task::yield_now().await;
        assert_eq!(rings.load(Ordering::SeqCst), 2, "rung after the drain");
        // A change of primary: at once, after the token fired.
        let second = router.current();
        router.set(4, Some(backend(1)), "");
        assert!(second.ended.is_fired());
        assert_eq!(rings.load(Ordering::SeqCst), 3);
    }
}
