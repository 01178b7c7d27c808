//! Bad input and limits: garbage, protocol violations, oversize messages,
//! too many clients. Each gets a clear error; nothing else is disturbed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use pgwarden_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_an_error_and_the_next_client_still_works() {
    let (_cluster, proxy) = proxied(0, ProxyOptions::default());
    let bystander = proxy.alice_after("CREATE TABLE ok (x int)").await;

    // A random byte stream instead of a startup packet.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..20 {
        let garbage: Vec<u8> = (0..512)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let answer = raw_exchange(proxy.port, &garbage);
        // An error saying why, or (a length that promises more bytes than
        // came) nothing until the client gives up: never anything else.
        match error_code(&answer) {
            Some(code) => assert!(
                ["08P01", "0A000", "54000"].contains(&code.as_str()),
                "round {round}: {code}"
            ),
            None => assert!(answer.is_empty(), "round {round}: answered {answer:?}"),
        }
    }
    // A valid startup, then garbage: 08P01 and only that connection closes.
    let mut s = raw_login(proxy.port);
    s.write_all(b"\x01\x02\x03garbage-after-login").unwrap();
    assert_ended_with(&mut s, "08P01");

    // The bystander's session and new clients are unaffected.
    bystander
        .batch_execute("INSERT INTO ok VALUES (1)")
        .await
        .unwrap();
    let c = proxy.alice().await;
    let n: i64 = query_value(&c, "SELECT count(*) FROM ok").await;
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_messages_are_refused() {
    let (_cluster, proxy) = proxied(
        0,
        ProxyOptions::default().set("max_message_bytes = 1048576"),
    );
    // An oversize startup packet.
    let answer = raw_exchange(proxy.port, &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]);
    assert_eq!(error_code(&answer).as_deref(), Some("54000"));
    // A query announcing 2 MB after login: refused before its body is read.
    let mut s = raw_login(proxy.port);
    let mut q = vec![b'Q'];
    q.extend_from_slice(&(2 * 1024 * 1024u32 + 4).to_be_bytes());
    q.extend_from_slice(b"SELECT ");
    s.write_all(&q).unwrap();
    assert_ended_with(&mut s, "54000");
    // A query under the limit is fine.
    let c = proxy.alice().await;
    let big = "y".repeat(900 * 1024);
    let n: i32 = c
        .query_one("SELECT length($1::text)", &[&big])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 900 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_beyond_max_client_connections_gets_53300() {
    let (_cluster, proxy) = proxied(0, ProxyOptions::default().set("max_client_connections = 3"));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(proxy.alice().await);
    }
    let err = proxy
        .refused(ALICE.0, ALICE.1, "app", "the fourth client is refused")
        .await;
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err}");
    // Cancel requests still get through at the limit: they are not sessions.
    let token = held[0].cancel_token();
    let sleeper = &held[0];
    let (res, _) = tokio::join!(sleeper.query("SELECT pg_sleep(30)", &[]), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    assert_eq!(sqlstate(&res.unwrap_err()).as_deref(), Some("57014"));
    // One leaves; a new one gets in.
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.alice().await.batch_execute("SELECT 1").await.unwrap();
}

#[test]
fn ssl_is_declined_and_the_session_continues_in_clear() {
    let (_cluster, proxy) = proxied(0, ProxyOptions::default());
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"N");
    // psql with sslmode=prefer (its default) falls back to clear text.
    assert_psql_answers(
        psql(&proxy, ALICE.0, ALICE.1, "app", "SELECT 'in clear'"),
        "in clear",
    );
}
