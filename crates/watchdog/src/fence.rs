//! This node's lease for its proxies ([`pgwarden_proto::lease`]), as pure
//! code: which generation of the record the proxies may route by, and until
//! when (a point on the host's `CLOCK_BOOTTIME`, in ms).
//!
//! A lease is always for one generation: the one the leader had applied
//! when it answered, which must also be the one this node has applied (a
//! node that lags renews nothing until it has caught up, and a node ahead
//! of the answer keeps what it had). A newer applied generation starts
//! without a lease until the leader grants one for it, so a lease never
//! carries over to a record it was not granted for.

use std::time::Duration;

/// What this node, as leader, grants lease asks (set by the core loop at
/// each turn, read by the peers' service as asks arrive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grantable {
    /// The term it leads in.
    pub term: u64,
    /// The generation it has applied.
    pub generation: u64,
    /// `CLOCK_BOOTTIME` ms: its lead was last confirmed by a quorum
    /// `pgwarden_proto::lease::GRANT_CONTACT` before this. The service
    /// checks it against the clock itself, so a core loop that stalls
    /// (and stops updating this) grants nothing for long.
    pub until: u64,
}

impl Grantable {
    /// The generation granted to an ask in `term` arriving at `now` (ms),
    /// if any.
    pub fn answer(this: Option<Grantable>, term: u64, now: u64) -> Option<u64> {
        this.filter(|g| g.term == term && now < g.until)
            .map(|g| g.generation)
    }
}

/// A lease the leader granted: for `generation`, in `term`, asked for at
/// `asked_at` (`CLOCK_BOOTTIME` ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// The leader that granted it.
    pub leader: u64,
    /// Its term.
    pub term: u64,
    /// The generation it had applied.
    pub generation: u64,
    /// When this node asked (the lease counts from here).
    pub asked_at: u64,
}

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
    fn a_healthy_leader_is_confirmed_well_within_the_grant_window() {
        use crate::settings::TICK;
        // The core loop asks for a confirmation at every tick.
        assert!(TICK * 2 < pgwarden_proto::lease::GRANT_CONTACT);
    }

    #[test]
    fn a_grant_is_refused_once_the_leads_confirmation_is_too_old() {
        // Regression: the peers' service granted from what the core loop
        // last published, however long ago; a loop stalled in an fsync
        // kept granting while the others elected a new leader.
        let g = Some(Grantable {
            term: 4,
            generation: 9,
            until: 10_300,
        });
        assert_eq!(Grantable::answer(g, 4, 10_299), Some(9));
        assert_eq!(Grantable::answer(g, 4, 10_300), None, "stale");
        assert_eq!(Grantable::answer(g, 5, 10_000), None, "another term");
        assert_eq!(Grantable::answer(None, 4, 10_000), None);
    }

    /// Takes in a grant for `granted` asked for at `asked_at`, on a node
    /// that has applied `applied`: whether it counted, and until when the
    /// proxies may route by `applied` then.
    fn renewed(f: &mut Fence, applied: u64, granted: u64, asked_at: u64) -> (bool, u64) {
        let counted = f.renew(applied, granted, asked_at, L);
        (counted, f.until(applied))
    }

    /// A fence that took a grant for generation 3, asked for at 10 000 ms.
    fn leased_on_3() -> Fence {
        let mut f = Fence::default();
        assert_eq!(f.until(3), 1, "nothing granted yet");
        assert_eq!(renewed(&mut f, 3, 3, 10_000), (true, 10_600));
        f
    }

    #[test]
    fn a_grant_lasts_from_the_ask_not_from_the_answer() {
        let mut f = leased_on_3();
        // An answer to an older ask never shortens it.
        assert_eq!(renewed(&mut f, 3, 3, 9_900), (true, 10_600));
        assert_eq!(renewed(&mut f, 3, 3, 10_100), (true, 10_700));
    }

    #[test]
    fn a_lease_never_carries_over_to_another_generation() {
        let mut f = leased_on_3();
        // The node applied generation 4 (the primary withdrawn): the lease
        // on 3 does not cover it.
        assert_eq!(f.until(4), 1);
        // The leader still answers with 3 (it had not applied 4 yet): a
        // lease for a generation this node no longer shows counts nothing.
        assert_eq!(renewed(&mut f, 4, 3, 10_100), (false, 1));
        assert_eq!(renewed(&mut f, 4, 4, 10_200), (true, 10_800));
    }

    #[test]
    fn a_node_behind_the_leader_renews_nothing_until_it_caught_up() {
        let mut f = leased_on_3();
        // The leader has applied the withdrawal (4); this node still shows
        // 3: it must not keep routing by 3 on the leader's word.
        assert_eq!(
            renewed(&mut f, 3, 4, 10_100),
            (false, 10_600),
            "the old grant ends when it ends"
        );
    }
}
