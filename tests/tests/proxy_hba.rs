//! `proxy.hba_file`: who may log in and how, in pg_hba.conf's syntax.

use std::path::{Path, PathBuf};

use pgwarden_e2e::tls::Pki;
use pgwarden_e2e::*;

fn hba_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("pool_hba.conf");
    std::fs::write(&path, text).unwrap();
    path
}

fn with_hba(path: &Path) -> ProxyOptions {
    ProxyOptions::default().set(&format!("hba_file = \"{}\"", path.display()))
}

fn login(proxy: &Proxy, user: &str, password: &str, extra: &str) -> (bool, String, String) {
    psql_with(
        &format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=app {extra}",
            proxy.port
        ),
        &["SELECT current_user"],
    )
}

#[test]
fn reject_lines_and_unmatched_clients_get_28000_in_postgresqls_words() {
    let cluster = cluster(0);
    let dir = tempfile::tempdir().unwrap();
    let path = hba_file(
        dir.path(),
        "# TYPE DATABASE USER ADDRESS METHOD\n\
         host app bob 127.0.0.1/32 reject\n\
         host app alice,carol 127.0.0.1/32 scram-sha-256\n",
    );
    let proxy = Proxy::start(&cluster, with_hba(&path));
    assert_psql_answers(login(&proxy, ALICE.0, ALICE.1, ""), "alice");
    assert_psql_refused(
        login(&proxy, BOB.0, BOB.1, ""),
        "hba_file rejects connection for host \"127.0.0.1\", user \"bob\", database \"app\", no encryption",
    );
    // No line for database postgres.
    assert_psql_refused(
        psql_with(
            &format!(
                "host=127.0.0.1 port={} user={} password={} dbname=postgres",
                proxy.port, ALICE.0, ALICE.1
            ),
            &["SELECT 1"],
        ),
        "no hba_file entry for host \"127.0.0.1\", user \"alice\", database \"postgres\"",
    );
    // On the wire: 28000, before any password is asked for.
    let answer = raw_exchange(proxy.port, &startup_packet(BOB.0, "app"));
    assert_eq!(error_code(&answer).as_deref(), Some("28000"));
    assert_eq!(messages(&answer).first().map(|m| m.0), Some(b'E'));
}

#[test]
fn hostssl_lines_refuse_plain_text_and_hostnossl_lines_tls() {
    let cluster = cluster(0);
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (crt, key) = pki.issue("proxy", &["localhost", "127.0.0.1"]);
    let path = hba_file(
        dir.path(),
        "hostssl app alice all scram-sha-256\nhostnossl app carol all scram-sha-256\n",
    );
    let proxy = Proxy::start(
        &cluster,
        with_hba(&path)
            .set("client_tls_mode = \"allow\"")
            .set(&format!("client_tls_cert_file = \"{}\"", crt.display()))
            .set(&format!("client_tls_key_file = \"{}\"", key.display())),
    );
    assert!(login(&proxy, ALICE.0, ALICE.1, "sslmode=require").0);
    let (ok, _, err) = login(&proxy, ALICE.0, ALICE.1, "sslmode=disable");
    assert!(!ok, "a hostssl line let a plain-text client in");
    assert!(
        err.contains("no hba_file entry") && err.contains("no encryption"),
        "{err}"
    );
    assert!(login(&proxy, CAROL.0, CAROL.1, "sslmode=disable").0);
    let (ok, _, err) = login(&proxy, CAROL.0, CAROL.1, "sslmode=require");
    assert!(!ok, "a hostnossl line let a TLS client in");
    assert!(err.contains("SSL encryption"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_and_reload_changes_new_logins_and_leaves_open_sessions_alone() {
    let cluster = cluster(0);
    let dir = tempfile::tempdir().unwrap();
    let path = hba_file(dir.path(), "host all all all scram-sha-256\n");
    let proxy = Proxy::start(&cluster, with_hba(&path));
    let open = proxy.alice().await;
    std::fs::write(
        &path,
        "host all alice all reject\nhost all all all scram-sha-256\n",
    )
    .unwrap();
    let r = pgwardenctl_async(&proxy.config, &["reload"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("hba file reloaded: 2 rules"),
        "{}",
        r.stdout
    );
    let refused = proxy.connect(ALICE.0, ALICE.1, "app").await.err();
    assert_eq!(
        refused.as_ref().and_then(sqlstate).as_deref(),
        Some("28000"),
        "{refused:?}"
    );
    // The session opened before goes on.
    let one: i32 = query_value(&open, "SELECT 1").await;
    assert_eq!(one, 1);
    // A broken edit is refused by the reload, naming the line; the rules
    // in force stay.
    std::fs::write(
        &path,
        "host all all all scram-sha-256\nhost all +admins all md5\n",
    )
    .unwrap();
    let r = pgwardenctl_async(&proxy.config, &["reload"]).await;
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("proxy.hba_file")
            && r.stderr.contains("line 2")
            && r.stderr.contains("group membership"),
        "{}",
        r.stderr
    );
    assert!(proxy.connect(ALICE.0, ALICE.1, "app").await.is_err());
    assert!(proxy.connect(CAROL.0, CAROL.1, "app").await.is_ok());
}

#[test]
fn trust_password_and_md5_lines_use_their_own_exchange() {
    let cluster = cluster(0);
    let dir = tempfile::tempdir().unwrap();
    let path = hba_file(
        dir.path(),
        "host app carol all trust\nhost app alice all password\nhost app bob all md5\n",
    );
    let proxy = Proxy::start(&cluster, with_hba(&path));
    // carol's plain secret logs the proxy in to the server; she gave none.
    assert_psql_answers(
        psql_with(
            &format!("host=127.0.0.1 port={} user=carol dbname=app", proxy.port),
            &["SELECT current_user"],
        ),
        "carol",
    );
    // password: the clear text is checked against alice's SCRAM verifier.
    assert_psql_answers(login(&proxy, ALICE.0, ALICE.1, ""), "alice");
    assert_psql_refused(
        login(&proxy, ALICE.0, "wrong", ""),
        "password authentication failed",
    );
    // What each line asks for, on the wire: AuthenticationCleartextPassword
    // (3) for alice's line, MD5 (5) for bob's, Ok (0) at once for carol's.
    let asked = |user: &str| {
        let answer = raw_exchange(proxy.port, &startup_packet(user, "app"));
        let msgs = messages(&answer);
        let (tag, body) = msgs.first().cloned().unwrap_or_default();
        (tag, body.get(..4).map(|b| b[3]))
    };
    assert_eq!(asked(ALICE.0), (b'R', Some(3)));
    assert_eq!(asked(BOB.0), (b'R', Some(5)));
    assert_eq!(asked(CAROL.0), (b'R', Some(0)));
    assert_psql_answers(login(&proxy, BOB.0, BOB.1, ""), "bob");
}

#[test]
fn cert_lines_let_in_clients_whose_certificate_names_them() {
    let cluster = cluster(0);
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (crt, key) = pki.issue("proxy", &["localhost", "127.0.0.1"]);
    let (carol_crt, carol_key) = pki.issue("carol", &["carol"]);
    let (alice_crt, alice_key) = pki.issue("alice", &["alice"]);
    let path = hba_file(dir.path(), "hostssl app all all cert\n");
    let proxy = Proxy::start(
        &cluster,
        with_hba(&path)
            .set("client_tls_mode = \"require\"")
            .set(&format!("client_tls_cert_file = \"{}\"", crt.display()))
            .set(&format!("client_tls_key_file = \"{}\"", key.display()))
            .set(&format!("client_tls_ca_file = \"{}\"", pki.ca().display())),
    );
    let with_cert = |user: &str, crt: &Path, key: &Path| {
        psql_with(
            &format!(
                "host=localhost port={} user={user} dbname=app sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
                proxy.port,
                pki.ca().display(),
                crt.display(),
                key.display()
            ),
            &["SELECT current_user"],
        )
    };
    let (ok, out, err) = with_cert("carol", &carol_crt, &carol_key);
    assert!(ok, "{err}\n{}", proxy.log_tail(20));
    assert_eq!(out, "carol");
    // alice's certificate does not name carol.
    assert_psql_refused(
        with_cert("carol", &alice_crt, &alice_key),
        "certificate authentication failed for user \"carol\"",
    );
    // No certificate at all.
    assert_psql_refused(
        psql_with(
            &format!(
                "host=localhost port={} user=carol dbname=app sslmode=verify-full sslrootcert={} sslcert=/nonexistent sslkey=/nonexistent",
                proxy.port,
                pki.ca().display()
            ),
            &["SELECT 1"],
        ),
        "requires a valid client certificate",
    );
    // A certificate another CA signed is refused by TLS itself.
    let other = Pki::new();
    let (o_crt, o_key) = other.issue("carol-other", &["carol"]);
    let (ok, _, _) = with_cert("carol", &o_crt, &o_key);
    assert!(!ok, "a certificate from another CA was accepted");
}
