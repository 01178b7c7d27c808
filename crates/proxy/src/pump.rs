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
    /// The transaction status when the server is between requests
    /// (`b'I'`, `b'T'` or `b'E'`); `None` when it is busy.
    pub server_idle: Option<u8>,
    /// True when the client's stream is between server messages, so the
    /// proxy may still write an ErrorResponse to it.
    pub client_at_boundary: bool,
    /// Type of the last message forwarded from the server.
    pub last_server_tag: u8,
}

/// What the client has asked of the server. Each direction keeps its own
/// counts; only when both have stopped are they compared.
#[derive(Debug, Default)]
struct ClientSide {
    /// Query, Sync and FunctionCall messages sent: each is owed one ReadyForQuery.
    sent: u32,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    /// A write to the server was under way (the server may hold half a message).
    writing: bool,
}

impl Observer for ClientSide {
    fn start(&mut self, tag: u8) -> Result<Flow, ProtocolError> {
        match tag {
            b'X' => return Ok(Flow::Stop),
            b'Q' | b'F' => self.sent = self.sent.wrapping_add(1),
            b'S' => {
                self.sent = self.sent.wrapping_add(1);
                self.unsynced = false;
            }
            b'P' | b'B' | b'D' | b'E' | b'C' => self.unsynced = true,
            t if scan::is_frontend_tag(t) => {}
            t => return Err(ProtocolError::UnexpectedMessage { tag: t }),
        }
        Ok(Flow::Continue)
    }
}

/// What the server has answered.
struct ServerSide<'a> {
    /// ReadyForQuery messages received.
    ready: u32,
    /// The transaction status of the last one.
    status: u8,
    params: &'a mut Vec<(String, String)>,
    last_tag: u8,
    /// A write to the client was under way (it may hold half a message).
    writing: bool,
}

impl Observer for ServerSide<'_> {
    fn start(&mut self, tag: u8) -> Result<Flow, ProtocolError> {
        self.last_tag = tag;
        Ok(Flow::Continue)
    }

    fn wants_body(&self, tag: u8) -> bool {
        tag == b'Z' || tag == b'S'
    }

    fn body(&mut self, tag: u8, body: &[u8]) {
        if tag == b'Z' {
            if let Some(&status) = body.first() {
                self.status = status;
            }
            self.ready = self.ready.wrapping_add(1);
        } else {
            crate::server_conn::apply_param(self.params, body);
        }
    }
}

/// Runs the data path until either side leaves, the session's `stop`
/// token fires (shutdown or terminate), or the route the session was given
/// ends (`route_ended`). `pending` holds client bytes read before the
/// session started.
pub async fn pump(
    client: &mut TcpStream,
    server: &mut ServerConn,
    pending: BytesMut,
    max_message: u32,
    stop: &CancellationToken,
    route_ended: &CancellationToken,
) -> PumpResult {
    // Per session, so waiting on it touches no lock shared with other
    // sessions (`stop` is the session's own already).
    let route_ended = route_ended.child_token();
    let mut client_scan = Scanner::new(max_message);
    let mut server_scan = Scanner::new(u32::MAX);
    let mut client_side = ClientSide::default();
    let mut server_side = ServerSide {
        ready: 0,
        status: b'I',
        params: &mut server.params,
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
                    if sw.write_all(bytes).await.is_err() {
                        return PumpEnd::ServerGone;
                    }
                    obs.writing = false;
                }
                if let Some(end) = end {
                    return end;
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
                server_side.writing = true;
                if cw.write_all(&buf).await.is_err() {
                    return PumpEnd::ClientGone;
                }
                server_side.writing = false;
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
        _ = stop.cancelled() => PumpEnd::Stopped(StopReason::Stopped),
        _ = route_ended.cancelled() => PumpEnd::Stopped(StopReason::PrimaryChanged),
        end = client_to_server => end,
        end = server_to_client => end,
    };
    // Owed replies, half-sent requests or half-read answers: not reusable.
    let busy = client_side.sent != server_side.ready
        || client_side.unsynced
        || client_side.writing
        || !client_scan.at_boundary()
        || !server_scan.at_boundary();
    PumpResult {
        end,
        server_idle: (!busy).then_some(server_side.status),
        client_at_boundary: server_scan.at_boundary() && !server_side.writing,
        last_server_tag: server_side.last_tag,
    }
}
