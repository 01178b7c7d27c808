//! Bringing the cluster back after faults: waiting until it has one
//! leader holding the delegate IP, one primary with every other server
//! streaming from it, every backend up, and rejoining former primaries.

use std::time::{Duration, Instant};

use crate::Status;
use crate::lab::Fleet;

/// Whether synchronous mode is on: then a synchronous standby is part of
/// "settled".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    /// A standby must be synchronous (`pg_stat_replication.sync_state`).
    pub synchronous: bool,
}

/// Waits up to `bound` until the cluster has settled; returns how long it
/// took, or what was still wrong. Detached backends are rejoined
/// (`pgwardenctl rejoin`, as an operator would) on the way.
pub async fn settle(fleet: &Fleet, want: Want, bound: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut wrong = String::from("nothing checked yet");
    let mut rejoins = 0;
    while start.elapsed() < bound {
        match check(fleet, want).await {
            Ok(()) => return Ok(start.elapsed()),
            Err(Wrong::Detached(leader, name)) if rejoins < 6 => {
                rejoins += 1;
                let config = fleet.config(leader);
                let n = name.clone();
                let run = tokio::task::spawn_blocking(move || {
                    crate::pgwardenctl(&config, &["rejoin", &n, "--wait", "--timeout", "120s"])
                })
                .await;
                wrong = match run {
                    Ok(r) if r.code == 0 => format!("{name} rejoined"),
                    Ok(r) => format!("rejoin {name}: {}", r.stderr.trim()),
                    Err(e) => format!("rejoin {name}: {e}"),
                };
                eprintln!("faults: {wrong}");
            }
            Err(w) => wrong = w.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("not settled after {bound:?}: {wrong}"))
}

/// What keeps the cluster from being settled.
enum Wrong {
    /// A backend is detached: (leader host, backend name).
    Detached(usize, String),
    /// Anything else, said in words.
    Other(String),
}

impl std::fmt::Display for Wrong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wrong::Detached(_, n) => write!(f, "{n} detached"),
            Wrong::Other(s) => f.write_str(s),
        }
    }
}

/// [`Wrong::Other`] from words.
fn other(s: impl Into<String>) -> Wrong {
    Wrong::Other(s.into())
}

/// One look at the cluster: `Ok` when it is settled (see [`settle`]).
async fn check(fleet: &Fleet, want: Want) -> Result<(), Wrong> {
    let n = fleet.nodes.len();
    let mut leaders = Vec::new();
    for i in 0..n {
        leaders.push(fleet.watchdog(i).await.map(|s| s.leader_id));
    }
    let Some(Some(leader_id)) = leaders.first().copied() else {
        return Err(other(format!("watchdog leaders: {leaders:?}")));
    };
    if leader_id == 0 || leaders.iter().any(|l| *l != Some(leader_id)) {
        return Err(other(format!("watchdog leaders: {leaders:?}")));
    }
    let leader = fleet.host_of_raft_id(leader_id);
    let holders = fleet.vip_holders();
    if holders != vec![leader] {
        return Err(other(format!(
            "delegate IP on {holders:?}, leader host {leader}"
        )));
    }
    let Some(state) = fleet.cluster_state(leader).await else {
        return Err(other("the leader's monitor does not answer"));
    };
    let Some(primary) = state.primary_id else {
        return Err(other("no primary"));
    };
    if state.failover_in_progress || state.switchover_in_progress {
        return Err(other("failover or switchover in progress"));
    }
    for b in &state.backends {
        if b.status == Status::Detached as i32 {
            return Err(Wrong::Detached(leader, b.name.clone()));
        }
        if b.status != Status::Up as i32 {
            return Err(other(format!("{} is {} ({})", b.name, b.status, b.reason)));
        }
    }
    let node = fleet.cluster.node(primary as usize);
    let sql = "SELECT count(*) FILTER (WHERE state = 'streaming'), \
               count(*) FILTER (WHERE sync_state IN ('sync', 'quorum')) FROM pg_stat_replication";
    let answer = node
        .psql(sql)
        .map_err(|e| other(format!("pg_stat_replication on the primary: {e:#}")))?;
    let (streaming, sync) = answer.split_once('|').unwrap_or(("0", "0"));
    if streaming.trim() != (n - 1).to_string() {
        return Err(other(format!(
            "{streaming} of {} standbys stream from the primary",
            n - 1
        )));
    }
    if want.synchronous && sync.trim() == "0" {
        return Err(other("no synchronous standby"));
    }
    Ok(())
}
