//! `pgwardenctl rejoin`: after a failover, the old primary is made a
//! standby of the new one by failover.rejoin_command (the shipped
//! deploy/scripts/pgwarden-rejoin: pg_rewind) and attached once it streams.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use pgwarden_e2e::*;
use pgwarden_testkit::{StopMode, wait_until};

fn rejoin_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/scripts/pgwarden-rejoin")
}

fn status_of(s: &ClusterState, id: u32) -> (i32, String) {
    s.backends
        .iter()
        .find(|b| b.id == id)
        .map(|b| (b.status, b.reason.clone()))
        .unwrap()
}

async fn ctl(proxy: &Proxy, args: &[&str]) -> (i32, String, String) {
    let run = pgwardenctl_async(&proxy.config, args).await;
    (run.code, run.stdout, run.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_primary_rejoins_as_a_standby_of_the_new_one() {
    let (cluster, proxy) = proxied(
        1,
        ProxyOptions::default()
            .failover(&format!(
                "rejoin_command = \"{} %D %H %r %a\"",
                rejoin_script().display()
            ))
            .failover("rejoin_timeout = \"120s\""),
    );
    proxy
        .wait_state(Duration::from_secs(20), "both backends up", |s| {
            s.primary_id == Some(0) && s.backends.iter().all(|b| b.status == Status::Up as i32)
        })
        .await;
    let c = proxy
        .alice_after("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await;
    cluster.wait_replicated(Duration::from_secs(20)).unwrap();
    drop(c);

    // The primary dies; pg1 takes over and gets writes pg0 never saw.
    cluster.node(0).stop(StopMode::Immediate).unwrap();
    proxy
        .wait_state(Duration::from_secs(30), "pg1 the primary", |s| {
            s.primary_id == Some(1) && !s.failover_in_progress
        })
        .await;
    let c = proxy.alice_after("INSERT INTO t VALUES (2)").await;

    // pg0 comes back as a primary on the old timeline: fenced.
    cluster.node(0).start().unwrap();
    let s = proxy
        .wait_state(Duration::from_secs(20), "pg0 fenced", |s| {
            status_of(s, 0).0 == Status::Detached as i32
        })
        .await;
    assert!(status_of(&s, 0).1.contains("former primary"), "{s:#?}");

    // Rejoining the primary is refused, exit 1.
    let (code, _, err) = ctl(&proxy, &["rejoin", "pg1"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("pg1 is the primary"), "{err}");

    let (code, out, err) = ctl(&proxy, &["rejoin", "pg0", "--wait", "--timeout", "120s"]).await;
    assert_eq!(
        code,
        0,
        "stdout:\n{out}\nstderr:\n{err}\nmonitor log:\n{}",
        proxy.monitor_log()
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "pg0: rejoin started", "{out}");
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("pg0 rejoined and attached (generation "),
        "{out}"
    );
    let log = proxy.monitor_log();
    assert!(log.contains("pgwarden-rejoin: pg_rewind done"), "{log}");

    // pg0 is a standby of pg1 now, with the row written after the failover.
    let s = proxy.cluster_state().await;
    assert_eq!(s.primary_id, Some(1));
    assert_eq!(status_of(&s, 0).0, Status::Up as i32, "{s:#?}");
    assert_eq!(
        cluster.node(0).psql("SELECT pg_is_in_recovery()").unwrap(),
        "t"
    );
    c.batch_execute("INSERT INTO t VALUES (3)").await.unwrap();
    wait_until(
        Duration::from_secs(20),
        "pg0 to replay the new rows",
        || {
            cluster
                .node(0)
                .psql_db("app", "SELECT string_agg(x::text, ',' ORDER BY x) FROM t")
                .unwrap_or_default()
                == "1,2,3"
        },
    )
    .unwrap();
    // It streams through its own slot on pg1, and kept its own port.
    assert_eq!(
        cluster
            .node(1)
            .psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'pgwarden_pg0'")
            .unwrap(),
        "t"
    );

    // The script refuses to rewind the primary itself (say, the placeholders
    // swapped in the config), and the primary goes on untouched.
    let pg1 = cluster.node(1);
    let out = Command::new(rejoin_script())
        .arg(pg1.data_dir())
        .args([pg1.host(), &pg1.port().to_string(), "pg1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("it is not behind the primary (is it the primary itself?)"),
        "{stderr}"
    );
    assert_eq!(pg1.psql("SELECT pg_is_in_recovery()").unwrap(), "f");
    c.batch_execute("INSERT INTO t VALUES (4)").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rejoin_leaves_the_backend_detached_and_says_why_each_time() {
    let (cluster, proxy) = proxied(
        1,
        ProxyOptions::default()
            .failover("rejoin_command = \"echo rejoining %a from %H:%r; exit 3\""),
    );
    proxy
        .wait_state(Duration::from_secs(20), "both backends up", |s| {
            s.backends.iter().all(|b| b.status == Status::Up as i32)
        })
        .await;
    let (code, _, err) = ctl(&proxy, &["detach", "pg1"]).await;
    assert_eq!(code, 0, "{err}");
    let primary_port = cluster.node(0).port();
    for attempt in 0..2 {
        let (code, out, err) = ctl(&proxy, &["rejoin", "pg1", "--wait", "--timeout", "30s"]).await;
        assert_eq!(code, 1, "attempt {attempt}: {out}{err}");
        assert!(out.starts_with("pg1: rejoin started\n"), "{out}");
        assert!(
            err.starts_with("pgwardenctl: pg1 was not rejoined: hook failover.rejoin_command failed (exit status 3): ")
                && err.contains(&format!("rejoining pg1 from 127.0.0.1:{primary_port}")),
            "attempt {attempt}: {err}"
        );
        let s = proxy.cluster_state().await;
        assert_eq!(status_of(&s, 1).0, Status::Detached as i32);
        assert!(status_of(&s, 1).1.starts_with("rejoin failed: "), "{s:#?}");
    }
}
