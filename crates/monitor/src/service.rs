//! The Monitor gRPC service on `monitor.sock`.

use std::pin::Pin;

use futures_util::Stream;
use pgwarden_proto::v1::monitor_server::Monitor;
use pgwarden_proto::v1::{
    BackendRequest, ChangeReply, ClusterState, GetClusterRequest, PromoteBackendRequest,
    RecheckReply, RecheckRequest, WatchClusterRequest,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tonic::{Request, Response, Status};

use crate::operator::Ask;

/// A request the service passes to the monitor's core loop.
#[derive(Debug)]
pub enum Command {
    /// AttachBackend, DetachBackend, PromoteBackend or RejoinBackend:
    /// answered once its change is committed, or refused.
    Change {
        /// What is asked.
        ask: Ask,
        /// Another node's monitor handed it over (through the watchdogs)
        /// because this one leads: decided here or refused, never handed
        /// on again.
        forwarded: bool,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Recheck.
    Recheck,
    /// The local proxy routed its first transaction to the primary of
    /// `generation` (ReportRouted): for the failover history.
    Routed {
        /// The generation.
        generation: u64,
        /// When (unix ms).
        at_ms: i64,
        /// What the proxy moved and ended, in words.
        detail: String,
    },
}

/// The service: talks to the core loop, never to the machine directly.
#[derive(Debug, Clone)]
pub struct MonitorService {
    /// Requests to the core loop.
    pub commands: mpsc::Sender<Command>,
    /// The latest state, live check data included.
    pub current: watch::Receiver<ClusterState>,
    /// Each committed generation.
    pub generations: broadcast::Sender<ClusterState>,
    /// True once the monitor has made its first decision; until then its
    /// state is not a committed view and watchers wait for it.
    pub ready: watch::Receiver<bool>,
    /// The failover history (with the watchdog: what this node decided while it led).
    pub history: watch::Receiver<Vec<pgwarden_proto::v1::FailoverRecord>>,
    /// Fires on shutdown: open streams end, so the API drains at once.
    pub stop: tokio_util::sync::CancellationToken,
}

type StateStream = Pin<Box<dyn Stream<Item = Result<ClusterState, Status>> + Send>>;

/// What a request gets once the core loop is gone.
fn shutting_down() -> Status {
    Status::unavailable("the monitor is shutting down")
}

impl MonitorService {
    /// Passes `command` to the core loop.
    async fn send(&self, command: Command) -> Result<(), Status> {
        self.commands
            .send(command)
            .await
            .map_err(|_| shutting_down())
    }

    /// Asks the core loop for `ask`, forwarded by another node's monitor
    /// if `request` says so: the state once the change is committed, or
    /// why it was refused.
    async fn change<T>(
        &self,
        request: &Request<T>,
        ask: Ask,
    ) -> Result<Response<ChangeReply>, Status> {
        let (reply, rx) = oneshot::channel();
        let command = Command::Change {
            ask,
            forwarded: request
                .metadata()
                .contains_key(pgwarden_proto::OPERATOR_FORWARDED),
            reply,
        };
        self.send(command).await?;
        match rx.await {
            Ok(Ok(message)) => {
                let state = self.current.borrow().clone();
                Ok(Response::new(ChangeReply {
                    state: Some(state),
                    message,
                }))
            }
            Ok(Err(e)) => Err(Status::failed_precondition(e)),
            Err(_) => Err(shutting_down()),
        }
    }
}

fn id(raw: u32) -> usize {
    raw as usize
}

#[tonic::async_trait]
impl Monitor for MonitorService {
    type WatchClusterStream = StateStream;

    async fn watch_cluster(
        &self,
        _: Request<WatchClusterRequest>,
    ) -> Result<Response<StateStream>, Status> {
        // A restarted monitor has not decided anything yet: its first state
        // would name no primary. Watchers get the first committed one.
        let mut ready = self.ready.clone();
        if ready.wait_for(|r| *r).await.is_err() {
            return Err(shutting_down());
        }
        // Subscribe before reading the current state, so no generation
        // committed in between is missed; then skip what was already sent.
        let mut generations = self.generations.subscribe();
        let first = self.current.borrow().clone();
        let current = self.current.clone();
        let stop = self.stop.clone();
        let (tx, rx) = mpsc::channel::<Result<ClusterState, Status>>(16);
        tokio::spawn(async move {
            let mut last = first.generation;
            let mut last_no_quorum = first.no_quorum;
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                let next = tokio::select! {
                    _ = tx.closed() => return,
                    _ = stop.cancelled() => return,
                    n = generations.recv() => n,
                };
                let state = match next {
                    Ok(s) => s,
                    // Fell behind: the newest state still goes out, in order.
                    Err(broadcast::error::RecvError::Lagged(_)) => current.borrow().clone(),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                // A new generation, or this node losing or regaining its
                // quorum (which proxies must hear about at once).
                if state.generation <= last && state.no_quorum == last_no_quorum {
                    continue;
                }
                last = state.generation.max(last);
                last_no_quorum = state.no_quorum;
                if tx.send(Ok(state)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_history(
        &self,
        _: Request<pgwarden_proto::v1::GetHistoryRequest>,
    ) -> Result<Response<pgwarden_proto::v1::GetHistoryReply>, Status> {
        Ok(Response::new(pgwarden_proto::v1::GetHistoryReply {
            records: self.history.borrow().clone(),
        }))
    }

    async fn get_cluster(
        &self,
        _: Request<GetClusterRequest>,
    ) -> Result<Response<ClusterState>, Status> {
        Ok(Response::new(self.current.borrow().clone()))
    }

    async fn attach_backend(
        &self,
        r: Request<BackendRequest>,
    ) -> Result<Response<ChangeReply>, Status> {
        let i = id(r.get_ref().id);
        self.change(&r, Ask::Attach(i)).await
    }

    async fn detach_backend(
        &self,
        r: Request<BackendRequest>,
    ) -> Result<Response<ChangeReply>, Status> {
        let i = id(r.get_ref().id);
        self.change(&r, Ask::Detach(i)).await
    }

    async fn promote_backend(
        &self,
        r: Request<PromoteBackendRequest>,
    ) -> Result<Response<ChangeReply>, Status> {
        let (i, force) = (id(r.get_ref().id), r.get_ref().force);
        self.change(&r, Ask::Promote { id: i, force }).await
    }

    async fn report_routed(
        &self,
        r: Request<pgwarden_proto::v1::ReportRoutedRequest>,
    ) -> Result<Response<pgwarden_proto::v1::ReportRoutedReply>, Status> {
        let r = r.into_inner();
        let command = Command::Routed {
            generation: r.generation,
            at_ms: r.first_routed_unix_ms,
            detail: format!(
                "this node's proxy: {} session(s) moved to the new primary, {} ended, {} statement(s) with an unknown outcome (08007)",
                r.sessions_moved, r.sessions_ended, r.requests_lost
            ),
        };
        self.send(command).await?;
        Ok(Response::new(pgwarden_proto::v1::ReportRoutedReply {}))
    }

    async fn recheck(&self, _: Request<RecheckRequest>) -> Result<Response<RecheckReply>, Status> {
        self.send(Command::Recheck).await?;
        Ok(Response::new(RecheckReply {}))
    }

    async fn rejoin_backend(
        &self,
        r: Request<BackendRequest>,
    ) -> Result<Response<ChangeReply>, Status> {
        let backend = id(r.get_ref().id);
        self.change(&r, Ask::Rejoin(backend)).await
    }
}
