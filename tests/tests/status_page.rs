//! The monitor's read-only status page (`monitor.http_listen`): the page,
//! its JSON and its event stream, from a real monitor over real sockets,
//! while a real standby goes down.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pgwarden_e2e::*;
use pgwarden_testkit::{StopMode, free_port, wait_until};
use serde_json::Value;

fn with_page(line: &str) -> ProxyOptions {
    ProxyOptions {
        monitor_lines: vec![line.to_owned()],
        ..Default::default()
    }
}

/// One request on its own connection: (status line and headers, body).
fn get(port: u16, method: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.to_owned(), body.to_owned())
}

fn get_json(port: u16, path: &str) -> Value {
    let (head, body) = get(port, "GET", path);
    assert!(head.starts_with("HTTP/1.1 200 "), "{path}: {head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

fn backend<'a>(state: &'a Value, name: &str) -> &'a Value {
    state["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {state}"))
}

/// The `cluster` events of a stream, in order, until `done` says one is
/// the last wanted or `limit` passes.
fn cluster_events_until(
    reader: &mut BufReader<TcpStream>,
    limit: Duration,
    mut done: impl FnMut(&Value) -> bool,
) -> Result<Value, String> {
    let until = Instant::now() + limit;
    let mut event = String::new();
    let mut line = String::new();
    while Instant::now() < until {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Err("the stream ended".into()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue;
            }
            Err(e) => return Err(e.to_string()),
        }
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ")
            && event == "cluster"
        {
            let v: Value = serde_json::from_str(data).map_err(|e| format!("{e}: {data}"))?;
            if done(&v) {
                return Ok(v);
            }
        }
    }
    Err(format!("no such event within {limit:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_cluster_and_streams_a_standby_going_down() {
    let port = free_port();
    let (cluster, _proxy) = proxied(1, with_page(&format!("http_listen = \"127.0.0.1:{port}\"")));
    wait_until(Duration::from_secs(20), "the status page up", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .unwrap();

    // The page itself: HTML that may load nothing from elsewhere.
    let (head, body) = get(port, "GET", "/");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/html"), "{head}");
    assert!(
        lower.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(body.contains("id=\"primary-name\""), "{body}");
    assert!(!body.contains("https://") && !body.contains("http://"));

    // The state, as `pgwardenctl status --json` shows it.
    wait_until(Duration::from_secs(20), "both backends checked", || {
        let s = get_json(port, "/api/cluster");
        s["primary"] == "pg0" && backend(&s, "pg1")["status"] == "up"
    })
    .unwrap();
    let state = get_json(port, "/api/cluster");
    assert_eq!(backend(&state, "pg0")["role"], "primary");
    assert_eq!(backend(&state, "pg1")["role"], "standby");
    assert_eq!(
        get_json(port, "/api/watchdog"),
        serde_json::json!({"enabled": false})
    );
    assert!(get_json(port, "/api/history")["records"].is_array());

    // A lag sample per check of the standby, none of the primary.
    wait_until(Duration::from_secs(20), "lag samples of pg1", || {
        let lag = get_json(port, "/api/lag");
        lag["backends"].as_array().is_some_and(|b| {
            b.len() == 1
                && b[0]["name"] == "pg1"
                && b[0]["samples"].as_array().is_some_and(|s| s.len() >= 2)
        })
    })
    .unwrap();

    // The event stream: the state at once, then its changes.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s.write_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(s);
    let first = cluster_events_until(&mut reader, Duration::from_secs(10), |_| true).unwrap();
    assert_eq!(first["primary"], "pg0");

    cluster.node(1).stop(StopMode::Immediate).unwrap();
    let down = cluster_events_until(&mut reader, Duration::from_secs(30), |v| {
        backend(v, "pg1")["status"] == "down"
    })
    .unwrap();
    assert_eq!(
        down["primary"], "pg0",
        "a standby going down moves no primary"
    );

    // HEAD of the stream: its headers, and no stream kept open.
    let started = Instant::now();
    let (head, body) = get(port, "HEAD", "/api/events");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    assert!(
        body.is_empty() && started.elapsed() < Duration::from_secs(4),
        "HEAD held the connection"
    );

    // Read-only: nothing else is accepted, anywhere.
    for path in ["/", "/api/cluster"] {
        let (head, _) = get(port, "POST", path);
        assert!(head.starts_with("HTTP/1.1 405 "), "POST {path}: {head}");
    }
    let (head, _) = get(port, "GET", "/metrics");
    assert!(
        head.starts_with("HTTP/1.1 404 "),
        "metrics are on their own listener: {head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_on_the_metrics_listener_serves_both() {
    let (_cluster, proxy) = proxied(0, with_page("http_listen = \"127.0.0.1:$METRICS_PORT\""));
    let port = proxy.monitor_metrics;
    wait_until(Duration::from_secs(20), "the primary known", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
            && get_json(port, "/api/cluster")["primary"] == "pg0"
    })
    .unwrap();
    let body = scrape(port).unwrap();
    assert_metric(&body, "pgwarden_monitor_primary_backend", 0.0);
    let (head, page) = get(port, "GET", "/");
    assert!(
        head.starts_with("HTTP/1.1 200 ") && page.contains("<html"),
        "{head}"
    );
}

/// Headless Chromium (Debian's `chromium`; `.ci/run` installs it).
fn chromium() -> &'static str {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c;
        }
    }
    panic!("this test needs headless Chromium: apt-get install chromium");
}

/// Runs headless Chromium on `url` with `args` (a screenshot, or the DOM
/// after the page's script ran on the state it was served with); its stdout.
fn browse(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    // Bounded: a browser that hangs fails the test instead of stalling it.
    let out = std::process::Command::new("timeout")
        .args(["120", chromium()])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(["--no-first-run", "--disable-extensions"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the page's DOM shows as the primary: `#primary-name`'s text and
/// the `data-name` of the diagram's `#primary-node`.
fn primary_in_dom(dom: &str) -> (String, String) {
    let name = dom
        .split_once("id=\"primary-name\">")
        .and_then(|(_, rest)| rest.split_once('<'))
        .map(|(n, _)| n.to_owned())
        .unwrap_or_else(|| panic!("no #primary-name in the DOM:\n{dom}"));
    let node = dom
        .split("<g ")
        .find(|g| {
            g.split_once('>')
                .is_some_and(|(attrs, _)| attrs.contains("id=\"primary-node\""))
        })
        .and_then(|g| g.split_once("data-name=\""))
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(n, _)| n.to_owned())
        .unwrap_or_else(|| "no #primary-node".to_owned());
    (name, node)
}

/// The first of 30 consecutive ports, all free now, below the ephemeral
/// range (32768 and up here): the demo derives its ports from a few bases,
/// and a port next to a free one in the ephemeral range may be any test
/// client's source port a moment later.
fn demo_ports() -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    for i in 0..100u32 {
        let base = 20_000 + u16::try_from((seed.wrapping_add(i * 7919)) % 120).unwrap_or(0) * 100;
        let free = (base..base + 30).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no 30 free consecutive ports between 20000 and 32000");
}

/// The demo cluster (three nodes with watchdogs, pg0 primary): its node0
/// monitor's page in Chromium before and after pg0 dies. The screenshots
/// go to `target/tmp/status-page/` (`before-failover.png`,
/// `after-failover.png`), the DOM is read back to check them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_status_page_in_chromium_shows_the_new_primary_after_a_failover() {
    chromium();
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("env");
    let base = demo_ports();
    // Node i's metrics (and status page) at base + 10 i + 0..2, its
    // watchdog at base + 24 + i, its proxy at base + 29 - i.
    let (metrics, watchdog, proxy) = (base, base + 24, base + 29);
    let demo = pgwarden_testkit::ChildGuard::spawn(
        std::process::Command::new(pgwarden_testkit::workspace_bin("pgwarden-demo"))
            .args([
                "--port",
                &proxy.to_string(),
                "--watchdog-port",
                &watchdog.to_string(),
            ])
            .args(["--metrics-port", &metrics.to_string()])
            .arg("--dir")
            .arg(dir.path().join("demo"))
            .arg("--env-file")
            .arg(&env_file)
            .stdout(std::process::Stdio::null()),
    )
    .unwrap();
    wait_until(Duration::from_secs(180), "the demo up", || {
        env_file.exists()
    })
    .unwrap();
    let env = std::fs::read_to_string(&env_file).unwrap();
    let var = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} not in {env}"))
            .to_owned()
    };
    let port: u16 = var("STATUS_PORT").parse().unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    if let Err(e) = wait_until(Duration::from_secs(30), "node0's status page up", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    }) {
        let log =
            std::fs::read_to_string(dir.path().join("demo/node0/monitor.log")).unwrap_or_default();
        panic!("{e}; node0's monitor log:\n{log}");
    }

    // What Chromium is given: the page, and the state it draws.
    let (head, _) = get(port, "GET", "/");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    wait_until(
        Duration::from_secs(30),
        "pg0 primary, the standbys streaming",
        || {
            let s = get_json(port, "/api/cluster");
            s["primary"] == "pg0"
                && ["pg1", "pg2"]
                    .iter()
                    .all(|n| backend(&s, n)["streaming"] == true)
        },
    )
    .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the watchdogs' leader known",
        || get_json(port, "/api/watchdog")["leader"].is_string(),
    )
    .unwrap();

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = |name: &str| {
        let path = shots.join(name);
        let _ = std::fs::remove_file(&path);
        browse(
            &url,
            &[
                "--window-size=1280,1400",
                &format!("--screenshot={}", path.display()),
            ],
        );
        let png = std::fs::read(&path).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{} is no screenshot",
            path.display()
        );
    };
    shot("before-failover.png");
    let dom = browse(&url, &["--dump-dom"]);
    assert_eq!(
        primary_in_dom(&dom),
        ("pg0".to_owned(), "pg0".to_owned()),
        "before the failover"
    );

    // pg0 dies (an immediate shutdown, as a crash); the cluster elects a new primary.
    let pid_file = std::path::Path::new(&var("PG0_DATA_DIR")).join("postmaster.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGQUIT,
    )
    .unwrap();
    let mut new_primary = String::new();
    wait_until(Duration::from_secs(60), "a new primary", || {
        let s = get_json(port, "/api/cluster");
        match s["primary"].as_str() {
            Some(p) if p != "pg0" && s["failover_in_progress"] == false => {
                new_primary = p.to_owned();
                true
            }
            _ => false,
        }
    })
    .unwrap();
    shot("after-failover.png");
    let dom = browse(&url, &["--dump-dom"]);
    assert_eq!(
        primary_in_dom(&dom),
        (new_primary.clone(), new_primary.clone()),
        "after the failover"
    );
    // The old primary is drawn, not as the primary.
    assert!(dom.contains("data-name=\"pg0\""), "pg0 left the diagram");
    // The guard's SIGTERM stops the demo and everything it started.
    drop(demo);
}
