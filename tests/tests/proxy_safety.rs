//! Regression tests for the proxy defects found by outside testing (issue
//! 7): a client can only ever affect its own statements. A vanished
//! client's query is cancelled and its server connection is not handed on
//! until it is idle; idle or half-open sockets cannot take real clients'
//! places; a cancel reaches only the statement its client was running.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pgwarden_e2e::*;
use pgwarden_testkit::{Cluster, wait_until};

/// Statements whose text starts with `prefix` running on the primary.
fn running(cluster: &Cluster, prefix: &str) -> usize {
    cluster
        .primary()
        .psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '{prefix}%'"
        ))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn vanished_clients_queries_are_cancelled_not_left_running() {
    const CLIENTS: usize = 200;
    let cluster = cluster_from(
        pgwarden_testkit::Cluster::builder()
            .standbys(0)
            .config("max_connections", "260"),
    );
    let proxy = Proxy::start(
        &cluster,
        ProxyOptions::default()
            .set("pool_size = 210")
            .set("max_client_connections = 300"),
    );
    let mut vanishing = Vec::new();
    for _ in 0..CLIENTS {
        let mut s = raw_login(proxy.port);
        s.write_all(&query_message("SELECT pg_sleep(100) -- vanishing"))
            .unwrap();
        vanishing.push(s);
    }
    wait_until(Duration::from_secs(30), "every pg_sleep running", || {
        running(&cluster, "SELECT pg_sleep(100)") == CLIENTS
    })
    .unwrap();
    // Every client vanishes mid-query.
    drop(vanishing);
    std::thread::sleep(Duration::from_secs(3));
    let left = running(&cluster, "SELECT pg_sleep(100)");
    println!("vanished clients: {CLIENTS}; their queries still running 3 s later: {left}");
    assert_eq!(left, 0, "queries of vanished clients still run");
    // Their server connections were brought back to idle and cached, not
    // leaked: a new client gets one at once and PostgreSQL has room.
    let mut s = raw_login(proxy.port);
    s.write_all(&query_message("SELECT 1")).unwrap();
    let answer = read_until_ready(&mut s);
    assert_eq!(first_sqlstate(&answer), None, "{answer:?}");
    let sessions = server_sessions(&cluster, BOB.0);
    assert!(
        sessions <= CLIENTS,
        "{sessions} server sessions for at most {CLIENTS} cached connections"
    );
}

#[test]
fn a_vanished_clients_server_connection_is_reused_only_once_idle() {
    // pool_size 1: the next client gets the very connection the vanished
    // one left busy; it must not see the old query's results or error.
    let (cluster, proxy) = proxied(0, ProxyOptions::default().set("pool_size = 1"));
    for round in 0..5 {
        let mut gone = raw_login(proxy.port);
        gone.write_all(&query_message("SELECT pg_sleep(30), 'old'"))
            .unwrap();
        wait_until(Duration::from_secs(10), "the sleep runs", || {
            running(&cluster, "SELECT pg_sleep(30)") == 1
        })
        .unwrap();
        drop(gone);
        let started = Instant::now();
        let mut next = raw_login(proxy.port);
        next.write_all(&query_message("SELECT 'new'")).unwrap();
        let answer = read_until_ready(&mut next);
        assert_eq!(first_sqlstate(&answer), None, "round {round}: {answer:?}");
        let rows: Vec<&Vec<u8>> = answer
            .iter()
            .filter(|(t, _)| *t == b'D')
            .map(|(_, b)| b)
            .collect();
        assert_eq!(rows.len(), 1, "round {round}: {answer:?}");
        assert!(rows[0].ends_with(b"new"), "round {round}: {answer:?}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "round {round}: the next client waited for the old pg_sleep(30)"
        );
        assert_eq!(running(&cluster, "SELECT pg_sleep(30)"), 0);
    }
}

/// Opens `n` TCP connections to the proxy that never send a byte, in
/// bursts of 100 so the listen backlog (1,024) never overflows: a dropped
/// SYN would make `connect` wait a second or more for its retry.
fn idle_sockets(port: u16, n: usize) -> Vec<TcpStream> {
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let burst = (n - all.len()).min(100);
        all.extend((0..burst).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()));
        std::thread::sleep(Duration::from_millis(20));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_cannot_lock_out_a_real_login() {
    let cluster = cluster(0);
    let max = 10;
    let proxy = Proxy::start(
        &cluster,
        ProxyOptions::default()
            .set(&format!("max_client_connections = {max}"))
            .set(&format!("pool_size = {max}")),
    );
    let mut idle = Vec::new();
    for total in [max + 64, 1000, 1100] {
        idle.extend(idle_sockets(proxy.port, total - idle.len()));
        // Let the proxy accept them all.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let c = proxy.alice().await;
        let took = started.elapsed();
        c.batch_execute("SELECT 1").await.unwrap();
        println!("{total} idle sockets open: a real login took {took:?}");
        assert!(
            took < Duration::from_secs(5),
            "{total} idle sockets: login took {took:?}"
        );
    }
    // Past the handshake bound (1,024 for this max_client_connections) the
    // oldest idle sockets are pushed out with 53300, on the wire. (Fresh
    // sockets, so none of them reaches the 5 s startup timeout first.)
    drop(idle);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let opened = Instant::now();
    let mut idle = idle_sockets(proxy.port, 1100);
    let opening = opened.elapsed();
    idle[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let r = idle[0].read_to_end(&mut answer);
    assert_eq!(
        error_code(&answer).as_deref(),
        Some("53300"),
        "{answer:?} {r:?} after {opening:?} opening them"
    );
    // The rest are closed once the startup packet is overdue (5 s).
    let last = idle.last_mut().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let n = last.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "nothing is sent to a socket that never spoke");
    assert!(
        started.elapsed() < Duration::from_secs(14),
        "closed by the proxy"
    );
    // Logged-in clients still count against max_client_connections: 53300.
    let mut held = Vec::new();
    for _ in 0..max {
        held.push(proxy.alice().await);
    }
    let err = proxy
        .refused(ALICE.0, ALICE.1, "app", "one client too many")
        .await;
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err}");
}

/// Sends a CancelRequest for `key` to the proxy; returns the open socket
/// (the proxy closes it once the server has acted on the cancel).
fn send_cancel(port: u16, key: (i32, i32)) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&cancel_packet(key)).unwrap();
    s
}

fn wait_closed(mut s: TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

#[test]
fn a_cancel_of_an_idle_session_never_cancels_its_next_query() {
    let (cluster, proxy) = proxied(0, ProxyOptions::default());
    let (mut s, key) = raw_login_with_key(proxy.port);
    let mut cancelled = 0;
    for _ in 0..50 {
        // The client is idle; it cancels, waits for the cancel socket to
        // close (as libpq's PQcancel does), then at once sends a query.
        wait_closed(send_cancel(proxy.port, key));
        s.write_all(&query_message("SELECT pg_sleep(0.05)"))
            .unwrap();
        let answer = read_until_ready(&mut s);
        if first_sqlstate(&answer).as_deref() == Some("57014") {
            cancelled += 1;
        }
    }
    println!("queries cancelled by an earlier idle cancel: {cancelled} of 50");
    assert_eq!(
        cancelled, 0,
        "{cancelled} of 50 queries hit by an idle cancel"
    );

    // A cancel of a running statement still lands, and the proxy closes the
    // cancel socket only after the server has acted on it.
    s.write_all(&query_message("SELECT pg_sleep(30)")).unwrap();
    wait_until(Duration::from_secs(10), "the sleep runs", || {
        running(&cluster, "SELECT pg_sleep(30)") == 1
    })
    .unwrap();
    wait_closed(send_cancel(proxy.port, key));
    let answer = read_until_ready(&mut s);
    assert_eq!(
        first_sqlstate(&answer).as_deref(),
        Some("57014"),
        "{answer:?}"
    );
}

#[test]
fn a_cancel_sent_as_its_client_leaves_never_reaches_the_next_client() {
    // pool_size 1: the next client, already waiting for a server, gets the
    // leaving client's server connection the moment it is handed on.
    let (_cluster, proxy) = proxied(0, ProxyOptions::default().set("pool_size = 1"));
    let mut hit = 0;
    for _ in 0..20 {
        let (mut leaving, key) = raw_login_with_key(proxy.port);
        leaving.write_all(&query_message("SELECT 1")).unwrap();
        read_until_ready(&mut leaving);
        let port = proxy.port;
        let next = std::thread::spawn(move || {
            let mut next = raw_login(port);
            next.write_all(&query_message("SELECT pg_sleep(0.5)"))
                .unwrap();
            first_sqlstate(&read_until_ready(&mut next))
        });
        // Let the next client wait for the pool's only connection.
        std::thread::sleep(Duration::from_millis(50));
        // A cancel on its way while the client says goodbye.
        let c = send_cancel(proxy.port, key);
        leaving.write_all(b"X\0\0\0\x04").unwrap();
        drop(leaving);
        if next.join().unwrap().as_deref() == Some("57014") {
            hit += 1;
        }
        wait_closed(c);
    }
    println!("next clients whose query a leaving client's cancel hit: {hit} of 20");
    assert_eq!(hit, 0, "{hit} of 20 next clients had their query cancelled");
}

#[test]
fn a_query_pipelined_before_terminate_still_commits() {
    // Terminate is a goodbye, not a vanishing: PostgreSQL runs what came
    // before it, and so does the proxy (no cancel).
    let cluster = cluster(0);
    cluster
        .primary()
        .psql_db(
            "app",
            "CREATE TABLE goodbye (x int); GRANT ALL ON goodbye TO bob",
        )
        .unwrap();
    let proxy = Proxy::start(&cluster, ProxyOptions::default().set("pool_size = 1"));
    let mut s = raw_login(proxy.port);
    let mut out = query_message("INSERT INTO goodbye SELECT 1 FROM pg_sleep(0.5)");
    out.extend_from_slice(b"X\0\0\0\x04");
    s.write_all(&out).unwrap();
    drop(s);
    // The pool's one connection comes back once the insert is done.
    let mut next = raw_login(proxy.port);
    next.write_all(&query_message("SELECT count(*) FROM goodbye"))
        .unwrap();
    let answer = read_until_ready(&mut next);
    let row = answer.iter().find(|(t, _)| *t == b'D').expect("a row");
    assert!(
        row.1.ends_with(b"1"),
        "the insert was not committed: {answer:?}"
    );
}
