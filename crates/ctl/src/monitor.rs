//! The connection to `pgwarden-monitor`: one call each, with a deadline, and
//! gRPC errors turned into [`CtlError`]s that say what the operator should know
//! (see [`Socket`](crate::socket::Socket)).

use pgwarden_proto::MonitorClient;
use pgwarden_proto::v1::{
    BackendRequest, ChangeReply, ClusterState, GetClusterRequest, GetHistoryReply,
    GetHistoryRequest, PromoteBackendRequest, RecheckReply, RecheckRequest, WatchClusterRequest,
};
use tonic::transport::Channel;

use crate::CtlError;
use crate::socket::{Connected, Stream};

/// A connected client of the monitor on one socket; connecting fails when
/// it is not running (or not accepting).
pub type Monitor = Connected<MonitorClient<Channel>>;

impl Monitor {
    unary! {
        /// `GetCluster`: the current state.
        get_cluster() -> ClusterState = get_cluster(GetClusterRequest {}), "GetCluster";
        /// `AttachBackend`.
        attach(id: u32) -> ChangeReply = attach_backend(BackendRequest { id }), "AttachBackend";
        /// `RejoinBackend`.
        rejoin(id: u32) -> ChangeReply = rejoin_backend(BackendRequest { id }), "RejoinBackend";
        /// `DetachBackend`.
        detach(id: u32) -> ChangeReply = detach_backend(BackendRequest { id }), "DetachBackend";
        /// `PromoteBackend`.
        promote(id: u32, force: bool) -> ChangeReply
            = promote_backend(PromoteBackendRequest { id, force }), "PromoteBackend";
        /// `GetHistory`.
        history() -> GetHistoryReply = get_history(GetHistoryRequest {}), "GetHistory";
        /// `Recheck`.
        recheck() -> RecheckReply = recheck(RecheckRequest {}), "Recheck";
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
