//! A primary and its streaming standbys.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::unistd::geteuid;

use crate::lab::{Host, Lab};
use crate::node::{NODE_CONF, Node, StartError, conf_literal};
use crate::paths::{os_user, pg_bin_dir};
use crate::pgenv::PgEnv;
use crate::port::free_port;
use crate::wait::wait_until;

/// How many ports a server tries before giving up on collisions.
const PORT_ATTEMPTS: usize = 5;

/// How long a new standby may take to reach `streaming`.
const STREAMING_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest unix socket path the kernel accepts (`sun_path` is 108 bytes).
const MAX_SOCKET_PATH: usize = 107;

/// How a role's password is stored in `pg_authid`, which decides how it
/// authenticates under the `md5` pg_hba method: SCRAM-SHA-256 or md5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordKind {
    /// `password_encryption = 'scram-sha-256'`: stored as `SCRAM-SHA-256$...`.
    Scram,
    /// `password_encryption = 'md5'`: stored as `md5...`.
    Md5,
}

impl PasswordKind {
    fn password_encryption(self) -> &'static str {
        match self {
            PasswordKind::Scram => "scram-sha-256",
            PasswordKind::Md5 => "md5",
        }
    }
}

/// A primary (node 0) and N streaming standbys on 127.0.0.1, each with its own
/// data dir, port, unix socket dir and log under one base dir.
///
/// Dropping it stops every server (`pg_ctl stop -m immediate`, then `SIGKILL`)
/// and removes the base dir, unless it was given with
/// [`ClusterBuilder::base_dir`] or env `PGWARDEN_KEEP_TEST_DIRS=1` is set.
#[derive(Debug)]
pub struct Cluster {
    // Declared before `temp` so nodes are listed before the dir goes; Drop
    // stops them explicitly anyway.
    nodes: Vec<Node>,
    env: Arc<PgEnv>,
    base_dir: PathBuf,
    temp: Option<tempfile::TempDir>,
}

/// Options for a [`Cluster`]: number of standbys, extra pg_hba.conf lines and
/// postgresql.conf settings, base dir, and the [`Lab`] to run in.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ClusterBuilder {
    standbys: usize,
    hba: Vec<String>,
    config: Vec<(String, String)>,
    base_dir: Option<PathBuf>,
    /// The lab's hosts and subnet, when the cluster runs in a lab.
    lab: Option<(Vec<Host>, &'static str)>,
}

impl ClusterBuilder {
    /// Number of streaming standbys (default 0: a lone primary).
    pub fn standbys(mut self, n: usize) -> Self {
        self.standbys = n;
        self
    }

    /// Adds a pg_hba.conf line, placed before the default lines (so it wins).
    pub fn hba(mut self, line: &str) -> Self {
        self.hba.push(line.to_owned());
        self
    }

    /// Adds a postgresql.conf setting on every node, after the testkit's
    /// defaults (so it overrides them). The value is quoted unless it already
    /// is (`'...'`). Port, socket dir and cluster name (and, in a lab,
    /// `listen_addresses`) cannot be overridden.
    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.config.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Builds the cluster in `dir` instead of a fresh temp dir (the demo keeps
    /// its cluster somewhere known). The dir is kept on drop; it must not
    /// already hold a cluster, and the unprivileged user must be able to reach
    /// it (it is chowned to that user when root).
    pub fn base_dir(mut self, dir: PathBuf) -> Self {
        self.base_dir = Some(dir);
        self
    }

    /// Runs the cluster in `lab`, one node per host: node i (node 0 the
    /// primary) runs in host i's network namespace and listens on `<host
    /// ip>:5432` (every address of the host, so also on the delegate IP while
    /// the host holds it); its unix socket dir is as usual. pg_hba.conf
    /// trusts `postgres` and replication from the lab subnet and asks the
    /// other roles for a password (`md5`), after the [`ClusterBuilder::hba`]
    /// lines and before the defaults. Standbys stream from the primary's host
    /// address. The lab needs at least `standbys + 1` hosts and must outlive
    /// the cluster (declare the cluster after the lab).
    pub fn in_lab(mut self, lab: &Lab) -> Self {
        self.lab = Some((lab.hosts().to_vec(), lab.subnet()));
        self
    }

    /// The lab host of node `i`, when the cluster runs in a lab.
    fn lab_host(&self, i: usize) -> anyhow::Result<Option<&Host>> {
        let Some((hosts, _)) = &self.lab else {
            return Ok(None);
        };
        hosts.get(i).map(Some).with_context(|| {
            format!(
                "the lab has {} hosts, too few for a primary and {} standbys",
                hosts.len(),
                self.standbys
            )
        })
    }

    /// Creates and starts the cluster: `initdb` the primary, start it, then
    /// `pg_basebackup` and start each standby and wait until it streams.
    /// On failure, every server already started is stopped.
    pub fn start(self) -> anyhow::Result<Cluster> {
        self.lab_host(self.standbys)?;
        let bin_dir = pg_bin_dir()?;
        let os_user = if geteuid().is_root() {
            Some(os_user().context(
                "running as root, but found no unprivileged user for PostgreSQL: \
                 set PGWARDEN_TEST_USER to an existing user",
            )?)
        } else {
            None
        };
        let (temp, base_dir) = match &self.base_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("create {}", dir.display()))?;
                let dir = dir
                    .canonicalize()
                    .with_context(|| format!("resolve {}", dir.display()))?;
                anyhow::ensure!(
                    !dir.join("pg0").join("data").exists(),
                    "{} already holds a cluster (pg0/data exists)",
                    dir.display()
                );
                (None, dir)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("pgwarden-test-")
                    .tempdir_in("/tmp")
                    .context("create a temp dir under /tmp")?;
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        let env = Arc::new(PgEnv {
            bin_dir,
            os_user,
            home: base_dir.clone(),
        });
        env.create_dir(&base_dir)?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            env,
            base_dir,
            temp,
        };
        cluster.add_primary(&self)?;
        for i in 1..=self.standbys {
            cluster.add_standby(i, self.lab_host(i)?)?;
        }
        Ok(cluster)
    }
}

impl Cluster {
    /// Options for a cluster; see [`ClusterBuilder`].
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// A primary and `standbys` streaming standbys with default settings.
    pub fn start(standbys: usize) -> anyhow::Result<Cluster> {
        Cluster::builder().standbys(standbys).start()
    }

    /// All nodes: node 0 is the initial primary, then the standbys.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i` (0 = the initial primary).
    ///
    /// # Panics
    /// When there is no node `i`.
    pub fn node(&self, i: usize) -> &Node {
        match self.nodes.get(i) {
            Some(node) => node,
            None => panic!(
                "cluster has {} nodes, there is no node {i}",
                self.nodes.len()
            ),
        }
    }

    /// Node 0, the initial primary (after a failover it may be a standby or
    /// down).
    pub fn primary(&self) -> &Node {
        self.node(0)
    }

    /// The dir holding every node's data dir, socket dir and log
    /// (`<base>/pgN/{data,log}`).
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// Creates a login role with `password` stored as `kind`, granted
    /// `pg_monitor` (enough for health and replication checks).
    pub fn create_user(
        &self,
        name: &str,
        password: &str,
        kind: PasswordKind,
    ) -> anyhow::Result<()> {
        self.create_role(name, password, kind, "LOGIN", true)
    }

    /// Creates a login superuser with `password` stored as `kind`.
    pub fn create_superuser(
        &self,
        name: &str,
        password: &str,
        kind: PasswordKind,
    ) -> anyhow::Result<()> {
        self.create_role(name, password, kind, "SUPERUSER LOGIN", false)
    }

    fn create_role(
        &self,
        name: &str,
        password: &str,
        kind: PasswordKind,
        options: &str,
        monitor: bool,
    ) -> anyhow::Result<()> {
        let ident = sql_ident(name);
        let mut sql = format!(
            "SET password_encryption = {};\nCREATE ROLE {ident} {options} PASSWORD {};\n",
            sql_literal(kind.password_encryption()),
            sql_literal(password)
        );
        if monitor {
            sql.push_str(&format!("GRANT pg_monitor TO {ident};\n"));
        }
        self.current_primary()?
            .psql(&sql)
            .with_context(|| format!("create role {name}"))?;
        Ok(())
    }

    /// The running node that is not in recovery: node 0 until a failover.
    /// Roles are created there.
    fn current_primary(&self) -> anyhow::Result<&Node> {
        let mut states = Vec::new();
        for node in &self.nodes {
            if !node.is_running() {
                states.push(format!("{}: not running", node.name()));
                continue;
            }
            match node.is_in_recovery() {
                Ok(false) => return Ok(node),
                Ok(true) => states.push(format!("{}: in recovery", node.name())),
                Err(e) => states.push(format!("{e:#}")),
            }
        }
        anyhow::bail!("no running primary in the cluster ({})", states.join("; "))
    }

    /// Waits until every running standby has replayed all WAL the current
    /// primary (the running node not in recovery) has written so far.
    pub fn wait_replicated(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let primary = self.current_primary()?;
        let target = primary.psql("SELECT pg_current_wal_lsn()")?;
        for node in self
            .nodes
            .iter()
            .filter(|n| n.name() != primary.name() && n.is_running())
        {
            if !node.is_in_recovery()? {
                continue;
            }
            let sql = format!(
                "SELECT pg_last_wal_replay_lsn() >= {}::pg_lsn",
                sql_literal(&target)
            );
            let mut last = String::new();
            wait_until(
                deadline.saturating_duration_since(Instant::now()),
                &format!(
                    "{} to replay up to {target} from {}",
                    node.name(),
                    primary.name()
                ),
                || match node.psql(&sql) {
                    Ok(answer) => {
                        last = answer;
                        last == "t"
                    }
                    Err(e) => {
                        last = format!("{e:#}");
                        false
                    }
                },
            )
            .map_err(|e| node.with_log(e.context(format!("last answer: {last}"))))?;
        }
        Ok(())
    }

    /// `<base>/pgN` for node `i`, checked against the unix socket path limit.
    fn node_dir(&self, i: usize) -> anyhow::Result<PathBuf> {
        let dir = self.base_dir.join(format!("pg{i}"));
        // ".s.PGSQL.65535.lock" is the longest file PostgreSQL puts there.
        let longest = dir.as_os_str().len() + "/.s.PGSQL.65535.lock".len();
        anyhow::ensure!(
            longest <= MAX_SOCKET_PATH,
            "base dir {} is too long for unix socket paths ({longest} > {MAX_SOCKET_PATH} bytes)",
            self.base_dir.display()
        );
        self.env.create_dir(&dir)?;
        Ok(dir)
    }

    /// `initdb`, configure and start node 0.
    fn add_primary(&mut self, options: &ClusterBuilder) -> anyhow::Result<()> {
        let dir = self.node_dir(0)?;
        let mut node = Node::new("pg0".to_owned(), dir, free_port(), self.env.clone());
        if let Some(host) = options.lab_host(0)? {
            node = node.in_lab_host(host);
        }
        let mut cmd = self.env.command("initdb");
        cmd.arg("-D").arg(node.data_dir()).args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=md5",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
            "--no-instructions",
        ]);
        self.env.run(&mut cmd, None, "pg0: initdb")?;
        self.env.append_file(
            &node.data_dir().join("postgresql.conf"),
            &postgresql_conf(options),
        )?;
        self.env
            .write_file(&node.data_dir().join("pg_hba.conf"), &pg_hba_conf(options))?;
        node.write_node_conf()?;
        self.nodes.push(node);
        self.start_last_node()?;
        eprintln!(
            "pgwarden-testkit: pg0 (primary) up on {}:{}{} in {}",
            self.node(0).host(),
            self.node(0).port(),
            in_namespace(self.node(0)),
            self.base_dir.display()
        );
        Ok(())
    }

    /// `pg_basebackup` node `i` from node 0, start it and wait until node 0
    /// shows it streaming. In a lab, the node runs in `host`.
    fn add_standby(&mut self, i: usize, host: Option<&Host>) -> anyhow::Result<()> {
        let dir = self.node_dir(i)?;
        let name = format!("pg{i}");
        let mut node = Node::new(name.clone(), dir, free_port(), self.env.clone());
        if let Some(host) = host {
            node = node.in_lab_host(host);
        }
        let primary = self.primary();
        let mut cmd = self.env.command_in(host, "pg_basebackup");
        cmd.arg("-d")
            .arg(format!(
                "host={} port={} user={} application_name={name}",
                primary.host(),
                primary.port(),
                primary.superuser()
            ))
            .arg("-D")
            .arg(node.data_dir())
            .args(["-R", "-X", "stream", "-C", "-S"])
            .arg(format!("pgwarden_{name}"))
            .args(["-c", "fast", "--no-sync"]);
        self.env
            .run(&mut cmd, None, &format!("{name}: pg_basebackup from pg0"))
            .map_err(|e| primary.with_log(e))?;
        ensure_application_name(&self.env, &node, primary.host())?;
        node.write_node_conf()?;
        self.nodes.push(node);
        self.start_last_node()?;

        let primary = self.primary();
        let sql = format!(
            "SELECT state FROM pg_stat_replication WHERE application_name = {}",
            sql_literal(&name)
        );
        wait_until(
            STREAMING_TIMEOUT,
            &format!("{name} to stream from pg0"),
            || primary.psql(&sql).is_ok_and(|state| state == "streaming"),
        )
        .map_err(|e| self.node(i).with_log(e))?;
        eprintln!(
            "pgwarden-testkit: {name} (standby) up on {}:{}{}, streaming from pg0",
            self.node(i).host(),
            self.node(i).port(),
            in_namespace(self.node(i)),
        );
        Ok(())
    }

    /// Starts the last node, moving it to a new port if its port was taken.
    fn start_last_node(&mut self) -> anyhow::Result<()> {
        let Some(node) = self.nodes.last_mut() else {
            anyhow::bail!("no node to start");
        };
        let mut attempt = 1;
        loop {
            match node.try_start() {
                Ok(()) => return Ok(()),
                // In a lab the host is the node's own: a taken port is a bug.
                Err(StartError::PortInUse(e))
                    if attempt < PORT_ATTEMPTS && node.lab_host().is_none() =>
                {
                    eprintln!(
                        "pgwarden-testkit: {}: port {} taken, retrying on another port",
                        node.name(),
                        node.port()
                    );
                    drop(e);
                    node.set_port(free_port());
                    node.write_node_conf()?;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.iter().rev() {
            node.force_stop();
        }
        if let Some(temp) = self.temp.take()
            && std::env::var("PGWARDEN_KEEP_TEST_DIRS").is_ok_and(|v| v == "1")
        {
            let dir = temp.keep();
            eprintln!("pgwarden-testkit: kept {}", dir.display());
        }
    }
}

/// The settings appended to the primary's postgresql.conf (copied to every
/// standby by pg_basebackup).
fn postgresql_conf(options: &ClusterBuilder) -> String {
    let mut conf = String::from(
        "\n# ---- pgwarden-testkit ----\n\
         listen_addresses = '127.0.0.1'\n\
         wal_level = replica\n\
         max_wal_senders = 10\n\
         max_replication_slots = 10\n\
         hot_standby = on\n\
         fsync = off\n\
         full_page_writes = on\n\
         wal_log_hints = on\n\
         shared_buffers = 32MB\n\
         max_connections = 100\n\
         wal_keep_size = 256MB\n\
         logging_collector = off\n\
         log_destination = 'stderr'\n\
         log_line_prefix = '%m [%p] %q%u@%d '\n\
         password_encryption = 'scram-sha-256'\n",
    );
    for (key, value) in &options.config {
        let value = if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
            value.clone()
        } else {
            conf_literal(value)
        };
        conf.push_str(&format!("{key} = {value}\n"));
    }
    conf.push_str(&format!("include {}\n", conf_literal(NODE_CONF)));
    conf
}

/// pg_hba.conf: the builder's lines, then (in a lab) the same rules for the
/// lab subnet, then trust for the superuser and replication locally, md5
/// (which also accepts SCRAM-stored roles) for the rest over TCP.
fn pg_hba_conf(options: &ClusterBuilder) -> String {
    let mut hba = String::from("# written by pgwarden-testkit\n");
    for line in &options.hba {
        hba.push_str(line);
        hba.push('\n');
    }
    if let Some((_, subnet)) = &options.lab {
        hba.push_str(&format!(
            "host all postgres {subnet} trust\n\
             host replication all {subnet} trust\n\
             host all all {subnet} md5\n"
        ));
    }
    hba.push_str(
        "local all all trust\n\
         local replication all trust\n\
         host all postgres 127.0.0.1/32 trust\n\
         host replication all 127.0.0.1/32 trust\n\
         host all all 127.0.0.1/32 md5\n",
    );
    hba
}

/// Makes sure the standby's `primary_conninfo` (written by `pg_basebackup
/// -R` into postgresql.auto.conf) names it, so `pg_stat_replication` on the
/// primary shows the node name. `primary_host` is the primary's address.
fn ensure_application_name(env: &PgEnv, node: &Node, primary_host: &str) -> anyhow::Result<()> {
    let auto_conf = node.data_dir().join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&auto_conf)
        .with_context(|| format!("read {}", auto_conf.display()))?;
    let needle = format!("application_name={}", node.name());
    if !text.contains(&needle) {
        env.append_file(
            &auto_conf,
            &format!(
                "primary_conninfo = 'host={primary_host} port={} user=postgres application_name={}'\n",
                // The primary's port is in the existing line; fall back to parsing it.
                primary_port_in(&text).with_context(|| format!(
                    "no primary_conninfo port in {}",
                    auto_conf.display()
                ))?,
                node.name()
            ),
        )?;
    }
    Ok(())
}

/// " in network namespace <name>" for a lab node, else "".
fn in_namespace(node: &Node) -> String {
    node.lab_host()
        .map(|h| format!(" in network namespace {}", h.name()))
        .unwrap_or_default()
}

/// The `port=` in `primary_conninfo`.
fn primary_port_in(auto_conf: &str) -> Option<u16> {
    let line = auto_conf
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("primary_conninfo"))?;
    let rest = line.split("port=").nth(1)?;
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// A quoted SQL identifier.
fn sql_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted SQL string literal (standard_conforming_strings is on).
fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_config_is_quoted_and_before_node_conf() {
        let options = Cluster::builder()
            .config("max_connections", "50")
            .config("listen_addresses", "'*'")
            .hba("host all alice 127.0.0.1/32 scram-sha-256");
        let conf = postgresql_conf(&options);
        assert!(conf.contains("max_connections = '50'\n"));
        assert!(conf.contains("listen_addresses = '*'\n"));
        assert!(conf.ends_with("include 'pgwarden-node.conf'\n"));
        let hba = pg_hba_conf(&options);
        let custom = hba.find("alice").unwrap();
        let default = hba.find("local all all trust").unwrap();
        assert!(custom < default);
    }

    #[test]
    fn lab_hba_lines_follow_custom_lines_and_precede_defaults() {
        let mut options = Cluster::builder().hba("host all alice 10.213.0.0/24 reject");
        options.lab = Some((Vec::new(), "10.213.0.0/24"));
        let hba = pg_hba_conf(&options);
        let at = |line: &str| hba.find(line).unwrap();
        assert!(at("alice") < at("host all postgres 10.213.0.0/24 trust"));
        assert!(at("host all postgres 10.213.0.0/24 trust") < at("host all all 10.213.0.0/24 md5"));
        assert!(at("host replication all 10.213.0.0/24 trust") < at("local all all trust"));
        assert!(!pg_hba_conf(&Cluster::builder()).contains("10.213"));
    }

    #[test]
    fn quoting() {
        assert_eq!(sql_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(sql_literal("it's"), "'it''s'");
    }

    #[test]
    fn moves_to_another_port_when_its_port_is_taken() {
        let mut cluster = Cluster::start(0).unwrap();
        let node = cluster.primary();
        node.stop(crate::StopMode::Fast).unwrap();
        let taken = node.port();
        let _squatter = std::net::TcpListener::bind(("127.0.0.1", taken)).unwrap();
        assert!(matches!(node.try_start(), Err(StartError::PortInUse(_))));
        assert!(!node.is_running());
        cluster.start_last_node().unwrap();
        let node = cluster.primary();
        assert_ne!(node.port(), taken);
        assert_eq!(node.psql("SHOW port").unwrap(), node.port().to_string());
    }

    #[test]
    fn finds_primary_port() {
        let text = "# Do not edit\nprimary_conninfo = 'user=postgres host=127.0.0.1 port=41234 sslmode=prefer'\n";
        assert_eq!(primary_port_in(text), Some(41234));
    }
}
