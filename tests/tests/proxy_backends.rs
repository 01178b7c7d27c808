//! The proxy's side of the servers: routing to the primary, server-side
//! authentication methods, and the cache's idle timeout and lifetime.

use std::time::Duration;

use pgwarden_e2e::*;
use pgwarden_testkit::{Cluster, PasswordKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_to_the_primary_wherever_it_is_listed() {
    // The standby first: the proxy must still pick the primary.
    let (cluster, proxy) = proxied(1, ProxyOptions::default().backends(&[1, 0]));
    let c = proxy.alice().await;
    let (recovery, port): (bool, i32) = {
        let r = c
            .query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(!recovery);
    assert_eq!(port, i32::from(cluster.primary().port()));
    c.batch_execute("CREATE TABLE w (x int); INSERT INTO w VALUES (1)")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_primary_means_57p03_not_a_standby() {
    // Only the standby is listed: nothing may be routed to it.
    let (_cluster, proxy) = proxied(
        1,
        ProxyOptions::default()
            .backends(&[1])
            .set("server_connect_timeout = \"2s\"")
            .set("failover_hold_timeout = \"2s\""),
    );
    let err = proxy.refused(ALICE.0, ALICE.1, "app", "no primary").await;
    assert_eq!(sqlstate(&err).as_deref(), Some("57P03"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_without_failover_holds_clients_for_the_hold_timeout_then_57p03() {
    let (cluster, proxy) = proxied(
        0,
        ProxyOptions::default().set("failover_hold_timeout = \"2s\""),
    );
    drop(proxy.alice().await);
    cluster
        .node(0)
        .stop(pgwarden_testkit::StopMode::Immediate)
        .unwrap();
    let started = std::time::Instant::now();
    let err = proxy
        .refused(ALICE.0, ALICE.1, "app", "no primary to go to")
        .await;
    let waited = started.elapsed();
    assert_eq!(sqlstate(&err).as_deref(), Some("57P03"), "{err}");
    let db = err.as_db_error().expect("the proxy's own error");
    assert!(
        db.message().contains("no primary backend is available"),
        "{}",
        db.message()
    );
    assert!(
        waited >= std::time::Duration::from_millis(1500),
        "refused after {waited:?}, not held"
    );
    assert!(
        waited < std::time::Duration::from_secs(10),
        "held past the hold timeout: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_to_servers_with_cleartext_password_and_trust() {
    let cluster = cluster_from(
        Cluster::builder()
            .hba("host all dave 127.0.0.1/32 password")
            .hba("host all erin 127.0.0.1/32 trust"),
    );
    for user in ["dave", "erin"] {
        let password = format!("{user}-secret");
        cluster
            .create_user(user, &password, PasswordKind::Scram)
            .unwrap();
    }
    let proxy = Proxy::start(
        &cluster,
        ProxyOptions::default()
            .user("\"dave\" \"dave-secret\"")
            .user("\"erin\" \"erin-secret\""),
    );
    for user in ["dave", "erin"] {
        let c = proxy
            .connect(user, &format!("{user}-secret"), "postgres")
            .await
            .unwrap();
        let u: String = query_value(&c, "SELECT current_user::text").await;
        assert_eq!(u, user);
    }
    // The proxy still checks the password itself, whatever the server does.
    let err = proxy
        .refused("erin", "wrong", "postgres", "wrong password")
        .await;
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_cached_connections_expire() {
    let (cluster, proxy) = proxied(
        0,
        ProxyOptions::default().set("server_idle_timeout = \"1s\""),
    );
    let c = proxy.alice_after("SELECT 1").await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server_sessions(&cluster, ALICE.0),
        1,
        "cached after the client left"
    );
    let gone = pgwarden_testkit::wait_until(
        Duration::from_secs(10),
        "the idle connection to close",
        || server_sessions(&cluster, ALICE.0) == 0,
    );
    assert!(gone.is_ok(), "still open after server_idle_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_their_lifetime_are_not_cached() {
    let (_cluster, proxy) = proxied(0, ProxyOptions::default().set("server_lifetime = \"1s\""));
    let c = proxy.alice().await;
    let pid: i32 = query_value(&c, "SELECT pg_backend_pid()").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = proxy.alice().await;
    let pid2: i32 = query_value(&c, "SELECT pg_backend_pid()").await;
    assert_ne!(pid, pid2, "an expired connection was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_monitor_the_proxy_finds_the_primary_itself() {
    let (_cluster, proxy) = proxied(
        1,
        ProxyOptions::default().backends(&[1, 0]).without_monitor(),
    );
    let c = proxy.alice().await;
    let recovery: bool = query_value(&c, "SELECT pg_is_in_recovery()").await;
    assert!(!recovery);
    assert!(!proxy.dir.path().join("monitor.sock").exists());
}
