//! Where a backend stands: the role it plays and whether it is routable.

use std::fmt;

/// Role a backend plays, as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Never checked successfully.
    Unknown,
    /// Out of recovery.
    Primary,
    /// In recovery.
    Standby,
}

/// Whether the backend is routable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Healthy: the primary, or a standby streaming from it.
    Up,
    /// Failing checks (or not streaming); re-attached automatically when healthy.
    Down,
    /// Fenced until an operator attaches it.
    Detached,
    /// This node's monitor cannot reach it but the quorum does not agree:
    /// no failover, and this node's proxy keeps routing to it.
    Quarantined,
}

impl Status {
    /// The lowercase name every daemon, metric and pgwardenctl shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Down => "down",
            Status::Detached => "detached",
            Status::Quarantined => "quarantined",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Role {
    /// The lowercase name every daemon and pgwardenctl shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
