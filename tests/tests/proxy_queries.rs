//! Everyday client traffic through the proxy: simple and extended protocol,
//! COPY both ways, LISTEN/NOTIFY, a large row, errors inside transactions,
//! cancel, and psql itself.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use pgwarden_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_extended_copy_notify_big_rows_and_errors() {
    let (_cluster, proxy) = proxied(0, ProxyOptions::default());
    let c = proxy.alice().await;

    // Simple protocol, several statements in one Query.
    let rows = c
        .simple_query("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT 41 + 1")
        .await
        .unwrap();
    let got: Vec<_> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec!["42".to_string()]);

    // Extended protocol with a named prepared statement, reused.
    let ins = c.prepare("INSERT INTO t VALUES ($1, $2)").await.unwrap();
    for i in 0..50 {
        c.execute(&ins, &[&i, &format!("row {i}")]).await.unwrap();
    }
    let sel = c.prepare("SELECT v FROM t WHERE id = $1").await.unwrap();
    let v: String = c.query_one(&sel, &[&7i32]).await.unwrap().get(0);
    assert_eq!(v, "row 7");

    // COPY FROM STDIN.
    let sink = c.copy_in("COPY t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let data: String = (100..1100).map(|i| format!("{i}\tcopied {i}\n")).collect();
    sink.send(Bytes::from(data)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1000);
    let n: i64 = query_value(&c, "SELECT count(*) FROM t").await;
    assert_eq!(n, 1050);

    // COPY TO STDOUT.
    let out = c
        .copy_out("COPY (SELECT id FROM t ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<Bytes> = out.try_collect().await.unwrap();
    let text: String = chunks
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(text.lines().count(), 1050);
    assert!(text.starts_with("0\n1\n"));

    // A 5 MB value both ways.
    let big = "x".repeat(5 * 1024 * 1024);
    c.execute("INSERT INTO t VALUES (-1, $1)", &[&big])
        .await
        .unwrap();
    let back: String = query_value(&c, "SELECT v FROM t WHERE id = -1").await;
    assert_eq!(back.len(), big.len());
    assert!(back == big);

    // An error inside a transaction, then recovery.
    c.batch_execute("BEGIN").await.unwrap();
    let err = c
        .execute("INSERT INTO t VALUES (1, 'dup')", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("23505"));
    let err = c.query_one("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("25P02"),
        "in a failed transaction"
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    let one: i32 = query_value(&c, "SELECT 1").await;
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_crosses_the_proxy() {
    let (_cluster, proxy) = proxied(0, ProxyOptions::default());
    let (listener, mut conn) = tokio_postgres::connect(
        &proxy.conninfo(ALICE.0, ALICE.1, "app"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let other = proxy.connect(BOB.0, BOB.1, "app").await.unwrap();
    other.batch_execute("NOTIFY jobs, 'hello'").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("notification arrives");
    assert_eq!(got, Some(("jobs".to_string(), "hello".to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_stops_a_sleeping_query() {
    let (_cluster, proxy) = proxied(0, ProxyOptions::default());
    let c = proxy.alice().await;
    let token = c.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let err = c.query("SELECT pg_sleep(60)", &[]).await.unwrap_err();
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("57014"),
        "query_canceled: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    canceller.await.unwrap().unwrap();
    // The session is still usable.
    let one: i32 = query_value(&c, "SELECT 1").await;
    assert_eq!(one, 1);
}

#[test]
fn psql_works_through_the_proxy() {
    let (_cluster, proxy) = proxied(0, ProxyOptions::default());
    let (ok, out, err) = psql(
        &proxy,
        ALICE.0,
        ALICE.1,
        "app",
        "SELECT current_user, current_database()",
    );
    assert!(ok, "psql failed: {err}");
    assert_eq!(out, "alice|app");
    // An unknown database: the server's own error comes through.
    assert_psql_refused(
        psql(&proxy, ALICE.0, ALICE.1, "nope", "SELECT 1"),
        "database \"nope\" does not exist",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_is_told_its_real_server_pid() {
    use std::io::Write;
    let (cluster, proxy) = proxied(0, ProxyOptions::default());
    let (mut s, (pid, _)) = raw_login_with_key(proxy.port);
    s.write_all(&query_message("SELECT pg_backend_pid()"))
        .unwrap();
    let answer = read_until_ready(&mut s);
    assert_eq!(first_value(&answer), Some(pid.to_string()), "{answer:?}");
    // pg_stat_activity and pgwardenctl clients agree.
    let seen = cluster
        .primary()
        .psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND usename = 'bob'"
        ))
        .unwrap();
    assert_eq!(seen, "1");
    let listed = pgwardenctl_async(&proxy.config, &["clients"]).await;
    assert!(
        listed
            .stdout
            .lines()
            .any(|l| l.starts_with(&format!("{pid} "))),
        "{listed:?}"
    );
    // A notification from the session itself carries its own pid.
    s.write_all(&query_message("LISTEN me; NOTIFY me, 'hi'"))
        .unwrap();
    let answer = read_until_ready(&mut s);
    let (_, note) = answer
        .iter()
        .find(|(t, _)| *t == b'A')
        .expect("NotificationResponse");
    assert_eq!(i32::from_be_bytes(note[0..4].try_into().unwrap()), pid);
    // Terminating "itself" terminates its own server session.
    s.write_all(&query_message(&format!(
        "SELECT pg_terminate_backend({pid})"
    )))
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_ended_with(&mut s, "57P01");
}
