//! TLS through the proxy, with certificates the tests make: clients with
//! `sslmode=verify-full` and `channel_binding=require`, plain text refused
//! under "require", PostgreSQL 17's direct TLS, and the proxy's own
//! connections to PostgreSQL under `[server_tls]`.

use std::sync::Arc;

use pgwarden_e2e::tls::Pki;
use pgwarden_e2e::*;

/// Client TLS settings for a proxy with `pki`'s certificate for
/// localhost and 127.0.0.1.
fn client_tls(pki: &Pki, mode: &str) -> ProxyOptions {
    let (crt, key) = pki.issue("proxy", &["localhost", "127.0.0.1"]);
    ProxyOptions::default()
        .set(&format!("client_tls_mode = \"{mode}\""))
        .set(&format!("client_tls_cert_file = \"{}\"", crt.display()))
        .set(&format!("client_tls_key_file = \"{}\"", key.display()))
}

/// A cluster, a PKI, and a proxy in front of the cluster requiring TLS of its
/// clients with the PKI's certificate ([`client_tls`] "require").
fn requiring_client_tls() -> (pgwarden_testkit::Cluster, Pki, Proxy) {
    let cluster = cluster(0);
    let pki = Pki::new();
    let proxy = Proxy::start(&cluster, client_tls(&pki, "require"));
    (cluster, pki, proxy)
}

/// `pg_stat_ssl.ssl` of the server session a client gets through `proxy`
/// (session mode: the client's own backend).
fn server_side_tls(proxy: &Proxy) -> String {
    let (ok, out, err) = psql(
        proxy,
        CAROL.0,
        CAROL.1,
        "app",
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert!(ok, "{err}\n{}", proxy.log_tail(30));
    out
}

/// A cluster serving TLS and a proxy (with its monitor) whose
/// `server_tls.mode` is `mode`, once the monitor knows the primary: its
/// checks got through.
async fn tls_servers_behind_a_proxy(mode: &str) -> (pgwarden_testkit::Cluster, Proxy) {
    let cluster = cluster(0);
    Pki::new().serve_tls(&cluster, &["localhost", "127.0.0.1"]);
    let proxy = Proxy::start(
        &cluster,
        ProxyOptions::default().with_extra(&format!("[server_tls]\nmode = \"{mode}\"\n")),
    );
    proxy
        .wait_state(
            std::time::Duration::from_secs(20),
            "the primary is known",
            |s| s.primary_id.is_some(),
        )
        .await;
    (cluster, proxy)
}

fn tls_conninfo(proxy: &Proxy, pki: &Pki, extra: &str) -> String {
    format!(
        "host=localhost port={} user={} password={} dbname=app sslrootcert={} {extra}",
        proxy.port,
        CAROL.0,
        CAROL.1,
        pki.ca().display()
    )
}

#[test]
fn psql_verify_full_and_channel_binding_work_through_the_proxy() {
    let (_cluster, pki, proxy) = requiring_client_tls();
    let (ok, out, err) = psql_with(
        &tls_conninfo(&proxy, &pki, "sslmode=verify-full channel_binding=require"),
        &["SELECT current_user"],
    );
    assert!(ok, "{err}\n{}", proxy.log_tail(30));
    assert_eq!(out, "carol");
    // alice's SCRAM verifier login (the proxy logs in to the server with
    // the ClientKey of her proof) works bound too.
    assert_psql_answers(
        psql_with(
            &format!(
                "host=localhost port={} user={} password={} dbname=app sslmode=verify-full sslrootcert={} channel_binding=require",
                proxy.port,
                ALICE.0,
                ALICE.1,
                pki.ca().display()
            ),
            &["SELECT current_user"],
        ),
        "alice",
    );
    // A wrong password is still a wrong password.
    assert_psql_refused(
        psql_with(
            &tls_conninfo(&proxy, &pki, "sslmode=require password=nope")
                .replace(&format!("password={}", CAROL.1), ""),
            &["SELECT 1"],
        ),
        "password authentication failed",
    );
}

#[test]
fn plain_text_clients_are_refused_under_require_and_served_under_allow() {
    let (cluster, pki, strict) = requiring_client_tls();
    assert_psql_refused(
        psql_with(
            &tls_conninfo(&strict, &pki, "sslmode=disable"),
            &["SELECT 1"],
        ),
        "TLS required",
    );
    // The same from the wire: SQLSTATE 28000.
    let answer = raw_exchange(strict.port, &startup_packet(CAROL.0, "app"));
    assert_eq!(error_code(&answer).as_deref(), Some("28000"));

    let lenient = Proxy::start(&cluster, client_tls(&pki, "allow"));
    for mode in ["disable", "require", "verify-full"] {
        let (ok, out, err) = psql_with(
            &tls_conninfo(&lenient, &pki, &format!("sslmode={mode}")),
            &["SELECT 1"],
        );
        assert!(ok, "sslmode={mode}: {err}");
        assert_eq!(out, "1");
    }
    // Without TLS configured, SSLRequest is answered N, as before.
    let plain = Proxy::start(&cluster, ProxyOptions::default());
    assert_psql_refused(
        psql_with(
            &tls_conninfo(&plain, &pki, "sslmode=require"),
            &["SELECT 1"],
        ),
        "does not support SSL",
    );
}

/// PostgreSQL 17's direct TLS: the client's first bytes are a TLS hello
/// with ALPN `postgresql`, then the startup packet inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_with_alpn_is_served_and_offers_scram_plus() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_cluster, pki, proxy) = requiring_client_tls();
    let ca = pki.ca();
    let config = pgwarden_tls::client_config(
        pgwarden_tls::Verify::Full,
        Some(pgwarden_tls::PemFile {
            key: "test",
            path: &ca,
        }),
        None,
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    let mut tls = pgwarden_tls::TlsConnector::from(Arc::clone(&config))
        .connect(pgwarden_tls::server_name("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(&startup_packet(CAROL.0, "app"))
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let msgs = messages(&buf[..n]);
    let (tag, body) = msgs.first().expect("an answer");
    assert_eq!(*tag, b'R', "{msgs:?}");
    let text = String::from_utf8_lossy(body);
    assert!(text.contains("SCRAM-SHA-256-PLUS"), "{text}");

    // Without ALPN a direct TLS client is not served.
    let mut no_alpn = (*config).clone();
    no_alpn.alpn_protocols.clear();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    let r = pgwarden_tls::TlsConnector::from(Arc::new(no_alpn))
        .connect(pgwarden_tls::server_name("localhost").unwrap(), tcp)
        .await;
    if let Ok(mut s) = r {
        // TLS 1.3: the server may close only after the handshake.
        let _ = s.write_all(&startup_packet(CAROL.0, "app")).await;
        let mut rest = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert!(
            !rest.starts_with(b"R"),
            "a direct TLS client without ALPN was served"
        );
    }
}

#[test]
fn server_tls_require_encrypts_the_proxys_sessions() {
    let cluster = cluster(0);
    let pki = Pki::new();
    pki.serve_tls(&cluster, &["localhost", "127.0.0.1"]);
    let proxy = Proxy::start(
        &cluster,
        ProxyOptions::default()
            .set("pool_mode = \"session\"")
            .with_extra("[server_tls]\nmode = \"require\"\n"),
    );
    assert_eq!(server_side_tls(&proxy), "t");

    // verify-full with the CA: the certificate names 127.0.0.1, the
    // backend's host.
    let verified = Proxy::start(
        &cluster,
        ProxyOptions::default().with_extra(&format!(
            "[server_tls]\nmode = \"verify-full\"\nca_file = \"{}\"\n",
            pki.ca().display()
        )),
    );
    assert_eq!(server_side_tls(&verified), "t");
}

/// The backend's row of `pgwardenctl status`, once its reason mentions
/// `what`.
fn status_row(proxy: &Proxy, backend: &str, what: &str) -> String {
    let mut row = String::new();
    let shown = pgwarden_testkit::wait_until(
        std::time::Duration::from_secs(20),
        "the backend's reason in pgwardenctl status",
        || {
            let out = pgwardenctl(&proxy.config, &["status"]).stdout;
            row = out
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(backend))
                .unwrap_or_default()
                .to_owned();
            row.contains(what)
        },
    );
    assert!(
        shown.is_ok(),
        "{row}\n{}",
        log_tail("monitor", &proxy.monitor_log(), 20)
    );
    row
}

#[test]
fn verify_full_refuses_a_server_certificate_for_another_name_naming_the_backend() {
    let cluster = cluster(0);
    let pki = Pki::new();
    pki.serve_tls(&cluster, &["wrong.example"]);
    let proxy = Proxy::start(
        &cluster,
        ProxyOptions::default()
            .set("failover_hold_timeout = \"1s\"")
            .with_extra(&format!(
                "[server_tls]\nmode = \"verify-full\"\nca_file = \"{}\"\n",
                pki.ca().display()
            )),
    );
    // Neither the monitor nor the proxy talks to it: no primary, and the
    // operator reads why on the backend's own line.
    let backend = cluster.node(0).name().to_owned();
    let row = status_row(&proxy, &backend, "not valid for name");
    assert!(row.contains("down"), "{row}");
    let (ok, _, err) = psql(&proxy, CAROL.0, CAROL.1, "app", "SELECT 1");
    assert!(
        !ok,
        "a client reached a server whose certificate names another host"
    );
    assert!(err.contains("no primary backend is available"), "{err}");
    // verify-ca checks the chain only: the same server passes.
    let by_ca = Proxy::start(
        &cluster,
        ProxyOptions::default().with_extra(&format!(
            "[server_tls]\nmode = \"verify-ca\"\nca_file = \"{}\"\n",
            pki.ca().display()
        )),
    );
    assert_psql_answers(psql(&by_ca, CAROL.0, CAROL.1, "app", "SELECT 1"), "1");
}

#[test]
fn require_refuses_a_server_without_tls() {
    let (cluster, proxy) = proxied(
        0,
        ProxyOptions::default()
            .set("failover_hold_timeout = \"1s\"")
            .with_extra("[server_tls]\nmode = \"require\"\n"),
    );
    let backend = cluster.node(0).name().to_owned();
    let row = status_row(&proxy, &backend, "TLS");
    assert!(row.contains("down"), "{row}");
    assert_psql_refused(
        psql(&proxy, CAROL.0, CAROL.1, "app", "SELECT 1"),
        "no primary backend is available",
    );
    // "prefer" (the default) falls back to plain text.
    let prefer = Proxy::start(&cluster, ProxyOptions::default());
    assert_eq!(server_side_tls(&prefer), "f");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitors_checks_are_encrypted_under_server_tls_require() {
    let (cluster, proxy) = tls_servers_behind_a_proxy("require").await;
    // Every session of the health-check role is encrypted, and there is one.
    let sessions = || {
        cluster
            .primary()
            .psql(&format!(
                "SELECT count(*), coalesce(bool_and(s.ssl), false) FROM pg_stat_ssl s \
                 JOIN pg_stat_activity a USING (pid) WHERE a.usename = '{}'",
                MONITOR.0
            ))
            .unwrap()
    };
    let seen = poll_until(std::time::Duration::from_secs(20), || async {
        let out = sessions();
        out != "0|f" && out.ends_with("|t")
    })
    .await;
    assert!(
        seen,
        "monitor sessions: {}\n{}",
        sessions(),
        proxy.monitor_log()
    );
    // The proxy's own session, too.
    assert_eq!(server_side_tls(&proxy), "t");
}
#[test]
fn a_broken_certificate_on_reload_keeps_the_old_one_and_says_why() {
    let (_cluster, pki, proxy) = requiring_client_tls();
    let connects = || {
        psql_with(
            &tls_conninfo(&proxy, &pki, "sslmode=verify-full"),
            &["SELECT 1"],
        )
    };
    assert!(connects().0);
    std::fs::write(pki.path("proxy.crt"), "not a certificate\n").unwrap();
    let r = pgwardenctl(&proxy.config, &["reload"]);
    assert_ne!(
        r.code, 0,
        "reload accepted a broken certificate: {}",
        r.stdout
    );
    assert!(
        r.stderr.contains("proxy.client_tls_cert_file"),
        "{}",
        r.stderr
    );
    // The old certificate still serves.
    let (ok, _, err) = connects();
    assert!(ok, "{err}");
    // A good new pair is taken: clients now see the new certificate
    // (issued by another CA, so the old CA no longer verifies it).
    let other = Pki::new();
    let (crt, key) = other.issue("proxy", &["localhost", "127.0.0.1"]);
    std::fs::copy(&crt, pki.path("proxy.crt")).unwrap();
    std::fs::copy(&key, pki.path("proxy.key")).unwrap();
    let r = pgwardenctl(&proxy.config, &["reload"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("TLS"), "{}", r.stdout);
    let (ok, _, _) = connects();
    assert!(
        !ok,
        "the old CA still verifies the proxy: the new pair was not taken"
    );
    let (ok, _, err) = psql_with(
        &tls_conninfo(&proxy, &other, "sslmode=verify-full"),
        &["SELECT 1"],
    );
    assert!(ok, "{err}");
}

/// Regression: with TLS disabled the monitor's connector was asked for a
/// TLS session anyway (tokio-postgres prepares one per host whatever the
/// sslmode) and refused, so no check ever got through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_disable_keeps_the_monitor_and_proxy_in_plain_text() {
    let (_cluster, proxy) = tls_servers_behind_a_proxy("disable").await;
    assert_eq!(server_side_tls(&proxy), "f");
}

/// Big results over TLS both ways, in both pool modes (the flush of every
/// TLS write is tested with a full socket in the proxy's `net` module).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_results_over_tls_arrive_whole_in_both_pool_modes() {
    let cluster = cluster(0);
    let pki = Pki::new();
    pki.serve_tls(&cluster, &["localhost", "127.0.0.1"]);
    for mode in ["session", "transaction"] {
        let proxy = Proxy::start(
            &cluster,
            client_tls(&pki, "require")
                .set(&format!("pool_mode = \"{mode}\""))
                .with_extra("[server_tls]\nmode = \"require\"\n"),
        );
        let config =
            pgwarden_tls::client_config(pgwarden_tls::Verify::Nothing, None, None).unwrap();
        let tls = pgwarden_tls::postgres::PgTls::new(config, true);
        let mut cfg: tokio_postgres::Config =
            proxy.conninfo(CAROL.0, CAROL.1, "app").parse().unwrap();
        let connector = tls.apply(&mut cfg);
        let (client, conn) = cfg.connect(connector).await.unwrap();
        tokio::spawn(conn);
        for _ in 0..3 {
            let row = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                client.query_one("SELECT repeat('ab', 8000000)", &[]),
            )
            .await
            .unwrap_or_else(|_| panic!("{mode}: the result never arrived whole"))
            .unwrap();
            let text: String = row.get(0);
            assert_eq!(text.len(), 16_000_000, "{mode}");
        }
    }
}
