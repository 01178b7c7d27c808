//! The monitor's Prometheus `/metrics` (`monitor.metrics_listen`): the
//! cluster state it publishes, per backend (pgpool-II's SHOW POOL_NODES as
//! gauges).

use std::net::SocketAddr;

use pgwarden_daemon::metrics::{self as m, Labels, Registry, labels};
use pgwarden_proto::v1::{BackendState, ClusterState, FailoverRecord, Role, Status};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Serves `/metrics` on `addr` from the published state until `stop`. A
/// bind failure is logged and the monitor runs without metrics: scraping is
/// never worth a failover.
pub async fn spawn(
    addr: SocketAddr,
    state: watch::Receiver<ClusterState>,
    history: watch::Receiver<Vec<FailoverRecord>>,
    stop: CancellationToken,
) {
    match m::bind(addr).await {
        Ok(listener) => {
            tokio::spawn(m::serve(
                listener,
                move |r| render_all(&state, &history, r),
                stop,
            ));
        }
        Err(e) => {
            tracing::warn!(%addr, error = %e, "monitor.metrics_listen: cannot serve /metrics; running without");
        }
    }
}

/// `/metrics`' text from the published state, for a listener the status
/// page shares (`monitor.http_listen` = `monitor.metrics_listen`).
pub fn renderer(
    state: watch::Receiver<ClusterState>,
    history: watch::Receiver<Vec<FailoverRecord>>,
) -> std::sync::Arc<dyn Fn() -> Result<String, std::fmt::Error> + Send + Sync> {
    std::sync::Arc::new(move || m::rendered(|r| render_all(&state, &history, r)))
}

/// Everything `/metrics` shows: the published state and the history.
fn render_all(
    state: &watch::Receiver<ClusterState>,
    history: &watch::Receiver<Vec<FailoverRecord>>,
    r: &mut Registry,
) {
    render(&state.borrow(), r);
    render_history(&history.borrow(), r);
}

fn backend_labels(b: &BackendState) -> Labels {
    labels([("backend", b.id.to_string()), ("name", b.name.clone())])
}

/// Renders the failover history into `r`: how many are recorded, and the
/// phases of the newest, in ms from its first.
pub fn render_history(history: &[FailoverRecord], r: &mut Registry) {
    m::gauge(
        r,
        "pgwarden_monitor_failovers_recorded",
        "Failovers and switchovers in the history (pgwardenctl history; the last 50)",
        i64::try_from(history.len()).unwrap_or(i64::MAX),
    );
    let Some(last) = history.last() else { return };
    let start = last.phases.first().map_or(0, |p| p.at_unix_ms);
    m::gauges(
        r,
        "pgwarden_monitor_last_failover_phase_ms",
        "Milliseconds from the newest failover's first phase (suspect) to each of its phases",
        last.phases
            .iter()
            .map(|p| (labels([("phase", p.name.clone())]), p.at_unix_ms - start))
            .collect::<Vec<_>>(),
    );
    if let Some(rpo) = last.rpo_bytes {
        m::gauge(
            r,
            "pgwarden_monitor_last_failover_rpo_bytes",
            "WAL the old primary had flushed beyond what the promoted standby had received, at their last checks",
            i64::try_from(rpo).unwrap_or(i64::MAX),
        );
    }
}

/// Renders `state` into `r`.
pub fn render(state: &ClusterState, r: &mut Registry) {
    m::gauge(
        r,
        "pgwarden_monitor_generation",
        "Generation of the cluster state the monitor publishes",
        i64::try_from(state.generation).unwrap_or(i64::MAX),
    );
    m::gauge(
        r,
        "pgwarden_monitor_primary_backend",
        "Backend id of the primary (-1: none)",
        state.primary_id.map_or(-1, i64::from),
    );
    m::gauge(
        r,
        "pgwarden_monitor_failover_in_progress",
        "1 while a failover is being carried out",
        i64::from(state.failover_in_progress),
    );
    m::gauge(
        r,
        "pgwarden_monitor_no_quorum",
        "1 while this node's watchdog has no quorum (its proxy does not route)",
        i64::from(state.no_quorum),
    );
    let each = |f: fn(&BackendState) -> i64| {
        state
            .backends
            .iter()
            .map(move |b| (backend_labels(b), f(b)))
            .collect::<Vec<_>>()
    };
    m::gauges(
        r,
        "pgwarden_monitor_backend_up",
        "1 when the backend is up (routable), 0 when down, detached or quarantined",
        each(|b| i64::from(b.status == Status::Up as i32)),
    );
    m::gauges(
        r,
        "pgwarden_monitor_backend_detached",
        "1 when the backend is fenced until an operator attaches it",
        each(|b| i64::from(b.status == Status::Detached as i32)),
    );
    m::gauges(
        r,
        "pgwarden_monitor_backend_primary",
        "1 when the backend's last check found it out of recovery",
        each(|b| i64::from(b.role == Role::Primary as i32)),
    );
    m::gauges(
        r,
        "pgwarden_monitor_backend_failed_checks",
        "Consecutive failed health checks",
        each(|b| i64::from(b.failed_checks)),
    );
    m::gauges(
        r,
        "pgwarden_monitor_backend_timeline",
        "Timeline the backend is on (0: unknown)",
        each(|b| i64::from(b.timeline)),
    );
    m::gauges(
        r,
        "pgwarden_monitor_replication_lag_bytes",
        "Standbys: WAL bytes behind the primary",
        each(|b| i64::try_from(b.lag_bytes).unwrap_or(i64::MAX)),
    );
    m::gauges_f64(
        r,
        "pgwarden_monitor_replication_lag_seconds",
        "Standbys: seconds behind the primary",
        state
            .backends
            .iter()
            .map(|b| (backend_labels(b), b.lag_seconds)),
    );
    m::gauges_f64(
        r,
        "pgwarden_monitor_backend_last_check_timestamp_seconds",
        "Unix time of the last health check (0: never)",
        state.backends.iter().map(|b| {
            // Milliseconds to seconds: a timestamp, exact enough as f64.
            #[allow(clippy::cast_precision_loss)]
            let secs = b.last_check_unix_ms as f64 / 1000.0;
            (backend_labels(b), secs)
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backend `id`, named `pg<id>`, with `status` and `role`.
    fn backend(id: u32, status: Status, role: Role) -> BackendState {
        BackendState {
            id,
            name: format!("pg{id}"),
            status: status as i32,
            role: role as i32,
            ..Default::default()
        }
    }

    #[test]
    fn renders_the_state_per_backend() {
        let state = ClusterState {
            generation: 4,
            primary_id: Some(1),
            backends: vec![
                BackendState {
                    failed_checks: 3,
                    ..backend(0, Status::Detached, Role::Primary)
                },
                BackendState {
                    timeline: 2,
                    last_check_unix_ms: 1_500,
                    ..backend(1, Status::Up, Role::Primary)
                },
                BackendState {
                    lag_bytes: 4096,
                    lag_seconds: 0.25,
                    ..backend(2, Status::Up, Role::Standby)
                },
            ],
            ..Default::default()
        };
        let text = m::rendered(|r| render(&state, r)).unwrap();
        for line in [
            "pgwarden_monitor_generation 4",
            "pgwarden_monitor_primary_backend 1",
            "pgwarden_monitor_backend_up{backend=\"0\",name=\"pg0\"} 0",
            "pgwarden_monitor_backend_detached{backend=\"0\",name=\"pg0\"} 1",
            "pgwarden_monitor_backend_up{backend=\"1\",name=\"pg1\"} 1",
            "pgwarden_monitor_backend_failed_checks{backend=\"0\",name=\"pg0\"} 3",
            "pgwarden_monitor_backend_timeline{backend=\"1\",name=\"pg1\"} 2",
            "pgwarden_monitor_replication_lag_bytes{backend=\"2\",name=\"pg2\"} 4096",
            "pgwarden_monitor_replication_lag_seconds{backend=\"2\",name=\"pg2\"} 0.25",
            "pgwarden_monitor_backend_last_check_timestamp_seconds{backend=\"1\",name=\"pg1\"} 1.5",
            "pgwarden_monitor_backend_primary{backend=\"2\",name=\"pg2\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
