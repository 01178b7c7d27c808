//! Where each daemon's socket lives.

use std::fmt;
use std::path::{Path, PathBuf};

/// The daemons that serve gRPC on a unix socket in `node.runtime_dir`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Daemon {
    /// `pgwarden-proxy`: the admin API (`proxy.sock`).
    Proxy,
    /// `pgwarden-monitor`: the cluster state and backend controls
    /// (`monitor.sock`).
    Monitor,
    /// `pgwarden-watchdog`: leadership and consensus (`watchdog.sock`).
    Watchdog,
}

impl Daemon {
    /// The daemon's short name, as in its socket file name: `proxy`,
    /// `monitor` or `watchdog`.
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Proxy => "proxy",
            Daemon::Monitor => "monitor",
            Daemon::Watchdog => "watchdog",
        }
    }
}

impl fmt::Display for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The socket a daemon serves on: `<runtime_dir>/<name>.sock`
/// (`proxy.sock`, `monitor.sock`, `watchdog.sock`). Servers and clients both
/// derive it from the same `node.runtime_dir`, so they always agree.
pub fn socket_path(runtime_dir: &Path, daemon: Daemon) -> PathBuf {
    runtime_dir.join(format!("{}.sock", daemon.name()))
}
