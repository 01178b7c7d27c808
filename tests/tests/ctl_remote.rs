//! `pgwardenctl --host` (issue 9, item 6): the remote admin API that
//! pgwarden-monitor serves on `admin.listen` with mutual TLS, every
//! daemon's service passed on to its unix socket. A real monitor and proxy
//! over a real PostgreSQL; certificates the test makes.

use std::path::Path;
use std::time::Duration;

use pgwarden_e2e::tls::Pki;
use pgwarden_e2e::*;
use pgwarden_testkit::free_port;

/// A node serving its admin API on a free port, with a certificate for
/// 127.0.0.1; operators' certificates must be signed by the same CA.
async fn node_with_remote_admin(pki: &Pki) -> (pgwarden_testkit::Cluster, Proxy, String) {
    let (cert, key) = pki.issue("admin", &["127.0.0.1"]);
    let port = free_port();
    let cluster = cluster(1);
    let opts = ProxyOptions::default().with_extra(&format!(
        "[admin]\nlisten = \"127.0.0.1:{port}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
        cert.display(),
        key.display(),
        pki.ca().display()
    ));
    let proxy = Proxy::start(&cluster, opts);
    proxy
        .wait_state(Duration::from_secs(20), "the primary up", all_up)
        .await;
    (cluster, proxy, format!("127.0.0.1:{port}"))
}

/// `pgwardenctl --host HOST --ca CA [--cert C --key K] ARGS`; the config
/// passed is one that does not exist: remotely, none is read.
fn remote(host: &str, ca: &Path, identity: Option<(&Path, &Path)>, args: &[&str]) -> CtlRun {
    let mut all = vec!["--host".to_owned(), host.to_owned(), "--ca".to_owned()];
    all.push(ca.display().to_string());
    if let Some((cert, key)) = identity {
        all.extend(["--cert".to_owned(), cert.display().to_string()]);
        all.extend(["--key".to_owned(), key.display().to_string()]);
    }
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    pgwardenctl(Path::new("/nonexistent/pgwarden.toml"), &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgwardenctl_host_with_a_client_certificate_runs_status_and_without_one_is_refused() {
    let pki = Pki::new();
    let (cluster, proxy, host) = node_with_remote_admin(&pki).await;
    let (cert, key) = pki.issue("operator", &["operator"]);
    let me = Some((cert.as_path(), key.as_path()));

    // status: the monitor's answer, as on the node itself.
    let run = remote(&host, &pki.ca(), me, &["status"]);
    assert_eq!(run.code, 0, "{run:?}\n{}", proxy.monitor_log());
    let local = pgwardenctl(&proxy.config, &["status"]);
    // The same table but for the times (checks go on between the two runs).
    let stable = |out: &str| -> Vec<String> {
        out.lines()
            .map(|l| l.split_whitespace().take(5).collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(
        stable(&run.stdout),
        stable(&local.stdout),
        "remote and local status differ"
    );
    assert!(run.stdout.contains(cluster.primary().name()), "{run:?}");

    // The proxy's and the monitor's other services are reached too.
    let run = remote(&host, &pki.ca(), me, &["--json", "pools"]);
    assert_eq!(run.code, 0, "{run:?}");
    let _: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let run = remote(&host, &pki.ca(), me, &["recheck"]);
    assert_eq!(run.code, 0, "{run:?}");
    // This node runs no watchdog: said so, exit 2.
    let run = remote(&host, &pki.ca(), me, &["watchdog"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("pgwarden-watchdog does not answer on this node"),
        "{run:?}"
    );

    // No client certificate: refused, exit 2, one line.
    let run = remote(&host, &pki.ca(), None, &["status"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains(&host), "{run:?}");
    assert!(run.stderr.contains("CertificateRequired"), "{run:?}");

    eprintln!("without a certificate: {}", run.stderr.trim());
    // A certificate another CA signed: refused.
    let other = Pki::new();
    let (bad_cert, bad_key) = other.issue("intruder", &["intruder"]);
    let run = remote(&host, &pki.ca(), Some((&bad_cert, &bad_key)), &["status"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");

    eprintln!("another CA's certificate: {}", run.stderr.trim());
    // The node's certificate not signed by the CA the operator trusts:
    // pgwardenctl refuses the node.
    let run = remote(&host, &other.ca(), me, &["status"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("invalid peer certificate"), "{run:?}");

    // Both refusals of clients are in the monitor's log.
    let log = proxy.monitor_log();
    assert!(
        log.matches("admin client refused: TLS handshake failed")
            .count()
            >= 2,
        "{log}"
    );

    // Mistakes on the command line are usage errors.
    let run = pgwardenctl(Path::new("/nonexistent"), &["--host", &host, "status"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--ca"), "{run:?}");
    let run = remote(&host, Path::new("/nonexistent/ca.pem"), me, &["status"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains("--ca (/nonexistent/ca.pem)"), "{run:?}");
}
