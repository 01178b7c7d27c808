//! Builtin failover actions against real PostgreSQL: promote a standby with
//! `pg_promote()`, repoint another at it over SQL, fence an old primary, and
//! the ways that fails.

use std::time::{Duration, Instant};

use pgwarden_monitor::actions::builtin::{Fenced, fence, follow, promote, wait_received};
use pgwarden_monitor::actions::{ActionError, SqlLogin, Target, conninfo};
use pgwarden_testkit::{Cluster, Node, StopMode, wait_until};

const WAIT: Duration = Duration::from_secs(30);

fn target(id: usize, node: &Node) -> Target {
    Target {
        id,
        name: node.name().to_owned(),
        host: node.host().to_owned(),
        port: node.port(),
        data_dir: node.data_dir().to_path_buf(),
    }
}

fn login() -> SqlLogin {
    SqlLogin {
        user: "postgres".to_owned(),
        password: None,
        database: "postgres".to_owned(),
        connect_timeout: Duration::from_secs(2),
        tls: pgwarden_tls::postgres::PgTls::disabled(),
    }
}

fn conninfo_of(node: &Node) -> Vec<(String, String)> {
    let text = match node.psql("SHOW primary_conninfo") {
        Ok(text) => text,
        Err(e) => panic!("{}: SHOW primary_conninfo: {e:#}", node.name()),
    };
    conninfo::parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn keys(pairs: &[(String, String)]) -> Vec<&str> {
    let mut keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_a_standby_and_repoint_the_other() {
    let cluster = Cluster::builder().standbys(2).start().unwrap();
    let (pg0, pg1, pg2) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let (t1, t2) = (target(1, pg1), target(2, pg2));

    // What pg_basebackup -R wrote parses, and survives a round trip.
    let before = conninfo_of(pg2);
    assert_eq!(conninfo::get(&before, "host"), Some("127.0.0.1"));
    assert_eq!(
        conninfo::get(&before, "port"),
        Some(pg0.port().to_string().as_str())
    );
    assert_eq!(conninfo::get(&before, "user"), Some("postgres"));
    assert_eq!(conninfo::get(&before, "application_name"), Some("pg2"));
    assert_eq!(conninfo::parse(&conninfo::format(&before)).unwrap(), before);

    pg0.psql("CREATE TABLE t (id int PRIMARY KEY, note text); INSERT INTO t VALUES (1, 'before')")
        .unwrap();
    cluster.wait_replicated(WAIT).unwrap();
    pg0.stop(StopMode::Immediate).unwrap();

    let started = Instant::now();
    let promoted = promote(&t1, &login(), WAIT).await.unwrap();
    eprintln!("promote took {:?}: {promoted:?}", started.elapsed());
    assert_eq!(promoted.timeline, 2);
    assert!(promoted.lsn > 0);
    assert!(!pg1.is_in_recovery().unwrap());

    // Promoting a primary again changes nothing.
    let again = promote(&t1, &login(), WAIT).await.unwrap();
    assert_eq!(again.timeline, 2);
    assert!(again.lsn >= promoted.lsn);

    let started = Instant::now();
    follow(&t2, &t1, &login(), WAIT).await.unwrap();
    eprintln!("follow took {:?}", started.elapsed());

    pg1.psql("INSERT INTO t VALUES (2, 'after')").unwrap();
    wait_until(WAIT, "row 2 on pg2", || {
        pg2.psql("SELECT note FROM t WHERE id = 2")
            .is_ok_and(|note| note == "after")
    })
    .unwrap();
    assert_eq!(
        pg2.psql("SELECT note FROM t WHERE id = 1").unwrap(),
        "before"
    );
    assert_eq!(
        pg2.psql("SELECT received_tli FROM pg_stat_wal_receiver")
            .unwrap(),
        "2"
    );
    wait_until(WAIT, "pg2's slot on pg1 to be active", || {
        pg1.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'pgwarden_pg2'")
            .is_ok_and(|active| active == "t")
    })
    .unwrap();
    assert_eq!(
        pg1.psql("SELECT state FROM pg_stat_replication WHERE application_name = 'pg2'")
            .unwrap(),
        "streaming"
    );

    // Only host and port changed in primary_conninfo.
    let after = conninfo_of(pg2);
    assert_eq!(keys(&after), keys(&before));
    for (key, value) in &after {
        match key.as_str() {
            "host" => assert_eq!(value, "127.0.0.1"),
            "port" => assert_eq!(value, &pg1.port().to_string()),
            _ => assert_eq!(Some(value.as_str()), conninfo::get(&before, key), "{key}"),
        }
    }

    // Following again the primary it streams from is harmless and quick.
    let started = Instant::now();
    follow(&t2, &t1, &login(), WAIT).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_a_diverged_standby() {
    let cluster = Cluster::builder().standbys(2).start().unwrap();
    let (pg0, pg1, pg2) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let (t0, t1, t2) = (target(0, pg0), target(1, pg1), target(2, pg2));

    // Promoting the primary is a no-op that reports its timeline.
    let current = promote(&t0, &login(), WAIT).await.unwrap();
    assert_eq!(current.timeline, 1);

    // A primary cannot follow anyone.
    let err = follow(&t0, &t1, &login(), WAIT).await.unwrap_err();
    assert!(
        matches!(&err, ActionError::CannotFollow { target, reason }
            if target.starts_with("pg0 ") && reason.contains("not a standby")),
        "{err:?}"
    );

    // Make pg2 diverge from pg1: pg2 replays WAL that pg1 never gets before
    // pg1 is promoted.
    pg1.stop(StopMode::Fast).unwrap();
    pg0.psql("CREATE TABLE only_on_pg2 AS SELECT g FROM generate_series(1, 1000) g")
        .unwrap();
    cluster.wait_replicated(WAIT).unwrap();
    pg0.stop(StopMode::Immediate).unwrap();
    pg1.start().unwrap();
    let promoted = promote(&t1, &login(), WAIT).await.unwrap();
    assert_eq!(promoted.timeline, 2);

    let timeout = Duration::from_secs(4);
    let started = Instant::now();
    let err = follow(&t2, &t1, &login(), timeout).await.unwrap_err();
    let elapsed = started.elapsed();
    eprintln!("diverged follow failed after {elapsed:?}: {err}");
    assert!(
        matches!(&err, ActionError::CannotFollow { target, reason }
            if target.starts_with("pg2 ")
                && reason.contains("not streaming from pg1")
                && reason.contains("on timeline 2")
                && reason.contains("diverged")),
        "{err:?}"
    );
    assert!(elapsed >= timeout, "{elapsed:?}");
    assert!(elapsed < timeout + Duration::from_secs(3), "{elapsed:?}");
    assert!(!err.to_string().contains('\n'), "{err}");

    // A stopped server: a connection error, fast.
    let started = Instant::now();
    let err = promote(&t0, &login(), WAIT).await.unwrap_err();
    assert!(
        matches!(&err, ActionError::Connect { target, .. } if target.starts_with("pg0 ")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Following a stopped primary fails on its side, naming it.
    let err = follow(&t2, &t0, &login(), WAIT).await.unwrap_err();
    assert!(
        matches!(&err, ActionError::Connect { target, .. } if target.starts_with("pg0 ")),
        "{err:?}"
    );
}

/// Connects with tokio-postgres as the superuser, with `application_name`.
async fn session(node: &Node, application_name: &str) -> tokio_postgres::Client {
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres application_name={application_name}",
        node.host(),
        node.port()
    );
    let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", node.name()));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// `pg_wal_lsn_diff(a, b) >= 0` for two LSNs in text form, asked of `node`.
fn at_least(node: &Node, a: &str, b: &str) -> bool {
    node.psql(&format!("SELECT '{a}'::pg_lsn >= '{b}'::pg_lsn"))
        .is_ok_and(|r| r == "t")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_7_a_paused_standby_promotes_with_all_the_wal_it_received_and_takes_writes() {
    let cluster = Cluster::builder().standbys(1).start().unwrap();
    let (pg0, pg1) = (cluster.node(0), cluster.node(1));
    pg0.psql("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    cluster.wait_replicated(WAIT).unwrap();
    // pg1 carries the fence of a former primary (a rejoin keeps
    // postgresql.auto.conf), and its replay is paused.
    pg1.psql("ALTER SYSTEM SET default_transaction_read_only = on")
        .unwrap();
    pg1.psql("SELECT pg_reload_conf()").unwrap();
    pg1.psql("SELECT pg_wal_replay_pause()").unwrap();
    pg0.psql("INSERT INTO t SELECT generate_series(1, 100)")
        .unwrap();
    let flushed = pg0.psql("SELECT pg_current_wal_flush_lsn()").unwrap();
    wait_until(WAIT, "pg1 to receive every row", || {
        pg1.psql("SELECT pg_last_wal_receive_lsn()")
            .is_ok_and(|r| at_least(pg1, &r, &flushed))
    })
    .unwrap();
    let replayed: i64 = pg1.psql("SELECT count(*) FROM t").unwrap().parse().unwrap();
    assert!(replayed < 100, "replay is paused: {replayed}");
    pg0.stop(StopMode::Immediate).unwrap();

    let promoted = promote(&target(1, pg1), &login(), WAIT).await.unwrap();
    assert_eq!(promoted.timeline, 2);
    assert_eq!(
        pg1.psql("SELECT count(*) FROM t").unwrap(),
        "100",
        "the promotion replayed everything received"
    );
    assert_eq!(
        pg1.psql("SHOW default_transaction_read_only").unwrap(),
        "off"
    );
    pg1.psql("INSERT INTO t VALUES (101)").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_7_fence_makes_a_reachable_old_primary_read_only_and_ends_its_client_sessions() {
    let cluster = Cluster::builder().standbys(1).start().unwrap();
    let (pg0, pg1) = (cluster.node(0), cluster.node(1));
    let (t0, t1) = (target(0, pg0), target(1, pg1));
    pg0.psql("CREATE TABLE t (id int)").unwrap();
    cluster.wait_replicated(WAIT).unwrap();
    let client = session(pg0, "app").await;
    let ours = session(pg0, "pgwarden-monitor").await;
    client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    let started = Instant::now();
    let fenced = fence(&t0, &login(), Duration::from_secs(1)).await.unwrap();
    eprintln!("fence took {:?}: {fenced:?}", started.elapsed());
    let Fenced::ReadOnly {
        terminated,
        flush_lsn,
    } = fenced
    else {
        panic!("{fenced:?}")
    };
    assert!(terminated >= 1, "{fenced:?}");
    // The standby gets what the old primary flushed until the fence.
    assert!(
        wait_received(&t1, &login(), flush_lsn, Duration::from_secs(2))
            .await
            .unwrap()
    );
    assert!(
        !wait_received(
            &t1,
            &login(),
            flush_lsn + (1 << 30),
            Duration::from_millis(300)
        )
        .await
        .unwrap(),
        "WAL nobody wrote is never received"
    );
    // The client's session is gone; pgwarden's own is not.
    assert!(
        client
            .batch_execute("INSERT INTO t VALUES (2)")
            .await
            .is_err()
    );
    ours.batch_execute("SELECT 1").await.unwrap();
    // New sessions cannot write; the standby still streams from it.
    let err = pg0.psql("INSERT INTO t VALUES (3)").unwrap_err();
    assert!(
        format!("{err:#}").contains("read-only transaction"),
        "{err:#}"
    );
    assert_eq!(
        pg0.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
            .unwrap(),
        "1"
    );
    // A standby needs no fence.
    assert_eq!(
        fence(&t1, &login(), Duration::from_secs(1)).await.unwrap(),
        Fenced::Standby
    );
    // Promoting it (here: a primary already, as a retried promotion finds
    // it) lifts the fence.
    promote(&t0, &login(), WAIT).await.unwrap();
    assert_eq!(
        pg0.psql("SHOW default_transaction_read_only").unwrap(),
        "off"
    );
    pg0.psql("INSERT INTO t VALUES (4)").unwrap();
    // A dead old primary: a connection error, at once.
    pg0.stop(StopMode::Immediate).unwrap();
    let started = Instant::now();
    let err = fence(&t0, &login(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, ActionError::Connect { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));
}

/// `set_synchronous` returns only once the WAL senders, which acknowledge
/// commits, have taken the new setting in: each sender's own
/// `sync_priority` says so at once, whichever standby is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_synchronous_returns_once_every_wal_sender_took_the_new_setting() {
    let cluster = Cluster::builder().standbys(2).start().unwrap();
    let primary = target(0, cluster.node(0));
    let states = || {
        cluster
            .node(0)
            .psql(
                "SELECT string_agg(application_name || '=' || sync_priority || ':' || sync_state, ' ' \
                 ORDER BY application_name) FROM pg_stat_replication",
            )
            .unwrap()
    };
    for round in 0..3 {
        for (members, want) in [
            (vec!["pg1"], "pg1=1:quorum pg2=0:async"),
            (vec!["pg2"], "pg1=0:async pg2=1:quorum"),
            (vec!["pg1", "pg2"], "pg1=1:quorum pg2=1:quorum"),
            (vec![], "pg1=0:async pg2=0:async"),
        ] {
            let members: Vec<String> = members.iter().map(|m| (*m).to_owned()).collect();
            let quoted: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
            let names = if members.is_empty() {
                String::new()
            } else {
                format!("ANY 1 ({})", quoted.join(", "))
            };
            pgwarden_monitor::actions::builtin::set_synchronous(
                &primary,
                &login(),
                &names,
                &members,
                WAIT,
            )
            .await
            .unwrap_or_else(|e| panic!("round {round}, {names:?}: {e}"));
            assert_eq!(
                states(),
                want,
                "round {round}: right after setting {names:?}"
            );
        }
    }
    // A WAL sender that cannot take the setting in (stopped) holds it up:
    // the setting is not reported made while pg1's sender is behind.
    let sender: i32 = cluster
        .node(0)
        .psql("SELECT pid FROM pg_stat_replication WHERE application_name = 'pg1'")
        .unwrap()
        .parse()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(sender);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let members = vec!["pg1".to_owned()];
    let names = "ANY 1 (\"pg1\")";
    let stalled = pgwarden_monitor::actions::builtin::set_synchronous(
        &primary,
        &login(),
        names,
        &members,
        Duration::from_secs(3),
    )
    .await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    match stalled {
        Err(ActionError::Timeout { what, .. }) => {
            assert!(what.contains("WAL senders"), "{what}")
        }
        other => panic!("with pg1's WAL sender stopped: {other:?}"),
    }
    pgwarden_monitor::actions::builtin::set_synchronous(&primary, &login(), names, &members, WAIT)
        .await
        .unwrap();
    assert_eq!(states(), "pg1=1:quorum pg2=0:async", "once it runs again");
}

/// A failover.user that may set synchronous_standby_names but not see the
/// WAL senders' details is told at once what to grant, instead of waiting
/// for senders it cannot see until the timeout; with pg_read_all_stats it
/// works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_synchronous_says_what_to_grant_when_the_login_cannot_see_the_wal_senders() {
    let cluster = Cluster::builder().standbys(1).start().unwrap();
    cluster
        .create_user(
            "syncer",
            "syncer-secret",
            pgwarden_testkit::PasswordKind::Scram,
        )
        .unwrap();
    cluster
        .node(0)
        .psql(
            "REVOKE pg_monitor FROM syncer; \
             GRANT ALTER SYSTEM ON PARAMETER synchronous_standby_names TO syncer; \
             GRANT EXECUTE ON FUNCTION pg_reload_conf() TO syncer",
        )
        .unwrap();
    let syncer = SqlLogin {
        user: "syncer".to_owned(),
        password: Some("syncer-secret".to_owned()),
        ..login()
    };
    let primary = target(0, cluster.node(0));
    let members = vec!["pg1".to_owned()];
    let names = "ANY 1 (\"pg1\")";
    let started = Instant::now();
    let refused = pgwarden_monitor::actions::builtin::set_synchronous(
        &primary, &syncer, names, &members, WAIT,
    )
    .await;
    match refused {
        Err(ActionError::Sql { message, .. }) => {
            assert!(message.contains("grant it pg_read_all_stats"), "{message}")
        }
        other => panic!("without pg_read_all_stats: {other:?}"),
    }
    assert!(
        started.elapsed() < WAIT / 2,
        "said at once: {:?}",
        started.elapsed()
    );
    cluster
        .node(0)
        .psql("GRANT pg_read_all_stats TO syncer")
        .unwrap();
    pgwarden_monitor::actions::builtin::set_synchronous(&primary, &syncer, names, &members, WAIT)
        .await
        .unwrap();
    assert_eq!(
        cluster
            .node(0)
            .psql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'pg1'")
            .unwrap(),
        "quorum"
    );
}
