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
    /// `watchdog.advertise`: this node's address as the other nodes list it
    /// in their `peers`; `""` = `listen` when it names an address, else
    /// `<node.name>:<listen port>`. Every node derives the same member list
    /// (advertise plus peers, sorted) and the Raft ids from it.
    pub advertise: String,
    /// `watchdog.priority`: pgpool's wd_priority, accepted but unused: Raft
    /// elects the first node whose election timer fires among those with the
    /// newest log.
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
    /// `watchdog.escalation_cmd`: run when this node becomes leader, after
    /// it takes the delegate IP (pgpool: wd_escalation_command); `""` = none.
    pub escalation_cmd: String,
    /// `watchdog.de_escalation_cmd`: run when this node stops being leader,
    /// after it releases the delegate IP (pgpool: wd_de_escalation_command).
    pub de_escalation_cmd: String,
    /// `watchdog.tls_cert_file`: this node's certificate, shown to peers
    /// (as their server and as their client); with `tls_key_file` and
    /// `tls_ca_file`, peers talk mutual TLS. All three empty = plain TCP
    /// (messages still authenticated by the cluster key, not encrypted).
    pub tls_cert_file: PathBuf,
    /// `watchdog.tls_key_file`: its private key (mode 600 or 640).
    pub tls_key_file: PathBuf,
    /// `watchdog.tls_ca_file`: the cluster's CA; a peer whose certificate
    /// it did not sign is refused, and a peer's server certificate must
    /// name the host its address in `peers` gives.
    pub tls_ca_file: PathBuf,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 9000)),
            peers: Vec::new(),
            advertise: String::new(),
            priority: 1,
            auth_key_file: PathBuf::from("/etc/pgwarden/watchdog.key"),
            delegate_ip: None,
            if_up_cmd: "ip addr add $_IP_$/24 dev eth0 label eth0:0".to_owned(),
            if_down_cmd: "ip addr del $_IP_$/24 dev eth0".to_owned(),
            arping_cmd: "arping -U $_IP_$ -I eth0 -w 1".to_owned(),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9932)),
            escalation_cmd: String::new(),
            de_escalation_cmd: String::new(),
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            tls_ca_file: PathBuf::new(),
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
        if !self.advertise.is_empty() {
            validate::host_port("watchdog.advertise", &self.advertise)?;
            if let Some(i) = self.peers.iter().position(|p| *p == self.advertise) {
                return Err(ConfigError::invalid(
                    format!("watchdog.peers[{i}]"),
                    "lists this node's own watchdog.advertise address; peers are the other nodes",
                ));
            }
        }
        if self.enabled && self.auth_key_file.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "watchdog.auth_key_file",
                "must not be empty when watchdog.enabled = true",
            ));
        }
        validate::together(&[
            ("watchdog.tls_cert_file", self.tls_cert_file.as_path()),
            ("watchdog.tls_key_file", self.tls_key_file.as_path()),
            ("watchdog.tls_ca_file", self.tls_ca_file.as_path()),
        ])
    }
}

impl WatchdogConfig {
    /// Peers talk TLS (the three `tls_*` files are set).
    pub fn tls(&self) -> bool {
        !self.tls_cert_file.as_os_str().is_empty()
    }

    /// This node's advertised address (see [`WatchdogConfig::advertise`]).
    pub fn advertised(&self, node_name: &str) -> String {
        if !self.advertise.is_empty() {
            return self.advertise.clone();
        }
        if self.listen.ip().is_unspecified() {
            format!("{node_name}:{}", self.listen.port())
        } else {
            self.listen.to_string()
        }
    }

    /// Every member's address, sorted: a node's Raft id is its position + 1.
    pub fn members(&self, node_name: &str) -> Vec<String> {
        let mut all = self.peers.clone();
        all.push(self.advertised(node_name));
        all.sort();
        all.dedup();
        all
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
