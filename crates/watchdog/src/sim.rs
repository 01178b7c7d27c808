//! A deterministic in-memory network of [`WatchdogNode`]s, like raft-rs's
//! `harness/src/network.rs`, with safety checks after every step.
//!
//! Global virtual time advances one tick per [`Sim::step`]: every live node
//! first receives the messages due for it, then is ticked once, then its
//! `ready` output is handled. Messages are encoded with protobuf (as the
//! transport will), may be lost (`loss`), and are delayed by `1 + 0..=max_delay`
//! ticks, which reorders them. Links can be cut (`cut`, `isolate`, `heal`).
//! Nodes can crash (dropped; only what their storage persisted survives, in a
//! [`MemoryPersist`]), crash in the middle of a write (the disk refuses the
//! next save), and restart from what was persisted.
//!
//! After every step [`Sim::check`] asserts: at most one leader per term, as
//! seen from every node; no node changes its vote within a term (across
//! restarts too); the persisted hard state equals Raft's; every node applies
//! the same command at the same index and holds the same record at the same
//! applied index; at most one live node holds the delegate IP, and only while
//! it is leader.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::{BTreeMap, BTreeSet};

use protobuf::Message as _;
use raft::StateRole;
use raft::eraftpb::{HardState, Message, MessageType};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};

use crate::lease::VipAction;
use crate::node::{NodeConfig, Output, ProposeError, RoleChange, WatchdogNode};
use crate::state::{ClusterRecord, Command};
use crate::storage::{DurableStorage, MemoryPersist};

/// Network and node settings of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Extra random delay of a message, `0..=max_delay` ticks (on top of 1).
    pub max_delay: u64,
    /// Raft election timeout in ticks.
    pub election_tick: usize,
    /// Raft heartbeat interval in ticks.
    pub heartbeat_tick: usize,
    /// Snapshot every this many applied entries.
    pub compact_every: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            loss: 0.0,
            max_delay: 0,
            election_tick: 10,
            heartbeat_tick: 2,
            compact_every: 64,
        }
    }
}

/// Something that happened, with the tick it happened at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node's role or known leader changed.
    Role {
        tick: u64,
        node: u64,
        change: RoleChange,
    },
    /// A node acquired or released the delegate IP.
    Vip {
        tick: u64,
        node: u64,
        action: VipAction,
    },
    /// A node crashed.
    Crash { tick: u64, node: u64 },
    /// A node restarted.
    Restart { tick: u64, node: u64 },
}

struct Slot {
    node: Option<WatchdogNode>,
    disk: MemoryPersist,
    /// The IP is configured on this node's host (a crashed node keeps it
    /// until it restarts and releases it).
    vip: bool,
    /// The hard state as of the last successful `ready` (all persisted).
    persisted_hs: HardState,
    /// The disk refuses writes: the node crashes at its next save.
    failing: bool,
}

/// A message on the wire, protobuf-encoded.
struct InFlight {
    deliver_at: u64,
    seq: u64,
    from: u64,
    to: u64,
    bytes: Vec<u8>,
}

/// The simulated cluster.
pub struct Sim {
    cfg: SimConfig,
    rng: StdRng,
    now: u64,
    ids: Vec<u64>,
    slots: BTreeMap<u64, Slot>,
    in_flight: Vec<InFlight>,
    seq: u64,
    cuts: BTreeSet<(u64, u64)>,
    events: Vec<Event>,
    leaders: BTreeMap<u64, u64>,
    votes: BTreeMap<(u64, u64), u64>,
    log: BTreeMap<u64, Command>,
    records: BTreeMap<u64, ClusterRecord>,
    applied: BTreeMap<u64, Vec<(u64, Command)>>,
    /// Messages handed to a node.
    pub delivered: u64,
    /// Messages lost, cut off, or addressed to a dead node.
    pub dropped: u64,
}

fn link(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}

impl Sim {
    /// `n` nodes (ids `1..=n`), all started, with randomness from `seed`.
    pub fn new(n: u64, seed: u64, cfg: SimConfig) -> Self {
        let ids: Vec<u64> = (1..=n).collect();
        let mut sim = Self {
            cfg,
            rng: StdRng::seed_from_u64(seed),
            now: 0,
            ids: ids.clone(),
            slots: BTreeMap::new(),
            in_flight: Vec::new(),
            seq: 0,
            cuts: BTreeSet::new(),
            events: Vec::new(),
            leaders: BTreeMap::new(),
            votes: BTreeMap::new(),
            log: BTreeMap::new(),
            records: BTreeMap::new(),
            applied: BTreeMap::new(),
            delivered: 0,
            dropped: 0,
        };
        for &id in &ids {
            sim.slots.insert(
                id,
                Slot {
                    node: None,
                    disk: MemoryPersist::new(),
                    vip: false,
                    persisted_hs: HardState::default(),
                    failing: false,
                },
            );
            sim.boot(id);
        }
        sim.check();
        sim
    }

    fn slot(&self, id: u64) -> &Slot {
        self.slots.get(&id).unwrap()
    }

    fn slot_mut(&mut self, id: u64) -> &mut Slot {
        self.slots.get_mut(&id).unwrap()
    }

    fn boot(&mut self, id: u64) {
        let seed = self.rng.random::<u64>();
        let cfg = NodeConfig {
            id,
            voters: self.ids.clone(),
            election_tick: self.cfg.election_tick,
            heartbeat_tick: self.cfg.heartbeat_tick,
            compact_every: self.cfg.compact_every,
            timeout_seed: Some(seed),
        };
        let slot = self.slot(id);
        let storage = DurableStorage::open_with(Box::new(slot.disk.clone()), &self.ids).unwrap();
        let node = WatchdogNode::new(cfg, storage).unwrap();
        assert_eq!(
            node.hard_state(),
            &slot.persisted_hs,
            "node {id} restarted with a hard state other than the one it persisted"
        );
        self.slot_mut(id).node = Some(node);
        self.ready(id);
    }

    // === time ===

    /// The current tick.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// One tick: deliver due messages, tick every live node, handle their
    /// output, check the invariants.
    pub fn step(&mut self) {
        self.now += 1;
        let now = self.now;
        let (mut due, rest): (Vec<InFlight>, Vec<InFlight>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|m| m.deliver_at <= now);
        self.in_flight = rest;
        due.sort_by_key(|m| (m.deliver_at, m.seq));
        let mut inbox: BTreeMap<u64, Vec<InFlight>> = BTreeMap::new();
        for m in due {
            inbox.entry(m.to).or_default().push(m);
        }
        for id in self.ids.clone() {
            let live = self.is_live(id);
            for m in inbox.remove(&id).unwrap_or_default() {
                let msg = Message::parse_from_bytes(&m.bytes).unwrap();
                if !live || self.cuts.contains(&link(m.from, m.to)) {
                    self.dropped += 1;
                    self.report_snapshot(&msg, false);
                    continue;
                }
                self.delivered += 1;
                self.report_snapshot(&msg, true);
                self.node_mut(id).step(msg).unwrap();
            }
            if live {
                let node = self.node_mut(id);
                node.tick();
                // As the daemon does at every tick, on a clock all nodes
                // share (as the hosts' clock rates are alike).
                node.confirm_lead(now);
                self.ready(id);
            }
        }
        self.check();
    }

    /// `steps` ticks.
    pub fn run(&mut self, steps: u64) {
        for _ in 0..steps {
            self.step();
        }
    }

    /// Steps until `done` holds (checked before each step), at most
    /// `max_steps`; returns the steps taken, or `None` if it never held.
    pub fn run_until(&mut self, max_steps: u64, mut done: impl FnMut(&Sim) -> bool) -> Option<u64> {
        for taken in 0..=max_steps {
            if done(self) {
                return Some(taken);
            }
            if taken < max_steps {
                self.step();
            }
        }
        None
    }

    fn ready(&mut self, id: u64) {
        let result = self.node_mut(id).ready();
        match result {
            Ok(out) => {
                let hs = self.node(id).hard_state().clone();
                self.slot_mut(id).persisted_hs = hs;
                self.handle(id, out);
            }
            Err(e) => {
                assert!(self.slot(id).failing, "node {id}: unexpected error {e}");
                self.crash(id);
            }
        }
    }

    /// Like a transport: tells the sender of a snapshot whether it arrived.
    fn report_snapshot(&mut self, msg: &Message, delivered: bool) {
        if msg.get_msg_type() == MessageType::MsgSnapshot && self.is_live(msg.from) {
            self.node_mut(msg.from).report_snapshot(msg.to, delivered);
        }
    }

    fn handle(&mut self, id: u64, out: Output) {
        for msg in out.messages {
            assert_eq!(msg.from, id);
            if self.rng.random_bool(self.cfg.loss) || self.cuts.contains(&link(id, msg.to)) {
                self.dropped += 1;
                self.report_snapshot(&msg, false);
                continue;
            }
            let delay = 1 + self.rng.random_range(0..=self.cfg.max_delay);
            self.seq += 1;
            self.in_flight.push(InFlight {
                deliver_at: self.now + delay,
                seq: self.seq,
                from: id,
                to: msg.to,
                bytes: msg.write_to_bytes().unwrap(),
            });
        }
        for (index, cmd, _) in out.applied {
            match self.log.entry(index) {
                MapEntry::Vacant(v) => {
                    v.insert(cmd.clone());
                }
                MapEntry::Occupied(o) => assert_eq!(
                    o.get(),
                    &cmd,
                    "node {id} applied a different command at index {index}"
                ),
            }
            self.applied.entry(id).or_default().push((index, cmd));
        }
        if let Some(change) = out.role_changed {
            self.events.push(Event::Role {
                tick: self.now,
                node: id,
                change,
            });
        }
        if let Some(action) = out.vip {
            self.slot_mut(id).vip = action == VipAction::Acquire;
            self.events.push(Event::Vip {
                tick: self.now,
                node: id,
                action,
            });
        }
    }

    // === faults ===

    /// Cuts the link between `a` and `b` (both directions).
    pub fn cut(&mut self, a: u64, b: u64) {
        self.cuts.insert(link(a, b));
    }

    /// Cuts every link of `id`.
    pub fn isolate(&mut self, id: u64) {
        for other in self.ids.clone() {
            if other != id {
                self.cut(id, other);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cuts.clear();
    }

    /// Sets the message loss probability.
    pub fn set_loss(&mut self, loss: f64) {
        self.cfg.loss = loss;
    }

    /// Kills node `id`: whatever it did not persist is gone.
    pub fn crash(&mut self, id: u64) {
        let now = self.now;
        let slot = self.slot_mut(id);
        assert!(slot.node.take().is_some(), "node {id} is already down");
        slot.failing = false;
        slot.disk.set_failing(false);
        self.events.push(Event::Crash {
            tick: now,
            node: id,
        });
    }

    /// Makes node `id`'s disk refuse writes: the node dies at its next save,
    /// leaving the previous state on disk.
    pub fn crash_at_next_write(&mut self, id: u64) {
        let slot = self.slot_mut(id);
        slot.failing = true;
        slot.disk.set_failing(true);
    }

    /// Restarts node `id` from its persisted state.
    pub fn restart(&mut self, id: u64) {
        assert!(!self.is_live(id), "node {id} is running");
        self.events.push(Event::Restart {
            tick: self.now,
            node: id,
        });
        self.boot(id);
    }

    // === observation ===

    /// Whether node `id` is running.
    pub fn is_live(&self, id: u64) -> bool {
        self.slot(id).node.is_some()
    }

    /// Node `id` (must be running).
    pub fn node(&self, id: u64) -> &WatchdogNode {
        self.slot(id).node.as_ref().unwrap()
    }

    fn node_mut(&mut self, id: u64) -> &mut WatchdogNode {
        self.slot_mut(id).node.as_mut().unwrap()
    }

    /// The node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.ids.clone()
    }

    /// The running leader with the highest term.
    pub fn leader(&self) -> Option<u64> {
        self.ids
            .iter()
            .filter(|&&id| self.is_live(id) && self.node(id).is_leader())
            .max_by_key(|&&id| self.node(id).term())
            .copied()
    }

    /// Running nodes that hold the delegate IP.
    pub fn vip_holders(&self) -> Vec<u64> {
        self.ids
            .iter()
            .copied()
            .filter(|&id| self.is_live(id) && self.slot(id).vip)
            .collect()
    }

    /// Everything that happened.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The commands node `id` applied, in order (again after a restart).
    pub fn applied(&self, id: u64) -> &[(u64, Command)] {
        self.applied.get(&id).map_or(&[], Vec::as_slice)
    }

    /// Every committed command by log index, as applied by any node.
    pub fn committed(&self) -> &BTreeMap<u64, Command> {
        &self.log
    }

    /// Proposes at node `id` and handles its output.
    pub fn propose(&mut self, id: u64, cmd: Command) -> Result<(), ProposeError> {
        self.node_mut(id).propose(cmd)?;
        self.ready(id);
        Ok(())
    }

    /// Makes leader `id` hand the lead to `to`.
    pub fn transfer_leader(&mut self, id: u64, to: u64) {
        self.node_mut(id).transfer_leader(to);
        self.ready(id);
    }

    /// Makes node `id` campaign now.
    pub fn campaign(&mut self, id: u64) {
        self.node_mut(id).campaign().unwrap();
        self.ready(id);
    }

    // === invariants ===

    /// Asserts the safety invariants (see the module docs).
    pub fn check(&mut self) {
        let mut holders = Vec::new();
        for id in self.ids.clone() {
            let slot = self.slots.get(&id).unwrap();
            let Some(node) = slot.node.as_ref() else {
                continue;
            };
            let term = node.term();
            let hs = node.hard_state();
            assert_eq!(hs.term, term, "node {id}: persisted term behind Raft's");
            assert_eq!(
                hs.vote,
                node.vote().unwrap_or(0),
                "node {id}: persisted vote differs from Raft's"
            );
            if let Some(leader) = node.leader() {
                match self.leaders.entry(term) {
                    MapEntry::Vacant(v) => {
                        v.insert(leader);
                    }
                    MapEntry::Occupied(o) => assert_eq!(
                        *o.get(),
                        leader,
                        "term {term}: node {id} sees leader {leader}, another node saw {}",
                        o.get()
                    ),
                }
            }
            match (node.vote(), self.votes.get(&(id, term))) {
                (Some(v), None) => {
                    self.votes.insert((id, term), v);
                }
                (Some(v), Some(&before)) => assert_eq!(
                    v, before,
                    "node {id} voted for {before} then {v} in term {term}"
                ),
                (None, Some(&before)) => {
                    panic!("node {id} forgot its vote for {before} in term {term}")
                }
                (None, None) => {}
            }
            match self.records.entry(node.applied_index()) {
                MapEntry::Vacant(v) => {
                    v.insert(node.record().clone());
                }
                MapEntry::Occupied(o) => assert_eq!(
                    o.get(),
                    node.record(),
                    "node {id}: different record at applied index {}",
                    node.applied_index()
                ),
            }
            if slot.vip {
                holders.push((id, node.role(), node.holds_vip()));
            } else {
                assert!(
                    !node.holds_vip(),
                    "node {id}: the lease holds, the host has no IP"
                );
            }
        }
        assert!(
            holders.len() <= 1,
            "two delegate-IP holders at tick {}: {holders:?}",
            self.now
        );
        for (id, role, lease) in holders {
            assert!(
                lease,
                "node {id}: the host has the IP, the lease does not hold"
            );
            assert_eq!(
                role,
                StateRole::Leader,
                "node {id} holds the IP but is not leader at tick {}",
                self.now
            );
        }
    }
}

#[cfg(test)]
mod tests;
