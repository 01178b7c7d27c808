//! The `pgwarden-watchdog` binary: flags, config, logs, signals; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Raft leader election among the pgwarden nodes, failover consensus and the delegate IP.
#[derive(Debug, Parser)]
#[command(name = "pgwarden-watchdog", version)]
struct Args {
    /// The node config file.
    #[arg(long, default_value = pgwarden_config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Internal: run as the delegate-IP guard of the parent watchdog.
    #[arg(long, hide = true, requires_all = ["vip", "vip_down_cmd", "vip_confirmed"])]
    vip_guard: bool,
    /// Internal: the delegate IP the guard takes down.
    #[arg(long, hide = true)]
    vip: Option<String>,
    /// Internal: the command that takes it down.
    #[arg(long, hide = true)]
    vip_down_cmd: Option<String>,
    /// Internal: when (`CLOCK_BOOTTIME` ms) a quorum last confirmed the
    /// watchdog's lead as the guard starts; later ones come on stdin.
    #[arg(long, hide = true)]
    vip_confirmed: Option<u64>,
}

fn main() -> ExitCode {
    pgwarden_daemon::reset_signal_mask();
    let args = Args::parse();
    if args.vip_guard {
        let (ip, cmd) = (
            args.vip.unwrap_or_default(),
            args.vip_down_cmd.unwrap_or_default(),
        );
        // Required with --vip-guard; 0 would take the IP down at once.
        let confirmed = args.vip_confirmed.unwrap_or(0);
        return pgwarden_watchdog::vip::guard(&ip, &cmd, confirmed);
    }
    pgwarden_daemon::run_main("pgwarden-watchdog", || run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = pgwarden_config::Config::load(&args.config)?;
    let settings = pgwarden_watchdog::settings::Settings::from_config(&config)?;
    pgwarden_daemon::until_stopped(2, |stop| pgwarden_watchdog::runtime::run(settings, stop))??;
    Ok(())
}
