//! `proxy.pool_mode = "transaction"`: many clients on few server
//! connections, with prepared statements, COPY, errors, LISTEN and each
//! client's own settings working as on a direct connection.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt, TryStreamExt};
use pgwarden_e2e::*;
use pgwarden_testkit::Cluster;

/// A [`cluster`] with `standbys` standbys and a transaction-mode proxy of
/// `pool_size` server connections in front.
fn transaction_proxied(standbys: usize, pool_size: usize) -> (Cluster, Proxy) {
    proxied(
        standbys,
        ProxyOptions::default()
            .transaction_mode()
            .set(&format!("pool_size = {pool_size}"))
            .set("max_client_connections = 300"),
    )
}

/// Connects and hands the connection's notifications to a channel.
async fn connect_listening(
    conninfo: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) {
    let (client, mut conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n);
            }
        }
    });
    (client, rx)
}

/// The next notification [`connect_listening`] handed over, within 10 s.
async fn next_notification(
    notes: &mut tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) -> tokio_postgres::Notification {
    tokio::time::timeout(Duration::from_secs(10), notes.recv())
        .await
        .expect("notification in time")
        .expect("the listening connection is up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_pgbench_clients_with_prepared_statements_share_five_server_connections() {
    // On two threads: the other tests run the default single-threaded
    // proxy, this one the multi-threaded runtime, under load.
    let (cluster, proxy) = proxied(
        0,
        ProxyOptions::default()
            .transaction_mode()
            .set("pool_size = 5")
            .set("worker_threads = 2")
            .set("max_client_connections = 300"),
    );
    pgbench_init(&cluster);
    let bin = pgbench();
    let pg = cluster.primary();

    // Count the server sessions while the run goes on.
    let running = Arc::new(AtomicBool::new(true));
    let most = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (running, most) = (Arc::clone(&running), Arc::clone(&most));
        let (dir, port) = (pg.socket_dir().to_owned(), pg.port());
        std::thread::spawn(move || {
            let psql = pgwarden_testkit::pg_bin_dir().unwrap().join("psql");
            let mut samples = 0;
            while running.load(Ordering::Relaxed) && samples < 600 {
                samples += 1;
                let out = Command::new(&psql)
                    .args(["-XAt", "-h"])
                    .arg(&dir)
                    .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres", "-c"])
                    .arg("SELECT count(*) FROM pg_stat_activity WHERE usename = 'alice' AND backend_type = 'client backend'")
                    .output();
                if let Ok(o) = out
                    && let Ok(n) = String::from_utf8_lossy(&o.stdout).trim().parse::<usize>()
                {
                    most.fetch_max(n, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        })
    };
    let run = Command::new(&bin)
        .args(["-c", "100", "-j", "2", "-S", "-M", "prepared", "-t", "100"])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.port.to_string(),
            "-U",
            ALICE.0,
            "app",
        ])
        .env("PGPASSWORD", ALICE.1)
        .output()
        .unwrap();
    running.store(false, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "pgbench failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&run.stderr),
        proxy.log_tail(40)
    );
    assert!(
        stdout.contains("number of transactions actually processed: 10000/10000"),
        "{stdout}"
    );
    assert!(
        stdout.contains("number of failed transactions: 0 "),
        "{stdout}"
    );
    let most = most.load(Ordering::Relaxed);
    assert!(samples > 0);
    assert!(
        (1..=5).contains(&most),
        "{most} server sessions at once for 100 clients on pool_size 5"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_follow_their_clients_across_server_connections() {
    let (cluster, proxy) = transaction_proxied(0, 2);
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(proxy.alice().await);
    }
    // Each client prepares its statements, then runs them in many small
    // transactions while the others do too: each lands on whichever of
    // the two server connections is free.
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let add = c.prepare("SELECT $1::int + 1").await.unwrap();
            let mul = c.prepare("SELECT $1::int * $2::int").await.unwrap();
            for n in 0..60i32 {
                let v: i32 = c.query_one(&add, &[&n]).await.unwrap().get(0);
                assert_eq!(v, n + 1);
                let v: i32 = c.query_one(&mul, &[&n, &(i as i32)]).await.unwrap().get(0);
                assert_eq!(v, n * i as i32);
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    assert!(server_sessions(&cluster, ALICE.0) <= 2);
    // A statement closed by one client stays usable by another that
    // prepared the same text.
    let a = &clients[0];
    let b = &clients[1];
    let sa = a.prepare("SELECT 40 + $1::int").await.unwrap();
    let sb = b.prepare("SELECT 40 + $1::int").await.unwrap();
    drop(sa);
    let v: i32 = b.query_one(&sb, &[&2i32]).await.unwrap().get(0);
    assert_eq!(v, 42);
    // A statement that fails to prepare leaves nothing behind.
    let e = a.prepare("SELEC nonsense").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42601"));
    let v: i32 = query_value(a, "SELECT 7").await;
    assert_eq!(v, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_after_a_schema_change_sees_the_new_schema() {
    // One server connection: the second client's Parse of the same text
    // lands where the first client's statement, prepared before the
    // change, still is.
    let (cluster, proxy) = transaction_proxied(0, 1);
    let a = proxy.alice_after("CREATE TABLE stale_t (v int)").await;
    let insert = "INSERT INTO stale_t VALUES ($1)";
    let select = "SELECT v FROM stale_t";
    let before = a.prepare(insert).await.unwrap();
    assert_eq!(before.params(), [tokio_postgres::types::Type::INT4]);
    let rows = a.prepare(select).await.unwrap();
    assert_eq!(
        rows.columns()[0].type_(),
        &tokio_postgres::types::Type::INT4
    );
    a.batch_execute("DROP TABLE stale_t; CREATE TABLE stale_t (v text)")
        .await
        .unwrap();
    // A new client, as on a direct connection, gets the new types...
    let b = proxy.alice().await;
    let after = b.prepare(insert).await.unwrap();
    assert_eq!(after.params(), [tokio_postgres::types::Type::TEXT]);
    b.execute(&after, &[&"seven"]).await.unwrap();
    let rows = b.prepare(select).await.unwrap();
    assert_eq!(
        rows.columns()[0].type_(),
        &tokio_postgres::types::Type::TEXT
    );
    let v: String = b.query_one(&rows, &[]).await.unwrap().get(0);
    assert_eq!(v, "seven");
    // ...and so does the first one when it prepares again.
    let again = a.prepare(insert).await.unwrap();
    assert_eq!(again.params(), [tokio_postgres::types::Type::TEXT]);
    a.execute(&again, &[&"eight"]).await.unwrap();
    assert_eq!(server_sessions(&cluster, ALICE.0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_failing_transactions_and_listen_work_in_transaction_mode() {
    let (cluster, proxy) = transaction_proxied(0, 2);
    let a = proxy
        .alice_after("CREATE TABLE items (id int, name text)")
        .await;

    // COPY in and out.
    let sink = a
        .copy_in("COPY items FROM STDIN (FORMAT csv)")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    for i in 0..1000 {
        sink.send(bytes::Bytes::from(format!("{i},item {i}\n")))
            .await
            .unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 1000);
    let out: Vec<bytes::Bytes> = a
        .copy_out("COPY (SELECT * FROM items ORDER BY id) TO STDOUT")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(out.concat().iter().filter(|b| **b == b'\n').count(), 1000);

    // A failing transaction: the error, the aborted state, the rollback,
    // and the server connection is fine for the next client.
    a.batch_execute("BEGIN").await.unwrap();
    let e = a.query_one("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("22012"));
    let e = a.query_one("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25P02"));
    a.batch_execute("ROLLBACK").await.unwrap();
    let n: i64 = query_value(&a, "SELECT count(*) FROM items").await;
    assert_eq!(n, 1000);

    // LISTEN pins its client; NOTIFY from another client reaches it, with
    // the notifying backend's pid.
    let conninfo = proxy.conninfo(ALICE.0, ALICE.1, "app");
    let (listener, mut notes) = connect_listening(&conninfo).await;
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let b = proxy.alice().await;
    for i in 0..5 {
        b.batch_execute(&format!("NOTIFY jobs, 'job {i}'"))
            .await
            .unwrap();
    }
    for i in 0..5 {
        let n = next_notification(&mut notes).await;
        assert_eq!(n.channel(), "jobs");
        assert_eq!(n.payload(), format!("job {i}"));
    }
    // The pinned listener keeps its server; the others share the other one.
    for _ in 0..20 {
        let v: i32 = query_value(&a, "SELECT 1").await;
        assert_eq!(v, 1);
        let v: i32 = query_value(&b, "SELECT 2").await;
        assert_eq!(v, 2);
    }
    assert!(server_sessions(&cluster, ALICE.0) <= 2);
}

/// The first column of the first row a raw client read, as a number.
fn first_int(msgs: &[(u8, Vec<u8>)]) -> i32 {
    let (_, row) = msgs.iter().find(|(t, _)| *t == b'D').expect("a row");
    // Column count (2 bytes), the value's length (4), the value.
    String::from_utf8_lossy(&row[6..]).parse().unwrap()
}

/// The pid field of a NotificationResponse a raw client reads.
fn notification_pid(s: &mut std::net::TcpStream) -> (i32, String) {
    let msgs = read_until(s, |m| m.iter().any(|(t, _)| *t == b'A'));
    let (_, body) = msgs.into_iter().find(|(t, _)| *t == b'A').unwrap();
    let pid = i32::from_be_bytes(body[0..4].try_into().unwrap());
    let payload = body[4..].split(|b| *b == 0).nth(1).unwrap();
    (pid, String::from_utf8_lossy(payload).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listeners_own_notifications_carry_its_pid_and_anothers_the_pid_of_the_server_that_ran_them()
 {
    let (_cluster, proxy) = transaction_proxied(0, 3);
    let port = proxy.port;
    let conninfo = proxy.conninfo(BOB.0, BOB.1, "app");
    let (listener, mut notes) = connect_listening(&conninfo).await;
    listener.batch_execute("LISTEN jobs").await.unwrap();
    // Clients notify in turn on the shared servers, each asking in the
    // same transaction which server runs it.
    let ran_on = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut clients: Vec<_> = (0..3).map(|_| raw_login(port)).collect();
        let mut ran_on = Vec::new();
        for round in 0..4 {
            for (i, s) in clients.iter_mut().enumerate() {
                s.write_all(&query_message(&format!(
                    "SELECT pg_backend_pid(); NOTIFY jobs, '{i} {round}'"
                )))
                .unwrap();
                let pid = first_int(&read_until(s, readies(1)));
                ran_on.push((format!("{i} {round}"), pid));
            }
        }
        ran_on
    })
    .await
    .unwrap();
    for _ in 0..12 {
        let n = next_notification(&mut notes).await;
        let (_, pid) = ran_on.iter().find(|(p, _)| p == n.payload()).unwrap();
        assert_eq!(
            n.process_id(),
            *pid,
            "the notification {:?} names the server that ran it",
            n.payload()
        );
    }
    // A listener's own notifications carry the pid it was told (not its
    // server's): the check clients make to skip them works.
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let (mut s, (pid, _)) = raw_login_with_key(port);
        s.write_all(&query_message("LISTEN mine")).unwrap();
        read_until(&mut s, readies(1));
        s.write_all(&query_message("SELECT pg_backend_pid()"))
            .unwrap();
        let server = first_int(&read_until(&mut s, readies(1)));
        assert_ne!(
            server, pid,
            "a transaction-mode client is told a pid of the proxy's"
        );
        s.write_all(&query_message("NOTIFY mine, 'me'")).unwrap();
        assert_eq!(notification_pid(&mut s), (pid, "me".to_owned()));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_their_own_settings_share_one_server_connection() {
    let (cluster, proxy) = transaction_proxied(0, 1);
    let a = proxy.alice_named("app-a").await;
    let b = proxy.alice_named("app-b").await;
    for _ in 0..5 {
        for (c, name) in [(&a, "app-a"), (&b, "app-b")] {
            let shown: String = query_value(c, "SHOW application_name").await;
            assert_eq!(shown, name);
            let seen: String = c
                .query_one(
                    "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(seen, name);
        }
    }
    assert_eq!(
        server_sessions(&cluster, ALICE.0),
        1,
        "one server connection"
    );
    // A tracked setting a client SETs follows it; the other keeps its own.
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    for _ in 0..3 {
        let tz: String = query_value(&a, "SHOW TimeZone").await;
        assert_eq!(tz, "Asia/Tokyo");
        let tz: String = query_value(&b, "SHOW TimeZone").await;
        assert_ne!(tz, "Asia/Tokyo");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_one_client_changes_never_reaches_a_client_with_the_same_startup_settings() {
    // Clients with the same settings skip the comparison at checkout;
    // a SET by one of them must still not follow the connection to the next.
    let (cluster, proxy) = transaction_proxied(0, 1);
    let a = proxy.alice().await;
    let b = proxy.alice().await;
    let show = async |c: &tokio_postgres::Client, what: &str| -> String {
        c.query_one(&format!("SHOW {what}"), &[])
            .await
            .unwrap()
            .get(0)
    };
    let default_tz = show(&b, "TimeZone").await;
    assert_ne!(default_tz, "Asia/Tokyo");
    for round in 0..3 {
        a.batch_execute("SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'SQL, DMY'")
            .await
            .unwrap();
        assert_eq!(show(&b, "TimeZone").await, default_tz, "round {round}");
        assert_eq!(show(&b, "DateStyle").await, "ISO, MDY", "round {round}");
        assert_eq!(show(&a, "TimeZone").await, "Asia/Tokyo", "round {round}");
        a.batch_execute("RESET TimeZone; RESET DateStyle")
            .await
            .unwrap();
        assert_eq!(show(&a, "TimeZone").await, default_tz, "round {round}");
        assert_eq!(show(&b, "TimeZone").await, default_tz, "round {round}");
    }
    assert_eq!(server_sessions(&cluster, ALICE.0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_pins_its_client_and_never_reaches_another() {
    let (_cluster, proxy) = transaction_proxied(0, 2);
    let a = proxy.alice().await;
    let b = proxy.alice().await;
    let c = proxy.alice().await;
    a.batch_execute("CREATE TEMP TABLE mine (x int)")
        .await
        .unwrap();
    let pinned: i32 = query_value(&a, "SELECT pg_backend_pid()").await;
    for i in 0..20 {
        // a keeps its server (and its temp table) through every transaction.
        a.execute("INSERT INTO mine VALUES ($1)", &[&i])
            .await
            .unwrap();
        let pid: i32 = query_value(&a, "SELECT pg_backend_pid()").await;
        assert_eq!(pid, pinned);
        // b and c share the other server and never see a's table.
        for other in [&b, &c] {
            let pid: i32 = query_value(other, "SELECT pg_backend_pid()").await;
            assert_ne!(pid, pinned, "another client got the pinned server");
            let e = other
                .query_one("SELECT * FROM mine", &[])
                .await
                .unwrap_err();
            assert_eq!(sqlstate(&e).as_deref(), Some("42P01"));
        }
    }
    let n: i64 = query_value(&a, "SELECT count(*) FROM mine").await;
    assert_eq!(n, 20);
    // `pools` counts them: a holds a server (pinned), b and c hold none.
    let run = pgwardenctl_async(&proxy.config, &["pools"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let row: Vec<&str> = run
        .stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(ALICE.0))
        .unwrap_or_else(|| panic!("no alice row:\n{}", run.stdout))
        .split_whitespace()
        .collect();
    // BACKEND USER DATABASE ACTIVE IDLE WAITING CL_ACTIVE CL_IDLE CL_PINNED
    // READS WRITES
    assert_eq!(&row[3..9], ["1", "1", "0", "1", "2", "1"], "{}", run.stdout);
    assert_eq!(row[9], "0", "no balancing, no reads: {}", run.stdout);
    let metrics = scrape(proxy.proxy_metrics).unwrap();
    let pinned = "pgwarden_proxy_pool_clients{backend=\"0\",user=\"alice\",database=\"app\",state=\"pinned\"}";
    assert_metric(&metrics, pinned, 1.0);
    // Once a leaves, its server is reset before anyone else gets it.
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = proxy.alice().await;
    for _ in 0..10 {
        for other in [&b, &c, &d] {
            let e = other
                .query_one("SELECT * FROM mine", &[])
                .await
                .unwrap_err();
            assert_eq!(sqlstate(&e).as_deref(), Some("42P01"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_startup_settings_never_reach_another_client() {
    let (cluster, proxy) = transaction_proxied(0, 1);
    let base = proxy.conninfo(ALICE.0, ALICE.1, "app");
    let a = connect(&format!(
        "{base} options='-c search_path=private -c statement_timeout=4321ms'"
    ))
    .await
    .unwrap();
    let b = connect(&base).await.unwrap();
    // Both on the one server connection, in turns.
    for _ in 0..5 {
        assert_eq!(settings_of(&a).await, ("private".into(), "4321ms".into()));
        assert_eq!(
            settings_of(&b).await,
            ("\"$user\", public".into(), "0".into())
        );
    }
    assert_eq!(server_sessions(&cluster, ALICE.0), 1);
}

async fn settings_of(c: &tokio_postgres::Client) -> (String, String) {
    query_pair(
        c,
        "SELECT current_setting('search_path'), current_setting('statement_timeout')",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_clients_discard_all_its_startup_settings_come_back() {
    let (_cluster, proxy) = transaction_proxied(0, 1);
    let base = proxy.conninfo(ALICE.0, ALICE.1, "app");
    let a = connect(&format!(
        "{base} options='-c search_path=private -c statement_timeout=4321ms'"
    ))
    .await
    .unwrap();
    assert_eq!(settings_of(&a).await, ("private".into(), "4321ms".into()));
    // DISCARD ALL takes the server connection back to its defaults; as on
    // a direct connection, the client's startup settings are still its own
    // afterwards (the proxy had kept thinking they were applied).
    a.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(settings_of(&a).await, ("private".into(), "4321ms".into()));
    a.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(settings_of(&a).await, ("private".into(), "4321ms".into()));
    // A search_path it SET goes, and its startup one comes back.
    a.batch_execute("SET search_path = public").await.unwrap();
    assert_eq!(settings_of(&a).await.0, "public");
    a.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(settings_of(&a).await, ("private".into(), "4321ms".into()));
    a.batch_execute("SET search_path = public").await.unwrap();
    a.batch_execute("RESET search_path").await.unwrap();
    assert_eq!(settings_of(&a).await.0, "private");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_the_server_running_the_clients_transaction_only() {
    let (_cluster, proxy) = transaction_proxied(0, 2);
    let a = proxy.alice().await;
    let b = proxy.alice().await;
    // b is busy on the other server connection the whole time.
    let busy = tokio::spawn(async move {
        let r = b.query_one("SELECT pg_sleep(2)::text", &[]).await;
        (b, r)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let token = a.cancel_token();
    let started = std::time::Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let err = a.query("SELECT pg_sleep(60)", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    canceller.await.unwrap().unwrap();
    // b's statement, on the other server, was not touched.
    let (b, r) = busy.await.unwrap();
    assert!(r.is_ok(), "b's query was cancelled too: {r:?}");
    // An idle client's cancel reaches nobody: b's next query runs to its end.
    a.cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    let v: i32 = query_value(&b, "SELECT 3").await;
    assert_eq!(v, 3);
    let v: i32 = query_value(&a, "SELECT 4").await;
    assert_eq!(v, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_and_their_statements_move_to_a_new_primary_open_transactions_end() {
    let (cluster, proxy) = transaction_proxied(1, 2);
    proxy.wait_all_up(Duration::from_secs(20)).await;
    let idle = proxy.alice_after("CREATE TABLE moved (x int)").await;
    let insert = idle.prepare("INSERT INTO moved VALUES ($1)").await.unwrap();
    idle.execute(&insert, &[&1i32]).await.unwrap();
    let open = proxy
        .alice_after("BEGIN; INSERT INTO moved VALUES (100)")
        .await;
    cluster.wait_replicated(Duration::from_secs(10)).unwrap();

    proxy.promote(1).await;
    proxy.wait_primary(Duration::from_secs(30), 1).await;

    // The transaction open on the old primary is not carried on elsewhere.
    let err = open
        .batch_execute("INSERT INTO moved VALUES (101); COMMIT")
        .await
        .unwrap_err();
    assert!(session_ended(&err), "{err:?}");
    // The idle client holds no server: its next transaction, with its
    // prepared statement, runs on the new primary without an error.
    idle.execute(&insert, &[&2i32]).await.unwrap();
    let port: i32 = query_value(&idle, "SELECT inet_server_port()").await;
    assert_eq!(port, i32::from(cluster.node(1).port()));
    let rows: Vec<i32> = idle
        .query("SELECT x FROM moved ORDER BY x", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        vec![1, 2],
        "the open transaction's rows were not committed"
    );
}

/// A frontend message of type `tag` whose body is `parts`, each followed by
/// a NUL when it is a string (`Ok`), as is otherwise (`Err`).
fn frontend_message(tag: u8, parts: &[Result<&str, &[u8]>]) -> Vec<u8> {
    let mut body = Vec::new();
    for p in parts {
        match p {
            Ok(s) => {
                body.extend_from_slice(s.as_bytes());
                body.push(0);
            }
            Err(b) => body.extend_from_slice(b),
        }
    }
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend(body);
    m
}

fn parse_msg(name: &str, sql: &str) -> Vec<u8> {
    frontend_message(b'P', &[Ok(name), Ok(sql), Err(&[0, 0])])
}

fn bind_execute(name: &str) -> Vec<u8> {
    let mut m = frontend_message(b'B', &[Ok(""), Ok(name), Err(&[0, 0, 0, 0, 0, 0])]);
    m.extend(frontend_message(b'E', &[Ok(""), Err(&[0, 0, 0, 0])]));
    m
}

fn sync_msg() -> Vec<u8> {
    frontend_message(b'S', &[])
}

/// Reads messages until `done` holds for what was read.
fn read_until(
    s: &mut std::net::TcpStream,
    done: impl Fn(&[(u8, Vec<u8>)]) -> bool,
) -> Vec<(u8, Vec<u8>)> {
    use std::io::Read;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !done(&messages(&got)) {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed: {:?}", messages(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    messages(&got)
}

fn readies(n: usize) -> impl Fn(&[(u8, Vec<u8>)]) -> bool {
    move |m| m.iter().filter(|(t, _)| *t == b'Z').count() >= n
}

/// What a client sees of replies: types, row values, error codes.
fn seen(msgs: &[(u8, Vec<u8>)]) -> Vec<String> {
    msgs.iter()
        .map(|(t, body)| match t {
            b'D' => format!(
                "D {}",
                first_value(&[(*t, body.clone())]).unwrap_or_default()
            ),
            b'E' => format!(
                "E {}",
                first_sqlstate(&[(*t, body.clone())]).unwrap_or_default()
            ),
            b'Z' => format!("Z {}", body[0] as char),
            _ => (*t as char).to_string(),
        })
        .collect()
}

/// asyncpg's `prepare()` then a simple query, and the like: a Query before
/// the Sync of extended-protocol messages, answered as PostgreSQL answers
/// it, and skipped as PostgreSQL skips it when one of them failed.
fn query_before_sync_conversation(port: u16) -> Vec<Vec<String>> {
    use std::io::Write;
    let mut s = raw_login(port);
    let mut seen_all = Vec::new();
    // Runs: ParseComplete, BindComplete, row, CommandComplete, then the
    // Query's answer with its ReadyForQuery, then the Sync's.
    let mut m = parse_msg("", "SELECT 1");
    m.extend(bind_execute(""));
    m.extend(query_message("SELECT 2"));
    m.extend(sync_msg());
    s.write_all(&m).unwrap();
    seen_all.push(seen(&read_until(&mut s, readies(2))));
    // A failed Parse: the Query and the next Parse are skipped; one
    // ReadyForQuery, the Sync's.
    let mut m = parse_msg("bad", "SELEC 1");
    m.extend(query_message("SELECT 3"));
    m.extend(parse_msg("good", "SELECT 4"));
    m.extend(sync_msg());
    s.write_all(&m).unwrap();
    seen_all.push(seen(&read_until(&mut s, readies(1))));
    // Neither statement exists.
    let mut m = bind_execute("good");
    m.extend(sync_msg());
    s.write_all(&m).unwrap();
    seen_all.push(seen(&read_until(&mut s, readies(1))));
    // The Query's own error skips nothing after it.
    let mut m = parse_msg("a", "SELECT 5");
    m.extend(query_message("SELEC 6"));
    m.extend(bind_execute("a"));
    m.extend(sync_msg());
    s.write_all(&m).unwrap();
    seen_all.push(seen(&read_until(&mut s, readies(2))));
    // asyncpg's way: Parse and Flush, the error read, then a Query (skipped)
    // and the Sync.
    let mut m = parse_msg("p", "SELEC 7");
    m.extend(frontend_message(b'H', &[]));
    s.write_all(&m).unwrap();
    seen_all.push(seen(&read_until(&mut s, |m| {
        m.iter().any(|(t, _)| *t == b'E')
    })));
    s.write_all(&query_message("SELECT 8")).unwrap();
    s.write_all(&sync_msg()).unwrap();
    seen_all.push(seen(&read_until(&mut s, readies(1))));
    s.write_all(&query_message("SELECT 9")).unwrap();
    seen_all.push(seen(&read_until(&mut s, readies(1))));
    seen_all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_before_sync_is_answered_and_skipped_as_on_postgresql() {
    let (cluster, proxy) = transaction_proxied(0, 1);
    let port = cluster.primary().port();
    let direct = tokio::task::spawn_blocking(move || query_before_sync_conversation(port))
        .await
        .unwrap();
    assert_eq!(
        direct[0],
        ["1", "2", "D 1", "C", "T", "D 2", "C", "Z I", "Z I"],
        "PostgreSQL's own answer, which the proxy must give"
    );
    let port = proxy.port;
    let proxied = tokio::task::spawn_blocking(move || query_before_sync_conversation(port))
        .await
        .unwrap();
    assert_eq!(proxied, direct);
    // The connection went back to the pool in order: another client on
    // the one server connection gets its own answers.
    let other = proxy.alice().await;
    let v: i32 = query_value(&other, "SELECT 10").await;
    assert_eq!(v, 10);
    assert!(!proxy.log().contains("0A000"), "{}", proxy.log_tail(30));
}

/// asyncpg with its statement cache off: Parse of the unnamed statement and
/// Flush, then a Close of another statement with a Sync (a release point),
/// then Bind of the unnamed statement. Directly, it still exists; through
/// the proxy it must too when the client got its connection back unused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unnamed_statement_survives_a_sync_when_the_connection_comes_back_unused() {
    use std::io::Write;
    let (_cluster, proxy) = transaction_proxied(0, 2);
    let mut s = raw_login(proxy.port);
    let mut m = parse_msg("", "SELECT 41 + 1");
    m.extend(frontend_message(b'H', &[]));
    s.write_all(&m).unwrap();
    read_until(&mut s, |m| m.iter().any(|(t, _)| *t == b'1'));
    let mut m = frontend_message(b'C', &[Err(b"S"), Ok("gone")]);
    m.extend(sync_msg());
    s.write_all(&m).unwrap();
    read_until(&mut s, readies(1));
    let mut m = bind_execute("");
    m.extend(sync_msg());
    s.write_all(&m).unwrap();
    let got = seen(&read_until(&mut s, readies(1)));
    assert_eq!(got, ["2", "D 42", "C", "Z I"]);
}

/// `SET search_path` does not pin in transaction mode: the proxy reads the
/// setting back when the transaction is over, so it follows its client to
/// every server connection (as PostgreSQL keeps it for the session), a
/// rolled-back or LOCAL change is not kept, and no other client ever sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_path_follows_its_client_and_never_reaches_another() {
    let (_cluster, proxy) = transaction_proxied(0, 2);
    let a = proxy.alice().await;
    let b = proxy.alice().await;
    let c = proxy.alice().await;
    a.batch_execute("CREATE SCHEMA s1; CREATE TABLE s1.only_in_s1 (x int); INSERT INTO s1.only_in_s1 VALUES (7)")
        .await
        .unwrap();
    let default: String = query_value(&b, "SHOW search_path").await;
    a.batch_execute("SET search_path = s1, public")
        .await
        .unwrap();
    // Interleaved on two server connections: each keeps its own.
    for _ in 0..20 {
        assert_eq!(show_search_path(&a).await, "s1, public");
        assert_eq!(show_search_path(&b).await, default);
        let in_block = c
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_tables WHERE tablename = 'only_in_s1'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(in_block, 1);
        assert_eq!(show_search_path(&c).await, default);
    }
    let v: i32 = query_value(&a, "SELECT x FROM only_in_s1").await;
    assert_eq!(v, 7, "unqualified names resolve in the client's schema");
    // A rolled-back SET and a LOCAL one are not kept.
    a.batch_execute("BEGIN; SET search_path = public; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(show_search_path(&a).await, "s1, public");
    a.batch_execute("BEGIN; SET LOCAL search_path = public; COMMIT")
        .await
        .unwrap();
    assert_eq!(show_search_path(&a).await, "s1, public");
    // RESET gives the default back.
    a.batch_execute("RESET search_path").await.unwrap();
    assert_eq!(show_search_path(&a).await, default);
    let pools = pgwardenctl(&proxy.config, &["--json", "pools"]);
    let json: serde_json::Value = serde_json::from_str(&pools.stdout).unwrap();
    let pinned: u64 = json["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["clients_pinned"].as_u64().unwrap())
        .sum();
    assert_eq!(
        pinned, 0,
        "SET search_path pinned a client: {}",
        pools.stdout
    );
}

async fn show_search_path(c: &tokio_postgres::Client) -> String {
    c.query_one("SHOW search_path", &[]).await.unwrap().get(0)
}
