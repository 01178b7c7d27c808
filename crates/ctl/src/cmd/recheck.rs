//! `pgwardenctl recheck`: have the monitor check every backend now.

use std::io::Write;

use crate::CtlError;
use crate::monitor::Monitor;

const MESSAGE: &str = "recheck requested: the monitor checks every backend now";

/// Asks for the recheck; the results show in `status` once the checks ran.
pub async fn run(monitor: &mut Monitor, json: bool, out: &mut impl Write) -> Result<(), CtlError> {
    monitor.recheck().await?;
    super::message(out, json, MESSAGE)
}
