//! Read load balancing (`proxy.load_balance`), end to end: real servers,
//! the real monitor and proxy; each read says which server ran it
//! (`inet_server_port()`).

use std::collections::HashMap;
use std::time::Duration;

use pgwarden_e2e::*;

fn balanced(weights: &[u32]) -> ProxyOptions {
    let mut o = ProxyOptions::default()
        .transaction_mode()
        .set("load_balance = \"statement\"")
        // Only the tests' own say-so lets a balanced read tell its server.
        .set("read_only_functions = [\"inet_server_port\"]")
        .with_extra("[replication_check]\nperiod = \"500ms\"\nmax_lag_bytes = 1048576");
    o.weights = weights.to_vec();
    o
}

/// The first column of the first row among a simple query's messages.
fn first_cell(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

/// The first column of the first row a simple query gives.
async fn one(c: &tokio_postgres::Client, sql: &str) -> String {
    first_cell(&c.simple_query(sql).await.unwrap()).unwrap_or_default()
}

/// What [`start`] gives: the cluster, the proxy, the servers' ports by
/// backend, and a client.
type Balanced = (
    pgwarden_testkit::Cluster,
    Proxy,
    Vec<u16>,
    tokio_postgres::Client,
);

/// A primary and two standbys behind a balancing proxy with these weights,
/// `schema` run and replicated, and reads reaching every standby with a
/// weight: the cluster, the proxy, the servers' ports by backend, and a
/// client.
async fn start(weights: &[u32], schema: &str) -> Balanced {
    start_with(balanced(weights), weights, schema).await
}

/// [`start`] with reads going to pg1 alone (weights 0, 1, 0), and a session
/// of alice's whose reads are seen to run there: the cluster, the proxy,
/// the servers' ports, [`start`]'s client, that session.
async fn reading_on_pg1() -> (
    pgwarden_testkit::Cluster,
    Proxy,
    Vec<u16>,
    tokio_postgres::Client,
    tokio_postgres::Client,
) {
    let (cluster, proxy, ports, setup) = start(&[0, 1, 0], "SELECT 1").await;
    let c = proxy.alice().await;
    assert_eq!(
        one(&c, "SELECT inet_server_port()").await,
        ports[1].to_string()
    );
    (cluster, proxy, ports, setup, c)
}

/// As [`start`], with these proxy options.
async fn start_with(options: ProxyOptions, weights: &[u32], schema: &str) -> Balanced {
    let (cluster, proxy) = proxied(2, options);
    proxy.wait_all_up(Duration::from_secs(20)).await;
    let ports: Vec<u16> = (0..3).map(|i| cluster.node(i).port()).collect();
    let setup = proxy.alice().await;
    setup.batch_execute(schema).await.unwrap();
    cluster.wait_replicated(Duration::from_secs(20)).unwrap();
    for (i, w) in weights.iter().enumerate().skip(1) {
        if *w > 0 {
            wait_reads_reach(&proxy, ports[i]).await;
        }
    }
    (cluster, proxy, ports, setup)
}

/// Waits until the proxy sends reads to backend `port`'s server.
async fn wait_reads_reach(proxy: &Proxy, port: u16) {
    let c = proxy.alice().await;
    let reached = poll_until(Duration::from_secs(30), || async {
        one(&c, "SELECT inet_server_port()").await == port.to_string()
    })
    .await;
    assert!(
        reached,
        "reads never reached port {port}; proxy log:\n{}",
        proxy.log_tail(40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_reads_spread_by_weight_and_writes_and_read_write_transactions_stay_on_the_primary()
 {
    // Primary 1, pg1 3, pg2 0: reads 1:3 between primary and pg1, none on pg2.
    let (cluster, proxy, ports, setup) =
        start(&[1, 3, 0], "CREATE TABLE lb (id int PRIMARY KEY, port int)").await;

    let c = proxy.alice().await;
    let mut by_port: HashMap<String, u32> = HashMap::new();
    for _ in 0..200 {
        *by_port
            .entry(one(&c, "SELECT inet_server_port()").await)
            .or_default() += 1;
    }
    let on = |i: usize| by_port.get(&ports[i].to_string()).copied().unwrap_or(0);
    assert_eq!(on(2), 0, "a weight-0 standby got reads: {by_port:?}");
    assert_eq!(on(0) + on(1), 200, "{by_port:?}");
    // 150 expected on pg1; binomial(200, 3/4) is within 120..=180 but
    // for one run in millions.
    assert!((120..=180).contains(&on(1)), "{by_port:?}");

    // A read whose text would pin the client (the word set_config) runs
    // on the primary and the session goes on: it once held the client on
    // an idle standby for good.
    let pinned = tokio::time::timeout(
        Duration::from_secs(10),
        one(&c, "SELECT inet_server_port() AS set_config"),
    )
    .await
    .expect("a read that pins its client answers");
    assert_eq!(pinned, ports[0].to_string());
    let c = proxy.alice().await;

    // Every write runs on the primary.
    for i in 0..20 {
        let port = one(
            &c,
            &format!("INSERT INTO lb VALUES ({i}, inet_server_port()) RETURNING port"),
        )
        .await;
        assert_eq!(port, ports[0].to_string());
    }
    // A read-write transaction runs on the primary whole, its SELECT too.
    let select_port = one(
        &c,
        "BEGIN; SELECT inet_server_port(); INSERT INTO lb VALUES (100, inet_server_port()); COMMIT",
    )
    .await;
    assert_eq!(select_port, ports[0].to_string());
    // Statement by statement, as a driver sends them.
    for round in 0..10 {
        c.batch_execute("BEGIN").await.unwrap();
        let read = one(&c, "SELECT inet_server_port()").await;
        let wrote = one(
            &c,
            &format!(
                "INSERT INTO lb VALUES ({}, inet_server_port()) RETURNING port",
                200 + round
            ),
        )
        .await;
        c.batch_execute("COMMIT").await.unwrap();
        assert_eq!(read, ports[0].to_string(), "round {round}");
        assert_eq!(wrote, ports[0].to_string(), "round {round}");
    }
    // A SELECT calling a function that writes goes to the primary.
    setup.batch_execute("CREATE SEQUENCE lb_seq").await.unwrap();
    cluster.wait_replicated(Duration::from_secs(20)).unwrap();
    for _ in 0..20 {
        let port = one(&c, "SELECT inet_server_port(), nextval('lb_seq')").await;
        assert_eq!(port, ports[0].to_string());
    }

    // `pgwardenctl pools` counts each backend's reads and writes.
    let run = pgwardenctl_async(&proxy.config, &["--json", "pools"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let mut reads = [0u64; 3];
    let mut writes = [0u64; 3];
    for p in v["pools"].as_array().unwrap() {
        let b = usize::try_from(p["backend_id"].as_u64().unwrap()).unwrap();
        reads[b] += p["reads"].as_u64().unwrap();
        writes[b] += p["writes"].as_u64().unwrap();
    }
    assert!(reads[1] >= 120, "pg1 ran the most reads: {reads:?}");
    assert_eq!(reads[2], 0, "{reads:?}");
    // 20 inserts, 11 read-write transactions, 20 nextval reads at least.
    assert!(writes[0] >= 51, "{writes:?}");
    assert_eq!(
        (writes[1], writes[2]),
        (0, 0),
        "nothing but reads ran on a standby"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_its_own_writes_and_a_lagging_standby_gets_no_reads() {
    // Reads only on the standbys (the primary's weight is 0).
    let (cluster, proxy, ports, setup) = start(
        &[0, 1, 1],
        "CREATE TABLE ryw (id int PRIMARY KEY, pad text)",
    )
    .await;

    // pg1 stops replaying: a read there would miss every new row.
    cluster
        .node(1)
        .psql("SELECT pg_wal_replay_pause()")
        .unwrap();
    let c = proxy.alice().await;
    let mut seen = 0;
    for i in 0..100 {
        c.batch_execute(&format!("INSERT INTO ryw VALUES ({i}, 'x')"))
            .await
            .unwrap();
        let found = one(&c, &format!("SELECT count(*) FROM ryw WHERE id = {i}")).await;
        if found == "1" {
            seen += 1;
        }
    }
    assert_eq!(seen, 100, "a session missed its own writes");

    // Past max_lag_bytes (1 MiB): pg1 takes no reads from anybody.
    setup
        .batch_execute(
            "INSERT INTO ryw SELECT g, repeat('y', 1000) FROM generate_series(1000, 5000) g",
        )
        .await
        .unwrap();
    proxy
        .wait_state(
            Duration::from_secs(20),
            "pg1 lagging past max_lag_bytes",
            |s| {
                s.backends
                    .iter()
                    .any(|b| b.id == 1 && b.lag_bytes > 1_048_576)
            },
        )
        .await;
    // The proxy takes the measurements every replication_check.period.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut on_lagging = 0;
    for _ in 0..100 {
        let other = proxy.alice().await;
        if one(&other, "SELECT inet_server_port()").await == ports[1].to_string() {
            on_lagging += 1;
        }
    }
    assert_eq!(on_lagging, 0, "a standby past max_lag_bytes got reads");
    cluster
        .node(1)
        .psql("SELECT pg_wal_replay_resume()")
        .unwrap();
}

/// Whether `port` is one of the standbys'.
fn standby(ports: &[u16], port: i32) -> bool {
    ports[1..].iter().any(|p| i32::from(*p) == port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_reads_and_read_only_transactions_run_on_standbys_and_what_follows_them_does_not()
 {
    // Reads only on the standbys: the primary's weight is 0.
    let (cluster, proxy, ports, _setup) =
        start(&[0, 1, 1], "CREATE TABLE ro (id int PRIMARY KEY, port int)").await;
    let mut c = proxy.alice().await;

    // The extended protocol, as drivers speak it: a statement prepared
    // per query, and one prepared once and run again.
    let mut seen: HashMap<i32, u32> = HashMap::new();
    let prepared = c.prepare("SELECT inet_server_port()").await.unwrap();
    for _ in 0..40 {
        let port: i32 = query_value(&c, "SELECT inet_server_port()").await;
        *seen.entry(port).or_default() += 1;
        let port: i32 = c.query_one(&prepared, &[]).await.unwrap().get(0);
        *seen.entry(port).or_default() += 1;
    }
    assert!(
        seen.keys().all(|p| standby(&ports, *p)),
        "extended-protocol reads ran off the standbys: {seen:?}"
    );
    assert_eq!(seen.len(), 2, "both standbys take reads: {seen:?}");

    // A read-only transaction runs on one standby whole; its write is
    // refused there as PostgreSQL refuses it on the primary.
    for round in 0..10 {
        let t = c.build_transaction().read_only(true).start().await.unwrap();
        let first: i32 = query_value(&t, "SELECT inet_server_port()").await;
        let second: i32 = query_value(&t, "SELECT inet_server_port()").await;
        assert!(standby(&ports, first), "round {round}: {first}");
        assert_eq!(first, second, "round {round}: one transaction, one server");
        // Extended protocol: refused at Execute, on the standby.
        let insert = "INSERT INTO ro VALUES (1, 0)";
        assert_read_only_refused(t.execute(insert, &[]).await, insert);
        t.rollback().await.unwrap();
    }
    let in_one = one(&c, "BEGIN READ ONLY; SELECT inet_server_port(); COMMIT").await;
    assert!(standby(&ports, in_one.parse().unwrap()), "{in_one}");

    // Pipelined behind a read or a read-only transaction, a write still
    // reaches the primary: nothing more goes to a standby once it is idle.
    for i in 0..10 {
        // Each round's read waits for the standbys to replay the last
        // round's write (read_your_writes): it runs on a standby.
        cluster.wait_replicated(Duration::from_secs(20)).unwrap();
        let insert = format!("INSERT INTO ro VALUES ({i}, inet_server_port()) RETURNING port");
        let (begin, read, commit, write) = tokio::join!(
            c.simple_query("BEGIN READ ONLY"),
            c.simple_query("SELECT inet_server_port()"),
            c.simple_query("COMMIT"),
            one(&c, &insert),
        );
        begin.unwrap();
        commit.unwrap();
        let read = read.unwrap();
        let read = first_cell(&read);
        assert!(standby(&ports, read.unwrap().parse().unwrap()), "round {i}");
        assert_eq!(write, ports[0].to_string(), "round {i}");
        let id = 100 + i;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        let (read, write) = tokio::join!(
            c.query_one("SELECT inet_server_port()", &[]),
            c.query_one(
                "INSERT INTO ro VALUES ($1, inet_server_port()) RETURNING port",
                &params
            ),
        );
        // The read may have run on the primary, pipelined behind the write.
        read.unwrap();
        assert_eq!(write.unwrap().get::<_, i32>(0), i32::from(ports[0]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_read_whose_server_dies_before_answering_runs_on_the_primary() {
    // Reads go to pg1 alone while it is there.
    let (cluster, _proxy, ports, _setup, c) = reading_on_pg1().await;
    // pg1's sessions for the proxy stop answering, then die with the read
    // sent to one of them (no reply byte: SIGSTOP, then SIGKILL).
    let pids = cluster
        .node(1)
        .psql("SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE usename = 'alice'")
        .unwrap();
    let pids: Vec<String> = pids.split_whitespace().map(str::to_owned).collect();
    assert!(!pids.is_empty());
    let signal = |sig: &str| {
        for pid in &pids {
            let _ = std::process::Command::new("kill").args([sig, pid]).status();
        }
    };
    signal("-STOP");
    let read = tokio::spawn(async move {
        let port = c.simple_query("SELECT inet_server_port()").await;
        (port, c)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal("-KILL");
    let (port, _c) = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the read is answered")
        .unwrap();
    let port = port.expect("the read is answered, not failed");
    let port = first_cell(&port);
    assert_eq!(port, Some(ports[0].to_string()), "the primary ran it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_listener_runs_everything_on_standbys_and_else_on_a_read_only_primary() {
    let ro_port = pgwarden_testkit::free_port();
    let options = balanced(&[1, 1, 1]).set(&format!("read_only_listen = \"127.0.0.1:{ro_port}\""));
    let (cluster, proxy, ports, setup) =
        start_with(options, &[1, 1, 1], "CREATE TABLE rol (id int PRIMARY KEY)").await;
    let ro_conninfo = format!(
        "host=127.0.0.1 port={ro_port} user={} password={} dbname=app",
        ALICE.0, ALICE.1
    );
    let ro = connect(&ro_conninfo).await.unwrap();

    // Every transaction on a standby, the primary's weight aside, even
    // what a balancing classifier keeps on the primary.
    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..30 {
        *seen.entry(one(&ro, "SHOW port").await).or_default() += 1;
        let port: i32 = query_value(&ro, "SELECT inet_server_port()").await;
        *seen.entry(port.to_string()).or_default() += 1;
    }
    assert!(
        !seen.contains_key(&ports[0].to_string()),
        "a read-only client reached the primary: {seen:?}"
    );
    assert_eq!(seen.len(), 2, "both standbys serve it: {seen:?}");
    let insert = "INSERT INTO rol VALUES (1)";
    assert_read_only_refused(ro.batch_execute(insert).await, insert);

    // With no standby to read from, the primary serves it, read-only.
    cluster
        .node(1)
        .stop(pgwarden_testkit::StopMode::Fast)
        .unwrap();
    cluster
        .node(2)
        .stop(pgwarden_testkit::StopMode::Fast)
        .unwrap();
    proxy
        .wait_state(Duration::from_secs(30), "both standbys down", |s| {
            !up(s, 1) && !up(s, 2)
        })
        .await;
    let on_primary = poll_until(Duration::from_secs(20), || async {
        match ro.simple_query("SELECT inet_server_port()").await {
            Ok(m) => m.iter().any(|m| {
                matches!(m, tokio_postgres::SimpleQueryMessage::Row(r)
                    if r.get(0) == Some(ports[0].to_string().as_str()))
            }),
            Err(_) => false,
        }
    })
    .await;
    assert!(on_primary, "proxy log:\n{}", proxy.log_tail(40));
    let insert = "INSERT INTO rol VALUES (2)";
    assert_read_only_refused(ro.batch_execute(insert).await, insert);
    // The read-only connections are the read-only clients' own: a client
    // of the main listener still writes.
    setup
        .batch_execute("INSERT INTO rol VALUES (3)")
        .await
        .unwrap();
    proxy.alice_after("INSERT INTO rol VALUES (4)").await;
}

/// The value a login's ParameterStatus messages give `name`.
fn welcome_value(msgs: &[(u8, Vec<u8>)], name: &str) -> Option<String> {
    msgs.iter()
        .filter(|(t, _)| *t == b'S')
        .find_map(|(_, body)| {
            let mut parts = body.split(|b| *b == 0);
            (parts.next()? == name.as_bytes())
                .then(|| {
                    parts
                        .next()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
                .flatten()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_welcomed_as_by_the_primary_after_reads_opened_standby_connections() {
    let (_cluster, proxy, ports, _setup) = start(&[0, 1, 1], "SELECT 1").await;
    let (_first, msgs) = raw_login_with(proxy.port, &[]);
    assert_eq!(
        welcome_value(&msgs, "in_hot_standby").as_deref(),
        Some("off")
    );
    // Bob's reads open his pool's first connections to the standbys.
    let bob = proxy.connect(BOB.0, BOB.1, "app").await.unwrap();
    for _ in 0..20 {
        let port = one(&bob, "SELECT inet_server_port()").await;
        assert_ne!(port, ports[0].to_string());
    }
    // A standby says in_hot_standby = on: libpq's target_session_attrs =
    // read-write would refuse the proxy if the welcome were a standby's.
    let (_second, msgs) = raw_login_with(proxy.port, &[]);
    assert_eq!(
        welcome_value(&msgs, "in_hot_standby").as_deref(),
        Some("off")
    );
    let conninfo = format!(
        "{} target_session_attrs=read-write",
        proxy.conninfo(BOB.0, BOB.1, "app")
    );
    let (ok, out, err) = psql_with(&conninfo, &["SELECT 1"]);
    assert!(ok, "{out} {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_refuses_the_client_sends_its_reads_to_the_primary() {
    // Reads go to pg1 alone while it takes them.
    let (cluster, _proxy, ports, _setup, c) = reading_on_pg1().await;
    // pg1 now refuses alice, and her pooled sessions there are ended.
    let hba = cluster.node(1).data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("host all alice 0.0.0.0/0 reject\n{old}")).unwrap();
    cluster.node(1).psql("SELECT pg_reload_conf()").unwrap();
    cluster
        .node(1)
        .psql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'alice'",
        )
        .unwrap();
    // Their goodbyes (FATAL 57P01) reach the proxy's idle connections,
    // which it then drops at their next checkout.
    let gone = poll_until(Duration::from_secs(10), || async {
        cluster
            .node(1)
            .psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'alice'")
            .is_ok_and(|n| n.trim() == "0")
    })
    .await;
    assert!(gone);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..20 {
        let port = tokio::time::timeout(
            Duration::from_secs(10),
            c.simple_query("SELECT inet_server_port()"),
        )
        .await
        .expect("answered")
        .unwrap_or_else(|e| panic!("read {i} failed: {e:?}"));
        let port = first_cell(&port);
        assert_eq!(port, Some(ports[0].to_string()), "read {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_made_in_a_standby_transaction_ends_the_session_rather_than_keep_its_writes_there()
 {
    let (_cluster, proxy, _ports, _setup) =
        start(&[0, 1, 1], "CREATE TABLE pin (id int PRIMARY KEY)").await;
    let c = proxy.alice().await;
    // A session SET (not LOCAL) of an untracked setting pins the client
    // to the server it ran on: here a standby.
    for sql in ["BEGIN READ ONLY", "SET statement_timeout = '5s'", "COMMIT"] {
        c.batch_execute(sql).await.unwrap();
    }
    let after = c.batch_execute("INSERT INTO pin VALUES (1)").await;
    match after {
        Ok(()) => panic!("a write after session state on a standby cannot succeed there"),
        Err(e) => assert_ne!(
            sqlstate(&e).as_deref(),
            Some("25006"),
            "the write went to the standby: {e}"
        ),
    }
    // Others are untouched.
    proxy.alice_after("INSERT INTO pin VALUES (2)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_after_unsynced_messages_in_a_standby_transaction_does_not_hang_it() {
    let (_cluster, proxy, ports, _setup) = start(&[0, 1, 1], "SELECT 1").await;
    let (mut s, _) = raw_login_with(proxy.port, &[]);
    std::io::Write::write_all(&mut s, &query_message("BEGIN READ ONLY")).unwrap();
    read_until_ready(&mut s);
    // Parse/Bind/Execute, then a Query before their Sync (asyncpg does
    // this), then the Sync: two ReadyForQuery.
    let mut m = Vec::new();
    let put = |m: &mut Vec<u8>, tag: u8, body: &[u8]| {
        m.push(tag);
        m.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        m.extend_from_slice(body);
    };
    put(&mut m, b'P', b"\0SELECT inet_server_port()\0\0\0");
    put(&mut m, b'B', b"\0\0\0\0\0\0\0\0");
    put(&mut m, b'E', b"\0\0\0\0\0");
    m.extend_from_slice(&query_message("SELECT inet_server_port()"));
    put(&mut m, b'S', b"");
    std::io::Write::write_all(&mut s, &m).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while messages(&got).iter().filter(|(t, _)| *t == b'Z').count() < 2 {
        let n = std::io::Read::read(&mut s, &mut chunk).expect("both answered in time");
        assert!(n > 0, "closed: {:?}", messages(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let answers = messages(&got);
    let port = first_value(&answers).expect("a row");
    assert!(ports[1..].iter().any(|p| p.to_string() == port), "{port}");
    assert_eq!(first_sqlstate(&answers), None, "{answers:?}");
    std::io::Write::write_all(&mut s, &query_message("COMMIT")).unwrap();
    let done = read_until_ready(&mut s);
    assert_eq!(first_sqlstate(&done), None, "{done:?}");
}

/// Asserts that `result`, of the write `sql`, is its refusal with 25006
/// (read-only SQL transaction): it ran on a standby or in a read-only
/// transaction.
#[track_caller]
fn assert_read_only_refused<T: std::fmt::Debug>(
    result: Result<T, tokio_postgres::Error>,
    sql: &str,
) {
    let refused = result.expect_err(sql);
    assert_eq!(
        sqlstate(&refused).as_deref(),
        Some("25006"),
        "{sql}: {refused}"
    );
}
