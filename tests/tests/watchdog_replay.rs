//! Replayed watchdog messages (issue 7, defect 6): three real watchdogs on
//! loopback, each reached by its peers through a recording relay (what an
//! attacker on the network sees), and a stand-in monitor per node (the
//! `grpc.health.v1` answer the watchdog probes). Everything one node sent is
//! captured, that node is restarted with the same `state_dir`, and the
//! captured messages are replayed straight to the other nodes, then again
//! after those restarted too. No root needed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden_e2e::watchdogs::{Setup, Watchdogs};
use pgwarden_proto::v1::watchdog_peer_client::WatchdogPeerClient;
use pgwarden_proto::v1::watchdog_peer_server::{WatchdogPeer, WatchdogPeerServer};
use pgwarden_proto::v1::{
    PeerAck, PeerEnvelope, PeerLeaseAsk, PeerLeaseGrant, PeerProposal, PeerProposalReply,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// What crossed the network to a node.
#[derive(Default)]
struct Capture {
    /// (index of the node it was for, the envelope).
    envelopes: Vec<(usize, PeerEnvelope)>,
    proposals: Vec<PeerProposal>,
}

/// Stands where a node's peers reach it: records, then passes on.
struct Relay {
    node: usize,
    upstream: Channel,
    capture: Arc<Mutex<Capture>>,
}

#[tonic::async_trait]
impl WatchdogPeer for Relay {
    async fn deliver(&self, r: Request<PeerEnvelope>) -> Result<Response<PeerAck>, Status> {
        let env = r.into_inner();
        self.capture
            .lock()
            .unwrap()
            .envelopes
            .push((self.node, env.clone()));
        WatchdogPeerClient::new(self.upstream.clone())
            .deliver(env)
            .await
    }

    async fn propose(
        &self,
        r: Request<PeerProposal>,
    ) -> Result<Response<PeerProposalReply>, Status> {
        let p = r.into_inner();
        self.capture.lock().unwrap().proposals.push(p.clone());
        WatchdogPeerClient::new(self.upstream.clone())
            .propose(p)
            .await
    }

    async fn lease(&self, r: Request<PeerLeaseAsk>) -> Result<Response<PeerLeaseGrant>, Status> {
        WatchdogPeerClient::new(self.upstream.clone())
            .lease(r.into_inner())
            .await
    }
}

fn channel(port: u16) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(8))
        .connect_lazy()
}

/// The watchdogs, each reached by its peers through a recording relay.
struct Cluster {
    w: Watchdogs,
    capture: Arc<Mutex<Capture>>,
}

impl std::ops::Deref for Cluster {
    type Target = Watchdogs;
    fn deref(&self) -> &Watchdogs {
        &self.w
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Watchdogs {
        &mut self.w
    }
}

impl Cluster {
    async fn start() -> Cluster {
        let mut w = Watchdogs::new(&Setup {
            relayed: true,
            ..Setup::default()
        });
        let capture = Arc::new(Mutex::new(Capture::default()));
        for (i, n) in w.nodes.iter().enumerate() {
            let relay = Relay {
                node: i,
                upstream: channel(n.listen),
                capture: Arc::clone(&capture),
            };
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(WatchdogPeerServer::new(relay))
                    .serve(([127, 0, 0, 1], n.advertised).into()),
            );
        }
        w.start_all().await;
        Cluster { w, capture }
    }
}

/// How many of the captured messages the nodes accepted, and how many of
/// the reports were committed, replayed straight to each node's listener.
struct Replayed {
    accepted: usize,
    committed: usize,
    sent: usize,
}

async fn replay(
    cluster: &Cluster,
    from: usize,
    envelopes: &[(usize, PeerEnvelope)],
    reports: &[PeerProposal],
) -> Replayed {
    let mut r = Replayed {
        accepted: 0,
        committed: 0,
        sent: 0,
    };
    for (to, env) in envelopes {
        r.sent += 1;
        let mut client = WatchdogPeerClient::new(channel(cluster.nodes[*to].listen));
        if client.deliver(env.clone()).await.is_ok() {
            r.accepted += 1;
        }
    }
    // A report names no recipient on the wire of older versions: to every node.
    for p in reports {
        for (i, n) in cluster.nodes.iter().enumerate() {
            if i == from {
                continue;
            }
            r.sent += 1;
            let mut client = WatchdogPeerClient::new(channel(n.listen));
            if let Ok(reply) = client.propose(p.clone()).await {
                r.accepted += 1;
                if reply.into_inner().committed {
                    r.committed += 1;
                }
            }
        }
    }
    r
}

/// Issue 7, defect 6: a message was accepted whenever its sender's epoch
/// differed from the last one seen, so everything captured from a peer was
/// accepted again after that peer restarted (353 of 353), and an old
/// "monitor down" report was committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_captured_before_a_watchdog_restarts_are_refused_after_it() {
    let mut cluster = Cluster::start().await;
    cluster
        .wait(Duration::from_secs(30), "a leader all agree on", || async {
            cluster.agreed_leader().await.is_some()
        })
        .await;
    let (leader, _) = cluster.agreed_leader().await.unwrap();
    // The node whose messages are captured: a follower, so that it
    // forwards its report to the leader over the network.
    let a = (leader + 1) % 3;
    let a_id = cluster.nodes[a].id;
    eprintln!("leader node{leader}, captured node{a} (id {a_id})");

    // Its monitor stops answering: it reports "monitor down" to the leader.
    cluster.stop_monitor(a);
    cluster
        .wait(
            Duration::from_secs(30),
            "the leader to record node a's monitor down",
            || async {
                cluster
                    .agreed_leader()
                    .await
                    .is_some_and(|(_, s)| Watchdogs::monitors_down(&s).contains(&a_id))
            },
        )
        .await;

    // Everything node a sent until now, as an attacker on the network has it.
    let (envelopes, reports) = {
        let c = cluster.capture.lock().unwrap();
        let envelopes: Vec<(usize, PeerEnvelope)> = c
            .envelopes
            .iter()
            .filter(|(_, e)| e.from == a_id)
            .cloned()
            .collect();
        let reports: Vec<PeerProposal> = c
            .proposals
            .iter()
            .filter(|p| p.from == a_id)
            .cloned()
            .collect();
        (envelopes, reports)
    };
    assert!(
        reports.iter().any(|p| p.monitor && p.down),
        "no \"monitor down\" report captured: {reports:?}{}",
        cluster.logs()
    );
    let old_epoch = reports[0].epoch;
    assert!(
        envelopes.iter().all(|(_, e)| e.epoch == old_epoch),
        "one epoch before the restart"
    );

    // Node a restarts (a crash, the same state_dir), its monitor back.
    cluster.start_monitor(a).await;
    cluster.restart_watchdog(a);
    cluster
        .wait(
            Duration::from_secs(30),
            "node a back and its monitor recorded up again",
            || async {
                cluster
                    .agreed_leader()
                    .await
                    .is_some_and(|(_, s)| !Watchdogs::monitors_down(&s).contains(&a_id))
            },
        )
        .await;
    let new_epoch = {
        let c = cluster.capture.lock().unwrap();
        c.envelopes
            .iter()
            .map(|(_, e)| e)
            .filter(|e| e.from == a_id && e.epoch != old_epoch)
            .map(|e| e.epoch)
            .next_back()
    };
    eprintln!("node a's epoch: {old_epoch} before the restart, {new_epoch:?} after");
    // Every other node has heard of node a's new epoch (a follower too).
    cluster
        .wait(
            Duration::from_secs(10),
            "every node to record node a's new epoch",
            || async {
                (0..3).filter(|i| *i != a).all(|i| {
                    cluster
                        .persisted_epoch(i, a_id)
                        .is_some_and(|e| Some(e) == new_epoch)
                })
            },
        )
        .await;

    let r = replay(&cluster, a, &envelopes, &reports).await;
    eprintln!(
        "replayed {} captured messages ({} envelopes, {} reports to each other node) after node a restarted: {} accepted, {} committed",
        r.sent,
        envelopes.len(),
        reports.len(),
        r.accepted,
        r.committed
    );
    assert!(r.sent > 10, "too little captured to mean anything");
    assert_eq!(r.accepted, 0, "{}", cluster.logs());
    assert_eq!(r.committed, 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, s) = cluster.agreed_leader().await.unwrap();
    assert!(
        !Watchdogs::monitors_down(&s).contains(&a_id),
        "the old \"monitor down\" report was committed: {s:?}"
    );
    for i in (0..3).filter(|i| *i != a) {
        let log = cluster.log(i);
        assert!(
            log.contains("refusing a peer message: replayed"),
            "node{i} did not log the refused replays"
        );
        assert!(!log.contains("0123456789abcdef"), "the key reached a log");
    }

    // The other nodes restart too, one at a time: what they learnt is on
    // disk, so the captured messages stay refused.
    for i in (0..3).filter(|i| *i != a) {
        cluster.restart_watchdog(i);
        cluster
            .wait(
                Duration::from_secs(30),
                "a leader again after a restart",
                || async { cluster.agreed_leader().await.is_some() },
            )
            .await;
    }
    let r = replay(&cluster, a, &envelopes, &reports).await;
    eprintln!(
        "replayed {} captured messages after every other node restarted too: {} accepted, {} committed",
        r.sent, r.accepted, r.committed
    );
    assert_eq!(r.accepted, 0, "{}", cluster.logs());
    assert_eq!(r.committed, 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, s) = cluster.agreed_leader().await.unwrap();
    assert!(!Watchdogs::monitors_down(&s).contains(&a_id), "{s:?}");
    for i in 0..3 {
        cluster.stop_monitor(i);
    }
}
