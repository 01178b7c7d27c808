//! `[watchdog]`: the pgwarden-watchdog daemon (peer election and the
//! delegate IP).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use crate::error::ConfigError;
use crate::validate;

/// `[watchdog]`: the peers this node elects a leader with, and the virtual
/// IP the leader holds (pgpool's watchdog).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchdogConfig {
    /// `watchdog.enabled`: run the watchdog at all.
    pub enabled: bool,
    /// `watchdog.listen`: where peers connect.
    pub listen: SocketAddr,
    /// `watchdog.peers`: the other watchdogs as `"host:port"` (validated:
    /// a host name or IP, IPv6 in brackets, and a port 1..=65535).
    pub peers: Vec<String>,
    /// `watchdog.priority`: a higher priority is preferred as leader.
    pub priority: u32,
    /// `watchdog.auth_key_file`: the shared key peers authenticate with.
    /// Read by the watchdog, which checks its mode with
    /// [`crate::check_secret_file_mode`].
    pub auth_key_file: PathBuf,
    /// `watchdog.delegate_ip`: the virtual IP held by the leader; `""` in
    /// the file = `None` = no virtual IP.
    #[serde(deserialize_with = "empty_as_no_ip")]
    pub delegate_ip: Option<IpAddr>,
    /// `watchdog.if_up_cmd`: brings the delegate IP up (`$_IP_$` = the IP).
    pub if_up_cmd: String,
    /// `watchdog.if_down_cmd`: takes the delegate IP down.
    pub if_down_cmd: String,
    /// `watchdog.arping_cmd`: announces the delegate IP after bringing it up.
    pub arping_cmd: String,
    /// `watchdog.metrics_listen`: Prometheus `/metrics` of the watchdog.
    pub metrics_listen: SocketAddr,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 9000)),
            peers: Vec::new(),
            priority: 1,
            auth_key_file: PathBuf::from("/etc/pgwarden/watchdog.key"),
            delegate_ip: None,
            if_up_cmd: "ip addr add $_IP_$/24 dev eth0 label eth0:0".to_owned(),
            if_down_cmd: "ip addr del $_IP_$/24 dev eth0".to_owned(),
            arping_cmd: "arping -U $_IP_$ -I eth0 -w 1".to_owned(),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9932)),
        }
    }
}

impl WatchdogConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (i, peer) in self.peers.iter().enumerate() {
            let key = format!("watchdog.peers[{i}]");
            validate::host_port(&key, peer)?;
            if let Some(first) = self.peers.iter().position(|p| p == peer)
                && first < i
            {
                return Err(ConfigError::invalid(
                    key,
                    format!("duplicate peer {peer:?} (also watchdog.peers[{first}])"),
                ));
            }
        }
        if self.enabled && self.auth_key_file.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "watchdog.auth_key_file",
                "must not be empty when watchdog.enabled = true",
            ));
        }
        Ok(())
    }
}

/// `""` = no delegate IP; anything else must be an IP address.
fn empty_as_no_ip<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<IpAddr>, D::Error> {
    let value = String::deserialize(deserializer)?;
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| serde::de::Error::custom("invalid IP address"))
}
