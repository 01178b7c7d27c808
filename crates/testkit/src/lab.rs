//! Network-namespace labs: several "hosts" on one machine.
//!
//! A [`Lab`] is a small private network built from Linux network namespaces
//! (`ip netns`): one namespace per host, one for a client, and one holding a
//! bridge that every other namespace is plugged into with a veth pair. The
//! subnet is 10.213.0.0/24 and there is no default route anywhere, so nothing
//! inside a lab can reach the machine's own network, and nothing outside
//! (not even the machine's loopback) can be reached from inside.
//!
//! ```text
//!   host 0 (10.213.0.11)   host 1 (10.213.0.12) ...   client (10.213.0.2)
//!        eth0                   eth0                       eth0
//!         |                      |                          |
//!        h0 -------------------- h1 ------ br0 ------------ c      bridge namespace
//! ```
//!
//! Processes join a host with [`Host::command`] / [`Host::command_as_user`]
//! (`ip netns exec`), and threads of the test with [`Host::enter`] (`setns`).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use nix::fcntl::{Flock, FlockArg};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, geteuid};

use crate::paths::os_user;

/// The lab subnet, as written in pg_hba.conf.
const SUBNET: &str = "10.213.0.0/24";

/// The subnet's prefix length.
const PREFIX_LEN: u8 = 24;

/// The first three octets of every lab address.
const NET: [u8; 3] = [10, 213, 0];

/// Last octet of the client's address.
const CLIENT_OCTET: u8 = 2;

/// Last octet of host 0's address; host i gets `FIRST_HOST_OCTET + i`.
const FIRST_HOST_OCTET: u8 = 11;

/// Last octet of the address no host has, for a delegate IP.
const DELEGATE_OCTET: u8 = 100;

/// Hosts get the addresses between the client's and the delegate IP.
const MAX_HOSTS: usize = (DELEGATE_OCTET - FIRST_HOST_OCTET) as usize;

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Every lab namespace name starts with this, then the owning pid.
const NAME_PREFIX: &str = "pgw";

/// Serialises `ip netns add` across processes: the first one mounts
/// `/run/netns`, and parallel first mounts would stack.
const NETNS_LOCK: &str = "/run/pgwarden-testkit-netns.lock";

/// The bridge, inside the bridge namespace.
const BRIDGE: &str = "br0";

/// The interface of every host and of the client.
const ETH: &str = "eth0";

/// Bridge port of the client's veth.
const CLIENT_PORT: &str = "c";

/// Labs created by this process so far, for unique namespace names.
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A private network of hosts on one machine, each in its own network
/// namespace, for multi-host tests (pgwarden's watchdog moves a delegate IP
/// between hosts and must be tested with real links that can be cut).
///
/// [`Lab::new`]`(n)` creates `n` host namespaces and one client namespace,
/// joined by a bridge that lives in a namespace of its own. Addresses are in
/// 10.213.0.0/24: host i has 10.213.0.(11+i)/24 on its `eth0`, the client
/// 10.213.0.2/24, and 10.213.0.100 ([`Lab::delegate_ip`]) is left free. There
/// is no default route anywhere and nothing connects a lab to the machine's
/// own namespaces: traffic stays inside.
///
/// Namespace names are `pgw<pid>x<n>` followed by `b` (the bridge), `c` (the
/// client) or `h<i>` (host i), so labs of parallel tests and test processes
/// never collide. Namespaces left behind by a test process that died without
/// cleaning up (its pid no longer exists) are removed by the next
/// [`Lab::new`].
///
/// Dropping the lab kills (`SIGKILL`) every process still running in its
/// namespaces and deletes them (`ip netns del`), which removes the veths and
/// the bridge. Drop clusters and daemons before the lab (declare them after
/// it) so they stop gracefully. (A process spawned with [`Host::command`] an
/// instant before the drop, still inside `ip netns exec`, may join the
/// namespace after it was searched and outlive the lab, cut off.)
///
/// Labs need root; [`Lab::unavailable`] says why a machine cannot run them.
#[derive(Debug)]
pub struct Lab {
    /// The namespace holding the bridge.
    bridge: String,
    hosts: Vec<Host>,
    client: Host,
    /// Every namespace created so far, in order: removed on drop.
    created: Vec<String>,
}

/// One host of a [`Lab`]: a network namespace with an address on its `eth0`.
///
/// A `Host` is a plain description (namespace name, address); clones stay
/// usable as long as the lab exists.
#[derive(Debug, Clone)]
pub struct Host {
    name: String,
    ip: Ipv4Addr,
    /// (uid, gid) [`Host::command_as_user`] switches to.
    user: Option<(u32, u32)>,
}

// === impl Lab ===

impl Lab {
    /// Creates a lab with `hosts` hosts (1 to 89) and a client; see [`Lab`].
    ///
    /// Fails when not running as root, when `ip` or `setpriv` (util-linux,
    /// needed by [`Host::command_as_user`]) is missing, or when a namespace
    /// cannot be created; whatever was already created is removed.
    pub fn new(hosts: usize) -> anyhow::Result<Lab> {
        anyhow::ensure!(
            (1..=MAX_HOSTS).contains(&hosts),
            "a lab has 1 to {MAX_HOSTS} hosts, not {hosts}"
        );
        anyhow::ensure!(
            geteuid().is_root(),
            "network-namespace labs need root (ip netns)"
        );
        anyhow::ensure!(
            find_program("ip").is_some(),
            "iproute2's `ip` is not installed"
        );
        let user = os_user();
        if user.is_some() {
            anyhow::ensure!(
                find_program("setpriv").is_some(),
                "`setpriv` (util-linux) is not installed; labs need it to run programs \
                 as the unprivileged user"
            );
        }
        remove_stale_namespaces();

        let id = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NAME_PREFIX}{}x{id}", std::process::id());
        let hosts = (0..hosts)
            .map(|i| Host {
                name: format!("{prefix}h{i}"),
                ip: host_ip(i),
                user,
            })
            .collect();
        let mut lab = Lab {
            bridge: format!("{prefix}b"),
            hosts,
            client: Host {
                name: format!("{prefix}c"),
                ip: Ipv4Addr::new(NET[0], NET[1], NET[2], CLIENT_OCTET),
                user,
            },
            created: Vec::new(),
        };
        // On error, dropping the half-built lab removes what exists.
        lab.build()?;
        Ok(lab)
    }

    /// Creates the namespaces, the bridge, the veths and the addresses.
    fn build(&mut self) -> anyhow::Result<()> {
        let mut names = vec![self.bridge.clone(), self.client.name.clone()];
        names.extend(self.hosts.iter().map(|h| h.name.clone()));
        {
            let _lock = netns_lock()?;
            for name in names {
                ip(&["netns", "add", &name])?;
                self.created.push(name);
            }
        }
        let bridge = self.bridge.as_str();
        ip(&["-n", bridge, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", bridge, "link", "set", "dev", BRIDGE, "up"])?;
        let mut plugs = vec![(CLIENT_PORT.to_owned(), &self.client)];
        plugs.extend(self.hosts.iter().enumerate().map(|(i, h)| (port(i), h)));
        for (port, host) in plugs {
            let ns = host.name.as_str();
            let address = format!("{}/{PREFIX_LEN}", host.ip);
            ip(&[
                "-n", bridge, "link", "add", &port, "type", "veth", "peer", "name", ETH, "netns",
                ns,
            ])?;
            ip(&[
                "-n", bridge, "link", "set", "dev", &port, "master", BRIDGE, "up",
            ])?;
            ip(&["-n", ns, "link", "set", "dev", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", &address, "dev", ETH])?;
            ip(&["-n", ns, "link", "set", "dev", ETH, "up"])?;
        }
        Ok(())
    }

    /// Whether labs can run here: `None` if so, else the reason (not root,
    /// no `ip`, namespaces cannot be created). Tests skip with this message.
    /// The answer is computed once per process.
    pub fn unavailable() -> Option<String> {
        static ANSWER: OnceLock<Option<String>> = OnceLock::new();
        ANSWER.get_or_init(probe).clone()
    }

    /// Every host, in order: host i is `hosts()[i]`.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`.
    ///
    /// # Panics
    /// When there is no host `i`.
    pub fn host(&self, i: usize) -> &Host {
        match self.hosts.get(i) {
            Some(host) => host,
            None => panic!("lab has {} hosts, there is no host {i}", self.hosts.len()),
        }
    }

    /// The client namespace (10.213.0.2): where tests connect from, like an
    /// application server would.
    pub fn client(&self) -> &Host {
        &self.client
    }

    /// Cuts host `i` off the network, like a failed switch port: its veth is
    /// detached from the bridge, so every frame it sends or should receive is
    /// silently lost. Inside the host nothing changes (`eth0` stays up with
    /// its addresses and routes), so its programs only notice by timeouts.
    /// Cutting a cut host is a no-op.
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        self.set_port(i, &["nomaster"])
            .with_context(|| format!("cut host {i}"))
    }

    /// Plugs host `i` back into the bridge after [`Lab::cut`]. Healing a
    /// connected host is a no-op.
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        self.set_port(i, &["master", BRIDGE])
            .with_context(|| format!("heal host {i}"))
    }

    /// `ip link set dev <host i's port on the bridge> ARGS`, in the
    /// bridge's namespace: how [`Lab::cut`] and [`Lab::heal`] unplug and
    /// plug a host.
    fn set_port(&self, i: usize, args: &[&str]) -> anyhow::Result<()> {
        self.check_host(i)?;
        let port = port(i);
        let mut argv = vec!["-n", self.bridge.as_str(), "link", "set", "dev", &port];
        argv.extend_from_slice(args);
        ip(&argv).map(drop)
    }

    fn check_host(&self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(
            i < self.hosts.len(),
            "lab has {} hosts, there is no host {i}",
            self.hosts.len()
        );
        Ok(())
    }

    /// The lab subnet, `10.213.0.0/24` (for pg_hba.conf lines and configs).
    pub fn subnet(&self) -> &'static str {
        SUBNET
    }

    /// The subnet's prefix length, 24 (for `ip addr add <ip>/24`).
    pub fn prefix_len(&self) -> u8 {
        PREFIX_LEN
    }

    /// An address in the subnet no host or client has, 10.213.0.100: the
    /// delegate IP the watchdog moves between hosts.
    pub fn delegate_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(NET[0], NET[1], NET[2], DELEGATE_OCTET)
    }

    /// The name of every namespace the lab created (the bridge's included),
    /// all removed on drop.
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in self.created.iter().rev() {
            if let Err(e) = remove_namespace(name) {
                eprintln!("pgwarden-testkit: {e:#}");
            }
        }
    }
}

// === impl Host ===

impl Host {
    /// The network namespace's name (for `ip netns exec <name>`, `ip -n
    /// <name>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's address on `eth0`.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// A command running `program` in this host's namespace as root: `ip
    /// netns exec <name> <program>`. Arguments, environment and working dir
    /// are the caller's to add; `ip` execs the program, so the child's pid is
    /// the program's (signals reach it directly).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        netns_command(&self.name, None, program.as_ref())
    }

    /// Like [`Host::command`], but the program runs as the unprivileged user
    /// ([`os_user`](crate::os_user)) when the test runs as root: `ip netns
    /// exec <name> setpriv --reuid=<uid> --regid=<gid> --clear-groups --
    /// <program>` (`ip netns exec` needs root, so the switch comes after it).
    /// PostgreSQL and pgwarden daemons run this way. The environment
    /// (including `HOME`) is passed through unchanged.
    pub fn command_as_user(&self, program: impl AsRef<OsStr>) -> Command {
        netns_command(&self.name, self.user, program.as_ref())
    }

    /// Runs a `sh -c` script in the namespace as root and returns its stdout;
    /// fails with its stderr unless it exits 0. The script must not leave
    /// background processes holding its stdout (this waits for EOF).
    pub fn sh(&self, script: &str) -> anyhow::Result<String> {
        let output = self
            .command("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("{}: cannot run sh", self.name))?;
        if !output.status.success() {
            anyhow::bail!(
                "{}: sh -c {script:?} failed ({}): {}",
                self.name,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The IPv4 addresses on the host's `eth0` (`ip -4 -o addr show dev
    /// eth0`): its own, plus the delegate IP while it holds it.
    pub fn addresses(&self) -> anyhow::Result<Vec<Ipv4Addr>> {
        let output = ip(&["-n", &self.name, "-4", "-o", "addr", "show", "dev", ETH])?;
        Ok(parse_addresses(&output))
    }

    /// Runs `f` on a new thread that has joined this host's network
    /// namespace (`setns`), and returns its result. Sockets `f` creates belong
    /// to the host and keep working after `f` returns, from any thread: a
    /// `TcpListener` bound here listens inside the host. Child processes
    /// spawned by `f` start in the host too. A panic in `f` is propagated.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let path = Path::new(NETNS_DIR).join(&self.name);
        let ns = File::open(&path).with_context(|| format!("open {}", path.display()))?;
        let joined = std::thread::scope(|s| {
            s.spawn(move || setns(&ns, CloneFlags::CLONE_NEWNET).map(|()| f()))
                .join()
        });
        match joined {
            Ok(result) => result.with_context(|| format!("join network namespace {}", self.name)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Whether a TCP connection from this host to `addr` succeeds within
    /// `timeout` (e.g. from the client to the delegate IP). A refused,
    /// unreachable or silent address gives `false`.
    pub fn can_connect(&self, addr: SocketAddrV4, timeout: Duration) -> bool {
        self.enter(|| TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout).is_ok())
            .unwrap_or(false)
    }
}

// === helpers ===

/// Host i's address.
fn host_ip(i: usize) -> Ipv4Addr {
    let octet = u8::try_from(i)
        .ok()
        .and_then(|i| i.checked_add(FIRST_HOST_OCTET))
        .unwrap_or(u8::MAX);
    Ipv4Addr::new(NET[0], NET[1], NET[2], octet)
}

/// Bridge port of host i's veth.
fn port(i: usize) -> String {
    format!("h{i}")
}

/// `ip netns exec <ns> [setpriv ... --] <program>`.
pub(crate) fn netns_command(ns: &str, user: Option<(u32, u32)>, program: &OsStr) -> Command {
    let mut cmd = Command::new(program_path("ip"));
    cmd.args(["netns", "exec", ns]);
    if let Some((uid, gid)) = user {
        cmd.arg(program_path("setpriv"))
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .args(["--clear-groups", "--"]);
    }
    cmd.arg(program);
    cmd
}

/// The program a command built by [`netns_command`] runs, for messages.
pub(crate) fn wrapped_program(cmd: &Command) -> Option<&OsStr> {
    let args: Vec<&OsStr> = cmd.get_args().collect();
    let (netns, exec) = (args.first()?, args.get(1)?);
    if *netns != "netns" || *exec != "exec" {
        return None;
    }
    let first = args.get(3)?;
    if Path::new(first).file_name() == Some(OsStr::new("setpriv")) {
        let dashes = args.iter().position(|a| *a == "--")?;
        args.get(dashes + 1).copied()
    } else {
        Some(first)
    }
}

/// Runs `ip <args>` and returns its stdout; fails with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program_path("ip"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run ip")?;
    if !output.status.success() {
        anyhow::bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Holds [`NETNS_LOCK`] while alive.
fn netns_lock() -> anyhow::Result<Flock<File>> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(NETNS_LOCK)
        .with_context(|| format!("open {NETNS_LOCK}"))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| anyhow::anyhow!("lock {NETNS_LOCK}: {errno}"))
}

/// Kills every process in namespace `name`, then deletes it.
fn remove_namespace(name: &str) -> anyhow::Result<()> {
    let me = std::process::id();
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            if pid != me
                && let Ok(pid) = i32::try_from(pid)
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    ip(&["netns", "del", name])
        .map(drop)
        .with_context(|| format!("remove lab namespace {name}"))
}

/// The pid owning a lab namespace name (`pgw<pid>...`), or `None` for
/// namespaces that are not a lab's.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let (pid, tail) = rest.split_at(digits);
    if tail.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// Removes lab namespaces whose owning process is gone (a test killed
/// before its labs were dropped), with the processes still inside.
fn remove_stale_namespaces() {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("pgwarden-testkit: removing stale lab namespace {name} (pid {pid} is gone)");
        // Another process may be removing it at the same time.
        let _ = remove_namespace(&name);
    }
}

/// Why labs cannot run here, if they cannot.
fn probe() -> Option<String> {
    if !geteuid().is_root() {
        return Some("network-namespace labs need root".to_owned());
    }
    if find_program("ip").is_none() {
        return Some("iproute2's `ip` is not installed".to_owned());
    }
    let name = format!("{NAME_PREFIX}{}probe", std::process::id());
    let added = netns_lock().and_then(|_lock| ip(&["netns", "add", &name]));
    match added {
        Ok(_) => {
            let _ = ip(&["netns", "del", &name]);
            None
        }
        Err(e) => Some(format!("cannot create network namespaces: {e:#}")),
    }
}

/// The IPv4 addresses in `ip -4 -o addr show` output.
fn parse_addresses(output: &str) -> Vec<Ipv4Addr> {
    output
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            let cidr = words.next()?;
            cidr.split('/').next()?.parse().ok()
        })
        .collect()
}

/// `name` on PATH or in the usual system dirs (root's PATH may lack
/// `/usr/sbin`, where `ip` lives).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The full path of `name` if found (looked up once), else `name` itself.
fn program_path(name: &'static str) -> OsString {
    static IP: OnceLock<Option<PathBuf>> = OnceLock::new();
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    let cell = match name {
        "ip" => &IP,
        "setpriv" => &SETPRIV,
        _ => return name.into(),
    };
    match cell.get_or_init(|| find_program(name)) {
        Some(path) => path.clone().into_os_string(),
        None => name.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_plan() {
        assert_eq!(host_ip(0), Ipv4Addr::new(10, 213, 0, 11));
        assert_eq!(host_ip(2), Ipv4Addr::new(10, 213, 0, 13));
        assert_eq!(host_ip(MAX_HOSTS - 1), Ipv4Addr::new(10, 213, 0, 99));
        assert_eq!(port(12), "h12");
    }

    #[test]
    fn parses_ip_addr_output() {
        let out = "2: eth0    inet 10.213.0.11/24 scope global eth0\\       valid_lft forever preferred_lft forever\n\
                   2: eth0    inet 10.213.0.100/24 scope global secondary eth0\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(
            parse_addresses(out),
            vec![
                Ipv4Addr::new(10, 213, 0, 11),
                Ipv4Addr::new(10, 213, 0, 100)
            ]
        );
        assert!(parse_addresses("").is_empty());
    }

    #[test]
    fn lab_names_carry_their_owner() {
        assert_eq!(owner_pid("pgw1234x0h2"), Some(1234));
        assert_eq!(owner_pid("pgw77x3b"), Some(77));
        assert_eq!(owner_pid("pgw99probe"), Some(99));
        assert_eq!(owner_pid("pgw1234"), None);
        assert_eq!(owner_pid("pgwx1"), None);
        assert_eq!(owner_pid("blue"), None);
    }

    #[test]
    fn netns_commands() {
        let cmd = netns_command("pgw1x0h0", Some((70, 71)), OsStr::new("/usr/bin/psql"));
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(args[..3], ["netns", "exec", "pgw1x0h0"]);
        assert!(args[3].ends_with("setpriv"));
        assert_eq!(
            args[4..],
            [
                "--reuid=70",
                "--regid=71",
                "--clear-groups",
                "--",
                "/usr/bin/psql"
            ]
        );
        assert_eq!(wrapped_program(&cmd), Some(OsStr::new("/usr/bin/psql")));

        let cmd = netns_command("pgw1x0c", None, OsStr::new("sh"));
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(args, ["netns", "exec", "pgw1x0c", "sh"]);
        assert_eq!(wrapped_program(&cmd), Some(OsStr::new("sh")));
        assert_eq!(wrapped_program(&Command::new("psql")), None);
    }
}
