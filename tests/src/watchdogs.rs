//! Three real watchdogs on loopback, each with a stand-in monitor (the
//! `grpc.health.v1` answer the watchdog probes on `monitor.sock`): for
//! tests of the peers' protocol that need no PostgreSQL and no root.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use pgwarden_proto::uds::{self, Daemon};
use pgwarden_proto::v1::WatchdogStatus;
use pgwarden_testkit::{ChildGuard, free_port, workspace_bin};
use tokio::sync::oneshot;

/// One node.
pub struct Node {
    /// Its directory (config, sockets, state, `watchdog.log`).
    pub dir: PathBuf,
    /// Where the watchdog listens.
    pub listen: u16,
    /// Where its peers reach it: `listen`, or a relay's port.
    pub advertised: u16,
    /// Its Raft id (position in the sorted member list, from 1).
    pub id: u64,
    watchdog: Option<ChildGuard>,
    monitor: Option<oneshot::Sender<()>>,
}

/// The three nodes.
pub struct Watchdogs {
    /// The nodes, in start order.
    pub nodes: Vec<Node>,
    /// The directory everything is in.
    pub dir: tempfile::TempDir,
}

/// How the nodes are set up.
#[derive(Default)]
pub struct Setup {
    /// Peers reach each node at a port of its own, where the test puts a
    /// relay towards `listen` (otherwise they reach `listen` itself).
    pub relayed: bool,
    /// More `[watchdog]` lines for node `i` (its TLS files, say).
    pub watchdog: Option<Box<dyn Fn(usize) -> String>>,
}

impl Watchdogs {
    /// Writes the configs; starts nothing (see [`Watchdogs::start_all`]).
    pub fn new(setup: &Setup) -> Watchdogs {
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-watchdogs-")
            .tempdir()
            .unwrap();
        let key = dir.path().join("watchdog.key");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ports: Vec<(u16, u16)> = (0..3)
            .map(|_| {
                let listen = free_port();
                (listen, if setup.relayed { free_port() } else { listen })
            })
            .collect();
        let mut members: Vec<String> = ports
            .iter()
            .map(|(_, a)| format!("127.0.0.1:{a}"))
            .collect();
        members.sort();
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
            let extra = setup.watchdog.as_ref().map(|f| f(i)).unwrap_or_default();
            let config = format!(
                "[node]\nname = \"node{i}\"\nruntime_dir = \"{d}/run\"\nstate_dir = \"{d}/state\"\n\n\
                 [watchdog]\nenabled = true\nlisten = \"127.0.0.1:{listen}\"\nadvertise = \"{me}\"\n\
                 peers = [{peers}]\nauth_key_file = \"{key}\"\nmetrics_listen = \"127.0.0.1:0\"\n{extra}\n\
                 [[backends]]\nname = \"pg0\"\nhost = \"127.0.0.1\"\nport = 1\n",
                d = ndir.display(),
                peers = peers.join(", "),
                key = key.display(),
            );
            std::fs::write(ndir.join("pgwarden.toml"), config).unwrap();
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
        Watchdogs { nodes, dir }
    }

    /// Starts every node's stand-in monitor and watchdog.
    pub async fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start_monitor(i).await;
            self.start_watchdog(i);
        }
    }

    /// Starts node `i`'s watchdog, logging (at debug) to `watchdog.log`.
    pub fn start_watchdog(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("watchdog.log"))
            .unwrap();
        let mut cmd = Command::new(workspace_bin("pgwarden-watchdog"));
        cmd.arg("--config")
            .arg(node.dir.join("pgwarden.toml"))
            .env("PGWARDEN_LOG", crate::DAEMON_LOG_FILTER)
            .stdout(Stdio::null())
            .stderr(log);
        node.watchdog = Some(ChildGuard::spawn(&mut cmd).unwrap());
    }

    /// A crash: SIGKILL, nothing flushed but what the watchdog had made durable.
    pub fn kill_watchdog(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].watchdog.take() {
            child.kill9().unwrap();
        }
    }

    /// [`Watchdogs::kill_watchdog`], then start it again (same `state_dir`).
    pub fn restart_watchdog(&mut self, i: usize) {
        self.kill_watchdog(i);
        self.start_watchdog(i);
    }

    /// Answers the watchdog's health probe on `monitor.sock` as a monitor would.
    pub async fn start_monitor(&mut self, i: usize) {
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

    /// The stand-in monitor of node `i` stops answering.
    pub fn stop_monitor(&mut self, i: usize) {
        if let Some(stop) = self.nodes[i].monitor.take() {
            let _ = stop.send(());
        }
    }

    /// Node `i`'s watchdog status, if it answers.
    pub async fn status(&self, i: usize) -> Option<WatchdogStatus> {
        crate::watchdog_status(&self.nodes[i].dir.join("run")).await
    }

    /// The node with Raft id `id`.
    pub fn host_of(&self, id: u64) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap()
    }

    /// The leader every node names, with a quorum, and its status.
    pub async fn agreed_leader(&self) -> Option<(usize, WatchdogStatus)> {
        let mut leader = None;
        for i in 0..self.nodes.len() {
            let s = self.status(i).await?;
            if s.leader_id == 0 || !s.quorum || leader.is_some_and(|l| l != s.leader_id) {
                return None;
            }
            leader = Some(s.leader_id);
        }
        let host = self.host_of(leader?);
        Some((host, self.status(host).await?))
    }

    /// The ids whose monitors the committed record has down.
    pub fn monitors_down(s: &WatchdogStatus) -> Vec<u64> {
        s.record
            .as_ref()
            .map(|r| r.monitors_down.clone())
            .unwrap_or_default()
    }

    /// Node `i`'s `watchdog.log`.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join("watchdog.log")).unwrap_or_default()
    }

    /// Every log's tail, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let title = format!(
                "node{i} (id {}, peers reach :{}) watchdog",
                n.id, n.advertised
            );
            out.push_str(&crate::log_tail(&title, &self.log(i), 40));
        }
        out
    }

    /// Waits until `f` holds, polling; panics with every log otherwise.
    pub async fn wait<F, Fut>(&self, timeout: Duration, what: &str, f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        crate::wait_or_panic(timeout, what, || self.logs(), f).await;
    }

    /// The newest epoch node `i` has persisted for peer `peer`.
    pub fn persisted_epoch(&self, i: usize, peer: u64) -> Option<u64> {
        let text =
            std::fs::read_to_string(self.nodes[i].dir.join("state/peer-epochs.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["peers"][peer.to_string()]["epoch"].as_u64()
    }
}
