//! The connection cache: reuse bounded by pool_size, and no session state
//! leaking from one client to the next.

use std::time::Duration;

use pgwarden_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_reuse_at_most_pool_size_server_connections() {
    let (cluster, proxy) = proxied(0, ProxyOptions::default().set("pool_size = 3"));
    let mut pids = std::collections::HashSet::new();
    for i in 0..1000 {
        let c = proxy
            .connect(BOB.0, BOB.1, "app")
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        let pid: i32 = query_value(&c, "SELECT pg_backend_pid()").await;
        pids.insert(pid);
        drop(c);
        if i % 250 == 0 {
            assert!(server_sessions(&cluster, BOB.0) <= 3);
        }
    }
    // Let the last release finish, then count what the server sees.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open = server_sessions(&cluster, BOB.0);
    assert!((1..=3).contains(&open), "{open} server sessions for bob");
    assert!(
        pids.len() <= 3,
        "1000 clients used {} server processes",
        pids.len()
    );

    // Concurrent clients beyond pool_size wait for a connection, then get one.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let conninfo = proxy.conninfo(BOB.0, BOB.1, "app");
        tasks.push(tokio::spawn(async move {
            let c = connect(&conninfo).await.unwrap();
            c.batch_execute("SELECT pg_sleep(0.2)").await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(server_sessions(&cluster, BOB.0) <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_never_leaks_to_the_next_client() {
    // One server connection: every client gets the same one.
    let (_cluster, proxy) = proxied(0, ProxyOptions::default().set("pool_size = 1"));

    let first = proxy.alice().await;
    let pid: i32 = query_value(&first, "SELECT pg_backend_pid()").await;
    first
        .batch_execute(
            "SET search_path = pg_catalog; SET application_name = 'leaky'; SET statement_timeout = '7s';
             CREATE TEMP TABLE secret_tmp (x int); PREPARE leaked AS SELECT 1;
             SELECT pg_advisory_lock(4242); LISTEN leak_channel;",
        )
        .await
        .unwrap();
    first.prepare("SELECT 2").await.unwrap();
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let next = proxy.alice().await;
    let pid2: i32 = query_value(&next, "SELECT pg_backend_pid()").await;
    assert_eq!(pid, pid2, "the cached connection was reused");
    let row = next
        .query_one(
            "SELECT current_setting('search_path'), current_setting('statement_timeout'),
                    (SELECT count(*) FROM pg_prepared_statements),
                    (SELECT count(*) FROM pg_class WHERE relname = 'secret_tmp'),
                    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
                    (SELECT count(*) FROM pg_listening_channels())",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "\"$user\", public");
    assert_eq!(row.get::<_, String>(1), "0");
    // tokio-postgres prepared the query above itself: only that one may exist.
    assert!(row.get::<_, i64>(2) <= 1, "prepared statements leaked");
    assert_eq!(row.get::<_, i64>(3), 0, "temp table leaked");
    assert_eq!(row.get::<_, i64>(4), 0, "advisory lock leaked");
    assert_eq!(row.get::<_, i64>(5), 0, "LISTEN leaked");
    let err = next.batch_execute("EXECUTE leaked").await.unwrap_err();
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("26000"),
        "SQL prepared statement leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_is_rolled_back_before_reuse() {
    let (_cluster, proxy) = proxied(0, ProxyOptions::default().set("pool_size = 1"));
    let c = proxy.alice_after("CREATE TABLE r (x int)").await;
    c.batch_execute("BEGIN; INSERT INTO r VALUES (1);")
        .await
        .unwrap();
    drop(c); // leaves mid-transaction
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = proxy.alice().await;
    let n: i64 = query_value(&c, "SELECT count(*) FROM r").await;
    assert_eq!(n, 0, "the abandoned transaction was rolled back");
    // Had the old transaction survived, its INSERT would have assigned an xid.
    let fresh: bool = query_value(&c, "SELECT pg_current_xact_id_if_assigned() IS NULL").await;
    assert!(fresh, "the new session is not inside the old transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_makes_clients_wait_then_fail_clearly() {
    let (_cluster, proxy) = proxied(
        0,
        ProxyOptions::default()
            .set("pool_size = 1")
            .set("pool_timeout = \"1s\""),
    );
    let holder = proxy.alice_after("SELECT 1").await;
    let err = proxy
        .refused(
            ALICE.0,
            ALICE.1,
            "app",
            "no connection while the pool is full",
        )
        .await;
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err}");
    let msg = db_message(&err);
    assert!(msg.contains("pool_size 1"), "{msg}");
    drop(holder);
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.alice().await.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_connection_killed_while_cached_is_not_handed_out() {
    let (cluster, proxy) = proxied(0, ProxyOptions::default().set("pool_size = 2"));
    let c = proxy.alice().await;
    let pid: i32 = query_value(&c, "SELECT pg_backend_pid()").await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster
        .primary()
        .psql(&format!("SELECT pg_terminate_backend({pid})"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = proxy.alice().await;
    let pid2: i32 = query_value(&c, "SELECT pg_backend_pid()").await;
    assert_ne!(pid, pid2);
}

/// `SHOW application_name` and what pg_stat_activity shows for the session.
async fn application_names(c: &tokio_postgres::Client) -> (String, String) {
    let shown = query_value(c, "SHOW application_name").await;
    let activity = "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()";
    (shown, query_value(c, activity).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_different_startup_settings_share_one_pool_and_keep_their_own() {
    let (cluster, proxy) = proxied(0, ProxyOptions::default().set("pool_size = 20"));
    // 60 clients, 60 application names, a few at a time or all at once:
    // never more than pool_size server connections (keyed by every startup
    // parameter, this was one pool per name: 60 connections and more).
    let mut tasks = Vec::new();
    for i in 0..60 {
        let conninfo = format!(
            "{} application_name=client{i} options='-c search_path=s{i},public -c statement_timeout={}ms'",
            proxy.conninfo(ALICE.0, ALICE.1, "app"),
            1001 + i
        );
        tasks.push(tokio::spawn(async move {
            let c = connect(&conninfo).await.unwrap();
            let (shown, activity) = application_names(&c).await;
            assert_eq!(shown, format!("client{i}"));
            assert_eq!(activity, format!("client{i}"));
            let row = c
                .query_one(
                    "SELECT current_setting('search_path'), current_setting('statement_timeout')",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), format!("s{i},public"));
            assert_eq!(row.get::<_, String>(1), format!("{}ms", 1001 + i));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }));
    }
    let mut most = 0;
    while !tasks.iter().all(|t| t.is_finished()) {
        most = most.max(server_sessions(&cluster, ALICE.0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let now = server_sessions(&cluster, ALICE.0);
    println!(
        "60 application names at pool_size 20: at most {most} server connections, {now} at the end"
    );
    assert!(most <= 20, "{most} server connections for pool_size 20");
    assert!(now <= 20, "{now} server connections cached");

    // Two clients with different names on the pool at once: each sees its own.
    let a = connect(&format!(
        "{} application_name=first",
        proxy.conninfo(ALICE.0, ALICE.1, "app")
    ))
    .await
    .unwrap();
    let b = connect(&format!(
        "{} application_name=second",
        proxy.conninfo(ALICE.0, ALICE.1, "app")
    ))
    .await
    .unwrap();
    assert_eq!(
        application_names(&a).await,
        ("first".into(), "first".into())
    );
    assert_eq!(
        application_names(&b).await,
        ("second".into(), "second".into())
    );
    // A client that sets nothing gets the server's default, not a name left
    // on the connection by the one before.
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let plain = proxy.alice().await;
    assert_eq!(
        application_names(&plain).await,
        (String::new(), String::new())
    );
    let path: String = query_value(&plain, "SELECT current_setting('search_path')").await;
    assert_eq!(path, "\"$user\", public", "no search_path left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_copy_from_stdin_the_server_connection_is_cached_for_the_next_client() {
    use futures_util::SinkExt;
    let (_cluster, proxy) = proxied(0, ProxyOptions::default().set("pool_size = 1"));
    let c = proxy.alice_after("CREATE TABLE copied (x int)").await;
    let pid: i32 = query_value(&c, "SELECT pg_backend_pid()").await;
    // tokio-postgres sends Bind, Execute, Sync before the data: the server
    // ignores that Sync, so no ReadyForQuery is owed for it.
    let sink = c.copy_in("COPY copied FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\n2\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    drop(c);
    // The connection is idle, so it is cached at once for the next client
    // (counting that Sync, the proxy waited for a reply that never came,
    // then closed the connection).
    let started = std::time::Instant::now();
    let next = proxy.alice().await;
    let next_pid: i32 = query_value(&next, "SELECT pg_backend_pid()").await;
    assert_eq!(next_pid, pid, "the same server connection, reused");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_startup_setting_is_refused_as_postgresql_refuses_it() {
    let (_cluster, proxy) = proxied(0, ProxyOptions::default().set("pool_size = 1"));
    let err = connect(&format!(
        "{} options='-c DateStyle=bogus'",
        proxy.conninfo(ALICE.0, ALICE.1, "app")
    ))
    .await
    .expect_err("an invalid DateStyle");
    assert_eq!(sqlstate(&err).as_deref(), Some("22023"), "{err}");
    // The pool's one connection is fine for the next client.
    proxy.alice_after("SELECT 1").await;
}

/// Connects, runs `sql`, leaves, and returns the messages of the notices
/// the client got (at login and from `sql`), as tokio-postgres's own
/// `notices` test does on a direct connection.
async fn notices_of(conninfo: &str, sql: &str) -> Vec<String> {
    let (client, mut conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                let _ = tx.send(n.message().to_owned());
            }
        }
    });
    client.batch_execute(sql).await.unwrap();
    drop(client);
    driver.await.unwrap();
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        out.push(m);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_from_a_replayed_startup_setting_reaches_the_client_at_login() {
    let cluster = cluster(0);
    let long_name = "x".repeat(65);
    let truncated = format!(
        "identifier \"{long_name}\" will be truncated to \"{}\"",
        "x".repeat(63)
    );
    let sql = "DROP TABLE IF EXISTS no_such_table";
    let skipping = "table \"no_such_table\" does not exist, skipping";
    for mode in ["session", "transaction"] {
        let proxy = Proxy::start(
            &cluster,
            ProxyOptions::default()
                .set(&format!("pool_mode = \"{mode}\""))
                .set("pool_size = 1"),
        );
        let conninfo = format!(
            "{} application_name={long_name}",
            proxy.conninfo(BOB.0, BOB.1, "app")
        );
        // A fresh server connection, then (pool_size 1) the cached one,
        // which already has the setting; in transaction mode, later
        // transactions' replays say nothing more.
        let rounds: &[&str] = match mode {
            "session" => &["fresh", "cached"],
            _ => &["fresh"],
        };
        for round in rounds {
            assert_eq!(
                notices_of(&conninfo, sql).await,
                [truncated.as_str(), skipping],
                "{mode} mode, {round} server connection"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
