//! The replicated state machine: the cluster record every watchdog agrees on.
//!
//! Raft orders [`Command`]s; every node applies the committed ones, in log
//! order, to its own [`ClusterRecord`] with [`ClusterRecord::apply`]. `apply`
//! is pure and deterministic (no clock, no randomness, no IO), so every node
//! that applied the same prefix of the log holds the same record.
//!
//! Two kinds of change exist:
//!
//! - [`Command::ReportHealth`]: one node's own opinion of one backend. The
//!   record keeps, per backend, the set of nodes that currently see it down;
//!   [`ClusterRecord::quorum_down`] says whether a majority of voters agree
//!   (pgpool-II's `failover_require_consensus`).
//! - [`Command::MonitorHealth`]: whether a node's own monitor answers. The
//!   leader's monitor is the one that decides failovers, so a leader whose
//!   monitor is gone hands the lead to a node whose monitor is not in
//!   [`ClusterRecord::monitors_down`].
//! - [`Command::Commit`]: a new generation of the cluster state (primary,
//!   detached set, failover in progress), applied only if the record is still
//!   at the generation the proposer saw (compare-and-set), so two proposers
//!   can never both advance the same generation.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The cluster state replicated by Raft: what every node's proxy follows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Monotonic, bumped by every committed [`Command::Commit`].
    pub generation: u64,
    /// The backend (by name) that takes writes in this generation.
    pub primary: Option<String>,
    /// Backends never routed to, by name, with the reason they were detached.
    pub detached: BTreeMap<String, String>,
    /// A failover is being carried out by the leader's monitor.
    pub failover_in_progress: bool,
    /// Backends the leader's monitor marked down, by name, with the reason.
    #[serde(default)]
    pub down: BTreeMap<String, String>,
    /// Per backend name, the ids of the nodes that currently see it down.
    pub votes: BTreeMap<String, BTreeSet<u64>>,
    /// The ids of the nodes whose watchdog reports its monitor gone.
    #[serde(default)]
    pub monitors_down: BTreeSet<u64>,
    /// The primary's synchronous standbys in this generation (`None`:
    /// asynchronous replication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<Synchronous>,
}

/// The part of the record a [`Command::Commit`] replaces: a whole new
/// generation of the cluster state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// The new generation number; must be greater than the current one.
    pub generation: u64,
    /// The backend that takes writes in the new generation.
    pub primary: Option<String>,
    /// Backends never routed to, by name, with the reason.
    pub detached: BTreeMap<String, String>,
    /// Whether a failover is being carried out (absent in the monitor's
    /// state file of earlier versions: none).
    #[serde(default)]
    pub failover_in_progress: bool,
    /// Backends marked down, by name, with the reason.
    #[serde(default)]
    pub down: BTreeMap<String, String>,
    /// The primary's synchronous standbys (absent in records of earlier
    /// versions: asynchronous replication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<Synchronous>,
}

/// Synchronous replication as the record holds it: the standbys the
/// primary's `synchronous_standby_names` may name (`ANY count (...)`), so
/// that every commit the primary acknowledged is on at least `count` of
/// them. While the set changes it is the union of the old and the new set,
/// with the smaller count, so that this stays true at every moment: the
/// record grows before the primary's setting does and shrinks after it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synchronous {
    /// The standbys, by backend name (their `application_name`).
    pub standbys: BTreeSet<String>,
    /// How many of them hold every acknowledged commit (at least 1).
    pub count: u32,
}

impl Synchronous {
    /// Whether `set` (a generation's, `None` when asynchronous) names the
    /// backend `name` synchronous.
    pub fn includes(set: Option<&Synchronous>, name: &str) -> bool {
        set.is_some_and(|s| s.standbys.contains(name))
    }

    /// How many of the [`standbys`](Self::standbys) must be seen to know
    /// that one of them holds every acknowledged commit: all but `count - 1`
    /// (any that many intersect the `count` that confirmed each commit).
    pub fn needed_to_decide(&self) -> usize {
        let count = usize::try_from(self.count.max(1)).unwrap_or(usize::MAX);
        self.standbys.len().saturating_sub(count - 1).max(1)
    }
}

/// A change to the [`ClusterRecord`], serialized into a Raft entry's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Changes nothing; lets a leader check that it can still commit.
    Noop,
    /// Node `node`'s own opinion of `backend`: `down` or up again.
    ReportHealth {
        /// The Raft id of the reporting node.
        node: u64,
        /// The backend's name.
        backend: String,
        /// `true`: the node sees the backend down; `false`: up again.
        down: bool,
    },
    /// Node `node`'s watchdog says whether its own monitor answers.
    MonitorHealth {
        /// The Raft id of the reporting node.
        node: u64,
        /// `false`: the monitor has not answered for a while.
        alive: bool,
    },
    /// Compare-and-set: replace the generation-scoped state if the record is
    /// still at `expected_generation`.
    Commit {
        /// The generation the proposer based its decision on.
        expected_generation: u64,
        /// The new state.
        record: Generation,
    },
}

/// What applying one [`Command`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// A [`Command::Noop`].
    Noop,
    /// A [`Command::ReportHealth`]; `changed` is false when the node's
    /// opinion was already recorded.
    Health {
        /// Whether the vote set changed.
        changed: bool,
        /// How many nodes now see the backend down.
        down_votes: usize,
    },
    /// A [`Command::MonitorHealth`]; `changed` is false when it was
    /// already recorded.
    Monitor {
        /// Whether [`ClusterRecord::monitors_down`] changed.
        changed: bool,
    },
    /// A [`Command::Commit`] was applied: the record is at `generation` now.
    Committed {
        /// The new generation.
        generation: u64,
    },
    /// A [`Command::Commit`] was refused; the record is unchanged.
    Rejected(Rejection),
}

/// Why a [`Command::Commit`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// Another change committed first: the record is at `actual`, not at the
    /// generation the proposer expected.
    GenerationMismatch {
        /// The generation the proposer expected.
        expected: u64,
        /// The record's generation when the command was applied.
        actual: u64,
    },
    /// The new generation number does not exceed the expected one.
    GenerationNotIncreasing {
        /// The record's generation.
        current: u64,
        /// The proposed generation.
        proposed: u64,
    },
}

impl ClusterRecord {
    /// Applies one committed command. Deterministic: every node applying the
    /// same commands in the same order ends with the same record.
    pub fn apply(&mut self, cmd: &Command) -> Applied {
        match cmd {
            Command::Noop => Applied::Noop,
            Command::ReportHealth {
                node,
                backend,
                down,
            } => {
                let changed = if *down {
                    self.votes.entry(backend.clone()).or_default().insert(*node)
                } else {
                    let mut changed = false;
                    if let Some(set) = self.votes.get_mut(backend) {
                        changed = set.remove(node);
                        if set.is_empty() {
                            self.votes.remove(backend);
                        }
                    }
                    changed
                };
                Applied::Health {
                    changed,
                    down_votes: self.down_votes(backend),
                }
            }
            Command::MonitorHealth { node, alive } => Applied::Monitor {
                changed: if *alive {
                    self.monitors_down.remove(node)
                } else {
                    self.monitors_down.insert(*node)
                },
            },
            Command::Commit {
                expected_generation,
                record,
            } => {
                if self.generation != *expected_generation {
                    return Applied::Rejected(Rejection::GenerationMismatch {
                        expected: *expected_generation,
                        actual: self.generation,
                    });
                }
                if record.generation <= self.generation {
                    return Applied::Rejected(Rejection::GenerationNotIncreasing {
                        current: self.generation,
                        proposed: record.generation,
                    });
                }
                self.generation = record.generation;
                self.primary.clone_from(&record.primary);
                self.detached.clone_from(&record.detached);
                self.failover_in_progress = record.failover_in_progress;
                self.down = record.down.clone();
                self.synchronous.clone_from(&record.synchronous);
                Applied::Committed {
                    generation: self.generation,
                }
            }
        }
    }

    /// How many nodes currently report `backend` down.
    pub fn down_votes(&self, backend: &str) -> usize {
        self.votes.get(backend).map_or(0, BTreeSet::len)
    }

    /// Whether `backend` is down cluster-wide: a majority of the `voters`
    /// nodes report it down (2 of 3, 3 of 5).
    pub fn quorum_down(&self, backend: &str, voters: usize) -> bool {
        voters > 0 && self.down_votes(backend) > voters / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_health_is_recorded_per_node_and_idempotent() {
        let mut r = ClusterRecord::default();
        let down = |node| Command::MonitorHealth { node, alive: false };
        let up = |node| Command::MonitorHealth { node, alive: true };
        assert_eq!(r.apply(&up(1)), Applied::Monitor { changed: false });
        assert_eq!(r.apply(&down(1)), Applied::Monitor { changed: true });
        assert_eq!(r.apply(&down(1)), Applied::Monitor { changed: false });
        assert_eq!(r.apply(&down(3)), Applied::Monitor { changed: true });
        assert_eq!(r.monitors_down, BTreeSet::from([1, 3]));
        assert_eq!(r.apply(&up(1)), Applied::Monitor { changed: true });
        assert_eq!(r.monitors_down, BTreeSet::from([3]));
        // A record written before the field existed reads as "none down".
        let old = r#"{"generation":1,"primary":"pg0","detached":{},"failover_in_progress":false,"votes":{}}"#;
        let parsed: ClusterRecord = serde_json::from_str(old).unwrap();
        assert!(parsed.monitors_down.is_empty());
    }

    fn report(node: u64, backend: &str, down: bool) -> Command {
        Command::ReportHealth {
            node,
            backend: backend.to_owned(),
            down,
        }
    }

    /// What a health report applied: whether the vote set changed, and how
    /// many nodes now see the backend down.
    fn health(changed: bool, down_votes: usize) -> Applied {
        Applied::Health {
            changed,
            down_votes,
        }
    }

    fn commit(expected: u64, generation: u64, primary: &str) -> Command {
        Command::Commit {
            expected_generation: expected,
            record: Generation {
                generation,
                primary: Some(primary.to_owned()),
                detached: BTreeMap::new(),
                failover_in_progress: false,
                down: BTreeMap::new(),
                synchronous: None,
            },
        }
    }

    /// A generation without synchronous standbys is written as before
    /// they existed, and one written before reads as asynchronous: records
    /// and journals of either version read in the other.
    #[test]
    fn an_asynchronous_generation_keeps_the_format_of_earlier_versions() {
        let Command::Commit { record, .. } = commit(0, 1, "pg01") else {
            unreachable!("commit() makes a Commit")
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(!json.contains("synchronous"), "{json}");
        let old = r#"{"generation":1,"primary":"pg01","detached":{},"failover_in_progress":false}"#;
        let read: Generation = serde_json::from_str(old).unwrap();
        assert_eq!(read.synchronous, None);
        let sync = Synchronous {
            standbys: BTreeSet::from(["pg02".to_owned()]),
            count: 1,
        };
        let with = Generation {
            synchronous: Some(sync.clone()),
            ..record
        };
        let back: Generation =
            serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(back.synchronous, Some(sync));
    }

    #[test]
    fn one_synchronous_standby_of_one_is_enough_to_decide_and_any_one_of_three_needs_all() {
        let of = |n: usize, count: u32| Synchronous {
            standbys: (0..n).map(|i| format!("pg{i}")).collect(),
            count,
        };
        assert_eq!(of(1, 1).needed_to_decide(), 1);
        assert_eq!(of(3, 1).needed_to_decide(), 3);
        assert_eq!(of(3, 2).needed_to_decide(), 2);
        assert_eq!(of(2, 2).needed_to_decide(), 1);
        assert_eq!(of(0, 1).needed_to_decide(), 1);
    }

    #[test]
    fn commit_applies_only_on_matching_generation() {
        let mut r = ClusterRecord::default();
        assert_eq!(
            r.apply(&commit(0, 1, "pg01")),
            Applied::Committed { generation: 1 }
        );
        // A second proposer that also saw generation 0 loses.
        assert_eq!(
            r.apply(&commit(0, 1, "pg02")),
            Applied::Rejected(Rejection::GenerationMismatch {
                expected: 0,
                actual: 1
            })
        );
        assert_eq!(r.primary.as_deref(), Some("pg01"));
        assert_eq!(
            r.apply(&commit(1, 1, "pg02")),
            Applied::Rejected(Rejection::GenerationNotIncreasing {
                current: 1,
                proposed: 1
            })
        );
        let mut detached = BTreeMap::new();
        detached.insert("pg01".to_owned(), "failed health checks".to_owned());
        let cmd = Command::Commit {
            expected_generation: 1,
            record: Generation {
                generation: 2,
                primary: Some("pg02".to_owned()),
                detached: detached.clone(),
                failover_in_progress: true,
                down: BTreeMap::new(),
                synchronous: Some(Synchronous {
                    standbys: BTreeSet::from(["pg03".to_owned()]),
                    count: 1,
                }),
            },
        };
        assert_eq!(r.apply(&cmd), Applied::Committed { generation: 2 });
        assert_eq!(r.generation, 2);
        assert_eq!(r.primary.as_deref(), Some("pg02"));
        assert_eq!(r.detached, detached);
        assert_eq!(
            r.synchronous.as_ref().map(|s| &s.standbys),
            Some(&BTreeSet::from(["pg03".to_owned()]))
        );
        assert!(r.failover_in_progress);
    }

    #[test]
    fn quorum_down_needs_a_majority() {
        let mut r = ClusterRecord::default();
        r.apply(&report(1, "pg01", true));
        assert!(!r.quorum_down("pg01", 3));
        r.apply(&report(2, "pg01", true));
        assert!(r.quorum_down("pg01", 3), "2 of 3");
        assert!(!r.quorum_down("pg01", 5), "2 of 5");
        r.apply(&report(3, "pg01", true));
        assert!(r.quorum_down("pg01", 5), "3 of 5");
        assert!(!r.quorum_down("pg02", 3));
        assert!(!r.quorum_down("pg01", 0));
    }

    #[test]
    fn votes_are_per_node() {
        let mut r = ClusterRecord::default();
        assert_eq!(r.apply(&report(1, "pg01", true)), health(true, 1));
        // Reporting twice counts once.
        assert_eq!(r.apply(&report(1, "pg01", true)), health(false, 1));
        assert!(!r.quorum_down("pg01", 3));
        r.apply(&report(2, "pg01", true));
        assert!(r.quorum_down("pg01", 3));
        // Up again removes the node's vote.
        assert_eq!(r.apply(&report(2, "pg01", false)), health(true, 1));
        assert!(!r.quorum_down("pg01", 3));
        r.apply(&report(1, "pg01", false));
        assert!(r.votes.is_empty(), "empty vote sets are dropped");
        assert_eq!(r.apply(&report(3, "pg01", false)), health(false, 0));
    }

    #[test]
    fn commands_round_trip_through_json() {
        for cmd in [Command::Noop, report(2, "pg01", true), commit(4, 5, "pg03")] {
            let bytes = serde_json::to_vec(&cmd).unwrap();
            assert_eq!(serde_json::from_slice::<Command>(&bytes).unwrap(), cmd);
        }
    }
}
