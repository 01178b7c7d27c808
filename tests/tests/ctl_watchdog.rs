//! `pgwardenctl watchdog` end to end: the real binary against the real
//! watchdogs of three hosts in network namespaces, through each node's own
//! config. Needs root (network namespaces); skips otherwise, saying so.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgwarden_e2e::lab::Fleet;
use pgwarden_e2e::{CtlRun, interrupt, pgwardenctl, pgwardenctl_spawn};
use serde_json::Value;

fn config(fleet: &Fleet, i: usize) -> PathBuf {
    fleet.nodes[i].dir.join("pgwarden.toml")
}

/// Runs `pgwardenctl --config <node i's config> ARGS`.
fn ctl(fleet: &Fleet, i: usize, args: &[&str]) -> CtlRun {
    pgwardenctl(&config(fleet, i), args)
}

/// Every node's `pgwardenctl wd --json`, parsed; `Err` with the run when
/// one fails or does not parse.
fn json_views(fleet: &Fleet) -> Result<Vec<Value>, String> {
    (0..fleet.nodes.len())
        .map(|i| {
            let run = ctl(fleet, i, &["wd", "--json"]);
            if run.code != 0 || !run.stderr.is_empty() {
                return Err(format!("node {i}: {run:?}"));
            }
            serde_json::from_str(&run.stdout).map_err(|e| format!("node {i}: {e}: {run:?}"))
        })
        .collect()
}

/// Whether every view names the same leader (`leader_id`) in the same
/// term, and exactly that node holds the delegate IP.
fn agreed(views: &[Value], leader_id: u64) -> bool {
    let term = &views[0]["term"];
    let holders: Vec<&Value> = views
        .iter()
        .filter(|v| v["holds_delegate_ip"] == true)
        .map(|v| &v["id"])
        .collect();
    views
        .iter()
        .all(|v| v["leader_id"] == leader_id && v["term"] == *term && v["quorum"] == true)
        && holders == [&Value::from(leader_id)]
}

#[cfg_attr(not(lab), ignore = "needs root: lab hosts are network namespaces")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_shows_the_same_leader_and_one_delegate_ip_holder() {
    let fleet = Fleet::start(3);
    let leader = fleet.wait_for_leader_of_all(Duration::from_secs(30)).await;
    let leader_id = fleet.raft_id_of_host(leader);

    // JSON: the followers learn the term from the leader, and the leader
    // reports the IP once it is up: poll until every node agrees.
    let deadline = Instant::now() + Duration::from_secs(15);
    let views = loop {
        let views = json_views(&fleet);
        match &views {
            Ok(views) if agreed(views, leader_id) => break views.clone(),
            _ if Instant::now() > deadline => {
                panic!(
                    "nodes do not agree on leader {leader_id}: {views:#?}{}",
                    fleet.logs()
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let term = views[0]["term"].as_u64().unwrap();
    for (i, v) in views.iter().enumerate() {
        assert_eq!(v["id"], fleet.raft_id_of_host(i), "{v:#}");
        assert_eq!(v["address"], format!("{}:9000", fleet.lab.host(i).ip()));
        assert_eq!(v["delegate_ip"], fleet.lab.delegate_ip().to_string());
        assert_eq!(v["members"].as_array().unwrap().len(), 3, "{v:#}");
        assert_eq!(v["record"]["primary"], "pg0", "{v:#}");
    }
    assert_eq!(fleet.vip_holders(), vec![leader]);

    // Text: the same, as operators read it.
    let leader_address = format!("{}:9000", fleet.lab.host(leader).ip());
    let mut holding = Vec::new();
    let mut sample = String::new();
    for i in 0..3 {
        let run = ctl(&fleet, i, &["watchdog"]);
        assert_eq!(run.code, 0, "node {i}: {run:?}");
        assert_eq!(run.stderr, "", "node {i}");
        let text = run.stdout;
        let first = text.lines().next().unwrap();
        let who = if i == leader {
            "this node".to_owned()
        } else {
            leader_address.clone()
        };
        assert!(
            first.ends_with(&format!(
                ": term {term}, leader {leader_id} ({who}), quorum yes"
            )),
            "node {i}:\n{text}"
        );
        let ip_line = text.lines().nth(1).unwrap();
        assert!(
            ip_line.starts_with(&format!(
                "delegate IP {}: held by node {leader_id} (",
                fleet.lab.delegate_ip()
            )),
            "node {i}:\n{text}"
        );
        if ip_line.ends_with("held here: yes") {
            holding.push(i);
        } else {
            assert!(ip_line.ends_with("held here: no"), "node {i}:\n{text}");
        }
        let leader_row = text
            .lines()
            .find(|l| l.starts_with(&format!("{leader_id}   {leader_address}")))
            .unwrap_or_else(|| panic!("no row for the leader:\n{text}"));
        assert!(leader_row.ends_with("leader"), "node {i}:\n{text}");
        assert!(
            text.contains("committed generation ") && text.contains(": primary pg0, "),
            "node {i}:\n{text}"
        );
        if i != leader && sample.is_empty() {
            sample = text;
        }
    }
    assert_eq!(holding, vec![leader], "exactly the leader holds the IP");
    eprintln!("pgwardenctl watchdog on a follower:\n{sample}");

    // --watch: the current status at once, as one line.
    let (mut watch, lines) = pgwardenctl_spawn(&config(&fleet, 0), &["watchdog", "--watch"]);
    let line = lines.recv_timeout(Duration::from_secs(10)).unwrap();
    let holder = if leader == 0 {
        "this node".to_owned()
    } else {
        format!("node {leader_id}")
    };
    // A follower hears from the leader only: it does not call the other
    // follower unreachable (it cannot judge it).
    assert!(
        line.starts_with(&format!("term {term}, leader {leader_id} ("))
            && line.contains(", quorum yes, ")
            && !line.contains("unreachable")
            && line.contains(&format!(", delegate IP on {holder}, generation ")),
        "{line}"
    );
    eprintln!("pgwardenctl watchdog --watch: {line}");
    // Ctrl-C ends it successfully.
    let exit = interrupt(&mut watch);
    assert!(exit.success(), "watchdog --watch after SIGINT: {exit:?}");

    // No watchdog there: exit 2, one line saying so.
    let missing = fleet.nodes[0].dir.join("run/nowhere.sock");
    let run = ctl(
        &fleet,
        0,
        &["watchdog", "--watchdog-socket", missing.to_str().unwrap()],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        format!(
            "pgwardenctl: cannot reach pgwarden-watchdog at {}: No such file or directory (os error 2) (is it running? watchdog.enabled?)\n",
            missing.display()
        )
    );
}

/// pgpool's pcp commands work against any node: so do pgwardenctl's. On a
/// follower, the monitor hands the request to the leader's monitor through
/// the watchdogs, and every node then shows the change.
#[cfg_attr(not(lab), ignore = "needs root: lab hosts are network namespaces")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_on_a_follower_are_decided_by_the_leader() {
    let fleet = Fleet::start(3);
    let leader = fleet.wait_for_leader_of_all(Duration::from_secs(30)).await;
    let follower = (leader + 1) % 3;
    // Every node sees all three backends up first.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ups: Vec<usize> = (0..3)
            .map(|i| ctl(&fleet, i, &["status"]).stdout.matches("  up  ").count())
            .collect();
        if ups.iter().all(|n| *n == 3) {
            break;
        }
        assert!(Instant::now() < deadline, "not all up: {ups:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let run = ctl(&fleet, follower, &["detach", "pg2"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "pg2 detached (decided by the leader's monitor)\n"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let detached: Vec<bool> = (0..3)
            .map(|i| {
                ctl(&fleet, i, &["status"])
                    .stdout
                    .lines()
                    .any(|l| l.starts_with("2   pg2") && l.contains(" detached "))
            })
            .collect();
        if detached.iter().all(|d| *d) {
            break;
        }
        assert!(Instant::now() < deadline, "pg2 detached on {detached:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A refusal by the leader's monitor reaches the follower's operator as one.
    let other = (leader + 2) % 3;
    let run = ctl(&fleet, other, &["promote", "pg0"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr, "pgwardenctl: pg0 is already the primary\n");

    let run = ctl(&fleet, other, &["attach", "pg2"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "pg2 attached (decided by the leader's monitor)\n"
    );
}
