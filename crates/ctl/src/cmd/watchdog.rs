//! `pgwardenctl watchdog` (`wd`): GetStatus of this node's watchdog, as
//! text or JSON (pcp_watchdog_info); with `--watch`, WatchLeadership, one
//! line per change until interrupted.

use std::io::Write;

use crate::CtlError;
use crate::cli::WatchdogArgs;
use crate::render::{leadership_line, watchdog_json};
use crate::watchdog::Watchdog;

/// Prints the watchdog's status, or follows it with `--watch`.
pub async fn run(
    watchdog: &mut Watchdog,
    args: &WatchdogArgs,
    json: bool,
    out: &mut impl Write,
    interrupt: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    if args.watch {
        return watch(watchdog, json, out, interrupt).await;
    }
    super::print(out, json, &watchdog.get_status().await?)
}

/// The current status's line, then one per event, until `interrupt`
/// completes. Text skips a line equal to the previous one (an event about
/// something the line leaves out, such as a down vote); JSON prints every
/// event, one per line. The watchdog going away is an error: the operator
/// must know the stream stopped.
async fn watch(
    watchdog: &mut Watchdog,
    json: bool,
    out: &mut impl Write,
    interrupt: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    let mut events = watchdog.watch().await?;
    let mut interrupt = std::pin::pin!(interrupt);
    let mut last = None;
    loop {
        let status = tokio::select! {
            () = &mut interrupt => return Ok(()),
            status = events.next() => status?,
        };
        if json {
            writeln!(out, "{}", watchdog_json(&status))?;
        } else {
            let line = leadership_line(&status);
            if last.as_ref() == Some(&line) {
                continue;
            }
            writeln!(out, "{line}")?;
            last = Some(line);
        }
        out.flush()?;
    }
}
