//! Harness for the end-to-end tests in `tests/tests/`: a real cluster, the
//! real `pgwarden-proxy` binary with a generated config and auth file, and
//! client helpers. Build the binaries first (`cargo build --workspace --bins`;
//! `scripts/test` does it).

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

pub mod ctl;
pub mod faults;
pub mod lab;
pub mod raw;
pub mod tls;
pub mod watchdogs;

pub use ctl::*;
pub use pgwarden_proto::v1::monitor_client::MonitorClient;
pub use pgwarden_proto::v1::{ClusterState, GetClusterRequest, Role, Status};
pub use pgwarden_testkit::run_ok;
use pgwarden_testkit::{ChildGuard, Cluster, PasswordKind, free_port, wait_until, workspace_bin};
pub use raw::*;

/// SCRAM user with a SCRAM verifier in the auth file (pass-through login).
pub const ALICE: (&str, &str) = ("alice", "alice-secret");
/// md5 user with an md5 secret in the auth file.
pub const BOB: (&str, &str) = ("bob", "bob-secret");
/// SCRAM user with a plain-text password in the auth file.
pub const CAROL: (&str, &str) = ("carol", "carol-secret");
/// The health-check role.
pub const MONITOR: (&str, &str) = ("pgwarden", "pgwarden-secret");
/// An md5 user of the auth file reload tests ([`frank_added_to_the_auth_file`]).
pub const FRANK: (&str, &str) = ("frank", "frank-secret");

/// A cluster with the test users: alice (SCRAM), bob (md5), carol (SCRAM),
/// pgwarden (the checks' role), and a database `app` owned by alice.
pub fn cluster(standbys: usize) -> Cluster {
    cluster_from(Cluster::builder().standbys(standbys))
}

/// [`cluster`], from a builder with extra settings.
pub fn cluster_from(builder: pgwarden_testkit::ClusterBuilder) -> Cluster {
    let c = builder.start().expect("start cluster");
    c.create_user(ALICE.0, ALICE.1, PasswordKind::Scram)
        .unwrap();
    c.create_user(BOB.0, BOB.1, PasswordKind::Md5).unwrap();
    c.create_user(CAROL.0, CAROL.1, PasswordKind::Scram)
        .unwrap();
    c.create_user(MONITOR.0, MONITOR.1, PasswordKind::Scram)
        .unwrap();
    c.primary().psql("CREATE DATABASE app OWNER alice").unwrap();
    c.primary()
        .psql("GRANT ALL ON DATABASE app TO bob, carol")
        .unwrap();
    c.primary()
        .psql_db("app", "GRANT ALL ON SCHEMA public TO bob, carol")
        .unwrap();
    c
}

/// Options for a proxy under test.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Extra lines for the `[proxy]` table.
    pub proxy: Vec<String>,
    /// Extra auth file lines.
    pub users: Vec<String>,
    /// Which cluster nodes to list as `[[backends]]`, in this order (default: all, in order).
    pub backends: Option<Vec<usize>>,
    /// Run pgwarden-monitor too, and have the proxy follow it (default);
    /// otherwise the proxy finds the primary alone.
    pub monitor: bool,
    /// Extra lines for the `[failover]` table.
    pub failover: Vec<String>,
    /// Raw TOML appended after the backends (e.g. one more `[[backends]]`).
    pub extra: Vec<String>,
    /// `backends[].weight` by position (unset ones keep the default).
    pub weights: Vec<u32>,
    /// Extra lines for the `[monitor]` table (`$METRICS_PORT` in them
    /// becomes the port of its `metrics_listen`).
    pub monitor_lines: Vec<String>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            // Tests fail logins on purpose, from one address: answered at
            // once unless a test asks otherwise (proxy_auth tests the delay).
            proxy: vec!["pool_size = 4".into(), "auth_failure_delay = \"0s\"".into()],
            users: Vec::new(),
            backends: None,
            monitor: true,
            failover: Vec::new(),
            extra: Vec::new(),
            weights: Vec::new(),
            monitor_lines: Vec::new(),
        }
    }
}

impl ProxyOptions {
    /// Adds a `[proxy]` line (replacing one that sets the same key).
    pub fn set(mut self, line: &str) -> Self {
        let key = |l: &str| l.split('=').next().unwrap_or_default().trim().to_owned();
        self.proxy.retain(|l| key(l) != key(line));
        self.proxy.push(line.to_owned());
        self
    }

    /// Adds an auth file line.
    pub fn user(mut self, line: &str) -> Self {
        self.users.push(line.to_owned());
        self
    }

    /// Appends raw TOML after the backends (a whole table, say).
    pub fn with_extra(mut self, toml: &str) -> Self {
        self.extra.push(toml.to_owned());
        self
    }

    /// `proxy.pool_mode = "transaction"`: a server connection per
    /// transaction, not per client session.
    pub fn transaction_mode(self) -> Self {
        self.set("pool_mode = \"transaction\"")
    }

    /// Lists only these cluster nodes as `[[backends]]`, in this order.
    pub fn backends(mut self, nodes: &[usize]) -> Self {
        self.backends = Some(nodes.to_vec());
        self
    }

    /// Runs no monitor: the proxy finds the primary alone.
    pub fn without_monitor(mut self) -> Self {
        self.monitor = false;
        self
    }

    /// Adds a `[failover]` line.
    pub fn failover(mut self, line: &str) -> Self {
        self.failover.push(line.to_owned());
        self
    }
}

/// A pgwarden node under test: `pgwarden-proxy`, and `pgwarden-monitor`
/// unless the options say otherwise, sharing one config.
pub struct Proxy {
    child: ChildGuard,
    monitor: Option<ChildGuard>,
    pub port: u16,
    /// Where the proxy serves `/metrics`.
    pub proxy_metrics: u16,
    /// Where the monitor serves `/metrics`.
    pub monitor_metrics: u16,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    log: PathBuf,
    monitor_log: PathBuf,
}

impl Proxy {
    /// Starts the proxy in front of `cluster`, and waits until it accepts.
    pub fn start(cluster: &Cluster, opts: ProxyOptions) -> Proxy {
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-proxy-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let scram = cluster
            .primary()
            .psql(&format!(
                "SELECT rolpassword FROM pg_authid WHERE rolname = '{}'",
                ALICE.0
            ))
            .unwrap();
        let bob_md5 = cluster
            .primary()
            .psql(&format!(
                "SELECT rolpassword FROM pg_authid WHERE rolname = '{}'",
                BOB.0
            ))
            .unwrap();
        let auth = dir.path().join("users.txt");
        let mut lines = vec![
            format!("\"{}\" \"{}\"", ALICE.0, scram),
            format!("\"{}\" \"{}\"", BOB.0, bob_md5),
            format!("\"{}\" \"{}\"", CAROL.0, CAROL.1),
        ];
        lines.extend(opts.users.iter().cloned());
        std::fs::write(&auth, lines.join("\n") + "\n").unwrap();
        std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o600)).unwrap();

        let (proxy_metrics, monitor_metrics) = (free_port(), free_port());
        let mut toml = format!(
            "[node]\nname = \"test\"\nruntime_dir = \"{d}\"\nstate_dir = \"{d}\"\n\n\
             [monitor]\nmetrics_listen = \"127.0.0.1:{monitor_metrics}\"\n{m}\n\
             [proxy]\nlisten = \"127.0.0.1:{port}\"\nauth_file = \"{a}\"\nmetrics_listen = \"127.0.0.1:{proxy_metrics}\"\n",
            d = dir.path().display(),
            a = auth.display(),
            // `$METRICS_PORT` in a line: the monitor's metrics port.
            m = opts
                .monitor_lines
                .iter()
                .map(|l| l.replace("$METRICS_PORT", &monitor_metrics.to_string()) + "\n")
                .collect::<String>()
        );
        for l in &opts.proxy {
            toml.push_str(l);
            toml.push('\n');
        }
        if !opts.monitor {
            toml.push_str("follow_monitor = false\n");
        }
        toml.push_str(&format!(
            "\n[health_check]\nuser = \"{}\"\npassword = \"{}\"\nperiod = \"500ms\"\ntimeout = \"1s\"\nmax_retries = 2\nretry_delay = \"250ms\"\n",
            MONITOR.0, MONITOR.1
        ));
        toml.push_str("\n[failover]\nuser = \"postgres\"\ncommand_timeout = \"30s\"\n");
        for l in &opts.failover {
            toml.push_str(l);
            toml.push('\n');
        }
        let order = opts
            .backends
            .clone()
            .unwrap_or_else(|| (0..cluster.nodes().len()).collect());
        for (pos, n) in order.iter().map(|i| cluster.node(*i)).enumerate() {
            toml.push_str(&backend_toml(n));
            if let Some(w) = opts.weights.get(pos) {
                toml.push_str(&format!("weight = {w}\n"));
            }
        }
        for l in &opts.extra {
            toml.push_str(l);
            toml.push('\n');
        }
        let config = dir.path().join("pgwarden.toml");
        std::fs::write(&config, toml).unwrap();
        // It holds the health check's password: only its owner reads it.
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        let log = dir.path().join("proxy.log");
        let monitor_log = dir.path().join("monitor.log");
        let monitor = opts.monitor.then(|| spawn_monitor(&config, &monitor_log));
        if opts.monitor {
            let sock = dir.path().join("monitor.sock");
            let up = wait_until(Duration::from_secs(20), "pgwarden-monitor's socket", || {
                sock.exists()
            });
            assert!(
                up.is_ok(),
                "monitor did not start; log:\n{}",
                std::fs::read_to_string(&monitor_log).unwrap_or_default()
            );
        }
        let child = ChildGuard::spawn(
            Command::new(workspace_bin("pgwarden-proxy"))
                .arg("--config")
                .arg(&config)
                .env("PGWARDEN_LOG", "debug")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap()),
        )
        .unwrap();
        let mut p = Proxy {
            child,
            monitor,
            port,
            proxy_metrics,
            monitor_metrics,
            dir,
            config,
            log,
            monitor_log,
        };
        let accepting = wait_until(Duration::from_secs(20), "pgwarden-proxy to accept", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if accepting.is_err() {
            let status = p.child.try_wait().ok().flatten();
            panic!("proxy did not start (exit {status:?}); log:\n{}", p.log());
        }
        p
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the proxy's log ([`log_tail`]), for a failure
    /// message.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail("proxy", &self.log(), n)
    }

    /// The process.
    pub fn child(&mut self) -> &mut ChildGuard {
        &mut self.child
    }

    /// The monitor's log so far.
    pub fn monitor_log(&self) -> String {
        std::fs::read_to_string(&self.monitor_log).unwrap_or_default()
    }

    /// The monitor process.
    pub fn monitor(&mut self) -> &mut ChildGuard {
        self.monitor.as_mut().expect("this node runs no monitor")
    }

    /// Kills the monitor (SIGKILL) and waits for it to be gone.
    pub fn kill_monitor(&mut self) {
        if let Some(mut m) = self.monitor.take() {
            m.kill9().unwrap();
        }
    }

    /// Starts the monitor again (after [`Proxy::kill_monitor`]).
    pub fn start_monitor(&mut self) {
        assert!(self.monitor.is_none(), "the monitor is running");
        self.monitor = Some(spawn_monitor(&self.config, &self.monitor_log));
    }

    /// The monitor's socket.
    pub fn monitor_socket(&self) -> PathBuf {
        self.dir.path().join("monitor.sock")
    }

    /// A gRPC client of the monitor.
    pub async fn monitor_client(&self) -> MonitorClient<tonic::transport::Channel> {
        MonitorClient::new(
            pgwarden_proto::uds::connect(&self.monitor_socket())
                .await
                .expect("connect to monitor.sock"),
        )
    }

    /// The monitor's `WatchCluster` stream: each new cluster state.
    pub async fn watch_cluster(&self) -> tonic::Streaming<ClusterState> {
        self.monitor_client()
            .await
            .watch_cluster(pgwarden_proto::v1::WatchClusterRequest {})
            .await
            .expect("WatchCluster")
            .into_inner()
    }

    /// The monitor's current cluster state.
    pub async fn cluster_state(&self) -> ClusterState {
        self.monitor_client()
            .await
            .get_cluster(GetClusterRequest {})
            .await
            .expect("GetCluster")
            .into_inner()
    }

    /// Waits until the monitor's state satisfies `f`; panics with the last state otherwise.
    pub async fn wait_state(
        &self,
        timeout: Duration,
        what: &str,
        f: impl Fn(&ClusterState) -> bool,
    ) -> ClusterState {
        let deadline = std::time::Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Ok(c) = monitor_channel(&self.monitor_socket()).await
                && let Ok(r) = MonitorClient::new(c)
                    .get_cluster(GetClusterRequest {})
                    .await
            {
                let s = r.into_inner();
                if f(&s) {
                    return s;
                }
                last = Some(s);
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last state: {last:#?}\nmonitor log:\n{}",
                    self.monitor_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the monitor reports a primary and every backend up
    /// ([`all_up`]): how most tests start, before they break something.
    pub async fn wait_all_up(&self, timeout: Duration) -> ClusterState {
        self.wait_state(timeout, "all backends up", all_up).await
    }

    /// Waits until backend `id` has status `status`: the state that showed it.
    pub async fn wait_status(&self, timeout: Duration, id: u32, status: Status) -> ClusterState {
        let what = format!("pg{id} {}", status.as_str_name());
        self.wait_state(timeout, &what, |s| status_of(s, id) == status as i32)
            .await
    }

    /// Waits until backend `id` is the primary and up (after a failover or
    /// a switchover): the state that showed it.
    pub async fn wait_primary(&self, timeout: Duration, id: u32) -> ClusterState {
        self.wait_state(timeout, &format!("pg{id} primary"), |s| {
            s.primary_id == Some(id) && up(s, id)
        })
        .await
    }

    /// Asks the monitor for a planned switchover to backend `id` (not
    /// forced), as `pgwardenctl promote` does; panics if it refuses. The
    /// reply's message.
    pub async fn promote(&self, id: u32) -> String {
        self.monitor_client()
            .await
            .promote_backend(pgwarden_proto::v1::PromoteBackendRequest { id, force: false })
            .await
            .unwrap_or_else(|e| panic!("PromoteBackend {id}: {e}"))
            .into_inner()
            .message
    }

    /// A libpq-style conninfo through the proxy.
    pub fn conninfo(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db}",
            self.port
        )
    }

    /// Connects with tokio-postgres through the proxy.
    pub async fn connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect(&self.conninfo(user, password, db)).await
    }

    /// Connects as alice to `app`.
    pub async fn alice(&self) -> tokio_postgres::Client {
        self.connect(ALICE.0, ALICE.1, "app")
            .await
            .expect("alice connects through the proxy")
    }

    /// Connects as alice to `app` and runs `sql` there (simple protocol;
    /// panics naming `sql` when it fails): a session with its setup done.
    pub async fn alice_after(&self, sql: &str) -> tokio_postgres::Client {
        let c = self.alice().await;
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c
    }

    /// Connects as alice to `app` with `application_name` `name`, to tell
    /// her sessions apart on the server.
    pub async fn alice_named(&self, name: &str) -> tokio_postgres::Client {
        let conninfo = self.conninfo(ALICE.0, ALICE.1, "app");
        connect(&format!("{conninfo} application_name={name}"))
            .await
            .unwrap_or_else(|e| panic!("alice connects as {name}: {e}"))
    }

    /// Logs in through the proxy expecting to be refused (`why` says why
    /// it should be): the error, to check its SQLSTATE and message.
    pub async fn refused(
        &self,
        user: &str,
        password: &str,
        db: &str,
        why: &str,
    ) -> tokio_postgres::Error {
        match self.connect(user, password, db).await {
            Ok(_) => panic!("{user} logged in to {db}, but {why}"),
            Err(e) => e,
        }
    }
}

async fn monitor_channel(
    path: &std::path::Path,
) -> Result<tonic::transport::Channel, pgwarden_proto::uds::UdsError> {
    pgwarden_proto::uds::connect(path).await
}

fn spawn_monitor(config: &std::path::Path, log: &std::path::Path) -> ChildGuard {
    ChildGuard::spawn(
        Command::new(workspace_bin("pgwarden-monitor"))
            .arg("--config")
            .arg(config)
            .env("PGWARDEN_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            ),
    )
    .unwrap()
}

/// The `[[backends]]` table listing `node` (with its data dir), for a
/// generated pgwarden.toml.
pub fn backend_toml(node: &pgwarden_testkit::Node) -> String {
    format!(
        "\n[[backends]]\nname = \"{}\"\nhost = \"{}\"\nport = {}\ndata_dir = \"{}\"\n",
        node.name(),
        node.host(),
        node.port(),
        node.data_dir().display()
    )
}

/// `PGWARDEN_LOG` for the daemons under test: debug, but for the chatter
/// of the libraries under them.
pub const DAEMON_LOG_FILTER: &str = "debug,raft=info,h2=info,tower=info,hyper=info,rustls=info";

/// True when backend `id` is up in `s`.
pub fn up(s: &ClusterState, id: u32) -> bool {
    s.backends
        .iter()
        .any(|b| b.id == id && b.status == Status::Up as i32)
}

/// Backend `id`'s status in `s` (-1 when it is not listed).
pub fn status_of(s: &ClusterState, id: u32) -> i32 {
    s.backends
        .iter()
        .find(|b| b.id == id)
        .map_or(-1, |b| b.status)
}

/// True when there is a primary and every backend is up.
pub fn all_up(s: &ClusterState) -> bool {
    s.primary_id.is_some() && s.backends.iter().all(|b| b.status == Status::Up as i32)
}

/// The start of an auth file reload test: a cluster with [`FRANK`], a proxy
/// that refuses him (28P01: not in its auth file), and he has since been
/// added to its auth file (the path returned), which it has not reloaded.
pub async fn frank_added_to_the_auth_file() -> (Cluster, Proxy, PathBuf) {
    let cluster = cluster(0);
    cluster
        .create_user(FRANK.0, FRANK.1, PasswordKind::Md5)
        .unwrap();
    let proxy = Proxy::start(&cluster, ProxyOptions::default());
    let err = proxy
        .refused(FRANK.0, FRANK.1, "postgres", "he is not in the auth file")
        .await;
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err}");
    let auth = proxy.dir.path().join("users.txt");
    let listed = std::fs::read_to_string(&auth).unwrap() + "\"frank\" \"frank-secret\"\n";
    std::fs::write(&auth, listed).unwrap();
    (cluster, proxy, auth)
}

/// `GET /metrics` from a daemon on loopback `port`: the body, or why not.
pub fn scrape(port: u16) -> Result<String, String> {
    use std::io::Read;
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200 ") => Ok(body.to_owned()),
        _ => Err(out),
    }
}

/// The value of the series `name` (with its labels, as printed) in a
/// `/metrics` body.
pub fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// Connects with tokio-postgres and drives the connection in the background.
pub async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The message of the ErrorResponse behind `e` (empty when there was none).
pub fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default()
}

/// Sends SIGINT to `child` (as Ctrl-C would) and waits for it to exit.
pub fn interrupt(child: &mut std::process::Child) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    child.wait().unwrap()
}

/// Whether `e` says the session was ended: the connection closed, or the
/// proxy's 57P01 (admin shutdown) before it closed it.
pub fn session_ended(e: &tokio_postgres::Error) -> bool {
    e.is_closed() || sqlstate(e).as_deref() == Some("57P01")
}

/// Stops the primary (pg0) at once, as a crash would, once every standby
/// has replayed all it wrote (asynchronous replication would lose the
/// rest, which is not what these tests are about).
pub fn kill_primary_when_replicated(cluster: &Cluster) {
    cluster.wait_replicated(Duration::from_secs(20)).unwrap();
    cluster
        .primary()
        .stop(pgwarden_testkit::StopMode::Immediate)
        .unwrap();
}

/// The lines `child` writes to its stdout (which must be piped), as they
/// come, read on a thread of their own.
pub fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("a piped stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// The first column of the one row `sql` returns on `c`; panics (naming
/// `sql`) when the query fails or returns no row or another type.
pub async fn query_value<T: tokio_postgres::types::FromSqlOwned>(
    c: &impl tokio_postgres::GenericClient,
    sql: &str,
) -> T {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

/// The first two columns of the one row `sql` returns on `c`; panics as
/// [`query_value`] does.
pub async fn query_pair<A, B>(c: &impl tokio_postgres::GenericClient, sql: &str) -> (A, B)
where
    A: tokio_postgres::types::FromSqlOwned,
    B: tokio_postgres::types::FromSqlOwned,
{
    let row = c
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    (row.get(0), row.get(1))
}

/// The port of the server `c`'s session runs on (`inet_server_port()`):
/// which backend the proxy routed it to.
pub async fn server_port(c: &tokio_postgres::Client) -> u16 {
    let port: i32 = query_value(c, "SELECT inet_server_port()").await;
    u16::try_from(port).expect("a TCP port")
}

/// Whether the server `c`'s session runs on is a standby
/// (`pg_is_in_recovery()`).
pub async fn in_recovery(c: &tokio_postgres::Client) -> bool {
    query_value(c, "SELECT pg_is_in_recovery()").await
}

/// A [`cluster`] with `standbys` standbys and a [`Proxy`] started in front of
/// it with `opts`.
pub fn proxied(standbys: usize, opts: ProxyOptions) -> (Cluster, Proxy) {
    let cluster = cluster(standbys);
    let proxy = Proxy::start(&cluster, opts);
    (cluster, proxy)
}

/// `pgbench` from the PostgreSQL the tests run.
pub fn pgbench() -> PathBuf {
    pgwarden_testkit::pg_bin_dir().unwrap().join("pgbench")
}

/// `pgbench -i -s 1` as alice in `app`, on the primary directly (not
/// through a proxy): its tables for a pgbench run.
pub fn pgbench_init(cluster: &Cluster) {
    let pg = cluster.primary();
    run_ok(
        "pgbench -i",
        Command::new(pgbench())
            .args(["-i", "-q", "-s", "1", "-h", pg.host()])
            .args(["-p", &pg.port().to_string(), "-U", ALICE.0, "app"])
            .env("PGPASSWORD", ALICE.1),
    );
}

/// The SQLSTATE of a tokio-postgres error, if the server (or proxy) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_owned())
}

/// Runs `psql` through the proxy; returns (success, stdout, stderr).
pub fn psql(
    proxy: &Proxy,
    user: &str,
    password: &str,
    db: &str,
    sql: &str,
) -> (bool, String, String) {
    psql_with(&proxy.conninfo(user, password, db), &[sql])
}

/// Runs psql with `conninfo` and each of `commands` as a `-c`, stopping at
/// the first error: (success, trimmed stdout, stderr).
pub fn psql_with(conninfo: &str, commands: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `f` every 100 ms until it holds (true) or `timeout` passes (false).
pub async fn poll_until<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// [`poll_until`], panicking with `what` and the `logs` when `f` never holds.
pub async fn wait_or_panic<F, Fut>(
    timeout: Duration,
    what: &str,
    logs: impl FnOnce() -> String,
    f: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if !poll_until(timeout, f).await {
        panic!("timed out after {timeout:?} waiting for {what}{}", logs());
    }
}

/// `GetStatus` of the watchdog whose socket is in `runtime_dir`, if it
/// answers within 2 s.
pub async fn watchdog_status(
    runtime_dir: &std::path::Path,
) -> Option<pgwarden_proto::v1::WatchdogStatus> {
    use pgwarden_proto::uds::{self, Daemon};
    use pgwarden_proto::v1::{GetStatusRequest, watchdog_client::WatchdogClient};
    let ch = uds::connect(&uds::socket_path(runtime_dir, Daemon::Watchdog))
        .await
        .ok()?;
    let mut client = WatchdogClient::new(ch);
    let call = client.get_status(GetStatusRequest {});
    let reply = tokio::time::timeout(Duration::from_secs(2), call).await;
    reply.ok()?.ok().map(|r| r.into_inner())
}

/// The last `n` lines of a daemon's log under `title`, for a failure
/// message, without the noise that would hide what matters: tonic's
/// reconnect attempts to a stopped peer and the checks' SQL.
pub fn log_tail(title: &str, text: &str, n: usize) -> String {
    let tail: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("reconnect::poll_ready") && !l.contains("tcp connect error"))
        // A log entry starts with its timestamp; the lines after it (the
        // checks' SQL in a debug entry) are dropped, but not a panic or a
        // daemon's last word ("pgwarden-watchdog: ...").
        .filter(|l| {
            l.starts_with(|c: char| c.is_ascii_digit())
                || l.contains("panicked")
                || l.starts_with("pgwarden")
        })
        .filter(|l| {
            !l.contains("DEBUG preparing query") && !l.contains("DEBUG executing statement")
        })
        .rev()
        .take(n)
        .collect();
    let mut out = format!("\n--- {title} (last {n} lines)\n");
    for l in tail.into_iter().rev() {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Asserts that a psql run (what [`psql`] or [`psql_with`] return) failed
/// and that its stderr says `reason`.
#[track_caller]
pub fn assert_psql_refused(run: (bool, String, String), reason: &str) {
    let (ok, out, err) = run;
    assert!(!ok, "psql succeeded (stdout: {out}); expected: {reason}");
    assert!(err.contains(reason), "expected {reason:?} in: {err}");
}

/// Asserts that a psql run (what [`psql`] or [`psql_with`] return)
/// succeeded and printed `want`.
#[track_caller]
pub fn assert_psql_answers(run: (bool, String, String), want: &str) {
    let (ok, out, err) = run;
    assert!(ok, "psql failed: {err}");
    assert_eq!(out, want);
}

/// Asserts that the series `series` of a `/metrics` body has the value `want`.
#[track_caller]
pub fn assert_metric(body: &str, series: &str, want: f64) {
    assert_eq!(metric(body, series), Some(want), "{series} in:\n{body}");
}
