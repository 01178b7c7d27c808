//! Start-up steps every pgwarden daemon's `main` shares: logs and signals.

/// Logs to stderr through `tracing`, filtered by `PGWARDEN_LOG` (default
/// `info`, e.g. `PGWARDEN_LOG=debug`); colours only on a terminal. Server
/// notices that tokio-postgres logs (a health-check connection told the
/// server is shutting down) stay below info: the checks report them.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGWARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Clears the signal mask inherited from the launcher. A supervisor that
/// waits in `sigwait()` leaves SIGTERM blocked in its children, and a
/// daemon must hear SIGTERM whatever started it. Call first thing in `main`,
/// before any thread exists.
pub fn reset_signal_mask() {
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
}

/// Completes on the first SIGTERM or SIGINT, logging which: the `shutdown`
/// future every daemon's `run` takes. Call inside the runtime; an error means
/// the signal handlers could not be installed.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
