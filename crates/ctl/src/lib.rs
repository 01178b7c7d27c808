/*!
`pgwardenctl`: pgwarden's admin CLI, what pgpool-II's `pcp_*` commands are
to pgpool. A gRPC client of `pgwarden-monitor` on
`<node.runtime_dir>/monitor.sock`, and (for `watchdog`) of
`pgwarden-watchdog` on `<node.runtime_dir>/watchdog.sock`, and (for
`pools`, `clients`, `pause`, `resume`, `reload`, `terminate`) of
`pgwarden-proxy` on `<node.runtime_dir>/proxy.sock`.

- [`cli::Cli`]: the command line as typed (clap derive): `--config`,
  `--socket`, `--watchdog-socket`, `--proxy-socket`, `--json` and the
  [`cli::Command`] (`status` by default, `watch`, `attach`, `detach`,
  `promote`, `recheck`, `watchdog`, and the proxy's `pools`, `clients`,
  `pause`, `resume`, `reload`, `terminate`).
- [`run`]: finds the daemon's socket ([`monitor_socket`],
  [`watchdog_socket`]: from the flag, or from the config, which is loaded
  and validated whole so a broken config is reported), connects, and runs
  the command, writing to the given output. The binary passes stdout and
  Ctrl-C; tests pass buffers and their own signals.
- [`CtlError`]: every failure, with a one-line reason and its exit status
  ([`CtlError::exit_code`]): 1 when the monitor refused or failed the
  request, 2 for usage, config and connection errors.

Inside, one module per command (`cmd/`), the socket with its deadline and
gRPC-to-operator error mapping (`socket`), one client per daemon (`monitor`,
`watchdog`, `proxy`), backend name resolution (`resolve`), and the output formats as
pure functions (`render`: the status table, the watch line, the watchdog
view, JSON).
*/

#[macro_use]
mod socket;

pub mod cli;
mod cmd;
mod error;
mod monitor;
mod proxy;
mod render;
mod resolve;
mod watchdog;

use std::io::Write;
use std::path::PathBuf;

use pgwarden_proto::uds::{Daemon, socket_path};

pub use error::{CtlError, EXIT_FAILED, EXIT_USAGE};
pub use socket::REQUEST_TIMEOUT;

use cli::Cli;

/// Runs the command `cli` asks for against the monitor (or, for
/// `watchdog`, the watchdog), writing its output to `out`. `interrupt`
/// (Ctrl-C in the binary) ends `watch` and `watchdog --watch` successfully
/// and `promote --wait` with an error; other commands ignore it.
pub async fn run(
    cli: &Cli,
    out: &mut impl Write,
    interrupt: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    cmd::dispatch(cli, out, interrupt).await
}

/// The monitor's socket: `--socket` as given, or else
/// `<node.runtime_dir>/monitor.sock` from the config at `--config` (loaded
/// with its `PGWARDEN_*` overrides and validated).
pub fn monitor_socket(cli: &Cli) -> Result<PathBuf, CtlError> {
    daemon_socket(cli, cli.socket.as_ref(), Daemon::Monitor)
}

/// The proxy's socket: `--proxy-socket` as given, or else
/// `<node.runtime_dir>/proxy.sock` from the config at `--config`.
pub fn proxy_socket(cli: &Cli) -> Result<PathBuf, CtlError> {
    daemon_socket(cli, cli.proxy_socket.as_ref(), Daemon::Proxy)
}

/// The watchdog's socket: `--watchdog-socket` as given, or else
/// `<node.runtime_dir>/watchdog.sock` from the config at `--config`.
/// `--socket` is the monitor's and plays no part.
pub fn watchdog_socket(cli: &Cli) -> Result<PathBuf, CtlError> {
    daemon_socket(cli, cli.watchdog_socket.as_ref(), Daemon::Watchdog)
}

/// Where `daemon` is reached: through the remote admin API of `--host`
/// (with `--ca`, `--cert`, `--key`), or else on its local socket
/// ([`monitor_socket`], [`proxy_socket`], [`watchdog_socket`]).
pub fn place(cli: &Cli, daemon: Daemon) -> Result<socket::Place, CtlError> {
    use pgwarden_tls::PemFile;
    if let Some(address) = &cli.host {
        let ca = cli.ca.as_deref().unwrap_or(std::path::Path::new(""));
        let identity = cli
            .cert
            .as_deref()
            .zip(cli.key.as_deref())
            .map(|(cert, key)| {
                (
                    PemFile {
                        key: "--cert",
                        path: cert,
                    },
                    PemFile {
                        key: "--key",
                        path: key,
                    },
                )
            });
        let tls = pgwarden_tls::mutual_client(
            PemFile {
                key: "--ca",
                path: ca,
            },
            identity,
        )?;
        return Ok(socket::Place::Remote {
            address: address.clone(),
            tls,
        });
    }
    let path = match daemon {
        Daemon::Monitor => monitor_socket(cli)?,
        Daemon::Proxy => proxy_socket(cli)?,
        Daemon::Watchdog => watchdog_socket(cli)?,
    };
    Ok(socket::Place::Unix(path))
}

fn daemon_socket(cli: &Cli, given: Option<&PathBuf>, daemon: Daemon) -> Result<PathBuf, CtlError> {
    if let Some(path) = given {
        return Ok(path.clone());
    }
    let config = pgwarden_config::Config::load(&cli.config)?;
    Ok(socket_path(&config.node.runtime_dir, daemon))
}

#[cfg(test)]
mod tests;
