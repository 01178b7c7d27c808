//! Session mode through a failover: an idle session goes on on the new
//! primary with what it SET, PREPAREd and LISTENed to, and its prepared
//! statements; a session holding what cannot move is ended and told what.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use pgwarden_e2e::*;
use pgwarden_testkit::StopMode;

/// Reads a raw session until the proxy closes it (or `timeout` passes).
fn read_to_close(s: &mut std::net::TcpStream, timeout: Duration) -> Vec<(u8, Vec<u8>)> {
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    messages(&got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_mode_client_keeps_its_settings_statements_and_listens_through_a_primary_kill()
 {
    let (cluster, proxy) = proxied(1, ProxyOptions::default());
    proxy.wait_all_up(Duration::from_secs(20)).await;
    let c = proxy
        .alice_after("CREATE SCHEMA kept; CREATE TABLE kept.t (x int)")
        .await;
    for sql in [
        "SET search_path = kept, public",
        "SET TimeZone = 'Asia/Tokyo'",
        "SET work_mem = '7MB'",
        "LISTEN jobs",
        "PREPARE twice(int) AS SELECT $1 * 2",
        // Set in a block that commits: kept; in one that rolls back: not.
        "BEGIN",
        "SET statement_timeout = '31s'",
        "COMMIT",
        "BEGIN",
        "SET lock_timeout = '5s'",
        "ROLLBACK",
    ] {
        c.batch_execute(sql).await.unwrap();
    }
    // `t` is kept.t through the client's search_path; a protocol-level
    // prepared statement.
    let insert = c.prepare("INSERT INTO t VALUES ($1)").await.unwrap();
    c.execute(&insert, &[&1i32]).await.unwrap();

    // Another session holds a temporary table: it cannot move.
    let (mut pinned, _) = raw_login_with(proxy.port, &[]);
    pinned
        .write_all(&query_message("CREATE TEMP TABLE scratch (x int)"))
        .unwrap();
    let msgs = read_until_ready(&mut pinned);
    assert_eq!(first_sqlstate(&msgs), None, "{msgs:?}");

    kill_primary_when_replicated(&cluster);

    // The next statement waits for the new primary, then runs there on the
    // same session.
    c.execute(&insert, &[&2i32])
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", proxy.log_tail(30)));
    let row = c
        .query_one(
            "SELECT current_setting('search_path'), current_setting('TimeZone'), \
                    current_setting('work_mem'), current_setting('statement_timeout'), \
                    current_setting('lock_timeout'), inet_server_port(), count(*), \
                    (SELECT array_agg(ch) FROM pg_listening_channels() ch)::text \
             FROM t",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "kept, public");
    assert_eq!(row.get::<_, String>(1), "Asia/Tokyo");
    assert_eq!(row.get::<_, String>(2), "7MB");
    assert_eq!(row.get::<_, String>(3), "31s");
    assert_eq!(row.get::<_, String>(4), "0", "a rolled-back SET came back");
    assert_eq!(row.get::<_, i32>(5), i32::from(cluster.node(1).port()));
    assert_eq!(row.get::<_, i64>(6), 2);
    assert_eq!(row.get::<_, String>(7), "{jobs}");
    let twice: i32 = query_value(&c, "EXECUTE twice(21)").await;
    assert_eq!(twice, 42);

    // The session with the temporary table was ended, and told why.
    let msgs = read_to_close(&mut pinned, Duration::from_secs(20));
    let (_, err) = msgs
        .iter()
        .find(|(t, _)| *t == b'E')
        .unwrap_or_else(|| panic!("no error for the pinned session: {msgs:?}"));
    let text = String::from_utf8_lossy(err);
    assert_eq!(first_sqlstate(&msgs).as_deref(), Some("57P01"), "{text}");
    assert!(text.contains("temporary table"), "{text}");

    let metrics = scrape(proxy.proxy_metrics).unwrap();
    assert_metric(&metrics, "pgwarden_proxy_moved_sessions_total", 1.0);
    assert!(
        metric(&metrics, "pgwarden_proxy_failover_terminations_total").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    // The failover's history says what the proxy moved and ended.
    let record =
        wait_history_phase(&proxy.config, "first write routed", Duration::from_secs(15)).await;
    let detail = phase_detail(&record, "first write routed");
    assert!(
        detail.contains("1 session(s) moved to the new primary, 1 ended"),
        "{record}"
    );
}

/// Regression (review of stop 23): a session whose server was lost while
/// the same backend stays primary moves within one pool, and held its old
/// connection's permit while it waited for a new one; at `pool_size = 1`
/// it waited on itself until `pool_timeout` and was ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moving_within_a_full_pool_does_not_wait_on_its_own_permit() {
    let (cluster, proxy) = proxied(
        0,
        ProxyOptions::default()
            .set("pool_size = 1")
            .set("pool_timeout = \"3s\""),
    );
    proxy.wait_all_up(Duration::from_secs(20)).await;
    let c = proxy.alice_after("SET work_mem = '9MB'").await;
    // The server restarts: the session's connection is lost, the backend
    // is still the primary once it is back.
    cluster.node(0).stop(StopMode::Immediate).unwrap();
    cluster.node(0).start().unwrap();
    let row = c
        .query_one("SELECT current_setting('work_mem')", &[])
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", proxy.log_tail(30)));
    assert_eq!(row.get::<_, String>(0), "9MB");
}
