//! This node's lease for its proxies ([`pgwarden_proto::lease`]), as pure
//! code: which generation of the record the proxies may route by, and until
//! when (a point on the host's `CLOCK_MONOTONIC`, in ms).
//!
//! A lease is always for one generation: the one the leader had applied
//! when it answered, which must also be the one this node has applied (a
//! node that lags renews nothing until it has caught up, and a node ahead
//! of the answer keeps what it had). A newer applied generation starts
//! without a lease until the leader grants one for it, so a lease never
//! carries over to a record it was not granted for.

use std::time::Duration;

/// The proxies' lease of one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fence {
    generation: u64,
    until: u64,
}

impl Fence {
    /// Takes in a grant for generation `granted`, asked for at `asked_at`
    /// (ms), lasting `lease`, on a node that has applied `applied`. Returns
    /// whether it counted.
    pub fn renew(&mut self, applied: u64, granted: u64, asked_at: u64, lease: Duration) -> bool {
        if applied != granted {
            return false;
        }
        let until = asked_at.saturating_add(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
        if self.generation == granted {
            self.until = self.until.max(until);
        } else {
            self.generation = granted;
            self.until = until;
        }
        true
    }

    /// Until when the proxies may route by the record of generation
    /// `applied`: 1 (long past) when no lease is held for it.
    pub fn until(&self, applied: u64) -> u64 {
        if self.generation == applied {
            self.until.max(1)
        } else {
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Duration = Duration::from_millis(600);

    #[test]
    fn the_monitors_waits_use_this_watchdogs_timeouts() {
        use crate::settings::TICK;
        let config = crate::NodeConfig::new(1, vec![1, 2, 3]);
        let election = TICK * u32::try_from(config.election_tick).unwrap();
        assert_eq!(election, pgwarden_proto::lease::ELECTION_TIMEOUT);
        let contact = TICK * u32::try_from(crate::node::GRANT_CONTACT_TICKS).unwrap();
        assert_eq!(contact, pgwarden_proto::lease::GRANT_CONTACT);
        assert!(
            TICK * u32::try_from(config.heartbeat_tick).unwrap() < contact,
            "a healthy leader always has quorum contact this recent"
        );
    }

    #[test]
    fn a_grant_lasts_from_the_ask_not_from_the_answer() {
        let mut f = Fence::default();
        assert_eq!(f.until(3), 1, "nothing granted yet");
        assert!(f.renew(3, 3, 10_000, L));
        assert_eq!(f.until(3), 10_600);
        // An answer to an older ask never shortens it.
        assert!(f.renew(3, 3, 9_900, L));
        assert_eq!(f.until(3), 10_600);
        assert!(f.renew(3, 3, 10_100, L));
        assert_eq!(f.until(3), 10_700);
    }

    #[test]
    fn a_lease_never_carries_over_to_another_generation() {
        let mut f = Fence::default();
        assert!(f.renew(3, 3, 10_000, L));
        // The node applied generation 4 (the primary withdrawn): the lease
        // on 3 does not cover it.
        assert_eq!(f.until(4), 1);
        // The leader still answers with 3 (it had not applied 4 yet): a
        // lease for a generation this node no longer shows counts nothing.
        assert!(!f.renew(4, 3, 10_100, L));
        assert_eq!(f.until(4), 1);
        assert!(f.renew(4, 4, 10_200, L));
        assert_eq!(f.until(4), 10_800);
    }

    #[test]
    fn a_node_behind_the_leader_renews_nothing_until_it_caught_up() {
        let mut f = Fence::default();
        assert!(f.renew(3, 3, 10_000, L));
        // The leader has applied the withdrawal (4); this node still shows
        // 3: it must not keep routing by 3 on the leader's word.
        assert!(!f.renew(3, 4, 10_100, L));
        assert_eq!(f.until(3), 10_600, "the old grant ends when it ends");
    }
}
