//! Client authentication: SCRAM and md5 users, plain-text secrets, wrong
//! passwords and unknown users (28P01, revealing nothing).

use std::time::Duration;

use pgwarden_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_md5_and_plain_users_log_in_and_wrong_passwords_get_28p01() {
    let (_cluster, proxy) = proxied(0, ProxyOptions::default());

    // alice: SCRAM verifier in the auth file; the proxy logs in to the server
    // with the ClientKey recovered from her proof.
    let c = proxy.connect(ALICE.0, ALICE.1, "app").await.unwrap();
    let u: String = query_value(&c, "SELECT current_user::text").await;
    assert_eq!(u, "alice");
    // bob: md5 secret, md5 both ways.
    let c = proxy.connect(BOB.0, BOB.1, "app").await.unwrap();
    let u: String = query_value(&c, "SELECT current_user::text").await;
    assert_eq!(u, "bob");
    // carol: plain text in the auth file, SCRAM to the proxy and to the server.
    let c = proxy.connect(CAROL.0, CAROL.1, "app").await.unwrap();
    let u: String = query_value(&c, "SELECT current_user::text").await;
    assert_eq!(u, "carol");

    for (user, pw) in [
        (ALICE.0, "wrong"),
        (BOB.0, "wrong"),
        (CAROL.0, ""),
        ("mallory", "whatever"),
    ] {
        let err = proxy
            .connect(user, pw, "app")
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} got in"));
        assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{user}: {err}");
        let text = db_message(&err);
        assert_eq!(
            text,
            format!("password authentication failed for user \"{user}\"")
        );
    }
    // Nothing secret reached the log.
    let log = proxy.log();
    for secret in [ALICE.1, BOB.1, CAROL.1, "SCRAM-SHA-256$", MONITOR.1] {
        assert!(!log.contains(secret), "log contains {secret}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_auth_type_checks_plain_secrets_with_md5() {
    let (_cluster, proxy) = proxied(0, ProxyOptions::default().set("auth_type = \"md5\""));
    // libpq answers whatever the proxy asks; carol's plain secret is checked with md5.
    assert_psql_answers(
        psql(&proxy, CAROL.0, CAROL.1, "app", "SELECT current_user"),
        "carol",
    );
    assert_psql_refused(
        psql(&proxy, CAROL.0, "nope", "app", "SELECT 1"),
        "password authentication failed",
    );
    // alice's SCRAM verifier still means SCRAM.
    assert_psql_answers(
        psql(&proxy, ALICE.0, ALICE.1, "app", "SELECT current_user"),
        "alice",
    );
}

#[test]
fn refuses_to_start_with_a_world_readable_auth_file() {
    use std::os::unix::fs::PermissionsExt;
    let (_cluster, proxy) = proxied(0, ProxyOptions::default());
    let auth = proxy.dir.path().join("users.txt");
    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(pgwarden_testkit::workspace_bin("pgwarden-proxy"))
        .arg("--config")
        .arg(&proxy.config)
        .env(
            "PGWARDEN_PROXY__LISTEN",
            format!("127.0.0.1:{}", pgwarden_testkit::free_port()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("proxy.auth_file"), "{err}");
    assert!(err.contains("readable"), "{err}");
}

/// Sends the proxy SIGHUP and waits until its log says `outcome`.
fn sighup_until_logged(proxy: &mut Proxy, outcome: &str) {
    proxy
        .child()
        .signal(nix::sys::signal::Signal::SIGHUP)
        .unwrap();
    pgwarden_testkit::wait_until(Duration::from_secs(10), outcome, || {
        proxy.log().contains(outcome)
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_auth_file() {
    let (_cluster, mut proxy, auth) = frank_added_to_the_auth_file().await;
    sighup_until_logged(&mut proxy, "auth file reloaded");
    proxy.connect(FRANK.0, FRANK.1, "postgres").await.unwrap();
    // A broken file is refused and the old one stays in force.
    std::fs::write(&auth, "\"frank\" unterminated\n").unwrap();
    sighup_until_logged(&mut proxy, "auth file not reloaded");
    proxy.connect(FRANK.0, FRANK.1, "postgres").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_login_is_answered_late_and_slows_nobody_else() {
    let (_cluster, proxy) = proxied(
        0,
        ProxyOptions::default().set("auth_failure_delay = \"3s\""),
    );
    let start = std::time::Instant::now();
    let conninfo = proxy.conninfo(ALICE.0, "wrong", "app");
    let bad = tokio::spawn(async move {
        let r = connect(&conninfo).await;
        (r.err(), start.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Meanwhile another client (from the same address, even) gets in at
    // once.
    let good = proxy.connect(CAROL.0, CAROL.1, "app").await.unwrap();
    let good_at = start.elapsed();
    let one: i32 = query_value(&good, "SELECT 1").await;
    assert_eq!(one, 1);
    let (err, bad_at) = bad.await.unwrap();
    let err = err.expect("a wrong password got in");
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err}");
    assert!(
        bad_at >= Duration::from_millis(2900),
        "answered after {bad_at:?}"
    );
    assert!(good_at < bad_at, "the good login waited for the bad one");
}
