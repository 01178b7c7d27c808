//! Automatic failover, end to end: real servers, the real monitor and
//! proxy, clients writing through the proxy while the primary dies.

use std::time::{Duration, Instant};

use pgwarden_e2e::*;
use pgwarden_testkit::{StopMode, wait_until};

/// Inserts row `i`, reconnecting as needed; Ok when acknowledged.
async fn insert(
    client: &mut Option<tokio_postgres::Client>,
    proxy: &Proxy,
    i: i32,
) -> Result<(), String> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(
            proxy
                .connect(ALICE.0, ALICE.1, "app")
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let c = client.as_ref().unwrap();
    match c.execute("INSERT INTO ledger VALUES ($1)", &[&i]).await {
        Ok(_) => Ok(()),
        Err(e) => {
            *client = None;
            Err(format!("{e:?}"))
        }
    }
}

/// Creates the table [`insert`] writes to.
async fn create_ledger(proxy: &Proxy) {
    proxy
        .alice()
        .await
        .batch_execute("CREATE TABLE ledger (id int PRIMARY KEY)")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_continue_on_the_most_advanced_standby_after_the_primary_dies() {
    let (cluster, proxy) = proxied(2, ProxyOptions::default());
    proxy.wait_all_up(Duration::from_secs(20)).await;
    create_ledger(&proxy).await;
    cluster.wait_replicated(Duration::from_secs(20)).unwrap();
    // pg1 stops replaying: pg2 is now the most advanced standby.
    cluster
        .node(1)
        .psql("SELECT pg_wal_replay_pause()")
        .unwrap();

    let mut client = None;
    let mut acked = Vec::new();
    for i in 0..20 {
        insert(&mut client, &proxy, i).await.unwrap();
        acked.push(i);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until(Duration::from_secs(20), "pg2 to replay every row", || {
        cluster
            .node(2)
            .psql_db("app", "SELECT count(*) FROM ledger")
            .unwrap_or_default()
            == "20"
    })
    .unwrap();

    cluster.node(0).stop(StopMode::Immediate).unwrap();
    let killed = Instant::now();
    let mut first_ok_after: Option<Duration> = None;
    let mut errors = Vec::new();
    let mut i = 20;
    while killed.elapsed() < Duration::from_secs(60) {
        match insert(&mut client, &proxy, i).await {
            Ok(()) => {
                acked.push(i);
                if first_ok_after.is_none() {
                    first_ok_after = Some(killed.elapsed());
                }
                if acked.len() >= 40 {
                    break;
                }
            }
            Err(e) => errors.push(e),
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = first_ok_after.unwrap_or_else(|| {
        panic!(
            "no write succeeded after the failover: {errors:?}\n{}",
            proxy.monitor_log()
        )
    });
    eprintln!(
        "first acknowledged write {took:?} after the primary died; {} failed attempts",
        errors.len()
    );

    let state = proxy.cluster_state().await;
    assert_eq!(
        state.primary_id,
        Some(2),
        "the most advanced standby was promoted: {state:#?}"
    );
    assert!(!cluster.node(2).is_in_recovery().unwrap());
    assert_eq!(status_of(&state, 0), Status::Detached as i32);

    // Every acknowledged row is on the new primary.
    let on_new: i64 = query_value(&proxy.alice().await, "SELECT count(*) FROM ledger").await;
    assert_eq!(on_new as usize, acked.len(), "acknowledged rows lost");

    // pg1 resumes and follows the new primary: it receives rows written after the failover.
    cluster
        .node(1)
        .psql("SELECT pg_wal_replay_resume()")
        .unwrap();
    let last = *acked.last().unwrap();
    wait_until(
        Duration::from_secs(30),
        "pg1 to replicate rows written after the failover",
        || {
            cluster
                .node(1)
                .psql_db(
                    "app",
                    &format!("SELECT count(*) FROM ledger WHERE id = {last}"),
                )
                .unwrap_or_default()
                == "1"
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nmonitor log:\n{}", proxy.monitor_log()));
    proxy
        .wait_state(Duration::from_secs(30), "pg1 up again", |s| up(s, 1))
        .await;

    // The old primary comes back, as a primary on the old timeline: it stays
    // detached and gets no traffic. It was detached before it came back:
    // wait until the monitor has checked it alive (on its old timeline, 1)
    // before looking, or the test shows nothing.
    let restarted_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    cluster.node(0).start().unwrap();
    let state = proxy
        .wait_state(
            Duration::from_secs(30),
            "the old primary checked alive again",
            |s| {
                let b = &s.backends[0];
                b.last_check_unix_ms > restarted_ms && b.failed_checks == 0 && b.timeline == 1
            },
        )
        .await;
    assert_eq!(status_of(&state, 0), Status::Detached as i32, "{state:#?}");
    assert_eq!(state.primary_id, Some(2));
    for _ in 0..5 {
        let c = proxy.alice().await;
        assert_eq!(server_port(&c).await, cluster.node(2).port());
    }
    let on_old = cluster
        .node(0)
        .psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'alice'")
        .unwrap();
    assert_eq!(on_old, "0", "the old primary received client traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dying_standby_is_marked_down_without_failover_and_returns_when_streaming() {
    let (cluster, proxy) = proxied(2, ProxyOptions::default());
    let before = proxy.wait_all_up(Duration::from_secs(20)).await;
    let c = proxy.alice_after("CREATE TABLE t (x int)").await;

    cluster.node(1).stop(StopMode::Immediate).unwrap();
    let s = proxy
        .wait_status(Duration::from_secs(20), 1, Status::Down)
        .await;
    assert_eq!(s.primary_id, before.primary_id, "no failover");
    assert!(!s.failover_in_progress);
    // The session on the primary was not disturbed.
    c.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();

    cluster.node(1).start().unwrap();
    let s = proxy
        .wait_state(Duration::from_secs(30), "pg1 up again", |s| up(s, 1))
        .await;
    assert_eq!(s.primary_id, Some(0));
    assert!(s.backends[1].streaming);
    c.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    assert!(
        !proxy.monitor_log().contains("promoting"),
        "a standby's death caused a promotion"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_action_changes_a_backend_status() {
    let (_cluster, proxy) = proxied(1, ProxyOptions::default());
    let before = proxy.wait_all_up(Duration::from_secs(20)).await;

    // A client terminates its own backend.
    let c = proxy.alice().await;
    let err = c
        .batch_execute("SELECT pg_terminate_backend(pg_backend_pid())")
        .await
        .unwrap_err();
    assert!(session_ended(&err), "{err}");
    // A client cancels its query.
    let c = proxy.alice().await;
    let token = c.cancel_token();
    let (r, _) = tokio::join!(c.query("SELECT pg_sleep(30)", &[]), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    assert_eq!(sqlstate(&r.unwrap_err()).as_deref(), Some("57014"));
    // A client disconnects mid-query.
    let c = proxy.alice().await;
    let running = tokio::spawn(async move { c.query("SELECT pg_sleep(30)", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.abort();
    // A client sends garbage.
    let _ = raw_exchange(proxy.port, b"\x00\x00\x00\x10garbagegarbage!!");
    let _ = raw_exchange(proxy.port, &[0xff; 300]);
    // Many clients connect and fail to authenticate.
    for _ in 0..20 {
        let _ = proxy.connect(ALICE.0, "wrong", "app").await;
    }

    // Several check periods later, nothing changed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = proxy.cluster_state().await;
    assert_eq!(
        after.generation, before.generation,
        "a client action changed the cluster state: {after:#?}"
    );
    assert!(all_up(&after));
    proxy.alice().await.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_cluster_streams_each_generation_once_in_order() {
    use pgwarden_proto::v1::BackendRequest;
    let (cluster, proxy) = proxied(2, ProxyOptions::default());
    proxy.wait_all_up(Duration::from_secs(20)).await;
    let mut stream = proxy.watch_cluster().await;
    let first = stream.message().await.unwrap().unwrap();

    // Four changes: detach, attach, a standby dies, it comes back.
    let mut api = proxy.monitor_client().await;
    api.detach_backend(BackendRequest { id: 2 }).await.unwrap();
    proxy
        .wait_status(Duration::from_secs(10), 2, Status::Detached)
        .await;
    api.attach_backend(BackendRequest { id: 2 }).await.unwrap();
    cluster.node(1).stop(StopMode::Immediate).unwrap();
    proxy
        .wait_status(Duration::from_secs(20), 1, Status::Down)
        .await;
    cluster.node(1).start().unwrap();
    let last = proxy
        .wait_state(Duration::from_secs(30), "pg1 up", |s| up(s, 1))
        .await;

    let mut got = vec![first.generation];
    while got.last() < Some(&last.generation) {
        let s = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(s.generation);
    }
    let expected: Vec<u64> = (first.generation..=last.generation).collect();
    assert_eq!(got, expected, "each generation once, in order");
    assert!(got.len() >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_monitor_alone_does_not_disturb_clients() {
    let (_cluster, mut proxy) = proxied(1, ProxyOptions::default());
    let before = proxy.wait_all_up(Duration::from_secs(20)).await;
    let c = proxy.alice_after("CREATE TABLE t (x int)").await;
    proxy.kill_monitor();
    for i in 0..10 {
        c.execute("INSERT INTO t VALUES ($1)", &[&i]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // New clients are served too while the monitor is away (within monitor_stale_after).
    proxy.alice().await.batch_execute("SELECT 1").await.unwrap();
    proxy.start_monitor();
    // While the new monitor starts up and decides, the session goes on.
    for i in 100..140 {
        c.execute("INSERT INTO t VALUES ($1)", &[&i]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = proxy
        .wait_state(
            Duration::from_secs(20),
            "the monitor back with all up",
            all_up,
        )
        .await;
    assert_eq!(after.primary_id, before.primary_id);
    for i in 10..20 {
        c.execute("INSERT INTO t VALUES ($1)", &[&i]).await.unwrap();
    }
    let n: i64 = query_value(&c, "SELECT count(*) FROM t").await;
    assert_eq!(n, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_loses_the_monitor_for_too_long_stops_routing_and_says_why() {
    let (_cluster, mut proxy) = proxied(
        0,
        ProxyOptions::default()
            .set("monitor_stale_after = \"2s\"")
            .set("failover_hold_timeout = \"1s\""),
    );
    proxy.wait_all_up(Duration::from_secs(20)).await;
    let c = proxy.alice().await;
    proxy.kill_monitor();
    let lost = Instant::now();
    // Logins go on until monitor_stale_after (2 s) has passed, then fail.
    let err = loop {
        match proxy.connect(ALICE.0, ALICE.1, "app").await {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    lost.elapsed() < Duration::from_secs(20),
                    "still routing 20 s after losing the monitor"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(
        lost.elapsed() >= Duration::from_secs(2),
        "fenced before monitor_stale_after: {err:?}"
    );
    assert_eq!(sqlstate(&err).as_deref(), Some("57P03"), "{err:?}");
    let msg = db_message(&err);
    assert!(
        msg.contains("monitor") && msg.contains("unreachable"),
        "{msg}"
    );
    // The open session was ended too: the proxy no longer knows the primary.
    assert!(c.batch_execute("SELECT 1").await.is_err());
    // The monitor returns: service resumes.
    proxy.start_monitor();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match proxy.connect(ALICE.0, ALICE.1, "app").await {
            Ok(c) => {
                c.batch_execute("SELECT 1").await.unwrap();
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

/// Guards the fence reaching a transaction-mode client inside an open
/// transaction on a primary that is still up: its relay waits on its
/// alarm, which the change of route must ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_mode_client_mid_transaction_is_cut_off_when_its_live_primary_is_withdrawn() {
    let (_cluster, mut proxy) = proxied(
        0,
        ProxyOptions::default()
            .transaction_mode()
            .set("monitor_stale_after = \"2s\"")
            .set("failover_hold_timeout = \"1s\""),
    );
    proxy.wait_all_up(Duration::from_secs(20)).await;
    let c = proxy.alice().await;
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    proxy.kill_monitor();
    let lost = Instant::now();
    // Withdrawn once monitor_stale_after has passed: another client's
    // statements are refused then (its login needs no server).
    loop {
        let refused = match proxy.connect(ALICE.0, ALICE.1, "app").await {
            Err(_) => true,
            Ok(d) => d.batch_execute("SELECT 1").await.is_err(),
        };
        match refused {
            true => break,
            false => {
                assert!(
                    lost.elapsed() < Duration::from_secs(20),
                    "still routing 20 s after losing the monitor"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // The server is alive, but the open transaction must not go on there.
    let err = tokio::time::timeout(Duration::from_secs(5), c.batch_execute("SELECT 1"))
        .await
        .expect("answered or ended within 5 s");
    assert!(
        err.is_err(),
        "a withdrawn primary still ran the client's statement"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_moves_idle_sessions_and_ends_those_that_cannot_move() {
    let (cluster, proxy) = proxied(1, ProxyOptions::default());
    proxy.wait_all_up(Duration::from_secs(20)).await;
    let old_session = proxy.alice_after("CREATE TABLE s (x int)").await;
    old_session
        .batch_execute("SET search_path = pg_catalog, public")
        .await
        .unwrap();
    let pinned = proxy.alice_after("CREATE TEMP TABLE scratch (x int)").await;
    cluster.wait_replicated(Duration::from_secs(10)).unwrap();

    assert!(proxy.promote(1).await.contains("promoting"));
    let s = proxy.wait_primary(Duration::from_secs(30), 1).await;
    assert_eq!(status_of(&s, 0), Status::Detached as i32);

    // The idle session on the old primary goes on on the new one, with
    // its search_path.
    old_session
        .batch_execute("INSERT INTO s VALUES (1)")
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", proxy.log_tail(30)));
    let row = old_session
        .query_one(
            "SELECT inet_server_port(), current_setting('search_path')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), i32::from(cluster.node(1).port()));
    assert_eq!(row.get::<_, String>(1), "pg_catalog, public");
    // The one with a temporary table was ended with 57P01.
    let err = pinned.batch_execute("SELECT 1").await.unwrap_err();
    assert!(session_ended(&err), "{err:?}");
    let c = proxy.alice_after("INSERT INTO s VALUES (2)").await;
    assert_eq!(server_port(&c).await, cluster.node(1).port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_mode_hooks_receive_pgpool_arguments() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = cluster(2);
    let dir = tempfile::tempdir().unwrap();
    let failover_args = dir.path().join("failover.args");
    let follow_args = dir.path().join("follow.args");
    let script = dir.path().join("failover.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\npsql -X -h \"$6\" -p \"$9\" -U postgres -d postgres -Atc 'SELECT pg_promote()'\n",
            failover_args.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let all = "%d %h %p %D %m %H %M %P %r %R %N %S %%";
    let proxy = Proxy::start(
        &cluster,
        ProxyOptions {
            failover: vec![
                "mode = \"command\"".into(),
                format!("command = \"{} {all}\"", script.display()),
                format!(
                    "follow_primary_command = \"echo {all} >> {}\"",
                    follow_args.display()
                ),
            ],
            ..Default::default()
        },
    );
    proxy.wait_all_up(Duration::from_secs(20)).await;
    cluster.node(0).stop(StopMode::Immediate).unwrap();
    proxy.wait_primary(Duration::from_secs(30), 1).await;

    // `all` for node `id` (%d %h %p %D): pg1 is the new main (%m %H %M %P
    // %r %R), pg0 the old primary (%N %S).
    let (n0, n1) = (cluster.node(0), cluster.node(1));
    let expected = |id: usize| {
        let n = cluster.node(id);
        format!(
            "{id} 127.0.0.1 {} {} 1 127.0.0.1 0 0 {} {} 127.0.0.1 {} %\n",
            n.port(),
            n.data_dir().display(),
            n1.port(),
            n1.data_dir().display(),
            n0.port()
        )
    };
    let got = std::fs::read_to_string(&failover_args).unwrap();
    assert_eq!(
        got,
        expected(0),
        "failover.command arguments (run exactly once)"
    );
    wait_until(Duration::from_secs(10), "follow_primary_command", || {
        follow_args.exists()
    })
    .unwrap();
    let got = std::fs::read_to_string(&follow_args).unwrap();
    assert_eq!(got, expected(2), "follow_primary_command arguments");
    // Writes go to the new primary.
    let c = proxy.alice().await;
    assert!(!in_recovery(&c).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_monitor_publishes_nothing_before_it_has_decided() {
    // A third backend that accepts TCP and never answers: every check of it
    // takes the whole timeout, so a (re)starting monitor needs seconds to decide.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in silent.incoming().take(64) {
            conns.push(c);
        }
    });
    let (_cluster, mut proxy) = proxied(
        1,
        ProxyOptions {
            extra: vec![format!(
                "\n[[backends]]\nname = \"silent\"\nhost = \"127.0.0.1\"\nport = {silent_port}\n"
            )],
            ..Default::default()
        },
    );
    proxy
        .wait_state(Duration::from_secs(30), "a primary", |s| {
            s.primary_id == Some(0) && up(s, 0)
        })
        .await;
    let c = proxy.alice_after("CREATE TABLE t (x int)").await;

    proxy.kill_monitor();
    proxy.start_monitor();
    let sock = proxy.monitor_socket();
    wait_until(Duration::from_secs(10), "the new monitor's socket", || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    })
    .unwrap();
    let mut stream = proxy.watch_cluster().await;
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(
        first.primary_id,
        Some(0),
        "the first state a watcher sees is a decided one: {first:#?}"
    );
    // The session was never interrupted.
    for i in 0..10 {
        c.execute("INSERT INTO t VALUES ($1)", &[&i]).await.unwrap();
    }
    drop(held);
}

/// A writer that opens a new connection for each INSERT, every 50 ms, while
/// the primary is killed: logins and transactions wait for the new primary
/// (`proxy.failover_hold_timeout`) instead of failing, so it sees no error,
/// and every row it was told was written is on the new primary.
async fn a_writer_sees_no_error_through_a_primary_kill(options: ProxyOptions) {
    let (cluster, mut proxy) = proxied(1, options);
    proxy.wait_all_up(Duration::from_secs(20)).await;
    create_ledger(&proxy).await;
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    let mut killed: Option<Instant> = None;
    let mut slowest_after_kill = Duration::ZERO;
    let mut i = 0;
    let started = Instant::now();
    while acked.len() < 40 && started.elapsed() < Duration::from_secs(90) {
        let attempt = Instant::now();
        let mut client = None;
        match insert(&mut client, &proxy, i).await {
            Ok(()) => acked.push(i),
            Err(e) => errors.push(format!("row {i}: {e}")),
        }
        if killed.is_some() {
            slowest_after_kill = slowest_after_kill.max(attempt.elapsed());
        }
        drop(client);
        if i == 10 {
            // Between two of the writer's attempts, once the standby has
            // every acknowledged row (asynchronous replication would lose
            // the rest, which is another issue's matter).
            kill_primary_when_replicated(&cluster);
            killed = Some(Instant::now());
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        errors.is_empty(),
        "the writer saw errors through the failover: {errors:?}\n{}",
        proxy.log_tail(40)
    );
    assert_eq!(acked.len(), 40, "the writer did not get through");
    let state = proxy.cluster_state().await;
    assert_eq!(state.primary_id, Some(1), "{state:#?}");
    let on_new: i64 = query_value(&proxy.alice().await, "SELECT count(*) FROM ledger").await;
    assert_eq!(on_new as usize, acked.len(), "acknowledged rows lost");
    eprintln!("the longest attempt after the kill took {slowest_after_kill:?}");
    let metrics = scrape(proxy.proxy_metrics).unwrap();
    assert!(
        metric(&metrics, "pgwarden_proxy_held_checkouts_total").unwrap_or(0.0) >= 1.0,
        "the writer was held: {metrics}"
    );
    // The failover's timeline, kept across a monitor restart.
    let check_history = |proxy: &Proxy| {
        let run = pgwardenctl(&proxy.config, &["--json", "history"]);
        assert_eq!(run.code, 0, "{run:?}");
        let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        let records = json["records"].as_array().unwrap();
        assert_eq!(records.len(), 1, "{json}");
        let r = &records[0];
        assert_eq!(r["kind"], "failover");
        assert_eq!(r["old_primary"], "pg0");
        assert_eq!(r["new_primary"], "pg1");
        assert!(r["rpo_bytes"].is_u64(), "{r}");
        let phases: Vec<&str> = r["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(phases.first(), Some(&"suspect"), "{phases:?}");
        for p in ["down", "promoted", "completed"] {
            assert!(phases.contains(&p), "{p} missing: {phases:?}");
        }
        // The proxy's report comes last: its first transaction on pg1.
        assert_eq!(phases.last(), Some(&"first write routed"), "{phases:?}");
        let times: Vec<i64> = r["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["at_unix_ms"].as_i64().unwrap())
            .collect();
        assert!(times.is_sorted(), "phases out of order: {r}");
        let text = pgwardenctl(&proxy.config, &["history"]);
        eprintln!("{}", text.stdout);
        assert!(
            text.stdout.starts_with("failover  generation "),
            "{}",
            text.stdout
        );
    };
    wait_history_phase(&proxy.config, "first write routed", Duration::from_secs(15)).await;
    check_history(&proxy);
    let metrics = scrape(proxy.monitor_metrics).unwrap();
    assert_metric(&metrics, "pgwarden_monitor_failovers_recorded", 1.0);
    assert!(
        metric(
            &metrics,
            "pgwarden_monitor_last_failover_phase_ms{phase=\"completed\"}"
        )
        .is_some_and(|ms| ms > 0.0),
        "{metrics}"
    );
    proxy.kill_monitor();
    proxy.start_monitor();
    proxy
        .wait_state(Duration::from_secs(20), "the monitor back", |s| {
            s.primary_id == Some(1)
        })
        .await;
    check_history(&proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_connecting_per_insert_sees_no_error_through_a_primary_kill_in_session_mode() {
    a_writer_sees_no_error_through_a_primary_kill(ProxyOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_connecting_per_insert_sees_no_error_through_a_primary_kill_in_transaction_mode() {
    a_writer_sees_no_error_through_a_primary_kill(ProxyOptions::default().transaction_mode()).await;
}

/// Transaction mode: a statement running outside any transaction block
/// when the primary dies gets 08007 (its outcome is unknown), and its
/// session goes on, on the new primary; a session inside a transaction
/// block is ended (that transaction is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_running_when_the_primary_dies_gets_08007_and_its_session_goes_on() {
    let (cluster, proxy) = proxied(1, ProxyOptions::default().transaction_mode());
    proxy.wait_all_up(Duration::from_secs(20)).await;
    let running = proxy.alice().await;
    let in_block = proxy.alice_after("BEGIN; SELECT 1").await;
    cluster.wait_replicated(Duration::from_secs(20)).unwrap();
    let sleeper = tokio::spawn(async move {
        let r = running.query_one("SELECT pg_sleep(30)", &[]).await;
        (running, r)
    });
    wait_until(Duration::from_secs(10), "the statement to run", || {
        cluster
            .node(0)
            .psql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'")
            .unwrap_or_default()
            == "1"
    })
    .unwrap();
    cluster.node(0).stop(StopMode::Immediate).unwrap();
    let (running, r) = tokio::time::timeout(Duration::from_secs(20), sleeper)
        .await
        .expect("the running statement was answered")
        .unwrap();
    let e = r.expect_err("its server died");
    assert_eq!(sqlstate(&e).as_deref(), Some("08007"), "{e:?}");
    // The session goes on: its next statement waits for the new primary.
    let port: i32 = running
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", proxy.log_tail(40)))
        .get(0);
    assert_eq!(port, i32::from(cluster.node(1).port()));
    // The transaction block is gone with its server: that session ends.
    let e = in_block
        .query_one("SELECT 1", &[])
        .await
        .expect_err("its transaction died with the old primary");
    assert_ne!(sqlstate(&e).as_deref(), Some("08007"), "{e:?}");
    let metrics = scrape(proxy.proxy_metrics).unwrap();
    assert_metric(&metrics, "pgwarden_proxy_lost_requests_total", 1.0);
}

/// A planned switchover under load (pgbench tpcb-like, 16 clients,
/// transaction mode): the proxies hold new transactions, the old primary's
/// running ones finish before it is fenced, and the held ones go on on the
/// new primary. No transaction fails, and every one pgbench counted is on
/// the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_under_pgbench_load_fails_no_transaction() {
    let (cluster, proxy) = proxied(
        1,
        ProxyOptions::default()
            .transaction_mode()
            .set("max_client_connections = 100"),
    );
    proxy.wait_all_up(Duration::from_secs(20)).await;
    pgbench_init(&cluster);
    let bin = pgbench();
    cluster.wait_replicated(Duration::from_secs(20)).unwrap();
    let port = proxy.port.to_string();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&bin)
            .args([
                "-c",
                "16",
                "-j",
                "2",
                "-T",
                "8",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
            ])
            .args(["-U", ALICE.0, "app"])
            .env("PGPASSWORD", ALICE.1)
            .output()
            .unwrap()
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.promote(1).await;
    proxy.wait_primary(Duration::from_secs(30), 1).await;
    let out = run.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("aborted"),
        "pgbench failed through the switchover:\n{stdout}\n{stderr}\n{}\n{}",
        proxy.log_tail(30),
        log_tail("monitor", &proxy.monitor_log(), 30)
    );
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "{stdout}"
    );
    let processed: i64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(processed > 0, "{stdout}");
    // Each tpcb-like transaction adds one history row: all are on the new primary.
    let on_new: i64 = cluster
        .node(1)
        .psql_db("app", "SELECT count(*) FROM pgbench_history")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(on_new, processed, "acknowledged transactions lost");
    assert!(
        proxy
            .monitor_log()
            .contains("the old primary's running transactions finished"),
        "{}",
        log_tail("monitor", &proxy.monitor_log(), 30)
    );
}

/// Transaction mode: an idle client with its own settings (`search_path`,
/// `TimeZone`) and a prepared statement runs its next query on the new
/// primary after the old one is killed, its settings and its statement
/// intact, and no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_transaction_mode_client_keeps_its_settings_and_statements_through_a_primary_kill()
{
    let (cluster, proxy) = proxied(1, ProxyOptions::default().transaction_mode());
    proxy.wait_all_up(Duration::from_secs(20)).await;
    let c = proxy.alice().await;
    c.batch_execute(
        "CREATE SCHEMA kept; CREATE TABLE kept.t (x int); \
         SET search_path = kept, public; SET TimeZone = 'Asia/Tokyo'",
    )
    .await
    .unwrap();
    // `t` is kept.t through the client's search_path.
    let insert = c.prepare("INSERT INTO t VALUES ($1)").await.unwrap();
    c.execute(&insert, &[&1i32]).await.unwrap();
    kill_primary_when_replicated(&cluster);
    // The next statement waits for the new primary, then runs there.
    c.execute(&insert, &[&2i32])
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", proxy.log_tail(30)));
    assert_eq!(server_port(&c).await, cluster.node(1).port());
    let row = c
        .query_one(
            "SELECT count(*), current_setting('search_path'), current_setting('TimeZone') FROM t",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
    assert_eq!(row.get::<_, String>(1), "kept, public");
    assert_eq!(row.get::<_, String>(2), "Asia/Tokyo");
}
