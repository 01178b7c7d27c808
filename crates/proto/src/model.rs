//! The cluster model of `pgwarden-cluster` as the gRPC messages carry it:
//! one conversion each way, here, instead of one by hand at every caller.

use pgwarden_cluster::{ClusterRecord, Generation, Role, Status, Synchronous};

use crate::v1;

// === Role, Status ===

impl From<Role> for v1::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::Unknown => v1::Role::Unknown,
            Role::Primary => v1::Role::Primary,
            Role::Standby => v1::Role::Standby,
        }
    }
}

impl From<v1::Role> for Role {
    fn from(role: v1::Role) -> Self {
        match role {
            v1::Role::Unknown => Role::Unknown,
            v1::Role::Primary => Role::Primary,
            v1::Role::Standby => Role::Standby,
        }
    }
}

impl From<Status> for v1::Status {
    fn from(status: Status) -> Self {
        match status {
            Status::Up => v1::Status::Up,
            Status::Down => v1::Status::Down,
            Status::Detached => v1::Status::Detached,
            Status::Quarantined => v1::Status::Quarantined,
        }
    }
}

impl v1::Status {
    /// The model's status; `None` for `Unspecified` (a message from a
    /// peer that did not set it).
    pub fn model(self) -> Option<Status> {
        match self {
            v1::Status::Unspecified => None,
            v1::Status::Up => Some(Status::Up),
            v1::Status::Down => Some(Status::Down),
            v1::Status::Detached => Some(Status::Detached),
            v1::Status::Quarantined => Some(Status::Quarantined),
        }
    }
}

// === ClusterRecord, Generation ===

impl v1::ClusterRecord {
    /// The replicated record as the watchdog's API shows it: which backends
    /// a quorum of the `voters` nodes sees down, and the log's
    /// `applied_index`.
    pub fn project(record: &ClusterRecord, voters: usize, applied_index: u64) -> Self {
        v1::ClusterRecord {
            generation: record.generation,
            primary: record.primary.clone(),
            detached: record.detached.clone().into_iter().collect(),
            failover_in_progress: record.failover_in_progress,
            down_by_quorum: record
                .votes
                .keys()
                .filter(|b| record.quorum_down(b, voters))
                .cloned()
                .collect(),
            down_votes: record
                .votes
                .iter()
                .map(|(b, ids)| {
                    let ids = ids.iter().copied().collect();
                    (b.clone(), v1::NodeIds { ids })
                })
                .collect(),
            applied_index,
            down: record.down.clone().into_iter().collect(),
            monitors_down: record.monitors_down.iter().copied().collect(),
            synchronous: record.synchronous.clone().map(v1::SynchronousSet::from),
        }
    }

    /// The committed generation this record holds.
    pub fn generation_record(&self) -> Generation {
        Generation {
            generation: self.generation,
            primary: self.primary.clone(),
            detached: self.detached.clone().into_iter().collect(),
            failover_in_progress: self.failover_in_progress,
            down: self.down.clone().into_iter().collect(),
            synchronous: self.synchronous.clone().map(Synchronous::from),
        }
    }
}

impl From<Synchronous> for v1::SynchronousSet {
    fn from(s: Synchronous) -> Self {
        v1::SynchronousSet {
            standbys: s.standbys.into_iter().collect(),
            count: s.count,
        }
    }
}

impl From<v1::SynchronousSet> for Synchronous {
    fn from(s: v1::SynchronousSet) -> Self {
        Synchronous {
            standbys: s.standbys.into_iter().collect(),
            count: s.count,
        }
    }
}

impl v1::ProposeClusterChangeRequest {
    /// Proposes `next` as the generation after `expected`.
    pub fn proposing(expected: u64, next: Generation) -> Self {
        v1::ProposeClusterChangeRequest {
            expected_generation: expected,
            generation: next.generation,
            primary: next.primary,
            detached: next.detached.into_iter().collect(),
            failover_in_progress: next.failover_in_progress,
            down: next.down.into_iter().collect(),
            synchronous: next.synchronous.map(v1::SynchronousSet::from),
        }
    }

    /// The generation proposed.
    pub fn proposed(self) -> Generation {
        Generation {
            generation: self.generation,
            primary: self.primary,
            detached: self.detached.into_iter().collect(),
            failover_in_progress: self.failover_in_progress,
            down: self.down.into_iter().collect(),
            synchronous: self.synchronous.map(Synchronous::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    #[test]
    fn a_proposal_carries_the_generation_unchanged() {
        let next = Generation {
            generation: 4,
            primary: Some("pg1".into()),
            detached: BTreeMap::from([("pg0".into(), "former primary".into())]),
            failover_in_progress: true,
            down: BTreeMap::from([("pg2".into(), "refused".into())]),
            synchronous: Some(Synchronous {
                standbys: BTreeSet::from(["pg2".into(), "pg3".into()]),
                count: 1,
            }),
        };
        let request = v1::ProposeClusterChangeRequest::proposing(3, next.clone());
        assert_eq!(request.expected_generation, 3);
        assert_eq!(request.proposed(), next);
    }

    #[test]
    fn the_projection_names_what_a_quorum_sees_down() {
        let record = ClusterRecord {
            generation: 2,
            primary: Some("pg0".into()),
            votes: BTreeMap::from([
                ("pg1".into(), BTreeSet::from([1, 2])),
                ("pg2".into(), BTreeSet::from([3])),
            ]),
            monitors_down: BTreeSet::from([3]),
            ..ClusterRecord::default()
        };
        let p = v1::ClusterRecord::project(&record, 3, 17);
        assert_eq!(p.down_by_quorum, vec!["pg1".to_owned()]);
        assert_eq!(p.down_votes["pg2"].ids, vec![3]);
        assert_eq!(p.applied_index, 17);
        assert_eq!(p.monitors_down, vec![3]);
        assert_eq!(p.generation_record().primary.as_deref(), Some("pg0"));
        for s in [
            Status::Up,
            Status::Down,
            Status::Detached,
            Status::Quarantined,
        ] {
            assert_eq!(v1::Status::from(s).model(), Some(s));
            assert_eq!(v1::Status::from(s).as_word(), s.as_str());
        }
    }
}
