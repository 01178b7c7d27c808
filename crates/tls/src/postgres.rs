//! TLS for tokio-postgres connections (the monitor's checks and failover
//! actions), with the checks of [`crate::client_config`] and
//! `tls-server-end-point` channel binding, so a server that offers
//! SCRAM-SHA-256-PLUS gets a bound login.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// How tokio-postgres connections are encrypted: the `sslmode` to ask
/// tokio-postgres for, and the rustls config that checks the server.
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    config: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls")
            .field("mode", &self.mode)
            .field("tls", &self.config.is_some())
            .finish()
    }
}

impl PgTls {
    /// Plain text.
    pub fn disabled() -> PgTls {
        PgTls {
            mode: SslMode::Disable,
            config: None,
        }
    }

    /// TLS with `config` (from [`crate::client_config`]); `required`: a
    /// server without TLS is refused, otherwise plain text is the fallback.
    pub fn new(config: Arc<ClientConfig>, required: bool) -> PgTls {
        PgTls {
            mode: if required {
                SslMode::Require
            } else {
                SslMode::Prefer
            },
            config: Some(config),
        }
    }

    /// Sets the `sslmode` on `config` and returns the connector to pass to
    /// `config.connect`.
    pub fn apply(&self, config: &mut tokio_postgres::Config) -> MakeRustls {
        config.ssl_mode(match self.config {
            Some(_) => self.mode,
            None => SslMode::Disable,
        });
        MakeRustls {
            config: self.config.clone(),
        }
    }
}

/// tokio-postgres' TLS connector on rustls.
#[derive(Clone)]
pub struct MakeRustls {
    config: Option<Arc<ClientConfig>>,
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    /// Called for every host before connecting, whatever the `sslmode`
    /// (so never an error when TLS is disabled: tokio-postgres then does
    /// not use the connector).
    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let name = match &self.config {
            Some(_) => Some(
                crate::server_name(domain)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            ),
            None => None,
        };
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

/// One handshake to come.
pub struct RustlsConnect {
    config: Option<Arc<ClientConfig>>,
    name: Option<rustls_pki_types::ServerName<'static>>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, io::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let (Some(config), Some(name)) = (self.config, self.name) else {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "TLS is disabled (server_tls.mode)",
                ));
            };
            let s = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await?;
            Ok(RustlsStream(Box::new(s)))
        })
    }
}

/// A TLS connection to a server, for tokio-postgres.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let cert = self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        match cert.and_then(crate::server_end_point) {
            Some(data) => ChannelBinding::tls_server_end_point(data),
            None => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_shutdown(cx)
    }
}
