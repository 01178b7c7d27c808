//! The data path: bytes between a client and its server connection.
//!
//! Both directions run at once, each reading into its own buffer and
//! writing it whole to the other side, so neither side can stall the other
//! (a client pipelining large queries while the server streams large
//! results). A [`Scanner`] per direction follows message boundaries without
//! copying, which gives the proxy just what it must know:
//!
//! - from the client: Terminate (not forwarded: the server connection lives
//!   on), message types a client may not send (08P01), oversize messages,
//!   and how many ReadyForQuery replies are still owed (one per Query,
//!   Sync and FunctionCall);
//! - from the server: ReadyForQuery's transaction status and ParameterStatus.
//!
//! When the client leaves, the connection goes back to the cache only once
//! no reply is owed and no extended-protocol message is waiting for a Sync:
//! a client gone in the middle of a query leaves a server that still owes
//! replies, which the session cancels and [`drain`]s first.

use crate::net::Stream;
use bytes::BytesMut;
use pgwarden_wire::ProtocolError;
use pgwarden_wire::scan::{self, Flow, Observer, Scanner};
use postgres_protocol::message::frontend;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use std::sync::Mutex;

use super::session_log::SessionLog;
use crate::backend::ServerConn;
use crate::frontend::clients::Activity;

pub(crate) const BUF_SIZE: usize = 32 * 1024;

/// Why a session's data path ended.
#[derive(Debug)]
pub enum PumpEnd {
    /// The client sent Terminate.
    ClientTerminated,
    /// The client closed its socket (or it failed).
    ClientGone,
    /// The client broke the protocol.
    ClientProtocol(ProtocolError),
    /// The server closed its socket (or it failed).
    ServerGone,
    /// The server broke the protocol.
    ServerProtocol(ProtocolError),
    /// The proxy stopped the session.
    Stopped(StopReason),
}

/// Why the proxy ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The session's own stop token fired: the proxy is shutting down, or
    /// an operator terminated the client (the caller knows which).
    Stopped,
    /// Its server is no longer the primary (failover, or the proxy lost
    /// the monitor and fences).
    PrimaryChanged,
}

/// The state of the session when the data path ended.
#[derive(Debug)]
pub struct PumpResult {
    /// Why it ended.
    pub end: PumpEnd,
    /// Where the server connection's conversation stands.
    pub server: ServerState,
    /// True when the client's stream is between server messages, so the
    /// proxy may still write an ErrorResponse to it.
    pub client_at_boundary: bool,
    /// Type of the last message forwarded from the server.
    pub last_server_tag: u8,
    /// Session mode: what the session held that could not move to another
    /// server, when it ends because its server was lost.
    pub unmovable: Option<&'static str>,
}

/// Where a server connection's conversation stands when its client stops.
#[derive(Debug)]
pub enum ServerState {
    /// Every request answered: between requests, with this transaction
    /// status (`b'I'`, `b'T'` or `b'E'`).
    Idle(u8),
    /// The server still owes replies, but every byte the client sent it was
    /// a whole message: [`drain`] can bring it back to idle.
    Owing(Owing),
    /// Half a client message reached the server (or a write failed): the
    /// connection cannot be brought back.
    Broken,
}

impl ServerState {
    /// True when the server may be running something for the client.
    pub fn is_busy(&self) -> bool {
        !matches!(self, ServerState::Idle(_))
    }
}

/// A server connection owing replies: what [`drain`] needs to read them.
#[derive(Debug)]
pub struct Owing {
    scan: Scanner,
    status: u8,
    last_tag: u8,
}

impl Owing {
    /// Where the server's side of a data path stopped: its scanner, the
    /// last transaction status and the last message type.
    pub(crate) fn new(scan: Scanner, status: u8, last_tag: u8) -> Owing {
        Owing {
            scan,
            status,
            last_tag,
        }
    }
}

/// What the client has asked of the server: the counts live in the
/// session's [`Activity`], which the cancel path reads too.
#[derive(Debug)]
struct ClientSide<'a> {
    activity: &'a Activity,
    /// What the session holds that could move to another server.
    log: Option<&'a Mutex<SessionLog>>,
    /// A write to the server was under way (the server may hold half a message).
    writing: bool,
}

impl Observer for ClientSide<'_> {
    fn start(&mut self, tag: u8) -> Result<Flow, ProtocolError> {
        if let Some(log) = self.log {
            lock(log).client_start(tag, self.activity.unsynced());
        }
        match tag {
            b'X' => return Ok(Flow::Stop),
            b'Q' => {
                self.activity.request();
                self.activity.command();
            }
            b'F' => self.activity.request(),
            b'S' => self.activity.sync(),
            b'E' => {
                self.activity.set_unsynced(true);
                self.activity.command();
            }
            b'c' | b'f' => self.activity.copy_in_ended(),
            b'P' | b'B' | b'D' | b'C' => self.activity.set_unsynced(true),
            t if scan::is_frontend_tag(t) => {}
            t => return Err(ProtocolError::UnexpectedMessage { tag: t }),
        }
        Ok(Flow::Continue)
    }

    fn wants_body(&self, tag: u8) -> bool {
        self.log.is_some() && matches!(tag, b'Q' | b'P' | b'C')
    }

    fn body(&mut self, tag: u8, body: &[u8]) {
        if let Some(log) = self.log {
            lock(log).client_body(tag, body);
        }
    }
}

/// What the server has answered.
struct ServerSide<'a> {
    activity: &'a Activity,
    log: Option<&'a Mutex<SessionLog>>,
    reports: Reports<'a>,
    last_tag: u8,
    /// A write to the client was under way (it may hold half a message).
    writing: bool,
}

impl Observer for ServerSide<'_> {
    fn start(&mut self, tag: u8) -> Result<Flow, ProtocolError> {
        self.last_tag = tag;
        if tag == b'G' {
            self.activity.copy_in_started();
        }
        if let Some(log) = self.log {
            lock(log).server_start(tag);
        }
        Ok(Flow::Continue)
    }

    fn wants_body(&self, tag: u8) -> bool {
        tag == b'Z' || tag == b'S' || (tag == b'C' && self.log.is_some())
    }

    fn body(&mut self, tag: u8, body: &[u8]) {
        if let Some(log) = self.log {
            match (tag, body.first()) {
                (b'C', _) => return lock(log).server_command(body),
                (b'Z', Some(&status)) => lock(log).server_ready(status),
                _ => {}
            }
        }
        self.reports.body(tag, body, self.activity);
    }
}

/// What the server's ReadyForQuery and ParameterStatus bodies tell both
/// data paths: the transaction status, and the server connection's
/// reported settings.
pub(crate) struct Reports<'a> {
    /// The transaction status of the last ReadyForQuery.
    pub(crate) status: u8,
    /// The connection's [`ServerConn::params`].
    pub(crate) params: &'a mut Vec<(String, String)>,
    /// The connection's [`ServerConn::applied`].
    pub(crate) applied: &'a mut Vec<(String, String)>,
    /// The connection's [`ServerConn::settled`].
    pub(crate) settled: &'a mut Option<u64>,
}

impl Reports<'_> {
    /// Takes a ReadyForQuery (`Z`: its transaction status, one reply less
    /// owed) or ParameterStatus (`S`: the connection's reported settings,
    /// which unsettles it: see [`ServerConn::settled`]) body.
    pub(crate) fn body(&mut self, tag: u8, body: &[u8], activity: &Activity) {
        if tag == b'Z' {
            if let Some(&s) = body.first() {
                self.status = s;
            }
            activity.ready();
        } else {
            *self.settled = None;
            ServerConn::note_param(self.params, self.applied, body);
        }
    }
}

/// Runs the data path until either side leaves, the session's `stop`
/// token fires (shutdown or terminate), or the route the session was given
/// ends (`route_ended`). `pending` holds client bytes read before the
/// session started. `log`, when given, follows what the session holds
/// that could move to another server.
#[allow(clippy::too_many_arguments)]
pub async fn pump(
    client: &mut Stream,
    server: &mut ServerConn,
    pending: BytesMut,
    max_message: u32,
    activity: &Activity,
    stop: &CancellationToken,
    route_ended: &CancellationToken,
    log: Option<&Mutex<SessionLog>>,
    withdrawn: Option<&CancellationToken>,
) -> PumpResult {
    // Per session, so waiting on it touches no lock shared with other
    // sessions (`stop` is the session's own already).
    let route_ended = route_ended.child_token();
    let withdrawn = withdrawn.map(CancellationToken::child_token);
    let mut client_scan = Scanner::new(max_message);
    let mut server_scan = Scanner::new(u32::MAX);
    let mut client_side = ClientSide {
        activity,
        log,
        writing: false,
    };
    let mut server_side = ServerSide {
        activity,
        log,
        reports: Reports {
            status: b'I',
            params: &mut server.params,
            applied: &mut server.applied,
            settled: &mut server.settled,
        },
        last_tag: 0,
        writing: false,
    };
    let server_pending = server.buf.split();
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.stream.split();

    let client_to_server = async {
        let obs = &mut client_side;
        let mut buf = pending;
        buf.reserve(BUF_SIZE);
        loop {
            if !buf.is_empty() {
                let (upto, end) = match client_scan.scan(&buf, obs) {
                    Ok(None) => (buf.len(), None),
                    Ok(Some(terminate_at)) => (terminate_at, Some(PumpEnd::ClientTerminated)),
                    Err(e) => return PumpEnd::ClientProtocol(e),
                };
                let bytes = buf.get(..upto).unwrap_or_default();
                if !bytes.is_empty() {
                    obs.writing = true;
                    if sw.send(bytes).await.is_err() {
                        return PumpEnd::ServerGone;
                    }
                    obs.writing = false;
                }
                if let Some(end) = end {
                    return end;
                }
                buf.clear();
            }
            let room = buf.capacity() - buf.len();
            match cr.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return PumpEnd::ClientGone,
                Ok(n) => cr.after_read(n, room),
            }
        }
    };

    let server_to_client = async {
        let mut buf = server_pending;
        buf.reserve(BUF_SIZE);
        loop {
            if !buf.is_empty() {
                if let Err(e) = server_scan.scan(&buf, &mut server_side) {
                    return PumpEnd::ServerProtocol(e);
                }
                server_side.writing = true;
                if cw.send(&buf).await.is_err() {
                    return PumpEnd::ClientGone;
                }
                server_side.writing = false;
                buf.clear();
            }
            let room = buf.capacity() - buf.len();
            match sr.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return PumpEnd::ServerGone,
                Ok(n) => sr.after_read(n, room),
            }
        }
    };

    let end = {
        let mut client_to_server = std::pin::pin!(client_to_server);
        let mut server_to_client = std::pin::pin!(server_to_client);
        let mut watch_withdrawn = withdrawn.is_some();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break PumpEnd::Stopped(StopReason::Stopped),
                _ = route_ended.cancelled() => break PumpEnd::Stopped(StopReason::PrimaryChanged),
                () = async {
                    if let Some(w) = &withdrawn {
                        w.cancelled().await;
                    }
                }, if watch_withdrawn => {
                    // An idle session that can move goes now; any other
                    // stays until its server's route ends.
                    if !activity.is_busy() && log.is_some_and(|l| lock(l).movable_now()) {
                        break PumpEnd::Stopped(StopReason::PrimaryChanged);
                    }
                    watch_withdrawn = false;
                }
                end = &mut client_to_server => break end,
                end = &mut server_to_client => break end,
            }
        }
    };
    let client_at_boundary = server_scan.at_boundary() && !server_side.writing;
    let (status, last_tag) = (server_side.reports.status, server_side.last_tag);
    // Half a client message at the server cannot be taken back; owed
    // replies and half-read answers can still be read to the end.
    let server = if client_side.writing || !client_scan.at_boundary() {
        ServerState::Broken
    } else if activity.is_busy() || !server_scan.at_boundary() {
        ServerState::Owing(Owing {
            scan: server_scan,
            status,
            last_tag,
        })
    } else {
        ServerState::Idle(status)
    };
    PumpResult {
        end,
        server,
        client_at_boundary,
        last_server_tag: last_tag,
        unmovable: None,
    }
}

/// Reads what a server still owes after its client left, discarding it,
/// until the server is idle again, within `timeout`: first ending what
/// would otherwise wait for the client forever (a COPY from the client gets
/// CopyFail, an unsynced extended-protocol exchange gets its Sync). The
/// caller has cancelled the running statement. Returns the transaction
/// status, or `None` when the connection must be closed instead.
pub async fn drain(
    server: &mut ServerConn,
    owing: Owing,
    activity: &Activity,
    timeout: std::time::Duration,
) -> Option<u8> {
    let Owing {
        mut scan,
        status,
        last_tag,
    } = owing;
    let mut side = ServerSide {
        activity,
        log: None,
        reports: Reports {
            status,
            params: &mut server.params,
            applied: &mut server.applied,
            settled: &mut server.settled,
        },
        last_tag,
        writing: false,
    };
    let stream = &mut server.stream;
    let run = async {
        let mut out = BytesMut::new();
        // CopyInResponse / CopyBothResponse: the server waits for client data.
        if matches!(side.last_tag, b'G' | b'W') {
            frontend::copy_fail("the client disconnected", &mut out).ok()?;
        }
        if activity.unsynced() {
            frontend::sync(&mut out);
            activity.request();
            activity.set_unsynced(false);
        }
        if !out.is_empty() {
            stream.send(&out).await.ok()?;
        }
        let mut buf = BytesMut::with_capacity(BUF_SIZE);
        while activity.owed() != 0 || !scan.at_boundary() {
            buf.clear();
            if stream.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
            scan.scan(&buf, &mut side).ok()?;
        }
        Some(side.reports.status)
    };
    tokio::time::timeout(timeout, run).await.ok().flatten()
}

/// The session's log, whatever a panic elsewhere left in it.
pub(crate) fn lock(log: &Mutex<SessionLog>) -> std::sync::MutexGuard<'_, SessionLog> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}
