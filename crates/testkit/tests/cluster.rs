//! The testkit against real PostgreSQL: replication, roles and passwords,
//! crashes, clean-up on drop, and the `pgwarden-cluster` binary.

// clippy exempts #[test] functions only; the helpers below are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test helpers: a panic is a failed test"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use pgwarden_testkit::{ChildGuard, Cluster, Node, PasswordKind, StopMode, run_ok, wait_until};

const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn cluster_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Cluster>();
    assert_send_sync::<Node>();
    assert_send_sync::<ChildGuard>();
}

/// Every live process that is a postgres server process of `node`: its
/// postmaster and the postmaster's children.
fn server_pids(node: &Node) -> Vec<i32> {
    let pm = node.postmaster_pid().expect("node is running");
    let mut pids = vec![pm];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: i32 = after.split_whitespace().nth(1).unwrap().parse().unwrap();
        if ppid == pm {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `pid` is a live (non-zombie) process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap();
            state != 'Z' && state != 'X'
        }
        Err(_) => false,
    }
}

/// psql over TCP with a password, as the test process (no trust: md5 rule).
fn tcp_psql(node: &Node, user: &str, password: &str) -> std::process::Output {
    Command::new("psql")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .args(["-X", "-At", "-h", "127.0.0.1"])
        .args(["-p", &node.port().to_string()])
        .args(["-U", user, "-d", "postgres", "-c", "SELECT current_user"])
        .output()
        .unwrap()
}

#[test]
fn standbys_replicate_and_drop_leaves_no_process() {
    let cluster = Cluster::start(2).unwrap();
    assert_eq!(cluster.nodes().len(), 3);
    let names: Vec<&str> = cluster.nodes().iter().map(|n| n.name()).collect();
    assert_eq!(names, ["pg0", "pg1", "pg2"]);
    for node in cluster.nodes() {
        assert_eq!(node.host(), "127.0.0.1");
        assert_eq!(node.superuser(), "postgres");
        assert!(node.is_running());
        assert!(
            node.socket_dir()
                .join(format!(".s.PGSQL.{}", node.port()))
                .exists()
        );
        assert!(node.data_dir().starts_with(cluster.base_dir()));
    }
    assert_eq!(cluster.primary().name(), "pg0");

    let primary = cluster.primary();
    assert!(!primary.is_in_recovery().unwrap());
    assert!(cluster.node(1).is_in_recovery().unwrap());
    assert!(cluster.node(2).is_in_recovery().unwrap());
    assert_eq!(
        primary
            .psql("SELECT application_name, state FROM pg_stat_replication ORDER BY 1")
            .unwrap(),
        "pg1|streaming\npg2|streaming"
    );

    // Several statements, command tags are not printed.
    let out = primary
        .psql("CREATE TABLE t (id int PRIMARY KEY, v text);\nINSERT INTO t SELECT g, 'x' || g FROM generate_series(1, 1000) g;")
        .unwrap();
    assert_eq!(out, "");
    cluster.wait_replicated(TIMEOUT).unwrap();
    for i in 1..=2 {
        assert_eq!(
            cluster
                .node(i)
                .psql("SELECT count(*), max(v) FROM t")
                .unwrap(),
            "1000|x999"
        );
    }
    // psql_db, errors name the node and carry psql's message.
    assert_eq!(
        primary
            .psql_db("template1", "SELECT current_database()")
            .unwrap(),
        "template1"
    );
    let err = format!(
        "{:#}",
        cluster
            .node(1)
            .psql("INSERT INTO t VALUES (0, 'no')")
            .unwrap_err()
    );
    assert!(
        err.contains("pg1") && err.contains("read-only transaction"),
        "{err}"
    );

    // A stopped standby is skipped by wait_replicated and catches up after start.
    cluster.node(2).stop(StopMode::Fast).unwrap();
    assert!(!cluster.node(2).is_running());
    cluster.node(2).stop(StopMode::Fast).unwrap();
    primary.psql("INSERT INTO t VALUES (1001, 'late')").unwrap();
    cluster.wait_replicated(TIMEOUT).unwrap();
    cluster.node(2).start().unwrap();
    cluster.node(2).wait_ready(TIMEOUT).unwrap();
    cluster.wait_replicated(TIMEOUT).unwrap();
    assert_eq!(
        cluster
            .node(2)
            .psql("SELECT v FROM t WHERE id = 1001")
            .unwrap(),
        "late"
    );

    let pids: Vec<i32> = cluster.nodes().iter().flat_map(server_pids).collect();
    assert!(pids.len() > 6, "{pids:?}");
    let base = cluster.base_dir().to_path_buf();
    drop(cluster);
    let left: Vec<i32> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left after drop: {left:?}");
    assert!(!base.exists(), "{} not removed", base.display());
}

#[test]
fn users_with_scram_and_md5_passwords() {
    let cluster = Cluster::builder()
        .config("log_connections", "on")
        .hba("host all nobody_here 127.0.0.1/32 reject")
        .start()
        .unwrap();
    for (user, password, kind) in [
        ("alice", "alice's pw", PasswordKind::Scram),
        ("bob", "bob-pw", PasswordKind::Md5),
    ] {
        cluster.create_user(user, password, kind).unwrap();
    }
    cluster
        .create_superuser("root_md5", "rootpw", PasswordKind::Md5)
        .unwrap();
    let primary = cluster.primary();
    assert_eq!(primary.psql("SHOW log_connections").unwrap(), "on");

    let stored = |user: &str| {
        primary
            .psql(&format!(
                "SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'"
            ))
            .unwrap()
    };
    assert!(
        stored("alice").starts_with("SCRAM-SHA-256$"),
        "{}",
        stored("alice")
    );
    assert!(stored("bob").starts_with("md5"), "{}", stored("bob"));
    assert!(stored("root_md5").starts_with("md5"));
    assert_eq!(
        primary
            .psql("SELECT rolname, rolsuper, pg_has_role(rolname, 'pg_monitor', 'member') FROM pg_roles WHERE rolname IN ('alice', 'bob', 'root_md5') ORDER BY 1")
            .unwrap(),
        "alice|f|t\nbob|f|t\nroot_md5|t|t"
    );

    for (user, password) in [
        ("alice", "alice's pw"),
        ("bob", "bob-pw"),
        ("root_md5", "rootpw"),
    ] {
        let ok = tcp_psql(primary, user, password);
        assert!(
            ok.status.success(),
            "{user}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), user);
        let bad = tcp_psql(primary, user, "wrong");
        assert!(!bad.status.success());
        assert!(
            String::from_utf8_lossy(&bad.stderr).contains("password authentication failed"),
            "{}",
            String::from_utf8_lossy(&bad.stderr)
        );
    }
    // conninfo works with libpq as is.
    run_ok(
        "psql with a conninfo",
        Command::new("psql")
            .env_remove("PGPASSWORD")
            .args(["-X", "-At", "-c", "SELECT 1"])
            .arg(primary.conninfo("alice", "alice's pw", "postgres")),
    );
    assert!(
        cluster
            .create_user("alice", "again", PasswordKind::Scram)
            .is_err()
    );
}

#[test]
fn kill9_and_restart() {
    let cluster = Cluster::start(1).unwrap();
    let primary = cluster.primary();
    primary.psql("CREATE TABLE t (id int)").unwrap();
    let pid = primary.postmaster_pid().unwrap();
    primary.kill9().unwrap();
    assert!(!primary.is_running());
    assert_eq!(primary.postmaster_pid(), None);
    assert!(!alive(pid));
    assert!(primary.psql("SELECT 1").is_err());
    assert!(primary.kill9().is_err());

    primary.start().unwrap();
    assert!(primary.is_running());
    assert_ne!(primary.postmaster_pid(), Some(pid));
    primary.wait_ready(TIMEOUT).unwrap();
    primary.psql("INSERT INTO t VALUES (1)").unwrap();
    cluster.wait_replicated(TIMEOUT).unwrap();
    assert_eq!(cluster.node(1).psql("SELECT count(*) FROM t").unwrap(), "1");

    // Crash and restart a standby too; immediate stop and restart.
    let standby = cluster.node(1);
    standby.kill9().unwrap();
    standby.start().unwrap();
    primary.stop(StopMode::Immediate).unwrap();
    assert!(!primary.is_running());
    primary.restart().unwrap();
    primary.psql("INSERT INTO t VALUES (2)").unwrap();
    cluster.wait_replicated(TIMEOUT).unwrap();
    assert_eq!(standby.psql("SELECT count(*) FROM t").unwrap(), "2");

    // Promotion: the standby becomes a primary, wait_replicated follows it.
    primary.stop(StopMode::Fast).unwrap();
    standby.promote().unwrap();
    assert!(!standby.is_in_recovery().unwrap());
    standby.psql("INSERT INTO t VALUES (3)").unwrap();
    cluster.wait_replicated(TIMEOUT).unwrap();
    cluster
        .create_user("after_failover", "pw", PasswordKind::Scram)
        .unwrap();
}

#[test]
fn start_errors_name_the_node_and_show_its_log() {
    let cluster = Cluster::builder()
        .config("shared_buffers", "32MB")
        .start()
        .unwrap();
    let primary = cluster.primary();
    primary.stop(StopMode::Fast).unwrap();
    // Break the config: the next start fails and says why.
    std::fs::write(
        primary.data_dir().join("postgresql.auto.conf"),
        "max_connections = 'lots'\n",
    )
    .unwrap();
    let err = format!("{:#}", primary.start().unwrap_err());
    assert!(err.starts_with("pg0"), "{err}");
    assert!(err.contains("max_connections"), "{err}");
    assert!(err.contains("last lines of"), "{err}");
}

#[test]
fn pgwarden_cluster_binary() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("cluster.env");
    let mut child = ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_pgwarden-cluster"))
            .args(["--standbys", "1", "--user", "app", "--password", "apppw"])
            .args(["--md5-user", "old", "--md5-password", "oldpw"])
            .args(["--config", "work_mem=8MB"])
            .arg("--env-file")
            .arg(&env_file),
    )
    .unwrap();
    wait_until(Duration::from_secs(60), "the env file", || {
        env_file.exists()
    })
    .unwrap();
    let vars: BTreeMap<String, String> = std::fs::read_to_string(&env_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(vars["PGHOST"], "127.0.0.1");
    assert_eq!(vars["PG_NODES"], "2");
    assert!(Path::new(&vars["PG_BIN_DIR"]).join("pg_ctl").exists());
    let base = vars["BASE_DIR"].clone();
    assert!(Path::new(&vars["PG_SOCKET_DIR0"]).starts_with(&base));
    for (port, user, pw, expect) in [
        (&vars["PG0_PORT"], "app", "apppw", "8MB|f"),
        (&vars["PG1_PORT"], "old", "oldpw", "8MB|t"),
    ] {
        let out = run_ok(
            &format!("psql -U {user} -p {port}"),
            Command::new("psql")
                .env("PGPASSWORD", pw)
                .args(["-X", "-At", "-h", "127.0.0.1", "-p", port])
                .args(["-U", user, "-d", "postgres", "-c"])
                .arg("SELECT current_setting('work_mem'), pg_is_in_recovery()"),
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expect);
    }
    let pid: i32 = std::fs::read_to_string(Path::new(&base).join("pg0/data/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    child.signal(Signal::SIGTERM).unwrap();
    let status = child
        .wait_timeout(Duration::from_secs(30))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(!alive(pid));
    assert!(!Path::new(&base).exists());
}
