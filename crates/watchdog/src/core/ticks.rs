//! The core's clock: [`TICK`]s, and every period it decides by, in ticks.

use std::time::Duration;

/// One tick of the core's clock: how often the driver calls [`Core::tick`](super::Core::tick)
/// (the Raft tick: elections take 10, heartbeats 2).
pub const TICK: Duration = crate::settings::TICK;

/// `d` in ticks, such that `now - since >= ticks_for(d)` holds only once
/// at least `d` has passed since tick `since` (ticks come late, never
/// early).
const fn ticks_for(d: Duration) -> u64 {
    d.as_millis().div_ceil(TICK.as_millis()) as u64
}

/// How often this node's monitor is asked whether it answers: the probe
/// after the last one ended.
pub const MONITOR_PROBE: Duration = Duration::from_secs(1);
/// [`MONITOR_PROBE`] in ticks.
pub const MONITOR_PROBE_TICKS: u64 = ticks_for(MONITOR_PROBE);
/// How long the monitor must go unanswered before it counts as gone:
/// longer than systemd takes to restart it once (`Restart=always`, the
/// first restart after 1 s, backing off when it keeps failing).
pub const MONITOR_GRACE: Duration = Duration::from_secs(5);
/// [`MONITOR_GRACE`] in ticks.
pub const MONITOR_GRACE_TICKS: u64 = ticks_for(MONITOR_GRACE);
/// How often a leader without its monitor may try to hand the lead over,
/// and how often a node re-sends its monitor's state while the record
/// disagrees.
pub const MONITOR_RETRY_TICKS: u64 = ticks_for(Duration::from_secs(3));
/// How long a leader that is shutting down waits for its lead to move.
pub const LEAVE_TICKS: u64 = ticks_for(Duration::from_secs(2));
/// How long a proposed change may wait for its commit.
pub const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(15);
/// [`PROPOSAL_TIMEOUT`] in ticks.
pub const PROPOSAL_TICKS: u64 = ticks_for(PROPOSAL_TIMEOUT);
/// How lately a peer must have been heard from to count as reachable.
pub const FRESH_TICKS: u64 = ticks_for(Duration::from_secs(2));
