//! Replayed watchdog messages (issue 7, defect 6): three real watchdogs on
//! loopback, each reached by its peers through a recording relay (what an
//! attacker on the network sees), and a stand-in monitor per node (the
//! `grpc.health.v1` answer the watchdog probes). Everything one node sent is
//! captured, that node is restarted with the same `state_dir`, and the
//! captured messages are replayed straight to the other nodes, then again
//! after those restarted too. No root needed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwarden_proto::uds::{self, Daemon};
use pgwarden_proto::v1::watchdog_client::WatchdogClient;
use pgwarden_proto::v1::watchdog_peer_client::WatchdogPeerClient;
use pgwarden_proto::v1::watchdog_peer_server::{WatchdogPeer, WatchdogPeerServer};
use pgwarden_proto::v1::{
    GetStatusRequest, OperatorReply, PeerAck, PeerEnvelope, PeerOperator, PeerProposal,
    PeerProposalReply, WatchdogStatus,
};
use pgwarden_testkit::{ChildGuard, free_port, workspace_bin};
use tokio::sync::oneshot;
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

    async fn operator(&self, r: Request<PeerOperator>) -> Result<Response<OperatorReply>, Status> {
        WatchdogPeerClient::new(self.upstream.clone())
            .operator(r.into_inner())
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

struct Node {
    dir: PathBuf,
    /// Where the watchdog listens.
    listen: u16,
    /// Where its peers reach it: the relay.
    advertised: u16,
    /// Its Raft id (position in the sorted member list, from 1).
    id: u64,
    watchdog: Option<ChildGuard>,
    monitor: Option<oneshot::Sender<()>>,
}

struct Cluster {
    nodes: Vec<Node>,
    capture: Arc<Mutex<Capture>>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-replay-")
            .tempdir()
            .unwrap();
        let key = dir.path().join("watchdog.key");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let mut members: Vec<String> = ports
            .iter()
            .map(|(_, a)| format!("127.0.0.1:{a}"))
            .collect();
        members.sort();
        let capture = Arc::new(Mutex::new(Capture::default()));
        let mut nodes = Vec::new();
        for (i, (listen, advertised)) in ports.iter().copied().enumerate() {
            let ndir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(ndir.join("run")).unwrap();
            let me = format!("127.0.0.1:{advertised}");
            let peers: Vec<String> = members
                .iter()
                .filter(|m| **m != me)
                .map(|m| format!("\"{m}\""))
                .collect();
            let config = format!(
                "[node]\nname = \"node{i}\"\nruntime_dir = \"{d}/run\"\nstate_dir = \"{d}/state\"\n\n\
                 [watchdog]\nenabled = true\nlisten = \"127.0.0.1:{listen}\"\nadvertise = \"{me}\"\n\
                 peers = [{peers}]\nauth_key_file = \"{key}\"\nmetrics_listen = \"127.0.0.1:0\"\n\n\
                 [[backends]]\nname = \"pg0\"\nhost = \"127.0.0.1\"\nport = 1\n",
                d = ndir.display(),
                peers = peers.join(", "),
                key = key.display(),
            );
            std::fs::write(ndir.join("pgwarden.toml"), config).unwrap();
            let relay = Relay {
                node: i,
                upstream: channel(listen),
                capture: Arc::clone(&capture),
            };
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(WatchdogPeerServer::new(relay))
                    .serve(([127, 0, 0, 1], advertised).into()),
            );
            let id = members.iter().position(|m| *m == me).unwrap() as u64 + 1;
            nodes.push(Node {
                dir: ndir,
                listen,
                advertised,
                id,
                watchdog: None,
                monitor: None,
            });
        }
        let mut cluster = Cluster {
            nodes,
            capture,
            _dir: dir,
        };
        for i in 0..3 {
            cluster.start_monitor(i).await;
            cluster.start_watchdog(i);
        }
        cluster
    }

    fn start_watchdog(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("watchdog.log"))
            .unwrap();
        let mut cmd = Command::new(workspace_bin("pgwarden-watchdog"));
        cmd.arg("--config")
            .arg(node.dir.join("pgwarden.toml"))
            .env(
                "PGWARDEN_LOG",
                "debug,raft=info,h2=info,tower=info,hyper=info",
            )
            .stdout(Stdio::null())
            .stderr(log);
        node.watchdog = Some(ChildGuard::spawn(&mut cmd).unwrap());
    }

    /// A crash: SIGKILL, nothing flushed but what the watchdog had made durable.
    fn kill_watchdog(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].watchdog.take() {
            child.kill9().unwrap();
        }
    }

    fn restart_watchdog(&mut self, i: usize) {
        self.kill_watchdog(i);
        self.start_watchdog(i);
    }

    /// Answers the watchdog's health probe on `monitor.sock` as a monitor would.
    async fn start_monitor(&mut self, i: usize) {
        let path = uds::socket_path(&self.nodes[i].dir.join("run"), Daemon::Monitor);
        let listener = uds::bind(&path).await.unwrap();
        let (reporter, health) =
            uds::health_service(pgwarden_proto::v1::monitor_server::SERVICE_NAME).await;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _reporter = reporter;
            let router = tonic::transport::Server::builder().add_service(health);
            let _ = uds::serve(listener, router, async {
                let _ = stopped.await;
            })
            .await;
        });
        self.nodes[i].monitor = Some(stop);
    }

    fn stop_monitor(&mut self, i: usize) {
        if let Some(stop) = self.nodes[i].monitor.take() {
            let _ = stop.send(());
        }
    }

    async fn status(&self, i: usize) -> Option<WatchdogStatus> {
        let sock = self.nodes[i].dir.join("run/watchdog.sock");
        let ch = uds::connect(&sock).await.ok()?;
        let mut client = WatchdogClient::new(ch);
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_status(GetStatusRequest {}),
        );
        r.await.ok()?.ok().map(|r| r.into_inner())
    }

    fn host_of(&self, id: u64) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap()
    }

    /// The leader every node names, with a quorum, and its status.
    async fn agreed_leader(&self) -> Option<(usize, WatchdogStatus)> {
        let mut leader = None;
        for i in 0..3 {
            let s = self.status(i).await?;
            if s.leader_id == 0 || !s.quorum || leader.is_some_and(|l| l != s.leader_id) {
                return None;
            }
            leader = Some(s.leader_id);
        }
        let host = self.host_of(leader?);
        Some((host, self.status(host).await?))
    }

    fn monitors_down(s: &WatchdogStatus) -> Vec<u64> {
        s.record
            .as_ref()
            .map(|r| r.monitors_down.clone())
            .unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let text = std::fs::read_to_string(n.dir.join("watchdog.log")).unwrap_or_default();
            let title = format!("node{i} (id {}, relay :{}) watchdog", n.id, n.advertised);
            out.push_str(&pgwarden_e2e::log_tail(&title, &text, 40));
        }
        out
    }

    async fn wait<F, Fut>(&self, timeout: Duration, what: &str, f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        if !pgwarden_e2e::poll_until(timeout, f).await {
            panic!(
                "timed out after {timeout:?} waiting for {what}{}",
                self.logs()
            );
        }
    }

    /// The newest epoch node `i` has persisted for peer `peer`.
    fn persisted_epoch(&self, i: usize, peer: u64) -> Option<u64> {
        let text =
            std::fs::read_to_string(self.nodes[i].dir.join("state/peer-epochs.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["peers"][peer.to_string()]["epoch"].as_u64()
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
                    .is_some_and(|(_, s)| Cluster::monitors_down(&s).contains(&a_id))
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
                    .is_some_and(|(_, s)| !Cluster::monitors_down(&s).contains(&a_id))
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
        !Cluster::monitors_down(&s).contains(&a_id),
        "the old \"monitor down\" report was committed: {s:?}"
    );
    for i in (0..3).filter(|i| *i != a) {
        let log = std::fs::read_to_string(cluster.nodes[i].dir.join("watchdog.log")).unwrap();
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
    assert!(!Cluster::monitors_down(&s).contains(&a_id), "{s:?}");
    for i in 0..3 {
        cluster.stop_monitor(i);
    }
}
