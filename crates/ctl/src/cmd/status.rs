//! `pgwardenctl status`: GetCluster, as a table or JSON.

use std::io::Write;

use crate::CtlError;
use crate::monitor::Monitor;
use crate::render::{now_unix_ms, state_json, status_text};

/// Prints the current state.
pub async fn run(monitor: &mut Monitor, json: bool, out: &mut impl Write) -> Result<(), CtlError> {
    let state = monitor.get_cluster().await?;
    super::print(
        out,
        json,
        || state_json(&state),
        || status_text(&state, now_unix_ms()),
    )
}
