//! Replication connections (`replication=true|database`) through the
//! proxy: what standbys, `pg_basebackup`, `pg_receivewal` and logical
//! replication clients need, in either pool mode.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pgwarden_e2e::*;
use pgwarden_testkit::Cluster;

/// A cluster whose `bob` may open replication connections (pg_hba trusts
/// replication from loopback, so the proxy's login as bob gets through).
fn replication_cluster() -> Cluster {
    let cluster = cluster(0);
    cluster
        .primary()
        .psql("ALTER ROLE bob REPLICATION")
        .unwrap();
    cluster
}

fn transaction_proxy(cluster: &Cluster) -> Proxy {
    Proxy::start(cluster, ProxyOptions::default().transaction_mode())
}

/// Runs psql as bob through the proxy with `conninfo` added to the
/// connection string; one `-c` per command. Returns (success, stdout, stderr).
fn psql_replication(proxy: &Proxy, conninfo: &str, commands: &[&str]) -> (bool, String, String) {
    psql_with(
        &format!("{} {conninfo}", proxy.conninfo(BOB.0, BOB.1, "app")),
        commands,
    )
}

fn walsenders(cluster: &Cluster) -> usize {
    cluster
        .primary()
        .psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender' AND usename = 'bob'")
        .unwrap()
        .parse()
        .unwrap()
}

/// Polls until bob has `n` walsenders; the time it took, or `None` after 10 s.
async fn until_walsenders(cluster: &Cluster, n: usize) -> Option<Duration> {
    let t0 = Instant::now();
    poll_until(Duration::from_secs(10), || async {
        walsenders(cluster) == n
    })
    .await
    .then(|| t0.elapsed())
}

/// The i-th column of the first DataRow among `msgs`, as text.
fn column(msgs: &[(u8, Vec<u8>)], i: usize) -> String {
    let (_, row) = msgs.iter().find(|(t, _)| *t == b'D').expect("a DataRow");
    let mut at = 2;
    for col in 0..=i {
        let len = i32::from_be_bytes(row[at..at + 4].try_into().unwrap());
        at += 4;
        let len = usize::try_from(len).unwrap_or(0);
        if col == i {
            return String::from_utf8_lossy(&row[at..at + len]).into_owned();
        }
        at += len;
    }
    unreachable!()
}

/// A physical replication client through the proxy, streaming: logged in,
/// START_REPLICATION sent, CopyBothResponse and the first WAL received.
fn streaming_client(proxy: &Proxy, cluster: &Cluster) -> TcpStream {
    let (mut s, _) = raw_login_with(proxy.port, &[("replication", "true")]);
    s.write_all(&query_message("IDENTIFY_SYSTEM")).unwrap();
    let msgs = read_until_ready(&mut s);
    assert_eq!(first_sqlstate(&msgs), None, "IDENTIFY_SYSTEM: {msgs:?}");
    let xlogpos = column(&msgs, 2);
    s.write_all(&query_message(&format!("START_REPLICATION {xlogpos}")))
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut wrote_wal = false;
    loop {
        let msgs = messages(&got);
        assert_eq!(first_sqlstate(&msgs), None, "START_REPLICATION: {msgs:?}");
        if let Some(w) = msgs.iter().position(|(t, _)| *t == b'W') {
            if msgs[w + 1..].iter().any(|(t, _)| *t == b'd') {
                return s;
            }
            if !wrote_wal {
                // WAL to stream: the walsender is mid-stream, not idle.
                cluster
                    .primary()
                    .psql("CREATE TABLE IF NOT EXISTS streamed (x int); INSERT INTO streamed VALUES (1)")
                    .unwrap();
                wrote_wal = true;
            }
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed while starting to stream: {msgs:?}");
        got.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_login_takes_application_name_and_options_at_startup() {
    let cluster = replication_cluster();
    for proxy in [
        Proxy::start(&cluster, ProxyOptions::default()),
        transaction_proxy(&cluster),
    ] {
        for replication in ["true", "database"] {
            let (ok, out, err) = psql_replication(
                &proxy,
                &format!(
                    "replication={replication} application_name=standby1 options='-c datestyle=german'"
                ),
                &["IDENTIFY_SYSTEM", "SHOW application_name", "SHOW datestyle"],
            );
            assert!(
                ok,
                "replication={replication}: {err}\n{}",
                proxy.log_tail(30)
            );
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(
                lines[1..],
                ["standby1", "German, DMY"],
                "replication={replication}: {out}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_while_streaming_ends_its_walsender_at_once() {
    let cluster = replication_cluster();
    let proxy = Proxy::start(&cluster, ProxyOptions::default());
    // Terminate in the middle of CopyBoth, then a plain close.
    for goodbye in [true, false] {
        let mut s = streaming_client(&proxy, &cluster);
        assert_eq!(walsenders(&cluster), 1);
        if goodbye {
            s.write_all(b"X\0\0\0\x04").unwrap();
        }
        drop(s);
        let took = until_walsenders(&cluster, 0).await;
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(2)),
            "terminate={goodbye}: the walsender outlived its client by {took:?}\n{}",
            proxy.log_tail(30)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_connection_is_closed_with_its_client_never_cached() {
    let cluster = replication_cluster();
    let proxy = Proxy::start(&cluster, ProxyOptions::default());
    let slots = || {
        cluster
            .primary()
            .psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap()
    };
    // A database-connected walsender takes DISCARD ALL: a reset would not
    // stop it being cached, with its temporary slot.
    let (ok, _, err) = psql_replication(
        &proxy,
        "replication=database",
        &["CREATE_REPLICATION_SLOT left_behind TEMPORARY PHYSICAL"],
    );
    assert!(ok, "{err}");
    let took = until_walsenders(&cluster, 0).await;
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(2)),
        "the walsender outlived its client by {took:?}"
    );
    assert_eq!(slots(), "0", "the temporary slot outlived its client");
    // The next replication client gets a walsender of its own.
    let (ok, out, err) = psql_replication(
        &proxy,
        "replication=database",
        &["CREATE_REPLICATION_SLOT left_behind TEMPORARY PHYSICAL"],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("left_behind|"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_clients_keep_a_walsender_each_in_transaction_mode() {
    let cluster = replication_cluster();
    let proxy = transaction_proxy(&cluster);
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (mut s, _) = raw_login_with(proxy.port, &[("replication", "true")]);
        s.write_all(&query_message("IDENTIFY_SYSTEM")).unwrap();
        let msgs = read_until_ready(&mut s);
        assert_eq!(first_sqlstate(&msgs), None, "{msgs:?}");
        clients.push(s);
    }
    assert_eq!(
        walsenders(&cluster),
        2,
        "two replication clients share a walsender"
    );
    drop(clients);
    assert!(until_walsenders(&cluster, 0).await.is_some());
}
