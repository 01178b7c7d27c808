//! The `pgwarden-proxy` binary: flags, config, logs, signals; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pgwarden_daemon::notify;
use tokio::signal::unix::{SignalKind, signal};

/// PostgreSQL proxy with authentication, a server connection cache and primary routing.
#[derive(Debug, Parser)]
#[command(name = "pgwarden-proxy", version)]
struct Args {
    /// The node config file.
    #[arg(long, default_value = pgwarden_config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

fn main() -> ExitCode {
    pgwarden_daemon::main("pgwarden-proxy", Args::parse, run)
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = pgwarden_config::Config::load(&args.config)?;
    let settings = pgwarden_proxy::Settings::from_config(&config);
    // One thread (the default) runs everything on the main thread: no
    // work stealing, no wakeups across threads.
    let runtime = match config.proxy.worker_threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => pgwarden_daemon::runtime(n as usize)?,
    };
    runtime.block_on(async move {
        let proxy = pgwarden_proxy::Proxy::bind(settings).await?;
        let handle = proxy.handle();
        let mut hup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                notify::reloading();
                // Logged by the reload itself.
                let _ = handle.reload().await;
                notify::reloaded();
            }
        });
        // Every client runs on this runtime (one thread by default): a
        // ping from one of its tasks shows the runtime turns.
        tokio::spawn(async {
            let mut pinger = notify::Pinger::from_env();
            loop {
                pinger.due().await;
                pinger.ping();
            }
        });
        let shutdown = pgwarden_daemon::stop_signal()?;
        notify::ready();
        // A task of its own, not the runtime's main future: a wake of the
        // main future (at each accept) costs a write to the runtime's
        // eventfd, a task's costs nothing.
        tokio::spawn(async move { proxy.serve(shutdown).await })
            .await
            .map_err(|e| anyhow::anyhow!("the accept loop failed: {e}"))?;
        Ok(())
    })
}
