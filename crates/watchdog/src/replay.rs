//! Replay protection for the signed messages between watchdogs (Raft
//! envelopes, forwarded reports, forwarded operator requests).
//!
//! Every signed message carries its sender's *epoch* and a *sequence
//! number* (both under the MAC, see [`crate::auth`]). The rules:
//!
//! - **Senders**: the epoch is persisted in `state_dir/`[`REPLAY_FILE`] and
//!   only ever increases: at start a node takes `max(previous + 1, now in
//!   unix milliseconds)` and writes it (write temp, fsync, rename, fsync dir)
//!   before it sends anything with it ([`ReplayGuard::start_epoch`]). The
//!   clock term keeps it increasing even when `state_dir` was wiped. Within
//!   an epoch each stream numbers its messages 1, 2, 3... ([`Sequence`]).
//! - **Receivers** keep, per peer, the newest epoch seen, persisted in the
//!   same file before the first message of a new epoch is accepted (one
//!   write per peer restart), and in memory, per peer and message kind, the
//!   last (epoch, seq) accepted. A message from an earlier epoch than the
//!   newest seen is refused, also after the receiver itself restarted; in
//!   the newest epoch the sequence number must increase. A sender announces
//!   its new epoch to every peer (an envelope without messages, retried
//!   every second until one gets through), so a peer learns it even when
//!   Raft gives the two nothing to say to each other (two followers).
//! - **Forwarded reports** (a "backend down" or "monitor down" vote, the
//!   kind whose replay changes the committed record) also have their last
//!   (epoch, seq) persisted per peer (they are rare: one write each), so
//!   not even a report from the sender's *current* epoch is accepted twice
//!   across a receiver restart. And each is bound (under its `bound_mac`)
//!   to the leader and Raft term it was sent to: a report captured on its
//!   way to one leader is refused by any other node and in any later term,
//!   even by a node that never heard of the sender's newer epoch.
//! - **Forwarded operator requests** travel as forwarded reports do (a
//!   [`pgwarden_proto::v1::PeerProposal`] with its request under the
//!   `bound_mac`), numbered in a stream of their own ([`Kind::Operator`]:
//!   a request waits for the leader's monitor, and must not hold the
//!   reports back), persisted the same way: accepted once, also across a
//!   receiver restart.
//!
//! What is left, deliberately: after a *receiver* restart, a Raft envelope
//! from the sender's current epoch with a sequence number above what the
//! restarted receiver has seen since could be replayed once. Persisting
//! every envelope's seq would fsync on every heartbeat. It is harmless:
//! such an envelope holds Raft messages of terms the restarted node has
//! already left or will check (Raft is safe under duplicated and delayed
//! messages, the term decides).
//!
//! **Rolling upgrades**: the message formats and MACs are unchanged. A
//! sender of this version sets [`PERSISTED_EPOCH`] in every seq (under the
//! MAC, so no one can add or strip it); an older sender counts seq from 1
//! with a random epoch per process start. Older receivers accept the new
//! messages as before (the epoch differs after a restart, seq increases
//! within one). This version accepts an older sender's messages under the
//! old rule (logged once per peer epoch: its messages stay replayable across
//! its restarts until it is upgraded), and refuses them once that peer has
//! been seen with a persisted epoch: from then on they can only be captures
//! (or a downgrade: remove [`REPLAY_FILE`] on the other nodes after
//! downgrading a node).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::storage::{FilePersist, MemoryPersist, Persist, StorageError};

/// The file in `state_dir` holding this node's epoch and the newest epoch
/// seen from each peer.
pub const REPLAY_FILE: &str = "peer-epochs.json";

/// Set in the `seq` of every message from a sender whose epoch is
/// persisted and only increases. An older sender counts seq from 1 and
/// never reaches it.
pub const PERSISTED_EPOCH: u64 = 1 << 63;

/// The version of the persisted format, checked on load.
const FORMAT: u32 = 1;

/// Most refusals and older senders remembered for logging once.
const WARNED: usize = 1024;

/// Numbers the messages of one stream within this process's epoch.
#[derive(Debug, Default)]
pub struct Sequence {
    last: u64,
}

impl Sequence {
    /// A stream that has sent nothing yet.
    pub fn new() -> Sequence {
        Sequence::default()
    }

    /// The seq of the next message: increasing, with [`PERSISTED_EPOCH`] set.
    pub fn take(&mut self) -> u64 {
        self.last = self.last.saturating_add(1);
        PERSISTED_EPOCH | self.last
    }
}

/// Which stream a message belongs to: each has its own sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Raft messages ([`pgwarden_proto::v1::PeerEnvelope`]).
    Envelope,
    /// A forwarded report ([`pgwarden_proto::v1::PeerProposal`]).
    Proposal,
    /// A forwarded operator request (a [`pgwarden_proto::v1::PeerProposal`]
    /// with `operator` set).
    Operator,
}

/// Why a correctly signed message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The sender has restarted since: a message captured before.
    #[error("replayed: epoch {epoch} of node {from} is older than its epoch {newest} seen already")]
    EarlierEpoch {
        /// The sender.
        from: u64,
        /// The message's epoch.
        epoch: u64,
        /// The newest epoch seen from the sender.
        newest: u64,
    },
    /// Already accepted (or an older message of the same epoch).
    #[error("replayed: seq {seq} of node {from} in epoch {epoch} is not after {last}")]
    Repeated {
        /// The sender.
        from: u64,
        /// The epoch.
        epoch: u64,
        /// The message's seq.
        seq: u64,
        /// The last seq accepted in that epoch.
        last: u64,
    },
    /// An older version's format from a peer already seen with a persisted
    /// epoch.
    #[error(
        "replayed: node {from} sent in an older version's format after it was seen upgraded (after a downgrade, remove {REPLAY_FILE} in state_dir on the other nodes)"
    )]
    OlderFormat {
        /// The sender.
        from: u64,
    },
    /// The new epoch could not be recorded durably, so it is not accepted.
    #[error("node {from}'s new epoch cannot be recorded: {detail}")]
    NotDurable {
        /// The sender.
        from: u64,
        /// The storage error.
        detail: String,
    },
}

impl Refusal {
    fn sender_epoch(&self) -> (u64, u64) {
        match self {
            Refusal::EarlierEpoch { from, epoch, .. } | Refusal::Repeated { from, epoch, .. } => {
                (*from, *epoch)
            }
            Refusal::OlderFormat { from } | Refusal::NotDurable { from, .. } => (*from, 0),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ReplayFile {
    format: u32,
    /// The epoch this node used last.
    epoch: u64,
    /// Per peer (Raft id).
    peers: BTreeMap<u64, PeerFile>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct PeerFile {
    /// The newest epoch seen.
    epoch: u64,
    /// The last forwarded report accepted: its epoch and seq.
    #[serde(default)]
    proposal_epoch: u64,
    #[serde(default)]
    proposal_seq: u64,
    /// The last forwarded operator request accepted: its epoch and seq.
    #[serde(default)]
    operator_epoch: u64,
    #[serde(default)]
    operator_seq: u64,
}

/// This node's epoch and, per peer, what was accepted already; see the
/// module docs for the rules.
pub struct ReplayGuard {
    persist: Box<dyn Persist>,
    file: ReplayFile,
    last: HashMap<(u64, Kind), (u64, u64)>,
    warned: HashSet<(u64, u64, bool)>,
}

impl std::fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayGuard")
            .field("location", &self.persist.location())
            .field("epoch", &self.file.epoch)
            .finish_non_exhaustive()
    }
}

impl ReplayGuard {
    /// Opens `state_dir/`[`REPLAY_FILE`] (a missing file is a node that never ran).
    pub fn open(state_dir: impl Into<std::path::PathBuf>) -> Result<ReplayGuard, StorageError> {
        Self::open_with(Box::new(FilePersist::named(state_dir, REPLAY_FILE)))
    }

    /// A guard that keeps nothing across restarts (tests).
    pub fn in_memory() -> ReplayGuard {
        Self::open_with(Box::new(MemoryPersist::new()))
            .unwrap_or_else(|_| unreachable!("an empty memory disk always loads"))
    }

    /// Opens the state saved in `persist`.
    pub fn open_with(persist: Box<dyn Persist>) -> Result<ReplayGuard, StorageError> {
        let file = match persist.load()? {
            None => ReplayFile {
                format: FORMAT,
                ..ReplayFile::default()
            },
            Some(bytes) => {
                let corrupt = |detail: String| StorageError::Corrupt {
                    path: persist.location(),
                    detail,
                };
                let file: ReplayFile =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                if file.format != FORMAT {
                    return Err(corrupt(format!(
                        "format {} is not the supported format {FORMAT}",
                        file.format
                    )));
                }
                file
            }
        };
        Ok(ReplayGuard {
            persist,
            file,
            last: HashMap::new(),
            warned: HashSet::new(),
        })
    }

    /// Takes this process's epoch, `max(previous + 1, now_unix_ms)`, and
    /// persists it; only when this returns may anything be sent with it.
    pub fn start_epoch(&mut self, now_unix_ms: u64) -> Result<u64, StorageError> {
        let mut file = self.file.clone();
        file.epoch = file.epoch.saturating_add(1).max(now_unix_ms);
        self.save(&file)?;
        self.file = file;
        Ok(self.file.epoch)
    }

    /// This node's epoch (0 before [`Self::start_epoch`]).
    pub fn epoch(&self) -> u64 {
        self.file.epoch
    }

    /// The newest persisted epoch seen from `peer`.
    pub fn newest_epoch(&self, peer: u64) -> Option<u64> {
        self.file.peers.get(&peer).map(|p| p.epoch)
    }

    fn save(&mut self, file: &ReplayFile) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(file).map_err(|e| StorageError::Io {
            path: self.persist.location(),
            source: std::io::Error::other(e),
        })?;
        self.persist.save(&bytes)
    }

    /// Accepts a correctly signed message of `kind` from `from` with
    /// `epoch` and `seq`, or says why it is a replay. Call it after every
    /// other check, just before acting on the message: an accepted seq is
    /// used up.
    pub fn check(&mut self, kind: Kind, from: u64, epoch: u64, seq: u64) -> Result<(), Refusal> {
        let r = self.decide(kind, from, epoch, seq);
        match &r {
            Ok(()) => {}
            Err(why) => {
                let (f, e) = why.sender_epoch();
                if self.first_warning(f, e, true) {
                    tracing::warn!(from, ?kind, epoch, "refusing a peer message: {why}");
                } else {
                    tracing::debug!(from, ?kind, epoch, "refusing a peer message: {why}");
                }
            }
        }
        r
    }

    fn first_warning(&mut self, from: u64, epoch: u64, refusal: bool) -> bool {
        if self.warned.len() >= WARNED {
            self.warned.clear();
        }
        self.warned.insert((from, epoch, refusal))
    }

    fn decide(&mut self, kind: Kind, from: u64, epoch: u64, seq: u64) -> Result<(), Refusal> {
        let known = self.file.peers.get(&from).copied();
        let last = self.last.get(&(from, kind)).copied();
        let repeated = |l: Option<(u64, u64)>| match l {
            Some((e, s)) if e == epoch && seq <= s => Err(Refusal::Repeated {
                from,
                epoch,
                seq,
                last: s,
            }),
            _ => Ok(()),
        };
        if seq & PERSISTED_EPOCH == 0 {
            // An older version: random epochs, accepted under its own rule
            // until the peer shows up upgraded.
            if known.is_some() {
                return Err(Refusal::OlderFormat { from });
            }
            repeated(last)?;
            self.last.insert((from, kind), (epoch, seq));
            if self.first_warning(from, epoch, false) {
                tracing::warn!(
                    from,
                    epoch,
                    "node {from} runs an older pgwarden-watchdog without a persisted epoch: its messages can be replayed after it restarts until it is upgraded"
                );
            }
            return Ok(());
        }
        let mut peer = known.unwrap_or_default();
        if let Some(k) = known
            && epoch < k.epoch
        {
            return Err(Refusal::EarlierEpoch {
                from,
                epoch,
                newest: k.epoch,
            });
        }
        repeated(last)?;
        let mut changed = known.is_none_or(|k| epoch > k.epoch);
        peer.epoch = peer.epoch.max(epoch);
        // The forwards whose replay would change something are rare: each
        // is persisted (one write each).
        let persisted = match kind {
            Kind::Proposal => Some((&mut peer.proposal_epoch, &mut peer.proposal_seq)),
            Kind::Operator => Some((&mut peer.operator_epoch, &mut peer.operator_seq)),
            Kind::Envelope => None,
        };
        if let Some((last_epoch, last_seq)) = persisted {
            repeated(Some((*last_epoch, *last_seq)))?;
            *last_epoch = epoch;
            *last_seq = seq;
            changed = true;
        }
        if changed {
            let mut file = self.file.clone();
            file.peers.insert(from, peer);
            self.save(&file).map_err(|e| Refusal::NotDurable {
                from,
                detail: e.to_string(),
            })?;
            self.file = file;
        }
        self.last.insert((from, kind), (epoch, seq));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(disk: &MemoryPersist) -> ReplayGuard {
        ReplayGuard::open_with(Box::new(disk.clone())).unwrap()
    }

    /// A guard on `disk` that accepted each of `accepted` from node 2, in
    /// order: (kind, epoch, seq), the seq flagged [`PERSISTED_EPOCH`].
    fn accepting(disk: &MemoryPersist, accepted: &[(Kind, u64, u64)]) -> ReplayGuard {
        let mut rx = guard(disk);
        for &(kind, epoch, seq) in accepted {
            rx.check(kind, 2, epoch, PERSISTED_EPOCH | seq)
                .unwrap_or_else(|why| panic!("{kind:?} {epoch} {seq}: {why}"));
        }
        rx
    }

    #[test]
    fn the_epoch_is_persisted_and_only_increases() {
        let disk = MemoryPersist::new();
        let first = guard(&disk).start_epoch(1_000).unwrap();
        assert_eq!(first, 1_000);
        // Restarted within the same millisecond, or with the clock set back.
        assert_eq!(guard(&disk).start_epoch(1_000).unwrap(), 1_001);
        assert_eq!(guard(&disk).start_epoch(5).unwrap(), 1_002);
        assert_eq!(guard(&disk).start_epoch(9_000).unwrap(), 9_000);
        assert_eq!(guard(&disk).epoch(), 9_000);
        // A failed write: nothing may be sent with that epoch.
        disk.set_failing(true);
        let mut g = guard(&disk);
        assert!(g.start_epoch(10_000).is_err());
        assert_eq!(g.epoch(), 9_000);
    }

    #[test]
    fn sequences_carry_the_persisted_epoch_flag_and_increase() {
        let mut s = Sequence::new();
        let (a, b) = (s.take(), s.take());
        assert_eq!(a, PERSISTED_EPOCH | 1);
        assert!(b > a && b & PERSISTED_EPOCH != 0);
    }

    /// Issue 7, defect 6: a sender's restart ended replay protection.
    #[test]
    fn messages_from_an_earlier_epoch_are_refused_after_the_sender_restarts() {
        let mut rx = ReplayGuard::in_memory();
        let (old, new) = (1_000, 2_000);
        let mut captured = Vec::new();
        let mut s = Sequence::new();
        for kind in [Kind::Envelope, Kind::Proposal, Kind::Operator] {
            for _ in 0..5 {
                let seq = s.take();
                rx.check(kind, 2, old, seq).unwrap();
                captured.push((kind, seq));
            }
        }
        // The sender restarts: its new epoch is higher, its seq restarts.
        let mut s = Sequence::new();
        rx.check(Kind::Envelope, 2, new, s.take()).unwrap();
        for (kind, seq) in &captured {
            assert!(
                matches!(
                    rx.check(*kind, 2, old, *seq),
                    Err(Refusal::EarlierEpoch { newest: 2_000, .. })
                ),
                "{kind:?} {seq}"
            );
        }
        // Even the kinds not seen in the new epoch yet.
        rx.check(Kind::Proposal, 2, new, s.take()).unwrap();
        // Within the epoch, seq must increase.
        let seq = s.take();
        rx.check(Kind::Operator, 2, new, seq).unwrap();
        assert!(matches!(
            rx.check(Kind::Operator, 2, new, seq),
            Err(Refusal::Repeated { .. })
        ));
        // Other peers are not affected.
        rx.check(Kind::Envelope, 3, old, PERSISTED_EPOCH | 1)
            .unwrap();
    }

    #[test]
    fn the_newest_epochs_and_reports_survive_a_receiver_restart() {
        let disk = MemoryPersist::new();
        drop(accepting(
            &disk,
            &[
                (Kind::Envelope, 1_000, 7),
                (Kind::Proposal, 1_000, 3),
                (Kind::Envelope, 2_000, 1),
                (Kind::Proposal, 2_000, 4),
            ],
        ));
        let mut rx = guard(&disk);
        assert_eq!(rx.newest_epoch(2), Some(2_000));
        for kind in [Kind::Envelope, Kind::Proposal, Kind::Operator] {
            assert!(
                matches!(
                    rx.check(kind, 2, 1_000, PERSISTED_EPOCH | 9),
                    Err(Refusal::EarlierEpoch { .. })
                ),
                "{kind:?}"
            );
        }
        // The current epoch's reports: not twice, even across the restart.
        assert!(matches!(
            rx.check(Kind::Proposal, 2, 2_000, PERSISTED_EPOCH | 4),
            Err(Refusal::Repeated { .. })
        ));
        rx.check(Kind::Proposal, 2, 2_000, PERSISTED_EPOCH | 5)
            .unwrap();
    }

    #[test]
    fn an_epoch_that_cannot_be_recorded_is_not_accepted() {
        let disk = MemoryPersist::new();
        let mut rx = accepting(&disk, &[(Kind::Envelope, 1_000, 1)]);
        disk.set_failing(true);
        assert!(matches!(
            rx.check(Kind::Envelope, 2, 2_000, PERSISTED_EPOCH | 1),
            Err(Refusal::NotDurable { .. })
        ));
        // Nothing changed: the same epoch goes on.
        rx.check(Kind::Envelope, 2, 1_000, PERSISTED_EPOCH | 2)
            .unwrap();
        disk.set_failing(false);
        rx.check(Kind::Envelope, 2, 2_000, PERSISTED_EPOCH | 1)
            .unwrap();
        assert_eq!(guard(&disk).newest_epoch(2), Some(2_000));
    }

    #[test]
    fn older_senders_are_accepted_until_seen_upgraded() {
        let mut rx = ReplayGuard::in_memory();
        // An older version: random epochs, seq from 1.
        rx.check(Kind::Envelope, 2, u64::MAX - 5, 1).unwrap();
        rx.check(Kind::Envelope, 2, u64::MAX - 5, 2).unwrap();
        assert!(rx.check(Kind::Envelope, 2, u64::MAX - 5, 2).is_err());
        rx.check(Kind::Envelope, 2, 17, 1).unwrap();
        // Upgraded: a lower epoch than its last random one is fine...
        rx.check(Kind::Envelope, 2, 1_000, PERSISTED_EPOCH | 1)
            .unwrap();
        // ...and from then on its old format is a capture.
        assert!(matches!(
            rx.check(Kind::Envelope, 2, 18, 1),
            Err(Refusal::OlderFormat { from: 2 })
        ));
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(REPLAY_FILE), b"{\"format\":1,").unwrap();
        let err = ReplayGuard::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(REPLAY_FILE) && err.contains("corrupt"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut g = ReplayGuard::open(dir.path()).unwrap();
        let e = g.start_epoch(42).unwrap();
        assert_eq!(ReplayGuard::open(dir.path()).unwrap().epoch(), e);
    }
}
