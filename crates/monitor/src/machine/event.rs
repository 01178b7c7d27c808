//! What goes into the machine ([`Event`]) and what comes out ([`Action`]),
//! and who decides that a backend is down ([`Decider`]).

use pgwarden_cluster::Synchronous;

use super::backend::Observation;

/// Input to the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A check of backend `id` finished at `at_ms` (unix ms, for display only).
    Checked {
        /// Backend id.
        id: usize,
        /// When.
        at_ms: i64,
        /// What it saw, or why it failed.
        result: Result<Observation, String>,
    },
    /// A promotion finished.
    Promoted {
        /// The promoted backend.
        id: usize,
        /// Its new timeline, or why it failed.
        result: Result<u32, String>,
    },
    /// Repointing a standby finished.
    Followed {
        /// The standby.
        id: usize,
        /// Success, or why it cannot follow.
        result: Result<(), String>,
    },
    /// A check of backend `id` could not observe it, but the server is
    /// alive: it accepted fresh connections whose sessions someone else
    /// ended (`pg_terminate_backend()`) before the check answered. Resets
    /// the failure count, keeps the last observation: only the monitor's own
    /// evidence (a fresh connection refused or unanswered) fails a check.
    AliveUnobserved {
        /// Backend id.
        id: usize,
        /// When (unix ms, for display only).
        at_ms: i64,
        /// What happened, for the log.
        reason: String,
    },
    /// With the watchdog: the backends a quorum of nodes sees down now
    /// (committed through Raft). Only meaningful for a quorum machine.
    QuorumDown(Vec<usize>),
    /// `failover.rejoin_command` finished for backend `id`.
    Rejoined {
        /// The backend being rejoined.
        id: usize,
        /// Which rejoin (from [`Action::Rejoin`]): an older one's result is
        /// ignored.
        attempt: u64,
        /// Success, or why it failed.
        result: Result<(), String>,
    },
    /// Setting the primary's synchronous standbys finished.
    SynchronousSet {
        /// The primary.
        id: usize,
        /// The standbys it was set to name.
        set: Option<Synchronous>,
        /// The primary's WAL position once the setting was in force, or
        /// why it could not be made.
        result: Result<u64, String>,
    },
}

/// Who decides that a backend is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decider {
    /// This monitor's own checks (single node, `watchdog.enabled = false`).
    Local,
    /// A quorum of the nodes' monitors (pgpool's failover_require_consensus):
    /// local failures alone change nothing; [`Event::QuorumDown`] does.
    Quorum,
}

/// Output of the machine, performed by the caller in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new generation is committed: persist it and tell every watcher.
    Publish,
    /// Promote backend `id`; `old_primary` is the primary it replaces.
    Promote {
        /// The standby to promote.
        id: usize,
        /// The primary it replaces (if there was one).
        old_primary: Option<usize>,
        /// A switchover: first let the old primary's running transactions
        /// finish (`failover.switchover_drain_timeout`), then fence it.
        drain: bool,
        /// With `failover.synchronous_mode`: the `synchronous_standby_names`
        /// the promoted server gets before it takes writes (`None`: left
        /// as it is).
        synchronous_standby_names: Option<String>,
    },
    /// Repoint standby `id` at `new_primary`.
    Follow {
        /// The standby.
        id: usize,
        /// The new primary.
        new_primary: usize,
        /// The primary it replaced (for hook placeholders).
        old_primary: Option<usize>,
    },
    /// Set primary `id`'s `synchronous_standby_names` to name `set`
    /// (`None`: empty); answered by [`Event::SynchronousSet`].
    SetSynchronous {
        /// The primary.
        id: usize,
        /// The standbys.
        set: Option<Synchronous>,
    },
    /// Run `failover.rejoin_command` to make backend `id` a standby of
    /// `primary` (pcp_recovery_node).
    Rejoin {
        /// The backend to rejoin.
        id: usize,
        /// The primary it must follow.
        primary: usize,
        /// Tells this rejoin's [`Event::Rejoined`] from an older one's.
        attempt: u64,
    },
}
