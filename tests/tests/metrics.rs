//! Prometheus `/metrics` of the proxy and the monitor, scraped over HTTP
//! from the real daemons while real clients and servers come and go.

use std::time::Duration;

use pgwarden_e2e::*;
use pgwarden_testkit::{StopMode, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_and_monitor_metrics_follow_clients_and_backends() {
    let (cluster, proxy) = proxied(1, ProxyOptions::default());
    let alice = proxy.alice_after("SELECT 1").await;
    let err = proxy
        .refused(ALICE.0, "wrong", "app", "wrong password")
        .await;
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));

    let body = scrape(proxy.proxy_metrics).unwrap();
    let pool = "{backend=\"0\",user=\"alice\",database=\"app\",state=\"active\"}";
    for (series, value) in [
        ("pgwarden_proxy_clients", 1.0),
        ("pgwarden_proxy_logins_total", 1.0),
        ("pgwarden_proxy_auth_failures_total", 1.0),
        ("pgwarden_proxy_primary_backend", 0.0),
        ("pgwarden_proxy_server_connects_total", 1.0),
        (
            &format!("pgwarden_proxy_pool_server_connections{pool}"),
            1.0,
        ),
    ] {
        assert_eq!(metric(&body, series), Some(value), "{series} in:\n{body}");
    }
    assert!(
        metric(&body, "pgwarden_proxy_generation").is_some_and(|g| g >= 1.0),
        "{body}"
    );

    // The client leaves: its connection is cached, not held.
    drop(alice);
    let idle = pool.replace("active", "idle");
    wait_until(Duration::from_secs(10), "the connection cached", || {
        scrape(proxy.proxy_metrics).is_ok_and(|b| {
            metric(&b, &format!("pgwarden_proxy_pool_server_connections{idle}")) == Some(1.0)
                && metric(&b, "pgwarden_proxy_clients") == Some(0.0)
        })
    })
    .unwrap();

    let up = |body: &str, name: &str, id: usize| {
        metric(
            body,
            &format!("pgwarden_monitor_backend_up{{backend=\"{id}\",name=\"{name}\"}}"),
        )
    };
    let body = scrape(proxy.monitor_metrics).unwrap();
    assert_eq!(up(&body, "pg0", 0), Some(1.0), "{body}");
    assert_eq!(up(&body, "pg1", 1), Some(1.0), "{body}");
    assert_metric(&body, "pgwarden_monitor_primary_backend", 0.0);
    assert!(
        metric(
            &body,
            "pgwarden_monitor_replication_lag_bytes{backend=\"1\",name=\"pg1\"}"
        )
        .is_some(),
        "{body}"
    );

    // A standby dies: the monitor's gauge says so.
    cluster.node(1).stop(StopMode::Immediate).unwrap();
    wait_until(Duration::from_secs(20), "pg1 down in /metrics", || {
        scrape(proxy.monitor_metrics).is_ok_and(|b| up(&b, "pg1", 1) == Some(0.0))
    })
    .unwrap();

    // Anything but /metrics is 404.
    let raw = raw_http(
        proxy.proxy_metrics,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 404 "), "{raw}");
}

fn raw_http(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
