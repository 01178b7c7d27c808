//! The delegate-IP lease: when this node may hold the IP, as pure code
//! counted in ticks (no clock).
//!
//! Only the Raft leader may hold the delegate IP, and never two nodes at once
//! among the nodes that can still run code. [`Lease`] turns the node's role
//! and the responses it gets from its peers into [`VipAction`]s:
//!
//! - **Start-up**: the first decision is always [`VipAction::Release`], so a
//!   restarted node drops an IP it may still have configured from before.
//! - **Release** the moment the node stops being leader, and, while still
//!   leader, as soon as it has not had *quorum contact* for more than
//!   `election_tick` ticks. Quorum contact at tick `t` means the node itself
//!   plus enough peers for a majority have responded to it (append, heartbeat
//!   or granted vote responses of its current term) at `t` or later. This does
//!   not wait for Raft's own `check_quorum` to step the leader down.
//! - **Acquire** only as leader, at least `2 * election_tick` ticks after
//!   becoming leader (waiting out the old leader's lease), and only while it
//!   has quorum contact within the last `election_tick` ticks.
//!
//! # Why two election timeouts are enough
//!
//! Let `E` be the election timeout in ticks, `D` the longest time a message
//! spends in the network (assumed below `E`; ticks advance at the same rate
//! on every node, as Raft's own leader lease assumes). Let the old leader `A`
//! lead in term `T` and the new leader `B` become leader in a later term at
//! tick `t`.
//!
//! 1. `B` won a vote from a majority `M`. A voter in `M` other than `A`
//!    answers `A` only with a higher term once it has voted for `B`, and `A`
//!    steps down (and releases) on seeing a higher term. `A` itself votes only
//!    after stepping down. So every term-`T` response from a voter in `M`
//!    was sent by tick `t` and reached `A` by `t + D`.
//! 2. `A` holds the IP only while a majority responded within the last `E`
//!    ticks; any majority meets `M`. So `A` released by tick `t + D + E`
//!    at the latest, earlier than `t + 2E`, when `B` may first acquire.
//!
//! Raft's own mechanisms back this up even without the explicit release:
//! with `pre_vote` and `check_quorum`, a voter that heard from a leader in
//! the last `E` ticks refuses (pre-)votes, so `B` cannot be elected before a
//! majority has gone `E` ticks without hearing from `A`; and `A`'s
//! `check_quorum`, which runs every `E` ticks, steps it down at most `2E`
//! ticks after its last quorum contact. `B`'s wait of `2E` after its
//! election therefore ends after `A`'s step-down. The explicit release after
//! `E` ticks without quorum contact makes the margin a full election timeout.

use std::collections::BTreeMap;

/// What to do with the delegate IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VipAction {
    /// Bring the IP up here (`if_up_cmd`, then `arping_cmd`).
    Acquire,
    /// Take the IP down here (`if_down_cmd`).
    Release,
}

/// The last response of one peer in one term.
#[derive(Debug, Clone, Copy)]
struct Heard {
    term: u64,
    tick: u64,
}

/// A leadership period of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Leadership {
    term: u64,
    since: u64,
}

/// The delegate-IP decision for one node. See the module docs.
#[derive(Debug, Clone)]
pub struct Lease {
    peers: Vec<u64>,
    /// Nodes (this one included) needed for a majority.
    quorum: usize,
    election_tick: u64,
    now: u64,
    heard: BTreeMap<u64, Heard>,
    leadership: Option<Leadership>,
    holding: bool,
    started: bool,
}

impl Lease {
    /// The lease of node `id` among `voters` (which include `id`), with an
    /// election timeout of `election_tick` ticks.
    pub fn new(id: u64, voters: &[u64], election_tick: u64) -> Self {
        let mut peers: Vec<u64> = voters.iter().copied().filter(|&v| v != id).collect();
        peers.sort_unstable();
        peers.dedup();
        let n = peers.len() + 1;
        Self {
            peers,
            quorum: n / 2 + 1,
            election_tick,
            now: 0,
            heard: BTreeMap::new(),
            leadership: None,
            holding: false,
            started: false,
        }
    }

    /// Advances the lease clock by one tick.
    pub fn tick(&mut self) {
        self.now += 1;
    }

    /// The lease clock: ticks since the node started.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Records that `peer` responded to this node in `term` (append or
    /// heartbeat response, granted vote), now.
    pub fn heard_from(&mut self, peer: u64, term: u64) {
        if self.peers.contains(&peer) {
            self.heard.insert(
                peer,
                Heard {
                    term,
                    tick: self.now,
                },
            );
        }
    }

    /// The latest tick at which this node had quorum contact in `term`:
    /// itself plus enough peers for a majority responded at that tick or
    /// later. `None` if it never had.
    pub fn quorum_contact(&self, term: u64) -> Option<u64> {
        let mut ticks: Vec<u64> = self
            .heard
            .values()
            .filter(|h| h.term == term)
            .map(|h| h.tick)
            .collect();
        let needed = self.quorum.saturating_sub(1);
        if needed == 0 {
            return Some(self.now);
        }
        ticks.sort_unstable_by(|a, b| b.cmp(a));
        ticks.get(needed - 1).copied()
    }

    /// Whether this node, as leader in `term`, had quorum contact within the
    /// last `election_tick` ticks.
    pub fn has_quorum_contact(&self, term: u64) -> bool {
        self.quorum_contact(term)
            .is_some_and(|t| self.now.saturating_sub(t) <= self.election_tick)
    }

    /// Whether this node holds the IP as far as the lease knows.
    pub fn holding(&self) -> bool {
        self.holding
    }

    /// The tick at which this node became leader, if it is leader.
    pub fn leader_since(&self) -> Option<u64> {
        self.leadership.map(|l| l.since)
    }

    /// Decides, given the node's current role (`leader` in `term`), whether
    /// the IP must be acquired or released now. Call after every change
    /// (tick, message, role change); returns at most one action.
    pub fn decide(&mut self, leader: bool, term: u64) -> Option<VipAction> {
        self.leadership = match (leader, self.leadership) {
            (false, _) => None,
            (true, Some(l)) if l.term == term => Some(l),
            (true, _) => Some(Leadership {
                term,
                since: self.now,
            }),
        };
        if !self.started {
            // Start-up: drop whatever IP a previous run left behind.
            self.started = true;
            self.holding = false;
            return Some(VipAction::Release);
        }
        let should_hold = self.leadership.is_some_and(|l| {
            self.now.saturating_sub(l.since) >= 2 * self.election_tick
                && self.has_quorum_contact(l.term)
        });
        match (self.holding, should_hold) {
            (true, false) => {
                self.holding = false;
                Some(VipAction::Release)
            }
            (false, true) => {
                self.holding = true;
                Some(VipAction::Acquire)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: u64 = 10;

    fn ticks(lease: &mut Lease, n: u64) {
        for _ in 0..n {
            lease.tick();
        }
    }

    #[test]
    fn releases_once_at_start_up() {
        let mut l = Lease::new(1, &[1, 2, 3], E);
        assert_eq!(l.decide(false, 0), Some(VipAction::Release));
        assert_eq!(l.decide(false, 0), None);
    }

    #[test]
    fn new_leader_waits_two_election_timeouts_with_quorum_contact() {
        let mut l = Lease::new(1, &[1, 2, 3], E);
        l.decide(false, 1);
        l.heard_from(2, 2); // granted vote
        assert_eq!(l.decide(true, 2), None);
        for _ in 0..(2 * E - 1) {
            l.tick();
            l.heard_from(3, 2);
            assert_eq!(l.decide(true, 2), None, "at tick {}", l.now());
        }
        l.tick();
        l.heard_from(3, 2);
        assert_eq!(l.decide(true, 2), Some(VipAction::Acquire));
        assert!(l.holding());
        assert_eq!(l.decide(true, 2), None);
    }

    #[test]
    fn no_acquire_without_quorum_contact() {
        let mut l = Lease::new(1, &[1, 2, 3], E);
        l.decide(false, 1);
        l.heard_from(2, 2);
        l.decide(true, 2);
        ticks(&mut l, 2 * E);
        assert_eq!(l.decide(true, 2), None, "last contact 2E ago");
        l.heard_from(3, 1);
        assert_eq!(l.decide(true, 2), None, "a response of an older term");
        l.heard_from(3, 2);
        assert_eq!(l.decide(true, 2), Some(VipAction::Acquire));
    }

    #[test]
    fn leader_releases_after_an_election_timeout_without_quorum() {
        let mut l = Lease::new(1, &[1, 2, 3, 4, 5], E);
        l.decide(false, 0);
        l.heard_from(2, 1);
        l.heard_from(3, 1);
        l.decide(true, 1);
        for _ in 0..(2 * E) {
            l.tick();
            l.heard_from(2, 1);
            l.heard_from(3, 1);
        }
        assert_eq!(l.decide(true, 1), Some(VipAction::Acquire));
        let last = l.now();
        // Only peer 2 keeps answering: 2 of 5 is no quorum.
        for _ in 0..E {
            l.tick();
            l.heard_from(2, 1);
            assert_eq!(l.decide(true, 1), None);
        }
        l.tick();
        assert_eq!(l.decide(true, 1), Some(VipAction::Release));
        assert_eq!(l.now() - last, E + 1);
        // Contact regained while still leader: may hold again.
        l.heard_from(3, 1);
        assert_eq!(l.decide(true, 1), Some(VipAction::Acquire));
    }

    #[test]
    fn releases_the_moment_it_stops_being_leader() {
        let mut l = Lease::new(2, &[1, 2, 3], E);
        l.decide(false, 0);
        l.decide(true, 3);
        for _ in 0..(2 * E) {
            l.tick();
            l.heard_from(1, 3);
        }
        assert_eq!(l.decide(true, 3), Some(VipAction::Acquire));
        assert_eq!(l.decide(false, 4), Some(VipAction::Release));
        // Leader again in a later term: a new wait.
        l.heard_from(1, 5);
        assert_eq!(l.decide(true, 5), None);
        assert_eq!(l.leader_since(), Some(l.now()));
    }

    #[test]
    fn single_node_is_its_own_quorum() {
        let mut l = Lease::new(1, &[1], E);
        l.decide(true, 1);
        ticks(&mut l, 2 * E);
        assert_eq!(l.decide(true, 1), Some(VipAction::Acquire));
    }

    #[test]
    fn responses_from_strangers_are_ignored() {
        let mut l = Lease::new(1, &[1, 2, 3], E);
        l.heard_from(9, 1);
        l.heard_from(1, 1);
        assert_eq!(l.quorum_contact(1), None);
    }
}
