//! The proxies' lease on a cluster state: how a node cut off from the
//! others stops routing before the majority promotes a new primary.
//!
//! With the watchdog, every state a monitor publishes to its proxy carries
//! `lease_until_mono_ms`: a point on this host's `CLOCK_MONOTONIC` (the same
//! clock in every process of the host) after which the proxy stops routing
//! by that state unless a newer word came. The watchdog grants it: a
//! follower asks the leader every [`RENEW`] and, when the leader answers
//! that it leads in the follower's term with the generation the follower
//! has applied, the follower's lease for that generation runs until the
//! moment it *asked* plus [`PROXY_LEASE`] (so no bound on the network's
//! delay is assumed: the answer is given after the question). The leader
//! grants itself the same while it has quorum contact.
//!
//! So once the leader has applied a generation that withdraws the primary,
//! no lease on an older generation is granted any more, and every lease
//! granted before ends within [`PROXY_LEASE`] (clock rates differ by far
//! less than the margin the monitor adds): the leader's monitor waits that
//! long after the withdrawal committed, then promotes. Every hop between
//! the watchdog and the proxy passes the absolute deadline on, so a slow
//! or stuck monitor only makes the proxy stop sooner, never later.

use std::time::Duration;

/// How long a granted lease lasts, from the moment it was asked for.
pub const PROXY_LEASE: Duration = Duration::from_millis(600);

/// How often a follower's watchdog asks the leader to renew its lease.
pub const RENEW: Duration = Duration::from_millis(100);

/// The watchdogs' election timeout (`election_tick` ticks of 100 ms): also
/// the longest a message is assumed to spend in the network, as the
/// delegate IP's lease assumes (crates/watchdog/src/lease.rs).
pub const ELECTION_TIMEOUT: Duration = Duration::from_secs(1);

/// A leader grants leases only while a quorum answered it within this long
/// (`GRANT_CONTACT_TICKS` in the watchdog).
pub const GRANT_CONTACT: Duration = Duration::from_millis(300);

/// How long after the leader applied a generation every lease on an older
/// one has ended: [`PROXY_LEASE`], plus a margin for the hosts' clock rates
/// and the monitor's ticks.
pub const AFTER_COMMIT: Duration = Duration::from_millis(PROXY_LEASE.as_millis() as u64 + 100);

/// How long after a watchdog became leader every lease granted by the
/// leader before it has ended: the old leader's last grant left at most
/// [`ELECTION_TIMEOUT`] (its quorum's last answers still on their way) plus
/// [`GRANT_CONTACT`] after this one's election, and lasts [`PROXY_LEASE`].
pub const AFTER_ELECTION: Duration = Duration::from_millis(
    (ELECTION_TIMEOUT.as_millis() + GRANT_CONTACT.as_millis() + PROXY_LEASE.as_millis()) as u64
        + 100,
);

/// `CLOCK_MONOTONIC` now, in milliseconds: comparable between the
/// processes of one host (not between hosts). Never 0.
pub fn monotonic_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
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
