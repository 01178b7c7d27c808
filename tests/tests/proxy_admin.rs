//! The proxy's admin API on `proxy.sock`, through the real `pgwardenctl`:
//! `clients`, `pools`, `terminate`, `pause`/`resume` and `reload` against a
//! real proxy in front of real PostgreSQL.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgwarden_e2e::*;
use pgwarden_testkit::{wait_until, workspace_bin};

async fn ctl(proxy: &Proxy, args: &[&str]) -> CtlRun {
    pgwardenctl_async(&proxy.config, args).await
}

async fn ctl_ok(proxy: &Proxy, args: &[&str]) -> String {
    let run = ctl(proxy, args).await;
    assert_eq!(run.code, 0, "pgwardenctl {args:?}: {run:?}");
    assert_eq!(run.stderr, "", "pgwardenctl {args:?}");
    run.stdout
}

/// `clients` rows as (pid, user, database, backend).
async fn clients(proxy: &Proxy) -> Vec<(i32, String, String, String)> {
    let text = ctl_ok(proxy, &["clients"]).await;
    if text == "no clients\n" {
        return Vec::new();
    }
    let mut lines = text.lines();
    assert!(
        lines.next().unwrap().starts_with("PID  "),
        "no header:\n{text}"
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].parse().unwrap(), f[2].into(), f[3].into(), f[4].into())
        })
        .collect()
}

/// `pools` rows as (backend, user, database, active, idle, waiting).
async fn pools(proxy: &Proxy) -> Vec<(String, String, String, u32, u32, u32)> {
    let text = ctl_ok(proxy, &["pools"]).await;
    let mut lines = text.lines();
    assert!(
        lines.next().unwrap().starts_with("routing to backend 0"),
        "{text}"
    );
    lines
        .filter(|l| !l.starts_with("BACKEND") && !l.starts_with("no pools"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].into(),
                f[1].into(),
                f[2].into(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
                f[5].parse().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_pools_show_sessions_and_terminate_ends_exactly_one() {
    let (_cluster, proxy) = proxied(0, ProxyOptions::default());
    assert_eq!(ctl_ok(&proxy, &["clients"]).await, "no clients\n");

    let alice = proxy.alice_after("SELECT 1").await;
    let mut bob = raw_login(proxy.port);

    let listed = clients(&proxy).await;
    let users: Vec<(&str, &str, &str)> = listed
        .iter()
        .map(|(_, u, d, b)| (u.as_str(), d.as_str(), b.as_str()))
        .collect();
    assert_eq!(users, [(ALICE.0, "app", "0"), (BOB.0, "app", "0")]);
    let bob_pid = listed[1].0;

    // JSON carries the same, with the client's address.
    let json: serde_json::Value =
        serde_json::from_str(&ctl_ok(&proxy, &["clients", "--json"]).await).unwrap();
    assert_eq!(json[1]["pid"], serde_json::json!(bob_pid));
    assert_eq!(json[1]["backend_id"], serde_json::json!(0));
    assert!(
        json[1]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{json}"
    );

    let mut rows = pools(&proxy).await;
    rows.sort();
    assert_eq!(
        rows,
        [
            ("0".into(), ALICE.0.into(), "app".into(), 1, 0, 0),
            ("0".into(), BOB.0.into(), "app".into(), 1, 0, 0),
        ]
    );

    // Terminating bob ends bob's session with 57P01, and only bob's.
    assert_eq!(
        ctl_ok(&proxy, &["terminate", &bob_pid.to_string()]).await,
        format!("client {bob_pid} terminated\n")
    );
    let last = tokio::task::spawn_blocking(move || {
        let mut last = Vec::new();
        let _ = std::io::Read::read_to_end(&mut bob, &mut last);
        last
    })
    .await
    .unwrap();
    assert_eq!(
        error_code(&last).as_deref(),
        Some("57P01"),
        "{:?}",
        messages(&last)
    );
    let one: i32 = query_value(&alice, "SELECT 1").await;
    assert_eq!(one, 1);
    let users: Vec<String> = clients(&proxy)
        .await
        .into_iter()
        .map(|(_, u, _, _)| u)
        .collect();
    assert_eq!(users, [ALICE.0]);

    // An unknown pid is refused: exit 1, one line.
    let run = ctl(&proxy, &["terminate", &bob_pid.to_string()]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr,
        format!("pgwardenctl: no client with pid {bob_pid} (see `pgwardenctl clients`)\n")
    );

    // When alice leaves, her server connection is cached: idle, not active.
    drop(alice);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = pools(&proxy).await;
        let alice_pool = rows.iter().find(|r| r.1 == ALICE.0).cloned();
        if alice_pool.as_ref().is_some_and(|r| (r.3, r.4) == (0, 1)) {
            break;
        }
        assert!(Instant::now() < deadline, "alice's pool: {alice_pool:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_sessions_until_resume_and_open_ones_go_on() {
    let (_cluster, proxy) = proxied(0, ProxyOptions::default().set("pool_timeout = \"3s\""));
    let open = proxy.alice().await;
    assert_eq!(
        ctl_ok(&proxy, &["pause"]).await,
        "paused: new sessions wait (up to proxy.pool_timeout) until `pgwardenctl resume`\n"
    );

    // A new session waits; the open one is not affected.
    let conninfo = proxy.conninfo(ALICE.0, ALICE.1, "app");
    let waiting = tokio::spawn(async move { connect(&conninfo).await });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!waiting.is_finished(), "a new session got through a pause");
    let one: i32 = query_value(&open, "SELECT 1").await;
    assert_eq!(one, 1);

    assert_eq!(
        ctl_ok(&proxy, &["resume"]).await,
        "resumed: new sessions go through\n"
    );
    let c = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("resume lets the waiting session through")
        .unwrap()
        .unwrap();
    let one: i32 = query_value(&c, "SELECT 1").await;
    assert_eq!(one, 1);

    // Paused for longer than pool_timeout: a clear refusal, not a hang.
    ctl_ok(&proxy, &["pause"]).await;
    let err = proxy
        .refused(ALICE.0, ALICE.1, "app", "paused past pool_timeout")
        .await;
    assert_eq!(sqlstate(&err).as_deref(), Some("57P03"), "{err}");
    let message = err.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.starts_with("pgwarden-proxy is paused by an operator")),
        "{message:?}"
    );
    ctl_ok(&proxy, &["resume"]).await;
    proxy.alice().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reads_the_auth_file_and_a_broken_one_changes_nothing() {
    let (_cluster, proxy, auth) = frank_added_to_the_auth_file().await;
    assert_eq!(
        ctl_ok(&proxy, &["reload"]).await,
        "auth file reloaded: 4 users\n"
    );
    proxy.connect(FRANK.0, FRANK.1, "postgres").await.unwrap();

    // A broken file: exit 1 with the reason; the old file stays in force.
    std::fs::write(&auth, "\"frank\" unterminated\n").unwrap();
    let run = ctl(&proxy, &["reload"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.starts_with("pgwardenctl: proxy.auth_file: ")
            && run.stderr.ends_with("; the old auth file stays in force\n")
            && run.stderr.lines().count() == 1,
        "{run:?}"
    );
    proxy.connect(FRANK.0, FRANK.1, "postgres").await.unwrap();
    proxy.alice().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_proxy_on_the_same_runtime_dir_refuses_to_start() {
    let (_cluster, proxy) = proxied(0, ProxyOptions::default());
    // Same config, another listen port: the admin socket is taken.
    let config = std::fs::read_to_string(&proxy.config).unwrap().replace(
        &format!("listen = \"127.0.0.1:{}\"", proxy.port),
        "listen = \"127.0.0.1:0\"",
    );
    let second = proxy.dir.path().join("second.toml");
    std::fs::write(&second, config).unwrap();
    // It holds the health check's password, as the first one does.
    std::fs::set_permissions(&second, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = Command::new(workspace_bin("pgwarden-proxy"))
        .arg("--config")
        .arg(&second)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("node.runtime_dir: cannot serve the admin API"),
        "{stderr}"
    );
    // The first one still answers.
    wait_until(
        Duration::from_secs(5),
        "the first proxy's admin API",
        || {
            Command::new(workspace_bin("pgwardenctl"))
                .arg("--config")
                .arg(&proxy.config)
                .arg("pools")
                .output()
                .is_ok_and(|o| o.status.success())
        },
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_ends_busy_and_waiting_sessions_and_pools_add_up_per_user() {
    let (cluster, proxy) = proxied(
        0,
        ProxyOptions::default()
            .set("pool_size = 2")
            .set("pool_timeout = \"30s\""),
    );
    // Two clients of alice that differ only in application_name: one row.
    let busy = proxy.alice_named("one").await;
    let holder = proxy.alice_named("two").await;
    holder.batch_execute("SELECT 1").await.unwrap();
    assert_eq!(
        pools(&proxy).await,
        [("0".into(), ALICE.0.into(), "app".into(), 2, 0, 0)]
    );

    // A running statement: terminating its client cancels it on the server.
    let busy_pid = clients(&proxy).await[0].0;
    let sleeping = tokio::spawn(async move { busy.batch_execute("SELECT pg_sleep(60)").await });
    wait_until(Duration::from_secs(10), "pg_sleep running", || {
        cluster
            .primary()
            .psql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'")
            .unwrap_or_default()
            == "1"
    })
    .unwrap();
    ctl_ok(&proxy, &["terminate", &busy_pid.to_string()]).await;
    let err = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .expect("the terminated client hears at once")
        .unwrap()
        .expect_err("terminated mid-statement");
    assert!(session_ended(&err), "{err:?}");
    wait_until(Duration::from_secs(10), "pg_sleep cancelled on the server", || {
        cluster
            .primary()
            .psql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'")
            .unwrap_or_default()
            == "0"
    })
    .unwrap();

    // Pools are per full set of startup parameters: with "two" holding
    // both of its pool's connections, a third "two" client waits, listed
    // without a backend; terminating it ends its wait with 57P01.
    let second = proxy.alice_named("two").await;
    let info = format!(
        "{} application_name=two",
        proxy.conninfo(ALICE.0, ALICE.1, "app")
    );
    let waiting = tokio::spawn(async move { connect(&info).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    let waiter = loop {
        let rows = pools(&proxy).await;
        if rows.first().is_some_and(|r| r.5 == 1) {
            let listed = clients(&proxy).await;
            let w = listed.iter().find(|c| c.3 == "-").cloned();
            break w.expect("the waiting client is listed without a backend");
        }
        assert!(Instant::now() < deadline, "no waiting client: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ctl_ok(&proxy, &["terminate", &waiter.0.to_string()]).await;
    let err = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap()
        .expect_err("terminated while waiting");
    assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{err:?}");
    let rows = pools(&proxy).await;
    assert_eq!(rows[0].5, 0, "no one waits any more: {rows:?}");
    drop((second, holder));
}
