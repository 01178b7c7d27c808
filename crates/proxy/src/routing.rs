//! Which backend takes the clients: the primary.
//!
//! [`Router`] publishes the current primary on a watch channel. Until the
//! monitor's cluster state feeds it, [`discover`] finds the primary itself:
//! every `health_check.period` it asks each backend `pg_is_in_recovery()`
//! with the health-check role. A backend that stops being primary, or cannot
//! be reached, is withdrawn at once: clients then get a clear 57P03 instead
//! of writes to a server that may be a standby.

use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::settings::{BackendAddr, Discovery};

/// The backend clients are routed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    /// The backend.
    pub backend: BackendAddr,
}

/// Publishes the current primary.
#[derive(Debug)]
pub struct Router {
    tx: watch::Sender<Option<Primary>>,
    recheck: Notify,
}

impl Default for Router {
    fn default() -> Self {
        Router {
            tx: watch::channel(None).0,
            recheck: Notify::new(),
        }
    }
}

impl Router {
    /// The primary, waiting up to `timeout` for one to be known.
    pub async fn primary(&self, timeout: Duration) -> Option<Primary> {
        let mut rx = self.tx.subscribe();
        let wait = rx.wait_for(|p| p.is_some());
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(p)) => p.clone(),
            _ => None,
        }
    }

    /// Sets the primary (or none).
    pub fn set(&self, primary: Option<Primary>) {
        self.tx.send_if_modified(|cur| {
            if *cur == primary {
                return false;
            }
            match &primary {
                Some(p) => tracing::info!(backend = p.backend.id, name = %p.backend.name, "routing to primary"),
                None => tracing::warn!("no primary: clients are refused until one is found"),
            }
            *cur = primary;
            true
        });
    }

    /// Asks for a check now, e.g. after a connection to the primary failed.
    pub fn recheck(&self) {
        self.recheck.notify_one();
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
    stop: &CancellationToken,
) {
    let mut clients: Vec<Option<tokio_postgres::Client>> = backends.iter().map(|_| None).collect();
    loop {
        let mut seen = Vec::with_capacity(backends.len());
        for (b, client) in backends.iter().zip(clients.iter_mut()) {
            seen.push(probe(b, client, d).await);
        }
        let current = router.tx.borrow().clone();
        let still = current.filter(|p| seen.get(p.backend.id) == Some(&Seen::Primary));
        let next = still.or_else(|| {
            backends
                .iter()
                .zip(&seen)
                .find(|(_, s)| **s == Seen::Primary)
                .map(|(b, _)| Primary { backend: b.clone() })
        });
        if seen.iter().filter(|s| **s == Seen::Primary).count() > 1 {
            tracing::warn!("more than one backend is out of recovery; keeping the current primary");
        }
        router.set(next);
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
) -> Seen {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = connect(b, d).await;
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

async fn connect(b: &BackendAddr, d: &Discovery) -> Option<tokio_postgres::Client> {
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
    match tokio::time::timeout(d.timeout, cfg.connect(tokio_postgres::NoTls)).await {
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
