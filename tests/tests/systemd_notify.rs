//! The daemons under systemd (`Type=notify`): each says READY=1 once its
//! sockets are bound, pings WATCHDOG=1 when `WATCHDOG_USEC` asks for it,
//! says RELOADING=1 then READY=1 around a reload (the proxy's SIGHUP), and
//! STOPPING=1 at SIGTERM. The test plays systemd: it binds the datagram
//! socket `NOTIFY_SOCKET` names and reads what arrives.

use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use pgwarden_e2e::*;
use pgwarden_testkit::{ChildGuard, workspace_bin};

/// systemd's end: what the daemon sends on its notify socket.
struct Manager {
    socket: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl Manager {
    fn new(dir: &Path, name: &str) -> Manager {
        let path = dir.join(format!("{name}-notify.sock"));
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Manager {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Starts `binary` with `config` as systemd would: NOTIFY_SOCKET, and a
    /// watchdog of 400 ms (pings due every 200 ms) for its own pid (the
    /// shell execs the daemon, so `$$` is the daemon's pid).
    /// Starts `pgwarden-<name>` with `config` under a manager of its own in
    /// `dir`, as systemd would (logging to `<name>.log`), and waits for its
    /// READY=1.
    fn start_ready(dir: &Path, name: &str, config: &Path) -> (Manager, ChildGuard) {
        let mut m = Manager::new(dir, name);
        let log = dir.join(format!("{name}.log"));
        let child = m.spawn(&format!("pgwarden-{name}"), config, &log);
        m.expect("READY=1", Duration::from_secs(20));
        (m, child)
    }

    fn spawn(&self, binary: &str, config: &Path, log: &Path) -> ChildGuard {
        ChildGuard::spawn(
            Command::new("sh")
                .arg("-c")
                .arg("WATCHDOG_PID=$$ exec \"$0\" --config \"$1\"")
                .arg(workspace_bin(binary))
                .arg(config)
                .env("NOTIFY_SOCKET", &self.path)
                .env("WATCHDOG_USEC", "400000")
                .env("PGWARDEN_LOG", "debug")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap()),
        )
        .unwrap()
    }

    /// The next notification whose first line is `first`, within `timeout`;
    /// the others read meanwhile are kept in `seen`.
    fn expect(&mut self, first: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.seen.push(msg.clone());
                    if msg.lines().next() == Some(first) {
                        return msg;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
        }
        panic!("no {first} within {timeout:?}; got {:?}", self.seen);
    }

    /// How many notifications so far were exactly `msg`.
    fn count(&self, msg: &str) -> usize {
        self.seen.iter().filter(|m| m.trim_end() == msg).count()
    }
}

/// Two watchdog pings 200 ms apart, then SIGTERM: STOPPING=1 and an exit;
/// `readies` READY=1 in all (one more per reload).
fn pings_then_stops(m: &mut Manager, mut child: ChildGuard, what: &str, readies: usize) {
    m.expect("WATCHDOG=1", Duration::from_secs(5));
    let first = Instant::now();
    m.expect("WATCHDOG=1", Duration::from_secs(5));
    assert!(
        first.elapsed() >= Duration::from_millis(100),
        "{what}: pings come every half WATCHDOG_USEC, not in a burst: {:?}",
        m.seen
    );
    child.signal(Signal::SIGTERM).unwrap();
    m.expect("STOPPING=1", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.child_mut().try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "{what} did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(m.count("READY=1"), readies, "{what}: {:?}", m.seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_and_proxy_tell_systemd_they_are_ready_alive_reloaded_and_stopping() {
    let (_cluster, mut proxy) = proxied(0, ProxyOptions::default());
    let dir = tempfile::tempdir().unwrap();

    // The monitor, started as systemd would: READY=1 once its socket is up.
    proxy.kill_monitor();
    let socket = proxy.monitor_socket();
    let _ = std::fs::remove_file(&socket);
    let (mut m, monitor) = Manager::start_ready(dir.path(), "monitor", &proxy.config);
    assert!(socket.exists(), "READY=1 before monitor.sock was bound");
    pings_then_stops(&mut m, monitor, "pgwarden-monitor", 1);
    proxy.start_monitor();

    // The proxy: READY=1 once it accepts clients; a reload is bracketed.
    proxy.child().kill9().unwrap();
    let (mut p, child) = Manager::start_ready(dir.path(), "proxy", &proxy.config);
    assert!(
        TcpStream::connect(("127.0.0.1", proxy.port)).is_ok(),
        "READY=1 before the proxy accepted clients"
    );
    child.signal(Signal::SIGHUP).unwrap();
    let reloading = p.expect("RELOADING=1", Duration::from_secs(10));
    assert!(
        reloading.contains("MONOTONIC_USEC="),
        "systemd 253+ needs MONOTONIC_USEC with RELOADING=1: {reloading:?}"
    );
    p.expect("READY=1", Duration::from_secs(10));
    pings_then_stops(&mut p, child, "pgwarden-proxy", 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_tells_systemd_it_is_ready_alive_and_stopping() {
    let mut wds = pgwarden_e2e::watchdogs::Watchdogs::new(&pgwarden_e2e::watchdogs::Setup {
        relayed: false,
        watchdog: None,
    });
    wds.start_monitor(0).await;
    let node = &wds.nodes[0];
    let (mut m, child) =
        Manager::start_ready(&node.dir, "watchdog", &node.dir.join("pgwarden.toml"));
    assert!(
        node.dir.join("run").join("watchdog.sock").exists(),
        "READY=1 before watchdog.sock was bound"
    );
    pings_then_stops(&mut m, child, "pgwarden-watchdog", 1);
}
