//! Watchdog peers over mutual TLS (issue 9, item 5): three real watchdogs
//! on loopback with certificates from one CA the test makes, and stand-in
//! monitors. They elect a leader over TLS; a plain-text peer, a TLS client
//! without a certificate, and one whose certificate another CA signed are
//! refused at the handshake and logged; a client with a certificate of the
//! cluster's CA but without the cluster key is refused by the HMAC. No root
//! needed.

use std::sync::Arc;
use std::time::Duration;

use pgwarden_e2e::tls::Pki;
use pgwarden_e2e::watchdogs::{Setup, Watchdogs};
use pgwarden_proto::v1::PeerEnvelope;
use pgwarden_proto::v1::watchdog_peer_client::WatchdogPeerClient;
use pgwarden_tls::PemFile;
use pgwarden_tls::rustls::ClientConfig;
use sha2::{Digest, Sha256};

/// Node `i`'s `[watchdog]` TLS lines: its certificate and key in `own`,
/// the CA it trusts in `ca`.
fn tls_files(own: &std::path::Path, ca: &std::path::Path, i: usize) -> String {
    format!(
        "tls_cert_file = \"{o}/node{i}.crt\"\ntls_key_file = \"{o}/node{i}.key\"\ntls_ca_file = \"{c}/ca.pem\"\n",
        o = own.display(),
        c = ca.display()
    )
}

fn client(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Arc<ClientConfig> {
    pgwarden_tls::mutual_client(
        PemFile {
            key: "ca",
            path: ca,
        },
        identity.map(|(cert, key)| {
            (
                PemFile {
                    key: "cert",
                    path: cert,
                },
                PemFile {
                    key: "key",
                    path: key,
                },
            )
        }),
    )
    .unwrap()
}

/// One `Deliver` to node `i` over `tls` (plain text when `None`): the
/// gRPC error's message, or `None` when it was accepted.
async fn deliver(
    w: &Watchdogs,
    i: usize,
    tls: Option<Arc<ClientConfig>>,
    env: PeerEnvelope,
) -> Option<String> {
    let address = format!("127.0.0.1:{}", w.nodes[i].listen);
    let channel = pgwarden_proto::tcp::dial(
        &address,
        tls,
        Duration::from_secs(2),
        Duration::from_secs(4),
    )
    .unwrap();
    match WatchdogPeerClient::new(channel).deliver(env).await {
        Ok(_) => None,
        Err(status) => Some(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// The member-list fingerprint every node checks first (not a secret).
fn members_hash(w: &Watchdogs) -> u64 {
    let mut members: Vec<String> = w
        .nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.advertised))
        .collect();
    members.sort();
    let digest = Sha256::digest(members.join("\n").as_bytes());
    u64::from_be_bytes(digest[..8].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_peers_talk_mutual_tls_and_refuse_peers_without_the_cluster_cas_certificate() {
    let pki = Pki::new();
    for i in 0..3 {
        pki.issue(&format!("node{i}"), &["127.0.0.1"]);
    }
    let d = pki.dir.path().to_owned();
    let mut w = Watchdogs::new(&Setup {
        watchdog: Some(Box::new(move |i| tls_files(&d, &d, i))),
        ..Setup::default()
    });
    w.start_all().await;
    w.wait(
        Duration::from_secs(30),
        "a leader all agree on, over TLS",
        || async { w.agreed_leader().await.is_some() },
    )
    .await;
    for i in 0..3 {
        assert!(
            w.log(i).contains("peer_tls=true"),
            "node{i} did not start with peer TLS{}",
            w.logs()
        );
    }
    let before = w.log(0).len();

    let env = PeerEnvelope {
        from: w.nodes[1].id,
        to: w.nodes[0].id,
        members_hash: members_hash(&w),
        seq: 1,
        epoch: u64::MAX / 2,
        messages: Vec::new(),
        mac: vec![0; 32],
    };

    // Plain text to a TLS listener.
    // Refused at the handshake: the message never reaches the service (which
    // would answer "bad MAC").
    let refused = |e: &Option<String>| e.as_ref().is_some_and(|e| !e.contains("bad MAC"));
    let plain = deliver(&w, 0, None, env.clone()).await;
    assert!(refused(&plain), "a plain-text peer was answered: {plain:?}");

    // TLS without a client certificate.
    let anonymous = deliver(&w, 0, Some(client(&pki.ca(), None)), env.clone()).await;
    assert!(
        refused(&anonymous),
        "a peer without a certificate was answered: {anonymous:?}"
    );

    // A certificate another CA signed (for the right name).
    let other = Pki::new();
    let (cert, key) = other.issue("impostor", &["127.0.0.1"]);
    let impostor = deliver(
        &w,
        0,
        Some(client(&pki.ca(), Some((&cert, &key)))),
        env.clone(),
    )
    .await;
    assert!(
        refused(&impostor),
        "a peer with another CA's certificate was answered: {impostor:?}"
    );

    // The refusals are in node0's log, with the peer's address and why.
    w.wait(
        Duration::from_secs(5),
        "node0 to log three refused peers",
        || async {
            let log = w.log(0);
            log[before..]
                .matches("watchdog peer refused: TLS handshake failed")
                .count()
                >= 3
        },
    )
    .await;
    let log = w.log(0)[before..].to_owned();
    for line in log.lines().filter(|l| l.contains("refused")) {
        eprintln!("{line}");
    }
    assert!(
        log.contains("address=127.0.0.1:"),
        "the refusal names no address: {log}"
    );
    assert!(
        log.to_lowercase().contains("certificate"),
        "no refusal says what was wrong with the certificate: {log}"
    );

    // A certificate of the cluster's CA (an operator's, say) is not the
    // cluster key: the HMAC still refuses the message.
    let (cert, key) = pki.issue("operator", &["operator"]);
    let forged = deliver(&w, 0, Some(client(&pki.ca(), Some((&cert, &key)))), env).await;
    assert_eq!(
        forged.as_deref(),
        Some("Unauthenticated: bad MAC"),
        "{}",
        w.logs()
    );

    // Through all of it the leader stayed and nothing else changed.
    let (_, status) = w
        .agreed_leader()
        .await
        .expect("a leader after the refusals");
    assert!(status.quorum);
    for i in 0..3 {
        assert!(
            !w.log(i).contains("0123456789abcdef"),
            "the key reached a log"
        );
    }
}

/// A watchdog dials its peers checking their server certificate: a node
/// answering at a member's address with another CA's certificate gets no
/// message, and the dialler says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watchdog_does_not_talk_to_a_peer_whose_certificate_another_ca_signed() {
    let pki = Pki::new();
    let other = Pki::new();
    for i in 0..3 {
        // Node 2's certificate is the impostor's.
        let ca = if i == 2 { &other } else { &pki };
        ca.issue(&format!("node{i}"), &["127.0.0.1"]);
    }
    let (good, bad) = (pki.dir.path().to_owned(), other.dir.path().to_owned());
    let mut w = Watchdogs::new(&Setup {
        watchdog: Some(Box::new(move |i| {
            let own = if i == 2 { &bad } else { &good };
            tls_files(own, &good, i)
        })),
        ..Setup::default()
    });
    w.start_all().await;
    // Nodes 0 and 1 are a majority: they elect a leader between them.
    w.wait(
        Duration::from_secs(30),
        "a leader among nodes 0 and 1",
        || async {
            let (Some(a), Some(b)) = (w.status(0).await, w.status(1).await) else {
                return false;
            };
            a.leader_id != 0 && a.leader_id == b.leader_id && a.quorum
        },
    )
    .await;
    let leader = w.status(0).await.unwrap().leader_id;
    assert_ne!(leader, w.nodes[2].id, "the impostor leads{}", w.logs());
    // Node 2 cannot join: nobody accepts its certificate, and it accepts
    // nobody's (its CA is the cluster's, theirs is not its own).
    let s2 = w.status(2).await.unwrap();
    assert_ne!(
        s2.leader_id,
        leader,
        "node 2 joined the cluster{}",
        w.logs()
    );
    w.wait(
        Duration::from_secs(30),
        "node0 to say why it cannot reach node 2",
        || async { w.log(0).contains("cannot reach peer") },
    )
    .await;
    let log = w.log(0);
    let line = log
        .lines()
        .find(|l| l.contains("cannot reach peer") && l.contains(&format!("peer={}", w.nodes[2].id)))
        .unwrap_or_else(|| panic!("no \"cannot reach peer\" line for node 2{}", w.logs()));
    eprintln!("{line}");
}
