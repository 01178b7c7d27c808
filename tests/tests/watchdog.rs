//! Three hosts in network namespaces, each with PostgreSQL and the three
//! daemons; a client reaching them through the delegate IP. Needs root
//! (network namespaces); skips otherwise, saying so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::time::Duration;

use pgwarden_e2e::lab::{Daemon, Fleet, unavailable};

macro_rules! need_lab {
    () => {
        if let Some(why) = unavailable() {
            eprintln!("SKIPPED: multi-host test needs network namespaces: {why}");
            return;
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_holds_the_delegate_ip_and_clients_reach_the_primary_through_it() {
    need_lab!();
    let t = std::time::Instant::now();
    let fleet = Fleet::start(3);
    eprintln!("fleet started after {:?}", t.elapsed());
    let leader = fleet.wait_for_leader(Duration::from_secs(30), &[0, 1, 2]).await;
    eprintln!("leader: host {leader}");
    fleet
        .wait(Duration::from_secs(30), "a query through the delegate IP", || async {
            fleet.client_query("SELECT 1").is_ok()
        })
        .await;
    let addr = fleet.client_query("SELECT inet_server_addr()").unwrap();
    assert_eq!(addr, fleet.lab.host(0).ip().to_string(), "routed to the primary, host 0");
    // Every node's monitor follows the same committed state.
    let mut gens = Vec::new();
    for i in 0..3 {
        let s = fleet.cluster_state(i).await.expect("monitor answers");
        assert_eq!(s.primary_id, Some(0), "node {i}");
        gens.push(s.generation);
    }
    assert!(gens.iter().all(|g| *g == gens[0]), "{gens:?}");
    let _ = Daemon::Proxy;
    eprintln!("checks done after {:?}", t.elapsed());
    drop(fleet);
    eprintln!("fleet dropped after {:?}", t.elapsed());
}
