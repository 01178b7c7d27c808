//! The monitor daemon: checks feed the [`Machine`], its actions are
//! performed here, and every committed generation is persisted and published
//! on `monitor.sock`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pgwarden_config::{Config, FailoverMode};
use pgwarden_proto::v1::{BackendState, ClusterState};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::actions::{self, Placeholders, SqlLogin, Target};
use crate::checks::{self, CheckSettings, CheckTarget};
use crate::machine::{Action, BackendSpec, Event, Limits, Machine, Role, Status};
use crate::service::{Command, MonitorService};
use crate::state_file;

/// How failovers are carried out.
#[derive(Debug, Clone)]
pub struct FailoverSettings {
    /// Builtin SQL or pgpool-style hooks.
    pub mode: FailoverMode,
    /// Login for the builtin actions.
    pub login: SqlLogin,
    /// `failover.command`.
    pub command: String,
    /// `failover.follow_primary_command`.
    pub follow_command: String,
    /// Timeout of each action.
    pub timeout: Duration,
    /// `failover.rejoin_command` (empty: rejoin is refused).
    pub rejoin_command: String,
    /// `failover.rejoin_timeout`.
    pub rejoin_timeout: Duration,
}

/// The monitor's settings, from the node config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `node.name`.
    pub node: String,
    /// Where `monitor.sock` lives.
    pub runtime_dir: PathBuf,
    /// Where the state file lives.
    pub state_dir: PathBuf,
    /// The backends, by id.
    pub backends: Vec<Target>,
    /// `allow_failover` per backend.
    pub allow_failover: Vec<bool>,
    /// Thresholds.
    pub limits: Limits,
    /// Health checks.
    pub checks: CheckSettings,
    /// Failover actions.
    pub failover: FailoverSettings,
    /// `watchdog.enabled`: decide with the other nodes through the local
    /// watchdog (see [`crate::consensus`]) instead of alone.
    pub consensus: bool,
    /// Where Prometheus scrapes `/metrics`.
    pub metrics_listen: std::net::SocketAddr,
}

impl Settings {
    /// Takes the monitor's part of the node config.
    pub fn from_config(c: &Config) -> Settings {
        let hc = &c.health_check;
        Settings {
            consensus: c.watchdog.enabled,
            metrics_listen: c.monitor.metrics_listen,
            node: c.node.name.clone(),
            runtime_dir: c.node.runtime_dir.clone(),
            state_dir: c.node.state_dir.clone(),
            backends: c
                .backends
                .iter()
                .map(|b| Target {
                    id: b.id,
                    name: b.name.clone(),
                    host: b.host.clone(),
                    port: b.port,
                    data_dir: b.data_dir.clone(),
                })
                .collect(),
            allow_failover: c.backends.iter().map(|b| b.allow_failover).collect(),
            limits: Limits {
                max_retries: hc.max_retries,
                max_lag_bytes: c.replication_check.max_lag_bytes,
            },
            checks: CheckSettings {
                period: hc.period,
                timeout: hc.timeout,
                retry_delay: hc.retry_delay,
                user: hc.user.clone(),
                password: hc.password.as_ref().map(|p| p.expose().to_owned()),
                database: hc.database.clone(),
            },
            failover: FailoverSettings {
                mode: c.failover.mode,
                login: SqlLogin {
                    user: c.failover.user.clone(),
                    password: c.failover.password.as_ref().map(|p| p.expose().to_owned()),
                    database: hc.database.clone(),
                    connect_timeout: hc.timeout.max(Duration::from_secs(2)),
                },
                command: c.failover.command.clone(),
                follow_command: c.failover.follow_primary_command.clone(),
                timeout: c.failover.command_timeout,
                rejoin_command: c.failover.rejoin_command.clone(),
                rejoin_timeout: c.failover.rejoin_timeout,
            },
        }
    }
}

/// Why the monitor could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state file is unreadable.
    #[error("node.state_dir: {0}")]
    State(#[from] state_file::StateFileError),
    /// The socket could not be bound.
    #[error("node.runtime_dir: {0}")]
    Socket(String),
}

/// What both ways of running share: the API, the checks, the channels.
pub(crate) struct Parts {
    pub(crate) events_tx: mpsc::Sender<Event>,
    pub(crate) events: mpsc::Receiver<Event>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) current_tx: watch::Sender<ClusterState>,
    pub(crate) generations: broadcast::Sender<ClusterState>,
    pub(crate) ready_tx: watch::Sender<bool>,
    pub(crate) stop: CancellationToken,
    pub(crate) recheck: Arc<Notify>,
    server: tokio::task::JoinHandle<()>,
}

/// The backends as the machine sees them.
pub(crate) fn specs(settings: &Settings) -> Vec<BackendSpec> {
    settings
        .backends
        .iter()
        .zip(&settings.allow_failover)
        .map(|(t, allow)| BackendSpec {
            name: t.name.clone(),
            host: t.host.clone(),
            port: t.port,
            allow_failover: *allow,
        })
        .collect()
}

/// Runs the monitor until `shutdown` completes.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let persisted = state_file::load(&settings.state_dir)?;
    let machine = Machine::new(specs(&settings), settings.limits, &persisted);
    let parts = start(&settings, snapshot(&machine, &settings.node)).await?;
    tracing::info!(
        backends = settings.backends.len(),
        generation = persisted.generation,
        consensus = settings.consensus,
        "pgwarden-monitor checking backends"
    );
    if settings.consensus {
        crate::consensus::run(settings, parts, shutdown).await
    } else {
        run_alone(settings, machine, parts, shutdown).await
    }
}

/// Binds `monitor.sock`, serves the API and starts the checks.
async fn start(settings: &Settings, first: ClusterState) -> Result<Parts, StartError> {
    let (events_tx, events) = mpsc::channel::<Event>(256);
    let (commands_tx, commands) = mpsc::channel::<Command>(16);
    let (current_tx, current_rx) = watch::channel(first);
    let (generations, _) = broadcast::channel::<ClusterState>(1024);
    let (ready_tx, ready_rx) = watch::channel(false);
    let stop = CancellationToken::new();
    let recheck = Arc::new(Notify::new());

    let path = pgwarden_proto::uds::socket_path(
        &settings.runtime_dir,
        pgwarden_proto::uds::Daemon::Monitor,
    );
    let listener = pgwarden_proto::uds::bind(&path)
        .await
        .map_err(|e| StartError::Socket(e.to_string()))?;
    let service = MonitorService {
        commands: commands_tx,
        current: current_rx.clone(),
        generations: generations.clone(),
        ready: ready_rx,
        stop: stop.clone(),
    };
    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        let (_health, health_service) =
            pgwarden_proto::uds::health_service(pgwarden_proto::v1::monitor_server::SERVICE_NAME)
                .await;
        let router = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(pgwarden_proto::v1::monitor_server::MonitorServer::new(
                service,
            ));
        if let Err(e) =
            pgwarden_proto::uds::serve(listener, router, server_stop.cancelled_owned()).await
        {
            tracing::error!(error = %e, "monitor API stopped");
        }
    });
    crate::metrics::spawn(settings.metrics_listen, current_rx.clone(), stop.clone()).await;
    for t in &settings.backends {
        let target = CheckTarget {
            id: t.id,
            host: t.host.clone(),
            port: t.port,
        };
        tokio::spawn(checks::run(
            target,
            settings.checks.clone(),
            events_tx.clone(),
            Arc::clone(&recheck),
            stop.clone(),
        ));
    }
    Ok(Parts {
        events_tx,
        events,
        commands,
        current_tx,
        generations,
        ready_tx,
        stop,
        recheck,
        server,
    })
}

impl Parts {
    /// Stops the checks and the API.
    pub(crate) async fn finish(self) {
        self.stop.cancel();
        let _ = self.server.await;
        tracing::info!("pgwarden-monitor stopped");
    }
}

/// Without a watchdog: this monitor decides alone and commits locally.
async fn run_alone(
    settings: Settings,
    mut machine: Machine,
    mut p: Parts,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    tokio::pin!(shutdown);
    loop {
        let (actions, reply) = tokio::select! {
            _ = &mut shutdown => break,
            Some(e) = p.events.recv() => (machine.step(e), None),
            Some(c) = p.commands.recv() => operator(&mut machine, c, &settings, &p.recheck),
        };
        for action in actions {
            if action == Action::Publish {
                publish_local(&machine, &settings, &p.generations);
            } else {
                perform(action, &settings, &p.events_tx);
            }
        }
        p.current_tx
            .send_replace(snapshot(&machine, &settings.node));
        // Operators hear back only once the change is persisted and published.
        if let Some((tx, r)) = reply {
            let _ = tx.send(r);
        }
        if machine.is_bootstrapped() && !*p.ready_tx.borrow() {
            p.ready_tx.send_replace(true);
        }
    }
    p.finish().await;
    Ok(())
}

/// An operator request against the machine that decides.
pub(crate) fn operator(
    machine: &mut Machine,
    c: Command,
    settings: &Settings,
    recheck: &Notify,
) -> (Vec<Action>, PendingReply) {
    match c {
        // Alone, this monitor always decides.
        Command::Forwarded(inner) => operator(machine, *inner, settings, recheck),
        Command::Rejoin(_, reply) if settings.failover.rejoin_command.trim().is_empty() => {
            let refusal = "failover.rejoin_command is not set: rejoin the backend by hand (pg_rewind or a new base backup), then attach it".to_owned();
            (Vec::new(), Some((reply, Err(refusal))))
        }
        Command::Rejoin(id, reply) => answer(machine.rejoin(id), reply),
        Command::Recheck => {
            recheck.notify_waiters();
            (Vec::new(), None)
        }
        Command::Attach(id, reply) => answer(machine.attach(id), reply),
        Command::Detach(id, reply) => answer(machine.detach(id), reply),
        Command::Promote(id, force, reply) => answer(machine.promote(id, force), reply),
    }
}

/// Commits a generation without a watchdog: persist, then tell the watchers.
fn publish_local(
    machine: &Machine,
    settings: &Settings,
    generations: &broadcast::Sender<ClusterState>,
) {
    if let Err(e) = state_file::save(&settings.state_dir, &machine.persisted()) {
        // Keep going: the live state is right; a restart would reconcile
        // from the servers themselves.
        tracing::error!(error = %e, "could not persist the cluster state");
    }
    let s = snapshot(machine, &settings.node);
    tracing::info!(generation = s.generation, primary = ?s.primary_id, "cluster state committed");
    let _ = generations.send(s);
}

pub(crate) type Reply = tokio::sync::oneshot::Sender<Result<String, String>>;
/// An answer held back until the request's actions are performed.
pub(crate) type PendingReply = Option<(Reply, Result<String, String>)>;

/// The actions of an operator request, and the answer to send once they are done.
pub(crate) fn answer(
    r: Result<(String, Vec<Action>), String>,
    reply: Reply,
) -> (Vec<Action>, PendingReply) {
    match r {
        Ok((msg, actions)) => {
            tracing::info!("{msg}");
            (actions, Some((reply, Ok(msg))))
        }
        Err(e) => (Vec::new(), Some((reply, Err(e)))),
    }
}

/// Starts a failover action; its result comes back as an [`Event`].
pub(crate) fn perform(action: Action, settings: &Settings, events: &mpsc::Sender<Event>) {
    match action {
        Action::Publish => {}
        Action::Rejoin {
            id,
            primary,
            attempt,
        } => {
            let (Some(target), Some(primary)) = (
                settings.backends.get(id).cloned(),
                settings.backends.get(primary).cloned(),
            ) else {
                return;
            };
            let f = settings.failover.clone();
            let events = events.clone();
            tokio::spawn(async move {
                let result = rejoin(&f, &target, &primary).await;
                let _ = events
                    .send(Event::Rejoined {
                        id,
                        attempt,
                        result,
                    })
                    .await;
            });
        }
        Action::Promote { id, old_primary } => {
            let (Some(target), events) = (settings.backends.get(id).cloned(), events.clone())
            else {
                return;
            };
            let replaced = old_primary
                .filter(|o| *o != id)
                .and_then(|o| settings.backends.get(o).cloned());
            let old = replaced.clone().unwrap_or_else(|| target.clone());
            let f = settings.failover.clone();
            let login = settings.checks.clone();
            tokio::spawn(async move {
                if let Some(old) = replaced.filter(|_| f.mode == FailoverMode::Builtin) {
                    fence(&f, &old, &target).await;
                }
                let result = promote(&f, &login, &target, &old).await;
                if let Err(e) = &result {
                    tracing::error!(backend = id, error = %e, "promotion failed");
                }
                let _ = events.send(Event::Promoted { id, result }).await;
            });
        }
        Action::Follow {
            id,
            new_primary,
            old_primary,
        } => {
            let (Some(standby), Some(primary)) = (
                settings.backends.get(id).cloned(),
                settings.backends.get(new_primary).cloned(),
            ) else {
                return;
            };
            let old = old_primary
                .and_then(|o| settings.backends.get(o).cloned())
                .unwrap_or_else(|| primary.clone());
            let f = settings.failover.clone();
            let events = events.clone();
            tokio::spawn(async move {
                let result = follow(&f, &standby, &primary, &old).await;
                if let Err(e) = &result {
                    tracing::warn!(backend = id, error = %e, "repointing a standby failed");
                }
                let _ = events.send(Event::Followed { id, result }).await;
            });
        }
    }
}

/// Runs `failover.rejoin_command` for backend `target`, to follow `primary`.
async fn rejoin(f: &FailoverSettings, target: &Target, primary: &Target) -> Result<(), String> {
    let p = Placeholders {
        node: target.clone(),
        new_main: primary.clone(),
        old_main_id: primary.id,
        old_primary: primary.clone(),
    };
    let cmd = actions::command::expand(&f.rejoin_command, &p);
    actions::command::run_hook("failover.rejoin_command", &cmd, f.rejoin_timeout)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// How long the builtin fence of a still reachable old primary may hold up
/// a promotion (a dead one refuses at once; only an unreachable host that
/// drops packets costs this much).
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a promotion waits, after fencing a reachable old primary, for
/// the standby to receive what the old primary flushed until the fence.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// Builtin mode: fences the primary being replaced at the database when it
/// is still reachable ([`actions::builtin::fence`]), so that clients
/// bypassing the proxy stop writing to it, then lets `candidate` receive
/// the WAL it flushed until then. Best effort, bounded by [`FENCE_TIMEOUT`]
/// and [`CATCH_UP_TIMEOUT`]; the promotion follows whatever happens. (In
/// command mode, fencing is `failover.command`'s job.)
async fn fence(f: &FailoverSettings, old: &Target, candidate: &Target) {
    match actions::builtin::fence(old, &f.login, FENCE_TIMEOUT).await {
        Ok(actions::builtin::Fenced::ReadOnly { flush_lsn, .. }) => {
            let lsn = pgwarden_proto::lsn::lsn_to_string(flush_lsn);
            match actions::builtin::wait_received(candidate, &f.login, flush_lsn, CATCH_UP_TIMEOUT)
                .await
            {
                Ok(true) => {
                    tracing::info!(backend = %candidate.label(), lsn, "the standby to promote received all the fenced primary flushed");
                }
                Ok(false) => {
                    tracing::warn!(backend = %candidate.label(), lsn, timeout = ?CATCH_UP_TIMEOUT, "the standby to promote did not receive all the fenced primary flushed in time; promoting anyway");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not tell whether the standby to promote received all the fenced primary flushed; promoting anyway");
                }
            }
        }
        Ok(actions::builtin::Fenced::Standby) => {
            tracing::info!(backend = %old.label(), "old primary is in recovery: nothing to fence");
        }
        Err(e) => {
            tracing::info!(error = %e, "old primary not fenced at the database (unreachable is the usual reason); promoting anyway");
        }
    }
}

async fn promote(
    f: &FailoverSettings,
    checks: &CheckSettings,
    target: &Target,
    old: &Target,
) -> Result<u32, String> {
    match f.mode {
        FailoverMode::Builtin => actions::builtin::promote(target, &f.login, f.timeout)
            .await
            .map(|p| p.timeline)
            .map_err(|e| e.to_string()),
        FailoverMode::Command => {
            let p = Placeholders {
                node: old.clone(),
                new_main: target.clone(),
                old_main_id: old.id,
                old_primary: old.clone(),
            };
            let cmd = actions::command::expand(&f.command, &p);
            actions::command::run_hook("failover.command", &cmd, f.timeout)
                .await
                .map_err(|e| e.to_string())?;
            wait_out_of_recovery(target, checks, f.timeout).await
        }
    }
}

/// After a failover command: the new primary must have left recovery.
async fn wait_out_of_recovery(
    target: &Target,
    s: &CheckSettings,
    timeout: Duration,
) -> Result<u32, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let probe = CheckTarget {
        id: target.id,
        host: target.host.clone(),
        port: target.port,
    };
    let mut client = None;
    loop {
        if let Some(o) = checks::check_once(&probe, s, &mut client)
            .await
            .outcome
            .observation()
            && !o.in_recovery
        {
            return Ok(o.timeline);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{} is still in recovery {timeout:?} after failover.command",
                target.name
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn follow(
    f: &FailoverSettings,
    standby: &Target,
    primary: &Target,
    old: &Target,
) -> Result<(), String> {
    match f.mode {
        FailoverMode::Builtin => actions::builtin::follow(standby, primary, &f.login, f.timeout)
            .await
            .map_err(|e| e.to_string()),
        FailoverMode::Command if f.follow_command.is_empty() => Ok(()),
        FailoverMode::Command => {
            let p = Placeholders {
                node: standby.clone(),
                new_main: primary.clone(),
                old_main_id: old.id,
                old_primary: old.clone(),
            };
            let cmd = actions::command::expand(&f.follow_command, &p);
            actions::command::run_hook("failover.follow_primary_command", &cmd, f.timeout)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}

/// The machine's view as the API shows it.
pub fn snapshot(m: &Machine, node: &str) -> ClusterState {
    use pgwarden_proto::v1::{Role as PRole, Status as PStatus};
    ClusterState {
        generation: m.generation(),
        primary_id: m.primary().map(|p| p as u32),
        failover_in_progress: m.failover_in_progress(),
        monitor: node.to_owned(),
        no_quorum: false,
        backends: m
            .backends()
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let o = b.last.as_ref();
                BackendState {
                    id: i as u32,
                    name: b.spec.name.clone(),
                    host: b.spec.host.clone(),
                    port: u32::from(b.spec.port),
                    role: match b.role {
                        Role::Primary => PRole::Primary,
                        Role::Standby => PRole::Standby,
                        Role::Unknown => PRole::Unknown,
                    } as i32,
                    status: match b.status {
                        Status::Up => PStatus::Up,
                        Status::Down => PStatus::Down,
                        Status::Detached => PStatus::Detached,
                    } as i32,
                    reason: b.reason.clone(),
                    replay_lsn: o.map_or(0, |o| o.replay_lsn),
                    flush_lsn: o.map_or(0, |o| o.flush_lsn),
                    lag_bytes: m.lag_bytes(i),
                    lag_seconds: m.lag_seconds(i),
                    timeline: o.map_or(0, |o| o.timeline),
                    streaming: o.is_some_and(|o| o.streaming),
                    last_check_unix_ms: b.last_check_ms,
                    failed_checks: b.failures,
                }
            })
            .collect(),
    }
}
