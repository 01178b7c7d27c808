//! The proxies' lease: how a node cut off from the others stops routing
//! before the majority promotes a new primary.
//!
//! With the watchdog, a proxy routes to the primary only while its node's
//! watchdog holds a lease on a record naming that primary (not withdrawn):
//! `WatchdogStatus.lease_until_mono_ms`, a point on the host's
//! `CLOCK_BOOTTIME` (the same clock in every process of the host; see [`monotonic_ms`]), which
//! the proxy reads straight from `watchdog.sock` (the monitor is not in
//! the way: its restart costs nothing, its freeze keeps nobody routing).
//! The proxy stops routing on its own when the point passes.
//!
//! The watchdog gets it from the leader: a follower asks every [`RENEW`]
//! (and at once when it applied a new generation); the leader answers with
//! the generation it has applied, while it leads in the follower's term,
//! has committed an entry of that term and applied all that is committed,
//! and a quorum confirmed its lead less than [`GRANT_CONTACT`] ago,
//! counted from when the confirming heartbeats were *sent* (Raft's
//! ReadIndex round, asked for at every tick, stamped with the send time;
//! the peers' service checks the stamp against the clock as each ask
//! arrives, so a leader whose loop stalls stops granting too). The
//! follower keeps it only for the generation it has applied itself, until
//! the moment it *asked* plus [`PROXY_LEASE`]: the answer comes after the
//! ask, so no bound on the network's delay is assumed for it. The leader
//! grants itself the same.
//!
//! Why the leader's monitor may promote [`AFTER_COMMIT`] after its
//! withdrawal of the primary committed: the leader's watchdog answers asks
//! with the new generation from the turn of its loop that applied it,
//! before it told the proposer, so every lease on an older generation was
//! asked for before and ends within [`PROXY_LEASE`] (clock rates differ by
//! far less than the margin). A new leader waits [`AFTER_ELECTION`] more,
//! for what the leader before it granted. That one granted only within
//! [`GRANT_CONTACT`] of a heartbeat round that a quorum answered in its
//! term; that quorum shares a voter with the new leader's, who answered
//! the round before it voted in the later term (it answers only a leader
//! of its own term). So the round was sent before the new leader's
//! election, and every lease the old one granted ends within
//! [`GRANT_CONTACT`] + [`PROXY_LEASE`] of that election: no bound on the
//! network's delay, no loop that must not stall (a restarted voter, which
//! votes at once, changes nothing either).

use std::time::Duration;

/// How long a granted lease lasts, from the moment it was asked for.
pub const PROXY_LEASE: Duration = Duration::from_millis(600);

/// How often a follower's watchdog asks the leader to renew its lease.
pub const RENEW: Duration = Duration::from_millis(100);

/// A leader grants leases only within this long of sending a heartbeat
/// round that a quorum answered (it asks for one at every 100 ms tick).
pub const GRANT_CONTACT: Duration = Duration::from_millis(300);

/// How long after the leader applied a generation every lease on an older
/// one has ended: [`PROXY_LEASE`], plus a margin for the hosts' clock rates
/// and the monitor's ticks.
pub const AFTER_COMMIT: Duration = Duration::from_millis(PROXY_LEASE.as_millis() as u64 + 100);

/// How long after a watchdog became leader every lease granted by the
/// leader before it has ended: the old leader's last grant left less than
/// [`GRANT_CONTACT`] after this one's election, and lasts [`PROXY_LEASE`];
/// plus a margin for the hosts' clock rates.
pub const AFTER_ELECTION: Duration =
    Duration::from_millis((GRANT_CONTACT.as_millis() + PROXY_LEASE.as_millis()) as u64 + 100);

/// The host's monotonic clock now, in milliseconds: comparable between the
/// processes of one host (not between hosts). Never 0. It is
/// `CLOCK_BOOTTIME`, which unlike `CLOCK_MONOTONIC` also counts the time
/// the host was suspended: a lease does not outlive a suspend. (A virtual
/// machine paused by its hypervisor may see neither clock move; as with
/// Patroni, a watchdog device is the answer to that.)
pub fn monotonic_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| {
            let ms = i128::from(t.tv_sec()) * 1000 + i128::from(t.tv_nsec()) / 1_000_000;
            u64::try_from(ms).unwrap_or(0)
        })
        .unwrap_or(0)
        .max(1)
}

/// Whether a state leased until `until` (0: not leased, as without a
/// watchdog) may still be routed by at `now`.
pub fn valid(until: u64, now: u64) -> bool {
    until == 0 || now < until
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_moves_forward_and_is_shared_by_threads() {
        let a = monotonic_ms();
        let b = std::thread::spawn(monotonic_ms).join().unwrap();
        assert!(a >= 1 && b >= a);
    }

    #[test]
    fn a_lease_is_valid_until_its_deadline_and_unleased_states_always() {
        assert!(valid(0, u64::MAX));
        assert!(valid(1000, 999));
        assert!(!valid(1000, 1000));
        assert!(!valid(1, 5));
    }
}
