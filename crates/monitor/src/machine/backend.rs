//! What the machine knows of each backend: as configured, as last seen,
//! and where it stands (role, status, rejoin).

pub use pgwarden_cluster::{Observation, Role, Status};

/// A backend as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// `backends[].name`.
    pub name: String,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// May be promoted.
    pub allow_failover: bool,
}

/// Where a rejoin of a detached backend stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rejoin {
    /// None asked for.
    #[default]
    No,
    /// `failover.rejoin_command` is running (this attempt).
    Running(u64),
    /// It succeeded: attached as soon as it streams from the primary.
    Waiting,
}

/// One backend in the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendView {
    /// Configuration.
    pub spec: BackendSpec,
    /// Role as last seen.
    pub role: Role,
    /// Routable or not.
    pub status: Status,
    /// Why down or detached.
    pub reason: String,
    /// Consecutive failed checks.
    pub failures: u32,
    /// Why the last check failed, while checks fail.
    pub last_error: Option<String>,
    /// Consecutive checks that found a standby not streaming from the primary.
    pub not_streaming: u32,
    /// The last successful check.
    pub last: Option<Observation>,
    /// When the last check finished (unix ms).
    pub last_check_ms: i64,
    /// Being repointed at the new primary.
    pub following: bool,
    /// An operator's rejoin in progress.
    pub rejoin: Rejoin,
}

impl BackendView {
    /// Its last check succeeded, and there is something to go by.
    pub fn reachable(&self) -> bool {
        self.failures == 0 && self.last.is_some()
    }

    /// `pg_is_in_recovery()` as last seen (`None`: never checked).
    pub fn in_recovery(&self) -> Option<bool> {
        self.last.as_ref().map(|o| o.in_recovery)
    }
}
