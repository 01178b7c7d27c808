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
//! When the client leaves, the connection can go back to the cache only if
//! no reply is owed and no extended-protocol message is waiting for a Sync.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};

use bytes::BytesMut;
use pgwarden_wire::ProtocolError;
use pgwarden_wire::scan::{self, Flow, Observer, Scanner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::server_conn::ServerConn;

const BUF_SIZE: usize = 32 * 1024;

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
    /// The proxy is shutting down.
    Shutdown,
    /// Its server is no longer the primary (failover, or the proxy lost
    /// the monitor and fences).
    PrimaryChanged,
}

/// What the two directions share: where the server stands.
#[derive(Debug)]
struct SessionState {
    owed_ready: AtomicU32,
    status: AtomicU8,
    unsynced: AtomicBool,
}

/// The state of the session when the data path ended.
#[derive(Debug)]
pub struct PumpResult {
    /// Why it ended.
    pub end: PumpEnd,
    /// The transaction status when the server is between requests
    /// (`b'I'`, `b'T'` or `b'E'`); `None` when it is busy.
    pub server_idle: Option<u8>,
    /// True when the client's stream is between server messages, so the
    /// proxy may still write an ErrorResponse to it.
    pub client_at_boundary: bool,
    /// Type of the last message forwarded from the server.
    pub last_server_tag: u8,
}

struct ClientSide<'a> {
    state: &'a SessionState,
}

impl Observer for ClientSide<'_> {
    fn start(&mut self, tag: u8, _offset: usize) -> Result<Flow, ProtocolError> {
        match tag {
            b'X' => return Ok(Flow::Stop),
            b'Q' | b'F' => {
                self.state.owed_ready.fetch_add(1, Ordering::Relaxed);
            }
            b'S' => {
                self.state.owed_ready.fetch_add(1, Ordering::Relaxed);
                self.state.unsynced.store(false, Ordering::Relaxed);
            }
            b'P' | b'B' | b'D' | b'E' | b'C' => self.state.unsynced.store(true, Ordering::Relaxed),
            t if scan::is_frontend_tag(t) => {}
            t => return Err(ProtocolError::UnexpectedMessage { tag: t }),
        }
        Ok(Flow::Continue)
    }
}

struct ServerSide<'a> {
    state: &'a SessionState,
    params: &'a mut Vec<(String, String)>,
    last_tag: u8,
}

impl Observer for ServerSide<'_> {
    fn start(&mut self, tag: u8, _offset: usize) -> Result<Flow, ProtocolError> {
        self.last_tag = tag;
        Ok(Flow::Continue)
    }

    fn wants_body(&self, tag: u8) -> bool {
        tag == b'Z' || tag == b'S'
    }

    fn body(&mut self, tag: u8, body: &[u8]) {
        if tag == b'Z' {
            if let Some(&status) = body.first() {
                self.state.status.store(status, Ordering::Relaxed);
            }
            // Saturating: a ReadyForQuery the proxy did not count (it never
            // should happen) must not wrap the counter.
            let _ = self
                .state
                .owed_ready
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        } else {
            crate::server_conn::apply_param(self.params, body);
        }
    }
}

/// Runs the data path until either side leaves, `shutdown` fires, or the
/// route the session was given ends (`route_ended`). `pending` holds client
/// bytes read before the session started.
pub async fn pump(
    client: &mut TcpStream,
    server: &mut ServerConn,
    pending: BytesMut,
    max_message: u32,
    shutdown: &CancellationToken,
    route_ended: &CancellationToken,
) -> PumpResult {
    let state = SessionState {
        owed_ready: AtomicU32::new(0),
        status: AtomicU8::new(b'I'),
        unsynced: AtomicBool::new(false),
    };
    let mut client_scan = Scanner::new(max_message);
    let mut server_scan = Scanner::new(u32::MAX);
    let mut server_side = ServerSide {
        state: &state,
        params: &mut server.params,
        last_tag: 0,
    };
    let server_pending = server.buf.split();
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.stream.split();

    let client_to_server = async {
        let mut obs = ClientSide { state: &state };
        let mut buf = pending;
        buf.reserve(BUF_SIZE);
        loop {
            if !buf.is_empty() {
                match client_scan.scan(&buf, &mut obs) {
                    Ok(None) => {
                        if sw.write_all(&buf).await.is_err() {
                            return PumpEnd::ServerGone;
                        }
                    }
                    Ok(Some(terminate_at)) => {
                        let before = buf.get(..terminate_at).unwrap_or_default();
                        if !before.is_empty() && sw.write_all(before).await.is_err() {
                            return PumpEnd::ServerGone;
                        }
                        return PumpEnd::ClientTerminated;
                    }
                    Err(e) => return PumpEnd::ClientProtocol(e),
                }
                buf.clear();
            }
            match cr.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return PumpEnd::ClientGone,
                Ok(_) => {}
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
                if cw.write_all(&buf).await.is_err() {
                    return PumpEnd::ClientGone;
                }
                buf.clear();
            }
            match sr.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return PumpEnd::ServerGone,
                Ok(_) => {}
            }
        }
    };

    let end = tokio::select! {
        biased;
        _ = shutdown.cancelled() => PumpEnd::Stopped(StopReason::Shutdown),
        _ = route_ended.cancelled() => PumpEnd::Stopped(StopReason::PrimaryChanged),
        end = client_to_server => end,
        end = server_to_client => end,
    };
    let busy =
        state.owed_ready.load(Ordering::Relaxed) > 0 || state.unsynced.load(Ordering::Relaxed);
    PumpResult {
        end,
        server_idle: (!busy && server_scan.at_boundary() && client_scan.at_boundary())
            .then(|| state.status.load(Ordering::Relaxed)),
        client_at_boundary: server_scan.at_boundary(),
        last_server_tag: server_side.last_tag,
    }
}
