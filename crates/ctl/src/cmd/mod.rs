//! One module per command; this one only dispatches.

mod change;
mod history;
mod proxy;
mod recheck;
mod status;
mod watch;
mod watchdog;

use std::io::{self, Write};

use pgwarden_proto::uds::Daemon;
use serde_json::{Value, json};

use crate::CtlError;
use crate::cli::{Cli, Command};
use crate::monitor::Monitor;
use crate::proxy::Proxy;
use crate::watchdog::Watchdog;

/// Runs the command `cli` asks for, connected to the daemon it needs,
/// writing to `out`; `interrupt` ends `watch`, `watchdog --watch` (and
/// `promote --wait`).
pub async fn dispatch(
    cli: &Cli,
    out: &mut impl Write,
    interrupt: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    let json = cli.json;
    match cli.command_or_status() {
        Command::Status => status::run(&mut monitor(cli).await?, json, out).await,
        Command::Watch => watch::run(&mut monitor(cli).await?, json, out, interrupt).await,
        Command::Attach(target) => {
            change::attach_or_detach(&mut monitor(cli).await?, &target, true, json, out).await
        }
        Command::Detach(target) => {
            change::attach_or_detach(&mut monitor(cli).await?, &target, false, json, out).await
        }
        Command::Promote(args) => {
            change::promote(&mut monitor(cli).await?, &args, json, out, interrupt).await
        }
        Command::Rejoin(args) => {
            change::rejoin(&mut monitor(cli).await?, &args, json, out, interrupt).await
        }
        Command::Recheck => recheck::run(&mut monitor(cli).await?, json, out).await,
        Command::History => history::run(&mut monitor(cli).await?, json, out).await,
        Command::Watchdog(args) => {
            let mut watchdog = Watchdog::connect(crate::place(cli, Daemon::Watchdog)?).await?;
            watchdog::run(&mut watchdog, &args, json, out, interrupt).await
        }
        Command::Pools => proxy::pools(&mut proxy_api(cli).await?, json, out).await,
        Command::Clients => proxy::clients(&mut proxy_api(cli).await?, json, out).await,
        Command::Pause => proxy::pause(&mut proxy_api(cli).await?, json, out).await,
        Command::Resume => proxy::resume(&mut proxy_api(cli).await?, json, out).await,
        Command::Reload => proxy::reload(&mut proxy_api(cli).await?, json, out).await,
        Command::Terminate(args) => {
            proxy::terminate(&mut proxy_api(cli).await?, args.pid, json, out).await
        }
    }
}

/// The monitor, connected at [`crate::place`].
async fn monitor(cli: &Cli) -> Result<Monitor, CtlError> {
    Monitor::connect(crate::place(cli, Daemon::Monitor)?).await
}

/// The proxy's admin API, connected at [`crate::place`].
async fn proxy_api(cli: &Cli) -> Result<Proxy, CtlError> {
    Proxy::connect(crate::place(cli, Daemon::Proxy)?).await
}

/// Writes `value()` as indented JSON (see [`write_json`]) when `json`, else
/// `text()` as it is.
fn print(
    out: &mut impl Write,
    json: bool,
    value: impl FnOnce() -> Value,
    text: impl FnOnce() -> String,
) -> Result<(), CtlError> {
    if json {
        write_json(out, &value())
    } else {
        out.write_all(text().as_bytes())?;
        Ok(())
    }
}

/// Writes `text` as one line, or as JSON `{"message": text}`.
fn message(out: &mut impl Write, json: bool, text: &str) -> Result<(), CtlError> {
    print(
        out,
        json,
        || json!({ "message": text }),
        || format!("{text}\n"),
    )
}

/// Writes `value` as indented JSON and a newline.
fn write_json(out: &mut impl Write, value: &Value) -> Result<(), CtlError> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}
