//! Serving a tonic router on a bound socket until shutdown.

use std::fs;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::body::Body;
use tonic::codegen::{StdError, http};
use tonic::service::Routes;
use tonic::transport::server::Router;
use tower::{Layer, Service};

use super::UdsError;
use super::listen::is_live;

/// How long [`serve`] waits, after the shutdown signal, for open calls to
/// finish before it returns anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What a tonic [`Router`]'s layer must make of its routes for [`serve`] to
/// run it: an HTTP service that can be cloned and sent to every connection.
/// Implemented for every such service.
pub trait RoutesService:
    Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Future: Send,
        Error: Into<StdError> + Send,
    > + Clone
    + Send
    + 'static
{
}

impl<S> RoutesService for S
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<StdError> + Send,
{
}

/// Serves `router` on `listener` (from [`bind`](super::bind)) until
/// `shutdown` completes, then drains and removes the socket file.
///
/// On `shutdown` the listener is closed at once (new connections are
/// refused), open connections are asked to finish (HTTP/2 GOAWAY) and are
/// given up to [`DRAIN_TIMEOUT`]. Server-streaming calls such as
/// `WatchCluster` only finish when their stream ends, so a daemon should end
/// them on the same shutdown signal; a stream still open after the timeout
/// does not hold the daemon up. The socket file is removed afterwards, unless
/// it has been replaced by another daemon's socket meanwhile.
///
/// ```no_run
/// # async fn run(listener: tokio::net::UnixListener, svc: impl pgwarden_proto::Proxy) -> Result<(), pgwarden_proto::uds::UdsError> {
/// use pgwarden_proto::{ProxyServer, uds};
/// use tonic::transport::Server;
///
/// let (_reporter, health) = uds::health_service(pgwarden_proto::v1::proxy_server::SERVICE_NAME).await;
/// let router = Server::builder().add_service(health).add_service(ProxyServer::new(svc));
/// uds::serve(listener, router, async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
pub async fn serve<L>(
    listener: UnixListener,
    router: Router<L>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), UdsError>
where
    L: Layer<Routes>,
    L::Service: RoutesService,
{
    serve_with_drain_timeout(listener, router, shutdown, DRAIN_TIMEOUT).await
}

/// [`serve`] with a drain timeout of the caller's choosing.
pub async fn serve_with_drain_timeout<L>(
    listener: UnixListener,
    router: Router<L>,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) -> Result<(), UdsError>
where
    L: Layer<Routes>,
    L::Service: RoutesService,
{
    let socket = BoundSocket::of(&listener);
    let display_path = socket
        .as_ref()
        .map_or_else(PathBuf::new, |s| s.path.clone());

    let (fired_tx, fired_rx) = oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = fired_tx.send(());
    };
    let server = router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), signal);
    let drain_expired = async move {
        match fired_rx.await {
            Ok(()) => tokio::time::sleep(drain_timeout).await,
            // The server ended without a shutdown signal: its result wins.
            Err(_) => std::future::pending().await,
        }
    };

    let result = tokio::select! {
        result = server => result.map_err(|source| UdsError::Serve { path: display_path, source }),
        () = drain_expired => {
            tracing::warn!(
                path = %display_path.display(),
                timeout = ?drain_timeout,
                "calls still open after the drain timeout; shutting down anyway",
            );
            Ok(())
        }
    };
    if let Some(socket) = socket {
        socket.remove().await;
    }
    result
}

/// The file of a bound socket, identified by device and inode, so that only
/// this socket and not a successor at the same path is removed.
struct BoundSocket {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl BoundSocket {
    fn of(listener: &UnixListener) -> Option<Self> {
        let addr = listener.local_addr().ok()?;
        let path = addr.as_pathname()?.to_path_buf();
        let metadata = fs::symlink_metadata(&path).ok()?;
        Some(BoundSocket {
            path,
            dev: metadata.dev(),
            ino: metadata.ino(),
        })
    }

    /// Removes the socket file once nobody listens on it. The listener is
    /// closed by now, so a socket at the path that still answers belongs to
    /// a successor (inode numbers are reused, so the inode alone cannot tell).
    async fn remove(self) {
        let same_inode = fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino);
        if !same_inode {
            return;
        }
        match is_live(&self.path).await {
            Ok(false) => {}
            Ok(true) => return,
            Err(err) => return log_remove_failure(&self.path, &err),
        }
        match fs::remove_file(&self.path) {
            Ok(()) => tracing::debug!(path = %self.path.display(), "socket removed"),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => log_remove_failure(&self.path, &err),
        }
    }
}

fn log_remove_failure(path: &Path, err: &io::Error) {
    tracing::warn!(path = %path.display(), error = %err, "cannot remove socket");
}
