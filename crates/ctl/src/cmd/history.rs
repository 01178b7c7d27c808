//! `pgwardenctl history`: the failovers and switchovers the monitor
//! decided (see [`crate::render::history_text`]).

use std::io::Write;

use crate::CtlError;
use crate::monitor::Monitor;
use crate::render::{history_json, history_text};

/// Prints the history.
pub async fn run(monitor: &mut Monitor, json: bool, out: &mut impl Write) -> Result<(), CtlError> {
    let reply = monitor.history().await?;
    super::print(out, json, || history_json(&reply), || history_text(&reply))
}
