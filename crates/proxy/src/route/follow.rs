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
//! With the watchdog, routing to the primary also needs this node's lease
//! on it, read from the watchdog's own socket (see
//! `pgwarden_proto::lease`): when it runs out, the proxy stops routing by
//! itself, and routes again once a grant covers the primary again.
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
use tokio::sync::watch;
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
    let (word_tx, word_rx) = watch::channel(Word::Unknown);
    let (grant_tx, grant_rx) = watch::channel(Grant::default());
    let (routing_tx, routing_rx) = watch::channel(Routing::default());
    let leased = s.watchdog;
    let balanced = s.reads_apart();
    let measurer = client.clone();
    tokio::join!(
        ask,
        async move {
            if balanced {
                measure(shared, stop, measurer).await;
            }
        },
        report(shared, stop, client.clone()),
        watch(shared, stop, client, path, &word_tx),
        async {
            if leased {
                tokio::join!(
                    follow_watchdog(shared, stop, &grant_tx),
                    tell_watchdog(shared, stop, routing_rx)
                );
            }
        },
        gate(
            shared,
            stop,
            word_rx,
            leased.then_some((grant_rx, routing_tx))
        )
    );
}

/// The monitor's last word: a state to route by, or why there is none.
#[derive(Debug, Clone)]
enum Word {
    /// Nothing heard yet.
    Unknown,
    /// Its newest state.
    State(Box<ClusterState>),
    /// Unreachable for `proxy.monitor_stale_after`: why.
    Stale(String),
}

/// The lease this node's watchdog holds (see `pgwarden_proto::lease`): the
/// record it was granted for, and until when.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Grant {
    /// The record's generation.
    generation: u64,
    /// The record's primary, by name.
    primary: Option<String>,
    /// The record withdrew it (a failover or switchover under way).
    withdrawn: bool,
    /// `CLOCK_BOOTTIME` ms; 0 or 1: none.
    until: u64,
}

impl Grant {
    fn of(status: &pgwarden_proto::v1::WatchdogStatus) -> Grant {
        let record = status.record.as_ref();
        Grant {
            generation: record.map_or(0, |r| r.generation),
            primary: record.and_then(|r| r.primary.clone()),
            withdrawn: record.is_some_and(|r| r.failover_in_progress),
            until: status.lease_until_mono_ms,
        }
    }

    /// Whether routing to `primary` is covered at `now`.
    fn allows(&self, primary: &str, now: u64) -> bool {
        self.primary.as_deref() == Some(primary) && !self.withdrawn && now < self.until
    }
}

/// What the gate routes by: the generation of the grant it took in last,
/// and the backends it routed to before and no longer does (their
/// sessions may still be ending).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Routing {
    generation: u64,
    retired: std::collections::BTreeSet<usize>,
}

/// Why the proxy does not route while the lease does not cover the primary.
const NO_LEASE: &str = "this node holds no lease from the watchdogs' leader for the primary (it ran out, or none came yet): this node may be cut off from the others, and the primary may have changed elsewhere";

/// Routes by the monitor's word, and, with the watchdog, only while this
/// node's lease covers the primary (see `pgwarden_proto::lease`): the
/// proxy stops routing on its own when the lease runs out, whatever the
/// monitor does (a frozen or restarting monitor neither keeps it routing
/// nor stops it), and routes again when a grant covers the primary again.
///
/// After each pass it tells `routing` the generation of the grant it
/// routes under: from then on it routes by nothing older (a withdrawn
/// primary's record allows nothing, and a grant older than one already
/// told is refused), which, once the sessions on the primaries it stopped
/// routing to have ended ([`tell_watchdog`]), lets the leader promote
/// without waiting for this lease to run out.
async fn gate(
    shared: &Shared,
    stop: &CancellationToken,
    mut word: watch::Receiver<Word>,
    lease: Option<(watch::Receiver<Grant>, watch::Sender<Routing>)>,
) {
    let (mut lease, routing) = lease.unzip();
    let mut retired = std::collections::BTreeSet::new();
    let mut seen: u64 = 0;
    // (word version, lease allows): what the last pass decided on.
    let mut version: u64 = 0;
    let mut last: Option<(u64, bool)> = None;
    loop {
        let w = word.borrow_and_update().clone();
        let grant = lease.as_mut().map(|l| l.borrow_and_update().clone());
        let now = pgwarden_proto::lease::monotonic_ms();
        let told = routing.as_ref().map_or(0, |r| r.borrow().generation);
        let before = shared.router.current().primary.as_ref().map(|b| b.id);
        match &w {
            Word::Unknown => {}
            Word::Stale(why) => {
                if shared.router.current().primary.is_some() {
                    tracing::error!("{why}; refusing clients until it is back");
                    route(shared, seen, None, why);
                }
            }
            Word::State(state) => {
                let primary = primary_of(&shared.settings.backends, state).0;
                let allowed = match (&grant, &primary) {
                    (Some(g), Some(p)) if !state.no_quorum => {
                        g.allows(&p.name, now) && g.generation >= told
                    }
                    _ => true,
                };
                if last != Some((version, allowed)) {
                    last = Some((version, allowed));
                    if allowed {
                        apply(shared, state, &mut seen);
                    } else {
                        if shared.router.current().primary.is_some() {
                            tracing::warn!(
                                generation = state.generation,
                                "this node's lease ran out (no renewal from the watchdogs' leader in time): not routing until it is renewed"
                            );
                        }
                        route(shared, state.generation.max(seen), None, NO_LEASE);
                    }
                }
            }
        }
        let after = shared.router.current().primary.as_ref().map(|b| b.id);
        if before != after {
            retired.extend(before);
            if let Some(b) = after {
                retired.remove(&b);
            }
        }
        if let (Some(g), Some(r)) = (&grant, &routing) {
            r.send_if_modified(|at| {
                let newer = g.generation > at.generation || at.retired != retired;
                if newer {
                    at.generation = at.generation.max(g.generation);
                    at.retired.clone_from(&retired);
                }
                newer
            });
        }
        // Until the next word, the next grant, or the end of the one
        // routed by.
        let routed = shared
            .router
            .current()
            .primary
            .as_ref()
            .map(|b| b.name.clone());
        let left = grant
            .as_ref()
            .filter(|g| routed.as_deref().is_some_and(|p| g.allows(p, now)))
            .map(|g| Duration::from_millis(g.until.saturating_sub(now)));
        tokio::select! {
            _ = stop.cancelled() => return,
            r = word.changed() => {
                if r.is_err() {
                    return;
                }
                version += 1;
            }
            r = async {
                match lease.as_mut() {
                    Some(l) => l.changed().await,
                    None => std::future::pending().await,
                }
            } => if r.is_err() { return },
            _ = async {
                match left {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// Follows this node's watchdog (`watchdog.sock`) for its lease, until
/// `stop`. A watchdog gone renews nothing: the last grant runs out.
async fn follow_watchdog(shared: &Shared, stop: &CancellationToken, grant: &watch::Sender<Grant>) {
    use pgwarden_proto::v1::watchdog_client::WatchdogClient;
    let path = uds::socket_path(&shared.settings.runtime_dir, Daemon::Watchdog);
    let client = WatchdogClient::new(uds::connect_lazy(&path));
    let lost = format!(
        "lost this node's watchdog ({}); its lease runs out unless it is back",
        path.display()
    );
    uds::follow_watchdog(client, stop, &lost, "the watchdog answers again", |s| {
        if let Some(status) = s {
            let g = Grant::of(&status);
            grant.send_if_modified(|old| std::mem::replace(old, g.clone()) != g);
        }
    })
    .await;
}

/// Tells this node's watchdog which generation the gate routes by (see
/// [`gate`]), once no client holds a server connection to a primary it
/// stopped routing to (their statements could still write there); at each
/// change, and again every second (a restarted watchdog forgets), until
/// `stop`.
async fn tell_watchdog(
    shared: &Shared,
    stop: &CancellationToken,
    mut routing: watch::Receiver<Routing>,
) {
    use pgwarden_proto::v1::ProxyRoutingRequest;
    use pgwarden_proto::v1::watchdog_client::WatchdogClient;
    let path = uds::socket_path(&shared.settings.runtime_dir, Daemon::Watchdog);
    let mut client = WatchdogClient::new(uds::connect_lazy(&path));
    let mut told = 0u64;
    let mut draining = false;
    let mut last = tokio::time::Instant::now();
    loop {
        let pause = if draining {
            Duration::from_millis(10)
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            r = routing.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(pause) => {}
        }
        let now = routing.borrow_and_update().clone();
        draining = now.retired.iter().any(|&b| shared.pools.active_on(b) > 0);
        if draining || now.generation == 0 {
            continue;
        }
        if now.generation <= told && last.elapsed() < Duration::from_secs(1) {
            continue;
        }
        told = now.generation;
        last = tokio::time::Instant::now();
        let generation = now.generation;
        let call = client.proxy_routing(ProxyRoutingRequest { generation });
        match tokio::time::timeout(Duration::from_secs(1), call).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e.message(), "could not tell the watchdog what this proxy routes by")
            }
            Err(_) => {
                tracing::debug!("the watchdog did not take what this proxy routes by in time")
            }
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
    word: &watch::Sender<Word>,
) {
    let s = &shared.settings;
    let mut backoff = uds::reconnect_backoff();
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
                            readers_of(shared, &state);
                            word.send_replace(Word::State(Box::new(state)));
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
        if stale >= s.monitor_stale_after && !matches!(*word.borrow(), Word::Stale(_)) {
            let why = format!(
                "the monitor ({}) has been unreachable for {}s (proxy.monitor_stale_after): the primary is not known",
                path.display(),
                stale.as_secs()
            );
            word.send_replace(Word::Stale(why));
        }
        let pause = backoff.next().unwrap_or(Duration::from_secs(1));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// With load balancing: the servers reads may go to, by `state`.
fn readers_of(shared: &Shared, state: &ClusterState) {
    let s = &shared.settings;
    if s.reads_apart() {
        shared
            .router
            .set_readers(crate::route::readers::Readers::of(
                state,
                &s.backends,
                s.lag_bounds,
            ));
    }
}

/// Takes the monitor's measurements every `replication_check.period`
/// (`WatchCluster` sends new generations only; lag changes within one),
/// until `stop`. A monitor that does not answer leaves the last list.
async fn measure(
    shared: &Shared,
    stop: &CancellationToken,
    mut client: MonitorClient<tonic::transport::Channel>,
) {
    let period = shared.settings.replication_period;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let call = client.get_cluster(pgwarden_proto::v1::GetClusterRequest {});
        match tokio::time::timeout(period.max(Duration::from_secs(1)), call).await {
            Ok(Ok(state)) => readers_of(shared, &state.into_inner()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e.message(), "could not take the monitor's lag measurements")
            }
            Err(_) => tracing::debug!("the monitor's lag measurements did not come in time"),
        }
    }
}

/// Routes by `state` if it is newer than anything seen. A generation names
/// one committed state: the same generation again (a reconnect, a restarted
/// monitor) changes nothing, unless the proxy stopped routing meanwhile.
fn apply(shared: &Shared, state: &ClusterState, seen: &mut u64) {
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
