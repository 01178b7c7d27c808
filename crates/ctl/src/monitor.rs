//! The connection to `pgwarden-monitor`: one call each, with a deadline, and
//! gRPC errors turned into [`CtlError`]s that say what the operator should
//! know (see [`Socket`]).

use pgwarden_proto::MonitorClient;
use pgwarden_proto::uds::Daemon;
use pgwarden_proto::v1::{
    BackendRequest, ChangeReply, ClusterState, GetClusterRequest, GetHistoryReply,
    GetHistoryRequest, PromoteBackendRequest, RecheckRequest, WatchClusterRequest,
};
use tonic::transport::Channel;

use crate::CtlError;
use crate::socket::{Connected, Place, Stream};

/// A connected client of the monitor on one socket.
pub type Monitor = Connected<MonitorClient<Channel>>;

impl Monitor {
    /// Connects to the monitor's socket now; an error means it is not
    /// running (or not accepting).
    pub async fn connect(at: Place) -> Result<Self, CtlError> {
        Self::open(Daemon::Monitor, at, MonitorClient::new).await
    }

    /// `GetCluster`: the current state.
    pub async fn get_cluster(&mut self) -> Result<ClusterState, CtlError> {
        let call = self.client.get_cluster(GetClusterRequest {});
        self.socket.deadline("GetCluster", call).await
    }

    /// `AttachBackend`.
    pub async fn attach(&mut self, id: u32) -> Result<ChangeReply, CtlError> {
        let call = self.client.attach_backend(BackendRequest { id });
        self.socket.deadline("AttachBackend", call).await
    }

    /// `RejoinBackend`.
    pub async fn rejoin(&mut self, id: u32) -> Result<ChangeReply, CtlError> {
        let call = self.client.rejoin_backend(BackendRequest { id });
        self.socket.deadline("RejoinBackend", call).await
    }

    /// `DetachBackend`.
    pub async fn detach(&mut self, id: u32) -> Result<ChangeReply, CtlError> {
        let call = self.client.detach_backend(BackendRequest { id });
        self.socket.deadline("DetachBackend", call).await
    }

    /// `PromoteBackend`.
    pub async fn promote(&mut self, id: u32, force: bool) -> Result<ChangeReply, CtlError> {
        let call = self
            .client
            .promote_backend(PromoteBackendRequest { id, force });
        self.socket.deadline("PromoteBackend", call).await
    }

    /// `GetHistory`.
    pub async fn history(&mut self) -> Result<GetHistoryReply, CtlError> {
        let call = self.client.get_history(GetHistoryRequest {});
        self.socket.deadline("GetHistory", call).await
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
        let ended = "the monitor ended the stream";
        self.socket.stream("WatchCluster", call, ended).await
    }
}

/// The states a `WatchCluster` call streams; its [`Stream::next`] is the
/// next state.
pub type States = Stream<ClusterState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_daemon_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.sock");
        crate::socket::assert_unreachable(
            Monitor::connect(path.clone().into()).await,
            "pgwarden-monitor",
            &path,
            "No such file or directory (os error 2) (is it running?)",
        );
    }
}
