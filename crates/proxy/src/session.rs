//! One client, from its first byte to its last: startup, authentication, a
//! server connection from the cache, the data path, and what becomes of the
//! server connection afterwards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::BytesMut;
use pgwarden_wire::backend::{self, TransactionStatus};
use pgwarden_wire::startup::{self, StartupMessage, StartupPacket};
use pgwarden_wire::{ErrorResponse, ProtocolError, sqlstate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::Shared;
use crate::client_auth::{self, AuthError};
use crate::clients::ClientMeta;
use crate::handshake;
use crate::pool::PoolKey;
use crate::relay::pump::{self, PumpEnd, ServerState, StopReason};
use crate::server_conn::{ServerConn, ServerCredentials, ServerError};
use crate::startup_params::StartupParams;

/// Serves one accepted client: the handshake phase (startup packet and
/// authentication, bounded by [`crate::handshake`]; `handshake` is its
/// place there, taken at accept so the oldest is the first accepted), then, once logged in,
/// a place among `max_client_connections` (53300 when there is none, as
/// PostgreSQL says it) and the session. Cancel requests are served in the
/// handshake phase, so they get through at the limit.
pub async fn serve(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    handshake: handshake::Handshake,
) {
    let span = tracing::debug_span!("client", %peer, user = tracing::field::Empty, db = tracing::field::Empty);
    async move {
        let Some((login, buf)) = Box::pin(login_phase(&shared, &mut stream, handshake)).await
        else {
            return;
        };
        // Logged in: only now does the client take one of the places.
        let Ok(_place) = Arc::clone(&shared.client_slots).try_acquire_owned() else {
            tracing::info!("refusing a client: max_client_connections reached");
            shared.counters.refused_max_clients.inc();
            let e = ErrorResponse::fatal(
                sqlstate::TOO_MANY_CONNECTIONS,
                "sorry, too many clients already",
            );
            return send_reject(&mut stream, reject(e)).await;
        };
        // Boxed, as the steps below: an idle transaction-mode client keeps
        // only what it needs, not room for the biggest step's state.
        match Box::pin(start_session(&shared, peer, &mut stream, login)).await {
            Ok(Started::Session(session)) => {
                Box::pin(run_session(&shared, &mut stream, buf, session)).await
            }
            Ok(Started::Transaction(cancel, client)) => {
                crate::relay::txn::serve(&shared, &mut stream, buf, cancel, client).await
            }
            Err(e) => send_reject(&mut stream, e).await,
        }
    }
    .instrument(span)
    .await
}

/// The handshake phase: the startup packet (a cancel request is served
/// here) and authentication. `None` when the connection ends in it (the
/// client was told why, if it could be).
async fn login_phase(
    shared: &Shared,
    stream: &mut TcpStream,
    handshake: handshake::Handshake,
) -> Option<(Login, BytesMut)> {
    let pushed_out = handshake.pushed_out().clone();
    let mut buf = BytesMut::with_capacity(1024);
    let startup_timeout = shared
        .settings
        .client_login_timeout
        .min(handshake::STARTUP_PACKET_TIMEOUT);
    let startup = tokio::select! {
        () = pushed_out.cancelled() => {
            refuse_pushed_out(shared, stream).await;
            return None;
        }
        r = tokio::time::timeout(startup_timeout, read_startup(stream, &mut buf)) => r,
    };
    let startup = match startup {
        Ok(Ok(Some(StartupPacket::Startup(m)))) => m,
        Ok(Ok(Some(StartupPacket::Cancel { pid, secret }))) => {
            shared
                .clients
                .cancel(pid, secret, shared.settings.server_connect_timeout)
                .await;
            return None;
        }
        Ok(Ok(_)) => return None,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "bad startup packet");
            let _ = stream.write_all(&e.to_error_response().to_bytes()).await;
            return None;
        }
        Err(_) => {
            tracing::debug!("no startup packet in time");
            return None;
        }
    };
    let login = tokio::select! {
        () = pushed_out.cancelled() => {
            refuse_pushed_out(shared, stream).await;
            return None;
        }
        r = authenticate(shared, stream, &mut buf, &startup) => r,
    };
    drop(handshake);
    match login {
        Ok(login) => Some((login, buf)),
        Err(e) => {
            send_reject(stream, e).await;
            None
        }
    }
}

pub(crate) async fn send_reject(stream: &mut TcpStream, e: Reject) {
    if let Some(bytes) = e {
        let _ = stream.write_all(&bytes).await;
    }
}

/// Tells a connection pushed out of a full handshake phase why it is closed.
async fn refuse_pushed_out(shared: &Shared, stream: &mut TcpStream) {
    tracing::debug!(
        limit = shared.handshakes.limit(),
        "closing the oldest connection that has not logged in: too many are logging in"
    );
    let e = ErrorResponse::fatal(
        sqlstate::TOO_MANY_CONNECTIONS,
        "sorry, too many clients are logging in already",
    );
    let _ = stream.write_all(&e.to_bytes()).await;
}

/// Reads startup packets, answering SSL and GSS encryption requests with
/// `N`, until a StartupMessage or CancelRequest arrives. `Ok(None)`: the
/// client left.
async fn read_startup(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Option<StartupPacket>, ProtocolError> {
    loop {
        match startup::parse_startup(buf)? {
            Some(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
                // Anything sent before our answer would be a MITM injection (CVE-2021-23222 style).
                if !buf.is_empty() {
                    return Err(ProtocolError::Malformed {
                        what: "data after encryption request",
                    });
                }
                if stream.write_all(b"N").await.is_err() {
                    return Ok(None);
                }
            }
            Some(p) => return Ok(Some(p)),
            None => match stream.read_buf(buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            },
        }
    }
}

/// A logged-in client, ready for its first query.
enum Started {
    /// Session mode: with its server connection.
    Session(Session),
    /// Transaction mode: a server connection per transaction.
    Transaction(crate::clients::CancelKey, crate::relay::txn::TxnClient),
}

/// A logged-in client with its server connection.
struct Session {
    slot: crate::pool::Slot,
    conn: ServerConn,
    cancel: crate::clients::CancelKey,
    route: crate::routing::Route,
}

/// Why a login ended without a session: the bytes to send the client (an
/// ErrorResponse), or `None` when the client is gone.
pub(crate) type Reject = Option<BytesMut>;

fn reject(e: ErrorResponse) -> Reject {
    Some(e.to_bytes())
}

/// A client that has authenticated: what its session needs.
struct Login {
    user: String,
    database: String,
    /// The client's other startup parameters, by what becomes of them.
    params: StartupParams,
    creds: ServerCredentials,
    /// What the client is sent once it has a server: AuthenticationOk
    /// (and a protocol negotiation answer already went out).
    out: BytesMut,
}

/// Authenticates the client, within `client_login_timeout`.
async fn authenticate(
    shared: &Shared,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    startup: &StartupMessage,
) -> Result<Login, Reject> {
    let mut out = BytesMut::new();
    if startup.needs_negotiation() {
        let opts: Vec<&str> = startup.protocol_options().collect();
        backend::negotiate_protocol_version(&mut out, u32::from(startup::NEWEST_MINOR), &opts);
        stream.write_all(&out).await.map_err(|_| None)?;
        out.clear();
    }
    let Some(user) = startup.user() else {
        return Err(reject(ErrorResponse::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "no PostgreSQL user name specified in startup packet",
        )));
    };
    let database = startup.database().unwrap_or(user);
    let span = tracing::Span::current();
    span.record("user", user);
    span.record("db", database);

    // client_login_timeout bounds the authentication exchange; waiting for
    // a server afterwards has its own bounds (pool_timeout, a pause,
    // server_connect_timeout), each with its own error.
    let users = shared.users();
    let exchange = client_auth::authenticate(
        stream,
        buf,
        user,
        &users,
        shared.settings.plain_auth,
        &shared.mock_key,
    );
    let Ok(authenticated) =
        tokio::time::timeout(shared.settings.client_login_timeout, exchange).await
    else {
        tracing::debug!("login timed out");
        return Err(reject(ErrorResponse::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "canceling authentication due to timeout",
        )));
    };
    let creds = match authenticated {
        Ok(c) => c,
        Err(e) => {
            if matches!(e, AuthError::Failed(_)) {
                shared.counters.auth_failures.inc();
                tracing::info!(user, "password authentication failed");
            } else {
                tracing::debug!(error = %e, "authentication did not complete");
            }
            return Err(e.to_error_response().map(|e| e.to_bytes()));
        }
    };
    backend::authentication_ok(&mut out);
    shared.counters.logins.inc();

    // The client's parameters, minus protocol options, user and database.
    let params: Vec<(String, String)> = startup
        .params
        .iter()
        .filter(|(k, _)| !k.starts_with("_pq_.") && k != "database" && k != "user")
        .cloned()
        .collect();
    let params = StartupParams::split(&params);
    Ok(Login {
        user: user.to_owned(),
        database: database.to_owned(),
        params,
        creds,
        out,
    })
}

/// Lists a logged-in client and, in session mode, hands it a server
/// connection; in transaction mode it gets one per transaction.
async fn start_session(
    shared: &Shared,
    peer: SocketAddr,
    stream: &mut TcpStream,
    login: Login,
) -> Result<Started, Reject> {
    let Login {
        user,
        database,
        params,
        creds,
        mut out,
    } = login;
    // The server connection's own startup parameters: the pool's key.
    let mut server_params = vec![
        ("user".to_owned(), user.clone()),
        ("database".to_owned(), database.clone()),
    ];
    server_params.extend(params.startup_only.iter().cloned());
    // From here on the client is listed, and an operator may end it.
    let meta = ClientMeta {
        address: peer,
        user,
        database,
        connected: SystemTime::now(),
    };
    let mut cancel = shared.clients.register(meta, &shared.hard_stop);
    if shared.settings.transaction_mode {
        let wanted = params.replayed;
        // The welcome a server would give: from what the pool learnt, or
        // from a server connection taken for the moment.
        let welcome = match shared.pools.welcome(&server_params, &wanted) {
            Some(w) => w,
            None => {
                let (slot, conn, _route) = tokio::select! {
                    r = server_for(shared, &server_params, &wanted, &[], &creds) => r?,
                    () = cancel.stop().cancelled() => return Err(reject(stopped_error(shared))),
                };
                let w = conn.params.clone();
                slot.release(conn);
                w
            }
        };
        for (k, v) in &welcome {
            backend::parameter_status(&mut out, k, v);
        }
        // The client now believes the tracked settings it did not send
        // have the server's defaults: each server connection it gets must
        // agree (shared by the pool's clients, not copied per client).
        let believed = shared.pools.tracked_defaults(&server_params);
        backend::backend_key_data(&mut out, cancel.pid, cancel.secret);
        backend::ready_for_query(&mut out, TransactionStatus::Idle);
        stream.write_all(&out).await.map_err(|_| None)?;
        let s = &shared.settings;
        let client = crate::relay::txn::TxnClient {
            server_params,
            wanted,
            believed,
            creds,
            tracker: crate::relay::Tracker::new(s.max_prepared_statements, s.max_message_bytes),
            route_ended: None,
        };
        return Ok(Started::Transaction(cancel, client));
    }
    let (slot, conn, route) = tokio::select! {
        r = server_for(shared, &server_params, &params.replayed, &[], &creds) => r?,
        () = cancel.stop().cancelled() => {
            tracing::info!("client ended while waiting for a server");
            return Err(reject(stopped_error(shared)));
        }
    };
    if !cancel.adopt_pid(conn.key.0) {
        tracing::debug!(
            server_pid = conn.key.0,
            pid = cancel.pid,
            "another client has this backend pid; the client gets a pid of its own"
        );
    }
    cancel.set_server(conn.backend, conn.addr, conn.key);
    for (k, v) in &conn.params {
        backend::parameter_status(&mut out, k, v);
    }
    backend::backend_key_data(&mut out, cancel.pid, cancel.secret);
    backend::ready_for_query(&mut out, TransactionStatus::Idle);
    stream.write_all(&out).await.map_err(|_| None)?;
    Ok(Started::Session(Session {
        slot,
        conn,
        cancel,
        route,
    }))
}

/// The right to a server connection of the primary, and the connection:
/// waits while the proxy is paused, then takes a cached connection or opens
/// one (with `params`, the pool's startup parameters), and gives it the
/// client's settings (`client_settings`).
pub(crate) async fn server_for(
    shared: &Shared,
    params: &[(String, String)],
    client_settings: &[(String, String)],
    believed: &[(String, String)],
    creds: &ServerCredentials,
) -> Result<(crate::pool::Slot, ServerConn, crate::routing::Route), Reject> {
    let settings = &shared.settings;
    wait_while_paused(shared).await?;
    let route = shared
        .router
        .route(settings.server_connect_timeout)
        .await
        .map_err(|why| {
            reject(ErrorResponse::fatal(
                sqlstate::CANNOT_CONNECT_NOW,
                format!("no primary backend is available: {why}"),
            ))
        })?;
    let Some(b) = route.primary.clone() else {
        return Err(reject(ErrorResponse::fatal(
            sqlstate::CANNOT_CONNECT_NOW,
            "no primary backend is available",
        )));
    };
    let key = PoolKey::new(b.id, params);
    let (slot, cached) = shared
        .pools
        .acquire(&key, settings.pool_timeout)
        .await
        .map_err(|e| {
            shared.counters.pool_timeouts.inc();
            tracing::info!(backend = b.id, "{e}");
            reject(ErrorResponse::fatal(
                sqlstate::TOO_MANY_CONNECTIONS,
                e.to_string(),
            ))
        })?;
    let fresh = cached.is_none();
    let mut conn = match cached {
        Some(c) => c,
        None => {
            let c = ServerConn::connect(
                b.id,
                &b.host,
                b.port,
                &key.params,
                creds,
                settings.tcp_keepalive,
                settings.server_connect_timeout,
            )
            .await
            .map_err(|e| {
                match &e {
                    // The server's own answer (no such database, role not allowed...): relay it.
                    ServerError::Refused { raw, .. } => {
                        tracing::debug!(backend = b.id, error = %e, "server refused the session");
                        return Some(raw.clone());
                    }
                    _ => {
                        tracing::warn!(backend = b.id, name = %b.name, error = %e, "cannot open a server connection");
                        shared.router.recheck();
                    }
                }
                reject(ErrorResponse::fatal(
                    sqlstate::CONNECTION_FAILURE,
                    format!("could not connect to backend \"{}\": {e}", b.name),
                ))
            })?;
            shared.counters.server_connects.inc();
            shared.pools.learn_defaults(params, &c.params);
            c
        }
    };
    // Tracked settings the client did not set but believes at their
    // defaults, where an earlier client left this connection otherwise.
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
    Ok((slot, conn, route))
}

/// Returns at once unless an operator paused the proxy; then waits for
/// Resume, up to `pool_timeout`.
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

async fn run_session(shared: &Shared, client: &mut TcpStream, pending: BytesMut, mut s: Session) {
    tracing::debug!(backend = s.conn.backend, "session started");
    let r = pump::pump(
        client,
        &mut s.conn,
        pending,
        shared.settings.max_message_bytes,
        s.cancel.activity(),
        s.cancel.stop(),
        &s.route.ended,
    )
    .await;
    // No client cancel reaches the connection from here on, and those
    // already under way have landed: it may be handed on.
    s.cancel.clear_server().await;
    let reset = shared.settings.server_reset_query.as_str();
    finish(
        shared, client, r, s.slot, s.conn, &s.cancel, &s.route, reset,
    )
    .await;
}

/// After a session's data path ended: tells the client why (while it can
/// still be told), cancels and drains what the server still runs, and
/// caches the connection again after a reset (ROLLBACK when a transaction
/// was left open, then `reset_query`), or closes it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn finish(
    shared: &Shared,
    client: &mut TcpStream,
    r: pump::PumpResult,
    slot: crate::pool::Slot,
    mut conn: ServerConn,
    cancel: &crate::clients::CancelKey,
    route: &crate::routing::Route,
    reset_query: &str,
) {
    let notice = match &r.end {
        PumpEnd::ClientTerminated | PumpEnd::ClientGone => None,
        PumpEnd::ClientProtocol(e) => {
            tracing::info!(error = %e, "client broke the protocol; closing its session");
            Some(e.to_error_response())
        }
        PumpEnd::ServerGone if r.last_server_tag != b'E' => Some(ErrorResponse::fatal(
            sqlstate::CONNECTION_FAILURE,
            "server closed the connection unexpectedly",
        )),
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
            Some(
                ErrorResponse::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    format!("terminating connection because of failover: backend \"{old}\" is no longer the primary"),
                )
                .with_detail(detail)
                .with_hint("reconnect: new sessions go to the new primary"),
            )
        }
    };
    if let Some(e) = notice
        && r.client_at_boundary
    {
        let _ = client.write_all(&e.to_bytes()).await;
    }
    if matches!(r.end, PumpEnd::ServerGone) {
        shared.router.recheck();
    }
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
        crate::clients::send_cancel(conn.addr, conn.key, timeout).await;
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
                    crate::clients::send_cancel(conn.addr, conn.key, timeout).await;
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
