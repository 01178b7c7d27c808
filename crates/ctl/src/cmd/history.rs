//! `pgwardenctl history`: the failovers and switchovers the monitor
//! decided (see [`crate::render::history_text`]).

use std::io::Write;

use crate::CtlError;
use crate::monitor::Monitor;

/// Prints the history.
pub async fn run(monitor: &mut Monitor, json: bool, out: &mut impl Write) -> Result<(), CtlError> {
    super::print(out, json, &monitor.history().await?)
}
