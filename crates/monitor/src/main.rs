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
    pgwarden_daemon::reset_signal_mask();
    let args = Args::parse();
    pgwarden_daemon::run_main("pgwarden-monitor", || run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = pgwarden_config::Config::load(&args.config)?;
    let settings = pgwarden_monitor::settings::Settings::from_config(&config)?;
    pgwarden_daemon::runtime(2)?.block_on(async move {
        pgwarden_monitor::runtime::run(settings, pgwarden_daemon::stop_signal()?).await?;
        Ok(())
    })
}
