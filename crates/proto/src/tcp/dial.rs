//! The dialling side: a channel to `host:port`, over TLS when configured.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use pgwarden_tls::rustls::ClientConfig;
use pgwarden_tls::rustls::pki_types::ServerName;
use pgwarden_tls::{TlsConnector, client::TlsStream};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tonic::transport::{Channel, Endpoint, Uri};

/// A dialled connection, plain or TLS.
pub type Dialled = TokioIo<Either<TcpStream, Box<Confirmed>>>;

/// A TLS connection, with what was read to confirm it (see [`dial_now`])
/// handed out first.
#[derive(Debug)]
pub struct Confirmed {
    head: Vec<u8>,
    at: usize,
    tls: TlsStream<TcpStream>,
}

impl AsyncRead for Confirmed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rest) = this.head.get(this.at..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tls).poll_read(cx, buf)
    }
}

pass_on!(AsyncWrite for Confirmed => tls);

/// The error of [`dial_now`]: the whole chain, so the caller can show its
/// innermost cause (`Connection refused`, `received fatal alert: ...`).
pub type DialError = Box<dyn std::error::Error + Send + Sync>;

/// The host part of `host:port` (`[v6]:port` without its brackets).
pub fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// A channel to `address` (`host:port`) that connects on first use and
/// again after a loss; over TLS with `tls`, the server's certificate
/// checked for the host. Calls time out after `timeout`.
pub fn dial(
    address: &str,
    tls: Option<Arc<ClientConfig>>,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<Channel, String> {
    let endpoint = endpoint(address, tls.is_some(), connect_timeout)?.timeout(timeout);
    Ok(endpoint.connect_with_connector_lazy(connector(address, tls, false)?))
}

/// [`dial`], connected now and without a call timeout: an error says why
/// the server cannot be reached (refused, or the TLS handshake failed).
/// Under TLS it waits for the server's first bytes (gRPC servers speak
/// first): TLS 1.3 servers refuse a client's certificate only after the
/// handshake, and the refusal (`received fatal alert: ...`) is then this
/// error rather than a failed first call.
pub async fn dial_now(
    address: &str,
    tls: Option<Arc<ClientConfig>>,
    connect_timeout: Duration,
) -> Result<Channel, DialError> {
    let endpoint = endpoint(address, tls.is_some(), connect_timeout)?;
    let connector = connector(address, tls, true)?;
    Ok(endpoint.connect_with_connector(connector).await?)
}

fn endpoint(address: &str, tls: bool, connect_timeout: Duration) -> Result<Endpoint, String> {
    let scheme = if tls { "https" } else { "http" };
    Endpoint::from_shared(format!("{scheme}://{address}"))
        .map(|e| e.connect_timeout(connect_timeout))
        .map_err(|e| format!("bad address {address:?}: {e}"))
}

/// A tower service that opens a connection to `address` for any URI.
fn connector(
    address: &str,
    tls: Option<Arc<ClientConfig>>,
    confirm: bool,
) -> Result<
    impl tower::Service<
        Uri,
        Response = Dialled,
        Error = io::Error,
        Future = impl Future<Output = io::Result<Dialled>> + Send,
    > + Send
    + Clone
    + 'static,
    String,
> {
    let tls = match tls {
        Some(config) => {
            let name = ServerName::try_from(host_of(address).to_owned())
                .map_err(|e| format!("bad address {address:?}: {e}"))?;
            Some((TlsConnector::from(config), name))
        }
        None => None,
    };
    let target = address.to_owned();
    Ok(tower::service_fn(move |_: Uri| {
        let target = target.clone();
        let tls = tls.clone();
        async move {
            let tcp = TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let stream = match tls {
                Some((connector, name)) => {
                    let mut tls = connector.connect(name, tcp).await?;
                    let mut head = Vec::new();
                    if confirm {
                        head.resize(4096, 0);
                        let n = tls.read(&mut head).await?;
                        if n == 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                "the server closed the connection after the TLS handshake",
                            ));
                        }
                        head.truncate(n);
                    }
                    Either::Right(Box::new(Confirmed { head, at: 0, tls }))
                }
                None => Either::Left(tcp),
            };
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    }))
}
