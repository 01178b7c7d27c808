//! `pgwarden-cluster`: starts a [`Cluster`] for shell scripts (bench, demo),
//! writes its ports to an env file, and stops it on SIGINT/SIGTERM.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use nix::sys::signal::Signal;
use pgwarden_testkit::{Cluster, PasswordKind, pg_bin_dir};

mod common;

/// Start a PostgreSQL primary with streaming standbys on 127.0.0.1 and keep it
/// running until SIGINT or SIGTERM.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Number of streaming standbys.
    #[arg(long, default_value_t = 2)]
    standbys: usize,
    /// Build the cluster in this directory (kept after exit) instead of a temp
    /// dir (removed on exit).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write shell `KEY=value` lines (PG0_PORT, PG_SOCKET_DIR0, PGHOST,
    /// PG_BIN_DIR, BASE_DIR...) here once the cluster is up.
    #[arg(long)]
    env_file: Option<PathBuf>,
    /// Create this login role (password stored as SCRAM-SHA-256).
    #[arg(long, requires = "password")]
    user: Option<String>,
    /// Password of --user.
    #[arg(long, requires = "user")]
    password: Option<String>,
    /// Create this login role (password stored as md5).
    #[arg(long, requires = "md5_password")]
    md5_user: Option<String>,
    /// Password of --md5-user.
    #[arg(long, requires = "md5_user")]
    md5_password: Option<String>,
    /// Extra postgresql.conf setting on every node, `key=value` (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_setting)]
    config: Vec<(String, String)>,
    /// Extra pg_hba.conf line, placed before the defaults (repeatable).
    #[arg(long)]
    hba: Vec<String>,
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}

fn main() -> ExitCode {
    common::exit_code("pgwarden-cluster", run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    // Block the stop signals before anything else (and before any thread
    // exists): the cluster is always stopped cleanly.
    let stop_signals = common::block(&[Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP])?;

    let mut builder = Cluster::builder().standbys(args.standbys);
    if let Some(dir) = args.dir {
        builder = builder.base_dir(dir);
    }
    for (key, value) in &args.config {
        builder = builder.config(key, value);
    }
    for line in &args.hba {
        builder = builder.hba(line);
    }
    let cluster = builder.start()?;
    if let (Some(user), Some(password)) = (&args.user, &args.password) {
        cluster.create_user(user, password, PasswordKind::Scram)?;
    }
    if let (Some(user), Some(password)) = (&args.md5_user, &args.md5_password) {
        cluster.create_user(user, password, PasswordKind::Md5)?;
    }

    let env = env_file(&cluster)?;
    if let Some(path) = &args.env_file {
        // Write then rename: scripts poll for the file and must never read
        // half of it.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &env).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    }
    for (i, node) in cluster.nodes().iter().enumerate() {
        let role = if i == 0 { "primary" } else { "standby" };
        println!("{} {}:{} {role}", node.name(), node.host(), node.port());
    }
    println!("ready; base dir {}", cluster.base_dir().display());

    let signal = stop_signals.wait().context("wait for a signal")?;
    eprintln!("pgwarden-cluster: {signal}, stopping");
    drop(cluster);
    Ok(())
}

/// The env file: shell `KEY=value` lines describing the cluster.
fn env_file(cluster: &Cluster) -> anyhow::Result<String> {
    let mut env = String::new();
    writeln!(env, "PGHOST=127.0.0.1")?;
    writeln!(env, "PG_NODES={}", cluster.nodes().len())?;
    writeln!(env, "PG_BIN_DIR={}", pg_bin_dir()?.display())?;
    writeln!(env, "BASE_DIR={}", cluster.base_dir().display())?;
    for (i, node) in cluster.nodes().iter().enumerate() {
        writeln!(env, "PG{i}_PORT={}", node.port())?;
        writeln!(env, "PG{i}_DATA_DIR={}", node.data_dir().display())?;
        writeln!(env, "PG_SOCKET_DIR{i}={}", node.socket_dir().display())?;
    }
    Ok(env)
}
