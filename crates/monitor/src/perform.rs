//! Carries out the machine's failover actions (promote, repoint, rejoin)
//! with the builtin SQL or the hook commands of [`crate::actions`]; each
//! result comes back to the deciding loop as an [`Event`].

use std::time::Duration;

use pgwarden_config::FailoverMode;
use tokio::sync::mpsc;

use crate::actions::{self, Placeholders, Target};
use crate::checks::{self, CheckSettings, CheckTarget};
use crate::machine::{Action, Event, synchronous};
use crate::settings::{FailoverSettings, Settings};

/// Starts a failover action; its result comes back as an [`Event`].
pub(crate) fn perform(action: Action, settings: &Settings, events: &mpsc::Sender<Event>) {
    // An action on a backend that is not configured starts nothing.
    let _ = start(action, settings, events);
}

/// [`perform`]: `None` when the action names a backend that is not
/// configured.
fn start(action: Action, settings: &Settings, events: &mpsc::Sender<Event>) -> Option<()> {
    match action {
        Action::Publish => {}
        Action::Rejoin {
            id,
            primary,
            attempt,
        } => {
            let (target, primary) = backends(settings, id, primary)?;
            let f = settings.failover.clone();
            spawn(events, async move {
                let result = rejoin(&f, &target, &primary).await;
                Event::Rejoined {
                    id,
                    attempt,
                    result,
                }
            });
        }
        Action::SetSynchronous { id, set } => {
            let target = settings.backends.get(id).cloned()?;
            let f = settings.failover.clone();
            spawn(events, async move {
                let names = synchronous::standby_names(set.as_ref());
                let members: Vec<String> = set
                    .as_ref()
                    .map(|s| s.standbys.iter().cloned().collect())
                    .unwrap_or_default();
                let result = actions::builtin::set_synchronous(
                    &target, &f.login, &names, &members, f.timeout,
                )
                .await
                .map_err(|e| e.to_string());
                Event::SynchronousSet { id, set, result }
            });
        }
        Action::Promote {
            id,
            old_primary,
            drain,
            synchronous_standby_names,
        } => {
            let target = settings.backends.get(id).cloned()?;
            let replaced = old_primary
                .filter(|o| *o != id)
                .and_then(|o| settings.backends.get(o).cloned());
            let old = replaced.clone().unwrap_or_else(|| target.clone());
            let f = settings.failover.clone();
            let login = settings.checks.clone();
            spawn(events, async move {
                if let Some(old) = replaced.filter(|_| f.mode == FailoverMode::Builtin) {
                    if drain && !f.drain_timeout.is_zero() {
                        let_finish(&f, &old).await;
                    }
                    fence(&f, &old, &target).await;
                }
                let mut result = promote(&f, &login, &target, &old).await;
                if let (Ok(_), Some(names)) = (&result, synchronous_standby_names) {
                    // Before it takes writes. Naming standbys (strict) that
                    // fails fences it like a failed promotion: it must not
                    // acknowledge commits without the copies promised.
                    // Clearing it ("on") is made again once it is primary.
                    let members = synchronous::named_in(&names);
                    let set = actions::builtin::set_synchronous(
                        &target, &f.login, &names, &members, f.timeout,
                    );
                    match set.await {
                        Ok(_) => {}
                        Err(e) if names.is_empty() => {
                            tracing::warn!(backend = id, error = %e, "could not clear the promoted server's synchronous_standby_names");
                        }
                        Err(e) => {
                            result = Err(format!(
                                "promoted, but synchronous_standby_names could not be set: {e}"
                            ));
                        }
                    }
                }
                if let Err(e) = &result {
                    tracing::error!(backend = id, error = %e, "promotion failed");
                }
                Event::Promoted { id, result }
            });
        }
        Action::Follow {
            id,
            new_primary,
            old_primary,
        } => {
            let (standby, primary) = backends(settings, id, new_primary)?;
            let old = old_primary
                .and_then(|o| settings.backends.get(o).cloned())
                .unwrap_or_else(|| primary.clone());
            let f = settings.failover.clone();
            spawn(events, async move {
                let result = follow(&f, &standby, &primary, &old).await;
                if let Err(e) = &result {
                    tracing::warn!(backend = id, error = %e, "repointing a standby failed");
                }
                Event::Followed { id, result }
            });
        }
    }
    Some(())
}

/// Runs `action` in a task of its own, then sends the event it ends with.
fn spawn(events: &mpsc::Sender<Event>, action: impl Future<Output = Event> + Send + 'static) {
    let events = events.clone();
    tokio::spawn(async move {
        let _ = events.send(action.await).await;
    });
}

/// Backends `a` and `b`, when both are configured.
fn backends(settings: &Settings, a: usize, b: usize) -> Option<(Target, Target)> {
    Some((
        settings.backends.get(a)?.clone(),
        settings.backends.get(b)?.clone(),
    ))
}

/// Runs `failover.rejoin_command` for backend `target`, to follow `primary`.
async fn rejoin(f: &FailoverSettings, target: &Target, primary: &Target) -> Result<(), String> {
    let p = placeholders(target, primary, primary);
    run_hook(
        "failover.rejoin_command",
        &f.rejoin_command,
        &p,
        f.rejoin_timeout,
    )
    .await
}

/// The placeholders of a hook about `node`, with `new_main` the new
/// primary and `old` the old main and old primary.
fn placeholders(node: &Target, new_main: &Target, old: &Target) -> Placeholders {
    Placeholders {
        node: node.clone(),
        new_main: new_main.clone(),
        old_main_id: old.id,
        old_primary: old.clone(),
    }
}

/// Runs hook `name`, `template` with the placeholders `p`, within
/// `timeout`; how it failed as a message.
async fn run_hook(
    name: &str,
    template: &str,
    p: &Placeholders,
    timeout: Duration,
) -> Result<(), String> {
    let cmd = actions::command::expand(template, p);
    actions::command::run_hook(name, &cmd, timeout)
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

/// A switchover: the proxies hold new transactions (the published state
/// says so); waits, at most `failover.switchover_drain_timeout`, until the
/// old primary runs no client transaction, so none is cut. The fence after
/// it ends whatever still runs.
async fn let_finish(f: &FailoverSettings, old: &Target) {
    match actions::builtin::drain(old, &f.login, f.drain_timeout).await {
        Ok(0) => {
            tracing::info!(backend = %old.label(), "switchover: the old primary's running transactions finished")
        }
        Ok(left) => {
            tracing::warn!(backend = %old.label(), left, timeout = ?f.drain_timeout, "switchover: transactions still running on the old primary after failover.switchover_drain_timeout; the fence ends them")
        }
        Err(e) => {
            tracing::info!(backend = %old.label(), error = %e, "switchover: could not wait for the old primary's transactions; fencing it now")
        }
    }
}

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
            let p = placeholders(old, target, old);
            run_hook("failover.command", &f.command, &p, f.timeout).await?;
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
            let p = placeholders(standby, primary, old);
            run_hook(
                "failover.follow_primary_command",
                &f.follow_command,
                &p,
                f.timeout,
            )
            .await
        }
    }
}
