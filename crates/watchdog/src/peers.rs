//! Raft messages between watchdogs, over gRPC on `watchdog.listen`.
//!
//! Inbound, [`PeerService`] checks the member-list fingerprint, the sender
//! and the MAC, and drops replays ([`crate::replay`]: epochs that only
//! increase), before it decodes anything; then it hands
//! the messages to the core loop through a bounded queue (a full queue drops
//! them: Raft retransmits). Outbound, one task per peer drains a bounded
//! queue into signed envelopes and reports undeliverable peers, so a dead
//! peer slows nobody down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden_proto::v1::watchdog_peer_client::WatchdogPeerClient;
use pgwarden_proto::v1::watchdog_peer_server::WatchdogPeer;
use pgwarden_proto::v1::{
    OperatorRequest, PeerAck, PeerEnvelope, PeerLeaseAsk, PeerLeaseGrant, PeerProposal,
    PeerProposalReply,
};
use pgwarden_tls::rustls::ClientConfig;
use protobuf::Message as _;
use raft::eraftpb::MessageType;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::Message;
use crate::auth::Signer;
use crate::fence::{Grantable, Granted};
use crate::replay::{Kind, PERSISTED_EPOCH, ReplayGuard, Sequence};
use crate::report::Report;

/// Outbound messages waiting per peer before new ones are dropped.
pub const QUEUE: usize = 256;
/// Messages per envelope at most.
const BATCH: usize = 64;
/// How often a sender retries announcing its epoch to a peer it has not
/// reached yet in this process.
const ANNOUNCE_RETRY: Duration = Duration::from_secs(1);

/// What the peer side hands to the core loop.
#[derive(Debug)]
pub enum Inbound {
    /// Raft messages from a peer.
    Raft(u64, Vec<Message>),
    /// The leader granted this node's proxies a lease.
    Granted(Granted),
    /// A follower's lease ask said its proxy routes by this generation or
    /// a newer one (sent when it grows).
    ProxyRouting {
        /// The follower.
        from: u64,
        /// The generation.
        generation: u64,
    },
    /// A follower forwarded a report; the reply says whether it committed.
    Forwarded {
        /// The reporting node.
        from: u64,
        /// What it reports.
        report: Report,
        /// The Raft term the follower addressed this node as leader in
        /// (`None` from a watchdog of an older version, which does not say).
        term: Option<u64>,
        /// Where to answer.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A follower forwarded an operator's request for this node's monitor.
    Operator {
        /// What the operator asked.
        request: OperatorRequest,
        /// The Raft term the follower addressed this node as leader in.
        term: u64,
        /// The monitor's answer, or why there is none.
        reply: oneshot::Sender<Result<String, Status>>,
    },
    /// Delivery to a peer failed.
    Unreachable(u64),
    /// A snapshot was (or was not) delivered to a peer.
    Snapshot(u64, bool),
}

/// Who we are, for checking what arrives.
#[derive(Debug, Clone)]
pub struct Identity {
    /// This node's id.
    pub me: u64,
    /// All voters.
    pub voters: Vec<u64>,
    /// Fingerprint of the member list.
    pub members_hash: u64,
    /// The key.
    pub signer: Signer,
    /// This process's epoch: persisted, higher than any before it
    /// ([`ReplayGuard::start_epoch`]).
    pub epoch: u64,
    /// How peers are dialled: mutual TLS with the cluster's CA
    /// (`watchdog.tls_*`), or plain TCP when `None`.
    pub tls: Option<Arc<ClientConfig>>,
}

/// The `WatchdogPeer` service.
#[derive(Debug)]
pub struct PeerService {
    id: Identity,
    inbound: mpsc::Sender<Inbound>,
    /// Per sender: the newest epoch (persisted) and what was accepted in it.
    /// Locked briefly; it writes to disk only at a peer's new epoch and at
    /// each forwarded report.
    replay: Mutex<ReplayGuard>,
    /// What this node grants lease asks, while it leads (set by the core
    /// loop), else nothing.
    grantable: watch::Receiver<Option<Grantable>>,
    /// Per follower, the newest `proxy_generation` its asks carried.
    proxy_routing: ProxyRoutes,
}

/// Per node, the newest generation its proxy said it routes by at least
/// (see `WatchdogStatus.proxies_on_generation`): only ever raised, so a
/// value kept from an earlier lead is still true, only perhaps low.
pub type ProxyRoutes = Arc<Mutex<std::collections::HashMap<u64, u64>>>;

/// What a peer message says of its sender: its id and its member-list
/// fingerprint, checked by [`PeerService`] before anything else.
trait Sent {
    /// (`from`, `members_hash`).
    fn sender(&self) -> (u64, u64);
}

/// Implements [`Sent`] for messages with `from` and `members_hash` fields.
macro_rules! sent_from_fields {
    ($($message:ty),+) => {
        $(impl Sent for $message {
            fn sender(&self) -> (u64, u64) {
                (self.from, self.members_hash)
            }
        })+
    };
}

sent_from_fields!(PeerEnvelope, PeerLeaseAsk, PeerProposal);

/// Grants nothing: for a [`PeerService`] that is never leader.
pub fn no_grants() -> watch::Receiver<Option<Grantable>> {
    watch::channel(None).1
}

impl PeerService {
    /// A service handing checked messages to `inbound`, refusing replays
    /// with `replay`.
    pub fn new(id: Identity, replay: ReplayGuard, inbound: mpsc::Sender<Inbound>) -> PeerService {
        PeerService {
            id,
            inbound,
            replay: Mutex::new(replay),
            grantable: no_grants(),
            proxy_routing: ProxyRoutes::default(),
        }
    }

    /// What followers' asks said of their proxies, shared with the core
    /// loop (which is woken by [`Inbound::ProxyRouting`] when it grows).
    pub fn proxy_routes(&self) -> ProxyRoutes {
        Arc::clone(&self.proxy_routing)
    }

    /// Answers lease asks by `grantable` (see [`crate::fence`]).
    #[must_use]
    pub fn with_grants(mut self, grantable: watch::Receiver<Option<Grantable>>) -> Self {
        self.grantable = grantable;
        self
    }

    /// The message `request` carries, if its sender is another member
    /// with the same member list.
    fn admit<T: Sent>(&self, request: Request<T>) -> Result<T, Status> {
        let message = request.into_inner();
        let (from, members_hash) = message.sender();
        if members_hash != self.id.members_hash {
            return Err(Status::failed_precondition(
                "the member lists differ (watchdog.advertise + watchdog.peers must name the same nodes everywhere)",
            ));
        }
        if from == self.id.me || !self.id.voters.contains(&from) {
            return Err(Status::permission_denied("not a member"));
        }
        Ok(message)
    }

    /// Refuses what is addressed to another node than this one.
    fn for_me(&self, to: u64) -> Result<(), Status> {
        if to != self.id.me {
            return Err(Status::invalid_argument("addressed to another node"));
        }
        Ok(())
    }

    /// Accepts (epoch, seq) from `from` only if not a replay (logged).
    fn fresh(&self, kind: Kind, from: u64, epoch: u64, seq: u64) -> Result<(), Status> {
        self.replay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(kind, from, epoch, seq)
            .map_err(|why| match why {
                crate::replay::Refusal::NotDurable { .. } => Status::unavailable(why.to_string()),
                _ => Status::invalid_argument(why.to_string()),
            })
    }

    /// A follower forwarded an operator's request for this node's monitor
    /// (a proposal with `operator` set): checked like a bound report (its
    /// request under the `bound_mac`, for this node, once), then handed to
    /// the core loop, which asks the monitor if this node still leads in
    /// the request's term.
    async fn operator(&self, p: PeerProposal) -> Result<PeerProposalReply, Status> {
        if p.seq & PERSISTED_EPOCH == 0 || !self.id.signer.verify_bound_proposal(&p) {
            tracing::warn!(from = p.from, "dropping an operator request with a bad MAC");
            return Err(Status::unauthenticated("bad MAC"));
        }
        self.for_me(p.to)?;
        let Some(request) = p.operator else {
            return Err(Status::invalid_argument("no request"));
        };
        // Once: each (epoch, seq) is used up here, persisted.
        self.fresh(Kind::Operator, p.from, p.epoch, p.seq)?;
        let (tx, rx) = oneshot::channel();
        let operator = Inbound::Operator {
            request,
            term: p.term,
            reply: tx,
        };
        if self.inbound.send(operator).await.is_err() {
            return Err(Status::unavailable("shutting down"));
        }
        let refused = |status: Status| PeerProposalReply {
            committed: false,
            reason: status.message().to_owned(),
            message: String::new(),
            code: status.code() as i32,
        };
        Ok(match tokio::time::timeout(OPERATOR_TIMEOUT, rx).await {
            Ok(Ok(Ok(message))) => PeerProposalReply {
                committed: true,
                reason: String::new(),
                message,
                code: 0,
            },
            Ok(Ok(Err(status))) => refused(status),
            Ok(Err(_)) => refused(Status::unavailable("shutting down")),
            Err(_) => refused(Status::deadline_exceeded(
                "the leader's monitor did not answer in time",
            )),
        })
    }
}

#[tonic::async_trait]
impl WatchdogPeer for PeerService {
    async fn deliver(&self, request: Request<PeerEnvelope>) -> Result<Response<PeerAck>, Status> {
        let env = self.admit(request)?;
        self.for_me(env.to)?;
        if !self.id.signer.verify_envelope(&env) {
            tracing::warn!(
                from = env.from,
                "dropping a peer message with a bad MAC (wrong watchdog.auth_key_file?)"
            );
            return Err(Status::unauthenticated("bad MAC"));
        }
        // Decoded first (pure): a message refused for its content must not
        // use up its seq.
        let mut msgs = Vec::with_capacity(env.messages.len());
        for bytes in &env.messages {
            match Message::parse_from_bytes(bytes) {
                // The envelope's sender and the messages' must agree.
                Ok(m) if m.from == env.from && m.to == self.id.me => msgs.push(m),
                Ok(_) => {
                    return Err(Status::invalid_argument(
                        "message sender or recipient mismatch",
                    ));
                }
                Err(_) => return Err(Status::invalid_argument("undecodable Raft message")),
            }
        }
        self.fresh(Kind::Envelope, env.from, env.epoch, env.seq)?;
        // An envelope without messages only announces the sender's epoch.
        if !msgs.is_empty() {
            let _ = self.inbound.try_send(Inbound::Raft(env.from, msgs));
        }
        Ok(Response::new(PeerAck {}))
    }

    async fn lease(
        &self,
        request: Request<PeerLeaseAsk>,
    ) -> Result<Response<PeerLeaseGrant>, Status> {
        let ask = self.admit(request)?;
        if !self.id.signer.verify_lease_ask(&ask) {
            return Err(Status::unauthenticated("bad MAC"));
        }
        self.for_me(ask.to)?;
        // Believed only up to the generation this leader has applied: no
        // proxy can route by a newer one.
        let claimed = self
            .grantable
            .borrow()
            .map_or(0, |g| ask.proxy_generation.min(g.generation));
        let grew = {
            let mut seen = self.proxy_routing.lock().unwrap_or_else(|p| p.into_inner());
            let last = seen.entry(ask.from).or_insert(0);
            let grew = claimed > *last;
            *last = (*last).max(claimed);
            grew
        };
        if grew {
            // Wakes the core loop, which reads the map; a wake-up lost to a
            // full queue costs only until the loop's next turn (a tick).
            let _ = self.inbound.try_send(Inbound::ProxyRouting {
                from: ask.from,
                generation: claimed,
            });
        }
        // Read now, after the ask arrived: the lease it grants counts from
        // the ask, which was sent earlier.
        let now = *self.grantable.borrow();
        let at = pgwarden_proto::lease::monotonic_ms();
        let mut grant = match Grantable::answer(now, ask.term, at) {
            Some(generation) => PeerLeaseGrant {
                granted: true,
                term: ask.term,
                generation,
                mac: Vec::new(),
            },
            None => PeerLeaseGrant {
                granted: false,
                term: now.map_or(0, |g| g.term),
                generation: 0,
                mac: Vec::new(),
            },
        };
        self.id.signer.sign_lease_grant(&ask, &mut grant);
        Ok(Response::new(grant))
    }

    async fn propose(
        &self,
        request: Request<PeerProposal>,
    ) -> Result<Response<PeerProposalReply>, Status> {
        let p = self.admit(request)?;
        if p.operator.is_some() {
            return self.operator(p).await.map(Response::new);
        }
        if !self.id.signer.verify_proposal(&p) {
            return Err(Status::unauthenticated("bad MAC"));
        }
        // Bound to a leader and term by every sender of this version (the
        // flag is under both MACs, so it cannot be stripped).
        let bound = p.seq & PERSISTED_EPOCH != 0;
        if bound {
            if !self.id.signer.verify_bound_proposal(&p) {
                tracing::warn!(
                    from = p.from,
                    "dropping a forwarded report with a bad leader-and-term MAC"
                );
                return Err(Status::unauthenticated("bad MAC"));
            }
            self.for_me(p.to)?;
        }
        self.fresh(Kind::Proposal, p.from, p.epoch, p.seq)?;
        let (tx, rx) = oneshot::channel();
        let report = if p.monitor {
            Report::Monitor { alive: !p.down }
        } else {
            Report::Backend {
                backend: p.backend,
                down: p.down,
            }
        };
        let forwarded = Inbound::Forwarded {
            from: p.from,
            report,
            term: bound.then_some(p.term),
            reply: tx,
        };
        if self.inbound.send(forwarded).await.is_err() {
            return Err(Status::unavailable("shutting down"));
        }
        let reply = match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(Ok(()))) => PeerProposalReply {
                committed: true,
                ..PeerProposalReply::default()
            },
            Ok(Ok(Err(reason))) => PeerProposalReply {
                reason,
                ..PeerProposalReply::default()
            },
            _ => PeerProposalReply {
                reason: "not committed in time".into(),
                ..PeerProposalReply::default()
            },
        };
        Ok(Response::new(reply))
    }
}

/// How long an operator's request forwarded to the leader may take: the
/// leader's monitor answers once the change is committed.
pub const OPERATOR_TIMEOUT: Duration = Duration::from_secs(20);

/// A lazily connecting channel to a peer's `watchdog.listen`, over
/// mutual TLS when `tls` is set.
pub fn channel(address: &str, tls: Option<Arc<ClientConfig>>) -> Result<Channel, String> {
    pgwarden_proto::tcp::dial(address, tls, Duration::from_secs(1), Duration::from_secs(2))
        .map_err(|e| format!("peer: {e}"))
}

/// The next envelope from this node to peer `to`, signed.
fn signed_envelope(
    id: &Identity,
    to: u64,
    seq: &mut Sequence,
    messages: Vec<Vec<u8>>,
) -> PeerEnvelope {
    let mut env = PeerEnvelope {
        from: id.me,
        to,
        members_hash: id.members_hash,
        seq: seq.take(),
        epoch: id.epoch,
        messages,
        mac: Vec::new(),
    };
    id.signer.sign_envelope(&mut env);
    env
}

/// The longest one delivery to a peer may take, connecting included.
const DELIVER_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends the messages queued for peer `to` until the queue closes.
pub async fn sender(
    to: u64,
    address: String,
    id: Identity,
    mut queue: mpsc::Receiver<Message>,
    events: mpsc::Sender<Inbound>,
) {
    let mut client = match channel(&address, id.tls.clone()) {
        Ok(c) => WatchdogPeerClient::new(c),
        Err(e) => {
            tracing::error!(peer = to, "{e}");
            return;
        }
    };
    let mut seq = Sequence::new();
    let mut failing = false;
    // Until one envelope has reached the peer, this process's epoch is
    // announced in an envelope without messages, every ANNOUNCE_RETRY: a
    // peer Raft gives nothing to say to (a follower, to another follower)
    // still learns (and persists) the new epoch, and refuses everything
    // from the earlier ones.
    let mut announced = false;
    loop {
        let first = if announced {
            queue.recv().await
        } else {
            let env = signed_envelope(&id, to, &mut seq, Vec::new());
            let call = tokio::time::timeout(DELIVER_TIMEOUT, client.deliver(env)).await;
            match call.unwrap_or_else(|_| Err(Status::deadline_exceeded("delivery timed out"))) {
                Ok(_) => {
                    if failing {
                        tracing::info!(peer = to, %address, "peer reachable again");
                        failing = false;
                    }
                    announced = true;
                    continue;
                }
                // Said once, so that a node with nothing else to send to
                // a peer (a follower) still tells why it cannot reach it.
                Err(e) if !failing => {
                    tracing::warn!(peer = to, %address, error = %e.message(), "cannot reach peer");
                    failing = true;
                }
                Err(_) => {}
            }
            match tokio::time::timeout(ANNOUNCE_RETRY, queue.recv()).await {
                Ok(m) => m,
                Err(_) => continue,
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let snapshots = batch
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
            .count();
        let messages = batch
            .iter()
            .filter_map(|m| m.write_to_bytes().ok())
            .collect();
        let env = signed_envelope(&id, to, &mut seq, messages);
        // Bounded as a whole: tonic's call timeout does not cover the wait
        // for a connection that is not ready (one to a peer that was
        // frozen, with its flow-control window full, may never be); a
        // failed call drops the connection, the next one dials afresh.
        let call = tokio::time::timeout(DELIVER_TIMEOUT, client.deliver(env)).await;
        let call = call.unwrap_or_else(|_| Err(Status::deadline_exceeded("delivery timed out")));
        if call.is_err()
            && let Ok(c) = channel(&address, id.tls.clone())
        {
            client = WatchdogPeerClient::new(c);
        }
        let delivered = match call {
            Ok(_) => {
                if failing {
                    tracing::info!(peer = to, %address, "peer reachable again");
                    failing = false;
                }
                announced = true;
                true
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(peer = to, %address, error = %e.message(), "cannot reach peer");
                    failing = true;
                }
                let _ = events.try_send(Inbound::Unreachable(to));
                false
            }
        };
        for _ in 0..snapshots {
            let _ = events.try_send(Inbound::Snapshot(to, delivered));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Signer;

    fn identity(me: u64) -> Identity {
        Identity {
            me,
            voters: vec![1, 2, 3],
            members_hash: 42,
            signer: Signer::new(b"0123456789abcdef".to_vec()),
            epoch: 7,
            tls: None,
        }
    }

    /// Node 2's operator request for node `to` in term 3, its `seq`-th.
    fn request(to: u64, seq: u64) -> PeerProposal {
        let mut p = PeerProposal {
            from: 2,
            members_hash: 42,
            epoch: 9,
            seq: crate::replay::PERSISTED_EPOCH | seq,
            to,
            term: 3,
            operator: Some(OperatorRequest {
                kind: 2,
                backend_id: 1,
                force: false,
                backend_name: "pg1".into(),
            }),
            ..PeerProposal::default()
        };
        identity(2).signer.sign_proposal(&mut p);
        p
    }

    /// Answers every operator request that gets through like the core loop
    /// would, counting them.
    fn carry_out(
        mut inbound: mpsc::Receiver<Inbound>,
    ) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
        let carried_out = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&carried_out);
        tokio::spawn(async move {
            while let Some(event) = inbound.recv().await {
                if let Inbound::Operator { term, reply, .. } = event {
                    assert_eq!(term, 3);
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = reply.send(Ok("pg1 detached".to_owned()));
                }
            }
        });
        carried_out
    }

    /// The leader's side: a forwarded operator request is carried out once,
    /// only when signed with its request, for this node.
    #[tokio::test]
    async fn operator_requests_are_carried_out_once_and_only_when_signed_and_for_us() {
        let (tx, inbound) = mpsc::channel(8);
        let service = PeerService::new(identity(1), ReplayGuard::in_memory(), tx);
        let carried_out = carry_out(inbound);
        let code =
            |r: Result<Response<PeerProposalReply>, Status>| r.map(|_| ()).unwrap_err().code();
        let ok = service.propose(Request::new(request(1, 1))).await.unwrap();
        let ok = ok.into_inner();
        assert!(ok.committed, "{ok:?}");
        assert_eq!(ok.message, "pg1 detached");
        // The same message again: refused, not carried out.
        let replay = service.propose(Request::new(request(1, 1))).await;
        assert_eq!(code(replay), tonic::Code::InvalidArgument);
        // Addressed to another node, or tampered with: refused.
        let other = service.propose(Request::new(request(3, 2))).await;
        assert_eq!(code(other), tonic::Code::InvalidArgument);
        let mut forged = request(1, 3);
        forged.operator = Some(OperatorRequest {
            kind: 3,
            backend_id: 1,
            force: true,
            backend_name: "pg1".into(),
        });
        let forged = service.propose(Request::new(forged)).await;
        assert_eq!(code(forged), tonic::Code::Unauthenticated);
        // Signed as an older version's report would be: not a request.
        let mut legacy = request(1, 4);
        legacy.seq = 4;
        identity(2).signer.sign_proposal(&mut legacy);
        let legacy = service.propose(Request::new(legacy)).await;
        assert_eq!(code(legacy), tonic::Code::Unauthenticated);
        assert_eq!(carried_out.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A new message (next seq) goes through.
        service.propose(Request::new(request(1, 5))).await.unwrap();
        assert_eq!(carried_out.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// What the 30 s send window of the old operator RPC covered: a request
    /// captured before the leader restarts is refused after it too.
    #[tokio::test]
    async fn an_operator_request_is_refused_again_after_the_receiver_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, inbound) = mpsc::channel(8);
        let carried_out = carry_out(inbound);
        let service = PeerService::new(
            identity(1),
            ReplayGuard::open(dir.path()).unwrap(),
            tx.clone(),
        );
        service.propose(Request::new(request(1, 1))).await.unwrap();
        drop(service);
        let restarted = PeerService::new(identity(1), ReplayGuard::open(dir.path()).unwrap(), tx);
        let replay = restarted.propose(Request::new(request(1, 1))).await;
        assert_eq!(
            replay.map(|_| ()).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(carried_out.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// A refusal travels back with its code, so the follower's monitor
    /// tells the operator the leader's monitor's own words.
    #[tokio::test]
    async fn a_refused_operator_request_keeps_its_code() {
        let (tx, mut inbound) = mpsc::channel(8);
        let service = PeerService::new(identity(1), ReplayGuard::in_memory(), tx);
        tokio::spawn(async move {
            while let Some(Inbound::Operator { reply, .. }) = inbound.recv().await {
                let _ = reply.send(Err(Status::failed_precondition(
                    "pg0 is already the primary",
                )));
            }
        });
        let r = service
            .propose(Request::new(request(1, 1)))
            .await
            .unwrap()
            .into_inner();
        assert!(!r.committed);
        assert_eq!(
            tonic::Code::from_i32(r.code),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(r.reason, "pg0 is already the primary");
    }

    /// A node of `voters` whose epoch comes from `state_dir`, as at its start.
    fn started(me: u64, state_dir: &std::path::Path, now: u64) -> Identity {
        let mut replay = ReplayGuard::open(state_dir).unwrap();
        Identity {
            epoch: replay.start_epoch(now).unwrap(),
            ..identity(me)
        }
    }

    fn envelope(id: &Identity, to: u64, seq: &mut Sequence) -> PeerEnvelope {
        let mut m = Message {
            from: id.me,
            to,
            ..Default::default()
        };
        m.set_msg_type(MessageType::MsgHeartbeat);
        signed_envelope(id, to, seq, vec![m.write_to_bytes().unwrap()])
    }

    fn monitor_down(id: &Identity, seq: &mut Sequence) -> PeerProposal {
        let mut p = PeerProposal {
            from: id.me,
            members_hash: id.members_hash,
            backend: String::new(),
            down: true,
            epoch: id.epoch,
            seq: seq.take(),
            mac: Vec::new(),
            monitor: true,
            to: 1,
            term: 3,
            bound_mac: Vec::new(),
            operator: None,
        };
        id.signer.sign_proposal(&mut p);
        p
    }

    /// Replays `envelopes` and `report` to `receiver`: how many it accepted.
    async fn replay(
        receiver: &PeerService,
        envelopes: &[PeerEnvelope],
        report: &PeerProposal,
    ) -> usize {
        let mut accepted = 0;
        for e in envelopes {
            if receiver.deliver(Request::new(e.clone())).await.is_ok() {
                accepted += 1;
            }
        }
        if receiver.propose(Request::new(report.clone())).await.is_ok() {
            accepted += 1;
        }
        accepted
    }

    /// Issue 7, defect 6: every message captured from a peer was accepted
    /// again once that peer had restarted (a new random epoch), an old
    /// "monitor down" report included. Also across the receiver's restart.
    #[tokio::test]
    async fn messages_captured_before_a_peers_restart_are_refused_after_it() {
        let sender_dir = tempfile::tempdir().unwrap();
        let receiver_dir = tempfile::tempdir().unwrap();
        let (tx, mut inbound) = mpsc::channel(1024);
        let receiver = PeerService::new(
            identity(1),
            ReplayGuard::open(receiver_dir.path()).unwrap(),
            tx.clone(),
        );

        // Node 2 talks to node 1; everything it sends is captured.
        let before = started(2, sender_dir.path(), 1_000);
        let (mut envs, mut props) = (Sequence::new(), Sequence::new());
        let captured_envelopes: Vec<_> = (0..50).map(|_| envelope(&before, 1, &mut envs)).collect();
        let captured_report = monitor_down(&before, &mut props);
        for e in &captured_envelopes {
            receiver.deliver(Request::new(e.clone())).await.unwrap();
        }
        let answer = tokio::spawn(async move {
            while let Some(event) = inbound.recv().await {
                if let Inbound::Forwarded { reply, .. } = event {
                    let _ = reply.send(Ok(()));
                }
            }
        });
        let first = receiver
            .propose(Request::new(captured_report.clone()))
            .await
            .unwrap();
        assert!(first.into_inner().committed);

        // Node 2 restarts with the same state_dir (same wall clock even).
        let after = started(2, sender_dir.path(), 1_000);
        assert!(
            after.epoch > before.epoch,
            "{} then {}",
            before.epoch,
            after.epoch
        );
        let (mut envs, mut props) = (Sequence::new(), Sequence::new());
        receiver
            .deliver(Request::new(envelope(&after, 1, &mut envs)))
            .await
            .unwrap();
        let mut up = PeerProposal {
            down: false,
            ..monitor_down(&after, &mut props)
        };
        after.signer.sign_proposal(&mut up);
        receiver.propose(Request::new(up)).await.unwrap();

        assert_eq!(
            replay(&receiver, &captured_envelopes, &captured_report).await,
            0,
            "replayed after the sender's restart"
        );

        // The receiver restarts too: what it learnt is on disk.
        drop(receiver);
        let receiver = PeerService::new(
            identity(1),
            ReplayGuard::open(receiver_dir.path()).unwrap(),
            tx,
        );
        assert_eq!(
            replay(&receiver, &captured_envelopes, &captured_report).await,
            0,
            "replayed after the receiver's restart"
        );
        // Node 2's current messages still go through.
        receiver
            .deliver(Request::new(envelope(&after, 1, &mut envs)))
            .await
            .unwrap();
        answer.abort();
    }

    #[tokio::test]
    async fn reports_are_bound_to_the_leader_and_term_they_were_sent_to() {
        let (tx, mut inbound) = mpsc::channel(8);
        let service = PeerService::new(identity(1), ReplayGuard::in_memory(), tx);
        let terms = tokio::spawn(async move {
            let mut terms = Vec::new();
            while let Some(Inbound::Forwarded { term, reply, .. }) = inbound.recv().await {
                terms.push(term);
                let _ = reply.send(Ok(()));
            }
            terms
        });
        let sender = identity(2);
        let mut seq = Sequence::new();
        service
            .propose(Request::new(monitor_down(&sender, &mut seq)))
            .await
            .unwrap();
        // For another node.
        let mut other = PeerProposal {
            to: 3,
            ..monitor_down(&sender, &mut seq)
        };
        sender.signer.sign_proposal(&mut other);
        let e = service.propose(Request::new(other)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        // Its term changed, or its binding stripped: the MAC says no.
        let mut moved = monitor_down(&sender, &mut seq);
        moved.term = 9;
        let e = service.propose(Request::new(moved)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let mut stripped = monitor_down(&sender, &mut seq);
        stripped.bound_mac.clear();
        let e = service.propose(Request::new(stripped)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        // An older version's report (no flag in seq) carries no term; from
        // node 3, as node 2 is known upgraded now.
        let older = identity(3);
        let mut legacy = PeerProposal {
            seq: 7,
            ..monitor_down(&older, &mut seq)
        };
        older.signer.sign_proposal(&mut legacy);
        service.propose(Request::new(legacy)).await.unwrap();
        drop(service);
        assert_eq!(terms.await.unwrap(), vec![Some(3), None]);
    }

    /// A peer that accepts the connection and then says nothing (a frozen
    /// process: its socket open, nothing read) must not hold the sender in
    /// one call: the delivery fails in bounded time and is reported, so
    /// Raft probes again and later messages go through a fresh connection.
    #[tokio::test]
    async fn a_peer_that_never_answers_does_not_hold_the_sender_in_one_call() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let (queue_tx, queue_rx) = mpsc::channel(16);
        let (events_tx, mut events) = mpsc::channel(16);
        let sender = tokio::spawn(sender(2, address, identity(1), queue_rx, events_tx));
        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(MessageType::MsgHeartbeat);
        heartbeat.from = 1;
        heartbeat.to = 2;
        queue_tx.send(heartbeat).await.unwrap();
        let reported = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match events.recv().await {
                    Some(Inbound::Unreachable(2)) => return true,
                    Some(_) => {}
                    None => return false,
                }
            }
        })
        .await;
        assert_eq!(
            reported,
            Ok(true),
            "the delivery to a silent peer never ended"
        );
        sender.abort();
        held.abort();
    }
}
