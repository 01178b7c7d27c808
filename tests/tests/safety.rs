//! Safety defects of issue 7, end to end: what a client can do to the
//! monitor's checks, which standby a failover promotes, and the fence of an
//! old primary that is still reachable.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgwarden_e2e::*;
use pgwarden_testkit::{Node, PasswordKind, StopMode, wait_until};

const WAIT: Duration = Duration::from_secs(30);

/// Kills the health-check role's sessions in a loop, as in the issue.
const KILL_CHECKS: &str = "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
                           FROM pg_stat_activity WHERE usename = 'pgwarden'";

fn statuses(s: &ClusterState) -> Vec<(u32, i32)> {
    s.backends.iter().map(|b| (b.id, b.status)).collect()
}

/// A superuser session straight to `node`.
async fn direct(node: &Node, application_name: &str) -> tokio_postgres::Client {
    connect(&format!(
        "host={} port={} user={} dbname=postgres application_name={application_name}",
        node.host(),
        node.port(),
        node.superuser()
    ))
    .await
    .unwrap_or_else(|e| panic!("{}: {e}", node.name()))
}

/// Runs [`KILL_CHECKS`] as whoever `conninfo` logs in (`who`, for the
/// panic when it cannot), on a task of its own, reconnecting when its
/// session is gone, until `until`, at most `max` times; the task returns
/// (sessions killed, statements run).
fn spawn_kill_loop(
    conninfo: String,
    who: &'static str,
    until: Instant,
    max: u32,
) -> tokio::task::JoinHandle<(i64, u32)> {
    tokio::spawn(async move {
        let open = || async { connect(&conninfo).await.expect(who) };
        let mut client = open().await;
        let (mut killed, mut runs) = (0i64, 0u32);
        while Instant::now() < until && runs < max {
            match client.query_one(KILL_CHECKS, &[]).await {
                Ok(row) => killed += row.get::<_, i64>(0),
                Err(_) => client = open().await,
            }
            runs += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (killed, runs)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_7_killing_the_health_check_sessions_changes_no_status() {
    let cluster = cluster(2);
    cluster
        .create_superuser("mallory", "mallory-secret", PasswordKind::Scram)
        .unwrap();
    let proxy = Proxy::start(
        &cluster,
        ProxyOptions::default().user("\"mallory\" \"mallory-secret\""),
    );
    let before = proxy.wait_state(WAIT, "all backends up", all_up).await;
    // Let every check settle on its kept-open session.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = proxy
        .wait_state(WAIT, "all backends up", |s| {
            all_up(s) && s.generation == before.generation
        })
        .await;

    // A superuser kills the checks' sessions on the primary (through the
    // proxy, as in the issue) and on both standbys (directly), for 15 s.
    let until = Instant::now() + Duration::from_secs(15);
    let max = 20_000;
    let through_proxy = spawn_kill_loop(
        proxy.conninfo("mallory", "mallory-secret", "postgres"),
        "mallory via the proxy",
        until,
        max,
    );
    let mut on_standbys = Vec::new();
    for i in [1, 2] {
        let node = cluster.node(i);
        let conninfo = format!(
            "host={} port={} user={} dbname=postgres",
            node.host(),
            node.port(),
            node.superuser()
        );
        on_standbys.push(spawn_kill_loop(
            conninfo,
            "superuser on a standby",
            until,
            max,
        ));
    }
    // Watch the state meanwhile: any change bumps the generation.
    let mut changes = Vec::new();
    while Instant::now() < until {
        let s = proxy.cluster_state().await;
        if s.generation != before.generation || statuses(&s) != statuses(&before) {
            changes.push(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (on_primary, runs) = through_proxy.await.unwrap();
    let mut killed = on_primary;
    let mut total_runs = runs;
    for t in on_standbys {
        let (k, r) = t.await.unwrap();
        killed += k;
        total_runs += r;
    }
    let after = proxy.cluster_state().await;
    eprintln!(
        "kill loop: {killed} check sessions killed ({on_primary} on the primary) in {total_runs} statements; \
         {} status changes; generation {} -> {}",
        changes.len(),
        before.generation,
        after.generation
    );
    assert!(
        on_primary >= 5,
        "the loop must actually kill check sessions on the primary: {on_primary}"
    );
    assert!(
        changes.is_empty(),
        "killing check sessions changed the cluster state: {:#?}\nmonitor log:\n{}",
        changes.first(),
        proxy.monitor_log()
    );
    assert_eq!(after.generation, before.generation);
    assert_eq!(after.primary_id, before.primary_id);
    assert_eq!(statuses(&after), statuses(&before));
    let log = proxy.monitor_log();
    assert!(
        log.contains("a check session was ended by someone else"),
        "said so in the log once"
    );

    // A real shutdown still fails over promptly: pg_ctl stop -m fast ends
    // the sessions with 57P01, then refuses new ones.
    cluster.node(0).stop(StopMode::Fast).unwrap();
    let stopped = Instant::now();
    let s = proxy
        .wait_state(WAIT, "a failover", |s| {
            s.primary_id.is_some_and(|p| p != 0) && !s.failover_in_progress
        })
        .await;
    let took = stopped.elapsed();
    eprintln!(
        "primary stopped (fast): failed over to {:?} in {took:?}",
        s.primary_id
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
}

/// `a >= b` for two LSNs in text form, asked of `node`.
fn lsn_at_least(node: &Node, a: &str, b: &str) -> bool {
    node.psql(&format!("SELECT '{a}'::pg_lsn >= '{b}'::pg_lsn"))
        .is_ok_and(|r| r == "t")
}

fn positions(node: &Node) -> String {
    node.psql("SELECT pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()")
        .unwrap_or_else(|e| format!("{e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_7_promotion_keeps_the_acknowledged_writes_a_paused_standby_received() {
    let cluster = cluster(2);
    let (pg0, pg1, pg2) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let mut proxy = Proxy::start(&cluster, ProxyOptions::default());
    proxy.wait_state(WAIT, "all backends up", all_up).await;
    let c = proxy
        .alice_after("CREATE TABLE ledger (id int PRIMARY KEY)")
        .await;
    cluster.wait_replicated(WAIT).unwrap();

    // pg2 stops replaying (it keeps receiving); 50 acknowledged rows.
    pg2.psql("SELECT pg_wal_replay_pause()").unwrap();
    let insert = "INSERT INTO ledger SELECT g FROM generate_series($1::int, $2::int) g";
    c.execute(insert, &[&1i32, &50i32]).await.unwrap();
    wait_until(WAIT, "pg1 to replay the 50 rows", || {
        pg1.psql_db("app", "SELECT count(*) FROM ledger")
            .is_ok_and(|n| n == "50")
    })
    .unwrap();

    // pg1's WAL receiver freezes; 200 more acknowledged rows (one by one),
    // which only pg2 receives.
    let walreceiver: i32 = pg1
        .psql("SELECT pid FROM pg_stat_wal_receiver")
        .unwrap()
        .parse()
        .unwrap();
    kill(Pid::from_raw(walreceiver), Signal::SIGSTOP).unwrap();
    for i in 51..=250 {
        c.execute(insert, &[&i, &i]).await.unwrap();
    }
    drop(c);
    let flushed = pg0.psql("SELECT pg_current_wal_flush_lsn()").unwrap();
    wait_until(WAIT, "pg2 to receive every acknowledged row", || {
        pg2.psql("SELECT pg_last_wal_receive_lsn()")
            .is_ok_and(|r| lsn_at_least(pg2, &r, &flushed))
    })
    .unwrap();

    // The monitor is away while the primary dies and pg1's frozen WAL
    // receiver is killed (pg1 restarts and replays what it has), so that
    // it decides on both standbys answering, as in the issue.
    proxy.kill_monitor();
    pg0.stop(StopMode::Immediate).unwrap();
    kill(Pid::from_raw(walreceiver), Signal::SIGKILL).unwrap();
    wait_until(WAIT, "pg1 back, answering in recovery", || {
        pg1.psql_db("app", "SELECT count(*) FROM ledger").is_ok()
            && pg1.is_in_recovery().unwrap_or(false)
    })
    .unwrap();
    eprintln!(
        "primary flushed {flushed}; pg1 receive|replay {}; pg2 receive|replay {}",
        positions(pg1),
        positions(pg2)
    );
    proxy.start_monitor();
    let s = proxy
        .wait_state(Duration::from_secs(60), "a new primary", |s| {
            s.primary_id.is_some_and(|p| p != 0) && !s.failover_in_progress
        })
        .await;
    let on_new: i64 = cluster
        .node(s.primary_id.unwrap() as usize)
        .psql_db("app", "SELECT count(*) FROM ledger")
        .unwrap()
        .parse()
        .unwrap();
    let lost = 250 - on_new;
    eprintln!(
        "promoted {:?}: {on_new} of 250 acknowledged rows, {lost} lost",
        s.primary_id
    );
    assert_eq!(
        s.primary_id,
        Some(2),
        "the standby that received the most WAL: {s:#?}"
    );
    assert_eq!(lost, 0, "acknowledged rows lost");
    // And the cluster takes writes through the proxy again.
    let c = proxy.alice().await;
    c.execute(insert, &[&251i32, &251i32]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_7_switchover_fences_the_old_primary_at_the_database() {
    let cluster = cluster(1);
    let (pg0, pg1) = (cluster.node(0), cluster.node(1));
    let proxy = Proxy::start(&cluster, ProxyOptions::default());
    proxy.wait_state(WAIT, "all backends up", all_up).await;
    pg0.psql("CREATE TABLE bypass (x int)").unwrap();
    cluster.wait_replicated(WAIT).unwrap();
    // pg1 was fenced once (a rejoined former primary keeps its
    // postgresql.auto.conf): promoted, it must take writes all the same.
    pg1.psql("ALTER SYSTEM SET default_transaction_read_only = on")
        .unwrap();
    pg1.psql("SELECT pg_reload_conf()").unwrap();
    // A client that bypasses the proxy.
    let bypass = direct(pg0, "bypass").await;
    bypass
        .batch_execute("INSERT INTO bypass VALUES (1)")
        .await
        .unwrap();

    let run = pgwardenctl_async(
        &proxy.config,
        &["promote", "pg1", "--wait", "--timeout", "60s"],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}\n{}", proxy.monitor_log());
    let s = proxy.cluster_state().await;
    assert_eq!(s.primary_id, Some(1));

    // The old primary: its clients' sessions ended, new ones cannot write.
    assert!(
        bypass
            .batch_execute("INSERT INTO bypass VALUES (2)")
            .await
            .is_err(),
        "the bypassing session was terminated"
    );
    assert_eq!(
        pg0.psql("SHOW default_transaction_read_only").unwrap(),
        "on"
    );
    let err = pg0.psql("INSERT INTO bypass VALUES (3)").unwrap_err();
    assert!(
        format!("{err:#}").contains("read-only transaction"),
        "{err:#}"
    );
    // The new primary takes writes, through the proxy and directly.
    assert_eq!(
        pg1.psql("SHOW default_transaction_read_only").unwrap(),
        "off"
    );
    pg1.psql("INSERT INTO bypass VALUES (4)").unwrap();
    let c = proxy.alice().await;
    c.batch_execute(
        "CREATE TABLE after_switchover (x int); INSERT INTO after_switchover VALUES (1)",
    )
    .await
    .unwrap();
    // What the old primary acknowledged before the switchover is there.
    assert_eq!(
        pg1.psql("SELECT count(*) FROM bypass WHERE x = 1").unwrap(),
        "1"
    );
    let log = proxy.monitor_log();
    assert!(log.contains("fenced the old primary"), "{log}");
    assert!(
        log.contains("received all the fenced primary flushed"),
        "{log}"
    );
}
