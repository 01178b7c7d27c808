//! A server connection for a client, and what becomes of it afterwards:
//! the checkout both pool modes share (route, pause, pool, connect, the
//! client's settings) and the end of a hold (cancel and drain what the
//! server still runs, reset, cache or close), with the errors clients get
//! on the way.

use crate::net::Stream;
use bytes::BytesMut;
use pgwarden_wire::{ErrorResponse, sqlstate};

use std::sync::Arc;

use crate::Shared;
use crate::backend::{ServerConn, ServerCredentials, ServerError};
use crate::pool::{Pool, PoolKey};
use crate::relay::pump::{self, PumpEnd, ServerState, StopReason};
use crate::route::Route;

pub(crate) async fn send_reject(stream: &mut Stream, e: Reject) {
    if let Some(bytes) = e {
        let _ = stream.send(&bytes).await;
    }
}

/// Why a login ended without a session: the bytes to send the client (an
/// ErrorResponse), or `None` when the client is gone.
pub(crate) type Reject = Option<BytesMut>;

pub(crate) fn reject(e: ErrorResponse) -> Reject {
    Some(e.to_bytes())
}

/// What a client's checkouts keep from one to the next, so the common
/// checkout (same backend, same settings) looks nothing up and hashes
/// nothing.
#[derive(Debug, Default)]
pub(crate) struct Memo {
    /// The pool the client last took a connection of.
    pool: Option<Arc<Pool>>,
    /// With load balancing: the pool of the other backend it last read
    /// from, swapped with `pool` when it goes there.
    other: Option<Arc<Pool>>,
    /// The fingerprint of its settings ([`ServerConn::settled`]), until
    /// they change.
    fingerprint: Option<u64>,
}

impl Memo {
    /// The client's settings changed: their fingerprint is made afresh.
    pub fn settings_changed(&mut self) {
        self.fingerprint = None;
    }
}

/// What a checkout gets: the right to a connection of the primary's
/// pool, the connection, and the route it followed.
pub(crate) type Checkout = (crate::pool::Slot, Box<ServerConn>, Arc<Route>);

/// What a client wants of a server connection, passed along the steps of
/// a checkout.
#[derive(Clone, Copy)]
struct Wanted<'a> {
    /// The pool's startup parameters.
    params: &'a [(String, String)],
    /// The client's settings.
    client_settings: &'a [(String, String)],
    /// Tracked settings it did not set but believes at their defaults.
    believed: &'a [(String, String)],
    /// How to log in to the server.
    creds: &'a ServerCredentials,
}

/// Why one try at a checkout failed.
enum Failed {
    /// What the client is told.
    Reject(Reject),
    /// The primary could not be reached (refused, reset, timed out): a
    /// failover may be under way.
    Unreachable { route: Arc<Route>, why: String },
}

/// The right to a server connection of the primary, and the connection:
/// waits while the proxy is paused, then takes a cached connection or opens
/// one (with `params`, the pool's startup parameters), and gives it the
/// client's settings (`client_settings`). `memo` is the client's own, kept
/// from one checkout to the next. When the primary cannot be reached, or
/// there is none, the checkout waits up to `proxy.failover_hold_timeout`
/// for one (see [`hold`]).
pub(crate) async fn server_for(
    shared: &Shared,
    params: &[(String, String)],
    client_settings: &[(String, String)],
    believed: &[(String, String)],
    creds: &ServerCredentials,
    memo: &mut Memo,
) -> Result<Checkout, Reject> {
    let settings = &shared.settings;
    let hold = settings.failover_hold_timeout;
    let wait = if hold.is_zero() {
        settings.server_connect_timeout
    } else {
        hold
    };
    let want = Wanted {
        params,
        client_settings,
        believed,
        creds,
    };
    let first = attempt(shared, want, memo, wait).await;
    match first {
        Ok(got) => Ok(got),
        Err(Failed::Reject(r)) => Err(r),
        Err(Failed::Unreachable { route, why }) if hold.is_zero() => {
            let name = route.primary.as_ref().map_or("", |b| b.name.as_str());
            Err(reject(ErrorResponse::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!("could not connect to backend \"{name}\": {why}"),
            )))
        }
        Err(Failed::Unreachable { route, why }) => {
            Box::pin(hold_for_primary(shared, want, memo, route, why)).await
        }
    }
}

/// The primary could not be reached: holds the checkout until a route
/// change (the monitor's new primary) or the old primary back lets a try
/// succeed, for at most `proxy.failover_hold_timeout`. The proxy only asks
/// the monitor to check sooner; whether there is a failover is the
/// monitor's decision alone.
async fn hold_for_primary(
    shared: &Shared,
    want: Wanted<'_>,
    memo: &mut Memo,
    mut route: Arc<Route>,
    mut why: String,
) -> Result<Checkout, Reject> {
    let hold = shared.settings.failover_hold_timeout;
    let until = tokio::time::Instant::now() + hold;
    shared.counters.held_checkouts.inc();
    tracing::debug!(?hold, error = %why, "the primary cannot be reached: holding the checkout");
    loop {
        shared.router.recheck();
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        // A new route at once; the same primary again after a short pause.
        shared.router.changed(&route, left.min(RETRY_HELD)).await;
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match attempt(shared, want, memo, left).await {
            Ok(got) => {
                tracing::debug!("a held checkout got its server");
                return Ok(got);
            }
            Err(Failed::Reject(r)) => return Err(r),
            Err(Failed::Unreachable { route: r, why: w }) => {
                route = r;
                why = w;
            }
        }
    }
    shared.counters.held_checkout_timeouts.inc();
    let name = route.primary.as_ref().map_or("", |b| b.name.as_str());
    tracing::info!(backend = name, ?hold, error = %why, "no primary within proxy.failover_hold_timeout: refusing a held checkout");
    Err(reject(
        ErrorResponse::fatal(
            sqlstate::CANNOT_CONNECT_NOW,
            format!(
                "no primary backend is available: \"{name}\" cannot be reached ({why}) \
                 and no failover completed within proxy.failover_hold_timeout ({hold:?})"
            ),
        )
        .with_hint("retry later; pgwardenctl status shows the backends"),
    ))
}

/// True for a server's refusal (SQLSTATE `code`) that says it is going
/// away or not ready yet, rather than anything about the client.
fn going_away(code: &str) -> bool {
    code == sqlstate::CANNOT_CONNECT_NOW || code == sqlstate::ADMIN_SHUTDOWN
}

/// How often a held checkout tries the same primary again.
const RETRY_HELD: std::time::Duration = std::time::Duration::from_millis(250);

/// One try at a checkout; `route_wait` bounds the wait for a primary when
/// there is none.
async fn attempt(
    shared: &Shared,
    want: Wanted<'_>,
    memo: &mut Memo,
    route_wait: std::time::Duration,
) -> Result<Checkout, Failed> {
    if *shared.paused.borrow() {
        Box::pin(wait_while_paused(shared))
            .await
            .map_err(Failed::Reject)?;
    }
    let route = match shared.router.ready() {
        Some(r) => r,
        None => {
            // No primary now (a failover under way, or not known yet):
            // wait for one.
            shared.counters.held_checkouts.inc();
            shared.router.route(route_wait).await.map_err(|why| {
                shared.counters.held_checkout_timeouts.inc();
                Failed::Reject(reject(ErrorResponse::fatal(
                    sqlstate::CANNOT_CONNECT_NOW,
                    format!("no primary backend is available: {why}"),
                )))
            })?
        }
    };
    let Some(b) = route.primary.clone() else {
        return Err(Failed::Reject(reject(ErrorResponse::fatal(
            sqlstate::CANNOT_CONNECT_NOW,
            "no primary backend is available",
        ))));
    };
    let (slot, conn) = match take(shared, &b, want, memo).await {
        Ok(got) => got,
        Err(TakeFailed::Unreachable(why)) => {
            shared.router.recheck();
            return Err(Failed::Unreachable { route, why });
        }
        Err(TakeFailed::Reject(r)) => return Err(Failed::Reject(r)),
    };
    route.first_use.mark();
    Ok((slot, conn, route))
}

/// A server connection of a standby for a load-balanced read (see
/// [`crate::route::readers`]): as a checkout of the primary, without the
/// wait for a failover. `None` when the standby cannot give one now (the
/// caller goes to the primary instead); a refusal by the server that is
/// about the client (no such database, say) is the client's answer.
pub(crate) async fn reader_for(
    shared: &Shared,
    b: &crate::settings::BackendAddr,
    params: &[(String, String)],
    client_settings: &[(String, String)],
    believed: &[(String, String)],
    creds: &ServerCredentials,
    memo: &mut Memo,
) -> Result<Option<(crate::pool::Slot, Box<ServerConn>)>, Reject> {
    if *shared.paused.borrow() {
        return Ok(None);
    }
    let want = Wanted {
        params,
        client_settings,
        believed,
        creds,
    };
    match take(shared, b, want, memo).await {
        Ok(got) => Ok(Some(got)),
        // A full pool, a server refusing (too many clients, say): the
        // primary takes the read; a refusal about the client it repeats.
        Err(TakeFailed::Reject(_)) => {
            tracing::debug!(
                backend = b.id,
                "a standby refused a read; it goes to the primary"
            );
            Ok(None)
        }
        Err(TakeFailed::Unreachable(why)) => {
            tracing::debug!(backend = b.id, error = %why, "a standby cannot take a read now; it goes to the primary");
            Ok(None)
        }
    }
}

/// Why [`take`] failed.
enum TakeFailed {
    /// What the client is told.
    Reject(Reject),
    /// The server could not be reached: why.
    Unreachable(String),
}

/// A connection of backend `b`'s pool with the client's settings: a
/// cached one or a new one.
async fn take(
    shared: &Shared,
    b: &crate::settings::BackendAddr,
    want: Wanted<'_>,
    memo: &mut Memo,
) -> Result<(crate::pool::Slot, Box<ServerConn>), TakeFailed> {
    let settings = &shared.settings;
    let Wanted {
        params,
        client_settings,
        believed,
        creds,
    } = want;
    if memo.pool.as_ref().is_some_and(|p| p.backend() != b.id)
        && memo.other.as_ref().is_some_and(|p| p.backend() == b.id)
    {
        std::mem::swap(&mut memo.pool, &mut memo.other);
    }
    let pool = match &memo.pool {
        Some(p) if p.backend() == b.id => p,
        _ => {
            memo.other = memo.pool.take();
            memo.pool
                .insert(shared.pools.pool(&PoolKey::new(b.id, params)))
        }
    };
    let (slot, cached) = shared
        .pools
        .acquire(pool, settings.pool_timeout)
        .await
        .map_err(|e| {
            shared.counters.pool_timeouts.inc();
            tracing::info!(backend = b.id, "{e}");
            TakeFailed::Reject(reject(ErrorResponse::fatal(
                sqlstate::TOO_MANY_CONNECTIONS,
                e.to_string(),
            )))
        })?;
    let fresh = cached.is_none();
    let mut conn = match cached {
        Some(c) => c,
        None => {
            // Boxed, as the settling below: the rare steps keep their
            // state off the future every transaction makes.
            let c = Box::pin(ServerConn::connect(
                b.id,
                &b.host,
                b.port,
                &pool.key().params,
                creds,
                &crate::backend::Dial {
                    keepalive: settings.tcp_keepalive,
                    tls: shared.tls.to_server(),
                    timeout: settings.server_connect_timeout,
                },
            ))
            .await;
            let c = match c {
                Ok(c) => c,
                // The server's own answer (no such database, role not allowed...): relay it.
                // But for shutting down, starting up, in recovery (57P03)
                // or ended at once (57P01): the server is going away or not
                // there yet, as in a failover or a switchover.
                Err(ServerError::Refused { raw, fields }) if !going_away(&fields.code) => {
                    tracing::debug!(backend = b.id, "server refused the session");
                    return Err(TakeFailed::Reject(Some(raw)));
                }
                Err(e) => {
                    tracing::warn!(backend = b.id, name = %b.name, error = %e, "cannot open a server connection");
                    drop(slot);
                    return Err(TakeFailed::Unreachable(e.to_string()));
                }
            };
            shared.counters.server_connects.inc();
            // The welcome new clients get is the primary's (a standby
            // says in_hot_standby = on, which libpq's
            // target_session_attrs=read-write refuses).
            let primary = shared.router.current().primary.as_ref().map(|p| p.id);
            if primary == Some(b.id) {
                shared.pools.learn_defaults(params, &c.params);
            }
            Box::new(c)
        }
    };
    // The common case: the connection's last client had the same
    // settings, and nothing changed them since.
    let fingerprint = *memo
        .fingerprint
        .get_or_insert_with(|| fingerprint(client_settings, believed));
    if conn.settled != Some(fingerprint) {
        Box::pin(settle(shared, b, want, &mut conn, fresh))
            .await
            .map_err(TakeFailed::Reject)?;
        conn.settled = Some(fingerprint);
    }
    Ok((slot, conn))
}

/// Gives `conn` the client's settings: `want.client_settings`, and the
/// tracked settings it did not set but believes at their defaults
/// (`want.believed`) where an earlier client left the connection otherwise.
async fn settle(
    shared: &Shared,
    b: &crate::settings::BackendAddr,
    want: Wanted<'_>,
    conn: &mut ServerConn,
    fresh: bool,
) -> Result<(), Reject> {
    let settings = &shared.settings;
    let (params, client_settings, believed) = (want.params, want.client_settings, want.believed);
    let differing = believed.iter().filter(|(k, v)| {
        !client_settings
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(k))
            && !conn
                .params
                .iter()
                .any(|(pk, pv)| pk.eq_ignore_ascii_case(k) && pv == v)
    });
    let all: Vec<(String, String)>;
    let wanted = if differing.clone().next().is_none() {
        client_settings
    } else {
        all = client_settings.iter().chain(differing).cloned().collect();
        &all
    };
    let applied = conn
        .apply_params(wanted, settings.server_connect_timeout)
        .await;
    if let Err(e) = applied {
        // The server's own answer (an invalid value...): relay it, as the
        // server would have refused the same startup parameter.
        tracing::debug!(backend = b.id, error = %e, "the client's settings were refused");
        return Err(match e {
            ServerError::Refused { raw, .. } => Some(raw),
            e => reject(ErrorResponse::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!(
                    "could not set up the session on backend \"{}\": {e}",
                    b.name
                ),
            )),
        });
    }
    if fresh || matches!(applied, Ok(true)) {
        shared
            .pools
            .learn_reported(params, client_settings, &conn.params);
    }
    Ok(())
}

/// A fingerprint of the settings a client wants of its server connection
/// (see [`ServerConn::settled`]), keyed per process so that no client can
/// aim for another's.
fn fingerprint(client_settings: &[(String, String)], believed: &[(String, String)]) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut h = KEYS.get_or_init(Default::default).build_hasher();
    client_settings.hash(&mut h);
    believed.hash(&mut h);
    h.finish()
}

/// Returns at once unless an operator paused the proxy; then waits for
/// Resume, up to `pool_timeout`. (Boxed by its caller: the state of a
/// wait is not in every checkout's future.)
async fn wait_while_paused(shared: &Shared) -> Result<(), Reject> {
    let mut paused = shared.paused.subscribe();
    if !*paused.borrow_and_update() {
        return Ok(());
    }
    tracing::debug!("the proxy is paused; waiting for resume");
    let timeout = shared.settings.pool_timeout;
    match tokio::time::timeout(timeout, paused.wait_for(|p| !*p)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(reject(ErrorResponse::fatal(
            sqlstate::CANNOT_CONNECT_NOW,
            format!(
                "pgwarden-proxy is paused by an operator and was not resumed within {timeout:?}"
            ),
        ))),
    }
}

/// What a client whose session's stop token fired is told: the proxy's
/// shutdown, or an operator's terminate (as by `pg_terminate_backend`).
pub(crate) fn stopped_error(shared: &Shared) -> ErrorResponse {
    let why = if shared.hard_stop.is_cancelled() {
        "terminating connection because pgwarden-proxy is shutting down"
    } else {
        "terminating connection due to administrator command"
    };
    ErrorResponse::fatal(sqlstate::ADMIN_SHUTDOWN, why)
}

/// What becomes of a server connection once its client is done with it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Afterwards<'a> {
    /// Cached again once idle, after a reset: ROLLBACK when a transaction
    /// was left open, then this query (none when empty).
    Reset(&'a str),
    /// Closed at once, whatever it was doing: a replication connection (a
    /// walsender cannot be reset, and its client's leaving must end its
    /// streaming and release its temporary slot now, as a direct
    /// connection's close would).
    Close,
}

/// After a session's data path ended: tells the client why (while it can
/// still be told), then, as `afterwards` says, cancels and drains what the
/// server still runs and caches the connection again after a reset, or
/// closes it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn finish(
    shared: &Shared,
    client: &mut Stream,
    r: pump::PumpResult,
    slot: crate::pool::Slot,
    mut conn: Box<ServerConn>,
    cancel: &crate::frontend::clients::CancelKey,
    route: &Route,
    afterwards: Afterwards<'_>,
) {
    let notice = match &r.end {
        PumpEnd::ClientTerminated | PumpEnd::ClientGone => None,
        PumpEnd::ClientProtocol(e @ pgwarden_wire::ProtocolError::NotSupported { .. }) => {
            tracing::info!(error = %e, "client needs what its pool mode cannot do; closing its session");
            Some(e.to_error_response())
        }
        PumpEnd::ClientProtocol(e) => {
            tracing::info!(error = %e, "client broke the protocol; closing its session");
            Some(e.to_error_response())
        }
        PumpEnd::ServerGone if r.last_server_tag != b'E' => {
            let e = ErrorResponse::fatal(
                sqlstate::CONNECTION_FAILURE,
                "server closed the connection unexpectedly",
            );
            Some(match r.unmovable {
                // An idle session that could not follow its server.
                Some(why) => {
                    shared.counters.failover_terminations.inc();
                    ErrorResponse::fatal(
                        sqlstate::ADMIN_SHUTDOWN,
                        format!("terminating connection: its server was lost, and the session holds a {why}, which cannot move to another server"),
                    )
                    .with_hint("reconnect: new sessions go to the primary")
                }
                None => e,
            })
        }
        PumpEnd::ServerGone => None,
        PumpEnd::ServerProtocol(e) => {
            tracing::warn!(error = %e, "server broke the protocol");
            Some(ErrorResponse::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!("server protocol error: {e}"),
            ))
        }
        PumpEnd::Stopped(StopReason::Stopped) => {
            if !shared.hard_stop.is_cancelled() {
                tracing::info!("client terminated by an operator");
            }
            Some(stopped_error(shared))
        }
        PumpEnd::Stopped(StopReason::PrimaryChanged) => {
            let now = shared.router.current();
            let detail = match &now.primary {
                Some(p) => format!(
                    "the primary is now backend \"{}\" (generation {})",
                    p.name, now.generation
                ),
                None => format!("there is no primary right now: {}", now.why_none),
            };
            let old = route
                .primary
                .as_ref()
                .map_or_else(|| conn.backend.to_string(), |b| b.name.clone());
            tracing::info!(backend = %old, "ending a session: its server is no longer the primary");
            shared.counters.failover_terminations.inc();
            let held = r.unmovable.map_or_else(String::new, |why| {
                format!(", and the session holds a {why}, which cannot move to another server")
            });
            Some(
                ErrorResponse::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    format!("terminating connection because of failover: backend \"{old}\" is no longer the primary{held}"),
                )
                .with_detail(detail)
                .with_hint("reconnect: new sessions go to the new primary"),
            )
        }
    };
    if let Some(e) = notice
        && r.client_at_boundary
    {
        let _ = client.send(&e.to_bytes()).await;
    }
    if matches!(r.end, PumpEnd::ServerGone) {
        shared.router.recheck();
    }
    let reset_query = match afterwards {
        Afterwards::Reset(query) => query,
        Afterwards::Close => {
            tracing::debug!(end = ?r.end, "closing a replication connection with its client");
            drop(conn);
            return;
        }
    };
    let server_alive = !matches!(r.end, PumpEnd::ServerGone | PumpEnd::ServerProtocol(_));
    let timeout = shared.settings.server_connect_timeout;
    let busy = server_alive && r.server.is_busy();
    // A client that said goodbye (Terminate) after its last requests gets
    // them run to the end, as PostgreSQL runs a pipeline before the
    // Terminate behind it; any other end cancels what the server still runs.
    let said_goodbye = matches!(r.end, PumpEnd::ClientTerminated);
    if busy && !said_goodbye {
        // The server would go on running the statement (holding its locks
        // and a PostgreSQL connection) until it next writes to a closed
        // socket: cancel it first, as PostgreSQL ends the query of a
        // terminated backend at once. The pool slot stays taken until the
        // connection is idle again or closed.
        tracing::debug!(end = ?r.end, "cancelling the statement the session left running");
        crate::frontend::clients::send_cancel(conn.addr, conn.key, timeout).await;
    }
    let reusable = matches!(r.end, PumpEnd::ClientTerminated | PumpEnd::ClientGone);
    let idle = match r.server {
        ServerState::Idle(status) if reusable => Some(status),
        ServerState::Owing(owing) if reusable => {
            let status = pump::drain(&mut conn, owing, cancel.activity(), timeout).await;
            if status.is_none() {
                tracing::info!(
                    backend = conn.backend,
                    ?timeout,
                    "a server connection did not finish what its client left in time; closing it"
                );
                if said_goodbye {
                    crate::frontend::clients::send_cancel(conn.addr, conn.key, timeout).await;
                }
            }
            status
        }
        _ => None,
    };
    match idle {
        Some(status) => {
            let rollback = status != b'I';
            match conn.reset(rollback, reset_query, timeout).await {
                Ok(()) => slot.release(conn),
                Err(e) => tracing::debug!(error = %e, "server connection not reusable after reset"),
            }
        }
        None => tracing::debug!(end = ?r.end, "closing the server connection"),
    }
}
