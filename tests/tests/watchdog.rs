//! Three hosts in network namespaces, each with PostgreSQL and the three
//! daemons; a client reaching them through the delegate IP. Needs root
//! (network namespaces): built by another user, the tests are ignored (and
//! reported so); built as root, a lab that cannot start fails them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pgwarden_e2e::{Status, sqlstate};

use pgwarden_e2e::lab::{Daemon, Fleet};

#[cfg_attr(not(lab), ignore = "needs root: lab hosts are network namespaces")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_holds_the_delegate_ip_and_clients_reach_the_primary_through_it() {
    let fleet = Fleet::start(3);
    let leader = fleet.wait_serving().await;
    eprintln!("leader: host {leader}");
    let addr = fleet.client_query("SELECT inet_server_addr()").unwrap();
    assert_eq!(
        addr,
        fleet.lab.host(0).ip().to_string(),
        "routed to the primary, host 0"
    );
    // Every node's monitor follows the same committed state.
    let mut gens = Vec::new();
    for i in 0..3 {
        let s = fleet.cluster_state(i).await.expect("monitor answers");
        assert_eq!(s.primary_id, Some(0), "node {i}");
        gens.push(s.generation);
    }
    assert!(gens.iter().all(|g| *g == gens[0]), "{gens:?}");
}

/// Samples the delegate-IP holders every 20 ms until stopped; returns the
/// most hosts ever seen holding it at once.
fn sample_holders(fleet: &Arc<Fleet>) -> (Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (f, s) = (Arc::clone(fleet), Arc::clone(&stop));
    let handle = std::thread::spawn(move || {
        let most = AtomicUsize::new(0);
        while !s.load(Ordering::Relaxed) {
            let n = f.vip_holders().len();
            most.fetch_max(n, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        }
        most.load(Ordering::Relaxed)
    });
    (stop, handle)
}

#[cfg_attr(not(lab), ignore = "needs root: lab hosts are network namespaces")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leaders_watchdog_moves_the_delegate_ip() {
    let mut fleet = Fleet::start(3);
    let old = fleet.wait_serving().await;

    let killed = Instant::now();
    fleet.kill_daemon(old, Daemon::Watchdog);
    let live: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = fleet.wait_for_leader(Duration::from_secs(30), &live).await;
    assert_ne!(new, old);
    fleet
        .wait_client_query(Duration::from_secs(30), "SELECT 1")
        .await;
    eprintln!(
        "delegate IP answering from host {new} {:?} after killing host {old}'s watchdog",
        killed.elapsed()
    );
    assert_eq!(
        fleet.vip_holders(),
        vec![new],
        "the killed watchdog's host released it (guard)"
    );
    assert_eq!(
        fleet.client_query("SELECT inet_server_addr()").unwrap(),
        fleet.lab.host(0).ip().to_string()
    );
}

#[cfg_attr(not(lab), ignore = "needs root: lab hosts are network namespaces")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_leader_drops_the_ip_before_the_majority_takes_it() {
    let fleet = Arc::new(Fleet::start(3));
    let old = fleet.wait_for_leader_of_all(Duration::from_secs(30)).await;
    let (stop, sampler) = sample_holders(&fleet);
    fleet.lab.cut(old).unwrap();
    let live: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = fleet.wait_for_leader(Duration::from_secs(30), &live).await;
    assert_ne!(new, old);
    assert!(
        !fleet.vip_holders().contains(&old),
        "the cut leader released the IP"
    );
    // It comes back: it does not take the IP (pre-vote keeps the leader).
    fleet.lab.heal(old).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fleet.vip_holders(), vec![new]);
    stop.store(true, Ordering::Relaxed);
    let most = sampler.join().unwrap();
    assert!(most <= 1, "{most} hosts held the delegate IP at once");
    fleet
        .wait_client_query(Duration::from_secs(30), "SELECT 1")
        .await;
}

/// A frozen leader's watchdog (SIGSTOP: a stalled process, a long pause)
/// cannot release the IP itself; its guard drops it once the lead has gone
/// unconfirmed for the guard's grace, before the new leader may take it,
/// and the watchdog does not take it up again when it resumes.
#[cfg_attr(not(lab), ignore = "needs root: lab hosts are network namespaces")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leaders_watchdog_drops_the_ip_before_another_takes_it() {
    use nix::sys::signal::Signal;
    let fleet = Arc::new(Fleet::start(3));
    let old = fleet.wait_serving().await;
    let (stop, sampler) = sample_holders(&fleet);
    let frozen = Instant::now();
    fleet.signal_daemon(old, Daemon::Watchdog, Signal::SIGSTOP);
    let live: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = fleet.wait_for_leader(Duration::from_secs(30), &live).await;
    assert_ne!(new, old);
    eprintln!(
        "host {new} leads and holds the delegate IP {:?} after freezing host {old}'s watchdog",
        frozen.elapsed()
    );
    // Frozen well past the new leader's acquisition, then thawed: it must
    // not take the IP up again on its stale view of the lead.
    tokio::time::sleep(Duration::from_secs(3)).await;
    fleet.signal_daemon(old, Daemon::Watchdog, Signal::SIGCONT);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let most = sampler.join().unwrap();
    assert!(
        most <= 1,
        "{most} hosts held the delegate IP at once{}",
        fleet.logs()
    );
    assert_eq!(fleet.vip_holders(), vec![new], "{}", fleet.logs());
    // Its guard took the IP down, not the thawed watchdog (whose lease
    // counts ticks and still believed in its lead).
    assert!(
        fleet
            .log(old, Daemon::Watchdog)
            .contains("has not confirmed its lead"),
        "{}",
        fleet.logs()
    );
    fleet
        .wait_client_query(Duration::from_secs(30), "SELECT 1")
        .await;
}

#[cfg_attr(not(lab), ignore = "needs root: lab hosts are network namespaces")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_primary_fails_over_once_and_every_proxy_follows() {
    let fleet = Fleet::start(3);
    fleet.wait_serving().await;
    fleet
        .client_query("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .unwrap();
    fleet
        .cluster
        .wait_replicated(Duration::from_secs(20))
        .unwrap();

    let killed = Instant::now();
    fleet
        .cluster
        .node(0)
        .stop(pgwarden_testkit::StopMode::Immediate)
        .unwrap();
    let mut first_write = None;
    let mut new_primary = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && (first_write.is_none() || new_primary.is_none()) {
        if first_write.is_none() && fleet.client_query("INSERT INTO t VALUES (2)").is_ok() {
            first_write = Some(killed.elapsed());
        }
        let mut primaries = Vec::new();
        for i in 0..3 {
            primaries.push(fleet.cluster_state(i).await.and_then(|s| s.primary_id));
        }
        if primaries
            .iter()
            .all(|p| p.is_some() && *p != Some(0) && *p == primaries[0])
        {
            new_primary = primaries[0];
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (Some(took), Some(p)) = (first_write, new_primary) else {
        panic!(
            "no failover: write {first_write:?}, primary {new_primary:?}{}",
            fleet.logs()
        );
    };
    eprintln!(
        "first write through the delegate IP {took:?} after the primary died; new primary backend {p}"
    );
    // One failover, decided by the leader's monitor alone.
    let promotions: usize = (0..3)
        .map(|i| {
            fleet
                .log(i, Daemon::Monitor)
                .matches("failover: promotion succeeded")
                .count()
        })
        .sum();
    assert_eq!(promotions, 1, "{}", fleet.logs());
    // The deciding node's history shows every phase, the fence between
    // the decision and the promotion, and (from its proxy,
    // which holds the delegate IP) the first transaction on the new primary.
    let decider = (0..3)
        .find(|&i| {
            fleet
                .log(i, Daemon::Monitor)
                .contains("failover: promotion succeeded")
        })
        .unwrap();
    let config = fleet.nodes[decider].dir.join("pgwarden.toml");
    let record =
        pgwarden_e2e::wait_history_phase(&config, "first write routed", Duration::from_secs(15))
            .await;
    eprintln!(
        "{}",
        pgwarden_e2e::pgwardenctl(&config, &["history"]).stdout
    );
    let at = |name: &str| pgwarden_e2e::phase_at_ms(&record, name);
    let (quorum, down, fence, promoted, completed, routed) = (
        at("quorum"),
        at("down"),
        at("fence"),
        at("promoted"),
        at("completed"),
        at("first write routed"),
    );
    // The primary is withdrawn at the quorum's verdict; with every node
    // up, every proxy says at once that it took the withdrawal in, and the
    // promotion goes without waiting for their leases to run out (a node
    // that cannot say so holds it: lease.rs).
    let lease = i64::try_from(pgwarden_proto::lease::PROXY_LEASE.as_millis()).unwrap();
    let fence_detail = pgwarden_e2e::phase_detail(&record, "fence");
    assert!(
        fence_detail.contains("every node's proxy") && fence - down < lease,
        "the promotion waited for the leases though every proxy had moved on: {record}"
    );
    assert!(
        quorum <= down && fence <= promoted && promoted <= completed && completed <= routed,
        "{record}"
    );
    // Every node's proxy routes to the same new primary.
    let expected = fleet.lab.host(p as usize).ip().to_string();
    for i in 0..3 {
        let out = fleet
            .lab
            .client()
            .command("psql")
            .args([
                "-X",
                "-At",
                "-h",
                &fleet.lab.host(i).ip().to_string(),
                "-p",
                "9999",
                "-U",
                "alice",
                "-d",
                "app",
            ])
            .args(["-c", "SELECT inet_server_addr()"])
            .env("PGPASSWORD", pgwarden_e2e::ALICE.1)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            expected,
            "node {i}'s proxy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let states: Vec<_> =
        futures_util::future::join_all((0..3).map(|i| fleet.cluster_state(i))).await;
    let gens: Vec<u64> = states
        .iter()
        .map(|s| s.as_ref().map_or(0, |s| s.generation))
        .collect();
    assert!(gens.iter().all(|g| *g == gens[0]), "{gens:?}");
    let _ = sqlstate;
}

#[cfg_attr(not(lab), ignore = "needs root: lab hosts are network namespaces")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_without_quorum_does_not_fail_over() {
    let fleet = Fleet::start(3);
    let leader = fleet.wait_serving().await;
    // Cut a standby host that is not the leader: it loses the primary and the quorum.
    let lone = if leader == 2 { 1 } else { 2 };
    let before = fleet.cluster_state(0).await.unwrap().generation;
    fleet.lab.cut(lone).unwrap();
    fleet
        .wait(
            Duration::from_secs(20),
            "the lone node to quarantine the primary",
            || async {
                fleet.cluster_state(lone).await.is_some_and(|s| {
                    s.backends
                        .iter()
                        .any(|b| b.id == 0 && b.status == Status::Quarantined as i32)
                })
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Nothing was promoted; the lone node still names pg0 as the primary.
    let lone_state = fleet.cluster_state(lone).await.unwrap();
    assert_eq!(lone_state.primary_id, Some(0), "{lone_state:#?}");
    assert!(
        fleet.cluster.node(lone).is_in_recovery().unwrap(),
        "the lone node's server was promoted"
    );
    assert!(!fleet.vip_holders().contains(&lone));
    let promotions: usize = (0..3)
        .map(|i| fleet.log(i, Daemon::Monitor).matches("promoting").count())
        .sum();
    assert_eq!(promotions, 0, "{}", fleet.logs());
    // Its proxy fenced itself: it cannot know where the primary is now.
    // It holds the login for proxy.failover_hold_timeout (10 s: the
    // quorum may come back) before it refuses; libpq's connect_timeout
    // counts whole seconds, so give it well more than that.
    let out = fleet
        .lab
        .host(lone)
        .command("psql")
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", "9999"])
        .args(["-U", "alice", "-d", "app", "-c", "SELECT 1"])
        .env("PGPASSWORD", pgwarden_e2e::ALICE.1)
        .env("PGCONNECT_TIMEOUT", "30")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no quorum"),
        "the lone node's proxy: {err}"
    );
    // The majority still serves clients from the same primary.
    assert_eq!(
        fleet.client_query("SELECT inet_server_addr()").unwrap(),
        fleet.lab.host(0).ip().to_string()
    );
    let majority = fleet.cluster_state(leader).await.unwrap();
    assert_eq!(majority.primary_id, Some(0));
    assert!(majority.generation >= before);
    fleet.lab.heal(lone).unwrap();
}

/// Only the leader's monitor decides failovers. With that monitor gone (and
/// not restarted), the leader hands the lead to a node whose monitor
/// answers, and a primary that dies afterwards is still failed over, once.
#[cfg_attr(not(lab), ignore = "needs root: lab hosts are network namespaces")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_its_monitor_hands_over_and_failover_still_happens() {
    let mut fleet = Fleet::start(3);
    let old = fleet.wait_serving().await;
    fleet.client_query("CREATE TABLE t (x int)").unwrap();
    fleet
        .cluster
        .wait_replicated(Duration::from_secs(20))
        .unwrap();

    let killed = Instant::now();
    fleet.kill_daemon(old, Daemon::Monitor);
    let old_id = fleet.raft_id_of_host(old);
    // Another leader, with the old leader's monitor recorded gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        let s = fleet.watchdog((old + 1) % 3).await;
        if let Some(s) = &s
            && s.record
                .as_ref()
                .is_some_and(|r| r.monitors_down == [old_id])
            && s.leader_id != 0
            && s.leader_id != old_id
            && s.quorum
        {
            break fleet.host_of_raft_id(s.leader_id);
        }
        assert!(
            Instant::now() < deadline,
            "the lead did not move: {s:?}{}",
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "lead moved from host {old} to host {new} {:?} after host {old}'s monitor was killed",
        killed.elapsed()
    );
    fleet
        .wait(
            Duration::from_secs(30),
            "the delegate IP on the new leader's host",
            || async { fleet.vip_holders() == [new] && fleet.client_query("SELECT 1").is_ok() },
        )
        .await;

    // The primary dies: the new leader's monitor fails over.
    let primary_killed = Instant::now();
    fleet
        .cluster
        .node(0)
        .stop(pgwarden_testkit::StopMode::Immediate)
        .unwrap();
    fleet
        .wait_client_query(Duration::from_secs(60), "INSERT INTO t VALUES (1)")
        .await;
    eprintln!(
        "first write through the delegate IP {:?} after the primary died",
        primary_killed.elapsed()
    );
    let promotions: Vec<usize> = (0..3)
        .map(|i| {
            fleet
                .log(i, Daemon::Monitor)
                .matches("failover: promotion succeeded")
                .count()
        })
        .collect();
    assert_eq!(promotions.iter().sum::<usize>(), 1, "{}", fleet.logs());
    assert_eq!(promotions[new], 1, "decided by the new leader's monitor");
}
