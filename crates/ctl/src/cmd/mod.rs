//! One module per command; this one only dispatches.

mod change;
mod recheck;
mod status;
mod watch;

use std::io::{self, Write};

use serde_json::Value;

use crate::CtlError;
use crate::cli::Command;
use crate::monitor::Monitor;

/// Runs `command` against the connected monitor, writing to `out`;
/// `interrupt` ends `watch` (and `promote --wait`).
pub async fn dispatch(
    command: Command,
    json: bool,
    monitor: &mut Monitor,
    out: &mut impl Write,
    interrupt: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    match command {
        Command::Status => status::run(monitor, json, out).await,
        Command::Watch => watch::run(monitor, json, out, interrupt).await,
        Command::Attach(target) => change::attach(monitor, &target, json, out).await,
        Command::Detach(target) => change::detach(monitor, &target, json, out).await,
        Command::Promote(args) => change::promote(monitor, &args, json, out, interrupt).await,
        Command::Recheck => recheck::run(monitor, json, out).await,
    }
}

/// Writes `value` as indented JSON and a newline.
fn write_json(out: &mut impl Write, value: &Value) -> Result<(), CtlError> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}
