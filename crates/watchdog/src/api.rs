//! The `Watchdog` service on `watchdog.sock`: status for operators and the
//! local monitor, health reports and cluster changes from the monitor.

use std::pin::Pin;

use futures_util::Stream;
use pgwarden_proto::v1::watchdog_server::Watchdog;
use pgwarden_proto::v1::{
    ClusterRecord, GetStatusRequest, LeadershipEvent, OperatorReply, OperatorRequest,
    ProposeClusterChangeReply, ProposeClusterChangeRequest, ProxyRoutingReply, ProxyRoutingRequest,
    ReportHealthReply, ReportHealthRequest, WatchLeadershipRequest, WatchdogStatus,
};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Request, Response, Status};

use crate::state::Generation;

/// A request from the API to the core loop.
#[derive(Debug)]
pub enum ApiRequest {
    /// The local monitor's opinion of a backend.
    ReportHealth {
        /// Backend name.
        backend: String,
        /// Down or up.
        down: bool,
        /// Committed, or why not.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// An operator's request the local monitor does not decide: for the
    /// leader's monitor.
    Operator {
        /// What the operator asked.
        request: OperatorRequest,
        /// The leader's monitor's answer, or why there is none.
        reply: oneshot::Sender<Result<String, Status>>,
    },
    /// A new generation from the leader's monitor (compare-and-set).
    Propose {
        /// The generation the monitor based its change on.
        expected: u64,
        /// The new generation.
        generation: Generation,
        /// Committed, or why not.
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// The service.
#[derive(Debug, Clone)]
pub struct WatchdogApi {
    /// Requests to the core loop.
    pub requests: mpsc::Sender<ApiRequest>,
    /// The latest status.
    pub status: watch::Receiver<WatchdogStatus>,
    /// Fires on shutdown: open streams end, so the API drains at once.
    pub stop: tokio_util::sync::CancellationToken,
    /// The newest generation the local proxy said it routes by at least.
    pub proxy_routing: std::sync::Arc<watch::Sender<u64>>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<LeadershipEvent, Status>> + Send>>;

/// The status without what changes all the time (last-seen times, the applied
/// index): watchers hear only about changes that matter.
pub fn significant(s: &WatchdogStatus) -> WatchdogStatus {
    let mut s = s.clone();
    for m in &mut s.members {
        m.last_seen_unix_ms = 0;
    }
    if let Some(r) = s.record.as_mut() {
        r.applied_index = 0;
    }
    s
}

impl WatchdogApi {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> ApiRequest,
    ) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .await
            .map_err(|_| "the watchdog is shutting down".to_owned())?;
        match tokio::time::timeout(std::time::Duration::from_secs(10), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the watchdog is shutting down".to_owned()),
            Err(_) => Err("not committed within 10 s".to_owned()),
        }
    }

    fn record(&self) -> Option<ClusterRecord> {
        self.status.borrow().record.clone()
    }
}

#[tonic::async_trait]
impl Watchdog for WatchdogApi {
    type WatchLeadershipStream = EventStream;

    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<WatchdogStatus>, Status> {
        Ok(Response::new(self.status.borrow().clone()))
    }

    async fn watch_leadership(
        &self,
        _: Request<WatchLeadershipRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let mut rx = self.status.clone();
        let stop = self.stop.clone();
        let (tx, out) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut last = {
                let s = rx.borrow_and_update().clone();
                let sig = significant(&s);
                if tx
                    .send(Ok(LeadershipEvent { status: Some(s) }))
                    .await
                    .is_err()
                {
                    return;
                }
                sig
            };
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = stop.cancelled() => return,
                    changed = rx.changed() => if changed.is_err() { return },
                }
                let s = rx.borrow_and_update().clone();
                let sig = significant(&s);
                if sig == last {
                    continue;
                }
                last = sig;
                if tx
                    .send(Ok(LeadershipEvent { status: Some(s) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn report_health(
        &self,
        r: Request<ReportHealthRequest>,
    ) -> Result<Response<ReportHealthReply>, Status> {
        let r = r.into_inner();
        self.ask(|reply| ApiRequest::ReportHealth {
            backend: r.backend,
            down: r.down,
            reply,
        })
        .await
        .map_err(Status::unavailable)?;
        Ok(Response::new(ReportHealthReply {}))
    }

    async fn propose_cluster_change(
        &self,
        r: Request<ProposeClusterChangeRequest>,
    ) -> Result<Response<ProposeClusterChangeReply>, Status> {
        let r = r.into_inner();
        let expected = r.expected_generation;
        let generation = r.proposed();
        let result = self
            .ask(|reply| ApiRequest::Propose {
                expected,
                generation,
                reply,
            })
            .await;
        let (committed, reason) = match result {
            Ok(()) => (true, String::new()),
            Err(e) => (false, e),
        };
        Ok(Response::new(ProposeClusterChangeReply {
            committed,
            reason,
            record: self.record(),
        }))
    }

    async fn proxy_routing(
        &self,
        r: Request<ProxyRoutingRequest>,
    ) -> Result<Response<ProxyRoutingReply>, Status> {
        let generation = r.into_inner().generation;
        let applied = self.record().map_or(0, |r| r.generation);
        if generation > applied {
            return Err(Status::invalid_argument(format!(
                "generation {generation} is newer than this watchdog's record ({applied}): no proxy can route by it"
            )));
        }
        // Only ever up: the proxy never routes by an older record again
        // (restarted, it routes only under a lease this watchdog grants
        // for its own applied generation, which only grows).
        self.proxy_routing.send_if_modified(|g| {
            let newer = generation > *g;
            if newer {
                *g = generation;
            }
            newer
        });
        Ok(Response::new(ProxyRoutingReply {}))
    }

    async fn forward_operator(
        &self,
        r: Request<OperatorRequest>,
    ) -> Result<Response<OperatorReply>, Status> {
        let (tx, rx) = oneshot::channel();
        let request = ApiRequest::Operator {
            request: r.into_inner(),
            reply: tx,
        };
        if self.requests.send(request).await.is_err() {
            return Err(Status::unavailable("the watchdog is shutting down"));
        }
        let wait = crate::peers::OPERATOR_TIMEOUT + std::time::Duration::from_secs(5);
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Ok(message))) => Ok(Response::new(OperatorReply { message })),
            Ok(Ok(Err(status))) => Err(status),
            Ok(Err(_)) => Err(Status::unavailable("the watchdog is shutting down")),
            Err(_) => Err(Status::deadline_exceeded(
                "the leader's monitor did not answer in time",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(generation: u64) -> (WatchdogApi, watch::Receiver<u64>) {
        let status = WatchdogStatus {
            record: Some(ClusterRecord {
                generation,
                ..ClusterRecord::default()
            }),
            ..WatchdogStatus::default()
        };
        let (routing_tx, routing_rx) = watch::channel(0u64);
        let api = WatchdogApi {
            requests: mpsc::channel(1).0,
            status: watch::channel(status).1,
            stop: tokio_util::sync::CancellationToken::new(),
            proxy_routing: std::sync::Arc::new(routing_tx),
        };
        (api, routing_rx)
    }

    async fn claim(api: &WatchdogApi, generation: u64) -> Result<(), Status> {
        api.proxy_routing(Request::new(ProxyRoutingRequest { generation }))
            .await
            .map(|_| ())
    }

    /// What the proxy routes by lets the leader promote early: a claim no
    /// proxy can make (newer than this watchdog's record) is refused, and
    /// the value never goes down.
    #[tokio::test]
    async fn a_proxys_claim_is_kept_only_up_to_this_watchdogs_record_and_never_lowered() {
        let (api, routing) = api(7);
        let refused = claim(&api, 8).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(*routing.borrow(), 0);
        claim(&api, 7).await.unwrap();
        assert_eq!(*routing.borrow(), 7);
        claim(&api, 5).await.unwrap();
        assert_eq!(*routing.borrow(), 7, "never lowered");
    }
}
