//! `[node]`: who this node is and where its daemons keep files.

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::validate;

/// `[node]`: identity and directories shared by every daemon on the host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// `node.name`: unique in the cluster; names this node to the watchdog
    /// peers and in metrics. Required.
    pub name: String,
    /// `node.runtime_dir`: where `proxy.sock`, `monitor.sock` and
    /// `watchdog.sock` live.
    #[serde(default = "default_runtime_dir")]
    pub runtime_dir: PathBuf,
    /// `node.state_dir`: the watchdog's raft log and the last known cluster
    /// state.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

/// Default of `node.runtime_dir`.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/pgwarden";
/// Default of `node.state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pgwarden";

fn default_runtime_dir() -> PathBuf {
    PathBuf::from(DEFAULT_RUNTIME_DIR)
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

impl NodeConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        validate::non_empty("node.name", &self.name)?;
        if self.runtime_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "node.runtime_dir",
                "must not be empty",
            ));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("node.state_dir", "must not be empty"));
        }
        Ok(())
    }
}
