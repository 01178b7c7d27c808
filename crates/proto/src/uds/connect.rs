//! Channels to a daemon's socket.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::UdsError;

/// How long establishing a connection to a daemon's socket may take. A
/// running daemon accepts at once; a missing one is refused at once; this
/// bounds the odd case of a daemon that is alive but stuck.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to the daemon serving on `path` now, for one-shot callers
/// (`pgwardenctl`, a start-up check): an error here means the daemon is not
/// running (or not accepting) and is reported as such.
///
/// The returned channel still reconnects by itself if the daemon restarts
/// later, like one from [`connect_lazy`].
pub async fn connect(path: &Path) -> Result<Channel, UdsError> {
    endpoint()
        .connect_with_connector(connector(path))
        .await
        .map_err(|source| UdsError::Connect {
            path: path.to_path_buf(),
            source,
        })
}

/// A channel to the daemon serving on `path` that connects on first use and
/// reconnects by itself whenever the connection is lost (the daemon
/// restarted, or was not started yet). For long-lived clients.
///
/// A call made while the daemon is away fails (`Unavailable`) instead of
/// waiting, so the caller keeps control of its pace: a watch loop retries
/// after the next [`reconnect_backoff`](super::reconnect_backoff) delay with
/// the same channel, and starts a fresh back-off once a call succeeds:
///
/// ```no_run
/// # async fn run(runtime_dir: &std::path::Path) {
/// use pgwarden_proto::uds::{self, Daemon};
/// use pgwarden_proto::v1::{WatchClusterRequest, monitor_client::MonitorClient};
///
/// let mut monitor = MonitorClient::new(uds::connect_lazy(&uds::socket_path(runtime_dir, Daemon::Monitor)));
/// let mut backoff = uds::reconnect_backoff();
/// loop {
///     match monitor.watch_cluster(WatchClusterRequest {}).await {
///         Ok(response) => {
///             backoff = uds::reconnect_backoff(); // connected: reset
///             let mut states = response.into_inner();
///             while let Ok(Some(state)) = states.message().await {
///                 // apply `state` (ignore generations older than the newest seen)
///             }
///         }
///         Err(status) => tracing::warn!(%status, "monitor unavailable"),
///     }
///     if let Some(delay) = backoff.next() {
///         tokio::time::sleep(delay).await;
///     }
/// }
/// # }
/// ```
///
/// Must be called within a tokio runtime (the channel spawns its worker).
pub fn connect_lazy(path: &Path) -> Channel {
    endpoint().connect_with_connector_lazy(connector(path))
}

fn endpoint() -> Endpoint {
    // The authority is never resolved: the connector below ignores the URI.
    Endpoint::from_static("http://localhost").connect_timeout(CONNECT_TIMEOUT)
}

/// A tower service that opens a connection to `path` for any URI.
fn connector(
    path: &Path,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<UnixStream>,
    Error = io::Error,
    Future = impl Future<Output = io::Result<TokioIo<UnixStream>>> + Send,
> + Send
+ 'static {
    let path: PathBuf = path.to_path_buf();
    tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { UnixStream::connect(path).await.map(TokioIo::new) }
    })
}
