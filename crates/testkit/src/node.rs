//! One PostgreSQL server of a [`Cluster`](crate::Cluster).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::lab::Host;
use crate::pgenv::{PgEnv, is_not_found};
use crate::procfs;
use crate::wait::wait_until;

/// How many lines of the server log error messages quote.
const LOG_TAIL_LINES: usize = 25;

/// Seconds `pg_ctl` waits for a start, stop or promote.
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// The port of every server in a [`Lab`](crate::Lab): each has a host to
/// itself.
pub(crate) const LAB_PORT: u16 = 5432;

/// Name of the per-node settings file included at the end of
/// `postgresql.conf` (port, socket dir, cluster name).
pub(crate) const NODE_CONF: &str = "pgwarden-node.conf";

/// How [`Node::stop`] shuts a server down (`pg_ctl stop -m <mode>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Roll back transactions, disconnect clients, write a shutdown checkpoint
    /// (a clean, planned switchover).
    Fast,
    /// Quit at once without a checkpoint, like a crash; the next start runs
    /// crash recovery.
    Immediate,
}

impl StopMode {
    fn as_pg_ctl(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// One PostgreSQL server: a data dir, a port on 127.0.0.1, a unix socket dir,
/// and a server log.
///
/// A node of a cluster built [`in_lab`](crate::ClusterBuilder::in_lab) lives
/// in a lab host instead: it listens on every address of that host
/// (`listen_addresses = '*'`: its own, and the delegate IP while the host
/// holds it) on port 5432, and every PostgreSQL program for it (`pg_ctl`,
/// `psql`, `pg_isready`...) runs inside the host's network namespace.
///
/// Tests use it to break things (stop, `kill -9`, restart) and to look at the
/// server directly (`psql`) while pgwarden sits in front of it.
#[derive(Debug)]
pub struct Node {
    name: String,
    host: String,
    port: u16,
    dir: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    superuser: String,
    env: Arc<PgEnv>,
    /// The lab host the server runs in, if any.
    lab_host: Option<Host>,
}

/// Why a server did not start.
pub(crate) enum StartError {
    /// Its port was taken (by a parallel test): retry on another port.
    PortInUse(anyhow::Error),
    /// Anything else.
    Other(anyhow::Error),
}

impl From<StartError> for anyhow::Error {
    fn from(e: StartError) -> Self {
        match e {
            StartError::PortInUse(e) | StartError::Other(e) => e,
        }
    }
}

impl Node {
    /// A node named `name` living in `dir` (data dir `dir/data`, socket in
    /// `dir`, log `dir/log`).
    pub(crate) fn new(name: String, dir: PathBuf, port: u16, env: Arc<PgEnv>) -> Node {
        Node {
            name,
            host: "127.0.0.1".to_owned(),
            port,
            data_dir: dir.join("data"),
            log_file: dir.join("log"),
            dir,
            superuser: "postgres".to_owned(),
            env,
            lab_host: None,
        }
    }

    /// Moves the node into lab host `host`: its address and port become
    /// `<host ip>:5432`, and its programs run in the host's namespace.
    pub(crate) fn in_lab_host(mut self, host: &Host) -> Node {
        self.host = host.ip().to_string();
        self.port = LAB_PORT;
        self.lab_host = Some(host.clone());
        self
    }

    /// The lab host the server runs in, for a cluster built
    /// [`in_lab`](crate::ClusterBuilder::in_lab); `None` on 127.0.0.1.
    pub fn lab_host(&self) -> Option<&Host> {
        self.lab_host.as_ref()
    }

    /// A command for PostgreSQL program `program`, in the node's lab host if
    /// it has one.
    fn command(&self, program: &str) -> std::process::Command {
        self.env.command_in(self.lab_host.as_ref(), program)
    }

    /// The node's name, `pg0`, `pg1`, ... (also its `cluster_name` and, on
    /// standbys, the `application_name` shown in `pg_stat_replication`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address clients reach the server at: `127.0.0.1`, or the lab
    /// host's address (`10.213.0.11`...) in a lab.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port the server listens on (5432 in a lab).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Changes the port (cluster start-up retries after a port collision).
    pub(crate) fn set_port(&mut self, port: u16) {
        self.port = port;
    }

    /// The data directory (`PGDATA`), as passed to hooks as `%D`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory holding the server's unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The server log file (`pg_ctl -l`).
    pub fn log_path(&self) -> &Path {
        &self.log_file
    }

    /// The last `lines` lines of the server log (empty if there is none yet).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = match fs::read(&self.log_file) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => return String::new(),
        };
        let all: Vec<&str> = text.lines().collect();
        all.get(all.len().saturating_sub(lines)..)
            .unwrap_or_default()
            .join("\n")
    }

    /// The superuser created by `initdb`: `postgres` (trusted over the unix
    /// socket and over TCP from 127.0.0.1, and from the lab subnet in a lab).
    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    /// A libpq conninfo string for this server over TCP:
    /// `host=127.0.0.1 port=.. user=.. password=.. dbname=..` (`host=<lab host
    /// ip> port=5432` in a lab).
    pub fn conninfo(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host={} port={} user={} password={} dbname={}",
            self.host,
            self.port,
            conninfo_value(user),
            conninfo_value(password),
            conninfo_value(db)
        )
    }

    /// The pid of the running postmaster, from `postmaster.pid`; `None` when
    /// the server is not running (no pid file, or a stale one left by a
    /// crash).
    pub fn postmaster_pid(&self) -> Option<i32> {
        let pid = self.pid_in_lock_file()?;
        procfs::is_live_postgres(pid).then_some(pid)
    }

    /// The pid written in `postmaster.pid`, live or not.
    fn pid_in_lock_file(&self) -> Option<i32> {
        first_line_pid(&self.data_dir.join("postmaster.pid"))
    }

    /// Whether the postmaster is running.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    /// Starts the server (`pg_ctl start -w`) and waits until it accepts
    /// connections; works for a primary and a standby alike, after a clean stop
    /// or a crash. A no-op when it is already running.
    pub fn start(&self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.try_start().map_err(anyhow::Error::from)
    }

    /// Starts the server, telling a port collision apart from other failures.
    pub(crate) fn try_start(&self) -> Result<(), StartError> {
        self.remove_stale_lock_file().map_err(StartError::Other)?;
        let log_offset = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("-w")
            .args(["-t", PG_CTL_TIMEOUT_SECS])
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file);
        let Err(e) = self
            .env
            .run(&mut cmd, None, &format!("{}: start", self.name))
        else {
            return Ok(());
        };
        let new_log = fs::read(&self.log_file)
            .ok()
            .and_then(|bytes| {
                let offset = usize::try_from(log_offset).ok()?;
                bytes
                    .get(offset..)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            })
            .unwrap_or_default();
        // pg_ctl may give up while the server is still starting.
        self.force_stop();
        let e = self.with_log(e);
        if new_log.contains("could not bind") || new_log.contains("Address already in use") {
            Err(StartError::PortInUse(e))
        } else {
            Err(StartError::Other(e))
        }
    }

    /// Removes `postmaster.pid` and the socket lock file when the pid they
    /// name is not a live postgres process: dead, recycled, or a zombie.
    /// After `kill -9`, PID 1 may reap the postmaster late, and PostgreSQL
    /// treats a zombie as a running postmaster.
    fn remove_stale_lock_file(&self) -> anyhow::Result<()> {
        let lock_files = [
            self.data_dir.join("postmaster.pid"),
            self.dir.join(format!(".s.PGSQL.{}.lock", self.port)),
        ];
        for path in lock_files {
            let Some(pid) = first_line_pid(&path) else {
                continue;
            };
            if procfs::is_live_postgres(pid) {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("{}: remove stale {}", self.name, path.display())
                    });
                }
            }
        }
        Ok(())
    }

    /// Stops the server (`pg_ctl stop -m fast|immediate -w`) and waits for the
    /// postmaster to exit. A no-op when it is not running.
    pub fn stop(&self, mode: StopMode) -> anyhow::Result<()> {
        let Some(pid) = self.postmaster_pid() else {
            return Ok(());
        };
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop")
            .args(["-m", mode.as_pg_ctl()])
            .arg("-w")
            .args(["-t", PG_CTL_TIMEOUT_SECS])
            .arg("-D")
            .arg(&self.data_dir);
        self.env
            .run(
                &mut cmd,
                None,
                &format!("{}: stop -m {}", self.name, mode.as_pg_ctl()),
            )
            .map_err(|e| self.with_log(e))?;
        wait_until(
            Duration::from_secs(10),
            &format!("{} postmaster to exit", self.name),
            || !procfs::is_live_postgres(pid),
        )
        .map_err(|e| self.with_log(e))
    }

    /// Stops the server (fast) and starts it again.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop(StopMode::Fast)?;
        self.start()
    }

    /// Promotes a standby (`pg_ctl promote -w`): it leaves recovery and
    /// becomes a primary.
    pub fn promote(&self) -> anyhow::Result<()> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("promote")
            .arg("-w")
            .args(["-t", PG_CTL_TIMEOUT_SECS])
            .arg("-D")
            .arg(&self.data_dir);
        self.env
            .run(&mut cmd, None, &format!("{}: promote", self.name))
            .map(drop)
            .map_err(|e| self.with_log(e))
    }

    /// Simulates a crash: `SIGKILL` to the postmaster (pid from
    /// `postmaster.pid`). Returns once the postmaster is gone and its children
    /// (which notice their parent's death) have exited, so [`Node::start`] can
    /// run crash recovery right away; children still alive after 10 s are
    /// killed too.
    pub fn kill9(&self) -> anyhow::Result<()> {
        let pid = self
            .postmaster_pid()
            .with_context(|| format!("{}: kill -9: server is not running", self.name))?;
        let children = procfs::children_of(pid);
        kill(Pid::from_raw(pid), Signal::SIGKILL)
            .with_context(|| format!("{}: kill -9 {pid}", self.name))?;
        wait_until(
            Duration::from_secs(10),
            &format!("{} postmaster {pid} to die", self.name),
            || !procfs::is_live_postgres(pid),
        )?;
        reap_children(&self.name, &children, Duration::from_secs(10))
    }

    /// Stops the server whatever it takes, ignoring errors: `pg_ctl stop -m
    /// immediate`, then `SIGKILL` to the postmaster and its children.
    pub(crate) fn force_stop(&self) {
        let Some(pid) = self.postmaster_pid() else {
            return;
        };
        let children = procfs::children_of(pid);
        let mut cmd = self.command("pg_ctl");
        cmd.args(["stop", "-m", "immediate", "-w", "-t", "10", "-D"])
            .arg(&self.data_dir);
        let _ = self.env.run(&mut cmd, None, "stop");
        if procfs::is_live_postgres(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = wait_until(Duration::from_secs(5), "postmaster to die", || {
                !procfs::is_live_postgres(pid)
            });
        }
        let _ = reap_children(&self.name, &children, Duration::from_secs(5));
    }

    /// Runs SQL as the superuser in database `postgres`; see [`Node::psql_db`].
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        self.psql_db("postgres", sql)
    }

    /// Runs SQL (one or more statements, fed on stdin) with `psql -X -q -At -v
    /// ON_ERROR_STOP=1` as the superuser over the unix socket, in database
    /// `db`. Returns the trimmed output: unaligned, tuples only, `|` between
    /// columns, one row per line. The error carries psql's stderr.
    pub fn psql_db(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .env("PGHOST", &self.dir)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.superuser)
            .env("PGDATABASE", db)
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGAPPNAME", "pgwarden-testkit");
        let output = self
            .env
            .run(&mut cmd, Some(sql), &format!("{}: psql", self.name))
            .map_err(|e| {
                if e.to_string().contains("connection to server") {
                    self.with_log(e)
                } else {
                    e
                }
            })?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Whether the server is a standby (`pg_is_in_recovery()`).
    pub fn is_in_recovery(&self) -> anyhow::Result<bool> {
        match self.psql("SELECT pg_is_in_recovery()")?.as_str() {
            "t" => Ok(true),
            "f" => Ok(false),
            other => anyhow::bail!("{}: unexpected pg_is_in_recovery() = {other:?}", self.name),
        }
    }

    /// Waits until the server accepts connections (`pg_isready`).
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_until(
            timeout,
            &format!("{} to accept connections", self.name),
            || {
                let mut cmd = self.command("pg_isready");
                cmd.arg("-q").arg("-h").arg(&self.dir).args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    &self.superuser,
                    "-d",
                    "postgres",
                    "-t",
                    "2",
                ]);
                self.env.run(&mut cmd, None, "pg_isready").is_ok()
            },
        )
        .map_err(|e| self.with_log(e))
    }

    /// Adds the node name (if missing) and the tail of the server log to an
    /// error.
    pub(crate) fn with_log(&self, e: anyhow::Error) -> anyhow::Error {
        let message = format!("{e:#}");
        let message = if message.starts_with(&self.name) {
            message
        } else {
            format!("{}: {message}", self.name)
        };
        let tail = self.log_tail(LOG_TAIL_LINES);
        if tail.is_empty() {
            anyhow::anyhow!(
                "{message}\n(server log {} is empty)",
                self.log_file.display()
            )
        } else {
            anyhow::anyhow!(
                "{message}\n--- last lines of {} ---\n{tail}",
                self.log_file.display()
            )
        }
    }

    /// Writes the per-node settings file into the data dir.
    pub(crate) fn write_node_conf(&self) -> anyhow::Result<()> {
        let mut contents = format!(
            "# written by pgwarden-testkit for {name}\n\
             port = {port}\n\
             unix_socket_directories = {socket_dir}\n\
             cluster_name = {name_literal}\n",
            name = self.name,
            port = self.port,
            socket_dir = conf_literal(&self.dir.to_string_lossy()),
            name_literal = conf_literal(&self.name),
        );
        if self.lab_host.is_some() {
            // Every address of the host: its own and the delegate IP.
            contents.push_str("listen_addresses = '*'\n");
        }
        self.env
            .write_file(&self.data_dir.join(NODE_CONF), &contents)
    }
}

/// The pid on the first line of a PostgreSQL lock file (`postmaster.pid`,
/// `.s.PGSQL.<port>.lock`). A negative pid (a standalone backend) counts as
/// its absolute value.
fn first_line_pid(path: &Path) -> Option<i32> {
    let text = fs::read_to_string(path).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    pid.checked_abs()
}

/// Waits for `children` of a dead postmaster to exit, `SIGKILL`ing those
/// still alive after `grace`. Only processes named `postgres` count, so a
/// recycled pid is never killed.
fn reap_children(name: &str, children: &[i32], grace: Duration) -> anyhow::Result<()> {
    let gone = |c: &[i32]| c.iter().all(|pid| !procfs::is_live_postgres(*pid));
    if wait_until(grace, "children to exit", || gone(children)).is_ok() {
        return Ok(());
    }
    for pid in children {
        if procfs::is_live_postgres(*pid) {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
    wait_until(
        Duration::from_secs(5),
        &format!("{name} server processes to die"),
        || gone(children),
    )
}

/// A value in a libpq conninfo string, quoted when needed.
fn conninfo_value(value: &str) -> String {
    if !value.is_empty() && !value.contains([' ', '\'', '\\', '=', '\t', '\n']) {
        return value.to_owned();
    }
    let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
    format!("'{escaped}'")
}

/// A string literal in `postgresql.conf`.
pub(crate) fn conf_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_quotes_only_when_needed() {
        let env = Arc::new(PgEnv {
            bin_dir: PathBuf::from("/nonexistent"),
            os_user: None,
            home: PathBuf::from("/tmp"),
        });
        let node = Node::new("pg0".into(), PathBuf::from("/tmp/x/pg0"), 5433, env);
        assert_eq!(
            node.conninfo("alice", "s3cret", "postgres"),
            "host=127.0.0.1 port=5433 user=alice password=s3cret dbname=postgres"
        );
        assert_eq!(
            node.conninfo("bob", "it's a \\pw", ""),
            r"host=127.0.0.1 port=5433 user=bob password='it\'s a \\pw' dbname=''"
        );
        assert_eq!(node.data_dir(), Path::new("/tmp/x/pg0/data"));
        assert_eq!(node.socket_dir(), Path::new("/tmp/x/pg0"));
        assert!(!node.is_running());
        assert_eq!(node.postmaster_pid(), None);
    }

    #[test]
    fn conf_literal_doubles_quotes() {
        assert_eq!(conf_literal("it's"), "'it''s'");
    }
}
