//! What the watchdog daemon needs from the node config, checked.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use pgwarden_config::Config;
use pgwarden_tls::{Mutual, PemFile};

/// How long one Raft tick lasts; elections take [`ELECTION_TICKS`] (1 s),
/// heartbeats [`HEARTBEAT_TICKS`].
pub const TICK: Duration = Duration::from_millis(100);
/// The election timeout `E` in ticks: a follower that has not heard from
/// its leader for this long (randomized up to twice) campaigns; the
/// delegate-IP lease ([`crate::lease`]) counts in it.
pub const ELECTION_TICKS: usize = 10;
/// Ticks between a leader's heartbeats.
pub const HEARTBEAT_TICKS: usize = 2;

/// The watchdog's settings.
#[derive(Clone)]
pub struct Settings {
    /// `node.name`.
    pub node_name: String,
    /// Where `watchdog.sock` lives.
    pub runtime_dir: PathBuf,
    /// Where the Raft state is persisted.
    pub state_dir: PathBuf,
    /// `watchdog.listen`.
    pub listen: SocketAddr,
    /// Every member's address, sorted; the Raft id of `members[i]` is `i + 1`.
    pub members: Vec<String>,
    /// This node's Raft id.
    pub id: u64,
    /// The cluster key peers authenticate with.
    pub key: Vec<u8>,
    /// `watchdog.delegate_ip`.
    pub delegate_ip: Option<IpAddr>,
    /// `watchdog.if_up_cmd`.
    pub if_up_cmd: String,
    /// `watchdog.if_down_cmd`.
    pub if_down_cmd: String,
    /// `watchdog.arping_cmd`.
    pub arping_cmd: String,
    /// `watchdog.escalation_cmd`.
    pub escalation_cmd: String,
    /// `watchdog.de_escalation_cmd`.
    pub de_escalation_cmd: String,
    /// Where Prometheus scrapes `/metrics`.
    pub metrics_listen: SocketAddr,
    /// Mutual TLS with the peers (`watchdog.tls_*`); `None` = plain TCP.
    pub tls: Option<Mutual>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("node_name", &self.node_name)
            .field("listen", &self.listen)
            .field("members", &self.members)
            .field("id", &self.id)
            .field("delegate_ip", &self.delegate_ip)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Why the watchdog cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `watchdog.enabled = false`.
    #[error("watchdog.enabled is false: this node runs no watchdog")]
    Disabled,
    /// The key file is missing, too open or empty.
    #[error("watchdog.auth_key_file: {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `watchdog.tls_*` file is unusable.
    #[error(transparent)]
    Tls(#[from] pgwarden_tls::TlsError),
}

impl Settings {
    /// Takes the watchdog's part of the config and reads the key file.
    pub fn from_config(c: &Config) -> Result<Settings, SettingsError> {
        let w = &c.watchdog;
        if !w.enabled {
            return Err(SettingsError::Disabled);
        }
        let path = w.auth_key_file.clone();
        let key_err = |reason: String| SettingsError::Key {
            path: path.clone(),
            reason,
        };
        pgwarden_config::check_secret_file_mode(&path).map_err(key_err)?;
        let key = std::fs::read(&path).map_err(|e| key_err(e.to_string()))?;
        let key = key.trim_ascii().to_vec();
        if key.len() < 16 {
            return Err(key_err("the key must be at least 16 bytes long".into()));
        }
        let tls = if w.tls() {
            Some(Mutual::load(
                PemFile {
                    key: "watchdog.tls_cert_file",
                    path: &w.tls_cert_file,
                },
                PemFile {
                    key: "watchdog.tls_key_file",
                    path: &w.tls_key_file,
                },
                PemFile {
                    key: "watchdog.tls_ca_file",
                    path: &w.tls_ca_file,
                },
            )?)
        } else {
            None
        };
        let members = w.members(&c.node.name);
        let me = w.advertised(&c.node.name);
        let id = members
            .iter()
            .position(|m| *m == me)
            .map_or(1, |i| i as u64 + 1);
        Ok(Settings {
            node_name: c.node.name.clone(),
            runtime_dir: c.node.runtime_dir.clone(),
            state_dir: c.node.state_dir.clone(),
            listen: w.listen,
            members,
            id,
            key,
            delegate_ip: w.delegate_ip,
            if_up_cmd: w.if_up_cmd.clone(),
            if_down_cmd: w.if_down_cmd.clone(),
            arping_cmd: w.arping_cmd.clone(),
            escalation_cmd: w.escalation_cmd.clone(),
            de_escalation_cmd: w.de_escalation_cmd.clone(),
            metrics_listen: w.metrics_listen,
            tls,
        })
    }

    /// The Raft ids of all members.
    pub fn voters(&self) -> Vec<u64> {
        (1..=self.members.len() as u64).collect()
    }

    /// The address of member `id`.
    pub fn address(&self, id: u64) -> Option<&str> {
        self.members
            .get((id as usize).checked_sub(1)?)
            .map(String::as_str)
    }
}
