//! The dialling side: a channel to `host:port`, over TLS when configured.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use pgwarden_tls::rustls::ClientConfig;
use pgwarden_tls::rustls::pki_types::ServerName;
use pgwarden_tls::{TlsConnector, client::TlsStream};
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tonic::transport::{Channel, Endpoint, Uri};

/// A dialled connection, plain or TLS.
pub type Dialled = TokioIo<Either<TcpStream, Box<TlsStream<TcpStream>>>>;

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
    Ok(endpoint.connect_with_connector_lazy(connector(address, tls)?))
}

/// [`dial`], connected now and without a call timeout: an error says why
/// the server cannot be reached (refused, or the TLS handshake failed).
pub async fn dial_now(
    address: &str,
    tls: Option<Arc<ClientConfig>>,
    connect_timeout: Duration,
) -> Result<Channel, DialError> {
    let endpoint = endpoint(address, tls.is_some(), connect_timeout)?;
    let connector = connector(address, tls)?;
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
                Some((connector, name)) => Either::Right(Box::new(connector.connect(name, tcp).await?)),
                None => Either::Left(tcp),
            };
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    }))
}
