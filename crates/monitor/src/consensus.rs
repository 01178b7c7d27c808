//! The monitor with a watchdog: decisions by the nodes together.
//!
//! Every node's monitor checks every backend and reports what it sees to its
//! watchdog (`ReportHealth`); the watchdogs commit those opinions through
//! Raft, so each node knows which backends a quorum sees down (pgpool-II's
//! failover_require_consensus). Only the monitor on the Raft leader's node
//! runs the failover [`Machine`], with [`Decider::Quorum`]: a backend is
//! down when a quorum says so, never on this node's word alone. Each new
//! generation it decides is proposed to the watchdogs as a compare-and-set
//! (`ProposeClusterChange`); only a committed generation counts, and the
//! failover actions that follow it run only after it is committed. Every
//! monitor, leader or not, publishes the committed record to its proxy, so
//! all proxies route to the same primary.
//!
//! A node whose checks fail but whose peers disagree does nothing but say
//! so: the backend shows as quarantined in its `status`.
//!
//! Fencing the minority: a node whose watchdog loses the quorum cannot know
//! whether the majority has moved the primary, so its monitor says so
//! (`no_quorum`) and its proxy stops routing at once. The watchdog notices
//! within two election timeouts (2 s); the leader's monitor therefore acts on
//! a quorum's "down" only after [`FENCE_DELAY`], so by the time a new primary
//! is promoted, any proxy cut off with the old one has stopped sending it writes.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use pgwarden_proto::uds::{self, Daemon};
use pgwarden_proto::v1::watchdog_client::WatchdogClient;
use pgwarden_proto::v1::{
    ClusterRecord, ClusterState, ProposeClusterChangeRequest, ReportHealthRequest,
    Status as PStatus, WatchLeadershipRequest, WatchdogStatus,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::machine::{Action, Decider, Event, Machine, Observation, Persisted, Status};
use crate::operator::{self, Ask};
use crate::parts::{Parts, StartError};
use crate::perform::perform;
use crate::service::Command;
use crate::settings::Settings;

/// How long a backend must have been down by quorum before the leader's
/// monitor acts on it: longer than a cut-off node takes to notice it has no
/// quorum (two election timeouts) and fence its proxy.
pub const FENCE_DELAY: Duration = Duration::from_millis(2500);

/// Where an operator's answer goes.
type Reply = tokio::sync::oneshot::Sender<Result<String, String>>;

/// What this node last saw of each backend.
#[derive(Debug, Clone, Default)]
struct Local {
    last: Option<Result<Observation, String>>,
    failures: u32,
    at_ms: i64,
}

/// Runs the monitor with the watchdog until `shutdown` completes.
pub(crate) async fn run(
    settings: Settings,
    mut p: Parts,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let path = uds::socket_path(&settings.runtime_dir, Daemon::Watchdog);
    let mut client = WatchdogClient::new(uds::connect_lazy(&path));
    let (status_tx, mut status_rx) = watch::channel::<Option<WatchdogStatus>>(None);
    tokio::spawn(follow_watchdog(client.clone(), status_tx, p.stop.clone()));
    let n = settings.backends.len();
    let (desired_tx, desired_rx) = watch::channel::<BTreeMap<String, bool>>(BTreeMap::new());
    tokio::spawn(report_health(
        client.clone(),
        desired_rx,
        status_rx.clone(),
        p.stop.clone(),
    ));

    let mut local = vec![Local::default(); n];
    // When each backend entered the quorum's down set.
    let mut down_since: BTreeMap<usize, tokio::time::Instant> = BTreeMap::new();
    let mut fed_down: Vec<usize> = Vec::new();
    let mut machine: Option<Machine> = None;
    let mut published = 0u64;
    let mut published_no_quorum = false;
    // The newest generation known committed: the record from the stream, or
    // what this monitor just had committed before the stream shows it.
    let mut committed = 0u64;
    tokio::pin!(shutdown);
    loop {
        // Wake up when a quorum's verdict has aged enough to act on.
        let next_ripe = down_since
            .values()
            .map(|t| *t + FENCE_DELAY)
            .filter(|t| *t > tokio::time::Instant::now())
            .min();
        let ripe = async {
            match next_ripe {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let (mut actions, mut reply) = tokio::select! {
            _ = &mut shutdown => break,
            _ = ripe => (Vec::new(), None),
            Some(e) = p.events.recv() => {
                if let Event::Checked { id, at_ms, result } = &e
                    && let Some(l) = local.get_mut(*id)
                {
                    l.failures = if result.is_ok() { 0 } else { l.failures.saturating_add(1) };
                    l.last = Some(result.clone());
                    l.at_ms = *at_ms;
                }
                // Alive without an observation: not failing, the last
                // observation stands (see `Event::AliveUnobserved`).
                if let Event::AliveUnobserved { id, at_ms, .. } = &e
                    && let Some(l) = local.get_mut(*id)
                {
                    l.failures = 0;
                    l.at_ms = *at_ms;
                }
                desired_tx.send_if_modified(|d| update_desired(d, &settings, &local));
                (machine.as_mut().map(|m| m.step(e)).unwrap_or_default(), None)
            }
            changed = status_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let status = status_rx.borrow_and_update().clone();
                let now_down = status.as_ref().and_then(|s| s.record.as_ref()).map(|r| quorum_down_ids(&settings, r)).unwrap_or_default();
                down_since.retain(|id, _| now_down.contains(id));
                for id in now_down {
                    down_since.entry(id).or_insert_with(tokio::time::Instant::now);
                }
                (Vec::new(), None)
            }
            Some(c) = p.commands.recv() => match (machine.as_mut(), c) {
                (_, Command::Recheck) => {
                    p.recheck.notify_waiters();
                    (Vec::new(), None)
                }
                (Some(m), Command::Change { ask, reply, .. }) => {
                    let (actions, answer) = operator::decide(m, ask, settings.rejoin_enabled());
                    (actions, Some((reply, answer)))
                }
                // Handed over by another node because this one led: never
                // handed on again (no loops), the operator retries.
                (None, Command::Change { forwarded: true, reply, .. }) => {
                    let _ = reply.send(Err("the lead moved while the request was on its way; retry".to_owned()));
                    (Vec::new(), None)
                }
                (None, Command::Change { ask, reply, .. }) => {
                    not_leader(ask, reply, &settings, &client);
                    (Vec::new(), None)
                }
            },
        };
        // Decide while this node's watchdog leads (and start again from the
        // committed record after a refused proposal).
        let deciding = machine.is_some();
        on_status(&settings, status_rx.borrow().as_ref(), &mut machine);
        if !deciding && let Some(m) = machine.as_mut() {
            actions.extend(bootstrap(m, &settings, &local, &ripe_down(&down_since)));
            fed_down = ripe_down(&down_since);
        }
        // Quorum verdicts old enough to act on.
        let ripe_now = ripe_down(&down_since);
        if ripe_now != fed_down {
            fed_down = ripe_now.clone();
            if let Some(m) = machine.as_mut() {
                actions.extend(m.step(Event::QuorumDown(ripe_now)));
            }
        }
        // Actions in order; a generation must commit before what follows it runs.
        for action in std::mem::take(&mut actions) {
            let Some(m) = machine.as_ref() else { break };
            if action == Action::Publish {
                let streamed = status_rx
                    .borrow()
                    .as_ref()
                    .and_then(|s| s.record.as_ref())
                    .map_or(0, |r| r.generation);
                let expected = streamed.max(committed);
                match propose(&mut client, m, expected).await {
                    Ok(()) => {
                        committed = m.generation();
                        tracing::info!(generation = committed, primary = ?m.primary(), "cluster state committed by the quorum");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster change not committed; re-deciding from the committed state");
                        machine = None;
                        // An operator request that caused it hears the truth.
                        if let Some((_, r)) = reply.as_mut() {
                            *r = Err(format!("not committed by the watchdogs: {e}"));
                        }
                    }
                }
            } else {
                perform(action, &settings, &p.events_tx);
            }
        }
        // What everyone sees: the committed record, with this node's live data.
        let status = status_rx.borrow().clone();
        if let Some(record) = status.as_ref().and_then(|s| s.record.as_ref())
            && record.generation > 0
        {
            let mut state = committed_state(&settings, record, &local, status.as_ref());
            state.no_quorum = !status.as_ref().is_some_and(|s| s.quorum);
            if state.no_quorum != published_no_quorum {
                published_no_quorum = state.no_quorum;
                if state.no_quorum {
                    tracing::warn!(
                        "this node's watchdog has no quorum: its proxy stops routing until it has"
                    );
                } else {
                    tracing::info!("quorum regained");
                }
                let _ = p.generations.send(state.clone());
            }
            if record.generation > published {
                published = record.generation;
                tracing::info!(generation = published, primary = ?record.primary, "following committed cluster state");
                let _ = p.generations.send(state.clone());
            }
            p.current_tx.send_replace(state);
            if !*p.ready_tx.borrow() {
                p.ready_tx.send_replace(true);
            }
        }
        if status.is_none() && !published_no_quorum && *p.ready_tx.borrow() {
            // The watchdog itself is gone: no quorum as far as this node knows.
            published_no_quorum = true;
            tracing::warn!("lost the local watchdog: its proxy stops routing until it is back");
            let mut state = p.current_tx.borrow().clone();
            state.no_quorum = true;
            p.current_tx.send_replace(state.clone());
            let _ = p.generations.send(state);
        }
        if let Some((tx, r)) = reply {
            let _ = tx.send(r);
        }
    }
    p.finish().await;
    Ok(())
}

/// Starts or stops deciding as this node's watchdog gains or loses the lead.
fn on_status(settings: &Settings, status: Option<&WatchdogStatus>, machine: &mut Option<Machine>) {
    let Some(s) = status else {
        *machine = None;
        return;
    };
    let leads = s.id != 0 && s.leader_id == s.id && s.quorum;
    if !leads {
        if machine.take().is_some() {
            tracing::info!(
                "this node's watchdog is no longer the leader: this monitor stops deciding"
            );
        }
        return;
    }
    if machine.is_none()
        && let Some(record) = s.record.as_ref()
    {
        tracing::info!(
            generation = record.generation,
            "this node's watchdog leads: this monitor decides failovers"
        );
        let persisted = Persisted {
            generation: record.generation,
            primary: record.primary.clone(),
            detached: record
                .detached
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        *machine = Some(
            Machine::new(settings.specs(), settings.limits, &persisted)
                .with_decider(Decider::Quorum),
        );
    }
}

/// A new deciding machine learns the quorum's verdicts and replays what this
/// node already saw, so its first decision need not wait for a round of checks.
fn bootstrap(m: &mut Machine, settings: &Settings, local: &[Local], down: &[usize]) -> Vec<Action> {
    let mut actions = m.step(Event::QuorumDown(down.to_vec()));
    for (id, l) in local.iter().enumerate() {
        match &l.last {
            Some(Ok(o)) => actions.extend(m.step(Event::Checked {
                id,
                at_ms: l.at_ms,
                result: Ok(o.clone()),
            })),
            Some(Err(e)) => {
                for _ in 0..l.failures.min(settings.limits.max_retries + 1) {
                    actions.extend(m.step(Event::Checked {
                        id,
                        at_ms: l.at_ms,
                        result: Err(e.clone()),
                    }));
                }
            }
            None => {}
        }
    }
    actions
}

/// Backends down by quorum for at least [`FENCE_DELAY`].
fn ripe_down(down_since: &BTreeMap<usize, tokio::time::Instant>) -> Vec<usize> {
    down_since
        .iter()
        .filter(|(_, t)| t.elapsed() >= FENCE_DELAY)
        .map(|(id, _)| *id)
        .collect()
}

/// An operator's request made to a monitor that does not decide: handed
/// to the leader's monitor through the watchdogs (as pgpool's pcp commands
/// work against any node), its answer passed back.
fn not_leader(ask: Ask, reply: Reply, settings: &Settings, watchdog: &WatchdogClient<Channel>) {
    let Some(backend) = settings.backends.get(ask.backend()) else {
        let _ = reply.send(Err(format!("no backend with id {}", ask.backend())));
        return;
    };
    let request = ask.forwarded(&backend.name);
    let mut watchdog = watchdog.clone();
    tokio::spawn(async move {
        let answer = match watchdog.forward_operator(request).await {
            Ok(r) => Ok(format!(
                "{} (decided by the leader's monitor)",
                r.into_inner().message
            )),
            // The leader's monitor's (or watchdog's) own refusal.
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                Err(status.message().to_owned())
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ) =>
            {
                Err(format!(
                    "the leader's monitor did not answer in time ({}): the change may still be made; check `pgwardenctl status`",
                    status.message()
                ))
            }
            Err(status) => Err(format!(
                "cannot hand the request to the leader's monitor: {}",
                status.message()
            )),
        };
        let _ = reply.send(answer);
    });
}

/// Backend ids a quorum sees down.
fn quorum_down_ids(settings: &Settings, record: &ClusterRecord) -> Vec<usize> {
    settings
        .backends
        .iter()
        .filter(|b| record.down_by_quorum.contains(&b.name))
        .map(|b| b.id)
        .collect()
}

/// Proposes the machine's current view as the next generation.
async fn propose(
    client: &mut WatchdogClient<Channel>,
    m: &Machine,
    expected: u64,
) -> Result<(), String> {
    let p = m.persisted();
    let down = m
        .backends()
        .iter()
        .filter(|b| b.status == Status::Down)
        .map(|b| (b.spec.name.clone(), b.reason.clone()))
        .collect();
    let request = ProposeClusterChangeRequest {
        expected_generation: expected,
        generation: p.generation,
        primary: p.primary,
        detached: p.detached.into_iter().collect(),
        failover_in_progress: m.failover_in_progress(),
        down,
    };
    let call = client.propose_cluster_change(request);
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(Ok(r)) if r.get_ref().committed => Ok(()),
        Ok(Ok(r)) => Err(r.into_inner().reason),
        Ok(Err(e)) => Err(e.message().to_owned()),
        Err(_) => Err("the watchdog did not answer within 10 s".into()),
    }
}

/// This node's opinion per backend: down after more than max_retries failed checks.
fn update_desired(d: &mut BTreeMap<String, bool>, settings: &Settings, local: &[Local]) -> bool {
    let mut changed = false;
    for (b, l) in settings.backends.iter().zip(local) {
        if l.last.is_none() {
            continue;
        }
        let down = l.failures > settings.limits.max_retries;
        if d.get(&b.name) != Some(&down) {
            d.insert(b.name.clone(), down);
            changed = true;
        }
    }
    changed
}

/// Keeps this node's votes in the committed record equal to its opinion,
/// reporting (and retrying) whatever differs.
async fn report_health(
    mut client: WatchdogClient<Channel>,
    mut desired: watch::Receiver<BTreeMap<String, bool>>,
    mut status: watch::Receiver<Option<WatchdogStatus>>,
    stop: CancellationToken,
) {
    loop {
        let want = desired.borrow_and_update().clone();
        let have: Option<(u64, BTreeSet<String>)> =
            status.borrow_and_update().as_ref().and_then(|s| {
                let r = s.record.as_ref()?;
                let mine = r
                    .down_votes
                    .iter()
                    .filter(|(_, ids)| ids.ids.contains(&s.id))
                    .map(|(b, _)| b.clone())
                    .collect();
                (s.id != 0).then_some((s.id, mine))
            });
        let mut failed = false;
        if let Some((_, mine)) = have {
            for (backend, down) in &want {
                if mine.contains(backend) == *down {
                    continue;
                }
                let call = client.report_health(ReportHealthRequest {
                    backend: backend.clone(),
                    down: *down,
                });
                match tokio::time::timeout(Duration::from_secs(10), call).await {
                    Ok(Ok(_)) => tracing::info!(backend, down, "reported to the watchdog"),
                    Ok(Err(e)) => {
                        tracing::debug!(backend, error = %e.message(), "health report not committed; retrying");
                        failed = true;
                    }
                    Err(_) => failed = true,
                }
            }
        }
        let retry = tokio::time::sleep(Duration::from_millis(if failed { 500 } else { 2000 }));
        tokio::select! {
            _ = stop.cancelled() => return,
            r = desired.changed() => if r.is_err() { return },
            r = status.changed() => if r.is_err() { return },
            _ = retry => {}
        }
    }
}

/// Streams the watchdog's status into `out`, reconnecting as needed.
async fn follow_watchdog(
    mut client: WatchdogClient<Channel>,
    out: watch::Sender<Option<WatchdogStatus>>,
    stop: CancellationToken,
) {
    let mut backoff = uds::reconnect_backoff();
    let mut lost = false;
    loop {
        let call = tokio::select! {
            _ = stop.cancelled() => return,
            r = client.watch_leadership(WatchLeadershipRequest {}) => r,
        };
        if let Ok(resp) = call {
            let mut stream = resp.into_inner();
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = stream.message() => m,
                };
                match msg {
                    Ok(Some(event)) => {
                        if lost {
                            tracing::info!("watchdog reachable again");
                            lost = false;
                        }
                        backoff = uds::reconnect_backoff();
                        out.send_replace(event.status);
                    }
                    _ => break,
                }
            }
        }
        if !lost {
            tracing::warn!("lost the local watchdog: this monitor stops deciding until it is back");
            lost = true;
        }
        // Without its watchdog this node cannot know the quorum's view.
        out.send_replace(None);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(1))) => {}
        }
    }
}

/// The committed record as a [`ClusterState`], with this node's live check
/// data (roles, WAL positions, lag); a backend up in the record that this
/// node cannot reach is shown quarantined.
fn committed_state(
    settings: &Settings,
    record: &ClusterRecord,
    local: &[Local],
    status: Option<&WatchdogStatus>,
) -> ClusterState {
    use pgwarden_proto::v1::{BackendState, Role as PRole};
    let obs = |i: usize| {
        local
            .get(i)
            .and_then(|l| l.last.as_ref())
            .and_then(|r| r.as_ref().ok())
    };
    let primary_id = record
        .primary
        .as_ref()
        .and_then(|p| settings.backends.iter().find(|b| b.name == *p))
        .map(|b| b.id);
    let primary_obs = primary_id.and_then(obs).filter(|o| !o.in_recovery);
    let voters = status.map_or(1, |s| s.members.len().max(1));
    let backends = settings
        .backends
        .iter()
        .map(|t| {
            let l = local.get(t.id).cloned().unwrap_or_default();
            let o = obs(t.id);
            let (st, reason) = if let Some(r) = record.detached.get(&t.name) {
                (PStatus::Detached, r.clone())
            } else if let Some(r) = record.down.get(&t.name) {
                (PStatus::Down, r.clone())
            } else if record.down_by_quorum.contains(&t.name) {
                (
                    PStatus::Down,
                    format!("a quorum of the {voters} nodes cannot reach it"),
                )
            } else if l.failures > settings.limits.max_retries {
                (
                    PStatus::Quarantined,
                    "this node cannot reach it, but the quorum does not agree: no failover"
                        .to_owned(),
                )
            } else {
                (PStatus::Up, String::new())
            };
            let standby = o.is_some_and(|o| o.in_recovery);
            BackendState {
                id: t.id as u32,
                name: t.name.clone(),
                host: t.host.clone(),
                port: u32::from(t.port),
                role: match o {
                    Some(o) if o.in_recovery => PRole::Standby,
                    Some(_) => PRole::Primary,
                    None => PRole::Unknown,
                } as i32,
                status: st as i32,
                reason,
                replay_lsn: o.map_or(0, |o| o.replay_lsn),
                flush_lsn: o.map_or(0, |o| o.flush_lsn),
                lag_bytes: match (o, primary_obs) {
                    (Some(o), Some(p)) if standby => {
                        p.flush_lsn.max(p.replay_lsn).saturating_sub(o.replay_lsn)
                    }
                    _ => 0,
                },
                lag_seconds: primary_obs
                    .and_then(|p| p.replica_lag.iter().find(|(n, _)| *n == t.name))
                    .map_or(0.0, |(_, secs)| *secs),
                timeline: o.map_or(0, |o| o.timeline),
                streaming: o.is_some_and(|o| o.streaming),
                last_check_unix_ms: l.at_ms,
                failed_checks: l.failures,
            }
        })
        .collect();
    ClusterState {
        generation: record.generation,
        primary_id: primary_id.map(|p| p as u32),
        backends,
        failover_in_progress: record.failover_in_progress,
        monitor: settings.node.clone(),
        no_quorum: false,
    }
}
