//! The connection to `pgwarden-monitor`: one call each, with a deadline, and
//! gRPC errors turned into [`CtlError`]s that say what the operator should
//! know (see [`Socket`]).

use pgwarden_proto::MonitorClient;
use pgwarden_proto::uds::Daemon;
use pgwarden_proto::v1::{
    BackendRequest, ChangeReply, ClusterState, GetClusterRequest, GetHistoryReply,
    GetHistoryRequest, PromoteBackendRequest, RecheckRequest, WatchClusterRequest,
};
use tonic::Streaming;
use tonic::transport::Channel;

use crate::CtlError;
use crate::socket::{Place, Socket};

/// A connected client of the monitor on one socket.
#[derive(Debug)]
pub struct Monitor {
    client: MonitorClient<Channel>,
    socket: Socket,
}

impl Monitor {
    /// Connects to the monitor's socket now; an error means it is not
    /// running (or not accepting).
    pub async fn connect(at: Place) -> Result<Self, CtlError> {
        let socket = Socket::new(Daemon::Monitor, at);
        Ok(Monitor {
            client: MonitorClient::new(socket.connect().await?),
            socket,
        })
    }

    /// `GetCluster`: the current state.
    pub async fn get_cluster(&mut self) -> Result<ClusterState, CtlError> {
        let call = self.client.get_cluster(GetClusterRequest {});
        let reply = self.socket.deadline("GetCluster", call).await?;
        Ok(reply.into_inner())
    }

    /// `AttachBackend`.
    pub async fn attach(&mut self, id: u32) -> Result<ChangeReply, CtlError> {
        let call = self.client.attach_backend(BackendRequest { id });
        let reply = self.socket.deadline("AttachBackend", call).await?;
        Ok(reply.into_inner())
    }

    /// `RejoinBackend`.
    pub async fn rejoin(&mut self, id: u32) -> Result<ChangeReply, CtlError> {
        let call = self.client.rejoin_backend(BackendRequest { id });
        let reply = self.socket.deadline("RejoinBackend", call).await?;
        Ok(reply.into_inner())
    }

    /// `DetachBackend`.
    pub async fn detach(&mut self, id: u32) -> Result<ChangeReply, CtlError> {
        let call = self.client.detach_backend(BackendRequest { id });
        let reply = self.socket.deadline("DetachBackend", call).await?;
        Ok(reply.into_inner())
    }

    /// `PromoteBackend`.
    pub async fn promote(&mut self, id: u32, force: bool) -> Result<ChangeReply, CtlError> {
        let call = self
            .client
            .promote_backend(PromoteBackendRequest { id, force });
        let reply = self.socket.deadline("PromoteBackend", call).await?;
        Ok(reply.into_inner())
    }

    /// `GetHistory`.
    pub async fn history(&mut self) -> Result<GetHistoryReply, CtlError> {
        let call = self.client.get_history(GetHistoryRequest {});
        let reply = self.socket.deadline("GetHistory", call).await?;
        Ok(reply.into_inner())
    }

    /// `Recheck`.
    pub async fn recheck(&mut self) -> Result<(), CtlError> {
        let call = self.client.recheck(RecheckRequest {});
        self.socket.deadline("Recheck", call).await?;
        Ok(())
    }

    /// `WatchCluster`: the current state, then every new generation.
    pub async fn watch(&mut self) -> Result<States, CtlError> {
        let call = self.client.watch_cluster(WatchClusterRequest {});
        let stream = self.socket.deadline("WatchCluster", call).await?;
        Ok(States {
            stream: stream.into_inner(),
            socket: self.socket.clone(),
        })
    }
}

/// The states a `WatchCluster` call streams.
#[derive(Debug)]
pub struct States {
    stream: Streaming<ClusterState>,
    socket: Socket,
}

impl States {
    /// The next state. The stream never ends while the monitor runs, so its
    /// end is an error too.
    pub async fn next(&mut self) -> Result<ClusterState, CtlError> {
        match self.stream.message().await {
            Ok(Some(state)) => Ok(state),
            Ok(None) => Err(self.socket.lost("the monitor ended the stream".to_owned())),
            Err(status) => Err(self.socket.status_error("WatchCluster", status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_daemon_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.sock");
        let e = Monitor::connect(path.clone().into()).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot reach pgwarden-monitor at {}: No such file or directory (os error 2) (is it running?)",
                path.display()
            )
        );
        assert_eq!(e.exit_code(), 2);
    }
}
