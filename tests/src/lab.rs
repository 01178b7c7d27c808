//! Multi-host tests: a [`Lab`] of network namespaces, one PostgreSQL server
//! and the three pgwarden daemons per host, a delegate IP, and a client
//! namespace that connects to it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgwarden_proto::v1::WatchdogStatus;
use pgwarden_testkit::{ChildGuard, Cluster, Lab, PasswordKind, wait_until, workspace_bin};

use crate::{ALICE, ClusterState, GetClusterRequest, MONITOR, MonitorClient};

/// One of the daemons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// pgwarden-watchdog.
    Watchdog,
    /// pgwarden-monitor.
    Monitor,
    /// pgwarden-proxy.
    Proxy,
}

impl Daemon {
    /// The three, in the order a node starts them.
    pub const ALL: [Daemon; 3] = [Daemon::Watchdog, Daemon::Monitor, Daemon::Proxy];

    /// The binary's name.
    pub fn bin(self) -> &'static str {
        match self {
            Daemon::Watchdog => "pgwarden-watchdog",
            Daemon::Monitor => "pgwarden-monitor",
            Daemon::Proxy => "pgwarden-proxy",
        }
    }
}

/// A pgwarden node: its directory and daemons.
pub struct LabNode {
    /// Index of the lab host.
    pub index: usize,
    /// The node's directory (config, sockets, state, logs).
    pub dir: PathBuf,
    daemons: Vec<(Daemon, ChildGuard)>,
}

/// Three (or more) hosts, each with PostgreSQL and the pgwarden daemons.
pub struct Fleet {
    // Dropped in this order: daemons, then servers, then the network.
    /// The nodes.
    pub nodes: Vec<LabNode>,
    /// The servers, node i on host i (node 0 the primary).
    pub cluster: Cluster,
    /// The network.
    pub lab: Lab,
    dir: tempfile::TempDir,
}

/// What a [`Fleet`]'s nodes get beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct FleetOptions {
    /// Lines added to every node's `[failover]` table
    /// (`synchronous_mode = "on"`...).
    pub failover: Vec<String>,
    /// Sets `failover.rejoin_command` to the shipped pgwarden-rejoin, run
    /// inside the backend's own lab host (the monitor deciding may run on
    /// another one), so `pgwardenctl rejoin` works in the lab.
    pub rejoin: bool,
}

/// Why a multi-host test cannot run here (not root, no `ip netns`...).
pub fn unavailable() -> Option<String> {
    Lab::unavailable()
}

/// Fails the calling test when the lab cannot start here. The multi-host
/// tests are ignored unless built as root (`cfg(lab)`, see `build.rs`);
/// one that runs must really run, never pass without its lab.
pub fn require_lab() {
    if let Some(why) = unavailable() {
        panic!("this multi-host test needs the three-host lab, which cannot start here: {why}");
    }
}

impl Fleet {
    /// A lab of `hosts` hosts, a primary and streaming standbys, and the
    /// daemons running on every host. Fails the calling test where the lab
    /// cannot start ([`require_lab`]).
    pub fn start(hosts: usize) -> Fleet {
        Fleet::start_with(hosts, &FleetOptions::default())
    }

    /// [`Fleet::start`] with `options`.
    pub fn start_with(hosts: usize, options: &FleetOptions) -> Fleet {
        require_lab();
        let lab = Lab::new(hosts).expect("create the lab");
        let cluster = Cluster::builder()
            .standbys(hosts - 1)
            .in_lab(&lab)
            .start()
            .expect("start the lab cluster");
        cluster
            .create_user(ALICE.0, ALICE.1, PasswordKind::Scram)
            .unwrap();
        cluster
            .create_user(MONITOR.0, MONITOR.1, PasswordKind::Scram)
            .unwrap();
        cluster
            .primary()
            .psql("CREATE DATABASE app OWNER alice")
            .unwrap();
        cluster.wait_replicated(Duration::from_secs(30)).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-fleet-")
            .tempdir()
            .unwrap();
        let scram = cluster
            .primary()
            .psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'")
            .unwrap();
        let auth = dir.path().join("users.txt");
        std::fs::write(&auth, format!("\"{}\" \"{scram}\"\n", ALICE.0)).unwrap();
        let key = dir.path().join("watchdog.key");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
        for f in [&auth, &key] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        // Without the announcement the client host keeps the old holder's
        // MAC for the delegate IP (ARP cache) for half a minute, and every
        // test that moves the IP times out: say so at once instead.
        assert!(
            Command::new("arping").arg("-V").output().is_ok(),
            "the multi-host lab announces the delegate IP with arping: install iputils-arping (.ci/run does)"
        );
        let arping = "arping -U $_IP_$ -I eth0 -c 1 -w 1";
        let mut failover = options.failover.join("\n");
        if options.rejoin {
            let script = rejoin_in_host(dir.path(), &cluster);
            failover.push_str(&format!(
                "\nrejoin_command = \"{} %D %H %r %a\"\nrejoin_timeout = \"120s\"",
                script.display()
            ));
        }
        let mut fleet = Fleet {
            nodes: Vec::new(),
            cluster,
            lab,
            dir,
        };
        for i in 0..hosts {
            let ndir = fleet.dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&ndir).unwrap();
            let me = fleet.lab.host(i).ip();
            let peers: Vec<String> = (0..hosts)
                .filter(|j| *j != i)
                .map(|j| format!("\"{}:9000\"", fleet.lab.host(j).ip()))
                .collect();
            let mut t = format!(
                "[node]\nname = \"node{i}\"\nruntime_dir = \"{d}/run\"\nstate_dir = \"{d}/state\"\n\n\
                 [proxy]\nlisten = \"0.0.0.0:9999\"\nauth_file = \"{auth}\"\npool_size = 4\n\n\
                 [health_check]\nuser = \"{hu}\"\npassword = \"{hp}\"\nperiod = \"500ms\"\ntimeout = \"1s\"\nmax_retries = 2\nretry_delay = \"250ms\"\n\n\
                 [failover]\nuser = \"postgres\"\ncommand_timeout = \"30s\"\n{failover}\n\n\
                 [watchdog]\nenabled = true\nlisten = \"{me}:9000\"\nadvertise = \"{me}:9000\"\npeers = [{peers}]\n\
                 auth_key_file = \"{key}\"\ndelegate_ip = \"{vip}\"\n\
                 if_up_cmd = \"ip addr add $_IP_$/24 dev eth0\"\nif_down_cmd = \"ip addr del $_IP_$/24 dev eth0\"\narping_cmd = \"{arping}\"\n",
                d = ndir.display(),
                auth = auth.display(),
                hu = MONITOR.0,
                hp = MONITOR.1,
                peers = peers.join(", "),
                key = key.display(),
                vip = fleet.lab.delegate_ip(),
            );
            for n in fleet.cluster.nodes() {
                t.push_str(&crate::backend_toml(n));
            }
            std::fs::write(ndir.join("pgwarden.toml"), t).unwrap();
            // It holds the health check's password: only its owner reads it.
            std::fs::set_permissions(
                ndir.join("pgwarden.toml"),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
            fleet.nodes.push(LabNode {
                index: i,
                dir: ndir,
                daemons: Vec::new(),
            });
        }
        for i in 0..hosts {
            for d in Daemon::ALL {
                fleet.start_daemon(i, d);
            }
        }
        fleet
    }

    /// Starts one daemon of node `i` inside host `i`.
    pub fn start_daemon(&mut self, i: usize, d: Daemon) {
        let node = &self.nodes[i];
        let log = node.dir.join(format!("{}.log", d.bin()));
        let mut cmd = self.lab.host(i).command(workspace_bin(d.bin()));
        cmd.arg("--config")
            .arg(node.dir.join("pgwarden.toml"))
            .env("PGWARDEN_LOG", crate::DAEMON_LOG_FILTER)
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            );
        let child = ChildGuard::spawn(&mut cmd).unwrap();
        self.nodes[i].daemons.push((d, child));
    }

    /// Kills (SIGKILL) one daemon of node `i`.
    pub fn kill_daemon(&mut self, i: usize, d: Daemon) {
        let node = &mut self.nodes[i];
        if let Some(pos) = node.daemons.iter().position(|(k, _)| *k == d) {
            let (_, mut child) = node.daemons.remove(pos);
            child.kill9().unwrap();
        }
    }

    /// Stops one daemon of node `i` as systemd would (SIGTERM, SIGKILL
    /// after 15 s) and starts it again.
    pub fn restart_daemon(&mut self, i: usize, d: Daemon) {
        let node = &mut self.nodes[i];
        if let Some(pos) = node.daemons.iter().position(|(k, _)| *k == d) {
            let (_, mut child) = node.daemons.remove(pos);
            let _ = child.signal(nix::sys::signal::Signal::SIGTERM);
            if child.wait_timeout(Duration::from_secs(15)).is_none() {
                let _ = child.kill9();
            }
        }
        self.start_daemon(i, d);
    }

    /// Whether node `i` runs daemon `d` (started and not killed since).
    pub fn runs(&self, i: usize, d: Daemon) -> bool {
        self.nodes[i].daemons.iter().any(|(k, _)| *k == d)
    }

    /// Node `i`'s pgwarden.toml.
    pub fn config(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("pgwarden.toml")
    }

    /// A daemon's log.
    pub fn log(&self, i: usize, d: Daemon) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join(format!("{}.log", d.bin())))
            .unwrap_or_default()
    }

    /// Every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        self.logs_tail(40)
    }

    /// The last `lines` lines of every daemon's log.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for i in 0..self.nodes.len() {
            for d in Daemon::ALL {
                let title = format!("node{i} {}", d.bin());
                out.push_str(&crate::log_tail(&title, &self.log(i, d), lines));
            }
        }
        out
    }

    /// Node `i`'s watchdog status, if it answers.
    pub async fn watchdog(&self, i: usize) -> Option<WatchdogStatus> {
        crate::watchdog_status(&self.nodes[i].dir.join("run")).await
    }

    /// Node `i`'s monitor state, if it answers.
    pub async fn cluster_state(&self, i: usize) -> Option<ClusterState> {
        let sock = self.nodes[i].dir.join("run/monitor.sock");
        let ch = pgwarden_proto::uds::connect(&sock).await.ok()?;
        let mut client = MonitorClient::new(ch);
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_cluster(GetClusterRequest {}),
        );
        r.await.ok()?.ok().map(|r| r.into_inner())
    }

    /// The hosts whose eth0 carries the delegate IP now.
    pub fn vip_holders(&self) -> Vec<usize> {
        let vip = self.lab.delegate_ip();
        (0..self.nodes.len())
            .filter(|i| {
                self.lab
                    .host(*i)
                    .addresses()
                    .map(|a| a.contains(&vip))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// Waits until `f` holds, polling every 100 ms; panics with every log otherwise.
    pub async fn wait<F, Fut>(&self, timeout: Duration, what: &str, f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        crate::wait_or_panic(timeout, what, || self.logs(), f).await;
    }

    /// Runs `sql` with psql from the client namespace through the delegate
    /// IP; Ok(stdout) or Err(stderr).
    pub fn client_query(&self, sql: &str) -> Result<String, String> {
        let ip = self.lab.delegate_ip().to_string();
        psql(self.lab.client().command("psql"), &ip, "3", sql)
    }

    /// Waits (up to `timeout`) until `sql` runs through the delegate IP
    /// ([`Fleet::client_query`]); panics with every daemon's log otherwise.
    pub async fn wait_client_query(&self, timeout: Duration, sql: &str) {
        let what = format!("{sql} through the delegate IP");
        self.wait(timeout, &what, || async { self.client_query(sql).is_ok() })
            .await;
    }

    /// Waits (up to `timeout`) until `sql` runs through host `i`'s own
    /// proxy ([`Fleet::host_query`]); panics with every daemon's log
    /// otherwise.
    pub async fn wait_host_query(&self, timeout: Duration, i: usize, sql: &str) {
        let what = format!("{sql} through host {i}'s own proxy");
        self.wait(timeout, &what, || async { self.host_query(i, sql).is_ok() })
            .await;
    }

    /// Runs `sql` with psql inside host `i` through its own proxy
    /// (127.0.0.1:9999); Ok(stdout) or Err(stderr).
    pub fn host_query(&self, i: usize, sql: &str) -> Result<String, String> {
        psql(self.lab.host(i).command("psql"), "127.0.0.1", "15", sql)
    }

    /// Sends `signal` to one daemon of node `i` (SIGSTOP freezes it with
    /// its sockets open).
    pub fn signal_daemon(&self, i: usize, d: Daemon, signal: nix::sys::signal::Signal) {
        if let Some((_, child)) = self.nodes[i].daemons.iter().find(|(k, _)| *k == d) {
            child.signal(signal).unwrap();
        }
    }

    /// Waits until the three watchdogs agree on a leader holding the
    /// delegate IP and a query through it succeeds; returns the leader's
    /// host index. Where every multi-host test starts.
    pub async fn wait_serving(&self) -> usize {
        let leader = self
            .wait_for_leader(Duration::from_secs(30), &[0, 1, 2])
            .await;
        self.wait(
            Duration::from_secs(30),
            "a query through the delegate IP",
            || async { self.client_query("SELECT 1").is_ok() },
        )
        .await;
        leader
    }

    /// [`Fleet::wait_for_leader`] with every host live.
    pub async fn wait_for_leader_of_all(&self, timeout: Duration) -> usize {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.wait_for_leader(timeout, &all).await
    }

    /// Waits until the live watchdogs agree on one leader among them and
    /// the delegate IP is up on exactly that host; returns the host index.
    pub async fn wait_for_leader(&self, timeout: Duration, live: &[usize]) -> usize {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let mut leaders = Vec::new();
            for &i in live {
                leaders.push(self.watchdog(i).await.map(|s| s.leader_id));
            }
            let holders = self.vip_holders();
            last =
                format!("leaders seen by {live:?}: {leaders:?}, delegate IP on hosts {holders:?}");
            if let Some(Some(first)) = leaders.first().copied()
                && first != 0
                && leaders.iter().all(|l| *l == Some(first))
                && live.contains(&self.host_of_raft_id(first))
                && holders == vec![self.host_of_raft_id(first)]
            {
                return self.host_of_raft_id(first);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no agreed leader holding the delegate IP after {timeout:?}: {last}{}",
            self.logs()
        );
    }

    /// The Raft id of host i's watchdog (members are sorted by address;
    /// host addresses sort in host order).
    pub fn raft_id_of_host(&self, i: usize) -> u64 {
        i as u64 + 1
    }

    /// Host index of a Raft id.
    pub fn host_of_raft_id(&self, id: u64) -> usize {
        (id - 1) as usize
    }

    /// Waits until `wait_until`-style polling of a sync condition holds.
    pub fn wait_sync(&self, timeout: Duration, what: &str, f: impl FnMut() -> bool) {
        if let Err(e) = wait_until(timeout, what, f) {
            panic!("{e}{}", self.logs());
        }
    }
}

/// Writes the `failover.rejoin_command` of a lab fleet: a script running
/// the shipped `deploy/scripts/pgwarden-rejoin` inside the lab host of the
/// backend named by its fourth argument (`%a`); returns its path.
fn rejoin_in_host(dir: &std::path::Path, cluster: &Cluster) -> PathBuf {
    let rejoin =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/scripts/pgwarden-rejoin");
    let mut cases = String::new();
    for n in cluster.nodes() {
        if let Some(h) = n.lab_host() {
            cases.push_str(&format!("    {}) ns={} ;;\n", n.name(), h.name()));
        }
    }
    let script = format!(
        "#!/bin/sh\n# failover.rejoin_command of a lab fleet: DATA PRIMARY_HOST PRIMARY_PORT NAME\n\
         case \"$4\" in\n{cases}    *) echo \"no lab host runs $4\" >&2; exit 2 ;;\nesac\n\
         exec ip netns exec \"$ns\" {} \"$@\"\n",
        rejoin.display()
    );
    let path = dir.join("rejoin-in-host");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// Runs `sql` with `cmd` (psql in some namespace) as alice on `host`'s
/// port 9999, giving up connecting after `connect_timeout` seconds;
/// Ok(stdout) or Err(stderr).
fn psql(mut cmd: Command, host: &str, connect_timeout: &str, sql: &str) -> Result<String, String> {
    let out = cmd
        .args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            host,
            "-p",
            "9999",
        ])
        .args(["-U", ALICE.0, "-d", "app", "-c", sql])
        .env("PGPASSWORD", ALICE.1)
        .env("PGCONNECT_TIMEOUT", connect_timeout)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}
