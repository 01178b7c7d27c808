//! [`Socket`]: a daemon as `pgwardenctl` reaches it, on its unix socket or
//! through a node's remote admin API ([`Place`]). Connects with an
//! immediate error when the daemon is not there, runs each call with a
//! deadline, and turns gRPC errors into [`CtlError`]s naming the daemon and
//! where it was looked for, so every daemon reports failures alike.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pgwarden_proto::MonitorClient;
use pgwarden_proto::root_cause;
use pgwarden_proto::uds::{self, Daemon, UdsError};
use pgwarden_proto::v1::proxy_client::ProxyClient;
use pgwarden_proto::v1::watchdog_client::WatchdogClient;
use pgwarden_tls::rustls::ClientConfig;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::CtlError;

/// Where a daemon is reached.
#[derive(Clone)]
pub enum Place {
    /// Its unix socket on this machine.
    Unix(PathBuf),
    /// A node's remote admin API (`--host`), over mutual TLS.
    Remote {
        /// `HOST:PORT`.
        address: String,
        /// The CA and the client certificate.
        tls: Arc<ClientConfig>,
    },
}

impl Place {
    /// Whether this is a node's remote admin API.
    pub fn is_remote(&self) -> bool {
        matches!(self, Place::Remote { .. })
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Unix(path) => write!(f, "{}", path.display()),
            Place::Remote { address, .. } => write!(f, "{address}"),
        }
    }
}

impl fmt::Debug for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Unix(path) => f.debug_tuple("Unix").field(path).finish(),
            Place::Remote { address, .. } => f.debug_tuple("Remote").field(address).finish(),
        }
    }
}

impl From<&Path> for Place {
    fn from(path: &Path) -> Place {
        Place::Unix(path.to_path_buf())
    }
}

impl From<&PathBuf> for Place {
    fn from(path: &PathBuf) -> Place {
        Place::Unix(path.clone())
    }
}

impl From<PathBuf> for Place {
    fn from(path: PathBuf) -> Place {
        Place::Unix(path)
    }
}

impl From<&str> for Place {
    fn from(path: &str) -> Place {
        Place::Unix(PathBuf::from(path))
    }
}

/// How long a unary call may take. The daemons answer operator requests
/// from their core loop at once (a switchover is started, not awaited), so
/// only a stuck daemon comes near this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Which daemon listens where: what every error about it names.
#[derive(Debug, Clone)]
pub struct Socket {
    /// The daemon expected on it.
    pub daemon: Daemon,
    /// Where.
    pub at: Place,
}

impl Socket {
    /// `daemon` at `at` (a socket path, or a remote [`Place`]).
    pub fn new(daemon: Daemon, at: impl Into<Place>) -> Self {
        Socket {
            daemon,
            at: at.into(),
        }
    }

    /// Connects now; an error means the daemon is not running (or not
    /// accepting; remotely, the node's admin API refused the TLS
    /// handshake), reported with the underlying error.
    pub async fn connect(&self) -> Result<Channel, CtlError> {
        let unreachable = |reason| CtlError::Unreachable {
            daemon: self.daemon,
            at: self.at.clone(),
            reason,
        };
        match &self.at {
            Place::Unix(path) => uds::connect(path).await.map_err(|e| {
                unreachable(match &e {
                    UdsError::Connect { source, .. } => root_cause(source),
                    other => other.to_string(),
                })
            }),
            Place::Remote { address, tls } => {
                pgwarden_proto::tcp::dial_now(address, Some(Arc::clone(tls)), uds::CONNECT_TIMEOUT)
                    .await
                    .map_err(|e| unreachable(root_cause(e.as_ref())))
            }
        }
    }

    /// Runs one call with [`REQUEST_TIMEOUT`], mapping its error; its reply.
    pub async fn deadline<T>(
        &self,
        rpc: &'static str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CtlError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(self.status_error(rpc, status)),
            Err(_) => Err(CtlError::Timeout {
                daemon: self.daemon,
                at: self.at.clone(),
                rpc,
                after: REQUEST_TIMEOUT,
            }),
        }
    }

    /// A gRPC error as the operator should see it: a refusal is the
    /// daemon's own words; an unavailable daemon is a connection error.
    pub fn status_error(&self, rpc: &'static str, status: tonic::Status) -> CtlError {
        // Under TLS 1.3 a node that refuses the client's certificate says
        // so after the handshake, failing the first call: the connection
        // was never usable, so it is unreachable, with the node's alert.
        if self.at.is_remote()
            && matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
            )
            && let Some(source) = status.source()
        {
            return CtlError::Unreachable {
                daemon: self.daemon,
                at: self.at.clone(),
                reason: root_cause(source),
            };
        }
        match status.code() {
            tonic::Code::FailedPrecondition => CtlError::Refused(status.message().to_owned()),
            tonic::Code::Unavailable => self.lost(match status.source() {
                Some(source) => root_cause(source),
                None => status.message().to_owned(),
            }),
            tonic::Code::DeadlineExceeded => CtlError::Timeout {
                daemon: self.daemon,
                at: self.at.clone(),
                rpc,
                after: REQUEST_TIMEOUT,
            },
            code => CtlError::Failed {
                rpc,
                code,
                message: status.message().to_owned(),
            },
        }
    }

    /// The daemon went away (or ended a stream that should not end).
    pub fn lost(&self, reason: String) -> CtlError {
        CtlError::Lost {
            daemon: self.daemon,
            at: self.at.clone(),
            reason,
        }
    }

    /// Starts streaming call `rpc` with [`REQUEST_TIMEOUT`] (see
    /// [`Socket::deadline`]); `ended` is the error its end becomes.
    pub async fn stream<T>(
        &self,
        rpc: &'static str,
        call: impl Future<Output = Result<tonic::Response<Streaming<T>>, tonic::Status>>,
        ended: &'static str,
    ) -> Result<Stream<T>, CtlError> {
        Ok(Stream {
            stream: self.deadline(rpc, call).await?,
            socket: self.clone(),
            rpc,
            ended,
        })
    }
}

/// Checks that connecting failed with the unreachable error for `daemon`
/// at `path` (`cannot reach {daemon} at {path}: {rest}`) and exit status 2.
#[cfg(test)]
pub(crate) fn assert_unreachable<T: fmt::Debug>(
    connected: Result<T, CtlError>,
    daemon: &str,
    path: &Path,
    rest: &str,
) {
    let e = connected.expect_err("connecting should fail");
    assert_eq!(
        e.to_string(),
        format!("cannot reach {daemon} at {}: {rest}", path.display())
    );
    assert_eq!(e.exit_code(), 2);
}

/// A generated gRPC client connected to a daemon's [`Socket`]: what
/// [`crate::monitor::Monitor`], [`crate::proxy::Proxy`] and
/// [`crate::watchdog::Watchdog`] each are.
#[derive(Debug)]
pub struct Connected<C> {
    /// The generated client.
    pub client: C,
    /// Where it is connected: for each call's deadline and errors.
    pub socket: Socket,
}

impl<C: Api> Connected<C> {
    /// Connects to the daemon's socket at `at` now; an error means it is
    /// not running (see [`Socket::connect`]).
    pub async fn connect(at: Place) -> Result<Self, CtlError> {
        let socket = Socket::new(C::DAEMON, at);
        Ok(Connected {
            client: C::on(socket.connect().await?),
            socket,
        })
    }
}

/// A generated gRPC client of one daemon.
pub trait Api {
    /// The daemon it talks to.
    const DAEMON: Daemon;
    /// The client on `channel`.
    fn on(channel: Channel) -> Self;
}

impl Api for MonitorClient<Channel> {
    const DAEMON: Daemon = Daemon::Monitor;
    fn on(channel: Channel) -> Self {
        Self::new(channel)
    }
}

impl Api for ProxyClient<Channel> {
    const DAEMON: Daemon = Daemon::Proxy;
    fn on(channel: Channel) -> Self {
        Self::new(channel)
    }
}

impl Api for WatchdogClient<Channel> {
    const DAEMON: Daemon = Daemon::Watchdog;
    fn on(channel: Channel) -> Self {
        Self::new(channel)
    }
}

/// Declares methods of a [`Connected`] client that each make one unary
/// call under [`Socket::deadline`]: `name(args) -> Reply = rpc(request),
/// "Rpc"`, with `.field` after it to return only that field of the reply.
macro_rules! unary {
    ($(
        $(#[$doc:meta])*
        $name:ident($($arg:ident: $type:ty),*) -> $reply:ty
            = $rpc:ident($request:expr), $label:literal $(.$field:ident)?;
    )+) => {
        $(
            $(#[$doc])*
            pub async fn $name(&mut self, $($arg: $type),*) -> Result<$reply, CtlError> {
                let call = self.client.$rpc($request);
                let reply = self.socket.deadline($label, call).await?;
                Ok(reply$(.$field)?)
            }
        )+
    };
}

/// The messages of a streaming call, which never ends while its daemon runs.
#[derive(Debug)]
pub struct Stream<T> {
    stream: Streaming<T>,
    socket: Socket,
    rpc: &'static str,
    /// The error the stream's end becomes.
    ended: &'static str,
}

impl<T> Stream<T> {
    /// The next message; the end of the stream is an error too.
    pub async fn next(&mut self) -> Result<T, CtlError> {
        match self.stream.message().await {
            Ok(Some(message)) => Ok(message),
            Ok(None) => Err(self.socket.lost(self.ended.to_owned())),
            Err(status) => Err(self.socket.status_error(self.rpc, status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor() -> Socket {
        Socket::new(Daemon::Monitor, Path::new("/m.sock"))
    }

    #[test]
    fn refusals_keep_the_daemons_words() {
        let e = monitor().status_error(
            "PromoteBackend",
            tonic::Status::failed_precondition("pg0 is already the primary"),
        );
        assert_eq!(e.to_string(), "pg0 is already the primary");
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn unavailable_is_a_connection_error() {
        let e = monitor().status_error(
            "GetCluster",
            tonic::Status::unavailable("the monitor is shutting down"),
        );
        assert_eq!(
            e.to_string(),
            "lost pgwarden-monitor at /m.sock: the monitor is shutting down"
        );
        assert_eq!(e.exit_code(), 2);

        let watchdog = Socket::new(Daemon::Watchdog, Path::new("/w.sock"));
        let e = watchdog.status_error("GetStatus", tonic::Status::deadline_exceeded("slow"));
        assert_eq!(
            e.to_string(),
            "pgwarden-watchdog at /w.sock did not answer GetStatus within 30s"
        );
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn other_codes_are_failures() {
        let e = monitor().status_error("Recheck", tonic::Status::unimplemented("nope"));
        assert_eq!(e.to_string(), "Recheck failed: nope (gRPC Unimplemented)");
        assert_eq!(e.exit_code(), 1);
    }

    #[tokio::test]
    async fn no_daemon_is_unreachable_with_the_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.sock");
        let e = Socket::new(Daemon::Monitor, &path).connect().await;
        assert_unreachable(
            e,
            "pgwarden-monitor",
            &path,
            "No such file or directory (os error 2) (is it running?)",
        );

        // A crashed daemon's socket file: nobody listening.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let e = Socket::new(Daemon::Watchdog, &path).connect().await;
        assert_unreachable(
            e,
            "pgwarden-watchdog",
            &path,
            "Connection refused (os error 111) (is it running? watchdog.enabled?)",
        );
    }
}
