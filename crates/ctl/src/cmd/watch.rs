//! `pgwardenctl watch`: WatchCluster, one line per generation, until
//! interrupted.

use std::io::Write;

use crate::CtlError;
use crate::monitor::Monitor;
use crate::render::{state_json, summary_line};

/// Prints the current state's line, then each new generation's as it is
/// committed; returns when `interrupt` completes. The monitor going away is
/// an error: the operator must know the stream stopped.
pub async fn run(
    monitor: &mut Monitor,
    json: bool,
    out: &mut impl Write,
    interrupt: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    let mut states = monitor.watch().await?;
    let mut interrupt = std::pin::pin!(interrupt);
    loop {
        let state = tokio::select! {
            () = &mut interrupt => return Ok(()),
            state = states.next() => state?,
        };
        if json {
            writeln!(out, "{}", state_json(&state))?;
        } else {
            writeln!(out, "{}", summary_line(&state))?;
        }
        out.flush()?;
    }
}
