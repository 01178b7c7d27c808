//! The logged-in clients: their cancel keys, what the admin API lists of
//! them, and how an operator ends one.
//!
//! Each client gets its own BackendKeyData: the process id of the server
//! backend it holds (so `pg_backend_pid()`, `pg_stat_activity`,
//! `pg_terminate_backend()` and NOTIFY pids agree with what it was told),
//! with a secret of the proxy's own, so the key never reaches a server the
//! client is not using. Only when that pid is taken by another client (two
//! backends' pids can coincide) does it get a random one instead. A
//! CancelRequest quoting the key is forwarded, with the server's real key,
//! to the server connection the client holds now. The process id also names
//! the client to operators (`ListClients`, `TerminateClient`).
//!
//! A cancel must reach only the statement its client was running, as with
//! PostgreSQL itself:
//! - it is forwarded only while the session waits on its server
//!   ([`Activity::is_busy`]); a cancel of an idle session is dropped, so it
//!   cannot hit the client's next statement;
//! - the client's cancel socket stays open until the server has closed its
//!   own (the postmaster closes it once the backend is signalled), so a
//!   client that waits for that close, as libpq does, sends its next query
//!   only after the cancel has landed;
//! - the session's server connection is not handed to another client while
//!   a cancel for it is in flight ([`CancelKey::clear_server`] waits).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use atomic_waker::AtomicWaker;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};
use tokio_util::sync::CancellationToken;

/// Who a client is, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMeta {
    /// Its address.
    pub address: SocketAddr,
    /// The user it logged in as.
    pub user: String,
    /// The database it asked for.
    pub database: String,
    /// When it logged in.
    pub connected: SystemTime,
}

/// One live client, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSnapshot {
    /// The process id it was given.
    pub pid: i32,
    /// Who it is.
    pub meta: ClientMeta,
    /// The backend of the server connection it holds, if it holds one.
    pub backend: Option<usize>,
}

/// Where a client's server connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Server {
    backend: usize,
    addr: SocketAddr,
    pid: i32,
    secret: i32,
}

#[derive(Debug)]
struct Entry {
    secret: i32,
    meta: ClientMeta,
    terminate: CancellationToken,
    activity: Arc<Activity>,
}

/// What a session's server connection is doing, as far as a cancel needs to
/// know: the data path updates it as messages pass, the cancel path reads it.
#[derive(Debug, Default)]
pub struct Activity {
    /// Replies owed by the server: Query, Sync and FunctionCall messages
    /// sent, less ReadyForQuery messages received (wrapping).
    owed: AtomicU32,
    /// Extended-protocol messages were sent since the last Sync.
    unsynced: AtomicBool,
    /// Syncs sent since the last Query or Execute: the server ignores them
    /// if that command turns out to start a COPY from the client.
    syncs_since_command: AtomicU32,
    /// The server is in COPY FROM STDIN mode (until CopyDone / CopyFail).
    copy_in: AtomicBool,
    /// The client ended a COPY (CopyDone / CopyFail) since its last
    /// command: a CopyInResponse still to come is for a copy already over.
    copy_ended: AtomicBool,
    /// Transaction mode: session state keeps the client on its server.
    pinned: AtomicBool,
    /// Held (shared) by each cancel in flight for this session's server
    /// connection; taken whole before the connection is handed on.
    cancels: Arc<RwLock<()>>,
    /// The server connection the client holds now: the client's own lock,
    /// so setting it at each checkout touches nothing other clients use.
    server: Mutex<Option<Server>>,
    /// Rung after the client's stop token or a route's `ended` fires.
    alarm: Alarm,
}

/// A client's wake-up, rung after something it may be waiting on fired (its
/// stop token, or a route's [`crate::route::Ended`]). A transaction-mode client
/// waits on this alone ([`CancelKey::alarm`]), and looks at the tokens only
/// once it rang: polling a token locks it, and a relay's wait is polled at
/// every turn of its transaction.
#[derive(Debug, Default)]
struct Alarm {
    rung: AtomicBool,
    waker: AtomicWaker,
}

impl Alarm {
    /// Rings: called after the token was fired, so that a waiter woken by
    /// it sees the token fired.
    fn ring(&self) {
        self.rung.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Ready once it rang since the last time it was ready.
    fn poll_rung(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Registered first: a ring after the check below wakes this waker.
        self.waker.register(cx.waker());
        if self.rung.swap(false, Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Why [`CancelKey::alarm`] completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarmed {
    /// The client's stop token fired.
    Stopped,
    /// The route's `ended` fired: its primary changed.
    RouteEnded,
}

impl Activity {
    fn server(&self) -> Option<Server> {
        *lock(&self.server)
    }

    /// The client sent a message that the server answers with ReadyForQuery.
    pub fn request(&self) {
        self.owed.fetch_add(1, Ordering::Relaxed);
    }

    /// The client sent Sync: a ReadyForQuery is owed, unless the server
    /// is copying from the client, which makes it ignore Sync.
    pub fn sync(&self) {
        if self.copy_in.load(Ordering::Relaxed) {
            return;
        }
        self.request();
        self.set_unsynced(false);
        if !self.copy_ended.load(Ordering::Relaxed) {
            self.syncs_since_command.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The client sent a command (Query or Execute).
    pub fn command(&self) {
        self.syncs_since_command.store(0, Ordering::Relaxed);
        self.copy_ended.store(false, Ordering::Relaxed);
    }

    /// The server started a COPY from the client (CopyInResponse): the
    /// Syncs sent after the command that started it are ignored (drivers
    /// such as tokio-postgres send Bind, Execute, Sync before the data),
    /// and so are those sent until the copy ends. Returns how many were
    /// taken back.
    pub fn copy_in_started(&self) -> u32 {
        // A client that already sent CopyDone (pipelined behind its COPY)
        // has ended the copy: Syncs from then on count again.
        if !self.copy_ended.load(Ordering::Relaxed) {
            self.copy_in.store(true, Ordering::Relaxed);
        }
        let n = self.syncs_since_command.swap(0, Ordering::Relaxed);
        self.owed.fetch_sub(n, Ordering::Relaxed);
        n
    }

    /// Session state now keeps the client on its server connection.
    pub fn set_pinned(&self) {
        self.pinned.store(true, Ordering::Relaxed);
    }

    /// True once the client is pinned to its server connection.
    pub fn pinned(&self) -> bool {
        self.pinned.load(Ordering::Relaxed)
    }

    /// The client ended a COPY (CopyDone or CopyFail).
    pub fn copy_in_ended(&self) {
        self.copy_in.store(false, Ordering::Relaxed);
        self.copy_ended.store(true, Ordering::Relaxed);
    }

    /// `n` requests will not be answered: the server skipped them after
    /// an error, up to a Sync.
    pub fn unanswered(&self, n: u32) {
        if n > 0 {
            self.owed.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// What was sent to a server that never answered is sent again to
    /// another: nothing is owed for it any more.
    pub fn forget_owed(&self) {
        self.owed.store(0, Ordering::Relaxed);
        self.syncs_since_command.store(0, Ordering::Relaxed);
        self.set_unsynced(false);
    }

    /// The server sent ReadyForQuery.
    pub fn ready(&self) {
        self.owed.fetch_sub(1, Ordering::Relaxed);
    }

    /// True while the server copies from the client (COPY FROM STDIN).
    pub fn copying_in(&self) -> bool {
        self.copy_in.load(Ordering::Relaxed)
    }

    /// Extended-protocol messages await (`true`) or no longer await a Sync.
    pub fn set_unsynced(&self, unsynced: bool) {
        self.unsynced.store(unsynced, Ordering::Relaxed);
    }

    /// True when extended-protocol messages await a Sync.
    pub fn unsynced(&self) -> bool {
        self.unsynced.load(Ordering::Relaxed)
    }

    /// ReadyForQuery replies the server still owes.
    pub fn owed(&self) -> u32 {
        self.owed.load(Ordering::Relaxed)
    }

    /// True while the session waits on its server: a request is not fully
    /// answered, or extended-protocol messages (an Execute) await their Sync.
    pub fn is_busy(&self) -> bool {
        self.owed() != 0 || self.unsynced()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The live clients, by the process id they were given.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    keys: Mutex<HashMap<i32, Entry>>,
}

/// A client's registration: its key, and the token an operator's
/// `TerminateClient` fires. Unregisters on drop.
#[derive(Debug)]
pub struct CancelKey {
    registry: Arc<ClientRegistry>,
    /// The process id the client was given.
    pub pid: i32,
    /// The secret the client was given.
    pub secret: i32,
    terminate: CancellationToken,
    activity: Arc<Activity>,
}

/// A cancel allowed through: where to send it, and the share of the
/// session's cancel gate that keeps its server connection from being handed
/// on until the cancel has landed.
#[derive(Debug)]
struct CancelTicket {
    server: Server,
    _gate: OwnedRwLockReadGuard<()>,
}

impl ClientRegistry {
    /// Issues a fresh key for a logged-in client, with its own stop token:
    /// a child of `stop_all` (the proxy's hard stop), fired alone by
    /// [`ClientRegistry::terminate`].
    pub fn register(self: &Arc<Self>, meta: ClientMeta, stop_all: &CancellationToken) -> CancelKey {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            // Positive, like real process ids, so tools that print them look sane.
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            if pid != 0 && !keys.contains_key(&pid) {
                let secret = rand::random::<i32>();
                let terminate = stop_all.child_token();
                let activity = Arc::new(Activity::default());
                if terminate.is_cancelled() {
                    // `stop_all` fired before (its ring_all, under this
                    // lock, came before or will find the entry anyway).
                    activity.alarm.ring();
                }
                keys.insert(
                    pid,
                    Entry {
                        secret,
                        meta,
                        terminate: terminate.clone(),
                        activity: Arc::clone(&activity),
                    },
                );
                return CancelKey {
                    registry: Arc::clone(self),
                    pid,
                    secret,
                    terminate,
                    activity,
                };
            }
        }
    }

    #[cfg(test)]
    fn lookup(&self, pid: i32, secret: i32) -> Option<Server> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.get(&pid)
            .filter(|t| t.secret == secret)
            .and_then(|t| t.activity.server())
    }

    /// Lets a cancel through when the key is live, the client holds a
    /// server connection and that connection is busy with the client's
    /// work. Decided under the client's server lock, the one
    /// [`CancelKey::clear_server`] takes, so a ticket is never issued for a
    /// connection that is being handed on.
    fn admit_cancel(&self, pid: i32, secret: i32) -> Result<CancelTicket, &'static str> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let entry = keys
            .get(&pid)
            .filter(|t| t.secret == secret)
            .ok_or("unknown key")?;
        let held = lock(&entry.activity.server);
        let server = held.ok_or("the client holds no server connection")?;
        if !entry.activity.is_busy() {
            return Err("the session is idle");
        }
        let gate = Arc::clone(&entry.activity.cancels)
            .try_read_owned()
            .map_err(|_| "the session is ending")?;
        Ok(CancelTicket {
            server,
            _gate: gate,
        })
    }

    /// Logged-in clients per (backend they hold a server connection of,
    /// user, database): (holding one, pinned); `None` for those holding none.
    pub fn usage(&self) -> HashMap<(Option<usize>, String, String), (usize, usize)> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: HashMap<(Option<usize>, String, String), (usize, usize)> = HashMap::new();
        for e in keys.values() {
            let key = (
                e.activity.server().map(|s| s.backend),
                e.meta.user.clone(),
                e.meta.database.clone(),
            );
            let n = out.entry(key).or_default();
            n.0 += 1;
            n.1 += usize::from(e.activity.pinned());
        }
        out
    }

    /// Rings every client's alarm: after `stop_all` (the proxy's hard
    /// stop) or a route's `ended` fired.
    pub fn ring_all(&self) {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        for e in keys.values() {
            e.activity.alarm.ring();
        }
    }

    /// How many clients are logged in.
    pub fn len(&self) -> usize {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when no client is logged in.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live client, oldest first.
    pub fn list(&self) -> Vec<ClientSnapshot> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<ClientSnapshot> = keys
            .iter()
            .map(|(pid, e)| ClientSnapshot {
                pid: *pid,
                meta: e.meta.clone(),
                backend: e.activity.server().map(|s| s.backend),
            })
            .collect();
        all.sort_by_key(|c| (c.meta.connected, c.pid));
        all
    }

    /// Ends the client with process id `pid` (its session gets 57P01);
    /// false when there is no such client.
    pub fn terminate(&self, pid: i32) -> bool {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        match keys.get(&pid) {
            Some(e) => {
                e.terminate.cancel();
                e.activity.alarm.ring();
                true
            }
            None => false,
        }
    }

    /// Forwards a client's CancelRequest to its server when the key is live
    /// and the session is waiting on the server, and returns once the server
    /// has acted on it (closed its side), so the caller closes the client's
    /// cancel socket only then, as PostgreSQL does. Like PostgreSQL, nothing
    /// is reported back either way.
    pub async fn cancel(&self, pid: i32, secret: i32, timeout: Duration) {
        let ticket = match self.admit_cancel(pid, secret) {
            Ok(t) => t,
            Err(why) => {
                tracing::debug!(pid, why, "cancel request not forwarded");
                return;
            }
        };
        let server = ticket.server;
        send_cancel(server.addr, (server.pid, server.secret), timeout).await;
        drop(ticket);
    }
}

/// Sends a CancelRequest for the server session with BackendKeyData
/// `key` at `addr`, and waits until the server closes the connection (the
/// postmaster does so once it has signalled the backend), all within
/// `timeout`; failures are logged, as nothing is owed to anyone either way.
pub async fn send_cancel(addr: SocketAddr, key: (i32, i32), timeout: Duration) {
    let send = async {
        let mut s = TcpStream::connect(addr).await?;
        let mut buf = BytesMut::with_capacity(16);
        frontend::cancel_request(key.0, key.1, &mut buf);
        s.write_all(&buf).await?;
        // The server sends nothing back; EOF (or a reset) means it is done.
        let mut sink = [0u8; 64];
        while s.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout(timeout, send).await {
        Ok(Ok(())) => tracing::debug!(server_pid = key.0, %addr, "cancel sent"),
        Ok(Err(e)) => {
            tracing::warn!(server_pid = key.0, %addr, error = %e, "could not send a cancel request")
        }
        Err(_) => tracing::warn!(server_pid = key.0, %addr, "sending a cancel request timed out"),
    }
}

impl CancelKey {
    /// Points the key at the server connection the client now holds: on
    /// `backend`, at `addr`, with the server's BackendKeyData.
    pub fn set_server(&self, backend: usize, addr: SocketAddr, server_key: (i32, i32)) {
        self.update(Some(Server {
            backend,
            addr,
            pid: server_key.0,
            secret: server_key.1,
        }));
    }

    /// Takes the server backend's process id as the client's own, unless
    /// another client already has it; true when it did.
    pub fn adopt_pid(&mut self, pid: i32) -> bool {
        if pid == self.pid {
            return true;
        }
        let mut keys = self.registry.keys.lock().unwrap_or_else(|p| p.into_inner());
        if pid <= 0 || keys.contains_key(&pid) {
            return false;
        }
        let Some(entry) = keys.remove(&self.pid) else {
            return false;
        };
        keys.insert(pid, entry);
        self.pid = pid;
        true
    }

    /// The client holds no server connection any more: no new cancel can
    /// reach it, and this returns once the cancels already under way have
    /// landed, so the connection can be handed on.
    pub async fn clear_server(&self) {
        self.update(None);
        // Nearly always no cancel is under way: then nothing to wait for.
        if self.activity.cancels.try_write().is_err() {
            let _all = self.activity.cancels.write().await;
        }
    }

    /// What the session's server connection is doing, for the data path to
    /// keep up to date.
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// Fires when an operator terminates this client, or when the proxy
    /// ends every session (shutdown timeout reached).
    pub fn stop(&self) -> &CancellationToken {
        &self.terminate
    }

    /// Completes when the client's stop token fired, or `route_ended`
    /// (checked at once, then again each time the alarm rings). Between
    /// rings it touches no lock: everything that fires a stop token or a
    /// route's `ended` rings the alarms after
    /// ([`ClientRegistry::terminate`], [`ClientRegistry::ring_all`]). A
    /// ring taken by an earlier wait was followed by its look at the stop
    /// token, so a stop token that fired is never missed here; the route,
    /// new to this wait, is looked at once first.
    pub async fn alarm(&self, route_ended: Option<&crate::route::Ended>) -> Alarmed {
        let route_fired = || route_ended.is_some_and(crate::route::Ended::is_fired);
        let mut look = route_fired();
        loop {
            if look {
                // A stop wins over the route.
                if self.terminate.is_cancelled() {
                    return Alarmed::Stopped;
                }
                if route_fired() {
                    return Alarmed::RouteEnded;
                }
            }
            std::future::poll_fn(|cx| self.activity.alarm.poll_rung(cx)).await;
            look = true;
        }
    }

    fn update(&self, server: Option<Server>) {
        *lock(&self.activity.server) = server;
    }
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        let mut keys = self.registry.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.remove(&self.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(user: &str, secs: u64) -> ClientMeta {
        ClientMeta {
            address: "127.0.0.1:40000".parse().unwrap(),
            user: user.into(),
            database: "db".into(),
            connected: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    #[test]
    fn keys_route_only_with_the_right_secret_and_vanish_on_drop() {
        let reg = Arc::new(ClientRegistry::default());
        let key = reg.register(meta("a", 1), &CancellationToken::new());
        assert_eq!(reg.lookup(key.pid, key.secret), None, "no server yet");
        let addr: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        key.set_server(2, addr, (77, 88));
        let server = reg.lookup(key.pid, key.secret).unwrap();
        assert_eq!((server.addr, server.pid, server.secret), (addr, 77, 88));
        assert_eq!(reg.lookup(key.pid, key.secret.wrapping_add(1)), None);
        let (pid, secret) = (key.pid, key.secret);
        drop(key);
        assert_eq!(reg.lookup(pid, secret), None);
        assert!(reg.list().is_empty());
    }

    #[tokio::test]
    async fn cancels_pass_only_while_the_session_waits_on_its_server() {
        let reg = Arc::new(ClientRegistry::default());
        let key = reg.register(meta("a", 1), &CancellationToken::new());
        let why = |r: Result<CancelTicket, &'static str>| r.err();
        assert_eq!(
            why(reg.admit_cancel(key.pid, key.secret)),
            Some("the client holds no server connection")
        );
        key.set_server(0, "127.0.0.1:5432".parse().unwrap(), (7, 8));
        assert_eq!(
            why(reg.admit_cancel(key.pid, key.secret)),
            Some("the session is idle")
        );
        key.activity().request();
        assert_eq!(
            why(reg.admit_cancel(key.pid, key.secret ^ 1)),
            Some("unknown key")
        );
        let ticket = reg.admit_cancel(key.pid, key.secret).unwrap();
        key.activity().ready();
        assert_eq!(
            why(reg.admit_cancel(key.pid, key.secret)),
            Some("the session is idle")
        );
        // An Execute waiting for its Sync is work the server may be doing.
        key.activity().set_unsynced(true);
        assert!(reg.admit_cancel(key.pid, key.secret).is_ok());
        // The connection is not handed on while the first cancel is in flight.
        let key = Arc::new(key);
        let k = Arc::clone(&key);
        let cleared = tokio::spawn(async move { k.clear_server().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !cleared.is_finished(),
            "clear_server waits for the cancel in flight"
        );
        assert_eq!(
            why(reg.admit_cancel(key.pid, key.secret)),
            Some("the client holds no server connection")
        );
        drop(ticket);
        tokio::time::timeout(Duration::from_secs(5), cleared)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn syncs_during_a_copy_from_the_client_are_not_owed() {
        // Bind, Execute, Sync, then the data: the server ignores that Sync.
        let a = Activity::default();
        a.command();
        a.sync();
        assert_eq!(a.owed(), 1);
        assert_eq!(a.copy_in_started(), 1);
        assert_eq!(a.owed(), 0);
        a.sync();
        assert_eq!(a.owed(), 0, "ignored while copying");
        a.copy_in_ended();
        a.sync();
        assert_eq!(a.owed(), 1);
        // COPY and CopyDone pipelined ahead of the CopyInResponse: the copy
        // is over by the time the server says it started.
        let b = Activity::default();
        b.request();
        b.command();
        b.copy_in_ended();
        b.copy_in_started();
        b.sync();
        assert_eq!(b.owed(), 2, "the Sync after CopyDone counts");
    }

    #[test]
    fn a_client_takes_its_backends_pid_unless_another_client_has_it() {
        let reg = Arc::new(ClientRegistry::default());
        let all = CancellationToken::new();
        let mut a = reg.register(meta("a", 1), &all);
        let mut b = reg.register(meta("b", 2), &all);
        assert!(a.adopt_pid(4242));
        assert_eq!(a.pid, 4242);
        a.set_server(0, "127.0.0.1:5432".parse().unwrap(), (4242, 9));
        assert_eq!(reg.lookup(4242, a.secret).map(|s| s.pid), Some(4242));
        // Another backend with the same pid: b keeps its own.
        let before = b.pid;
        assert!(!b.adopt_pid(4242));
        assert_eq!(b.pid, before);
        assert!(reg.terminate(4242));
        assert!(a.stop().is_cancelled() && !b.stop().is_cancelled());
        drop(a);
        assert!(b.adopt_pid(4242), "free again once a left");
        assert_eq!(reg.len(), 1);
    }

    #[tokio::test]
    async fn lists_oldest_first_with_backends_and_terminates_by_pid() {
        let reg = Arc::new(ClientRegistry::default());
        let all = CancellationToken::new();
        let newer = reg.register(meta("newer", 20), &all);
        let older = reg.register(meta("older", 10), &all);
        older.set_server(1, "127.0.0.1:5432".parse().unwrap(), (1, 2));
        let list = reg.list();
        assert_eq!(
            list.iter()
                .map(|c| (c.meta.user.as_str(), c.backend))
                .collect::<Vec<_>>(),
            vec![("older", Some(1)), ("newer", None)]
        );
        assert_eq!(list[0].pid, older.pid);
        let absent = (1..).find(|p| ![newer.pid, older.pid].contains(p)).unwrap();
        assert!(!reg.terminate(absent));
        assert!(!newer.stop().is_cancelled());
        assert!(reg.terminate(newer.pid));
        assert!(newer.stop().is_cancelled());
        assert!(!older.stop().is_cancelled());
        older.clear_server().await;
        assert_eq!(reg.list()[0].backend, None);
        // Stopping every session reaches each one's token.
        all.cancel();
        assert!(older.stop().is_cancelled());
    }

    /// Polls `f` once: its output if it is ready now.
    fn now<F: std::future::Future>(f: F) -> Option<F::Output> {
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    /// The output of a task that must end within 5 s.
    async fn within_5s<T>(task: tokio::task::JoinHandle<T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the wait ended within 5 s")
            .expect("the task did not panic")
    }

    #[tokio::test]
    async fn an_alarm_ends_its_wait_when_the_client_is_terminated_or_its_route_ends() {
        let reg = Arc::new(ClientRegistry::default());
        let all = CancellationToken::new();
        let a = Arc::new(reg.register(meta("a", 1), &all));
        let b = reg.register(meta("b", 2), &all);
        let route = crate::route::Ended::default();
        assert_eq!(now(a.alarm(Some(&route))), None, "nothing fired yet");
        // A waiter parked on the alarm is woken by the terminate.
        let k = Arc::clone(&a);
        let waiting = tokio::spawn(async move { k.alarm(None).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(reg.terminate(a.pid));
        let why = within_5s(waiting).await;
        assert_eq!(why, Alarmed::Stopped);
        // `b`, never terminated, still waits.
        assert_eq!(now(b.alarm(Some(&route))), None);
        // A route that ended before the wait began is seen at once, with
        // no ring.
        let ended = crate::route::Ended::default();
        ended.fire(None);
        assert_eq!(now(b.alarm(Some(&ended))), Some(Alarmed::RouteEnded));
        // One that ends during the wait, once the router rings everyone.
        let k = reg.register(meta("c", 3), &all);
        let r = route.clone();
        let waiting = tokio::spawn(async move { k.alarm(Some(&r)).await });
        tokio::task::yield_now().await;
        route.fire(None);
        reg.ring_all();
        let why = within_5s(waiting).await;
        assert_eq!(why, Alarmed::RouteEnded);
        // A ring for someone else's reason leaves a waiter waiting.
        assert_eq!(now(b.alarm(None)), None, "b's ring was for the route");
    }

    #[tokio::test]
    async fn the_hard_stop_ends_every_alarm_wait_even_of_a_client_registered_after_it() {
        let reg = Arc::new(ClientRegistry::default());
        let all = CancellationToken::new();
        let a = Arc::new(reg.register(meta("a", 1), &all));
        let k = Arc::clone(&a);
        let waiting = tokio::spawn(async move { k.alarm(None).await });
        tokio::task::yield_now().await;
        all.cancel();
        reg.ring_all();
        let why = within_5s(waiting).await;
        assert_eq!(why, Alarmed::Stopped);
        let late = reg.register(meta("late", 2), &all);
        assert_eq!(now(late.alarm(None)), Some(Alarmed::Stopped));
    }
}
