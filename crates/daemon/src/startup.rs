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

/// [`shutdown_signal`] that also tells systemd the daemon is stopping when
/// the signal arrives: the `shutdown` the monitor's and the watchdog's
/// `run` take.
pub fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let signal = shutdown_signal()?;
    Ok(async {
        signal.await;
        crate::notify::stopping();
    })
}

/// A multi-threaded runtime of `workers` threads (the daemons keep to two:
/// the node's database servers need the cores more).
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
}

/// The shutdown future [`until_stopped`] hands its work: [`stop_signal`].
pub type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs `work` on a [`runtime`] of `workers` threads until it ends, with
/// [`stop_signal`] as its shutdown: the monitor's and the watchdog's life
/// once their settings are taken. An error means the runtime or the signal
/// handlers could not be set up; `work`'s own outcome is returned as it is.
pub fn until_stopped<F: std::future::Future>(
    workers: usize,
    work: impl FnOnce(Shutdown) -> F,
) -> std::io::Result<F::Output> {
    runtime(workers)?.block_on(async move { Ok(work(Box::pin(stop_signal()?)).await) })
}

/// A daemon's whole `main`: clears the signal mask (see
/// [`reset_signal_mask`]) before anything else, takes the flags with `args`
/// (clap's `Parser::parse`, which exits on `--help` or a bad flag), and
/// runs `work` on them through [`run_main`].
pub fn main<A, E>(
    name: &str,
    args: impl FnOnce() -> A,
    work: impl FnOnce(A) -> Result<(), E>,
) -> std::process::ExitCode
where
    E: AsRef<dyn std::error::Error + Send + Sync + 'static>,
{
    reset_signal_mask();
    let args = args();
    run_main(name, || work(args))
}

/// What every daemon's `main` does around its work: starts the logs, runs
/// `work` and turns its error into one line on stderr and a failing exit
/// code (see [`one_line`]).
pub fn run_main<E>(name: &str, work: impl FnOnce() -> Result<(), E>) -> std::process::ExitCode
where
    E: AsRef<dyn std::error::Error + Send + Sync + 'static>,
{
    init_logs();
    match work() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {}", one_line(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `error: cause: cause`, leaving out
/// a cause its error already says (many messages name their cause).
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read config file /x: {source}")]
    struct Says {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("node.state_dir")]
    struct Wraps {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn a_cause_is_written_once() {
        let io = || std::io::Error::other("permission denied");
        assert_eq!(
            one_line(&Says { source: io() }),
            "cannot read config file /x: permission denied"
        );
        assert_eq!(
            one_line(&Wraps { source: io() }),
            "node.state_dir: permission denied"
        );
    }
}
