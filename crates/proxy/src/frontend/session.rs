//! One client, from its first byte to its last: startup, authentication,
//! the welcome, then the session: in session mode one server connection for
//! all of it (taken and given back by [`crate::pool::checkout`]), in transaction
//! mode one per transaction ([`crate::relay`]'s loop).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::net::Stream;
use bytes::BytesMut;
use pgwarden_wire::backend::{self, TransactionStatus};
use pgwarden_wire::startup::{self, StartupMessage, StartupPacket};
use pgwarden_wire::{ErrorResponse, ProtocolError, sqlstate};
use tokio::io::AsyncReadExt;
use tracing::Instrument;

use crate::Shared;
use crate::backend::{ServerConn, ServerCredentials};
use crate::frontend::auth::{self, AuthError};
use crate::frontend::clients::ClientMeta;
use crate::frontend::handshake;
use crate::frontend::startup_params::StartupParams;
use crate::pool::checkout::{
    Afterwards, Reject, finish, reject, send_reject, server_for, stopped_error,
};
use crate::relay::features::is_tracked;
use crate::relay::pump;
use crate::relay::session_log::SessionLog;

/// Serves one accepted client: the handshake phase (startup packet and
/// authentication, bounded by [`crate::frontend::handshake`]; `handshake` is its
/// place there, taken at accept so the oldest is the first accepted), then, once logged in,
/// a place among `max_client_connections` (53300 when there is none, as
/// PostgreSQL says it) and the session. Cancel requests are served in the
/// handshake phase, so they get through at the limit.
pub async fn serve(
    shared: Arc<Shared>,
    mut stream: Stream,
    peer: SocketAddr,
    handshake: handshake::Handshake,
    read_only: bool,
) {
    let span = tracing::debug_span!("client", %peer, user = tracing::field::Empty, db = tracing::field::Empty);
    async move {
        let Some((login, buf)) = Box::pin(login_phase(&shared, &mut stream, peer, handshake)).await
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
        match Box::pin(start_session(&shared, peer, &mut stream, login, read_only)).await {
            Ok(Started::Session(session)) => {
                Box::pin(run_session(&shared, &mut stream, buf, session)).await
            }
            Ok(Started::Transaction(cancel, client)) => {
                crate::relay::txn::serve(&shared, &mut stream, buf, cancel, *client).await
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
    stream: &mut Stream,
    peer: SocketAddr,
    handshake: handshake::Handshake,
) -> Option<(Login, BytesMut)> {
    let pushed_out = handshake.pushed_out().clone();
    let mut buf = BytesMut::with_capacity(1024);
    // The TLS the client was served with, if it asked.
    let mut served: Option<Arc<pgwarden_tls::ServerTls>> = None;
    let startup_timeout = shared
        .settings
        .client_login_timeout
        .min(handshake::STARTUP_PACKET_TIMEOUT);
    let startup = tokio::select! {
        () = pushed_out.cancelled() => {
            refuse_pushed_out(shared, stream).await;
            return None;
        }
        r = tokio::time::timeout(startup_timeout, read_startup(shared, stream, &mut buf, &mut served)) => r,
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
            let _ = stream.send(&e.to_error_response().to_bytes()).await;
            return None;
        }
        Err(_) => {
            tracing::debug!("no startup packet in time");
            return None;
        }
    };
    if served.is_none() && shared.tls.required() {
        tracing::debug!("refusing a plain-text client: client_tls_mode = \"require\"");
        let e = ErrorResponse::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "TLS required: pgwarden-proxy accepts only encrypted connections (proxy.client_tls_mode = \"require\")",
        )
        .with_hint("connect with sslmode=require (or stronger)");
        let _ = stream.send(&e.to_bytes()).await;
        return None;
    }
    // An address that kept failing waits before it may try again.
    let wait = shared.throttle.before(peer.ip(), std::time::Instant::now());
    if !wait.is_zero() {
        tracing::debug!(?wait, "slowing a login from an address that kept failing");
        tokio::select! {
            () = pushed_out.cancelled() => {
                refuse_pushed_out(shared, stream).await;
                return None;
            }
            () = tokio::time::sleep(wait.min(shared.settings.client_login_timeout)) => {}
        }
    }
    let method = match shared.hba() {
        Some(hba) => match check_hba(&hba, peer, served.is_some(), &startup) {
            Ok(m) => Some(m),
            Err(e) => {
                tokio::select! {
                    () = pushed_out.cancelled() => {}
                    () = delay_failure(shared, peer) => {
                        let _ = stream.send(&e.to_bytes()).await;
                    }
                }
                return None;
            }
        },
        None => None,
    };
    let certificate = match &*stream {
        Stream::TlsServed(s) => s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(pgwarden_tls::common_name),
        _ => None,
    };
    let policy = auth::Policy {
        plain: shared.settings.plain_auth,
        mock_key: &shared.mock_key,
        binding: served.as_ref().and_then(|t| t.end_point.as_deref()),
        method,
        certificate: certificate.as_deref(),
    };
    let login = tokio::select! {
        () = pushed_out.cancelled() => {
            refuse_pushed_out(shared, stream).await;
            return None;
        }
        r = authenticate(shared, stream, &mut buf, &startup, &policy, peer) => r,
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

/// Holds back the answer to a failed login from `peer` (see
/// [`crate::frontend::throttle`]): this client's task waits, nobody else.
async fn delay_failure(shared: &Shared, peer: SocketAddr) {
    let wait = shared.throttle.failed(peer.ip(), std::time::Instant::now());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// The hba file's method for this client, or the 28000 that refuses it, in
/// PostgreSQL's words.
fn check_hba(
    hba: &crate::frontend::hba::Hba,
    peer: SocketAddr,
    tls: bool,
    startup: &StartupMessage,
) -> Result<crate::frontend::hba::Method, ErrorResponse> {
    let user = startup.user().unwrap_or_default();
    let database = startup.database().unwrap_or(user);
    // As the split of startup parameters reads it, so the hba check sees
    // every walsender the server would start.
    let replication = crate::frontend::startup_params::physical_replication(&startup.params);
    let client = crate::frontend::hba::Client {
        addr: peer.ip(),
        tls,
        user,
        database,
        replication,
    };
    let encryption = if tls {
        "SSL encryption"
    } else {
        "no encryption"
    };
    let who = format!(
        "host \"{}\", user \"{user}\", database \"{database}\", {encryption}",
        peer.ip().to_canonical()
    );
    match hba.decide(&client) {
        Some(d) if d.method == crate::frontend::hba::Method::Reject => {
            tracing::info!(
                line = d.line,
                user,
                database,
                "refused by a reject line of the hba file"
            );
            Err(ErrorResponse::fatal(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                format!("hba_file rejects connection for {who}"),
            ))
        }
        Some(d) => Ok(d.method),
        None => {
            tracing::info!(user, database, "refused: no line of the hba file matches");
            Err(ErrorResponse::fatal(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                format!("no hba_file entry for {who}"),
            ))
        }
    }
}

/// Tells a connection pushed out of a full handshake phase why it is closed.
async fn refuse_pushed_out(shared: &Shared, stream: &mut Stream) {
    tracing::debug!(
        limit = shared.handshakes.limit(),
        "closing the oldest connection that has not logged in: too many are logging in"
    );
    let e = ErrorResponse::fatal(
        sqlstate::TOO_MANY_CONNECTIONS,
        "sorry, too many clients are logging in already",
    );
    let _ = stream.send(&e.to_bytes()).await;
}

/// Reads startup packets until a StartupMessage or CancelRequest arrives.
/// An SSLRequest is answered `S` and the TLS handshake done when the proxy
/// serves TLS (`served` then holds what it served with), `N` otherwise; a
/// GSS encryption request always `N`. A TLS hello in place of the first
/// packet is PostgreSQL 17's direct TLS, served likewise. `Ok(None)`: the
/// client left (or its handshake failed).
async fn read_startup(
    shared: &Shared,
    stream: &mut Stream,
    buf: &mut BytesMut,
    served: &mut Option<Arc<pgwarden_tls::ServerTls>>,
) -> Result<Option<StartupPacket>, ProtocolError> {
    if let Stream::Tcp(tcp) = stream {
        let mut first = [0u8; 1];
        match tcp.peek(&mut first).await {
            Ok(1..) if first == [TLS_HANDSHAKE] => {
                if !start_tls(shared, stream, served, true).await {
                    return Ok(None);
                }
            }
            Ok(1..) => {}
            Ok(0) | Err(_) => return Ok(None),
        }
    }
    loop {
        match startup::parse_startup(buf)? {
            Some(p @ (StartupPacket::SslRequest | StartupPacket::GssEncRequest)) => {
                // Anything sent before our answer would be a MITM injection (CVE-2021-23222 style).
                if !buf.is_empty() {
                    return Err(ProtocolError::Malformed {
                        what: "data after encryption request",
                    });
                }
                let tls = matches!(p, StartupPacket::SslRequest)
                    && !stream.is_tls()
                    && shared.tls.served().is_some();
                if stream.send(if tls { b"S" } else { b"N" }).await.is_err() {
                    return Ok(None);
                }
                if tls && !start_tls(shared, stream, served, false).await {
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

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

/// The TLS handshake with a client, in place of its plain connection.
/// False when it failed (the client was told by TLS, if at all). A direct
/// TLS client must name `postgresql` in ALPN, as PostgreSQL 17 requires
/// (so no other protocol's client is mistaken for one).
async fn start_tls(
    shared: &Shared,
    stream: &mut Stream,
    served: &mut Option<Arc<pgwarden_tls::ServerTls>>,
    direct: bool,
) -> bool {
    let Some(tls) = shared.tls.served() else {
        tracing::debug!("a TLS hello, but client_tls_mode = \"disable\"");
        return false;
    };
    let Some(tcp) = stream.take_tcp() else {
        return false;
    };
    match tls.acceptor.accept(tcp).await {
        Ok(s) => {
            if direct && s.get_ref().1.alpn_protocol() != Some(pgwarden_tls::ALPN_POSTGRESQL) {
                tracing::debug!("refusing a direct TLS connection without ALPN \"postgresql\"");
                return false;
            }
            *stream = Stream::TlsServed(Box::new(s));
            *served = Some(tls);
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "TLS handshake with a client failed");
            false
        }
    }
}

/// A logged-in client, ready for its first query.
enum Started {
    /// Session mode: with its server connection.
    Session(Box<Session>),
    /// Transaction mode: a server connection per transaction.
    Transaction(
        crate::frontend::clients::CancelKey,
        Box<crate::relay::txn::TxnClient>,
    ),
}

/// A logged-in client with its server connection.
struct Session {
    /// The pool permit of `conn`; given back while a move waits for a new
    /// server (so sessions moving within one pool never wait on their own
    /// permits), `None` only then.
    slot: Option<crate::pool::Slot>,
    conn: Box<ServerConn>,
    cancel: crate::frontend::clients::CancelKey,
    route: std::sync::Arc<crate::route::Route>,
    /// A replication connection: closed when its client leaves, never
    /// reset or cached.
    replication: bool,
    /// What a server connection on another backend needs to carry the
    /// session on: the pool's key, the client's replayed startup
    /// parameters, its credentials.
    server_params: Vec<(String, String)>,
    wanted: Vec<(String, String)>,
    creds: ServerCredentials,
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
    stream: &mut Stream,
    buf: &mut BytesMut,
    startup: &StartupMessage,
    policy: &auth::Policy<'_>,
    peer: SocketAddr,
) -> Result<Login, Reject> {
    let mut out = BytesMut::new();
    if startup.needs_negotiation() {
        let opts: Vec<&str> = startup.protocol_options().collect();
        backend::negotiate_protocol_version(&mut out, u32::from(startup::NEWEST_MINOR), &opts);
        stream.send(&out).await.map_err(|_| None)?;
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
    let exchange = auth::authenticate(stream, buf, &mut out, user, &users, policy);
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
            if matches!(
                e,
                AuthError::Failed(_) | AuthError::Certificate(_) | AuthError::NoCertificate
            ) {
                shared.counters.auth_failures.inc();
                tracing::info!(user, "{e}");
                delay_failure(shared, peer).await;
            } else {
                tracing::debug!(error = %e, "authentication did not complete");
            }
            return Err(e.to_error_response().map(|e| e.to_bytes()));
        }
    };
    backend::authentication_ok(&mut out);
    shared.counters.logins.inc();
    shared.throttle.succeeded(peer.ip());

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
    stream: &mut Stream,
    login: Login,
    read_only: bool,
) -> Result<Started, Reject> {
    let Login {
        user,
        database,
        mut params,
        creds,
        mut out,
    } = login;
    // The server connection's own startup parameters: the pool's key.
    let mut server_params = vec![
        ("user".to_owned(), user.clone()),
        ("database".to_owned(), database.clone()),
    ];
    server_params.extend(params.startup_only.iter().cloned());
    if read_only {
        // Its server connections (a pool of their own) start read-only:
        // the primary, when it must serve the client, refuses its writes
        // as a standby would, and the client is welcomed as read-only
        // (libpq's target_session_attrs = read-only accepts it).
        server_params.retain(|(k, _)| !k.eq_ignore_ascii_case("default_transaction_read_only"));
        server_params.push(("default_transaction_read_only".to_owned(), "on".to_owned()));
        params
            .replayed
            .retain(|(k, _)| !k.eq_ignore_ascii_case("default_transaction_read_only"));
    }
    // From here on the client is listed, and an operator may end it.
    let meta = ClientMeta {
        address: peer,
        user,
        database,
        connected: SystemTime::now(),
    };
    let mut cancel = shared.clients.register(meta, &shared.hard_stop);
    // A replication client keeps its walsender for its whole session,
    // whatever pool_mode says: a walsender's state (streaming, a temporary
    // slot, an exported snapshot) is the session's.
    if shared.settings.transaction_mode && !params.replication {
        let wanted = params.replayed;
        // The welcome a server would give: from what the pool learnt, or
        // from a server connection taken for the moment.
        let welcome = match shared.pools.welcome(&server_params, &wanted) {
            Some(w) => w,
            None => {
                let mut memo = crate::pool::checkout::Memo::default();
                let (slot, conn, _route) = tokio::select! {
                    r = server_for(shared, &server_params, &wanted, &[], &creds, &mut memo) => r?,
                    () = cancel.stop().cancelled() => return Err(reject(stopped_error(shared))),
                };
                let mut conn = conn;
                // Later replays of these settings (a transaction's
                // checkout) keep what the server says about them: the
                // client was told once, at login, as a direct client is.
                conn.login_notices(&wanted, &mut out);
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
        stream.send(&out).await.map_err(|_| None)?;
        let s = &shared.settings;
        let client = crate::relay::txn::TxnClient {
            server_params,
            wanted,
            believed,
            creds,
            tracker: crate::relay::Tracker::new(s.max_prepared_statements, s.max_message_bytes),
            memo: Default::default(),
            last_server: None,
            search_path_startup: None,
            reader: None,
            wrote_lsn: 0,
            read_only,
            consumed: 0,
        };
        return Ok(Started::Transaction(cancel, Box::new(client)));
    }
    let mut memo = crate::pool::checkout::Memo::default();
    let (slot, mut conn, route) = tokio::select! {
        r = server_for(shared, &server_params, &params.replayed, &[], &creds, &mut memo) => r?,
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
    conn.login_notices(&params.replayed, &mut out);
    for (k, v) in &conn.params {
        backend::parameter_status(&mut out, k, v);
    }
    backend::backend_key_data(&mut out, cancel.pid, cancel.secret);
    backend::ready_for_query(&mut out, TransactionStatus::Idle);
    stream.send(&out).await.map_err(|_| None)?;
    Ok(Started::Session(Box::new(Session {
        slot: Some(slot),
        conn,
        cancel,
        route,
        replication: params.replication,
        server_params,
        wanted: params.replayed,
        creds,
    })))
}

async fn run_session(shared: &Shared, client: &mut Stream, pending: BytesMut, mut s: Box<Session>) {
    tracing::debug!(backend = s.conn.backend, "session started");
    // A walsender's session is its server's alone: never moved.
    let log = (!s.replication).then(|| Mutex::new(SessionLog::default()));
    let mut pending = pending;
    let r = loop {
        let mut r = pump::pump(
            client,
            &mut s.conn,
            std::mem::take(&mut pending),
            shared.settings.max_message_bytes,
            s.cancel.activity(),
            s.cancel.stop(),
            s.route.ended.token(),
            log.as_ref(),
            log.as_ref().map(|_| &s.route.withdrawn),
        )
        .await;
        let Some(log) = log.as_ref().filter(|_| may_move(&r)) else {
            break r;
        };
        if let Some(why) = pump::lock(log).unmovable() {
            r.unmovable = Some(why);
            break r;
        }
        if !Box::pin(move_session(shared, client, &mut s, log, &r)).await {
            return;
        }
    };
    // No client cancel reaches the connection from here on, and those
    // already under way have landed: it may be handed on.
    s.cancel.clear_server().await;
    let reset = if s.replication {
        Afterwards::Close
    } else {
        Afterwards::Reset(shared.settings.server_reset_query.as_str())
    };
    let Some(slot) = s.slot else {
        return;
    };
    finish(shared, client, r, slot, s.conn, &s.cancel, &s.route, reset).await;
}

/// True when a session's server was lost (it closed, or is no longer the
/// primary) while the session was idle, outside a transaction, and its
/// client saw no error for it: the session may go on on another server.
fn may_move(r: &pump::PumpResult) -> bool {
    matches!(
        r.end,
        pump::PumpEnd::ServerGone | pump::PumpEnd::Stopped(pump::StopReason::PrimaryChanged)
    ) && matches!(r.server, pump::ServerState::Idle(b'I'))
        && r.client_at_boundary
        && r.last_server_tag != b'E'
}

/// Carries an idle session to a server connection of the primary (the new
/// one after a failover): the client's settings, what it SET, PREPAREd and
/// LISTENed to, its prepared statements; the client is told of reported
/// settings that differ. False when the session ended instead (the client
/// was told why).
async fn move_session(
    shared: &Shared,
    client: &mut Stream,
    s: &mut Session,
    log: &Mutex<SessionLog>,
    r: &pump::PumpResult,
) -> bool {
    let old = s.conn.backend;
    if matches!(r.end, pump::PumpEnd::ServerGone) {
        // As any lost server connection: the monitor checks sooner.
        shared.router.recheck();
    }
    s.cancel.clear_server().await;
    // The old connection is lost or on the old primary: its permit goes
    // back now (the connection itself stays in `s` until replaced).
    drop(s.slot.take());
    // The client's startup settings, then the reported values it has now.
    let mut wanted = s.wanted.clone();
    for (k, v) in s.conn.params.iter().filter(|(k, _)| is_tracked(k)) {
        wanted.retain(|(w, _)| !w.eq_ignore_ascii_case(k));
        wanted.push((k.clone(), v.clone()));
    }
    let mut memo = crate::pool::checkout::Memo::default();
    let got = tokio::select! {
        r = server_for(shared, &s.server_params, &wanted, &[], &s.creds, &mut memo) => r,
        () = s.cancel.stop().cancelled() => {
            let _ = client.send(&stopped_error(shared).to_bytes()).await;
            return false;
        }
    };
    let (slot, mut conn, route) = match got {
        Ok(got) => got,
        Err(e) => {
            shared.counters.failover_terminations.inc();
            send_reject(client, e).await;
            return false;
        }
    };
    let (replay, parses): (Vec<_>, Vec<_>) = {
        let log = pump::lock(log);
        (
            log.replay().cloned().collect(),
            log.parses().cloned().collect(),
        )
    };
    let restored = conn
        .restore(
            replay.iter(),
            parses.iter(),
            shared.settings.server_connect_timeout,
        )
        .await;
    if let Err(e) = restored {
        tracing::info!(backend = conn.backend, error = %e, "could not give a moved session its state; ending it");
        shared.counters.failover_terminations.inc();
        let e = ErrorResponse::fatal(
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection because of failover: the session's state could not be restored on the new primary",
        )
        .with_detail(e.to_string());
        let _ = client.send(&e.to_bytes()).await;
        return false;
    }
    // Reported settings the client was told otherwise of (a new server's
    // version, say): a ParameterStatus between queries, as a server sends
    // after a reload.
    let mut out = BytesMut::new();
    for (k, v) in &conn.params {
        if !s.conn.params.iter().any(|(ok, ov)| ok == k && ov == v) {
            backend::parameter_status(&mut out, k, v);
        }
    }
    if !out.is_empty() && client.send(&out).await.is_err() {
        // Never cached: it holds this session's SETs, statements and
        // LISTENs, which the next client must not inherit.
        drop((slot, conn));
        return false;
    }
    tracing::info!(
        from = old,
        to = conn.backend,
        "an idle session moved to a new server connection with its state"
    );
    shared.counters.moved_sessions.inc();
    s.cancel.set_server(conn.backend, conn.addr, conn.key);
    pump::lock(log).moved();
    s.slot = Some(slot);
    s.conn = conn;
    s.route = route;
    true
}
