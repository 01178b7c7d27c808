//! The connection to `pgwarden-monitor`: one call each, with a deadline, and
//! gRPC errors turned into [`CtlError`]s that say what the operator should
//! know.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgwarden_proto::MonitorClient;
use pgwarden_proto::uds::{self, UdsError};
use pgwarden_proto::v1::{
    BackendRequest, ChangeReply, ClusterState, GetClusterRequest, PromoteBackendRequest,
    RecheckRequest, WatchClusterRequest,
};
use tonic::Streaming;
use tonic::transport::Channel;

use crate::CtlError;

/// How long a unary call may take. The monitor answers operator requests
/// from its core loop at once (a switchover is started, not awaited), so
/// only a stuck daemon comes near this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected client of the monitor on one socket.
#[derive(Debug)]
pub struct Monitor {
    client: MonitorClient<Channel>,
    path: PathBuf,
}

impl Monitor {
    /// Connects to the monitor's socket now; an error means it is not
    /// running (or not accepting).
    pub async fn connect(path: &Path) -> Result<Self, CtlError> {
        let channel = uds::connect(path)
            .await
            .map_err(|e| CtlError::Unreachable {
                path: path.to_path_buf(),
                reason: match &e {
                    UdsError::Connect { source, .. } => root_cause(source),
                    other => other.to_string(),
                },
            })?;
        Ok(Monitor {
            client: MonitorClient::new(channel),
            path: path.to_path_buf(),
        })
    }

    /// `GetCluster`: the current state.
    pub async fn get_cluster(&mut self) -> Result<ClusterState, CtlError> {
        let call = self.client.get_cluster(GetClusterRequest {});
        let reply = deadline(&self.path, "GetCluster", call).await?;
        Ok(reply.into_inner())
    }

    /// `AttachBackend`.
    pub async fn attach(&mut self, id: u32) -> Result<ChangeReply, CtlError> {
        let call = self.client.attach_backend(BackendRequest { id });
        let reply = deadline(&self.path, "AttachBackend", call).await?;
        Ok(reply.into_inner())
    }

    /// `DetachBackend`.
    pub async fn detach(&mut self, id: u32) -> Result<ChangeReply, CtlError> {
        let call = self.client.detach_backend(BackendRequest { id });
        let reply = deadline(&self.path, "DetachBackend", call).await?;
        Ok(reply.into_inner())
    }

    /// `PromoteBackend`.
    pub async fn promote(&mut self, id: u32, force: bool) -> Result<ChangeReply, CtlError> {
        let call = self
            .client
            .promote_backend(PromoteBackendRequest { id, force });
        let reply = deadline(&self.path, "PromoteBackend", call).await?;
        Ok(reply.into_inner())
    }

    /// `Recheck`.
    pub async fn recheck(&mut self) -> Result<(), CtlError> {
        let call = self.client.recheck(RecheckRequest {});
        deadline(&self.path, "Recheck", call).await?;
        Ok(())
    }

    /// `WatchCluster`: the current state, then every new generation.
    pub async fn watch(&mut self) -> Result<States, CtlError> {
        let call = self.client.watch_cluster(WatchClusterRequest {});
        let stream = deadline(&self.path, "WatchCluster", call).await?;
        Ok(States {
            stream: stream.into_inner(),
            path: self.path.clone(),
        })
    }
}

/// The states a `WatchCluster` call streams.
#[derive(Debug)]
pub struct States {
    stream: Streaming<ClusterState>,
    path: PathBuf,
}

impl States {
    /// The next state. The stream never ends while the monitor runs, so its
    /// end is an error too.
    pub async fn next(&mut self) -> Result<ClusterState, CtlError> {
        match self.stream.message().await {
            Ok(Some(state)) => Ok(state),
            Ok(None) => Err(CtlError::Lost {
                path: self.path.clone(),
                reason: "the monitor ended the stream".to_owned(),
            }),
            Err(status) => Err(status_error(&self.path, "WatchCluster", status)),
        }
    }
}

/// Runs one call with [`REQUEST_TIMEOUT`], mapping its error.
async fn deadline<T>(
    path: &Path,
    rpc: &'static str,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, CtlError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(status)) => Err(status_error(path, rpc, status)),
        Err(_) => Err(CtlError::Timeout {
            path: path.to_path_buf(),
            rpc,
            after: REQUEST_TIMEOUT,
        }),
    }
}

/// A gRPC error as the operator should see it: a refusal is the monitor's
/// own words; an unavailable monitor is a connection error.
fn status_error(path: &Path, rpc: &'static str, status: tonic::Status) -> CtlError {
    match status.code() {
        tonic::Code::FailedPrecondition => CtlError::Refused(status.message().to_owned()),
        tonic::Code::Unavailable => CtlError::Lost {
            path: path.to_path_buf(),
            reason: match status.source() {
                Some(source) => root_cause(source),
                None => status.message().to_owned(),
            },
        },
        tonic::Code::DeadlineExceeded => CtlError::Timeout {
            path: path.to_path_buf(),
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

/// The innermost error of a chain: for a failed connect, the `io::Error`
/// (`Connection refused (os error 111)`) rather than tonic's
/// `transport error`.
fn root_cause(error: &(dyn StdError + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_the_monitors_words() {
        let e = status_error(
            Path::new("/m.sock"),
            "PromoteBackend",
            tonic::Status::failed_precondition("pg0 is already the primary"),
        );
        assert_eq!(e.to_string(), "pg0 is already the primary");
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn unavailable_is_a_connection_error() {
        let e = status_error(
            Path::new("/m.sock"),
            "GetCluster",
            tonic::Status::unavailable("the monitor is shutting down"),
        );
        assert_eq!(
            e.to_string(),
            "lost pgwarden-monitor at /m.sock: the monitor is shutting down"
        );
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn other_codes_are_failures() {
        let e = status_error(
            Path::new("/m.sock"),
            "Recheck",
            tonic::Status::unimplemented("nope"),
        );
        assert_eq!(e.to_string(), "Recheck failed: nope (gRPC Unimplemented)");
        assert_eq!(e.exit_code(), 1);
    }

    #[tokio::test]
    async fn no_daemon_is_unreachable_with_the_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.sock");
        let e = Monitor::connect(&path).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot reach pgwarden-monitor at {}: No such file or directory (os error 2) (is it running?)",
                path.display()
            )
        );
        assert_eq!(e.exit_code(), 2);

        // A crashed daemon's socket file: nobody listening.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let e = Monitor::connect(&path).await.unwrap_err();
        assert!(e.to_string().contains("Connection refused"), "{e}");
    }
}
