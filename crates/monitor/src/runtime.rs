//! The monitor daemon: checks feed the [`Machine`], its actions are
//! performed here, and every committed generation is persisted and published
//! on `monitor.sock`.

use std::future::Future;

use pgwarden_proto::v1::{BackendState, ClusterState};
use tokio::sync::broadcast;

use crate::machine::{Action, Machine};
use crate::operator;
use crate::parts::{Parts, StartError, start};
use crate::perform::perform;
use crate::service::Command;
use crate::settings::Settings;
use crate::state_file;
use crate::timeline::{Timeline, now_ms};

/// Runs the monitor until `shutdown` completes.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let persisted = state_file::load(&settings.state_dir)?;
    let machine = Machine::new(settings.specs(), settings.limits, &persisted)
        .with_synchronous(settings.keeper());
    let parts = start(&settings, snapshot(&machine, &settings.node)).await?;
    tracing::info!(
        backends = settings.backends.len(),
        generation = persisted.generation,
        consensus = settings.consensus,
        "pgwarden-monitor checking backends"
    );
    // Sockets bound, state loaded.
    pgwarden_daemon::notify::ready();
    if settings.consensus {
        crate::consensus::run(settings, parts, shutdown).await
    } else {
        run_alone(settings, machine, parts, shutdown).await
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
    let mut timeline = Timeline::load(&settings.state_dir);
    p.history_tx.send_replace(timeline.records());
    // systemd's watchdog hears from this loop: a stuck loop stops it.
    let mut pinger = pgwarden_daemon::notify::Pinger::from_env();
    loop {
        pinger.ping();
        let seen = timeline.version();
        let (actions, reply) = tokio::select! {
            _ = &mut shutdown => break,
            () = pinger.due() => continue,
            Some(e) = p.events.recv() => {
                timeline.before(&machine, &e, now_ms());
                (machine.step(e), None)
            }
            Some(c) = p.commands.recv() => match c {
                // Alone, this monitor always decides (`forwarded` is moot).
                Command::Change { ask, reply, .. } => {
                    timeline.mark(&machine);
                    let (actions, answer) = operator::decide(&mut machine, ask, settings.rejoin_enabled());
                    (actions, Some((reply, answer)))
                }
                Command::Recheck => {
                    p.recheck.notify_waiters();
                    (Vec::new(), None)
                }
                Command::Routed { generation, at_ms, detail } => {
                    let kept = timeline.routed(generation, at_ms, &detail);
                    tracing::debug!(generation, kept, "the proxy reported its first transaction on a new primary");
                    (Vec::new(), None)
                }
            },
        };
        for action in actions {
            if action == Action::Publish {
                // GetCluster never lags behind a published generation (an
                // operator's `promote --wait` reads it right after).
                p.current_tx
                    .send_replace(snapshot(&machine, &settings.node));
                publish_local(&machine, &settings, &p.generations);
            } else {
                perform(action, &settings, &p.events_tx);
            }
        }
        timeline.after(&machine, now_ms());
        if timeline.version() != seen {
            p.history_tx.send_replace(timeline.records());
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

/// Commits a generation without a watchdog: persist, then tell the watchers.
fn publish_local(
    machine: &Machine,
    settings: &Settings,
    generations: &broadcast::Sender<ClusterState>,
) {
    if let Err(e) = state_file::save(&settings.state_dir, &machine.committed()) {
        // Keep going: the live state is right; a restart would reconcile
        // from the servers themselves.
        tracing::error!(error = %e, "could not persist the cluster state");
    }
    let s = snapshot(machine, &settings.node);
    tracing::info!(generation = s.generation, primary = ?s.primary_id, "cluster state committed");
    let _ = generations.send(s);
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
        switchover_in_progress: m.switchover_in_progress(),
        failover_blocked: m.blocked.clone().unwrap_or_default(),
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
                    role: PRole::from(b.role) as i32,
                    status: PStatus::from(b.status) as i32,
                    reason: b.reason.clone(),
                    replay_lsn: o.map_or(0, |o| o.replay_lsn),
                    flush_lsn: o.map_or(0, |o| o.flush_lsn),
                    lag_bytes: m.lag_bytes(i),
                    lag_seconds: m.lag_seconds(i),
                    timeline: o.map_or(0, |o| o.timeline),
                    streaming: o.is_some_and(|o| o.streaming),
                    last_check_unix_ms: b.last_check_ms,
                    failed_checks: b.failures,
                    synchronous: m.is_synchronous(i),
                }
            })
            .collect(),
    }
}
