//! The proxies' lease (`pgwarden_proto::lease`) on the three-host lab: a
//! node stops routing by the deadline its watchdog's leader granted, and
//! its monitor is not in the way, and a promotion waits for the lease of a
//! node whose proxy cannot say it stopped routing to the old primary (with
//! every node up it need not wait: the failover in `watchdog.rs`). Needs
//! root (network
//! namespaces): built by another user, the tests are ignored (and reported
//! so); built as root, a lab that cannot start fails them.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pgwarden_e2e::lab::{Daemon, Fleet};

/// A frozen watchdog (SIGSTOP) keeps its sockets open and says nothing:
/// without the lease, its monitor never heard that the quorum was lost and
/// its proxy went on routing by the last state it had, whatever the other
/// nodes decided meanwhile. With it, the proxy stops once the lease runs
/// out, says why, and routes again once the watchdog is back. The other
/// nodes serve on.
#[cfg_attr(not(lab), ignore = "needs root: lab hosts are network namespaces")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_watchdog_freezes_stops_routing_when_its_lease_runs_out() {
    let fleet = Fleet::start(3);
    let leader = fleet.wait_serving().await;
    let frozen = (0..3).find(|&i| i != leader).unwrap();
    fleet
        .wait_host_query(Duration::from_secs(20), frozen, "SELECT 1")
        .await;
    fleet.signal_daemon(frozen, Daemon::Watchdog, Signal::SIGSTOP);
    let since = Instant::now();
    let mut refused = String::new();
    fleet
        .wait(
            Duration::from_secs(30),
            "the frozen watchdog's proxy to refuse for want of a lease",
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
        fleet.log(frozen, Daemon::Proxy).contains("lease ran out"),
        "{}",
        fleet.logs()
    );
    // The rest of the cluster is untouched.
    assert!(fleet.client_query("SELECT 1").is_ok(), "{}", fleet.logs());
    fleet.signal_daemon(frozen, Daemon::Watchdog, Signal::SIGCONT);
    fleet
        .wait_host_query(Duration::from_secs(20), frozen, "SELECT 1")
        .await;
}

/// A node cut off from the others cannot tell the leader that its proxy
/// stopped routing to the old primary: the leader promotes only once that
/// proxy's lease has run out (more than PROXY_LEASE after the withdrawal),
/// whereas with every node up it promotes as soon as all proxies moved on.
#[cfg_attr(not(lab), ignore = "needs root: lab hosts are network namespaces")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_waits_for_the_lease_of_a_node_that_cannot_say_it_moved_on() {
    let fleet = Fleet::start(3);
    let leader = fleet.wait_serving().await;
    fleet
        .cluster
        .wait_replicated(Duration::from_secs(20))
        .unwrap();
    // A standby's host, not the leader's: the other two keep the quorum.
    let lone = if leader == 2 { 1 } else { 2 };
    fleet.lab.cut(lone).unwrap();
    fleet
        .cluster
        .node(0)
        .stop(pgwarden_testkit::StopMode::Immediate)
        .unwrap();
    // The leader keeps its quorum, and its monitor decides.
    let config = fleet.nodes[leader].dir.join("pgwarden.toml");
    let record =
        pgwarden_e2e::wait_history_phase(&config, "promoted", Duration::from_secs(30)).await;
    let waited =
        pgwarden_e2e::phase_at_ms(&record, "fence") - pgwarden_e2e::phase_at_ms(&record, "down");
    let lease = i64::try_from(pgwarden_proto::lease::PROXY_LEASE.as_millis()).unwrap();
    eprintln!("the promotion waited {waited} ms after the withdrawal: {record}");
    assert!(
        waited > lease && pgwarden_e2e::phase_detail(&record, "fence").contains("lease"),
        "promoted before the cut node's lease ran out: {record}"
    );
    fleet.lab.heal(lone).unwrap();
}

/// The lease comes from the watchdog, not through the monitor: restarting
/// a node's monitor (killed, started again) costs that node's clients
/// nothing, a query every 50 ms through its proxy meanwhile all succeed.
#[cfg_attr(not(lab), ignore = "needs root: lab hosts are network namespaces")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_nodes_monitor_costs_its_clients_nothing() {
    let mut fleet = Fleet::start(3);
    let leader = fleet.wait_serving().await;
    let node = (0..3).find(|&i| i != leader).unwrap();
    fleet
        .wait_host_query(Duration::from_secs(20), node, "SELECT 1")
        .await;
    fleet.kill_daemon(node, Daemon::Monitor);
    let down = Instant::now();
    let mut failed = Vec::new();
    let mut ran = 0;
    let mut restarted = false;
    // Bounded: 6 s of queries, the monitor back after 2 s.
    while down.elapsed() < Duration::from_secs(6) {
        if !restarted && down.elapsed() >= Duration::from_secs(2) {
            fleet.start_daemon(node, Daemon::Monitor);
            restarted = true;
        }
        ran += 1;
        if let Err(e) = fleet.host_query(node, "SELECT 1") {
            failed.push(e);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ran > 10, "only {ran} queries ran");
    assert!(
        failed.is_empty(),
        "{} of {ran} failed: {failed:?}",
        failed.len()
    );
    // Nor were they held: the proxy never stopped routing (its lease, from
    // the watchdog, went on being renewed).
    let log = fleet.log(node, Daemon::Proxy);
    assert!(!log.contains("lease ran out"), "{log}");
}
