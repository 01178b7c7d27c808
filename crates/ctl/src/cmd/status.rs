//! `pgwardenctl status`: GetCluster, as a table or JSON.

use std::io::Write;

use crate::CtlError;
use crate::monitor::Monitor;

/// Prints the current state.
pub async fn run(monitor: &mut Monitor, json: bool, out: &mut impl Write) -> Result<(), CtlError> {
    super::print(out, json, &monitor.get_cluster().await?)
}
