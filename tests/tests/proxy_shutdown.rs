//! SIGTERM: stop accepting, let sessions finish up to shutdown_timeout,
//! then close the rest with 57P01 and exit.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pgwarden_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_sessions_then_closes_them() {
    let (_cluster, mut proxy) =
        proxied(0, ProxyOptions::default().set("shutdown_timeout = \"3s\""));
    let c = proxy.alice_after("SELECT 1").await;
    // A raw session too, to read exactly what the proxy sends at the end.
    let mut raw = raw_login(proxy.port);

    proxy.child().signal(Signal::SIGTERM).unwrap();
    let signalled = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // New clients are refused: the listener is closed.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", proxy.port)).is_err(),
        "still accepting after SIGTERM"
    );
    // The open session keeps working during the grace period.
    let one: i32 = query_value(&c, "SELECT 1").await;
    assert_eq!(one, 1);

    // After the grace period it is closed with 57P01 and the process exits.
    let status = proxy
        .child()
        .wait_timeout(Duration::from_secs(15))
        .expect("proxy exits");
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() >= Duration::from_secs(3));
    let err = c.query_one("SELECT 1", &[]).await.unwrap_err();
    assert!(session_ended(&err), "{err}");
    assert_ended_with(&mut raw, "57P01");
    assert!(proxy.log().contains("shutdown timeout reached"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_no_sessions_exits_at_once() {
    let (_cluster, mut proxy) =
        proxied(0, ProxyOptions::default().set("shutdown_timeout = \"30s\""));
    // A session that comes and goes before the signal.
    proxy.alice().await.batch_execute("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    proxy.child().signal(Signal::SIGTERM).unwrap();
    let status = proxy
        .child()
        .wait_timeout(Duration::from_secs(10))
        .expect("proxy exits");
    assert!(status.success());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

/// Guards the hard stop reaching transaction-mode clients: they wait on
/// their own alarm, not on the stop token, so the shutdown must ring it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_transaction_mode_clients_with_57p01_at_the_shutdown_timeout() {
    let (_cluster, mut proxy) = proxied(
        0,
        ProxyOptions::default()
            .transaction_mode()
            .set("shutdown_timeout = \"2s\""),
    );
    let c = proxy.alice_after("SELECT 1").await;
    // Idle between transactions: no server connection, only its alarm.
    let mut raw = raw_login(proxy.port);

    proxy.child().signal(Signal::SIGTERM).unwrap();
    let signalled = Instant::now();
    let status = proxy
        .child()
        .wait_timeout(Duration::from_secs(15))
        .expect("proxy exits");
    assert!(status.success(), "{status:?}");
    let took = signalled.elapsed();
    assert!(took >= Duration::from_secs(2), "{took:?}");
    // Closed at the timeout, not 5 s later when the proxy gives up on them.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_ended_with(&mut raw, "57P01");
    let err = c.query_one("SELECT 1", &[]).await.unwrap_err();
    assert!(session_ended(&err), "{err}");
}
