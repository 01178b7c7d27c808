//! One module per command; this one dispatches, and holds what they share:
//! printing a reply as JSON or text ([`print`]) and following a stream
//! ([`follow`]).

mod change;
mod history;
mod proxy;
mod recheck;
mod status;
mod watch;
mod watchdog;

use std::io::{self, Write};

use pgwarden_proto::uds::Daemon;
use pgwarden_proto::v1::{
    ChangeReply, ClientInfo, ClusterState, GetHistoryReply, GetPoolsReply, WatchdogStatus,
};
use serde_json::{Value, json};

use crate::CtlError;
use crate::cli::{Cli, Command};
use crate::monitor::Monitor;
use crate::proxy::Proxy;
use crate::render::{
    change_json, clients_json, clients_text, history_json, history_text, now_unix_ms, pools_json,
    pools_text, state_json, status_text, watchdog_json, watchdog_text,
};
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
        Command::Watch => {
            let mut monitor = monitor(cli).await?;
            follow(monitor.watch().await?, json, out, interrupt).await
        }
        Command::Attach(target) => {
            change::attach_or_detach(&mut monitor(cli).await?, &target, true, json, out).await
        }
        Command::Detach(target) => {
            change::attach_or_detach(&mut monitor(cli).await?, &target, false, json, out).await
        }
        Command::Promote(args) => {
            let change = change::Waited::Promote(&args);
            change::waited(&mut monitor(cli).await?, change, json, out, interrupt).await
        }
        Command::Rejoin(args) => {
            let change = change::Waited::Rejoin(&args);
            change::waited(&mut monitor(cli).await?, change, json, out, interrupt).await
        }
        Command::Recheck => recheck::run(&mut monitor(cli).await?, json, out).await,
        Command::History => history::run(&mut monitor(cli).await?, json, out).await,
        Command::Watchdog(args) => {
            let mut watchdog = Watchdog::connect(crate::place(cli, Daemon::Watchdog)?).await?;
            if args.watch {
                let events = watchdog.watch().await?;
                follow(watchdog::Leadership::new(events), json, out, interrupt).await
            } else {
                watchdog::status(&mut watchdog, json, out).await
            }
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

/// What a command prints: as JSON with `--json`, else as text.
trait Printed {
    /// The `--json` form.
    fn json(&self) -> Value;
    /// The text form: whole lines.
    fn text(&self) -> String;
}

/// Implements [`Printed`] for each type from its JSON and its text render
/// functions.
macro_rules! printed {
    ($($(#[$doc:meta])* $type:ty: $json:expr, $text:expr;)+) => {
        $(
            $(#[$doc])*
            impl Printed for $type {
                fn json(&self) -> Value {
                    let json: fn(&$type) -> Value = $json;
                    json(self)
                }
                fn text(&self) -> String {
                    let text: fn(&$type) -> String = $text;
                    text(self)
                }
            }
        )+
    };
}

/// A message of pgwardenctl's own: one line, or `{"message": ...}`.
struct Message<'a>(&'a str);

printed! {
    /// `status`: the table, with ages from now.
    ClusterState: state_json, |s| status_text(s, now_unix_ms());
    /// A change's answer: the monitor's message.
    ChangeReply: change_json, |r| format!("{}\n", r.message);
    GetHistoryReply: history_json, history_text;
    GetPoolsReply: pools_json, pools_text;
    /// `clients`, with ages from now.
    Vec<ClientInfo>: |c| clients_json(c), |c| clients_text(c, now_unix_ms());
    /// `watchdog`, with ages from now.
    WatchdogStatus: watchdog_json, |s| watchdog_text(s, now_unix_ms());
    Message<'_>: |m| json!({ "message": m.0 }), |m| format!("{}\n", m.0);
}

/// Writes `printed` as indented JSON (see [`write_json`]) when `json`, else
/// as text.
fn print(out: &mut impl Write, json: bool, printed: &impl Printed) -> Result<(), CtlError> {
    if json {
        write_json(out, &printed.json())
    } else {
        out.write_all(printed.text().as_bytes())?;
        Ok(())
    }
}

/// Writes `text` as one line, or as JSON `{"message": text}`.
fn message(out: &mut impl Write, json: bool, text: &str) -> Result<(), CtlError> {
    print(out, json, &Message(text))
}

/// A stream `watch` and `watchdog --watch` follow, one line per item.
trait Feed {
    /// What it streams.
    type Item;
    /// The next item; the daemon going away is an error.
    async fn next(&mut self) -> Result<Self::Item, CtlError>;
    /// The item's line: its JSON with `json`, else its text; `None` skips it.
    fn line(&mut self, item: &Self::Item, json: bool) -> Option<String>;
}

/// Writes the line of each item `feed` yields, flushed, until `interrupt`
/// completes. The daemon going away is an error: the operator must know
/// the stream stopped.
async fn follow(
    mut feed: impl Feed,
    json: bool,
    out: &mut impl Write,
    interrupt: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    let mut interrupt = std::pin::pin!(interrupt);
    loop {
        let item = tokio::select! {
            () = &mut interrupt => return Ok(()),
            item = feed.next() => item?,
        };
        if let Some(line) = feed.line(&item, json) {
            writeln!(out, "{line}")?;
            out.flush()?;
        }
    }
}

/// Writes `value` as indented JSON and a newline.
fn write_json(out: &mut impl Write, value: &Value) -> Result<(), CtlError> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}
