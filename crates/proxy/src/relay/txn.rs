//! A transaction-mode client's life after login: idle without a server
//! connection, a checkout at the first message of each transaction, the
//! relay, and the release at the ReadyForQuery that ends it.
//!
//! Release happens when every request is answered (no ReadyForQuery owed,
//! no extended-protocol message waiting for its Sync, nothing half sent
//! either way) and the server says `I`: outside a transaction. The
//! connection goes back to its pool as it is: the client's settings are
//! compared and replayed at the next checkout, its prepared statements are
//! mapped ([`super::statements`]), and whatever else could outlive the
//! transaction pins the client instead ([`super::features`]). A pinned
//! client keeps its server until it leaves, and the connection is then
//! reset with `server_reset_query` as in session mode.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use crate::net::Stream;
use bytes::{Buf, BytesMut};
use pgwarden_wire::backend::{self, TransactionStatus};
use pgwarden_wire::scan::Scanner;
use pgwarden_wire::{ErrorResponse, ProtocolError, sqlstate};
use tokio::io::AsyncReadExt;

use super::pump::{self, Owing, PumpEnd, PumpResult, ServerState, StopReason};
use super::replies::{Replies, apply_edits, lock, tell_own_notifications};
use super::standby;
use super::statements::{Start, Tracker};
use crate::Shared;
use crate::backend::{ServerConn, ServerCredentials};
use crate::frontend::clients::{Activity, Alarmed, CancelKey};
use crate::pool::checkout;

/// A logged-in transaction-mode client.
#[derive(Debug)]
pub(crate) struct TxnClient {
    /// The server connections' startup parameters (the pool's key).
    pub server_params: Vec<(String, String)>,
    /// The client's settings: its startup parameters, then what it SET of
    /// the tracked ones; replayed on each server connection it gets.
    pub wanted: Vec<(String, String)>,
    /// The tracked settings it did not set, at the values it was welcomed
    /// with (the pool's defaults).
    pub believed: std::sync::Arc<[(String, String)]>,
    /// How to log in to servers as the client's user.
    pub creds: ServerCredentials,
    /// Its prepared statements and reply queue.
    pub tracker: Tracker,
    /// What its checkouts keep from one to the next.
    pub memo: checkout::Memo,
    /// The server connection of its last transaction ([`ServerConn`]'s
    /// serial and served count as it left it).
    pub last_server: Option<(u64, u64)>,
    /// Once the client SET `search_path`: its startup value (if it gave
    /// one), which a RESET or DISCARD ALL brings back, as on PostgreSQL.
    pub search_path_startup: Option<Option<String>>,
    /// With `load_balance = "session"`: the backend it reads from.
    pub reader: Option<usize>,
    /// With `read_your_writes`: the primary's WAL insert position after
    /// its last transaction there; its reads go only to servers past it.
    pub wrote_lsn: u64,
    /// It came in on `proxy.read_only_listen`: every transaction goes to
    /// a standby (the primary, read-only, when none can take it).
    pub read_only: bool,
    /// Bytes of its buffer the last relay sent on.
    pub consumed: usize,
}

/// Serves the client until it leaves or is stopped; `buf` holds what it
/// sent after logging in.
pub(crate) async fn serve(
    shared: &Shared,
    client: &mut Stream,
    mut buf: BytesMut,
    cancel: CancelKey,
    mut c: TxnClient,
) {
    loop {
        match idle(client, &mut buf, &cancel, &c.tracker).await {
            Idle::Work => {}
            Idle::Left => return,
            Idle::Stopped => {
                let _ = client
                    .send(&checkout::stopped_error(shared).to_bytes())
                    .await;
                return;
            }
        }
        // Boxed: while idle, the client's task holds no room for a
        // transaction's state (a few KiB per client otherwise).
        let go_on = Box::pin(transaction(shared, client, &mut buf, &cancel, &mut c)).await;
        if !go_on {
            return;
        }
        if buf.is_empty() {
            // An idle client keeps no buffer: the next client to read on
            // this thread takes it.
            spare::put(std::mem::take(&mut buf));
        }
    }
}

/// One transaction: a server connection, the relay, the release. False
/// when the session ends with it.
async fn transaction(
    shared: &Shared,
    client: &mut Stream,
    buf: &mut BytesMut,
    cancel: &CancelKey,
    c: &mut TxnClient,
) -> bool {
    // A read-only client's transaction goes to a standby; when none can
    // take it, to the primary, whose connections for this client start
    // read-only (see `read_only_listen`).
    if c.read_only
        && let Ok(Some((slot, conn, name))) = Box::pin(standby_for(shared, c)).await
    {
        let ran = Box::pin(run_on_standby(
            shared, client, buf, cancel, c, slot, conn, &name, None,
        ))
        .await;
        if let Ran::Done(go_on) = ran {
            return go_on;
        }
    }
    let balanced = shared.settings.load_balance != pgwarden_config::LoadBalance::Off
        && c.tracker.pinned.is_none()
        && !c.read_only;
    let read = if balanced {
        standby::first_request(
            buf,
            &c.tracker,
            &shared.settings.classifier,
            standby::read_only_default(&c.wanted),
        )
    } else {
        None
    };
    let on_standby = match read {
        Some(first) => match Box::pin(standby_for(shared, c)).await {
            Ok(got) => got.map(|(slot, conn, name)| (slot, conn, name, first)),
            Err(reject) => {
                checkout::send_reject(client, reject).await;
                return false;
            }
        },
        None => None,
    };
    if let Some((slot, conn, name, first)) = on_standby {
        let ran = Box::pin(run_on_standby(
            shared,
            client,
            buf,
            cancel,
            c,
            slot,
            conn,
            &name,
            Some(first),
        ))
        .await;
        match ran {
            Ran::Done(go_on) => return go_on,
            // The standby never answered: the primary runs it.
            Ran::Again => {}
        }
    }
    let got = tokio::select! {
        // The checkout first: it is nearly always ready at once, and then
        // the stop token is never polled (nor registered with).
        biased;
        r = checkout::server_for(
            shared, &c.server_params, &c.wanted, &c.believed, &c.creds, &mut c.memo,
        ) => r,
        () = cancel.stop().cancelled() => {
            let _ = client.send(&checkout::stopped_error(shared).to_bytes()).await;
            return false;
        }
    };
    let (slot, mut conn, route) = match got {
        Ok(got) => got,
        Err(reject) => {
            checkout::send_reject(client, reject).await;
            return false;
        }
    };
    slot.count(read.is_some());
    cancel.set_server(conn.backend, conn.addr, conn.key);
    let outcome = relay(client, &mut conn, buf, c, cancel, Some(&route.ended), false).await;
    cancel.clear_server().await;
    let backend = route.primary.as_ref().map_or("", |b| b.name.as_str());
    // A transaction that only read (a read the choice left on the
    // primary, nothing pipelined behind it sent along) wrote nothing to
    // wait for: no round trip for it.
    let only_read = read.is_some_and(|r| c.consumed == r.len);
    if balanced && shared.settings.read_your_writes && !only_read {
        match outcome {
            Outcome::Released => {
                // What the transaction wrote is at or before the
                // primary's insert position now (monotonic: the newest
                // replaces an unknown one).
                let timeout = shared.settings.server_connect_timeout;
                let sql = "SELECT pg_catalog.pg_current_wal_insert_lsn()::text";
                match conn.value(sql, timeout).await {
                    Ok(lsn) => c.wrote_lsn = standby::parse_lsn(&lsn).unwrap_or(u64::MAX),
                    Err(e) => {
                        tracing::debug!(error = %e, "could not read the primary's WAL position after a transaction");
                        // Unknown: its reads stay on the primary, and the
                        // connection, in an unknown state, is closed.
                        c.wrote_lsn = u64::MAX;
                        return true;
                    }
                }
            }
            // Whether it committed is unknown: reads stay on the primary
            // until a transaction there tells the position again.
            Outcome::Lost(_) => c.wrote_lsn = u64::MAX,
            Outcome::Ended(_) => {}
        }
    }
    after_relay(
        shared, client, cancel, c, slot, conn, &route, backend, outcome,
    )
    .await
}

/// What becomes of the connection and the client after a transaction's
/// relay on `backend`. False when the session ends with it.
#[allow(clippy::too_many_arguments)]
async fn after_relay(
    shared: &Shared,
    client: &mut Stream,
    cancel: &CancelKey,
    c: &mut TxnClient,
    slot: crate::pool::Slot,
    mut conn: Box<ServerConn>,
    route: &crate::route::Route,
    backend: &str,
    outcome: Outcome,
) -> bool {
    match outcome {
        Outcome::Released => {
            if std::mem::take(&mut c.tracker.read_back)
                && !Box::pin(read_back(shared, c, &mut conn)).await
            {
                // Not reusable after a failed exchange: closed.
                return true;
            }
            slot.release(conn);
            true
        }
        Outcome::Lost(r) => {
            // What the lost transaction set is unknown: the old values stay.
            c.tracker.read_back = false;
            let went_on =
                Box::pin(answer_lost(shared, client, cancel.activity(), backend, &r)).await;
            // Tell nothing more: the cleanup only cancels and closes.
            let r = PumpResult {
                client_at_boundary: false,
                ..r
            };
            Box::pin(checkout::finish(
                shared,
                client,
                r,
                slot,
                conn,
                cancel,
                route,
                checkout::Afterwards::Reset(""),
            ))
            .await;
            went_on
        }
        Outcome::Ended(r) => {
            // Only a pinned client can have left session state behind.
            let reset = checkout::Afterwards::Reset(match c.tracker.pinned {
                Some(_) => shared.settings.server_reset_query.as_str(),
                None => "",
            });
            Box::pin(checkout::finish(
                shared, client, r, slot, conn, cancel, route, reset,
            ))
            .await;
            false
        }
    }
}

/// A standby's server connection for a read, chosen by weight among the
/// eligible servers (see [`crate::route::readers`]); `None` when the
/// read goes to the primary (it was chosen, no standby qualifies, none
/// has replayed the client's last write, or the standby cannot serve now).
async fn standby_for(
    shared: &Shared,
    c: &mut TxnClient,
) -> Result<Option<(crate::pool::Slot, Box<ServerConn>, String)>, checkout::Reject> {
    // Reads follow the route: none while there is no primary to route to
    // (a failover, a fence).
    let Some(route) = shared.router.ready() else {
        return Ok(None);
    };
    let readers = shared.router.readers();
    if readers.generation != route.generation {
        return Ok(None);
    }
    let sticky = match shared.settings.load_balance {
        pgwarden_config::LoadBalance::Session => c.reader.and_then(|id| readers.has(id)),
        _ => None,
    };
    let choose = || {
        if c.read_only {
            readers.choose_standby()
        } else {
            readers.choose()
        }
    };
    let Some(pick) = sticky
        .filter(|p| !(c.read_only && p.primary))
        .or_else(choose)
    else {
        return Ok(None);
    };
    c.reader = Some(pick.addr.id);
    if pick.primary {
        return Ok(None);
    }
    let probe = shared.settings.read_your_writes && c.wrote_lsn > pick.replay_lsn;
    let got = checkout::reader_for(
        shared,
        &pick.addr,
        &c.server_params,
        &c.wanted,
        &c.believed,
        &c.creds,
        &mut c.memo,
    )
    .await?;
    let Some((slot, mut conn)) = got else {
        return Ok(None);
    };
    if probe {
        let timeout = shared.settings.server_connect_timeout;
        let replayed = conn
            .value("SELECT pg_catalog.pg_last_wal_replay_lsn()::text", timeout)
            .await;
        match replayed.ok().as_deref().and_then(standby::parse_lsn) {
            Some(lsn) if lsn >= c.wrote_lsn => {}
            Some(_) => {
                shared.counters.reads_behind_writes.inc();
                slot.release(conn);
                return Ok(None);
            }
            None => return Ok(None),
        }
    }
    Ok(Some((slot, conn, pick.addr.name.clone())))
}

/// What became of a transaction sent to a standby.
enum Ran {
    /// It ran there: true when the session goes on.
    Done(bool),
    /// The standby gave no reply byte before its connection failed: the
    /// first request is back at the head of the buffer, for the primary.
    Again,
}

/// Runs the transaction at the head of `buf` on a standby's connection:
/// for a balanced one (`first`), one request at a time, and what the
/// client sent after it waits for the next checkout; for a read-only
/// client's, as it comes.
#[allow(clippy::too_many_arguments)]
async fn run_on_standby(
    shared: &Shared,
    client: &mut Stream,
    buf: &mut BytesMut,
    cancel: &CancelKey,
    c: &mut TxnClient,
    slot: crate::pool::Slot,
    mut conn: Box<ServerConn>,
    name: &str,
    first: Option<standby::Balanced>,
) -> Ran {
    shared.counters.standby_reads.inc();
    slot.count(true);
    cancel.set_server(conn.backend, conn.addr, conn.key);
    // Kept to run again elsewhere if the standby never answers it.
    let sent = first.map(|f| BytesMut::from(buf.get(..f.len).unwrap_or_default()));
    // A standby's transaction does not end with a change of primary.
    let outcome = relay(client, &mut conn, buf, c, cancel, None, first.is_some()).await;
    cancel.clear_server().await;
    // Nothing of the client's sent on (a failed write), or its first
    // request and no more: run again as it was.
    let again = match sent {
        Some(_) if c.consumed == 0 => Some(None),
        Some(sent) if c.consumed == sent.len() => Some(Some(sent)),
        _ => None,
    };
    if let Outcome::Lost(r) | Outcome::Ended(r) = &outcome
        && matches!(r.end, PumpEnd::ServerGone)
        && r.last_server_tag == 0
        && let Some(sent) = again
    {
        tracing::debug!(
            backend = name,
            "a standby's connection failed before answering a read; it runs on the primary"
        );
        shared.counters.standby_retries.inc();
        cancel.activity().forget_owed();
        c.reader = None;
        if let Some(mut sent) = sent {
            sent.unsplit(std::mem::take(buf));
            *buf = sent;
        }
        drop((slot, conn));
        return Ran::Again;
    }
    let route = shared.router.current();
    Ran::Done(after_relay(shared, client, cancel, c, slot, conn, &route, name, outcome).await)
}

/// The client may have changed a setting the server does not report
/// (`SET search_path`, a RESET): reads its value back now, between
/// transactions, so it follows the client to its next server connection
/// as a tracked setting does, and goes back to its default for the next
/// client of this one (as applied settings do). False when the server did
/// not answer: the connection is not to be reused.
async fn read_back(shared: &Shared, c: &mut TxnClient, conn: &mut ServerConn) -> bool {
    let timeout = shared.settings.server_connect_timeout;
    for name in super::features::READ_BACK {
        match conn.current_setting(name, timeout).await {
            Ok(value) => {
                if c.search_path_startup.is_none() {
                    c.search_path_startup = Some(
                        c.wanted
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.clone()),
                    );
                }
                c.wanted.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
                c.wanted.push(((*name).to_owned(), value.clone()));
                conn.applied.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
                conn.applied.push(((*name).to_owned(), value));
                conn.settled = None;
                c.memo.settings_changed();
            }
            Err(e) => {
                tracing::warn!(setting = name, error = %e, "could not read back a client's setting; its value stays the one it had");
                return false;
            }
        }
    }
    true
}

/// Answers each request still owed with 08007 and ReadyForQuery (idle):
/// the server was lost while it ran them, so whether they committed is
/// unknown, and nothing more will come of them. False when the client is
/// gone.
async fn answer_lost(
    shared: &Shared,
    client: &mut Stream,
    activity: &Activity,
    backend: &str,
    r: &PumpResult,
) -> bool {
    let why = match r.end {
        PumpEnd::ServerGone => format!("the server connection to backend \"{backend}\" was lost"),
        _ => format!("backend \"{backend}\" stopped being the primary"),
    };
    let e = ErrorResponse::error(
        sqlstate::TRANSACTION_RESOLUTION_UNKNOWN,
        format!("{why} while it ran this statement: whether it committed is unknown"),
    )
    .with_detail(
        "no transaction block was open; the session goes on, its next statements go to the primary",
    )
    .with_hint("check whether its effects are there before running it again");
    let mut out = BytesMut::new();
    let owed = activity.owed();
    for _ in 0..owed {
        e.encode(&mut out);
        backend::ready_for_query(&mut out, TransactionStatus::Idle);
        activity.ready();
    }
    shared.counters.lost_requests.inc_by(u64::from(owed));
    tracing::info!(
        backend,
        requests = owed,
        "{why}: its client's requests are answered 08007 and its session goes on"
    );
    client.send(&out).await.is_ok()
}

enum Idle {
    /// The client sent (the start of) a transaction.
    Work,
    /// It left (Terminate, closed socket, or a broken message, answered).
    Left,
    /// An operator or the shutdown ended it.
    Stopped,
}

/// Waits, holding no server connection and no buffer, until the client
/// sends enough to start a transaction.
async fn idle(
    client: &mut Stream,
    buf: &mut BytesMut,
    cancel: &CancelKey,
    tracker: &Tracker,
) -> Idle {
    loop {
        match tracker.start(buf) {
            Start::Go => return Idle::Work,
            Start::Terminate => return Idle::Left,
            Start::NeedMore(n) => {
                tokio::select! {
                    biased;
                    _ = cancel.alarm(None) => return Idle::Stopped,
                    r = client.ready_to_read() => if r.is_err() { return Idle::Left },
                }
                if buf.capacity() == 0
                    && let Some(b) = spare::take()
                {
                    *buf = b;
                }
                buf.reserve(n.max(2048).saturating_sub(buf.len()).min(1 << 20));
                match client.try_read_buf(buf) {
                    Ok(0) => return Idle::Left,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return Idle::Left,
                }
            }
        }
    }
}

/// Read buffers idle clients gave up, for the next client that reads on
/// the same thread: a transaction then costs no allocation for its
/// buffer, and idle clients still hold none.
mod spare {
    use std::cell::RefCell;

    use bytes::BytesMut;

    /// Buffers kept per thread, at most.
    const KEPT: usize = 32;
    /// Bigger buffers (a client sent a big message) are freed.
    const BIGGEST: usize = 64 * 1024;

    thread_local! {
        static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    /// Keeps an empty buffer for later, or frees it.
    pub(super) fn put(mut buf: BytesMut) {
        if buf.capacity() == 0 || buf.capacity() > BIGGEST {
            return;
        }
        buf.clear();
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < KEPT {
                s.push(buf);
            }
        });
    }

    /// An empty buffer someone gave up, if there is one.
    pub(super) fn take() -> Option<BytesMut> {
        SPARE.with(|s| s.borrow_mut().pop())
    }
}

/// How a transaction's relay ended.
#[derive(Debug)]
enum Outcome {
    /// At a release point: the connection can go back to its pool.
    Released,
    /// The server was lost (it died, or stopped being the primary) while
    /// it ran requests outside any transaction block the client knows of,
    /// with nothing half sent either way: the requests are answered
    /// 08007 and the session goes on.
    Lost(PumpResult),
    /// The session ends; the connection is in the state given.
    Ended(PumpResult),
}

/// Relays one transaction (or, for a pinned client, the rest of the
/// session) between the client and `server`, following the client's
/// activity and stop token in `cancel`, and `route_ended` (its route's
/// primary changed; none on a standby); with `hold` (a standby's
/// transaction), one request at a time, and nothing more once the server
/// is idle again.
async fn relay(
    client: &mut Stream,
    server: &mut ServerConn,
    buf: &mut BytesMut,
    c: &mut TxnClient,
    cancel: &CancelKey,
    route_ended: Option<&crate::route::Ended>,
    hold: bool,
) -> Outcome {
    let activity = cancel.activity();
    c.tracker
        .begin(c.last_server == Some((server.serial, server.served)));
    server.served += 1;
    c.last_server = Some((server.serial, server.served));
    // Borrowed, not moved: the relay copies nothing in or out.
    let statements = Mutex::new(&mut server.statements);
    let tracker = Mutex::new(&mut c.tracker);
    let client_writing = AtomicBool::new(false);
    // With `hold`: the server's transaction status, and a wake-up for the
    // client side at each reply.
    let txn_status = AtomicU8::new(b'I');
    // The client's bytes sent on (for a standby read run again elsewhere).
    let consumed = AtomicUsize::new(0);
    let replied = tokio::sync::Notify::new();
    let server_writing = AtomicBool::new(false);
    let mut server_scan = Scanner::new(u32::MAX);
    let mut replies = Replies {
        activity,
        tracker: &tracker,
        statements: &statements,
        reports: pump::Reports {
            status: b'I',
            params: &mut server.params,
            applied: &mut server.applied,
            settled: &mut server.settled,
        },
        last_tag: 0,
        wanted: &mut c.wanted,
        memo: &mut c.memo,
        edits: Vec::new(),
        chunk_len: 0,
        notify_pids: Vec::new(),
    };
    let server_pid = server.key.0;
    // The connection's own read buffer, kept from one transaction to the next.
    let sbuf = &mut server.buf;
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.stream.split();

    let client_to_server = async {
        loop {
            if !buf.is_empty() {
                // A standby's transaction goes one request at a time, in
                // whole messages: the end of one is never missed.
                let unit = if hold && lock(&tracker).at_boundary() {
                    standby::unit_end(buf).ok_or_else(|| standby::whole_prefix(buf))
                } else {
                    Err(buf.len())
                };
                let upto = match unit {
                    Ok((end, _)) => end,
                    Err(whole) => whole,
                };
                let fed = tracker.lock().unwrap_or_else(|p| p.into_inner()).feed(
                    buf.get(..upto).unwrap_or_default(),
                    &mut lock(&statements),
                    activity,
                );
                let fed = match fed {
                    Ok(f) => f,
                    Err(e) => return PumpEnd::ClientProtocol(e),
                };
                let bytes: &[u8] = match &fed.rewritten {
                    Some(b) => b,
                    None => buf.get(..fed.upto).unwrap_or_default(),
                };
                if !bytes.is_empty() {
                    client_writing.store(true, Ordering::Relaxed);
                    if sw.send(bytes).await.is_err() {
                        return PumpEnd::ServerGone;
                    }
                    client_writing.store(false, Ordering::Relaxed);
                }
                buf.advance(fed.upto);
                consumed.fetch_add(fed.upto, Ordering::Relaxed);
                if fed.terminate {
                    return PumpEnd::ClientTerminated;
                }
                if let Ok((end, answered)) = unit
                    && fed.upto == end
                {
                    if answered {
                        // Its answers first: once the server is idle
                        // again, the rest waits for the next checkout.
                        while activity.owed() > 0 && !activity.copying_in() {
                            replied.notified().await;
                        }
                        // Extended-protocol messages before a Query still
                        // await their Sync: that goes there too.
                        if txn_status.load(Ordering::Relaxed) == b'I' && !activity.unsynced() {
                            if lock(&tracker).pinned.is_some() {
                                // Its session state is on the standby, and
                                // its writes must not be.
                                return PumpEnd::ClientProtocol(ProtocolError::NotSupported {
                                    what: "session state (a SET of an untracked setting, a session advisory lock, a WITH HOLD cursor...) made in a transaction load-balanced to a standby cannot follow the session to the primary; start such transactions with /*NO LOAD BALANCE*/",
                                });
                            }
                            return std::future::pending().await;
                        }
                    }
                    if !buf.is_empty() {
                        continue;
                    }
                }
                if let Start::NeedMore(n) = lock(&tracker).start(buf) {
                    // Room for the rest of a message that must be whole,
                    // a MiB at a time: a header alone reserves no GiB.
                    buf.reserve(n.saturating_sub(buf.len()).min(1 << 20));
                }
            }
            if buf.capacity() - buf.len() < 256 {
                buf.reserve(pump::BUF_SIZE / 4);
            }
            let room = buf.capacity() - buf.len();
            match cr.read_buf(buf).await {
                Ok(0) | Err(_) => return PumpEnd::ClientGone,
                Ok(n) => cr.after_read(n, room),
            }
        }
    };

    let server_to_client = async {
        if sbuf.capacity() < pump::BUF_SIZE {
            sbuf.reserve(pump::BUF_SIZE - sbuf.len());
        }
        let mut carry = 0usize;
        loop {
            if !sbuf.is_empty() {
                replies.edits.clear();
                replies.notify_pids.clear();
                replies.chunk_len = sbuf.len();
                let stopped = match server_scan.scan(sbuf, &mut replies) {
                    Ok(stopped) => stopped,
                    Err(e) => return Err(PumpEnd::ServerProtocol(e)),
                };
                // A notification whose pid is not all here yet waits, with
                // what follows it, for the next read.
                let tail = stopped.map(|at| {
                    let tail = sbuf.get(at..).unwrap_or_default().to_vec();
                    sbuf.truncate(at);
                    tail
                });
                if !replies.notify_pids.is_empty() {
                    tell_own_notifications(sbuf, &replies.notify_pids, server_pid, cancel.pid);
                }
                apply_edits(sbuf, &replies.edits, &mut carry);
                if hold {
                    txn_status.store(replies.reports.status, Ordering::Relaxed);
                    replied.notify_one();
                }
                if !sbuf.is_empty() {
                    server_writing.store(true, Ordering::Relaxed);
                    if cw.send(sbuf).await.is_err() {
                        return Err(PumpEnd::ClientGone);
                    }
                    server_writing.store(false, Ordering::Relaxed);
                }
                sbuf.clear();
                if let Some(tail) = tail {
                    sbuf.extend_from_slice(&tail);
                }
                let released = sbuf.is_empty()
                    && replies.reports.status == b'I'
                    && !activity.is_busy()
                    && server_scan.at_boundary()
                    && carry == 0
                    && !client_writing.load(Ordering::Relaxed)
                    && {
                        let t = lock(&tracker);
                        t.at_boundary() && t.pinned.is_none()
                    };
                if released {
                    return Ok(());
                }
            }
            let room = sbuf.capacity() - sbuf.len();
            match sr.read_buf(sbuf).await {
                Ok(0) | Err(_) => return Err(PumpEnd::ServerGone),
                Ok(n) => sr.after_read(n, room),
            }
        }
    };

    let end = tokio::select! {
        biased;
        // The client's alarm: no lock touched at each turn (see
        // `CancelKey::alarm`).
        why = cancel.alarm(route_ended) => Some(PumpEnd::Stopped(match why {
            Alarmed::Stopped => StopReason::Stopped,
            Alarmed::RouteEnded => StopReason::PrimaryChanged,
        })),
        // The server's side before the client's: the wake that brings the
        // reply ending the transaction then completes here without a look
        // at the client's socket (what the client sent meanwhile waits in
        // it for the next transaction).
        r = server_to_client => r.err(),
        end = client_to_server => Some(end),
    };
    let (status, last_tag) = (replies.reports.status, replies.last_tag);
    drop(replies);
    c.consumed = consumed.load(Ordering::Relaxed);
    if c.tracker.settings_reset {
        // DISCARD ALL / RESET by the client: what was applied is gone.
        server.applied.clear();
        server.settled = None;
        c.tracker.settings_reset = false;
        // And a search_path it SET goes back to its startup one.
        if let Some(startup) = c.search_path_startup.take() {
            c.wanted
                .retain(|(k, _)| !k.eq_ignore_ascii_case("search_path"));
            c.wanted
                .extend(startup.map(|v| ("search_path".to_owned(), v)));
            c.memo.settings_changed();
        }
    }
    let Some(end) = end else {
        return Outcome::Released;
    };
    // Scanned already but never delivered: not for whoever reads next.
    server.buf.clear();
    // What is still owed may never be confirmed: forget it.
    c.tracker.abandon(&mut server.statements);
    let client_at_boundary = server_scan.at_boundary() && !server_writing.load(Ordering::Relaxed);
    let broken = client_writing.load(Ordering::Relaxed) || !c.tracker.at_boundary();
    let state = if broken {
        ServerState::Broken
    } else if activity.is_busy() || !server_scan.at_boundary() {
        ServerState::Owing(Owing::new(server_scan, status, last_tag))
    } else {
        ServerState::Idle(status)
    };
    let lost = matches!(
        end,
        PumpEnd::ServerGone | PumpEnd::Stopped(StopReason::PrimaryChanged)
    ) && status == b'I'
        && !broken
        && client_at_boundary
        && c.tracker.pinned.is_none()
        && !activity.unsynced()
        && !activity.copying_in();
    let r = PumpResult {
        end,
        server: state,
        client_at_boundary,
        last_server_tag: last_tag,
        unmovable: None,
    };
    if lost {
        Outcome::Lost(r)
    } else {
        Outcome::Ended(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_buffers_are_bounded_in_number_and_size() {
        while spare::take().is_some() {}
        // A big buffer (a client sent a big message) is freed, not kept.
        spare::put(BytesMut::with_capacity(1 << 20));
        assert!(spare::take().is_none());
        // An empty one is not worth keeping.
        spare::put(BytesMut::new());
        assert!(spare::take().is_none());
        for _ in 0..100 {
            let mut b = BytesMut::with_capacity(2048);
            b.extend_from_slice(b"leftover");
            spare::put(b);
        }
        let mut kept = 0;
        while let Some(b) = spare::take() {
            // Handed out empty: nothing of its last client is left.
            assert!(b.is_empty());
            kept += 1;
        }
        assert_eq!(kept, 32);
    }
}
