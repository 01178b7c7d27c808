//! `pgwarden-demo`: a local pgwarden cluster to try by hand.
//!
//! Starts a PostgreSQL primary and streaming standbys on 127.0.0.1, and
//! three pgwarden nodes in front of them (each a watchdog, a monitor and a
//! proxy, as on three database hosts, but all on loopback; no delegate IP),
//! prints how to connect, and stops everything on Ctrl-C. `--nodes 1` runs a
//! single node without a watchdog.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use nix::sys::signal::Signal;
use pgwarden_testkit::{ChildGuard, Cluster, PasswordKind, wait_until, workspace_bin};

mod common;

/// Start a local pgwarden demo: primary + standbys + pgwarden daemons on 127.0.0.1.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Number of streaming standbys.
    #[arg(long, default_value_t = 2)]
    standbys: usize,
    /// Port node 0's proxy listens on; node i's listens on port - i.
    #[arg(long, default_value_t = 9999)]
    port: u16,
    /// pgwarden nodes (watchdog + monitor + proxy each); 1 = no watchdog.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Port node 0's watchdog listens on (for its peers); node i's uses port + i.
    #[arg(long, default_value_t = 9000)]
    watchdog_port: u16,
    /// Node i's proxy serves /metrics on this port + 10 i, its monitor on
    /// + 1 (with the status page, GET /), its watchdog on + 2.
    #[arg(long, default_value_t = 9930)]
    metrics_port: u16,
    /// Directory for the servers' data, the config and the logs (wiped at start).
    #[arg(long, default_value = "/tmp/pgwarden-demo")]
    dir: PathBuf,
    /// The demo role, its password and its database.
    #[arg(long, default_value = "demo")]
    user: String,
    /// Password of the demo role.
    #[arg(long, default_value = "demo")]
    password: String,
    /// Also write shell `KEY=value` lines (ports, dirs) here once everything is up.
    #[arg(long)]
    env_file: Option<PathBuf>,
    /// Extra `section.key=value` config settings (repeatable), e.g. `proxy.pool_size=40`.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Extra `postgresql.conf` settings for every server (repeatable), e.g.
    /// `max_connections=300`.
    #[arg(long = "pg-set", value_name = "KEY=VALUE")]
    pg_set: Vec<String>,
}

fn main() -> ExitCode {
    common::exit_code("pgwarden-demo", run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    // Blocked before any thread exists, so Ctrl-C during start-up still ends
    // in a clean stop; children start with an empty mask.
    let stop = common::block(&[Signal::SIGINT, Signal::SIGTERM])?;

    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("remove old {}", args.dir.display()))?;
    }
    std::fs::create_dir_all(&args.dir)?;
    std::fs::set_permissions(&args.dir, std::fs::Permissions::from_mode(0o755))?;
    let pg_dir = args.dir.join("postgres");

    eprintln!(
        "pgwarden-demo: starting PostgreSQL (1 primary, {} standbys)...",
        args.standbys
    );
    let mut builder = Cluster::builder().standbys(args.standbys).base_dir(pg_dir);
    for s in &args.pg_set {
        let (key, value) = s
            .split_once('=')
            .with_context(|| format!("--pg-set {s}: expected key=value"))?;
        builder = builder.config(key, value);
    }
    let cluster = builder.start()?;
    cluster.create_user(&args.user, &args.password, PasswordKind::Scram)?;
    cluster.create_user("pgwarden", "pgwarden", PasswordKind::Scram)?;
    cluster.primary().psql(&format!(
        "CREATE DATABASE {} OWNER {}",
        quote_ident(&args.user),
        quote_ident(&args.user)
    ))?;

    let auth_file = args.dir.join("users.txt");
    let verifier = cluster.primary().psql(&format!(
        "SELECT rolpassword FROM pg_authid WHERE rolname = '{}'",
        args.user.replace('\'', "''")
    ))?;
    std::fs::write(&auth_file, format!("\"{}\" \"{}\"\n", args.user, verifier))?;
    std::fs::set_permissions(&auth_file, std::fs::Permissions::from_mode(0o600))?;

    let key_file = args.dir.join("watchdog.key");
    let mut key = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))?;
    std::fs::write(
        &key_file,
        key.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    )?;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;

    // --set section.key=value becomes the daemons' env override PGWARDEN_SECTION__KEY.
    let mut overrides = Vec::new();
    for s in &args.set {
        let (key, value) = s
            .split_once('=')
            .with_context(|| format!("--set {s}: expected section.key=value"))?;
        let (section, name) = key
            .split_once('.')
            .with_context(|| format!("--set {s}: expected section.key=value"))?;
        overrides.push((
            format!(
                "PGWARDEN_{}__{}",
                section.to_uppercase(),
                name.to_uppercase()
            ),
            value.to_owned(),
        ));
    }

    // Per node: the watchdog first (the monitor decides through it), then
    // the monitor (the proxy routes by it), then the proxy.
    let mut daemons = Vec::new();
    let nodes = args.nodes.max(1);
    for i in 0..nodes {
        let ndir = node_dir(&args, i);
        std::fs::create_dir_all(&ndir)?;
        let config = ndir.join("pgwarden.toml");
        std::fs::write(
            &config,
            node_config(&args, i, &cluster, &auth_file, &key_file)?,
        )?;
        // It holds the health check's password: only its owner reads it.
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let names: &[&str] = if nodes > 1 {
            &["pgwarden-watchdog", "pgwarden-monitor", "pgwarden-proxy"]
        } else {
            &["pgwarden-monitor", "pgwarden-proxy"]
        };
        for name in names {
            let bin = workspace_bin(name);
            let log = ndir.join(format!("{}.log", name.trim_start_matches("pgwarden-")));
            let child = ChildGuard::spawn(
                Command::new(&bin)
                    .arg("--config")
                    .arg(&config)
                    .envs(overrides.iter().map(|(k, v)| (k, v)))
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log)?),
            )
            .with_context(|| format!("start {}", bin.display()))?;
            daemons.push((format!("node{i} {name}"), child, log));
        }
    }
    let ports: Vec<u16> = (0..nodes).map(|i| args.port - i as u16).collect();
    let up = wait_until(
        Duration::from_secs(30),
        "every pgwarden-proxy to accept connections",
        || {
            ports
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
        },
    );
    if up.is_err() {
        let mut logs = String::new();
        for (name, child, log) in &mut daemons {
            let exited = child.try_wait().ok().flatten();
            let state = exited.map_or("still running".to_owned(), |s| s.to_string());
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let _ = writeln!(logs, "--- {name} ({state}):\n{text}");
        }
        anyhow::bail!("the pgwarden daemons did not start:\n{logs}");
    }
    let config = node_dir(&args, 0).join("pgwarden.toml");

    if let Some(path) = &args.env_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, env_lines(&args, &cluster, &config))?;
        std::fs::rename(&tmp, path)?;
    }
    print_welcome(&args, &cluster, &config);

    let signal = stop.wait().context("wait for Ctrl-C")?;
    eprintln!("\npgwarden-demo: {signal}: stopping the pgwarden daemons and PostgreSQL...");
    for (_, child, _) in daemons.iter_mut().rev() {
        let _ = child.signal(Signal::SIGTERM);
    }
    let _ = &daemons;
    for (_, child, _) in &mut daemons {
        if child.wait_timeout(Duration::from_secs(10)).is_none() {
            let _ = child.kill9();
        }
    }
    drop(cluster);
    eprintln!(
        "pgwarden-demo: stopped; logs and data are in {}",
        args.dir.display()
    );
    Ok(())
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn node_dir(args: &Args, i: usize) -> PathBuf {
    args.dir.join(format!("node{i}"))
}

/// Node `i`'s config, read by its three daemons.
fn node_config(
    args: &Args,
    i: usize,
    cluster: &Cluster,
    auth_file: &Path,
    key_file: &Path,
) -> anyhow::Result<String> {
    let dir = node_dir(args, i);
    let dir = dir.display();
    let mut t = String::new();
    writeln!(
        t,
        "# Written by pgwarden-demo. See deploy/pgwarden.example.toml for every key."
    )?;
    writeln!(
        t,
        "[node]\nname = \"node{i}\"\nruntime_dir = \"{dir}/run\"\nstate_dir = \"{dir}/state\"\n"
    )?;
    writeln!(
        t,
        "[proxy]\nlisten = \"127.0.0.1:{}\"\nauth_file = \"{}\"\nmetrics_listen = \"127.0.0.1:{}\"\n",
        args.port - i as u16,
        auth_file.display(),
        metrics_port(args, i)
    )?;
    writeln!(
        t,
        "[monitor]\nmetrics_listen = \"127.0.0.1:{p}\"\n# The status page, on the metrics' listener: open it in a browser.\nhttp_listen = \"127.0.0.1:{p}\"\n",
        p = metrics_port(args, i) + 1
    )?;
    writeln!(
        t,
        "[health_check]\nuser = \"pgwarden\"\npassword = \"pgwarden\"\n"
    )?;
    writeln!(
        t,
        "# Builtin failover logs in as the superuser (trusted on loopback in this demo)."
    )?;
    let rejoin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/scripts/pgwarden-rejoin");
    writeln!(
        t,
        "[failover]\nuser = \"postgres\"\n# `pgwardenctl rejoin pg0` runs this: pg_rewind, then pg0 follows the primary.\nrejoin_command = \"{} %D %H %r %a\"\n",
        rejoin.display()
    )?;
    if args.nodes > 1 {
        let port = |j: usize| args.watchdog_port + j as u16;
        let peers: Vec<String> = (0..args.nodes)
            .filter(|j| *j != i)
            .map(|j| format!("\"127.0.0.1:{}\"", port(j)))
            .collect();
        writeln!(
            t,
            "# Three watchdogs on loopback; no delegate IP (set watchdog.delegate_ip on real hosts).\n\
             [watchdog]\nenabled = true\nlisten = \"127.0.0.1:{}\"\npeers = [{}]\nauth_key_file = \"{}\"\nmetrics_listen = \"127.0.0.1:{}\"\n",
            port(i),
            peers.join(", "),
            key_file.display(),
            metrics_port(args, i) + 2
        )?;
    }
    for n in cluster.nodes() {
        writeln!(
            t,
            "[[backends]]\nname = \"{}\"\nhost = \"{}\"\nport = {}\ndata_dir = \"{}\"\n",
            n.name(),
            n.host(),
            n.port(),
            n.data_dir().display()
        )?;
    }
    Ok(t)
}

/// Node `i`'s proxy metrics port; its monitor's is one more, its watchdog's two.
fn metrics_port(args: &Args, i: usize) -> u16 {
    args.metrics_port + 10 * i as u16
}

fn env_lines(args: &Args, cluster: &Cluster, config: &Path) -> String {
    let mut env = String::new();
    let _ = writeln!(env, "PROXY_PORT={}", args.port);
    let _ = writeln!(env, "STATUS_PORT={}", metrics_port(args, 0) + 1);
    let _ = writeln!(env, "DEMO_USER={}", args.user);
    let _ = writeln!(env, "DEMO_PASSWORD={}", args.password);
    let _ = writeln!(env, "CONFIG={}", config.display());
    let _ = writeln!(env, "PG_NODES={}", cluster.nodes().len());
    if let Ok(bin) = pgwarden_testkit::pg_bin_dir() {
        let _ = writeln!(env, "PG_BIN_DIR={}", bin.display());
    }
    for (i, n) in cluster.nodes().iter().enumerate() {
        let _ = writeln!(env, "PG{i}_PORT={}", n.port());
        let _ = writeln!(env, "PG{i}_DATA_DIR={}", n.data_dir().display());
        let _ = writeln!(env, "PG_SOCKET_DIR{i}={}", n.socket_dir().display());
    }
    env
}

fn print_welcome(args: &Args, cluster: &Cluster, config: &Path) {
    let nodes = args.nodes.max(1);
    println!();
    println!("pgwarden demo is running.");
    for (i, n) in cluster.nodes().iter().enumerate() {
        let role = if i == 0 { "primary" } else { "standby" };
        println!("  {:<8} {} on {}:{}", role, n.name(), n.host(), n.port());
    }
    for i in 0..nodes {
        let wd = if nodes > 1 {
            format!("watchdog on 127.0.0.1:{}, ", args.watchdog_port + i as u16)
        } else {
            String::new()
        };
        println!(
            "  node{i}    {wd}monitor, proxy on 127.0.0.1:{}",
            args.port - i as u16
        );
    }
    println!();
    println!(
        "The cluster at a glance, in a browser: http://127.0.0.1:{}/ (node0's monitor; node i's is 10 i ports up)",
        metrics_port(args, 0) + 1
    );
    println!();
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} password={} dbname={}",
        args.port, args.user, args.password, args.user
    );
    println!("Connect through node0's proxy (any node's proxy reaches the same primary):");
    println!("  psql \"{conninfo}\"");
    println!();
    println!("Watch a failover. In one terminal, ask which server answers, twice a second:");
    println!(
        "  while sleep 0.5; do psql \"{conninfo}\" -XAtc \"SELECT now()::time(0), inet_server_port(), pg_is_in_recovery()\"; done"
    );
    if let (Ok(bin), Some(primary)) = (pgwarden_testkit::pg_bin_dir(), cluster.nodes().first()) {
        let as_user = if pgwarden_testkit::os_user().is_some() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        println!("In another, kill the primary, then look at the cluster:");
        println!(
            "  {as_user}{}/pg_ctl stop -m immediate -D {}",
            bin.display(),
            primary.data_dir().display()
        );
        println!(
            "  target/release/pgwardenctl --config {} status",
            config.display()
        );
        println!("  tail -f {}/node*/monitor.log", args.dir.display());
        println!("Then make {} a standby of the new primary:", primary.name());
        println!(
            "  target/release/pgwardenctl --config {} rejoin {} --wait",
            config.display(),
            primary.name()
        );
    }
    println!();
    println!(
        "Configs and logs: {}/node*/   Server logs: {}/postgres/pg*/log",
        args.dir.display(),
        args.dir.display()
    );
    println!("Press Ctrl-C to stop everything.");
}
