//! The proxy's Prometheus `/metrics` (`proxy.metrics_listen`): clients,
//! pools (PgBouncer's SHOW POOLS as gauges), the route, and counters of what
//! happened to sessions.

use std::net::SocketAddr;

use pgwarden_daemon::metrics::{self as m, Counter, Labels, Registry, labels};
use tokio::net::TcpListener;

use crate::Shared;
use crate::pool::PoolStats;

/// What the proxy counts, since it started.
#[derive(Debug, Default)]
pub struct Counters {
    /// Clients whose password was accepted (whether a server connection
    /// was then found for them or not).
    pub logins: Counter,
    /// Logins refused for a wrong password or an unknown user (28P01).
    pub auth_failures: Counter,
    /// Clients turned away at `max_client_connections` (53300).
    pub refused_max_clients: Counter,
    /// Clients that waited `pool_timeout` for a server connection in vain.
    pub pool_timeouts: Counter,
    /// Sessions ended because their server stopped being the primary.
    pub failover_terminations: Counter,
    /// Server connections opened (cached ones reused are not counted).
    pub server_connects: Counter,
    /// Checkouts (logins, transactions) that found the primary unreachable
    /// and waited for one (`proxy.failover_hold_timeout`).
    pub held_checkouts: Counter,
    /// Held checkouts that got no primary in time (57P03).
    pub held_checkout_timeouts: Counter,
    /// Requests answered 08007 because their server was lost while they
    /// ran (transaction mode); their sessions went on.
    pub lost_requests: Counter,
    /// Idle session-mode sessions moved to a new server connection (the
    /// new primary) with their state, when theirs was lost.
    pub moved_sessions: Counter,
    /// Load-balanced reads run on a standby.
    pub standby_reads: Counter,
    /// Reads kept on the primary because the chosen standby had not yet
    /// replayed the client's last write (`proxy.read_your_writes`).
    pub reads_behind_writes: Counter,
    /// Standby reads whose connection failed before any reply byte, run
    /// again on the primary.
    pub standby_retries: Counter,
}

/// Binds `proxy.metrics_listen`. A failure is logged and the proxy runs
/// without metrics: scraping is never worth refusing clients over.
pub async fn bind(addr: SocketAddr) -> Option<TcpListener> {
    match m::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(%addr, error = %e, "proxy.metrics_listen: cannot serve /metrics; running without");
            None
        }
    }
}

/// A pool's labels: its backend, user and database.
fn pool_key(p: &PoolStats) -> Labels {
    labels([
        ("backend", p.backend.to_string()),
        ("user", p.user.clone()),
        ("database", p.database.clone()),
    ])
}

/// A count as a gauge's value.
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A label value of a per-pool series and what its series reads of a
/// pool, as `("idle", |p| count(p.idle))`.
type PoolValue<'a, T> = (&'a str, fn(&PoolStats) -> T);

/// One series per pool and each of `values`: the pool's labels and
/// `label="<value>"` (as `state="idle"`), valued by what the value's
/// function reads of the pool.
fn per_pool<'a, T>(
    pools: &'a [PoolStats],
    label: &'a str,
    values: &'a [PoolValue<'a, T>],
) -> impl Iterator<Item = (Labels, T)> + 'a {
    pools.iter().flat_map(move |p| {
        values.iter().map(move |(value, of)| {
            let mut l = pool_key(p);
            l.push((label.to_owned(), (*value).to_owned()));
            (l, of(p))
        })
    })
}

/// Renders the proxy's metrics into `r`.
pub fn render(shared: &Shared, r: &mut Registry) {
    let route = shared.router.current();
    m::gauge(
        r,
        "pgwarden_proxy_generation",
        "Generation of the cluster state the proxy routes by (0: none yet)",
        i64::try_from(route.generation).unwrap_or(i64::MAX),
    );
    m::gauge(
        r,
        "pgwarden_proxy_primary_backend",
        "Backend id new sessions go to (-1: none, the proxy refuses them with 57P03)",
        route
            .primary
            .as_ref()
            .map_or(-1, |b| i64::try_from(b.id).unwrap_or(-1)),
    );
    m::gauge(
        r,
        "pgwarden_proxy_paused",
        "1 while an operator has paused the proxy",
        i64::from(*shared.paused.borrow()),
    );
    m::gauge(
        r,
        "pgwarden_proxy_clients",
        "Clients logged in now",
        i64::try_from(shared.clients.len()).unwrap_or(i64::MAX),
    );
    let pools = shared.pool_report();
    m::gauges(
        r,
        "pgwarden_proxy_pool_server_connections",
        "Server connections per pool: held by clients (active) or cached (idle)",
        per_pool(
            &pools,
            "state",
            &[("active", |p| count(p.active)), ("idle", |p| count(p.idle))],
        ),
    );
    m::gauges(
        r,
        "pgwarden_proxy_pool_waiting_clients",
        "Clients waiting for a server connection of the pool",
        pools.iter().map(|p| (pool_key(p), count(p.waiting))),
    );
    m::gauges(
        r,
        "pgwarden_proxy_pool_clients",
        "Logged-in clients per pool: holding a server connection (active), holding none between transactions (idle), or kept on theirs by session state (pinned, also active)",
        per_pool(
            &pools,
            "state",
            &[
                ("active", |p| count(p.clients_active)),
                ("idle", |p| count(p.clients_idle)),
                ("pinned", |p| count(p.clients_pinned)),
            ],
        ),
    );
    m::counters(
        r,
        "pgwarden_proxy_pool_transactions",
        "Transactions run per pool (transaction mode): those whose first request was a load-balanced read (kind=read), and all others (kind=write)",
        per_pool(
            &pools,
            "kind",
            &[("read", |p| p.reads), ("write", |p| p.writes)],
        ),
    );
    let c = &shared.counters;
    m::counter(
        r,
        "pgwarden_proxy_logins",
        "Clients whose password was accepted",
        &c.logins,
    );
    m::counter(
        r,
        "pgwarden_proxy_auth_failures",
        "Logins refused with 28P01 (wrong password or unknown user)",
        &c.auth_failures,
    );
    m::counter(
        r,
        "pgwarden_proxy_refused_max_clients",
        "Clients refused with 53300 at proxy.max_client_connections",
        &c.refused_max_clients,
    );
    m::counter(
        r,
        "pgwarden_proxy_pool_timeouts",
        "Clients refused with 53300 after waiting proxy.pool_timeout for a server connection",
        &c.pool_timeouts,
    );
    m::counter(
        r,
        "pgwarden_proxy_failover_terminations",
        "Sessions ended with 57P01 because their server stopped being the primary (failover, or fencing)",
        &c.failover_terminations,
    );
    m::counter(
        r,
        "pgwarden_proxy_server_connects",
        "Server connections opened",
        &c.server_connects,
    );
    m::counter(
        r,
        "pgwarden_proxy_held_checkouts",
        "Logins and transactions that found the primary unreachable and waited for one (proxy.failover_hold_timeout)",
        &c.held_checkouts,
    );
    m::counter(
        r,
        "pgwarden_proxy_held_checkout_timeouts",
        "Held logins and transactions refused with 57P03: no primary within proxy.failover_hold_timeout",
        &c.held_checkout_timeouts,
    );
    m::counter(
        r,
        "pgwarden_proxy_lost_requests",
        "Requests answered 08007 (outcome unknown) because their server was lost while they ran; their sessions went on (transaction mode)",
        &c.lost_requests,
    );
    m::counter(
        r,
        "pgwarden_proxy_moved_sessions",
        "Idle session-mode sessions moved with their settings, prepared statements and LISTENs to a new server connection when theirs was lost (failover)",
        &c.moved_sessions,
    );
    m::counter(
        r,
        "pgwarden_proxy_standby_reads",
        "Load-balanced reads run on a standby (proxy.load_balance)",
        &c.standby_reads,
    );
    m::counter(
        r,
        "pgwarden_proxy_reads_behind_writes",
        "Reads kept on the primary because the chosen standby had not replayed the client's last write yet (proxy.read_your_writes)",
        &c.reads_behind_writes,
    );
    m::counter(
        r,
        "pgwarden_proxy_standby_retries",
        "Standby reads whose server connection failed before any reply, run again on the primary",
        &c.standby_retries,
    );
}
