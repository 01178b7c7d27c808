//! What the machine knows of each backend: as configured, as last seen,
//! and where it stands (role, status, rejoin); what survives a restart.

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
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Up => "up",
            Status::Down => "down",
            Status::Detached => "detached",
        })
    }
}

/// What one successful check saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// Timeline (0 when unknown).
    pub timeline: u32,
    /// Primary: current WAL LSN; standby: last replayed LSN.
    pub replay_lsn: u64,
    /// Primary: flushed WAL LSN; standby: last received LSN.
    pub flush_lsn: u64,
    /// Standby: the WAL receiver is streaming.
    pub streaming: bool,
    /// Standby: the port of the server it streams from.
    pub upstream_port: Option<u16>,
    /// Primary: replay lag in seconds per standby `application_name`.
    pub replica_lag: Vec<(String, f64)>,
}

impl Observation {
    /// Standby: the WAL it holds, which a promotion keeps: the last WAL
    /// received and flushed (`pg_last_wal_receive_lsn()`), or the replay
    /// position when that is further (WAL restored from an archive) or
    /// unknown (0: no WAL receiver ran since the server started).
    /// Primary: its flushed WAL.
    pub fn received_lsn(&self) -> u64 {
        self.flush_lsn.max(self.replay_lsn)
    }

    /// A primary at `lsn` on `timeline`.
    pub fn primary(timeline: u32, lsn: u64) -> Self {
        Observation {
            in_recovery: false,
            timeline,
            replay_lsn: lsn,
            flush_lsn: lsn,
            streaming: false,
            upstream_port: None,
            replica_lag: Vec::new(),
        }
    }

    /// A standby at `lsn` on `timeline`, streaming from `upstream_port` if given.
    pub fn standby(timeline: u32, lsn: u64, upstream_port: Option<u16>) -> Self {
        Observation {
            in_recovery: true,
            timeline,
            replay_lsn: lsn,
            flush_lsn: lsn,
            streaming: upstream_port.is_some(),
            upstream_port,
            replica_lag: Vec::new(),
        }
    }
}

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

/// What survives a restart of the monitor (persisted in `state_dir`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Persisted {
    /// The last committed generation.
    pub generation: u64,
    /// Name of the committed primary.
    pub primary: Option<String>,
    /// Names of detached backends, with the reason.
    pub detached: Vec<(String, String)>,
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
