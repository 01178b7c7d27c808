//! `failover.synchronous_mode` (issue 14): the monitor keeps the primary's
//! synchronous standbys healthy, and a failover promotes only a standby
//! holding every acknowledged commit.

use std::time::{Duration, Instant};

use pgwarden_e2e::*;
use pgwarden_testkit::{Cluster, StopMode, wait_until};

/// The primary's (pg0's) `synchronous_standby_names`.
fn names_on_pg0(cluster: &Cluster) -> String {
    cluster
        .node(0)
        .psql("SHOW synchronous_standby_names")
        .unwrap_or_default()
}

/// Waits until pg0 names one standby synchronous (`ANY 1 ("pgN")`): N.
fn wait_synchronous(cluster: &Cluster, timeout: Duration, not: Option<usize>) -> usize {
    let mut found = None;
    wait_until(timeout, "one synchronous standby on pg0", || {
        let names = names_on_pg0(cluster);
        found = [1, 2]
            .into_iter()
            .filter(|i| Some(*i) != not)
            .find(|i| names == format!("ANY 1 (\"pg{i}\")"));
        found.is_some()
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: synchronous_standby_names = {:?}",
            names_on_pg0(cluster)
        )
    });
    found.unwrap_or_default()
}

fn synchronous_proxy(mode: &str) -> (Cluster, Proxy) {
    proxied(
        2,
        ProxyOptions::default().failover(&format!("synchronous_mode = \"{mode}\"")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_mode_on_replaces_a_failed_synchronous_standby_and_commits_waiting_for_it_go_through_at_once()
 {
    let (cluster, proxy) = synchronous_proxy("on");
    proxy.wait_all_up(Duration::from_secs(20)).await;
    let sync = wait_synchronous(&cluster, Duration::from_secs(20), None);
    let other = 3 - sync;
    // The primary waits for it.
    let state = cluster
        .node(0)
        .psql(&format!(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'pg{sync}'"
        ))
        .unwrap();
    assert_eq!(state, "quorum");
    // status names it synchronous, and it alone.
    let status = pgwardenctl(&proxy.config, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let synchronous: Vec<&str> = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["synchronous"] == true)
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert_eq!(synchronous, [format!("pg{sync}")], "{}", status.stdout);
    let text = pgwardenctl(&proxy.config, &["status"]).stdout;
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|h| h.contains("RECEIVED LSN  SYNC")),
        "{text}"
    );
    let c = proxy
        .alice_after("CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)")
        .await;

    // It fails: the other one takes its place.
    cluster.node(sync).stop(StopMode::Immediate).unwrap();
    // A commit made meanwhile waits for a synchronous copy.
    let waiting = tokio::spawn(async move {
        let r = c.batch_execute("INSERT INTO kept VALUES (2)").await;
        (r, Instant::now())
    });
    proxy
        .wait_status(Duration::from_secs(20), sync as u32, Status::Down)
        .await;
    let down = Instant::now();
    assert_eq!(
        wait_synchronous(&cluster, Duration::from_secs(10), Some(sync)),
        other
    );
    let replaced = Instant::now();
    let took = down.elapsed();
    eprintln!("pg{other} synchronous {took:?} after pg{sync} was seen down (check period 500 ms)");
    assert!(
        took < Duration::from_secs(3),
        "{took:?}\n{}",
        proxy.monitor_log()
    );
    // The waiting commit goes through once the new one confirms it: at
    // once, not when that standby next reports by itself (every
    // wal_receiver_status_interval, 10 s, when it has nothing to flush).
    let (r, committed) = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting commit completes")
        .unwrap();
    r.unwrap();
    let after = committed.saturating_duration_since(replaced);
    eprintln!("the waiting commit completed {after:?} after pg{other} was made synchronous");
    assert!(
        after < Duration::from_secs(3),
        "the waiting commit took {after:?} after the replacement\n{}",
        proxy.monitor_log()
    );
    let on_other = cluster
        .node(other)
        .psql_db("app", "SELECT count(*) FROM kept")
        .unwrap();
    assert_eq!(
        on_other, "2",
        "a commit acknowledged is on the synchronous standby"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_mode_on_turns_asynchronous_without_standbys_and_strict_blocks_writes() {
    for mode in ["on", "strict"] {
        let (cluster, proxy) = synchronous_proxy(mode);
        proxy.wait_all_up(Duration::from_secs(20)).await;
        wait_synchronous(&cluster, Duration::from_secs(20), None);
        let c = proxy.alice_after("CREATE TABLE t (x int)").await;
        for i in [1, 2] {
            cluster.node(i).stop(StopMode::Immediate).unwrap();
        }
        for i in [1u32, 2] {
            proxy
                .wait_status(Duration::from_secs(20), i, Status::Down)
                .await;
        }
        if mode == "on" {
            wait_until(
                Duration::from_secs(10),
                "synchronous_standby_names cleared",
                || names_on_pg0(&cluster).is_empty(),
            )
            .unwrap();
            c.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
        } else {
            // A commit waits for a synchronous standby that is not there.
            let write = tokio::time::timeout(
                Duration::from_secs(3),
                c.batch_execute("INSERT INTO t VALUES (1)"),
            )
            .await;
            assert!(
                write.is_err(),
                "strict: a write was acknowledged without a copy: {write:?}"
            );
            assert!(!names_on_pg0(&cluster).is_empty());
            // The primary dies too: no standby can be shown to hold every
            // acknowledged commit, so none is promoted, and status says so.
            cluster.node(0).stop(StopMode::Immediate).unwrap();
            let s = proxy
                .wait_state(Duration::from_secs(20), "a blocked failover", |s| {
                    s.failover_blocked.contains("no safe candidate")
                })
                .await;
            assert_eq!(s.primary_id, Some(0), "nobody promoted: {s:#?}");
            let out = pgwardenctl(&proxy.config, &["status"]);
            assert!(
                out.stdout
                    .lines()
                    .any(|l| l.starts_with("failover blocked: no safe candidate")),
                "{}",
                out.stdout
            );
        }
    }
}

/// The synchronous standby X receives everything but replays nothing (its
/// replay paused); the other, Y, replays all it receives but stops
/// receiving: Y replayed more, X holds more. The primary dies: X is
/// promoted and every acknowledged row is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_in_synchronous_mode_promotes_the_synchronous_standby_and_loses_no_acknowledged_row()
 {
    let (cluster, proxy) = synchronous_proxy("on");
    proxy.wait_all_up(Duration::from_secs(20)).await;
    let x = wait_synchronous(&cluster, Duration::from_secs(20), None);
    let y = 3 - x;
    let c = proxy
        .alice_after("CREATE TABLE ledger (id int PRIMARY KEY)")
        .await;
    cluster.wait_replicated(Duration::from_secs(20)).unwrap();
    cluster
        .node(x)
        .psql("SELECT pg_wal_replay_pause()")
        .unwrap();
    let mut acked = Vec::new();
    for i in 0..20 {
        c.execute("INSERT INTO ledger VALUES ($1)", &[&i])
            .await
            .unwrap();
        acked.push(i);
    }
    wait_until(
        Duration::from_secs(20),
        "Y to replay the first 20 rows",
        || {
            cluster
                .node(y)
                .psql_db("app", "SELECT count(*) FROM ledger")
                .unwrap_or_default()
                == "20"
        },
    )
    .unwrap();
    // Y stops receiving (its WAL receiver frozen).
    let receiver: i32 = cluster
        .node(y)
        .psql("SELECT pid FROM pg_stat_wal_receiver")
        .unwrap()
        .parse()
        .unwrap();
    let receiver = nix::unistd::Pid::from_raw(receiver);
    nix::sys::signal::kill(receiver, nix::sys::signal::Signal::SIGSTOP).unwrap();
    for i in 20..40 {
        c.execute("INSERT INTO ledger VALUES ($1)", &[&i])
            .await
            .unwrap();
        acked.push(i);
    }
    // Y replayed more, X received more.
    let lsn = |i: usize, f: &str| -> String {
        cluster
            .node(i)
            .psql(&format!("SELECT {f}() - '0/0'::pg_lsn"))
            .unwrap()
    };
    let number = |s: String| s.parse::<f64>().unwrap();
    let (x_received, y_received) = (
        lsn(x, "pg_last_wal_receive_lsn"),
        lsn(y, "pg_last_wal_receive_lsn"),
    );
    let (x_replayed, y_replayed) = (
        lsn(x, "pg_last_wal_replay_lsn"),
        lsn(y, "pg_last_wal_replay_lsn"),
    );
    eprintln!("received: X {x_received}, Y {y_received}; replayed: X {x_replayed}, Y {y_replayed}");
    assert!(number(y_received) < number(x_received.clone()));
    assert!(number(y_replayed) > number(x_replayed));
    cluster.node(0).stop(StopMode::Immediate).unwrap();

    let state = proxy
        .wait_state(Duration::from_secs(60), "a new primary", |s| {
            s.primary_id.is_some_and(|p| p != 0)
        })
        .await;
    // Y's WAL receiver resumes only now (what its socket holds would let
    // it catch up).
    nix::sys::signal::kill(receiver, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(
        state.primary_id,
        Some(x as u32),
        "the synchronous standby, not the one that replayed more: {state:#?}\n{}",
        proxy.monitor_log()
    );
    // The new primary takes writes through the proxy once its
    // followers are repointed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let on_new: i64 = loop {
        if let Ok(c) = proxy.connect(ALICE.0, ALICE.1, "app").await
            && let Ok(row) = c.query_one("SELECT count(*) FROM ledger", &[]).await
        {
            break row.get(0);
        }
        assert!(Instant::now() < deadline, "no answer from the new primary");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(on_new as usize, acked.len(), "acknowledged rows lost");
}
