/*!
`pgwardenctl`: pgwarden's admin CLI, what pgpool-II's `pcp_*` commands are
to pgpool. For now it is a gRPC client of `pgwarden-monitor` alone, on
`<node.runtime_dir>/monitor.sock`.

- [`cli::Cli`]: the command line as typed (clap derive): `--config`,
  `--socket`, `--json` and the [`cli::Command`] (`status` by default,
  `watch`, `attach`, `detach`, `promote`, `recheck`).
- [`run`]: finds the monitor's socket ([`monitor_socket`]: from `--socket`,
  or from the config, which is loaded and validated whole so a broken
  config is reported), connects, and runs the command, writing to the given
  output. The binary passes stdout and Ctrl-C; tests pass buffers and their
  own signals.
- [`CtlError`]: every failure, with a one-line reason and its exit status
  ([`CtlError::exit_code`]): 1 when the monitor refused or failed the
  request, 2 for usage, config and connection errors.

Inside, one module per command (`cmd/`), the connection with its deadline
and gRPC-to-operator error mapping (`monitor`), backend name resolution
(`resolve`), and the output formats as pure functions (`render`: the status
table, the watch line, JSON).
*/

pub mod cli;
mod cmd;
mod error;
mod monitor;
mod render;
mod resolve;

use std::io::Write;
use std::path::PathBuf;

use pgwarden_proto::uds::{Daemon, socket_path};

pub use error::{CtlError, EXIT_FAILED, EXIT_USAGE};
pub use monitor::REQUEST_TIMEOUT;

use cli::Cli;

/// Runs the command `cli` asks for against the monitor, writing its output
/// to `out`. `interrupt` (Ctrl-C in the binary) ends `watch` successfully
/// and `promote --wait` with an error; other commands ignore it.
pub async fn run(
    cli: &Cli,
    out: &mut impl Write,
    interrupt: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    let path = monitor_socket(cli)?;
    let mut monitor = monitor::Monitor::connect(&path).await?;
    cmd::dispatch(
        cli.command_or_status(),
        cli.json,
        &mut monitor,
        out,
        interrupt,
    )
    .await
}

/// The monitor's socket: `--socket` as given, or else
/// `<node.runtime_dir>/monitor.sock` from the config at `--config` (loaded
/// with its `PGWARDEN_*` overrides and validated).
pub fn monitor_socket(cli: &Cli) -> Result<PathBuf, CtlError> {
    if let Some(path) = &cli.socket {
        return Ok(path.clone());
    }
    let config = pgwarden_config::Config::load(&cli.config)?;
    Ok(socket_path(&config.node.runtime_dir, Daemon::Monitor))
}

#[cfg(test)]
mod tests;
