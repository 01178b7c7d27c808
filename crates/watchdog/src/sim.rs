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
                self.node_mut(id).tick();
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
mod tests {
    use super::*;
    use crate::state::Generation;

    const E: u64 = 10;

    fn report(node: u64, backend: &str, down: bool) -> Command {
        Command::ReportHealth {
            node,
            backend: backend.to_owned(),
            down,
        }
    }

    fn became_leader_at(sim: &Sim, id: u64, after: u64) -> Option<u64> {
        sim.events().iter().find_map(|e| match e {
            Event::Role { tick, node, change }
                if *node == id && *tick >= after && change.role == StateRole::Leader =>
            {
                Some(*tick)
            }
            _ => None,
        })
    }

    fn vip_event(sim: &Sim, id: u64, action: VipAction, after: u64) -> Option<u64> {
        sim.events().iter().find_map(|e| match e {
            Event::Vip {
                tick,
                node,
                action: a,
            } if *node == id && *a == action && *tick >= after => Some(*tick),
            _ => None,
        })
    }

    #[test]
    fn clusters_of_three_and_five_elect_one_leader_and_replicate() {
        for (n, seed) in [(3, 1), (5, 2)] {
            let mut sim = Sim::new(n, seed, SimConfig::default());
            sim.run_until(200, |s| s.leader().is_some())
                .expect("a leader is elected");
            let leader = sim.leader().unwrap();
            let term = sim.node(leader).term();
            let mut proposed = Vec::new();
            for i in 0..20u64 {
                let cmd = match i % 3 {
                    0 => report(1 + i % n, "pg01", i % 2 == 0),
                    1 => Command::Commit {
                        expected_generation: i / 3,
                        record: Generation {
                            generation: i / 3 + 1,
                            primary: Some(format!("pg0{}", i % 3)),
                            ..Default::default()
                        },
                    },
                    _ => Command::Noop,
                };
                sim.propose(leader, cmd.clone()).unwrap();
                proposed.push(cmd);
                sim.run(3);
            }
            sim.run(50);
            for id in sim.ids() {
                let cmds: Vec<Command> = sim.applied(id).iter().map(|(_, c)| c.clone()).collect();
                assert_eq!(cmds, proposed, "node {id} applied the proposals in order");
                assert_eq!(sim.node(id).leader(), Some(leader));
                assert_eq!(sim.node(id).term(), term);
                assert_eq!(sim.node(id).record(), sim.node(leader).record());
                assert_eq!(sim.node(id).is_leader(), id == leader);
            }
            assert_eq!(sim.node(leader).record().generation, 7);
            assert_eq!(sim.vip_holders(), vec![leader], "n={n}");
            // Followers refuse proposals and name the leader.
            let follower = sim.ids().into_iter().find(|&id| id != leader).unwrap();
            assert_eq!(
                sim.propose(follower, Command::Noop),
                Err(ProposeError::NotLeader {
                    leader: Some(leader)
                })
            );
        }
    }

    #[test]
    fn isolated_leader_releases_the_vip_and_the_majority_takes_over() {
        let mut sim = Sim::new(3, 3, SimConfig::default());
        sim.run_until(300, |s| !s.vip_holders().is_empty())
            .expect("the leader takes the IP");
        let old = sim.leader().unwrap();
        let first_term = sim.node(old).term();
        let acquired = vip_event(&sim, old, VipAction::Acquire, 0).unwrap();
        let elected = became_leader_at(&sim, old, 0).unwrap();
        assert!(acquired - elected >= 2 * E);

        let t0 = sim.now();
        sim.isolate(old);
        sim.run_until(E + 5, |s| !s.node(old).holds_vip())
            .expect("the isolated leader releases the IP");
        let released = vip_event(&sim, old, VipAction::Release, t0).unwrap();
        assert!(
            released - t0 <= E + 3,
            "released {} ticks after isolation",
            released - t0
        );
        sim.run_until(3 * E, |s| !s.node(old).is_leader())
            .expect("the isolated leader steps down by itself (check_quorum)");
        assert!(sim.now() - t0 <= 2 * E + 3);

        let new = sim
            .run_until(400, |s| s.vip_holders().iter().any(|&h| h != old))
            .map(|_| sim.vip_holders()[0])
            .expect("the majority elects a leader that takes the IP");
        let new_term = sim.node(new).term();
        assert!(new_term > first_term);
        let elected = became_leader_at(&sim, new, t0).unwrap();
        let acquired = vip_event(&sim, new, VipAction::Acquire, t0).unwrap();
        assert!(
            acquired - elected >= 2 * E,
            "acquired {} ticks after becoming leader",
            acquired - elected
        );
        assert!(acquired > released);
        // Pre-vote: the isolated node never raised its term.
        assert_eq!(sim.node(old).term(), first_term);

        sim.heal();
        sim.run(300);
        assert_eq!(sim.leader(), Some(new), "the old leader did not disrupt");
        assert_eq!(sim.node(new).term(), new_term);
        assert_eq!(sim.node(old).leader(), Some(new));
        assert_eq!(vip_event(&sim, old, VipAction::Acquire, t0 + 1), None);
        assert_eq!(sim.vip_holders(), vec![new]);
    }

    /// A leader whose monitor is gone hands the lead over: the chosen node
    /// leads in the next term, the old leader releases the IP before the new
    /// one takes it (checked after every step), and the log goes on.
    #[test]
    fn leadership_transfer_moves_the_lead_and_the_ip_safely() {
        let mut sim = Sim::new(3, 11, SimConfig::default());
        sim.run_until(300, |s| !s.vip_holders().is_empty())
            .expect("the leader takes the IP");
        let old = sim.leader().unwrap();
        let to = sim.ids().into_iter().find(|&i| i != old).unwrap();
        let term = sim.node(old).term();
        // A follower asked to transfer does nothing.
        sim.transfer_leader(to, old);
        sim.run(5);
        assert_eq!(sim.leader(), Some(old));

        let t0 = sim.now();
        sim.transfer_leader(old, to);
        sim.run_until(E, |s| s.leader() == Some(to))
            .expect("the transferee leads within an election timeout");
        assert_eq!(sim.node(to).term(), term + 1);
        sim.run_until(4 * E, |s| s.vip_holders() == vec![to])
            .expect("the new leader takes the IP");
        let released = vip_event(&sim, old, VipAction::Release, t0).unwrap();
        let acquired = vip_event(&sim, to, VipAction::Acquire, t0).unwrap();
        assert!(acquired > released);
        sim.propose(to, report(to, "pg0", true)).unwrap();
        sim.run(20);
        assert!(
            sim.node(old).record().votes.contains_key("pg0"),
            "the old leader follows the new one's log"
        );
        sim.run(200);
        assert_eq!(sim.leader(), Some(to), "and it keeps the lead");
    }

    /// Isolates the leader at every phase of its heartbeat and check-quorum
    /// cycles, with delays and some loss: never two IP holders (checked
    /// after every step), and the majority always takes over.
    #[test]
    fn leader_isolation_at_any_phase_never_gives_two_holders() {
        let cfg = SimConfig {
            loss: 0.05,
            max_delay: 3,
            ..SimConfig::default()
        };
        for seed in 500..560u64 {
            let mut sim = Sim::new(3, seed, cfg.clone());
            sim.run_until(500, |s| !s.vip_holders().is_empty())
                .expect("the leader takes the IP");
            sim.run(seed % (2 * E));
            let Some(old) = sim.leader() else { continue };
            let t0 = sim.now();
            sim.isolate(old);
            sim.run_until(500, |s| s.vip_holders().iter().any(|&h| h != old))
                .unwrap_or_else(|| panic!("seed {seed}: the majority takes the IP"));
            if let Some(released) = vip_event(&sim, old, VipAction::Release, t0 + 1) {
                // Its last quorum contact was at t0 at the latest.
                assert!(
                    released - t0 <= E + 1,
                    "seed {seed}: released after {}",
                    released - t0
                );
            }
            let stepped_down = sim.events().iter().find_map(|e| match e {
                Event::Role { tick, node, change }
                    if *node == old && *tick > t0 && change.role != StateRole::Leader =>
                {
                    Some(*tick)
                }
                _ => None,
            });
            let stepped_down = stepped_down.expect("the old leader stepped down");
            assert!(
                stepped_down - t0 <= 2 * E + 1,
                "seed {seed}: stepped down after {}",
                stepped_down - t0
            );
            sim.heal();
            sim.run(50);
        }
    }

    #[test]
    fn the_checker_sees_two_holders() {
        let mut sim = Sim::new(3, 9, SimConfig::default());
        sim.run_until(300, |s| !s.vip_holders().is_empty()).unwrap();
        let leader = sim.leader().unwrap();
        let other = sim.ids().into_iter().find(|&id| id != leader).unwrap();
        sim.slot_mut(other).vip = true;
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.check()))
            .expect_err("two holders are caught");
        let msg = caught.downcast_ref::<String>().unwrap();
        assert!(msg.contains("two delegate-IP holders"), "{msg}");
        sim.slot_mut(leader).vip = false;
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.check()))
            .expect_err("a follower holding the IP is caught");
        let msg = caught.downcast_ref::<String>().unwrap();
        assert!(msg.contains("lease"), "{msg}");
    }

    #[test]
    fn a_minority_never_commits() {
        let mut sim = Sim::new(3, 4, SimConfig::default());
        sim.campaign(1);
        sim.run_until(50, |s| s.leader() == Some(1))
            .expect("node 1 wins its campaign");
        sim.propose(1, report(1, "before", true)).unwrap();
        sim.run(40);
        let commit = sim.node(1).commit_index();

        sim.isolate(1);
        for i in 0..5 {
            sim.propose(1, report(1, &format!("minority-{i}"), true))
                .unwrap();
            sim.run(1);
        }
        sim.run_until(300, |s| s.leader().is_some_and(|l| l != 1))
            .expect("the majority elects a leader");
        let leader = sim.leader().unwrap();
        sim.propose(leader, report(leader, "majority", true))
            .unwrap();
        sim.run(50);
        assert_eq!(
            sim.node(1).commit_index(),
            commit,
            "the minority committed nothing"
        );
        for id in [2, 3] {
            assert!(
                sim.applied(id)
                    .iter()
                    .any(|(_, c)| c == &report(leader, "majority", true))
            );
        }

        sim.heal();
        sim.run(200);
        for id in sim.ids() {
            assert!(
                sim.applied(id)
                    .iter()
                    .any(|(_, c)| c == &report(leader, "majority", true))
            );
            assert_eq!(sim.node(id).record(), sim.node(leader).record());
        }
        assert!(
            !sim.committed().values().any(|c| matches!(
                c,
                Command::ReportHealth { backend, .. } if backend.starts_with("minority")
            )),
            "a minority proposal was committed"
        );
    }

    fn s_describe(sim: &Sim) -> Vec<String> {
        sim.ids()
            .into_iter()
            .map(|id| {
                let n = sim.node(id);
                format!(
                    "node {id}: {:?} term {} leader {:?} commit {} applied {} last {}",
                    n.role(),
                    n.term(),
                    n.leader(),
                    n.commit_index(),
                    n.applied_index(),
                    raft::Storage::last_index(n.storage()).unwrap()
                )
            })
            .collect()
    }

    fn converge(sim: &mut Sim) {
        for id in sim.ids() {
            if !sim.is_live(id) {
                sim.restart(id);
            }
        }
        sim.heal();
        sim.set_loss(0.0);
        sim.run_until(500, |s| {
            let leader = s.leader();
            leader.is_some()
                && s.ids().iter().all(|&id| {
                    s.node(id).leader() == leader
                        && s.node(id).applied_index() == s.node(leader.unwrap()).applied_index()
                })
        })
        .unwrap_or_else(|| {
            let states: Vec<String> = s_describe(sim);
            panic!("the cluster does not converge once the network is good: {states:#?}")
        });
        let leader = sim.leader().unwrap();
        for id in sim.ids() {
            assert_eq!(sim.node(id).record(), sim.node(leader).record());
        }
    }

    /// Proposes at the leader (if any) every `every` steps, for `steps`.
    fn drive(sim: &mut Sim, steps: u64, every: u64, mut fault: impl FnMut(&mut Sim)) -> u64 {
        let mut proposed = 0;
        for step in 0..steps {
            if step % every == 0
                && let Some(leader) = sim.leader()
            {
                let backend = format!("pg0{}", step % 3);
                if sim
                    .propose(leader, report(leader, &backend, step % 2 == 0))
                    .is_ok()
                {
                    proposed += 1;
                }
            }
            fault(sim);
            sim.step();
        }
        proposed
    }

    #[test]
    fn message_loss_and_reordering_keep_safety_and_progress() {
        // (nodes, seed, loss, max extra delay, compact every, min committed),
        // with a node cut off now and then.
        let cases = [
            (3, 101, 0.2, 3, 64, 100),
            (3, 102, 0.2, 3, 64, 100),
            (3, 103, 0.2, 3, 64, 100),
            (5, 201, 0.2, 3, 64, 100),
            (5, 202, 0.2, 3, 64, 100),
            // Heavy loss, long delays, frequent snapshots: many elections.
            (3, 111, 0.4, 5, 16, 50),
            (5, 211, 0.4, 5, 16, 50),
        ];
        for (n, seed, loss, max_delay, compact_every, min_committed) in cases {
            let cfg = SimConfig {
                loss,
                max_delay,
                compact_every,
                ..SimConfig::default()
            };
            let mut sim = Sim::new(n, seed, cfg);
            // Every 250 ticks, cut one node (often the leader) off for 80.
            let mut rng = StdRng::seed_from_u64(seed);
            let proposed = drive(&mut sim, 2000, 10, |sim| match sim.now() % 250 {
                100 => {
                    let id = match sim.leader() {
                        Some(l) if rng.random_bool(0.7) => l,
                        _ => rng.random_range(1..=n),
                    };
                    sim.isolate(id);
                }
                180 => sim.heal(),
                _ => {}
            });
            let committed = sim.committed().len();
            let elections = sim
                .events()
                .iter()
                .filter(
                    |e| matches!(e, Event::Role { change, .. } if change.role == StateRole::Leader),
                )
                .count();
            eprintln!(
                "loss n={n} seed={seed} loss={loss}: {committed}/{proposed} committed, \
                 {elections} leaders elected, final term {}, {} delivered, {} dropped",
                sim.node(1).term(),
                sim.delivered,
                sim.dropped
            );
            assert!(
                committed >= min_committed,
                "n={n} seed={seed}: {committed} of {proposed} proposals committed"
            );
            assert!(sim.dropped > 0 && sim.delivered > 0);
            converge(&mut sim);
        }
    }

    #[test]
    fn restarts_of_any_node_keep_safety() {
        let cfg = SimConfig {
            loss: 0.05,
            max_delay: 2,
            compact_every: 16,
            ..SimConfig::default()
        };
        for (n, seed) in [(3, 301), (3, 302), (3, 303), (5, 401), (5, 402)] {
            let mut sim = Sim::new(n, seed, cfg.clone());
            let mut rng = StdRng::seed_from_u64(seed);
            let mut down: BTreeMap<u64, u64> = BTreeMap::new();
            let (mut crashes, mut leader_crashes, mut torn) = (0, 0, 0);
            let max_down = ((n - 1) / 2) as usize;
            drive(&mut sim, 2000, 7, |sim| {
                let now = sim.now();
                for (id, at) in down.clone() {
                    if at <= now {
                        down.remove(&id);
                        if !sim.is_live(id) {
                            sim.restart(id);
                        }
                    }
                }
                // Nodes that died on a refused write.
                for id in sim.ids() {
                    if !sim.is_live(id) && !down.contains_key(&id) {
                        down.insert(id, now + rng.random_range(5..60));
                    }
                }
                if down.len() < max_down && rng.random_bool(0.02) {
                    let live: Vec<u64> =
                        sim.ids().into_iter().filter(|&i| sim.is_live(i)).collect();
                    let id = match sim.leader() {
                        Some(l) if rng.random_bool(0.5) => {
                            leader_crashes += 1;
                            l
                        }
                        _ => live[rng.random_range(0..live.len())],
                    };
                    crashes += 1;
                    if rng.random_bool(0.5) {
                        torn += 1;
                        sim.crash_at_next_write(id);
                        down.insert(id, u64::MAX);
                    } else {
                        sim.crash(id);
                        down.insert(id, now + rng.random_range(5..60));
                    }
                }
                // A node that should have died on a write but has not yet.
                for (id, at) in down.clone() {
                    if at == u64::MAX && !sim.is_live(id) {
                        down.insert(id, now + rng.random_range(5..60));
                    }
                }
            });
            let committed = sim.committed().len();
            assert!(
                crashes >= 10 && leader_crashes >= 3 && torn >= 3,
                "seed {seed}: {crashes} crashes, {leader_crashes} of the leader, {torn} torn"
            );
            let restarts = sim
                .events()
                .iter()
                .filter(|e| matches!(e, Event::Restart { .. }))
                .count();
            eprintln!(
                "restarts n={n} seed={seed}: {crashes} crashes ({leader_crashes} of the leader, \
                 {torn} at a write), {restarts} restarts, {committed} committed"
            );
            assert!(restarts >= 5, "seed {seed}: {restarts} restarts");
            assert!(committed >= 50, "seed {seed}: {committed} committed");
            converge(&mut sim);
        }
    }

    #[test]
    fn restarted_node_keeps_its_term_and_vote() {
        let mut sim = Sim::new(3, 5, SimConfig::default());
        sim.run_until(200, |s| s.leader().is_some()).unwrap();
        let leader = sim.leader().unwrap();
        let voter = sim
            .ids()
            .into_iter()
            .find(|&id| id != leader && sim.node(id).vote() == Some(leader))
            .expect("a follower voted for the leader");
        let (term, vote) = (sim.node(voter).term(), sim.node(voter).vote());
        sim.crash(voter);
        sim.run(5);
        sim.restart(voter);
        assert_eq!(sim.node(voter).term(), term);
        assert_eq!(sim.node(voter).vote(), vote);
        // The leader too.
        let hs = sim.node(leader).hard_state().clone();
        sim.crash(leader);
        sim.restart(leader);
        assert_eq!(sim.node(leader).hard_state(), &hs);
        assert!(!sim.node(leader).is_leader(), "restarts as a follower");
        assert!(sim.vip_holders().is_empty(), "released at start-up");
        sim.run(300);
        assert!(sim.leader().is_some());
    }

    #[test]
    fn a_lagging_node_catches_up_from_a_snapshot() {
        let cfg = SimConfig {
            compact_every: 16,
            ..SimConfig::default()
        };
        let mut sim = Sim::new(3, 6, cfg);
        sim.run_until(200, |s| s.leader().is_some()).unwrap();
        let leader = sim.leader().unwrap();
        let lagging = sim.ids().into_iter().find(|&id| id != leader).unwrap();
        sim.crash(lagging);
        for g in 0..100u64 {
            sim.propose(
                leader,
                Command::Commit {
                    expected_generation: g,
                    record: Generation {
                        generation: g + 1,
                        primary: Some(format!("pg{}", g % 3)),
                        ..Default::default()
                    },
                },
            )
            .unwrap();
            sim.run(1);
        }
        sim.run(20);
        assert_eq!(sim.node(leader).record().generation, 100);
        let snapshot = sim.node(leader).storage().snapshot_index();
        assert!(snapshot > 16);
        assert!(sim.node(leader).storage().entries_after_snapshot().len() <= 16 + 2);
        sim.restart(lagging);
        sim.run(100);
        let node = sim.node(lagging);
        assert_eq!(node.record(), sim.node(leader).record());
        assert!(
            node.storage().snapshot_index() >= snapshot,
            "installed the snapshot"
        );
        assert_eq!(node.applied_index(), sim.node(leader).applied_index());
    }

    #[test]
    fn same_seed_same_history() {
        let cfg = SimConfig {
            loss: 0.2,
            max_delay: 3,
            ..SimConfig::default()
        };
        let run = |seed| {
            let mut sim = Sim::new(5, seed, cfg.clone());
            drive(&mut sim, 400, 5, |_| {});
            (sim.events().to_vec(), sim.committed().clone())
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7).0, run(8).0);
    }
}
