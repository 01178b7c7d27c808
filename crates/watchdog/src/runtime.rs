//! The watchdog daemon: one task owns the [`WatchdogNode`] and ticks it;
//! peers, the local API and the delegate-IP commands talk to it through
//! queues.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgwarden_proto::uds::{self, Daemon};
use pgwarden_proto::v1::{
    ClusterRecord as ProtoRecord, Member, MemberState, NodeIds, WatchdogStatus,
    watchdog_peer_server::WatchdogPeerServer, watchdog_server::WatchdogServer,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{ApiRequest, WatchdogApi};
use crate::fence::{Fence, Grantable};
use crate::peers::{self, Identity, Inbound, PeerService};
use crate::replay::{ReplayGuard, Sequence};
use crate::settings::{Settings, TICK};
use crate::{Command, DurableStorage, Message, NodeConfig, ProposeError, VipAction, WatchdogNode};
use pgwarden_proto::lease::{GRANT_CONTACT, PROXY_LEASE};

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

/// How often the watchdog asks its node's monitor whether it answers.
const MONITOR_PROBE: Duration = Duration::from_secs(1);
/// How long the monitor must go unanswered before it counts as gone:
/// longer than systemd takes to restart it once (`Restart=always`, the
/// first restart after 1 s, backing off when it keeps failing).
pub const MONITOR_GRACE: Duration = Duration::from_secs(5);
/// How often a leader without its monitor may try to hand the lead over,
/// and how often a node re-sends its monitor's state when the record
/// disagrees.
const MONITOR_RETRY: Duration = Duration::from_secs(3);

/// How long a leader that is shutting down waits for its lead to move.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The leader renews its own lease when less than the lease minus this
/// is left (ms).
const RENEW_STEP_MS: u64 = 50;

/// How long a proposed change may wait for its commit.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(15);

/// A proposal waiting for its entry to be applied.
struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<(), String>>,
    since: Instant,
}

/// Runs the watchdog until `shutdown` completes; releases the delegate IP on the way out.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let voters = settings.voters();
    let storage = DurableStorage::open(settings.state_dir.clone(), &voters)
        .map_err(|e| RunError::Storage(e.to_string()))?;
    let mut node = WatchdogNode::new(NodeConfig::new(settings.id, voters.clone()), storage)
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
    let (holding_tx, holding_rx) = watch::channel(false);
    let vip_task = tokio::spawn(crate::vip::run(settings.clone(), vip_rx, holding_tx));

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
    let mut fence = Fence::default();
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
            let r = peers::forward(&address, &fwd_id, seq.take(), leader, &report).await;
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
            let r = peers::forward_operator(&address, &op_id, seq.take(), leader, request).await;
            let _ = reply.send(r);
        }
    });

    // Whether this node's monitor answers (None until known).
    let (monitor_tx, mut monitor_rx) = watch::channel::<Option<bool>>(None);
    tokio::spawn(probe_monitor(
        uds::socket_path(&settings.runtime_dir, Daemon::Monitor),
        monitor_tx,
        stop.clone(),
    ));
    let mut monitor_sent: Option<Instant> = None;
    let mut transfer_tried: Option<Instant> = None;

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

    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut last_seen: HashMap<u64, (Instant, i64)> = HashMap::new();
    // systemd's watchdog hears from this loop's ticks: a stuck loop stops it.
    let mut pinger = pgwarden_daemon::notify::Pinger::from_env();
    pgwarden_daemon::notify::ready();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let lease_ms = u64::try_from(PROXY_LEASE.as_millis()).unwrap_or(u64::MAX);
    let contact_ms = u64::try_from(GRANT_CONTACT.as_millis()).unwrap_or(0);
    // Shutting down as leader: until when the lead transfer may take.
    let mut leaving: Option<Instant> = None;
    let result = loop {
        tokio::select! {
            _ = &mut shutdown, if leaving.is_none() => {
                // A leader hands the lead over first: the others then need
                // no election timeout, and the proxies' leases need not run
                // out on the way.
                match node.is_leader().then(|| transferee(&node, &last_seen)).flatten() {
                    Some(to) => {
                        tracing::info!(to, "shutting down: handing the lead over first");
                        node.transfer_leader(to);
                        leaving = Some(Instant::now() + LEAVE_TIMEOUT);
                    }
                    None => break Ok(()),
                }
            }
            // This node's proxy moved on: shown at once (on the leader,
            // proxies_on_generation may open the fence).
            r = proxy_routing.changed() => if r.is_err() { break Ok(()) },
            _ = ticker.tick() => {
                node.tick();
                // The lead confirmed by a quorum, from now: leases may be
                // granted only shortly after (see crate::fence).
                node.confirm_lead(pgwarden_proto::lease::monotonic_ms());
                pinger.ping();
            }
            Some(event) = inbound.recv() => match event {
                Inbound::Raft(from, msgs) => {
                    last_seen.insert(from, (Instant::now(), now_ms()));
                    for m in msgs {
                        if let Err(e) = node.step(m) {
                            tracing::debug!(from, error = %e, "peer message refused");
                        }
                    }
                }
                Inbound::Forwarded { from, report, term, reply } => {
                    // A report is for the leader and term it was sent to:
                    // captured, it cannot be committed again by a later leader.
                    if term.is_some_and(|t| !node.is_leader() || node.term() != t) {
                        let _ = reply.send(Err(
                            "the lead moved while the report was on its way; retry".into(),
                        ));
                    } else {
                        propose(&mut node, &mut pending, report.command(from), reply);
                    }
                }
                Inbound::Operator { request, term, reply } => {
                    if node.is_leader() && node.term() == term {
                        let path = uds::socket_path(&settings.runtime_dir, Daemon::Monitor);
                        tokio::spawn(async move {
                            if reply.is_closed() {
                                return;
                            }
                            let answer = tokio::time::timeout(peers::OPERATOR_TIMEOUT, ask_monitor(&path, request))
                                .await
                                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded(
                                    "the leader's monitor did not answer in time; the change may still be made",
                                )));
                            let _ = reply.send(answer);
                        });
                    } else {
                        let _ = reply.send(Err(tonic::Status::failed_precondition(
                            "the lead moved while the request was on its way; retry",
                        )));
                    }
                }
                Inbound::Granted(g) => {
                    // From the leader this node follows, in its term, for
                    // the generation this node has applied: else nothing.
                    if !node.is_leader() && node.leader() == Some(g.leader) && node.term() == g.term {
                        fence.renew(node.record().generation, g.generation, g.asked_at, PROXY_LEASE);
                    }
                }
                Inbound::ProxyRouting { from, generation } => {
                    tracing::debug!(from, generation, "a follower's proxy routes by a newer generation");
                }
                Inbound::Unreachable(peer) => node.report_unreachable(peer),
                Inbound::Snapshot(peer, ok) => node.report_snapshot(peer, ok),
            },
            Some(req) = requests.recv() => match req {
                ApiRequest::ReportHealth { backend, down, reply } => {
                    let report = peers::Report::Backend { backend, down };
                    submit(&mut node, &mut pending, &settings, &forward_tx, report, reply);
                }
                ApiRequest::Operator { request, reply } => {
                    // The local monitor asks only when it does not decide: if
                    // this node leads, its monitor has not caught up yet.
                    if node.is_leader() {
                        let _ = reply.send(Err(tonic::Status::failed_precondition(
                            "this node's watchdog has just become the leader and its monitor does not decide yet: retry in a moment",
                        )));
                    } else if let Some((leader, address)) = node.leader().and_then(|l| settings.address(l).map(|a| (l, a))) {
                        let forward = (address.to_owned(), (leader, node.term()), request, reply);
                        if let Err(e) = operator_tx.try_send(forward) {
                            let (_, _, _, reply) = e.into_inner();
                            let _ = reply.send(Err(tonic::Status::resource_exhausted("too many operator requests at once: retry")));
                        }
                    } else {
                        let _ = reply.send(Err(tonic::Status::unavailable(
                            "no leader: the watchdogs have no quorum, so nothing can be changed now",
                        )));
                    }
                }
                ApiRequest::Propose { expected, generation, reply } => {
                    let cmd = Command::Commit { expected_generation: expected, record: generation };
                    propose(&mut node, &mut pending, cmd, reply);
                }
            },
            Ok(()) = monitor_rx.changed() => {
                monitor_sent = None;
            }
        }
        // This node's monitor: recorded as it is, and a leader without one
        // hands the lead to a node whose monitor answers.
        let monitor = *monitor_rx.borrow();
        if let Some(alive) = monitor {
            let recorded_alive = !node.record().monitors_down.contains(&settings.id);
            if recorded_alive != alive && monitor_sent.is_none_or(|t| t.elapsed() >= MONITOR_RETRY)
            {
                monitor_sent = Some(Instant::now());
                if alive {
                    tracing::info!("this node's monitor answers again");
                } else {
                    tracing::warn!(grace = ?MONITOR_GRACE, "this node's monitor does not answer");
                }
                let (reply, _) = oneshot::channel();
                let report = peers::Report::Monitor { alive };
                submit(
                    &mut node,
                    &mut pending,
                    &settings,
                    &forward_tx,
                    report,
                    reply,
                );
            }
            if !alive
                && node.is_leader()
                && transfer_tried.is_none_or(|t| t.elapsed() >= MONITOR_RETRY)
            {
                transfer_tried = Some(Instant::now());
                match transferee(&node, &last_seen) {
                    Some(to) => {
                        tracing::warn!(
                            to,
                            "this node's monitor is gone and only the leader's monitor decides failovers: handing the lead to a node whose monitor answers"
                        );
                        node.transfer_leader(to);
                    }
                    None => tracing::warn!(
                        "this node's monitor is gone, and no reachable node has one that answers: keeping the lead; no failover can be decided"
                    ),
                }
            }
        }
        // Making the Raft state durable writes and fsyncs files: off the
        // async worker, so the API and the peers' tasks keep running (the
        // order stays: durable before anything that follows is sent).
        let ready = if node.has_ready()
            && tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(|| node.ready())
        } else {
            node.ready()
        };
        let out = match ready {
            Ok(o) => o,
            Err(e) => break Err(RunError::Storage(e.to_string())),
        };
        // The lease, before any message goes out, before the status and
        // before any proposer hears of its commit: from here on, asks are
        // answered with the newly applied generation only.
        let generation = node.record().generation;
        let grantable = node.lead_confirmed().map(|at| Grantable {
            term: node.term(),
            generation,
            until: at.saturating_add(contact_ms),
        });
        grant_tx.send_if_modified(|g| std::mem::replace(g, grantable) != grantable);
        let now_mono = pgwarden_proto::lease::monotonic_ms();
        // Renewed in steps of RENEW_STEP, not at every turn of the loop:
        // each change of the status goes to every watcher.
        if Grantable::answer(grantable, node.term(), now_mono).is_some()
            && fence.until(generation) < now_mono + lease_ms - RENEW_STEP_MS
        {
            fence.renew(generation, generation, now_mono, PROXY_LEASE);
        }
        // With the generation applied: a new one is asked for at once, so
        // its proxy need not wait a renewal period to route by it.
        let ask = match node.leader() {
            Some(l) if !node.is_leader() => Some((l, node.term(), generation)),
            _ => None,
        };
        ask_tx.send_if_modified(|a| std::mem::replace(a, ask) != ask);
        for m in out.messages {
            let to = m.to;
            if let Some(q) = outbound.get(&to)
                && q.try_send(m).is_err()
            {
                node.report_unreachable(to);
            }
        }
        if let Some(change) = out.role_changed {
            tracing::info!(role = ?change.role, term = change.term, leader = ?change.leader, "watchdog role changed");
            if !node.is_leader() {
                for (_, p) in std::mem::take(&mut pending) {
                    let _ = p
                        .reply
                        .send(Err("leadership changed before the change committed".into()));
                }
            }
        }
        if let Some(v) = out.vip {
            vip_tx.send_replace(Some(v));
        }
        // Status first, so an answered proposer reads the state it caused.
        let mut shown = status(&node, &settings, &last_seen, *holding_rx.borrow());
        shown.lease_until_mono_ms = fence.until(generation);
        if node.is_leader() {
            let own = *proxy_routing.borrow_and_update();
            let routes = proxy_routes.lock().unwrap_or_else(|p| p.into_inner());
            shown.proxies_on_generation = proxies_on(&voters, settings.id, own, &routes);
        }
        status_tx.send_replace(shown);
        for (index, cmd, applied) in out.applied {
            if let Some(p) = pending.remove(&index) {
                let r = if p.command != cmd {
                    Err("another change took this log position (leadership changed)".to_owned())
                } else {
                    match applied {
                        crate::Applied::Rejected(why) => Err(format!("rejected: {why:?}")),
                        _ => Ok(()),
                    }
                };
                let _ = p.reply.send(r);
            }
        }
        answer_expired(&mut pending, Instant::now());
        if let Some(deadline) = leaving
            && (!node.is_leader() || Instant::now() >= deadline)
        {
            break Ok(());
        }
    };

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
    peers::Report,
    oneshot::Sender<Result<(), String>>,
);

/// Commits this node's `report`: proposed here when this node leads,
/// forwarded to the leader otherwise.
fn submit(
    node: &mut WatchdogNode,
    pending: &mut BTreeMap<u64, Pending>,
    settings: &Settings,
    forward: &mpsc::Sender<Forward>,
    report: peers::Report,
    reply: oneshot::Sender<Result<(), String>>,
) {
    if node.is_leader() {
        propose(node, pending, report.command(settings.id), reply);
    } else if let Some((leader, address)) = node
        .leader()
        .and_then(|l| settings.address(l).map(|a| (l, a)))
    {
        let _ = forward.try_send((address.to_owned(), (leader, node.term()), report, reply));
    } else {
        let _ = reply.send(Err("no leader: the watchdogs have no quorum".into()));
    }
}

/// Where a leader without its monitor hands the lead: the lowest-id voter
/// heard from in the last two seconds whose monitor is not recorded gone.
fn transferee(node: &WatchdogNode, last_seen: &HashMap<u64, (Instant, i64)>) -> Option<u64> {
    let me = node.id();
    node.voters().iter().copied().find(|&v| {
        v != me
            && !node.record().monitors_down.contains(&v)
            && last_seen
                .get(&v)
                .is_some_and(|(t, _)| t.elapsed() < Duration::from_secs(2))
    })
}

/// Asks the monitor on `path` every [`MONITOR_PROBE`] whether it answers,
/// and publishes what is known: alive at its first answer, gone once it has
/// not answered for [`MONITOR_GRACE`].
async fn probe_monitor(
    path: std::path::PathBuf,
    known: watch::Sender<Option<bool>>,
    stop: CancellationToken,
) {
    let service = pgwarden_proto::v1::monitor_server::SERVICE_NAME;
    let mut failing_since = Some(Instant::now());
    loop {
        let alive = uds::is_serving(&path, service, MONITOR_PROBE).await;
        if alive {
            failing_since = None;
            known.send_if_modified(|k| k.replace(true) != Some(true));
        } else {
            let since = *failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= MONITOR_GRACE {
                known.send_if_modified(|k| k.replace(false) != Some(false));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(MONITOR_PROBE) => {}
        }
    }
}

fn propose(
    node: &mut WatchdogNode,
    pending: &mut BTreeMap<u64, Pending>,
    command: Command,
    reply: oneshot::Sender<Result<(), String>>,
) {
    match node.propose(command.clone()) {
        Ok(index) => {
            pending.insert(
                index,
                Pending {
                    command,
                    reply,
                    since: Instant::now(),
                },
            );
        }
        Err(ProposeError::NotLeader { leader }) => {
            let _ = reply.send(Err(format!(
                "this watchdog is not the leader (leader: {leader:?})"
            )));
        }
        Err(e) => {
            let _ = reply.send(Err(e.to_string()));
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Builds the status the API shows.
fn status(
    node: &WatchdogNode,
    s: &Settings,
    last_seen: &HashMap<u64, (Instant, i64)>,
    holding: bool,
) -> WatchdogStatus {
    let fresh = |id: u64| {
        last_seen
            .get(&id)
            .is_some_and(|(t, _)| t.elapsed() < Duration::from_secs(2))
    };
    let members = s
        .members
        .iter()
        .enumerate()
        .map(|(i, address)| {
            let mid = i as u64 + 1;
            // In Raft only the leader talks to everyone: a follower hears
            // from the leader alone, so it cannot judge the other followers.
            let judged = node.is_leader() || Some(mid) == node.leader();
            let state = if mid == s.id || fresh(mid) {
                MemberState::Reachable
            } else if judged {
                MemberState::Unreachable
            } else {
                MemberState::Unknown
            };
            Member {
                id: mid,
                address: address.clone(),
                state: state as i32,
                last_seen_unix_ms: if mid == s.id {
                    now_ms()
                } else {
                    last_seen.get(&mid).map_or(0, |(_, ms)| *ms)
                },
            }
        })
        .collect();
    let leader = node.leader().unwrap_or(0);
    let quorum = if node.is_leader() {
        node.has_quorum()
    } else {
        leader != 0 && fresh(leader)
    };
    let r = node.record();
    let voters = node.voters().len();
    let record = ProtoRecord {
        generation: r.generation,
        primary: r.primary.clone(),
        detached: r.detached.clone().into_iter().collect(),
        failover_in_progress: r.failover_in_progress,
        down_by_quorum: r
            .votes
            .keys()
            .filter(|b| r.quorum_down(b, voters))
            .cloned()
            .collect(),
        down_votes: r
            .votes
            .iter()
            .map(|(b, ids)| {
                (
                    b.clone(),
                    NodeIds {
                        ids: ids.iter().copied().collect(),
                    },
                )
            })
            .collect(),
        applied_index: node.applied_index(),
        down: r.down.clone().into_iter().collect(),
        monitors_down: r.monitors_down.iter().copied().collect(),
    };
    WatchdogStatus {
        id: s.id,
        address: s.address(s.id).unwrap_or_default().to_owned(),
        members,
        leader_id: leader,
        term: node.term(),
        quorum,
        delegate_ip_holder: if holding {
            s.id
        } else if quorum {
            leader
        } else {
            0
        },
        holds_delegate_ip: holding,
        delegate_ip: s.delegate_ip.map(|i| i.to_string()).unwrap_or_default(),
        record: Some(record),
        // Filled in by the caller, which holds the lease and the routes.
        lease_until_mono_ms: 1,
        proxies_on_generation: 0,
    }
}

/// The lowest generation every voter's proxy routes by at least (`own`
/// for this node `me`, `routes` for the others); 0 while any is unknown.
fn proxies_on(
    voters: &[u64],
    me: u64,
    own: u64,
    routes: &std::collections::HashMap<u64, u64>,
) -> u64 {
    voters
        .iter()
        .map(|&v| {
            if v == me {
                own
            } else {
                routes.get(&v).copied().unwrap_or(0)
            }
        })
        .min()
        .unwrap_or(0)
}

/// Answers the proposals not committed within [`PROPOSAL_TIMEOUT`] of
/// `now`, and forgets them: their proposer (a monitor) must not wait on a
/// reply that never comes.
fn answer_expired(pending: &mut BTreeMap<u64, Pending>, now: Instant) {
    let expired: Vec<u64> = pending
        .iter()
        .filter(|(_, p)| now.saturating_duration_since(p.since) >= PROPOSAL_TIMEOUT)
        .map(|(i, _)| *i)
        .collect();
    for index in expired {
        if let Some(p) = pending.remove(&index) {
            tracing::warn!(index, "a proposed change was not committed in time");
            let _ = p.reply.send(Err(format!(
                "not committed within {PROPOSAL_TIMEOUT:?} (no quorum?)"
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proposal_not_committed_in_time_is_answered_with_why() {
        let start = Instant::now();
        let mut pending = BTreeMap::new();
        let (old_tx, mut old_rx) = oneshot::channel();
        let (new_tx, mut new_rx) = oneshot::channel();
        pending.insert(
            1,
            Pending {
                command: Command::Noop,
                reply: old_tx,
                since: start,
            },
        );
        pending.insert(
            2,
            Pending {
                command: Command::Noop,
                reply: new_tx,
                since: start + Duration::from_secs(10),
            },
        );
        answer_expired(&mut pending, start + PROPOSAL_TIMEOUT);
        let answer = old_rx.try_recv().expect("the old proposal is answered");
        assert!(answer.unwrap_err().contains("not committed within"));
        assert!(new_rx.try_recv().is_err(), "the young one still waits");
        assert_eq!(pending.keys().copied().collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn proxies_are_on_a_generation_only_once_every_voters_proxy_said_so() {
        let mut routes = std::collections::HashMap::new();
        routes.insert(2, 7);
        assert_eq!(proxies_on(&[1, 2, 3], 1, 7, &routes), 0, "node 3 unknown");
        routes.insert(3, 6);
        assert_eq!(proxies_on(&[1, 2, 3], 1, 7, &routes), 6);
        routes.insert(3, 9);
        assert_eq!(proxies_on(&[1, 2, 3], 1, 7, &routes), 7, "this node's own");
        assert_eq!(proxies_on(&[1], 1, 4, &routes), 4);
    }
}
