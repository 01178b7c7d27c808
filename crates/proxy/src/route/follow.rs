//! Following the monitor: the proxy routes by the newest cluster state.
//!
//! A long-lived `WatchCluster` stream on `monitor.sock` delivers each
//! committed generation. The primary of a generation is routable only when
//! its status is up; a newer generation with another primary (or none)
//! ends every session on the old one (57P01, see [`crate::frontend::session`]) and
//! drops its cached connections. Older or repeated generations are ignored:
//! the proxy never goes back to a primary it has seen replaced.
//!
//! If the monitor is unreachable for `proxy.monitor_stale_after`, the proxy
//! can no longer know which backend is the primary, so it stops routing
//! (fencing) and says why, instead of guessing. A restart of the monitor
//! alone is much shorter than that and disturbs nobody.
//!
//! After each change of primary (not the first primary it sees), the proxy
//! tells the monitor when it gave the first transaction a server on the new
//! one, and the sessions it moved and ended meanwhile (`ReportRouted`), for
//! the failover history.

use std::time::Duration;

use pgwarden_proto::uds::{self, Daemon};
use pgwarden_proto::v1::monitor_client::MonitorClient;
use pgwarden_proto::v1::{
    ClusterState, RecheckRequest, ReportRoutedRequest, Status, WatchClusterRequest,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::settings::BackendAddr;

/// Follows the monitor until `stop` fires.
pub async fn run(shared: &Shared, stop: &CancellationToken) {
    let s = &shared.settings;
    let path = uds::socket_path(&s.runtime_dir, Daemon::Monitor);
    let client = MonitorClient::new(uds::connect_lazy(&path));
    // Errors clients hit on the primary make the monitor check now (at most
    // every RECHECK_SPACING): failures are found sooner, and still only by
    // its checks. Not once a second: the first request often comes the
    // moment a server connection drops, while the postmaster still answers,
    // and the one that finds it gone must not wait a second behind it.
    let mut asker = client.clone();
    let asking = stop.clone();
    let router = &shared.router;
    let ask = async move {
        loop {
            tokio::select! {
                _ = asking.cancelled() => return,
                _ = router.recheck_requested() => {}
            }
            if let Err(e) = asker.recheck(RecheckRequest {}).await {
                tracing::debug!(error = %e, "could not ask the monitor for a recheck");
            }
            tokio::time::sleep(RECHECK_SPACING).await;
        }
    };
    let (lease_tx, lease_rx) = tokio::sync::watch::channel(0u64);
    tokio::join!(
        ask,
        report(shared, stop, client.clone()),
        watch(shared, stop, client, path, &lease_tx),
        expire(shared, stop, lease_rx)
    );
}

/// Why the proxy stops routing when its lease runs out.
const LEASE_RAN_OUT: &str = "this node's lease on the cluster state ran out: it may be cut off from the other nodes, and the primary may have changed elsewhere";

/// Stops routing when the lease of the state routed by runs out before a
/// newer word came (see `pgwarden_proto::lease`): whether or not the
/// monitor is reachable, a cut-off node stops by the deadline its
/// watchdog's leader granted, not when its monitor gets round to it.
async fn expire(
    shared: &Shared,
    stop: &CancellationToken,
    mut lease: tokio::sync::watch::Receiver<u64>,
) {
    loop {
        let until = *lease.borrow_and_update();
        if until != 0 {
            let left = until.saturating_sub(pgwarden_proto::lease::monotonic_ms());
            tokio::select! {
                _ = stop.cancelled() => return,
                r = lease.changed() => {
                    if r.is_err() {
                        return;
                    }
                    continue;
                }
                _ = tokio::time::sleep(Duration::from_millis(left)) => {}
            }
            let current = shared.router.current();
            if current.primary.is_some() {
                tracing::warn!(
                    generation = current.generation,
                    "this node's lease on the cluster state ran out (no renewal from the watchdogs' leader in time): not routing until it is renewed"
                );
                route(shared, current.generation, None, LEASE_RAN_OUT);
            }
        }
        // Not leased (no watchdog), or run out: until the next word.
        tokio::select! {
            _ = stop.cancelled() => return,
            r = lease.changed() => if r.is_err() { return },
        }
    }
}

/// The least time between two recheck requests to the monitor.
const RECHECK_SPACING: Duration = Duration::from_millis(100);

/// How long after the first transaction on a new primary the proxy waits
/// before it reports: sessions still moving or ending are counted too.
const REPORT_SETTLE: Duration = Duration::from_secs(1);

/// The counters a report gives as differences.
fn tally(shared: &Shared) -> [u64; 3] {
    let c = &shared.counters;
    [
        c.moved_sessions.get(),
        c.failover_terminations.get(),
        c.lost_requests.get(),
    ]
}

/// Reports each change of primary to the monitor once its first
/// transaction got a server there (see the module docs).
async fn report(
    shared: &Shared,
    stop: &CancellationToken,
    mut client: MonitorClient<tonic::transport::Channel>,
) {
    let mut routes = shared.router.subscribe();
    // The primary already routed to when this starts counts as the first.
    let mut primary: Option<usize> = routes.borrow_and_update().primary.as_ref().map(|b| b.id);
    let mut since = tally(shared);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = routes.changed() => if r.is_err() { return },
        }
        let route = routes.borrow_and_update().clone();
        let Some(id) = route.primary.as_ref().map(|b| b.id) else {
            continue;
        };
        match primary.replace(id) {
            // The first primary this proxy sees: no failover here.
            None => {
                since = tally(shared);
                continue;
            }
            Some(old) if old == id => continue,
            Some(_) => {}
        }
        // Wait for its first transaction, following newer routes with the
        // same primary (a new generation, or a fence and back: each brings
        // a new FirstUse); another primary first is reported instead.
        let mut route = route;
        let at_ms = loop {
            let first_use = std::sync::Arc::clone(&route.first_use);
            tokio::select! {
                _ = stop.cancelled() => return,
                r = routes.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let now = routes.borrow_and_update().clone();
                    match now.primary.as_ref().map(|b| b.id) {
                        Some(i) if i == id => route = now,
                        Some(_) => {
                            routes.mark_changed();
                            break None;
                        }
                        None => {}
                    }
                }
                at = first_use.first() => break Some(at),
            }
        };
        let Some(at_ms) = at_ms else { continue };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REPORT_SETTLE) => {}
        }
        let now = tally(shared);
        let [moved, ended, lost] = {
            let ([m1, e1, l1], [m0, e0, l0]) = (now, since);
            [
                m1.saturating_sub(m0),
                e1.saturating_sub(e0),
                l1.saturating_sub(l0),
            ]
        };
        since = now;
        let request = ReportRoutedRequest {
            generation: route.generation,
            first_routed_unix_ms: at_ms,
            sessions_moved: moved,
            sessions_ended: ended,
            requests_lost: lost,
        };
        tracing::debug!(
            generation = route.generation,
            moved,
            ended,
            lost,
            "reporting the first transaction on the new primary"
        );
        if let Err(e) = client.report_routed(request).await {
            tracing::debug!(error = %e, "could not report the new primary's first transaction to the monitor");
        }
    }
}

async fn watch(
    shared: &Shared,
    stop: &CancellationToken,
    mut client: MonitorClient<tonic::transport::Channel>,
    path: std::path::PathBuf,
    lease: &tokio::sync::watch::Sender<u64>,
) {
    let s = &shared.settings;
    let mut backoff = uds::reconnect_backoff();
    let mut seen: u64 = 0;
    // When the monitor was last known reachable (or the proxy started).
    let mut lost_since = Instant::now();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = client.watch_cluster(WatchClusterRequest {}) => r,
        };
        match stream {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => return,
                        m = stream.message() => m,
                    };
                    match msg {
                        Ok(Some(state)) => {
                            backoff = uds::reconnect_backoff();
                            apply(shared, &state, &mut seen, lease);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "cluster state stream ended");
                            break;
                        }
                    }
                }
                lost_since = Instant::now();
                tracing::warn!(socket = %path.display(), "lost the monitor; reconnecting");
            }
            Err(e) => {
                tracing::debug!(error = %e, socket = %path.display(), "monitor not reachable")
            }
        }
        let stale = lost_since.elapsed();
        if stale >= s.monitor_stale_after && shared.router.current().primary.is_some() {
            let why = format!(
                "the monitor ({}) has been unreachable for {}s (proxy.monitor_stale_after): the primary is not known",
                path.display(),
                stale.as_secs()
            );
            tracing::error!("{why}; refusing clients until it is back");
            route(shared, seen, None, &why);
        }
        let pause = backoff.next().unwrap_or(Duration::from_secs(1));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Routes by `state` if it is newer than anything seen. A generation names
/// one committed state: the same generation again (a reconnect, a restarted
/// monitor) changes nothing, unless the proxy stopped routing meanwhile.
/// `lease` is the deadline routing holds until (see [`expire`]).
fn apply(
    shared: &Shared,
    state: &ClusterState,
    seen: &mut u64,
    lease: &tokio::sync::watch::Sender<u64>,
) {
    if state.no_quorum {
        // Says more than a lease run out.
        route_by(shared, state, seen);
        lease.send_replace(state.lease_until_mono_ms);
        return;
    }
    let now = pgwarden_proto::lease::monotonic_ms();
    let until = if pgwarden_proto::lease::valid(state.lease_until_mono_ms, now) {
        state.lease_until_mono_ms
    } else {
        // Not leased yet (a new generation comes before its first grant),
        // or run out on the way (a stalled monitor). Routing to the primary
        // already routed to may go on under the lease it holds, which ends
        // when it ends: a lease granted for an older generation that named
        // the same primary is as good as before. Anything else waits.
        let held = *lease.borrow();
        let routed = shared.router.current().primary.as_ref().map(|b| b.id);
        let same = routed.is_some()
            && routed == state.primary_id.map(|p| p as usize)
            && !state.failover_in_progress
            && !state.no_quorum;
        if !(same && held != 0 && pgwarden_proto::lease::valid(held, now)) {
            route(shared, state.generation.max(*seen), None, LEASE_RAN_OUT);
            lease.send_replace(state.lease_until_mono_ms);
            return;
        }
        held
    };
    route_by(shared, state, seen);
    lease.send_replace(until);
}

/// [`apply`] once the lease allows it.
fn route_by(shared: &Shared, state: &ClusterState, seen: &mut u64) {
    if state.no_quorum {
        // This node is cut off from the other nodes: the primary may have
        // moved elsewhere. Stop routing, at once, until the quorum is back.
        let why = "this node's watchdog has no quorum: the primary may have changed elsewhere";
        route(shared, *seen, None, why);
        return;
    }
    if state.generation < *seen {
        tracing::error!(
            got = state.generation,
            seen = *seen,
            "the monitor reports an older generation than already seen: ignored (was its state_dir reset? \
             restart the proxy to accept it)"
        );
        return;
    }
    if state.generation == *seen && *seen > 0 && shared.router.current().primary.is_some() {
        return;
    }
    *seen = state.generation;
    let (primary, why) = primary_of(&shared.settings.backends, state);
    // A switchover lets the old primary's running transactions finish (the
    // monitor waits for them before it fences); the cap is only a backstop.
    let drain = state.switchover_in_progress.then(|| {
        shared
            .settings
            .failover_hold_timeout
            .max(Duration::from_secs(10))
    });
    if let Some(old) = shared
        .router
        .set_draining(state.generation, primary, &why, drain)
    {
        shared.pools.close_idle(old);
    }
}

/// Sets the route; when the primary changed, its cached connections go.
fn route(shared: &Shared, generation: u64, primary: Option<BackendAddr>, why: &str) {
    if let Some(old) = shared.router.set(generation, primary, why) {
        shared.pools.close_idle(old);
    }
}

/// The routable primary of a state, or why there is none.
fn primary_of(backends: &[BackendAddr], state: &ClusterState) -> (Option<BackendAddr>, String) {
    let Some(id) = state.primary_id else {
        return (
            None,
            format!(
                "the monitor knows no primary (generation {})",
                state.generation
            ),
        );
    };
    let Some(b) = state.backends.iter().find(|b| b.id == id) else {
        return (
            None,
            format!("the monitor's primary id {id} is not in its own backend list"),
        );
    };
    // Quarantined: this node's monitor cannot reach it but the quorum can;
    // it is still the committed primary.
    if b.status != Status::Up as i32 && b.status != Status::Quarantined as i32 {
        let why = if b.reason.is_empty() {
            "down".to_owned()
        } else {
            b.reason.clone()
        };
        let what = if state.failover_in_progress {
            "failover in progress"
        } else {
            "the primary is not up"
        };
        return (None, format!("{what}: {} is {why}", b.name));
    }
    match backends.get(id as usize) {
        Some(ours) if ours.name == b.name => (Some(ours.clone()), String::new()),
        _ => (
            None,
            format!(
                "the monitor's primary \"{}\" (id {id}) is not backend {id} of this proxy's config: \
                 the nodes' [[backends]] lists differ",
                b.name
            ),
        ),
    }
}
