//! The accepting side: TCP connections, with TLS done before tonic reads.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pgwarden_tls::rustls::ServerConfig;
use pgwarden_tls::{TlsAcceptor, server::TlsStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::either::Either;
use tonic::transport::server::Connected;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; connections beyond wait in the kernel's
/// backlog, so unauthenticated clients cannot hold more than this.
const HANDSHAKES: usize = 64;

/// An accepted connection, plain or TLS (its certificate checked).
#[derive(Debug)]
pub struct Conn(Either<TcpStream, Box<TlsStream<TcpStream>>>);

/// Who is at the other end: what tonic hands the services as the request's
/// connect info.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub address: Option<SocketAddr>,
    /// The common name of its certificate, under TLS.
    pub name: Option<String>,
}

impl Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        let (tcp, name) = match &self.0 {
            Either::Left(tcp) => (tcp, None),
            Either::Right(tls) => {
                let (tcp, session) = tls.get_ref();
                let leaf = session.peer_certificates().and_then(|c| c.first());
                (tcp, leaf.and_then(pgwarden_tls::common_name))
            }
        };
        Peer {
            address: tcp.peer_addr().ok(),
            name,
        }
    }
}

pass_on!(AsyncRead for Conn => 0);
pass_on!(AsyncWrite + vectored for Conn => 0);

/// The connections `listener` accepts, for tonic's
/// `serve_with_incoming_shutdown`: with `tls`, only those whose TLS
/// handshake succeeded (the client certificate checked by `tls`'s
/// verifier). `what` names the listener in the logs ("watchdog peer",
/// "admin client"). Accepting stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    what: &'static str,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(accept_loop(listener, tls.map(TlsAcceptor::from), what, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    what: &'static str,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&handshakes).acquire_owned() => p,
            () = tx.closed() => return,
        };
        let Ok(permit) = permit else { return };
        let (tcp, address) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: wait rather than spin.
                    tracing::warn!(listener = what, error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let Some(acceptor) = tls.clone() else {
            drop(permit);
            if tx.send(Ok(Conn(Either::Left(tcp)))).await.is_err() {
                return;
            }
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(Conn(Either::Right(Box::new(stream))))).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(%address, error = %e, "{what} refused: TLS handshake failed");
                }
                Err(_) => {
                    tracing::warn!(%address, timeout = ?HANDSHAKE_TIMEOUT, "{what} refused: no TLS handshake in time");
                }
            }
        });
    }
}
