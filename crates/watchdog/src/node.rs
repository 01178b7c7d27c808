//! [`WatchdogNode`]: one Raft member with its state machine and lease, as a
//! plain struct driven from outside.
//!
//! The caller (the daemon's single consensus task, or the simulation) drives
//! it with [`WatchdogNode::tick`], [`WatchdogNode::step`],
//! [`WatchdogNode::propose`] and [`WatchdogNode::report_unreachable`], and
//! after each call collects the work to do with [`WatchdogNode::ready`]: the
//! messages to send, the commands applied, a role change, and what to do
//! with the delegate IP. There is no IO besides the storage's persistence
//! and no clock: a tick is whatever period the caller ticks at (100 ms in the
//! daemon).
//!
//! `ready` handles raft-rs's `Ready` in the order the raft-rs crate
//! documentation ("Processing the `Ready` State") and its
//! `examples/single_mem_node` give:
//!
//! 1. messages that may leave before persisting (`Ready::take_messages`);
//! 2. a snapshot received from the leader: restore the state machine, install
//!    it in the storage;
//! 3. committed entries: apply them to the [`ClusterRecord`];
//! 4. new entries: append them to the storage;
//! 5. the hard state: store it; then write everything durably (one atomic
//!    write, fsynced);
//! 6. messages that may leave only after persisting
//!    (`Ready::take_persisted_messages`: votes, append responses);
//! 7. `advance`, then the `LightReady`: store its commit index, send its
//!    messages, apply its committed entries, `advance_apply`.
//!
//! Afterwards it takes a snapshot of the state machine every
//! [`NodeConfig::compact_every`] applied entries (dropping the entries it
//! covers), persists again if anything changed, reports a role change, and
//! asks the [`Lease`] whether to acquire or release the delegate IP.
//!
//! On restart the state machine is the last snapshot's, and Raft hands the
//! committed entries after it to the first `ready` again, so
//! [`Output::applied`] repeats commands applied before the restart; applying
//! is deterministic, so the record ends the same.

use raft::eraftpb::{Entry, EntryType, HardState, Message, MessageType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};

use crate::lease::{Lease, VipAction};

use crate::logger::raft_logger;
use crate::settings::{ELECTION_TICKS, HEARTBEAT_TICKS};
use crate::state::{Applied, ClusterRecord, Command};
use crate::storage::{DurableStorage, StorageError};

/// Settings of one node. Voters are fixed (no membership changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's Raft id, one of `voters`.
    pub id: u64,
    /// Every voter's id (ids are `1..=n`).
    pub voters: Vec<u64>,
    /// Ticks without hearing from a leader before a follower campaigns (10).
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats (2).
    pub heartbeat_tick: usize,
    /// Take a snapshot of the state machine every this many applied entries.
    pub compact_every: u64,
    /// Draw randomized election timeouts from an RNG seeded with this value
    /// instead of raft-rs's thread RNG: makes a simulation reproducible.
    /// `None` in the daemon.
    pub timeout_seed: Option<u64>,
}

impl NodeConfig {
    /// The defaults for node `id` among `voters`: election after
    /// [`ELECTION_TICKS`] (10), heartbeat every [`HEARTBEAT_TICKS`] (2), a
    /// snapshot every 64 entries.
    pub fn new(id: u64, voters: Vec<u64>) -> Self {
        Self {
            id,
            voters,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            compact_every: 64,
            timeout_seed: None,
        }
    }
}

/// Errors of a [`WatchdogNode`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot work.
    #[error("invalid watchdog node configuration: {0}")]
    Config(String),
    /// Reading or writing the Raft state failed. The node must be dropped
    /// and reopened from storage; it refuses further work.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// raft-rs refused an operation.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A snapshot's state-machine data cannot be decoded.
    #[error("snapshot at index {index} holds an undecodable cluster record: {detail}")]
    Snapshot {
        /// The snapshot's index.
        index: u64,
        /// The decoding error.
        detail: String,
    },
    /// A message from the network was refused before reaching Raft.
    #[error("refused a {msg_type:?} message from {from} to {to}: {reason}")]
    Refused {
        /// The message type.
        msg_type: MessageType,
        /// The sender's id.
        from: u64,
        /// The addressee's id.
        to: u64,
        /// Why.
        reason: &'static str,
    },
    /// An earlier storage failure stopped this node.
    #[error("the watchdog node stopped after a storage failure; reopen it from storage")]
    Failed,
}

/// Why a proposal was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// Only the leader proposes; `leader` is the one this node knows of.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<u64>,
    },
    /// A health report names a node that is not a voter.
    #[error("node {0} is not a voter")]
    UnknownNode(u64),
    /// raft-rs dropped the proposal.
    #[error("proposal dropped: {0}")]
    Dropped(String),
}

/// This node's role changed (or it learned of a new leader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleChange {
    /// The role before.
    pub previous: StateRole,
    /// The role now.
    pub role: StateRole,
    /// The current term.
    pub term: u64,
    /// The leader this node knows of now.
    pub leader: Option<u64>,
}

/// The work [`WatchdogNode::ready`] hands back to the caller.
#[derive(Debug, Default)]
pub struct Output {
    /// Raft messages to send to peers (`to` names the peer), in order.
    pub messages: Vec<Message>,
    /// Commands applied to the state machine, with their log index and
    /// result, in log order.
    pub applied: Vec<(u64, Command, Applied)>,
    /// Set when the role or the known leader changed since the last call.
    pub role_changed: Option<RoleChange>,
    /// Acquire or release the delegate IP now.
    pub vip: Option<VipAction>,
}

/// One watchdog's Raft member: the `RawNode`, the replicated
/// [`ClusterRecord`] and the delegate-IP [`Lease`].
pub struct WatchdogNode {
    config: NodeConfig,
    raw: RawNode<DurableStorage>,
    record: ClusterRecord,
    applied: u64,
    lease: Lease,
    timeout_rng: Option<StdRng>,
    role: (StateRole, u64),
    failed: bool,
    /// The newest `(term, at)` a quorum confirmed this node's lead for:
    /// `at` as given to [`WatchdogNode::confirm_lead`] (the time the
    /// confirming heartbeats were sent).
    confirmed: Option<(u64, u64)>,
}

impl std::fmt::Debug for WatchdogNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchdogNode")
            .field("id", &self.config.id)
            .field("role", &self.role())
            .field("term", &self.term())
            .field("leader", &self.leader())
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

/// A lead confirmation's `(term, at)` (see [`WatchdogNode::confirm_lead`]).
fn decode_confirmation(ctx: &[u8]) -> Option<(u64, u64)> {
    let (term, at) = ctx.split_at_checked(8)?;
    Some((
        u64::from_be_bytes(term.try_into().ok()?),
        u64::from_be_bytes(at.try_into().ok()?),
    ))
}

fn decode_record(index: u64, data: &[u8]) -> Result<ClusterRecord, Error> {
    if data.is_empty() {
        return Ok(ClusterRecord::default());
    }
    serde_json::from_slice(data).map_err(|e| Error::Snapshot {
        index,
        detail: e.to_string(),
    })
}

impl WatchdogNode {
    /// Starts the node on `storage` (freshly created or reopened). The state
    /// machine is restored from the storage's snapshot; the first
    /// [`Self::ready`] releases the delegate IP (start-up).
    pub fn new(config: NodeConfig, storage: DurableStorage) -> Result<Self, Error> {
        let mut voters = config.voters.clone();
        voters.sort_unstable();
        voters.dedup();
        if !voters.contains(&config.id) {
            return Err(Error::Config(format!(
                "node id {} is not among the voters {voters:?}",
                config.id
            )));
        }
        if voters.contains(&0) {
            return Err(Error::Config("node id 0 is reserved by Raft".to_owned()));
        }
        if config.compact_every == 0 {
            return Err(Error::Config("compact_every must be at least 1".to_owned()));
        }
        if storage.voters() != voters.as_slice() {
            return Err(Error::Config(format!(
                "storage at {} has voters {:?}, configured {voters:?}",
                storage.location().display(),
                storage.voters()
            )));
        }
        let record = decode_record(storage.snapshot_index(), storage.snapshot_data())?;
        let applied = storage.snapshot_index();
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            applied,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        raft_config
            .validate()
            .map_err(|e| Error::Config(e.to_string()))?;
        let raw = RawNode::new(&raft_config, storage, &raft_logger(config.id))?;
        let lease = Lease::new(config.id, &voters, config.election_tick as u64);
        let timeout_rng = config.timeout_seed.map(StdRng::seed_from_u64);
        let role = (raw.raft.state, raw.raft.leader_id);
        let mut node = Self {
            config: NodeConfig { voters, ..config },
            raw,
            record,
            applied,
            lease,
            timeout_rng,
            role,
            failed: false,
            confirmed: None,
        };
        node.reseed_election_timeout();
        Ok(node)
    }

    /// When seeded, replaces the election timeout raft-rs just drew (it does
    /// so whenever it restarts the election timer, leaving
    /// `election_elapsed` at 0) by one from our RNG.
    fn reseed_election_timeout(&mut self) {
        if let Some(rng) = self.timeout_rng.as_mut()
            && self.raw.raft.election_elapsed == 0
        {
            let e = self.config.election_tick;
            let t = rng.random_range(e..2 * e);
            self.raw.raft.set_randomized_election_timeout(t);
        }
    }

    // === driving ===

    /// Advances logical time by one tick (Raft's election and heartbeat
    /// timers, and the lease clock). Call [`Self::ready`] afterwards.
    pub fn tick(&mut self) {
        self.lease.tick();
        self.raw.tick();
        self.reseed_election_timeout();
    }

    /// Hands a message received from a peer to Raft. Messages not addressed
    /// to this node, from non-voters, of local-only types, or proposals
    /// (this cluster never forwards them) are refused. Call [`Self::ready`]
    /// afterwards.
    pub fn step(&mut self, msg: Message) -> Result<(), Error> {
        if self.failed {
            return Err(Error::Failed);
        }
        let (msg_type, from, to, reject) = (msg.get_msg_type(), msg.from, msg.to, msg.reject);
        let refuse = |reason| Error::Refused {
            msg_type,
            from,
            to,
            reason,
        };
        if to != self.config.id {
            return Err(refuse("not addressed to this node"));
        }
        if from == self.config.id || !self.config.voters.contains(&from) {
            return Err(refuse("the sender is not a peer"));
        }
        if msg_type == MessageType::MsgPropose {
            return Err(refuse("proposals are not forwarded"));
        }
        let msg_term = msg.term;
        self.raw.step(msg)?;
        self.reseed_election_timeout();
        let response = match msg_type {
            MessageType::MsgAppendResponse | MessageType::MsgHeartbeatResponse => true,
            MessageType::MsgRequestVoteResponse => !reject,
            _ => false,
        };
        if response && msg_term == self.raw.raft.term {
            self.lease.heard_from(from, msg_term);
        }
        Ok(())
    }

    /// Proposes a command; only the leader accepts. Returns the log index it
    /// will have; it is applied (on every
    /// node) once committed, which [`Output::applied`] reports. Call
    /// [`Self::ready`] afterwards.
    pub fn propose(&mut self, cmd: Command) -> Result<u64, ProposeError> {
        if self.failed || self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        if let Command::ReportHealth { node, .. } = &cmd
            && !self.config.voters.contains(node)
        {
            return Err(ProposeError::UnknownNode(*node));
        }
        let data = serde_json::to_vec(&cmd).map_err(|e| ProposeError::Dropped(e.to_string()))?;
        // The entry lands right after the leader's last one; `ready` reports
        // it in `Output::applied` under that index once committed.
        let index = self.raw.raft.raft_log.last_index() + 1;
        self.raw
            .propose(Vec::new(), data)
            .map_err(|e| ProposeError::Dropped(e.to_string()))?;
        Ok(index)
    }

    /// Starts an election now instead of waiting for the election timeout
    /// (with pre-vote, so it does not disturb a working leader). Call
    /// [`Self::ready`] afterwards.
    pub fn campaign(&mut self) -> Result<(), Error> {
        if self.failed {
            return Err(Error::Failed);
        }
        self.raw.campaign()?;
        self.reseed_election_timeout();
        Ok(())
    }

    /// Hands the lead to `to` (Raft's leadership transfer: it campaigns as
    /// soon as its log is caught up, without waiting for an election
    /// timeout). Only a leader transfers; a follower ignores it. Call
    /// [`Self::ready`] afterwards.
    pub fn transfer_leader(&mut self, to: u64) {
        if self.is_leader() && to != self.config.id && self.config.voters.contains(&to) {
            self.raw.transfer_leader(to);
        }
    }

    /// Tells Raft that a message to `peer` could not be delivered, so the
    /// leader probes it again instead of streaming.
    pub fn report_unreachable(&mut self, peer: u64) {
        if self.config.voters.contains(&peer) && peer != self.config.id {
            self.raw.report_unreachable(peer);
        }
    }

    /// Tells Raft whether a snapshot message to `peer` was delivered. Raft
    /// sends nothing else to a peer while its snapshot is outstanding, so the
    /// transport must report every `MsgSnapshot` it sends, or loses.
    pub fn report_snapshot(&mut self, peer: u64, delivered: bool) {
        if self.config.voters.contains(&peer) && peer != self.config.id {
            let status = if delivered {
                SnapshotStatus::Finish
            } else {
                SnapshotStatus::Failure
            };
            self.raw.report_snapshot(peer, status);
        }
    }

    /// Whether [`WatchdogNode::ready`] has Raft work to do (messages,
    /// entries or state to make durable), as opposed to only the lease's
    /// and role's bookkeeping.
    pub fn has_ready(&self) -> bool {
        self.raw.has_ready()
    }

    /// Handles Raft's `Ready` (see the module docs for the order) and
    /// returns the work for the caller. Call after every `tick`, `step`,
    /// `propose`, `campaign` or `report_unreachable`. After an error the
    /// node refuses further work; drop it and reopen it from storage.
    pub fn ready(&mut self) -> Result<Output, Error> {
        if self.failed {
            return Err(Error::Failed);
        }
        let result = self.handle_ready();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn handle_ready(&mut self) -> Result<Output, Error> {
        let mut out = Output::default();
        if self.raw.has_ready() {
            let mut rd = self.raw.ready();
            // 1. Messages that may be sent before persisting.
            out.messages.extend(rd.take_messages());
            // Leads a quorum confirmed (see `confirm_lead`).
            for rs in rd.take_read_states() {
                let Some((term, at)) = decode_confirmation(&rs.request_ctx) else {
                    continue;
                };
                if self.is_leader()
                    && term == self.raw.raft.term
                    && self.confirmed.is_none_or(|(t, a)| t != term || a < at)
                {
                    self.confirmed = Some((term, at));
                }
            }
            // 2. A snapshot from the leader.
            if !rd.snapshot().is_empty() {
                let snapshot = rd.snapshot().clone();
                self.restore(&snapshot)?;
            }
            // 3. Committed entries.
            let committed = rd.take_committed_entries();
            self.apply_entries(committed, &mut out);
            // 4. New entries, 5. hard state; then make them durable.
            if !rd.entries().is_empty() {
                self.raw.mut_store().append(rd.entries())?;
            }
            if let Some(hs) = rd.hs() {
                self.raw.mut_store().set_hard_state(hs);
            }
            self.raw.mut_store().persist()?;
            // 6. Messages that must wait for persistence.
            out.messages.extend(rd.take_persisted_messages());
            // 7. Advance, then the light ready.
            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                self.raw.mut_store().set_commit(commit);
            }
            out.messages.extend(light.take_messages());
            let committed = light.take_committed_entries();
            self.apply_entries(committed, &mut out);
            self.raw.advance_apply();
        }
        self.maybe_compact()?;
        self.raw.mut_store().persist()?;

        let role = (self.raw.raft.state, self.raw.raft.leader_id);
        if role != self.role {
            out.role_changed = Some(RoleChange {
                previous: self.role.0,
                role: role.0,
                term: self.raw.raft.term,
                leader: self.leader(),
            });
            self.role = role;
        }
        out.vip = self
            .lease
            .decide(self.raw.raft.state == StateRole::Leader, self.raw.raft.term);
        Ok(out)
    }

    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), Error> {
        let index = snapshot.get_metadata().index;
        let record = decode_record(index, &snapshot.data)?;
        self.raw.mut_store().apply_snapshot(snapshot)?;
        tracing::info!(
            node = self.config.id,
            index,
            generation = record.generation,
            "restored the cluster record from the leader's snapshot"
        );
        self.record = record;
        self.applied = index;
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, out: &mut Output) {
        for entry in entries {
            if entry.index <= self.applied {
                continue;
            }
            self.applied = entry.index;
            if entry.data.is_empty() {
                // The empty entry a new leader appends.
                continue;
            }
            if entry.get_entry_type() != EntryType::EntryNormal {
                tracing::warn!(
                    node = self.config.id,
                    index = entry.index,
                    "ignored a configuration change entry: voters are fixed"
                );
                continue;
            }
            match serde_json::from_slice::<Command>(&entry.data) {
                Ok(cmd) => {
                    let applied = self.record.apply(&cmd);
                    out.applied.push((entry.index, cmd, applied));
                }
                Err(e) => tracing::error!(
                    node = self.config.id,
                    index = entry.index,
                    error = %e,
                    "ignored an undecodable committed entry"
                ),
            }
        }
    }

    fn maybe_compact(&mut self) -> Result<(), Error> {
        let store = self.raw.store();
        let due = self.applied >= store.snapshot_index() + self.config.compact_every;
        if !due || self.applied > store.hard_state().commit {
            return Ok(());
        }
        let data = serde_json::to_vec(&self.record).map_err(|e| Error::Snapshot {
            index: self.applied,
            detail: e.to_string(),
        })?;
        let applied = self.applied;
        self.raw.mut_store().compact(applied, data)?;
        Ok(())
    }

    // === state ===

    /// This node's Raft id.
    pub fn id(&self) -> u64 {
        self.config.id
    }

    /// The voters' ids, sorted.
    pub fn voters(&self) -> &[u64] {
        &self.config.voters
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The current Raft role.
    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The leader this node knows of (itself when leader).
    pub fn leader(&self) -> Option<u64> {
        match self.raw.raft.leader_id {
            raft::INVALID_ID => None,
            id => Some(id),
        }
    }

    /// The index of the last committed entry this node knows of.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The index of the last entry applied to [`Self::record`].
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// The replicated cluster record as of [`Self::applied_index`].
    pub fn record(&self) -> &ClusterRecord {
        &self.record
    }

    /// Whether `backend` is down cluster-wide: a majority of voters report it.
    pub fn quorum_down(&self, backend: &str) -> bool {
        self.record.quorum_down(backend, self.config.voters.len())
    }

    /// The hard state (term, vote, commit) as last persisted by `ready`.
    pub fn hard_state(&self) -> &HardState {
        self.raw.store().hard_state()
    }

    /// The durable storage.
    pub fn storage(&self) -> &DurableStorage {
        self.raw.store()
    }

    /// The delegate-IP lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Whether this node holds (should hold) the delegate IP.
    pub fn holds_vip(&self) -> bool {
        self.lease.holding()
    }

    /// As leader, asks a quorum to confirm the lead now (Raft's ReadIndex:
    /// a heartbeat round carrying `at`); `at` is the time now, on whatever
    /// clock the caller grants by (`pgwarden_proto::lease::monotonic_ms` in the daemon,
    /// ticks in the simulation). Once a quorum answered the round,
    /// [`WatchdogNode::lead_confirmed`] gives `at`: no other leader can have
    /// been elected before it (a voter answers only a leader of its own
    /// term, and votes in a later one only after). A leader that has not
    /// committed in its term yet is not confirmed (raft-rs drops the ask).
    /// Call [`Self::ready`] afterwards.
    pub fn confirm_lead(&mut self, at: u64) {
        if !self.failed && self.is_leader() {
            let mut ctx = self.raw.raft.term.to_be_bytes().to_vec();
            ctx.extend_from_slice(&at.to_be_bytes());
            self.raw.read_index(ctx);
        }
    }

    /// When this node may grant its proxies' lease ([`crate::fence`]):
    /// while it leads, the time its lead was last confirmed by a quorum
    /// ([`WatchdogNode::confirm_lead`]; a lease may be granted only shortly
    /// after that, however long the answers took or the loop stalled).
    ///
    /// And only once it has committed an entry of its own term and applied
    /// everything committed: a new leader may not know yet that a newer
    /// generation (a withdrawn primary) was committed under the leader
    /// before it, and must not grant leases on an older one.
    pub fn lead_confirmed(&self) -> Option<u64> {
        if !(self.raw.raft.commit_to_current_term()
            && self.applied >= self.raw.raft.raft_log.committed)
        {
            return None;
        }
        self.confirmation()
    }

    /// While it leads, the time its lead in the current term was last
    /// confirmed by a quorum ([`WatchdogNode::confirm_lead`]'s `at`), with
    /// none of [`WatchdogNode::lead_confirmed`]'s conditions for granting:
    /// no other leader can have been elected before it. The delegate-IP
    /// guard ([`crate::vip`]) keeps the IP up only shortly after it.
    pub fn confirmation(&self) -> Option<u64> {
        let term = self.raw.raft.term;
        if !self.is_leader() {
            return None;
        }
        self.confirmed.filter(|(t, _)| *t == term).map(|(_, at)| at)
    }

    /// Whether this node, as leader, heard from a quorum within the last
    /// election timeout. `false` when not leader.
    pub fn has_quorum(&self) -> bool {
        self.is_leader() && self.lease.has_quorum_contact(self.raw.raft.term)
    }

    /// The vote this node cast in the current term, if any.
    pub fn vote(&self) -> Option<u64> {
        match self.raw.raft.vote {
            raft::INVALID_ID => None,
            id => Some(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryPersist;

    fn single(dir: &std::path::Path) -> WatchdogNode {
        let storage = DurableStorage::open(dir, &[1]).unwrap();
        let mut cfg = NodeConfig::new(1, vec![1]);
        cfg.timeout_seed = Some(7);
        cfg.compact_every = 4;
        WatchdogNode::new(cfg, storage).unwrap()
    }

    #[test]
    fn single_node_elects_itself_commits_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = single(dir.path());
        let first = node.ready().unwrap();
        assert_eq!(first.vip, Some(VipAction::Release), "start-up release");
        let mut ticks = 0;
        while !node.is_leader() {
            node.tick();
            node.ready().unwrap();
            ticks += 1;
            assert!(ticks < 100);
        }
        assert_eq!(
            node.propose(Command::ReportHealth {
                node: 9,
                backend: "pg01".into(),
                down: true
            }),
            Err(ProposeError::UnknownNode(9))
        );
        let mut applied = Vec::new();
        for g in 0..10u64 {
            node.propose(Command::Commit {
                expected_generation: g,
                record: crate::state::Generation {
                    generation: g + 1,
                    primary: Some(format!("pg{g}")),
                    ..Default::default()
                },
            })
            .unwrap();
            applied.extend(node.ready().unwrap().applied);
        }
        assert_eq!(applied.len(), 10);
        assert_eq!(node.record().generation, 10);
        assert!(node.storage().snapshot_index() >= 8, "compacted");
        let hs = node.hard_state().clone();
        drop(node);

        let mut node = single(dir.path());
        assert_eq!(node.hard_state(), &hs);
        let out = node.ready().unwrap();
        assert_eq!(out.vip, Some(VipAction::Release));
        assert_eq!(node.record().generation, 10);
        assert_eq!(node.record().primary.as_deref(), Some("pg9"));
        assert_eq!(node.applied_index(), hs.commit);
    }

    #[test]
    fn follower_refuses_proposals_and_foreign_messages() {
        let storage =
            DurableStorage::open_with(Box::new(MemoryPersist::new()), &[1, 2, 3]).unwrap();
        let mut node = WatchdogNode::new(NodeConfig::new(2, vec![1, 2, 3]), storage).unwrap();
        node.ready().unwrap();
        assert_eq!(
            node.propose(Command::Noop),
            Err(ProposeError::NotLeader { leader: None })
        );
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = 7;
        m.to = 2;
        assert!(matches!(node.step(m.clone()), Err(Error::Refused { .. })));
        m.from = 1;
        m.to = 3;
        assert!(matches!(node.step(m.clone()), Err(Error::Refused { .. })));
        m.to = 2;
        m.set_msg_type(MessageType::MsgHup);
        assert!(matches!(node.step(m.clone()), Err(Error::Raft(_))));
        m.set_msg_type(MessageType::MsgPropose);
        assert!(matches!(node.step(m), Err(Error::Refused { .. })));
    }

    #[test]
    fn configuration_is_checked() {
        let storage =
            DurableStorage::open_with(Box::new(MemoryPersist::new()), &[1, 2, 3]).unwrap();
        let err = WatchdogNode::new(NodeConfig::new(4, vec![1, 2, 3]), storage).unwrap_err();
        assert!(err.to_string().contains("not among the voters"), "{err}");
        let storage = DurableStorage::open_with(Box::new(MemoryPersist::new()), &[1, 2]).unwrap();
        let err = WatchdogNode::new(NodeConfig::new(1, vec![1, 2, 3]), storage).unwrap_err();
        assert!(err.to_string().contains("has voters"), "{err}");
    }
}
