//! `pgwardenctl` end to end: the real binary against the real monitor and
//! real servers, through the config a node would use.

use std::collections::HashMap;
use std::time::Duration;

use pgwarden_e2e::*;

/// Runs `pgwardenctl --config <the node's config> ARGS`.
fn ctl(proxy: &Proxy, args: &[&str]) -> CtlRun {
    pgwardenctl(&proxy.config, args)
}

/// Runs `pgwardenctl`, asserting it succeeded.
fn ctl_ok(proxy: &Proxy, args: &[&str]) -> String {
    let run = ctl(proxy, args);
    assert_eq!(run.code, 0, "pgwardenctl {args:?}: {run:?}");
    assert_eq!(run.stderr, "", "pgwardenctl {args:?}");
    run.stdout
}

/// Runs `pgwardenctl`, asserting it failed with `code` and one line on stderr.
fn ctl_err(proxy: &Proxy, args: &[&str], code: i32) -> String {
    let run = ctl(proxy, args);
    assert_eq!(run.code, code, "pgwardenctl {args:?}: {run:?}");
    assert_eq!(run.stdout, "", "pgwardenctl {args:?}");
    assert!(
        run.stderr.starts_with("pgwardenctl: ") && run.stderr.lines().count() == 1,
        "not one line: {:?}",
        run.stderr
    );
    run.stderr.trim_end().to_owned()
}

/// The `status` table row of backend `name`, as (column, value) pairs cut
/// at the header's column starts (values may contain spaces: `1.5 KiB (2.3s)`).
fn row(status: &str, name: &str) -> HashMap<String, String> {
    let header = status
        .lines()
        .find(|l| l.starts_with("ID  "))
        .unwrap_or_else(|| panic!("no header:\n{status}"));
    let line = status
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no row for {name}:\n{status}"));
    let titles: Vec<&str> =
        "ID,NAME,ADDRESS,ROLE,STATUS,LAG,REPLAY LSN,RECEIVED LSN,TIMELINE,LAST CHECK,REASON"
            .split(',')
            .collect();
    let starts: Vec<usize> = titles
        .iter()
        .map(|t| {
            header
                .find(&format!("{t}  "))
                .or_else(|| header.rfind(t))
                .unwrap()
        })
        .collect();
    titles
        .iter()
        .enumerate()
        .map(|(i, title)| {
            let start = starts[i].min(line.len());
            let end = starts
                .get(i + 1)
                .map_or(line.len(), |e| (*e).min(line.len()));
            ((*title).to_owned(), line[start..end].trim().to_owned())
        })
        .collect()
}

/// Runs `args` (a change of pg2), which must print `reply`, waits until
/// the monitor publishes pg2 as `now` (it answers a change before it
/// publishes the new state, and before it persists it), then returns
/// what `status` prints.
async fn change_pg2(proxy: &Proxy, args: &[&str], reply: &str, now: Status) -> String {
    assert_eq!(ctl_ok(proxy, args), reply);
    proxy.wait_status(Duration::from_secs(10), 2, now).await;
    ctl_ok(proxy, &["status"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_detach_attach_watch_and_errors() {
    let (cluster, mut proxy) = proxied(2, ProxyOptions::default());
    let state = proxy.wait_all_up(Duration::from_secs(30)).await;

    // status is the default command; the table lists every backend.
    let status = ctl_ok(&proxy, &[]);
    eprintln!("pgwardenctl status:\n{status}");
    let first = status.lines().next().unwrap();
    assert_eq!(ctl_ok(&proxy, &["status"]).lines().next(), Some(first));
    assert!(
        first.starts_with("generation ") && first.contains(", primary pg0 (id 0), monitor test"),
        "{status}"
    );
    assert!(
        status
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("ID  NAME  ADDRESS"),
        "{status}"
    );
    assert_eq!(status.lines().count(), 5, "{status}");
    let pg0 = row(&status, "pg0");
    assert_eq!(pg0["ID"], "0");
    assert_eq!(
        pg0["ADDRESS"],
        format!("127.0.0.1:{}", cluster.node(0).port())
    );
    assert_eq!((&*pg0["ROLE"], &*pg0["STATUS"]), ("primary", "up"));
    assert_eq!(pg0["LAG"], "-");
    assert!(pg0["LAST CHECK"].ends_with(" ago"), "{status}");
    for name in ["pg1", "pg2"] {
        let r = row(&status, name);
        assert_eq!((&*r["ROLE"], &*r["STATUS"]), ("standby", "up"), "{status}");
        assert!(r["LAG"].contains('B'), "{status}");
        assert!(r["REPLAY LSN"].contains('/'), "{status}");
        assert!(r["RECEIVED LSN"].contains('/'), "{status}");
        assert_eq!(r["TIMELINE"], "1", "{status}");
        assert_eq!(r["REASON"], "", "{status}");
    }

    // --json: the same state, with its generation.
    let json = ctl_ok(&proxy, &["status", "--json"]);
    let json = json.trim();
    assert!(json.starts_with('{') && json.ends_with('}'), "{json}");
    let generation: u64 = json
        .split_once("\"generation\": ")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no generation: {json}"));
    assert!(generation >= state.generation, "{json}");
    assert!(json.contains("\"primary\": \"pg0\""), "{json}");
    assert!(json.contains("\"name\": \"pg2\""), "{json}");

    // watch: the current generation at once, then each new one.
    let (mut watch, lines) = pgwardenctl_spawn(&proxy.config, &["watch"]);
    let line = lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        line.starts_with("generation ") && line.contains(": primary pg0; pg0 up, pg1 up, pg2 up"),
        "{line}"
    );

    // detach by name: exit 0, the monitor's message, status shows it.
    let status = change_pg2(
        &proxy,
        &["detach", "pg2"],
        "pg2 detached\n",
        Status::Detached,
    )
    .await;
    let pg2 = row(&status, "pg2");
    assert_eq!(pg2["STATUS"], "detached", "{status}");
    assert_eq!(pg2["REASON"], "detached by an operator", "{status}");
    let line = lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        line.contains("pg2 detached (detached by an operator)"),
        "{line}"
    );

    // attach by id: back up.
    let status = change_pg2(&proxy, &["attach", "2"], "pg2 attached\n", Status::Up).await;
    assert_eq!(row(&status, "pg2")["STATUS"], "up", "{status}");
    let line = lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(line.contains("pg2 up"), "{line}");

    // Ctrl-C ends watch successfully.
    let exit = interrupt(&mut watch);
    assert!(exit.success(), "watch after SIGINT: {exit:?}");

    // An unknown backend is a usage error naming the backends; nothing is asked.
    let before = proxy.cluster_state().await.generation;
    let err = ctl_err(&proxy, &["attach", "99"], 2);
    assert_eq!(
        err,
        "pgwardenctl: no backend 99; the backends are: 0 pg0, 1 pg1, 2 pg2"
    );
    let err = ctl_err(&proxy, &["detach", "nope"], 2);
    assert!(err.contains("0 pg0, 1 pg1, 2 pg2"), "{err}");
    assert_eq!(proxy.cluster_state().await.generation, before);

    // A refused request: the monitor's reason, exit 1.
    let err = ctl_err(&proxy, &["promote", "pg0"], 1);
    assert_eq!(err, "pgwardenctl: pg0 is already the primary");

    // recheck.
    assert!(ctl_ok(&proxy, &["recheck"]).starts_with("recheck requested"));

    // Usage errors are clap's, exit 2.
    assert_eq!(ctl(&proxy, &["attach"]).code, 2);
    assert_eq!(ctl(&proxy, &["frobnicate"]).code, 2);

    // The monitor gone: a connection error naming its socket.
    proxy.kill_monitor();
    let err = ctl_err(&proxy, &["status"], 2);
    let socket = proxy.monitor_socket();
    assert!(
        err.starts_with(&format!(
            "pgwardenctl: cannot reach pgwarden-monitor at {}: ",
            socket.display()
        )) && err.ends_with("(is it running?)")
            && err.contains("monitor.sock"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_wait_switches_over() {
    let (cluster, proxy) = proxied(1, ProxyOptions::default());
    proxy.wait_all_up(Duration::from_secs(30)).await;
    cluster.wait_replicated(Duration::from_secs(10)).unwrap();

    let out = ctl_ok(&proxy, &["promote", "pg1", "--wait", "--timeout", "60s"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"promoting pg1"), "{out}");
    let last = lines.last().unwrap();
    assert!(last.starts_with("pg1 is the primary (generation "), "{out}");

    let state = proxy.cluster_state().await;
    assert_eq!(state.primary_id, Some(1));
    assert_eq!(status_of(&state, 0), Status::Detached as i32);
    let status = ctl_ok(&proxy, &["status"]);
    assert!(status.contains(", primary pg1 (id 1),"), "{status}");
    let pg0 = row(&status, "pg0");
    assert_eq!(pg0["STATUS"], "detached", "{status}");
    assert!(pg0["REASON"].contains("pg1"), "why pg0 is fenced: {status}");
    let pg1 = row(&status, "pg1");
    assert_eq!(
        (&*pg1["ROLE"], &*pg1["STATUS"]),
        ("primary", "up"),
        "{status}"
    );
    eprintln!("pgwardenctl promote pg1 --wait:\n{out}\npgwardenctl status:\n{status}");

    // Promoting it again is refused.
    let err = ctl_err(&proxy, &["promote", "1"], 1);
    assert_eq!(err, "pgwardenctl: pg1 is already the primary");
}
