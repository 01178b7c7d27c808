//! Network-namespace labs: addresses and reachability, no route out, cutting
//! and healing links, the delegate IP, PostgreSQL replicating across hosts,
//! and clean-up on drop (panics included).
//!
//! Labs need root and `ip netns`; without them every test here is skipped
//! with a message.

// clippy exempts #[test] functions only; the helpers below are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test helpers: a panic is a failed test"
)]

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::process::Command;
use std::time::Duration;

use pgwarden_testkit::{
    Cluster, Host, Lab, PasswordKind, StopMode, pg_bin_dir, run_ok, wait_until,
};

/// How long a connection that should work may take.
const CONNECT: Duration = Duration::from_secs(2);

/// How long to wait for a connection that should fail (a cut link drops
/// packets silently, so failures are timeouts).
const SHORT: Duration = Duration::from_millis(300);

const TIMEOUT: Duration = Duration::from_secs(30);

/// Whether labs can run here; prints why not.
fn lab_available(test: &str) -> bool {
    match Lab::unavailable() {
        None => true,
        Some(reason) => {
            eprintln!("SKIPPED {test}: {reason}");
            false
        }
    }
}

/// A new lab of `hosts` hosts for `test`, or None (having said why) where
/// labs cannot run.
fn lab_or_skip(test: &str, hosts: usize) -> Option<Lab> {
    lab_available(test).then(|| Lab::new(hosts).unwrap())
}

/// A TCP listener on `port` at every address of `host`.
fn listen_in(host: &Host, port: u16) -> TcpListener {
    host.enter(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        .unwrap()
        .unwrap()
}

/// The lab namespaces `ip netns list` shows.
/// The names `ip netns list` lists.
fn listed_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn at(host: &Host, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(host.ip(), port)
}

#[test]
fn hosts_reach_each_other_and_nothing_else() {
    let Some(lab) = lab_or_skip("hosts_reach_each_other_and_nothing_else", 3) else {
        return;
    };
    assert_eq!(lab.hosts().len(), 3);
    assert_eq!(lab.subnet(), "10.213.0.0/24");
    assert_eq!(lab.delegate_ip(), Ipv4Addr::new(10, 213, 0, 100));
    assert_eq!(lab.client().ip(), Ipv4Addr::new(10, 213, 0, 2));
    assert_eq!(lab.client().addresses().unwrap(), [lab.client().ip()]);
    for (i, host) in lab.hosts().iter().enumerate() {
        let expected = Ipv4Addr::new(10, 213, 0, 11 + u8::try_from(i).unwrap());
        assert_eq!(host.ip(), expected);
        assert_eq!(host.addresses().unwrap(), [expected]);
        assert!(host.name().len() <= 32, "{}", host.name());
        // The only route is the lab subnet's: no default route, no way out.
        let routes = host.sh("ip -4 route show").unwrap();
        assert_eq!(
            routes.trim(),
            format!("10.213.0.0/24 dev eth0 proto kernel scope link src {expected}")
        );
        assert!(host.sh("ip -4 route get 192.0.2.1").is_err());
    }
    // Names are unique per lab.
    let other = Lab::new(1).unwrap();
    assert_ne!(other.host(0).name(), lab.host(0).name());
    drop(other);

    let listeners: Vec<TcpListener> = lab.hosts().iter().map(|h| listen_in(h, 7000)).collect();
    assert!(lab.host(0).can_connect(at(lab.host(1), 7000), CONNECT));
    assert!(lab.host(2).can_connect(at(lab.host(0), 7000), CONNECT));
    for host in lab.hosts() {
        assert!(
            lab.client().can_connect(at(host, 7000), CONNECT),
            "{host:?}"
        );
    }
    // Nobody has 10.213.0.1 or the delegate IP; nothing listens on 7001.
    assert!(
        !lab.host(0)
            .can_connect(SocketAddrV4::new(Ipv4Addr::new(10, 213, 0, 1), 7000), SHORT)
    );
    assert!(
        !lab.client()
            .can_connect(SocketAddrV4::new(lab.delegate_ip(), 7000), SHORT)
    );
    assert!(!lab.host(0).can_connect(at(lab.host(1), 7001), SHORT));

    // A listener on the machine's own loopback is out of reach: each host has
    // a loopback of its own.
    let outside = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let outside_addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, outside.local_addr().unwrap().port());
    for host in lab.hosts().iter().chain([lab.client()]) {
        assert!(!host.can_connect(outside_addr, SHORT), "{host:?}");
    }
    // ...while the host's own loopback works.
    assert!(
        lab.host(1)
            .can_connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7000), CONNECT)
    );
    drop(listeners);
}

#[test]
fn cut_and_heal() {
    let Some(lab) = lab_or_skip("cut_and_heal", 3) else {
        return;
    };
    let _listeners: Vec<TcpListener> = lab
        .hosts()
        .iter()
        .chain([lab.client()])
        .map(|h| listen_in(h, 7000))
        .collect();
    let target = at(lab.host(1), 7000);
    assert!(lab.host(0).can_connect(target, CONNECT));

    lab.cut(1).unwrap();
    lab.cut(1).unwrap(); // idempotent
    assert!(!lab.host(0).can_connect(target, SHORT));
    assert!(!lab.host(2).can_connect(target, SHORT));
    assert!(!lab.client().can_connect(target, SHORT));
    assert!(!lab.host(1).can_connect(at(lab.host(0), 7000), SHORT));
    assert!(!lab.host(1).can_connect(at(lab.client(), 7000), SHORT));
    // Inside the host nothing changed, and the others still talk.
    assert_eq!(lab.host(1).addresses().unwrap(), [lab.host(1).ip()]);
    assert!(lab.host(0).can_connect(at(lab.host(2), 7000), CONNECT));
    assert!(lab.client().can_connect(at(lab.host(0), 7000), CONNECT));

    lab.heal(1).unwrap();
    lab.heal(1).unwrap(); // idempotent
    for from in [lab.host(0), lab.host(2), lab.client()] {
        wait_until(TIMEOUT, &format!("{} to reach host 1", from.name()), || {
            from.can_connect(target, CONNECT)
        })
        .unwrap();
    }
    assert!(lab.host(1).can_connect(at(lab.host(0), 7000), CONNECT));

    assert!(lab.cut(3).is_err());
    assert!(lab.heal(3).is_err());
}

#[test]
fn cluster_replicates_across_hosts() {
    let Some(lab) = lab_or_skip("cluster_replicates_across_hosts", 3) else {
        return;
    };
    let cluster = Cluster::builder().standbys(2).in_lab(&lab).start().unwrap();
    for (i, node) in cluster.nodes().iter().enumerate() {
        assert_eq!(node.host(), lab.host(i).ip().to_string());
        assert_eq!(node.port(), 5432);
        assert_eq!(node.lab_host().unwrap().name(), lab.host(i).name());
        assert!(
            node.conninfo("a", "b", "c")
                .starts_with(&format!("host={} port=5432 ", lab.host(i).ip()))
        );
    }
    // The standbys stream from the primary's host address.
    let senders = cluster
        .primary()
        .psql("SELECT application_name, client_addr FROM pg_stat_replication ORDER BY 1")
        .unwrap();
    assert_eq!(
        senders,
        format!("pg1|{}\npg2|{}", lab.host(1).ip(), lab.host(2).ip())
    );

    let primary = cluster.primary();
    primary
        .psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)")
        .unwrap();
    cluster.wait_replicated(TIMEOUT).unwrap();
    for node in &cluster.nodes()[1..] {
        assert_eq!(node.psql("SELECT sum(x) FROM t").unwrap(), "3");
        assert!(node.is_in_recovery().unwrap());
    }

    // A password login from the client namespace to host 0.
    cluster
        .create_user("alice", "s3cret", PasswordKind::Scram)
        .unwrap();
    let psql = pg_bin_dir().unwrap().join("psql");
    let from_client = |password: &str| {
        lab.client()
            .command_as_user(&psql)
            .args(["-X", "-At", "-d"])
            .arg(primary.conninfo("alice", password, "postgres"))
            .args(["-c", "SELECT current_user, inet_server_addr()"])
            .env("HOME", "/tmp")
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .unwrap()
    };
    let out = from_client("s3cret");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("alice|{}", lab.host(0).ip())
    );
    let out = from_client("wrong");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));

    // kill -9 a standby and start it again; stop and start the primary.
    let standby = cluster.node(1);
    standby.kill9().unwrap();
    assert!(!standby.is_running());
    standby.start().unwrap();
    standby.wait_ready(TIMEOUT).unwrap();
    primary.kill9().unwrap();
    primary.start().unwrap();
    primary.psql("INSERT INTO t VALUES (3)").unwrap();
    cluster.wait_replicated(TIMEOUT).unwrap();
    assert_eq!(standby.psql("SELECT sum(x) FROM t").unwrap(), "6");
    cluster.node(2).stop(StopMode::Fast).unwrap();
    cluster.node(2).start().unwrap();
    assert_eq!(cluster.node(2).psql("SELECT sum(x) FROM t").unwrap(), "6");

    // The server listens inside its host only.
    assert!(lab.client().can_connect(at(lab.host(0), 5432), CONNECT));
    assert!(!lab.client().can_connect(at(lab.host(0), 5433), SHORT));
}

#[test]
fn delegate_ip_follows_ip_addr() {
    let Some(lab) = lab_or_skip("delegate_ip_follows_ip_addr", 2) else {
        return;
    };
    let cluster = Cluster::builder().in_lab(&lab).start().unwrap();
    let vip = lab.delegate_ip();
    let vip_pg = SocketAddrV4::new(vip, 5432);
    assert!(!lab.client().can_connect(vip_pg, SHORT));

    let cidr = format!("{vip}/{}", lab.prefix_len());
    lab.host(0)
        .sh(&format!("ip addr add {cidr} dev eth0"))
        .unwrap();
    assert_eq!(lab.host(0).addresses().unwrap(), [lab.host(0).ip(), vip]);
    assert_eq!(lab.host(1).addresses().unwrap(), [lab.host(1).ip()]);
    assert!(lab.client().can_connect(vip_pg, CONNECT));
    assert!(lab.host(1).can_connect(vip_pg, CONNECT));

    lab.host(0)
        .sh(&format!("ip addr del {cidr} dev eth0"))
        .unwrap();
    assert_eq!(lab.host(0).addresses().unwrap(), [lab.host(0).ip()]);
    assert!(!lab.client().can_connect(vip_pg, SHORT));

    let err = lab.host(0).sh("echo oops >&2; exit 3").unwrap_err();
    assert!(format!("{err:#}").contains("oops"), "{err:#}");

    // Dropped in the wrong order (lab first), the lab kills the server and
    // the cluster's drop still finishes.
    let primary_pid = cluster.primary().postmaster_pid().unwrap();
    drop(lab);
    wait_until(TIMEOUT, "the lab's drop to kill the server", || {
        !cluster.primary().is_running()
    })
    .unwrap();
    assert!(
        cluster.primary().postmaster_pid().is_none(),
        "{primary_pid}"
    );
    let start = std::time::Instant::now();
    drop(cluster);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn namespaces_of_dead_test_processes_are_removed() {
    if !lab_available("namespaces_of_dead_test_processes_are_removed") {
        return;
    }
    // A lab namespace whose owner (a reaped child of ours) is gone, as left
    // by a test process killed with SIGKILL.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!("pgw{dead}x0h0");
    let added = Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(added.success());
    let _lab = Lab::new(1).unwrap();
    let listed = listed_namespaces();
    assert!(!listed.contains(&stale), "{listed:?}");
}

#[test]
fn drop_removes_namespaces_and_processes_even_on_panic() {
    let Some(lab) = lab_or_skip("drop_removes_namespaces_and_processes_even_on_panic", 2) else {
        return;
    };
    let names = lab.namespaces().to_vec();
    assert_eq!(names.len(), 4);
    let listed = listed_namespaces();
    for name in &names {
        assert!(listed.contains(name), "{name}: {listed:?}");
    }
    // A process left running in a host is killed with the lab.
    let mut sleeper = lab
        .host(1)
        .command_as_user("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let comm = format!("/proc/{}/comm", sleeper.id());
    wait_until(TIMEOUT, "sleep to run in host 1", || {
        std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep")
    })
    .unwrap();
    drop(lab);
    let status = sleeper.wait().unwrap();
    assert!(!status.success());
    let listed = listed_namespaces();
    for name in &names {
        assert!(!listed.contains(name), "{name}: {listed:?}");
    }

    // Drop runs while a panic unwinds.
    let names = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::new(1).unwrap();
        names
            .lock()
            .unwrap()
            .extend(lab.namespaces().iter().cloned());
        panic!("test body fails");
    });
    assert!(result.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 3);
    let listed = listed_namespaces();
    for name in &names {
        assert!(!listed.contains(name), "{name}: {listed:?}");
    }
}

#[test]
fn command_as_user_switches_user_inside_the_namespace() {
    let Some(lab) = lab_or_skip("command_as_user_switches_user_inside_the_namespace", 1) else {
        return;
    };
    let (uid, gid) = pgwarden_testkit::os_user().unwrap();
    let out = run_ok(
        "sh as the OS user",
        lab.host(0)
            .command_as_user("sh")
            .args(["-c", "id -u; id -g; id -G; ip -4 -o addr show dev eth0"]),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], uid.to_string());
    assert_eq!(lines[1], gid.to_string());
    assert_eq!(
        lines[2],
        gid.to_string(),
        "supplementary groups are cleared"
    );
    assert!(lines[3].contains("10.213.0.11/24"), "{text}");
    let root = lab.host(0).command("id").arg("-u").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&root.stdout).trim(), "0");
    // The ip addr check above ran inside the namespace; enter() does too.
    let inside = lab
        .host(0)
        .enter(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap())
        .unwrap();
    let outside = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    assert_ne!(inside, outside);
}
