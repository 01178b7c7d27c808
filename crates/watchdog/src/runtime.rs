//! The watchdog daemon: a thin driver around the [`Core`], which decides.
//!
//! One task owns the core: it reads the clocks and the other tasks' state
//! into [`Readings`], feeds the core every tick, peer message, API request
//! and monitor probe result, and performs what it returns. Peers, the local
//! API, the monitor probes and the delegate-IP commands run in their own
//! tasks and talk to it through queues.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgwarden_proto::uds::{self, Daemon};
use pgwarden_proto::v1::{
    WatchdogStatus, watchdog_peer_server::WatchdogPeerServer, watchdog_server::WatchdogServer,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{ApiRequest, WatchdogApi};
use crate::core::{Core, Input, MONITOR_PROBE, Output, Readings, Refusal, Setup};
use crate::fence::Grantable;
use crate::peers::{self, Identity, Inbound, PeerService};
use crate::replay::{ReplayGuard, Sequence};
use crate::report::Report;
use crate::settings::{Settings, TICK};
use crate::{DurableStorage, Message, NodeConfig, VipAction, WatchdogNode};

/// Why the watchdog stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The Raft state could not be opened or written: the node must not
    /// take part in elections with state it cannot keep.
    #[error("node.state_dir: {0}")]
    Storage(String),
    /// A socket could not be bound.
    #[error("{0}")]
    Listen(String),
}

/// Where a proposer's answer goes.
type Reply = oneshot::Sender<Result<(), String>>;
/// Where an operator's answer goes.
type OperatorReply = oneshot::Sender<Result<String, tonic::Status>>;

/// Runs the watchdog until `shutdown` completes; releases the delegate IP on the way out.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let voters = settings.voters();
    let storage = DurableStorage::open(settings.state_dir.clone(), &voters)
        .map_err(|e| RunError::Storage(e.to_string()))?;
    let node = WatchdogNode::new(NodeConfig::new(settings.id, voters.clone()), storage)
        .map_err(|e| RunError::Storage(e.to_string()))?;
    // The epoch every signed message carries: durable before any is sent.
    let mut replay = ReplayGuard::open(settings.state_dir.clone())
        .map_err(|e| RunError::Storage(e.to_string()))?;
    let epoch = replay
        .start_epoch(u64::try_from(now_ms()).unwrap_or(0))
        .map_err(|e| RunError::Storage(e.to_string()))?;
    let id = Identity {
        me: settings.id,
        voters: voters.clone(),
        members_hash: crate::auth::members_hash(&settings.members),
        signer: crate::auth::Signer::new(settings.key.clone()),
        epoch,
        tls: settings
            .tls
            .as_ref()
            .map(|t| std::sync::Arc::clone(&t.client)),
    };
    let stop = CancellationToken::new();

    // The delegate IP: its own task, so slow commands never stall Raft.
    // What the lease wants of the delegate IP: never waited on.
    let (vip_tx, vip_rx) = watch::channel::<Option<VipAction>>(None);
    // While the lease holds: when a quorum last confirmed the lead (the
    // delegate-IP guard's heartbeat, from this loop).
    let (confirmed_tx, confirmed_rx) = watch::channel::<Option<u64>>(None);
    let (holding_tx, holding_rx) = watch::channel(false);
    let vip_task = tokio::spawn(crate::vip::run(
        settings.clone(),
        vip_rx,
        confirmed_rx,
        holding_tx,
    ));

    // Peers: the TCP server and one sender per peer.
    let (inbound_tx, mut inbound) = mpsc::channel::<Inbound>(1024);
    let tcp = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| {
            RunError::Listen(format!(
                "watchdog.listen: cannot listen on {}: {e}",
                settings.listen
            ))
        })?;
    // The proxies' lease (see crate::fence): what this node grants while it
    // leads, and whom it asks while it follows.
    let (grant_tx, grant_rx) = watch::channel::<Option<Grantable>>(None);
    let (ask_tx, ask_rx) = watch::channel::<Option<(u64, u64, u64)>>(None);
    let peer_service =
        PeerService::new(id.clone(), replay, inbound_tx.clone()).with_grants(grant_rx);
    // What the proxies route by: this node's (from watchdog.sock), the
    // followers' (from their asks).
    let (proxy_routing_tx, mut proxy_routing) = watch::channel(0u64);
    let proxy_routing_tx = std::sync::Arc::new(proxy_routing_tx);
    let proxy_routes = peer_service.proxy_routes();
    let addresses = voters
        .iter()
        .filter(|v| **v != settings.id)
        .filter_map(|&v| settings.address(v).map(|a| (v, a.to_owned())))
        .collect();
    tokio::spawn(crate::renew::renew_lease(
        id.clone(),
        addresses,
        ask_rx,
        proxy_routing.clone(),
        inbound_tx.clone(),
    ));
    let peer_stop = stop.clone();
    let peer_tls = settings
        .tls
        .as_ref()
        .map(|t| std::sync::Arc::clone(&t.server));
    let peer_server = tokio::spawn(async move {
        let incoming = pgwarden_proto::tcp::incoming(tcp, peer_tls, "watchdog peer");
        let r = tonic::transport::Server::builder()
            .add_service(WatchdogPeerServer::new(peer_service))
            .serve_with_incoming_shutdown(incoming, peer_stop.cancelled_owned())
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "peer server stopped");
        }
    });
    let mut outbound: HashMap<u64, mpsc::Sender<Message>> = HashMap::new();
    for &peer in voters.iter().filter(|v| **v != settings.id) {
        let (tx, rx) = mpsc::channel(peers::QUEUE);
        let address = settings.address(peer).unwrap_or_default().to_owned();
        tokio::spawn(peers::sender(
            peer,
            address,
            id.clone(),
            rx,
            inbound_tx.clone(),
        ));
        outbound.insert(peer, tx);
    }

    // Forwarding this node's reports to the leader, one at a time.
    let (forward_tx, mut forward_rx) = mpsc::channel::<Forward>(64);
    let fwd_id = id.clone();
    tokio::spawn(async move {
        let mut seq = Sequence::new();
        while let Some((address, leader, report, reply)) = forward_rx.recv().await {
            let r = crate::forward::report(&address, &fwd_id, seq.take(), leader, &report).await;
            let _ = reply.send(r);
        }
    });

    // Operators' requests for the leader's monitor, one at a time.
    let (operator_tx, mut operator_rx) = mpsc::channel::<OperatorForward>(16);
    let op_id = id.clone();
    tokio::spawn(async move {
        let mut seq = Sequence::new();
        while let Some((address, leader, request, reply)) = operator_rx.recv().await {
            // Its operator gave up waiting (it was told the outcome is
            // unknown): do not make the change behind their back.
            if reply.is_closed() {
                continue;
            }
            let r = crate::forward::operator(&address, &op_id, seq.take(), leader, request).await;
            let _ = reply.send(r);
        }
    });

    // This node's monitor: the core says when to probe it, the answers
    // come back here.
    let (probed_tx, mut probed) = mpsc::channel::<bool>(4);
    let monitor_path = uds::socket_path(&settings.runtime_dir, Daemon::Monitor);

    // The local API.
    let (status_tx, status_rx) = watch::channel(WatchdogStatus::default());
    let (requests_tx, mut requests) = mpsc::channel::<ApiRequest>(64);
    let path = uds::socket_path(&settings.runtime_dir, Daemon::Watchdog);
    let listener = uds::bind(&path)
        .await
        .map_err(|e| RunError::Listen(format!("node.runtime_dir: {e}")))?;
    match pgwarden_daemon::metrics::bind(settings.metrics_listen).await {
        Ok(listener) => {
            let status = status_rx.clone();
            tokio::spawn(pgwarden_daemon::metrics::serve(
                listener,
                move |r| crate::metrics::render(&status.borrow(), r),
                stop.clone(),
            ));
        }
        Err(e) => {
            tracing::warn!(addr = %settings.metrics_listen, error = %e, "watchdog.metrics_listen: cannot serve /metrics; running without")
        }
    }
    let api = WatchdogApi {
        requests: requests_tx,
        status: status_rx,
        stop: stop.clone(),
        proxy_routing: std::sync::Arc::clone(&proxy_routing_tx),
    };
    let api_stop = stop.clone();
    let api_server = tokio::spawn(async move {
        let (_health, health) =
            uds::health_service(pgwarden_proto::v1::watchdog_server::SERVICE_NAME).await;
        let router = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(WatchdogServer::new(api));
        if let Err(e) = uds::serve(listener, router, api_stop.cancelled_owned()).await {
            tracing::error!(error = %e, "watchdog API stopped");
        }
    });
    tracing::info!(
        id = settings.id, members = ?settings.members, listen = %settings.listen, socket = %path.display(),
        delegate_ip = ?settings.delegate_ip, peer_tls = settings.tls.is_some(), "pgwarden-watchdog starting"
    );
    if settings.tls.is_none() && settings.members.len() > 1 {
        tracing::info!(
            "watchdog peers talk plain TCP: messages are authenticated by the cluster key but not encrypted (set watchdog.tls_cert_file, tls_key_file and tls_ca_file for mutual TLS)"
        );
    }

    let setup = Setup {
        members: settings.members.clone(),
        delegate_ip: settings
            .delegate_ip
            .map(|i| i.to_string())
            .unwrap_or_default(),
    };
    let mut core: Core<Reply, OperatorReply> = Core::new(setup, node).with_blocking(blocking);
    let tasks = Tasks {
        settings: &settings,
        outbound,
        forward: forward_tx,
        operator: operator_tx,
        probed: probed_tx,
        monitor_path,
        vip: vip_tx.clone(),
        vip_confirmed: confirmed_tx,
        grants: grant_tx,
        asks: ask_tx,
        status: status_tx,
    };
    // systemd's watchdog hears from this loop's ticks: a stuck loop stops it.
    let mut pinger = pgwarden_daemon::notify::Pinger::from_env();
    pgwarden_daemon::notify::ready();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut shutting_down = false;
    let result = loop {
        // `None`: a tick.
        let input: Option<Input<Reply, OperatorReply>> = tokio::select! {
            _ = &mut shutdown, if !shutting_down => {
                shutting_down = true;
                Some(Input::Shutdown)
            }
            // This node's proxy moved on: shown at once (on the leader,
            // proxies_on_generation may open the fence).
            r = proxy_routing.changed() => match r {
                Ok(()) => Some(Input::ProxyRouting),
                Err(_) => break Ok(()),
            },
            _ = ticker.tick() => {
                pinger.ping();
                None
            }
            Some(event) = inbound.recv() => Some(from_peers(event)),
            Some(req) = requests.recv() => Some(from_api(req)),
            Some(alive) = probed.recv() => Some(Input::Probed(alive)),
        };
        let mut inputs = VecDeque::from([input]);
        let mut end = None;
        while let Some(input) = inputs.pop_front() {
            core.read(Readings {
                mono_ms: pgwarden_proto::lease::monotonic_ms(),
                wall_ms: now_ms(),
                holding: *holding_rx.borrow(),
                own_routing: *proxy_routing.borrow_and_update(),
                routes: proxy_routes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            });
            let out = match input {
                Some(input) => core.step(input),
                None => core.tick(),
            };
            for o in out {
                match tasks.perform(o) {
                    Performed::Next(Some(input)) => inputs.push_back(Some(input)),
                    Performed::Next(None) => {}
                    Performed::End(r) => end = Some(r),
                }
            }
            if end.is_some() {
                break;
            }
        }
        if let Some(r) = end {
            break r;
        }
    };
    drop(tasks);

    // Leaving: the delegate IP goes first.
    if *holding_rx.borrow() || settings.delegate_ip.is_some() {
        vip_tx.send_replace(Some(VipAction::Release));
    }
    drop(vip_tx);
    let _ = tokio::time::timeout(Duration::from_secs(15), vip_task).await;
    stop.cancel();
    // Peers keep their HTTP/2 connections open: do not wait for them to go.
    if tokio::time::timeout(Duration::from_secs(1), peer_server)
        .await
        .is_err()
    {
        tracing::debug!("peer connections still open at exit");
    }
    let _ = api_server.await;
    tracing::info!("pgwarden-watchdog stopped");
    result
}

/// An operator's request on its way to the leader: its address, the
/// request, the answer.
type OperatorForward = (
    String,
    (u64, u64),
    pgwarden_proto::v1::OperatorRequest,
    oneshot::Sender<Result<String, tonic::Status>>,
);

/// Hands an operator's request to this node's monitor (on the leader: the
/// one that decides) and returns its answer.
async fn ask_monitor(
    path: &std::path::Path,
    request: pgwarden_proto::v1::OperatorRequest,
) -> Result<String, tonic::Status> {
    use pgwarden_proto::v1::monitor_client::MonitorClient;
    use pgwarden_proto::v1::operator_request::Kind;
    use pgwarden_proto::v1::{BackendRequest, PromoteBackendRequest};
    let channel = uds::connect(path).await.map_err(|e| {
        tonic::Status::unavailable(format!("the leader's monitor is not reachable: {e}"))
    })?;
    let mut monitor = MonitorClient::new(channel);
    let id = request.backend_id;
    // The same backend here as where the operator named it, or nothing.
    let state = monitor
        .get_cluster(pgwarden_proto::v1::GetClusterRequest {})
        .await?
        .into_inner();
    let here = state
        .backends
        .iter()
        .find(|b| b.id == id)
        .map(|b| b.name.as_str());
    if here != Some(request.backend_name.as_str()) {
        return Err(tonic::Status::failed_precondition(format!(
            "backend {id} is {:?} on the leader's node but {:?} where the request was made: the [[backends]] lists must be the same, in the same order, on every node",
            here.unwrap_or("missing"),
            request.backend_name
        )));
    }
    // Marked, so that a monitor that no longer leads refuses rather than
    // hands it on again.
    fn mark<T>(message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.metadata_mut().insert(
            pgwarden_proto::OPERATOR_FORWARDED,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        r
    }
    let reply = match request.kind() {
        Kind::Attach => monitor.attach_backend(mark(BackendRequest { id })).await,
        Kind::Detach => monitor.detach_backend(mark(BackendRequest { id })).await,
        Kind::Rejoin => monitor.rejoin_backend(mark(BackendRequest { id })).await,
        Kind::Promote => {
            let force = request.force;
            monitor
                .promote_backend(mark(PromoteBackendRequest { id, force }))
                .await
        }
        Kind::Unspecified => return Err(tonic::Status::invalid_argument("no operator request")),
    }?;
    Ok(reply.into_inner().message)
}

/// A report on its way to the leader: its address, the leader's id and
/// term, the report, the answer.
type Forward = (
    String,
    (u64, u64),
    crate::report::Report,
    oneshot::Sender<Result<(), String>>,
);

/// Runs the node's durable writes (files written and fsynced) off the
/// async worker, so the API and the peers' tasks keep running meanwhile.
fn blocking(f: &mut dyn FnMut()) {
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        tokio::task::block_in_place(f);
    } else {
        f();
    }
}

/// What the peers' side hands over, as the core's input.
fn from_peers(event: Inbound) -> Input<Reply, OperatorReply> {
    match event {
        Inbound::Raft(from, messages) => Input::Peer { from, messages },
        Inbound::Forwarded {
            from,
            report,
            term,
            reply,
        } => Input::Forwarded {
            from,
            report,
            term,
            reply,
        },
        Inbound::Operator {
            request,
            term,
            reply,
        } => Input::Operator {
            request,
            term,
            reply,
        },
        Inbound::Granted(g) => Input::Granted(g),
        Inbound::ProxyRouting { from, generation } => {
            tracing::debug!(
                from,
                generation,
                "a follower's proxy routes by a newer generation"
            );
            Input::ProxyRouting
        }
        Inbound::Unreachable(peer) => Input::Unreachable(peer),
        Inbound::Snapshot(peer, ok) => Input::Snapshot(peer, ok),
    }
}

/// What the local API asks, as the core's input.
fn from_api(request: ApiRequest) -> Input<Reply, OperatorReply> {
    match request {
        ApiRequest::ReportHealth {
            backend,
            down,
            reply,
        } => Input::Report {
            report: Report::Backend { backend, down },
            reply,
        },
        ApiRequest::Operator { request, reply } => Input::LocalOperator { request, reply },
        ApiRequest::Propose {
            expected,
            generation,
            reply,
        } => Input::Propose {
            expected,
            generation,
            reply,
        },
    }
}

/// What performing one output leads to.
enum Performed {
    /// Go on, after feeding the core this input (if any).
    Next(Option<Input<Reply, OperatorReply>>),
    /// Stop the loop with this result.
    End(Result<(), RunError>),
}

/// Where the core's outputs go: the other tasks' queues and channels.
struct Tasks<'a> {
    settings: &'a Settings,
    outbound: HashMap<u64, mpsc::Sender<Message>>,
    forward: mpsc::Sender<Forward>,
    operator: mpsc::Sender<OperatorForward>,
    probed: mpsc::Sender<bool>,
    monitor_path: std::path::PathBuf,
    vip: watch::Sender<Option<VipAction>>,
    vip_confirmed: watch::Sender<Option<u64>>,
    grants: watch::Sender<Option<Grantable>>,
    asks: watch::Sender<Option<crate::core::LeaseAsk>>,
    status: watch::Sender<WatchdogStatus>,
}

impl Tasks<'_> {
    /// Performs one output of the core.
    fn perform(&self, output: Output<Reply, OperatorReply>) -> Performed {
        match output {
            Output::Grant(g) => {
                self.grants.send_replace(g);
            }
            Output::Ask(a) => {
                self.asks.send_replace(a);
            }
            Output::Send(m) => {
                let to = m.to;
                if let Some(q) = self.outbound.get(&to)
                    && q.try_send(m).is_err()
                {
                    return Performed::Next(Some(Input::Unreachable(to)));
                }
            }
            Output::Vip(v) => {
                self.vip.send_replace(Some(v));
            }
            Output::VipConfirmed(at) => {
                self.vip_confirmed.send_replace(at);
            }
            Output::Status(s) => {
                self.status.send_replace(*s);
            }
            Output::Answer { to, result } => {
                let _ = to.send(result);
            }
            Output::Forward {
                leader,
                term,
                report,
                reply,
            } => {
                // Nobody waits for a monitor report's answer.
                let reply = reply.unwrap_or_else(|| oneshot::channel().0);
                match self.settings.address(leader) {
                    Some(address) => {
                        let _ = self.forward.try_send((
                            address.to_owned(),
                            (leader, term),
                            report,
                            reply,
                        ));
                    }
                    None => {
                        let _ = reply.send(Err(format!("the leader {leader} is not a member")));
                    }
                }
            }
            Output::ForwardOperator {
                leader,
                term,
                request,
                reply,
            } => match self.settings.address(leader) {
                Some(address) => {
                    let forward = (address.to_owned(), (leader, term), request, reply);
                    if let Err(e) = self.operator.try_send(forward) {
                        let (_, _, _, reply) = e.into_inner();
                        let _ = reply.send(Err(tonic::Status::resource_exhausted(
                            "too many operator requests at once: retry",
                        )));
                    }
                }
                None => {
                    let _ =
                        reply.send(Err(tonic::Status::unavailable(Refusal::NoLeader.message())));
                }
            },
            Output::AskMonitor { request, reply } => {
                let path = self.monitor_path.clone();
                tokio::spawn(async move {
                    if reply.is_closed() {
                        return;
                    }
                    let answer =
                        tokio::time::timeout(peers::OPERATOR_TIMEOUT, ask_monitor(&path, request))
                            .await
                            .unwrap_or_else(|_| {
                                Err(tonic::Status::deadline_exceeded(
                                    "the leader's monitor did not answer in time; the change may still be made",
                                ))
                            });
                    let _ = reply.send(answer);
                });
            }
            Output::Refuse { to, why } => {
                let status = match why {
                    Refusal::NoLeader => tonic::Status::unavailable(why.message()),
                    Refusal::JustLeading | Refusal::LeadMoved => {
                        tonic::Status::failed_precondition(why.message())
                    }
                };
                let _ = to.send(Err(status));
            }
            Output::Probe => {
                let path = self.monitor_path.clone();
                let answer = self.probed.clone();
                tokio::spawn(async move {
                    let service = pgwarden_proto::v1::monitor_server::SERVICE_NAME;
                    let alive = uds::is_serving(&path, service, MONITOR_PROBE).await;
                    let _ = answer.send(alive).await;
                });
            }
            Output::Done => return Performed::End(Ok(())),
            Output::Failed(e) => return Performed::End(Err(RunError::Storage(e.to_string()))),
        }
        Performed::Next(None)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
