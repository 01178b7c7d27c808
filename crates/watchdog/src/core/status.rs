//! What the API shows: members as reachable or not, the quorum (a leader's
//! from Raft, a follower's while it heard from its leader lately), who
//! holds the delegate IP, the record, the proxies' lease and routing.

use std::collections::{BTreeMap, HashMap};

use pgwarden_proto::v1::{ClusterRecord as ProtoRecord, Member, MemberState, WatchdogStatus};

use super::input::{Readings, Setup};
use super::ticks::FRESH_TICKS;
use crate::WatchdogNode;

/// When each peer was last heard from: the tick, and the wall clock then
/// (unix ms, shown).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Seen {
    last: BTreeMap<u64, (u64, i64)>,
}

impl Seen {
    /// `peer` was heard from at tick `now`, wall clock `wall_ms`.
    pub(super) fn heard(&mut self, peer: u64, now: u64, wall_ms: i64) {
        self.last.insert(peer, (now, wall_ms));
    }

    /// Whether `peer` was heard from within [`FRESH_TICKS`] of `now`.
    pub(super) fn fresh(&self, peer: u64, now: u64) -> bool {
        self.last
            .get(&peer)
            .is_some_and(|(t, _)| now.saturating_sub(*t) < FRESH_TICKS)
    }

    /// The wall clock when `peer` was last heard from (0: never).
    fn wall_ms(&self, peer: u64) -> i64 {
        self.last.get(&peer).map_or(0, |(_, ms)| *ms)
    }
}

/// The status the API shows, at tick `now`; `lease_until` is this node's
/// proxies' lease on the applied generation.
pub(super) fn status(
    node: &WatchdogNode,
    setup: &Setup,
    seen: &Seen,
    now: u64,
    readings: &Readings,
    lease_until: u64,
) -> WatchdogStatus {
    let me = node.id();
    let fresh = |id: u64| seen.fresh(id, now);
    let members = setup
        .members
        .iter()
        .enumerate()
        .map(|(i, address)| {
            let mid = i as u64 + 1;
            // In Raft only the leader talks to everyone: a follower hears
            // from the leader alone, so it cannot judge the other followers.
            let judged = node.is_leader() || Some(mid) == node.leader();
            let state = if mid == me || fresh(mid) {
                MemberState::Reachable
            } else if judged {
                MemberState::Unreachable
            } else {
                MemberState::Unknown
            };
            Member {
                id: mid,
                address: address.clone(),
                state: state as i32,
                last_seen_unix_ms: if mid == me {
                    readings.wall_ms
                } else {
                    seen.wall_ms(mid)
                },
            }
        })
        .collect();
    let leader = node.leader().unwrap_or(0);
    let quorum = if node.is_leader() {
        node.has_quorum()
    } else {
        leader != 0 && fresh(leader)
    };
    let holding = readings.holding;
    WatchdogStatus {
        id: me,
        address: (me as usize)
            .checked_sub(1)
            .and_then(|i| setup.members.get(i))
            .cloned()
            .unwrap_or_default(),
        members,
        leader_id: leader,
        term: node.term(),
        quorum,
        delegate_ip_holder: if holding {
            me
        } else if quorum {
            leader
        } else {
            0
        },
        holds_delegate_ip: holding,
        delegate_ip: setup.delegate_ip.clone(),
        record: Some(ProtoRecord::project(
            node.record(),
            node.voters().len(),
            node.applied_index(),
        )),
        lease_until_mono_ms: lease_until,
        proxies_on_generation: if node.is_leader() {
            proxies_on(node.voters(), me, readings.own_routing, &readings.routes)
        } else {
            0
        },
    }
}

/// The lowest generation every voter's proxy routes by at least (`own`
/// for this node `me`, `routes` for the others); 0 while any is unknown.
pub fn proxies_on(voters: &[u64], me: u64, own: u64, routes: &HashMap<u64, u64>) -> u64 {
    voters
        .iter()
        .map(|&v| {
            if v == me {
                own
            } else {
                routes.get(&v).copied().unwrap_or(0)
            }
        })
        .min()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxies_are_on_a_generation_only_once_every_voters_proxy_said_so() {
        let mut routes = HashMap::new();
        routes.insert(2, 7);
        assert_eq!(proxies_on(&[1, 2, 3], 1, 7, &routes), 0, "node 3 unknown");
        routes.insert(3, 6);
        assert_eq!(proxies_on(&[1, 2, 3], 1, 7, &routes), 6);
        routes.insert(3, 9);
        assert_eq!(proxies_on(&[1, 2, 3], 1, 7, &routes), 7, "this node's own");
        assert_eq!(proxies_on(&[1], 1, 4, &routes), 4);
    }

    #[test]
    fn a_peer_is_fresh_for_two_seconds_of_ticks() {
        let mut seen = Seen::default();
        assert!(!seen.fresh(2, 0), "never heard from");
        seen.heard(2, 100, 5);
        let fresh: Vec<bool> = [100, 119, 120].iter().map(|&t| seen.fresh(2, t)).collect();
        assert_eq!(fresh, [true, true, false]);
    }
}
