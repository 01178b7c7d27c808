//! The `pgwarden-monitor` binary: flags, config, logs, signals; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Health and replication checks of every backend, and automatic failover.
#[derive(Debug, Parser)]
#[command(name = "pgwarden-monitor", version)]
struct Args {
    /// The node config file.
    #[arg(long, default_value = pgwarden_config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

fn main() -> ExitCode {
    pgwarden_daemon::main("pgwarden-monitor", Args::parse, run)
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = pgwarden_config::Config::load(&args.config)?;
    let settings = pgwarden_monitor::settings::Settings::from_config(&config)?;
    pgwarden_daemon::until_stopped(2, |stop| pgwarden_monitor::runtime::run(settings, stop))??;
    Ok(())
}
