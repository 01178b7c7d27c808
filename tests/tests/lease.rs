//! The proxies' lease (`pgwarden_proto::lease`) on the three-host lab: a
//! node stops routing by the deadline its watchdog's leader granted,
//! whatever its monitor does (that the leader promotes only once every
//! lease on the old primary's generation has ended is checked with the
//! failover in `watchdog.rs`). Needs root (network
//! namespaces): built by another user, the tests are ignored (and reported
//! so); built as root, a lab that cannot start fails them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pgwarden_e2e::lab::{Daemon, Fleet, require_lab};

/// A frozen monitor (SIGSTOP) keeps its stream to the proxy open and
/// sends nothing: without the lease, its proxy went on routing by the last
/// state it had for as long as the monitor stayed frozen (the stream looked
/// alive), whatever the other nodes decided meanwhile. With it, the proxy
/// stops once the lease runs out, says why, and routes again once the
/// monitor is back. The other nodes serve on.
#[cfg_attr(
    not(lab),
    ignore = "needs root: the three-host lab runs in network namespaces"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_monitor_freezes_stops_routing_when_its_lease_runs_out() {
    require_lab();
    let fleet = Fleet::start(3);
    let leader = fleet.wait_serving().await;
    let frozen = (0..3).find(|&i| i != leader).unwrap();
    fleet
        .wait(
            Duration::from_secs(20),
            "a query through the node's own proxy",
            || async { fleet.host_query(frozen, "SELECT 1").is_ok() },
        )
        .await;
    fleet.signal_daemon(frozen, Daemon::Monitor, Signal::SIGSTOP);
    let since = Instant::now();
    let mut refused = String::new();
    fleet
        .wait(
            Duration::from_secs(20),
            "the frozen monitor's proxy to refuse for its lease",
            || {
                let r = fleet.host_query(frozen, "SELECT 1");
                if let Err(e) = &r {
                    refused.clone_from(e);
                }
                async move { r.is_err_and(|e| e.contains("lease")) }
            },
        )
        .await;
    eprintln!("refused {:?} after SIGSTOP: {refused}", since.elapsed());
    assert!(
        fleet
            .log(frozen, Daemon::Proxy)
            .contains("lease on the cluster state ran out"),
        "{}",
        fleet.logs()
    );
    // The rest of the cluster is untouched.
    assert!(fleet.client_query("SELECT 1").is_ok(), "{}", fleet.logs());
    fleet.signal_daemon(frozen, Daemon::Monitor, Signal::SIGCONT);
    fleet
        .wait(
            Duration::from_secs(20),
            "the proxy to route again once its monitor is back",
            || async { fleet.host_query(frozen, "SELECT 1").is_ok() },
        )
        .await;
}
