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
    pgwarden_daemon::init_logs();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgwarden-monitor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = pgwarden_config::Config::load(&args.config)?;
    let settings = pgwarden_monitor::settings::Settings::from_config(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let signal = pgwarden_daemon::shutdown_signal()?;
        let shutdown = async {
            signal.await;
            pgwarden_daemon::notify::stopping();
        };
        pgwarden_monitor::runtime::run(settings, shutdown).await?;
        Ok(())
    })
}
