//! The world: every node, the network between them, the fake servers, a
//! seeded schedule of faults, and the invariants checked after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use pgwarden_monitor::actions::Target;
use pgwarden_monitor::coordinator::{Input as MInput, Setup as MSetup};
use pgwarden_monitor::machine::{Action, BackendSpec, Event, Limits};
use pgwarden_monitor::operator::Ask;
use pgwarden_watchdog::core::Input as WInput;
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};

use crate::backends::{Backends, port};
use crate::node::{Effect, MReply, SimNode, Wire};

/// What a schedule did, for the totals.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Generations committed (the newest on any node).
    pub generations: u64,
    /// Times the committed primary changed.
    pub primary_changes: u64,
    /// Faults injected.
    pub faults: u64,
    /// Operator requests made.
    pub operator_requests: u64,
    /// Operator requests that succeeded.
    pub operator_ok: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages lost.
    pub lost: u64,
}

/// A broken invariant: the seed and tick reproduce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

/// A fault and when it ends.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Isolate(u64),
    WatchdogDown(u64),
    MonitorDown(u64),
    ServerDown(usize),
    LinkDown(u64, usize),
}

/// The simulated cluster.
pub struct World {
    now: u64,
    rng: StdRng,
    nodes: BTreeMap<u64, SimNode>,
    backends: Backends,
    queue: Vec<(u64, u64, u64, Wire)>,
    isolated: BTreeSet<u64>,
    loss: f64,
    max_delay: u64,
    actions: Vec<(u64, u64, Action)>,
    ends: Vec<(u64, Fault)>,
    next_ticket: u64,
    // invariants
    leaders: BTreeMap<u64, u64>,
    primaries: BTreeMap<u64, Option<String>>,
    quorum_down_seen: BTreeSet<(u64, String)>,
    /// The operators' promotions asked: tick and backend.
    promote_asked: Vec<(u64, String)>,
    /// What the run did so far.
    pub stats: Stats,
}

const BACKENDS: usize = 3;
/// Checks run every this many ticks (`health_check.period` 500 ms).
const CHECK_EVERY: u64 = 5;

/// Server `id` as the monitors' actions reach it, and as their machines
/// see it (any of them may be promoted).
fn backend(id: usize) -> (Target, BackendSpec) {
    let spec = BackendSpec {
        name: format!("pg{id}"),
        host: "127.0.0.1".into(),
        port: port(id),
        allow_failover: true,
    };
    let target = Target {
        id,
        name: spec.name.clone(),
        host: spec.host.clone(),
        port: spec.port,
        data_dir: PathBuf::new(),
    };
    (target, spec)
}

impl World {
    /// `n` nodes and three servers, randomness from `seed`.
    pub fn new(n: u64, seed: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let voters: Vec<u64> = (1..=n).collect();
        let (targets, specs): (Vec<Target>, Vec<BackendSpec>) = (0..BACKENDS).map(backend).unzip();
        let loss = if rng.random_bool(0.5) {
            rng.random_range(0.0..0.1)
        } else {
            0.0
        };
        let max_delay = rng.random_range(0..=3);
        let mut world = World {
            now: 0,
            nodes: BTreeMap::new(),
            backends: Backends::new(BACKENDS),
            queue: Vec::new(),
            isolated: BTreeSet::new(),
            loss,
            max_delay,
            actions: Vec::new(),
            ends: Vec::new(),
            next_ticket: 0,
            leaders: BTreeMap::new(),
            primaries: BTreeMap::new(),
            quorum_down_seen: BTreeSet::new(),
            promote_asked: Vec::new(),
            stats: Stats::default(),
            rng,
        };
        for &id in &voters {
            let setup = MSetup {
                node: format!("node{id}"),
                backends: targets.clone(),
                specs: specs.clone(),
                limits: Limits {
                    max_retries: 2,
                    max_lag_bytes: 1 << 24,
                },
                rejoin_enabled: false,
                synchronous: None,
            };
            let mut node = SimNode::new(id, voters.clone(), setup);
            node.start_watchdog(world.rng.random());
            let mut effects = Vec::new();
            node.start_monitor(&mut effects);
            world.nodes.insert(id, node);
            world.effects(id, effects);
        }
        // The cluster as bootstrapped: generation 1 with pg0 primary is
        // what the first leader's monitor commits.
        world
    }

    /// Runs `ticks` steps with faults drawn from the seed, then heals
    /// everything and runs `settle` more; the first broken invariant.
    pub fn run(&mut self, ticks: u64, settle: u64) -> Result<(), Violation> {
        for _ in 0..ticks {
            self.inject();
            self.step()?;
        }
        let ends: Vec<Fault> = self.ends.drain(..).map(|(_, f)| f).collect();
        for f in ends {
            self.end(f);
        }
        self.loss = 0.0;
        for _ in 0..settle {
            self.step()?;
        }
        Ok(())
    }

    fn inject(&mut self) {
        let due: Vec<Fault> = {
            let now = self.now;
            let (due, keep): (Vec<_>, Vec<_>) = self.ends.drain(..).partition(|(at, _)| *at <= now);
            self.ends = keep;
            due.into_iter().map(|(_, f)| f).collect()
        };
        for f in due {
            self.end(f);
        }
        if self.now < 30 || !self.rng.random_bool(0.02) {
            return;
        }
        let node = self.rng.random_range(1..=self.nodes.len() as u64);
        let backend = self.rng.random_range(0..BACKENDS);
        let lasts = self.rng.random_range(20..150);
        let fault = match self.rng.random_range(0..6) {
            0 => Fault::Isolate(node),
            1 => Fault::WatchdogDown(node),
            2 => Fault::MonitorDown(node),
            3 => Fault::ServerDown(self.primary_server().unwrap_or(backend)),
            4 => Fault::LinkDown(node, backend),
            _ => {
                self.operator_promote(node, backend);
                return;
            }
        };
        if self.ends.iter().any(|(_, f)| same(*f, fault)) {
            return;
        }
        self.stats.faults += 1;
        self.trace(format_args!("fault {fault:?} for {lasts} ticks"));
        let mut effects = Vec::new();
        match fault {
            Fault::Isolate(n) => {
                self.isolated.insert(n);
            }
            Fault::WatchdogDown(n) => self.node(n).crash_watchdog(&mut effects),
            Fault::MonitorDown(n) => self.node(n).monitor = None,
            Fault::ServerDown(b) => self.backends.servers[b].alive = false,
            Fault::LinkDown(n, b) => {
                self.backends.cut.insert((n, b));
            }
        }
        self.effects(node, effects);
        self.ends.push((self.now + lasts, fault));
    }

    fn end(&mut self, f: Fault) {
        let mut effects = Vec::new();
        let mut who = 0;
        match f {
            Fault::Isolate(n) => {
                self.isolated.remove(&n);
            }
            Fault::WatchdogDown(n) => {
                let seed = self.rng.random();
                self.node(n).start_watchdog(seed);
            }
            Fault::MonitorDown(n) => {
                who = n;
                self.node(n).start_monitor(&mut effects);
            }
            Fault::ServerDown(b) => self.backends.servers[b].alive = true,
            Fault::LinkDown(n, b) => {
                self.backends.cut.remove(&(n, b));
            }
        }
        if who != 0 {
            self.effects(who, effects);
        }
    }

    /// An operator asks node `node`'s monitor to promote `backend`.
    fn operator_promote(&mut self, node: u64, backend: usize) {
        self.trace(format_args!("operator on node {node}: promote pg{backend}"));
        self.next_ticket += 1;
        self.stats.operator_requests += 1;
        self.promote_asked.push((self.now, format!("pg{backend}")));
        let ticket = self.next_ticket;
        let mut effects = Vec::new();
        self.node(node).monitor_step(
            MInput::Operator {
                ask: Ask::Promote {
                    id: backend,
                    force: false,
                },
                forwarded: false,
                reply: MReply::Operator(ticket),
            },
            &mut effects,
        );
        self.effects(node, effects);
    }

    fn primary_server(&self) -> Option<usize> {
        self.backends
            .servers
            .iter()
            .position(|s| s.alive && !s.in_recovery)
    }

    fn node(&mut self, id: u64) -> &mut SimNode {
        self.nodes.get_mut(&id).expect("a node of the world")
    }

    /// One tick of the whole world.
    pub fn step(&mut self) -> Result<(), Violation> {
        self.now += 1;
        let now = self.now;
        for n in self.nodes.values_mut() {
            n.now = now;
        }
        self.backends.tick();
        // Messages due.
        let (due, keep): (Vec<_>, Vec<_>) = self.queue.drain(..).partition(|m| m.0 <= now);
        self.queue = keep;
        for (_, from, to, wire) in due {
            let mut effects = Vec::new();
            self.node(to).receive(from, wire, &mut effects);
            self.stats.delivered += 1;
            self.effects(to, effects);
        }
        // Actions done.
        let (done, keep): (Vec<_>, Vec<_>) = self.actions.drain(..).partition(|a| a.0 <= now);
        self.actions = keep;
        for (_, node, action) in done {
            if let Some(event) = self.backends.perform(&action) {
                let mut effects = Vec::new();
                self.node(node)
                    .monitor_step(MInput::Event(event), &mut effects);
                self.effects(node, effects);
            }
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            let mut effects = Vec::new();
            let checks: Vec<Result<_, String>> =
                (0..BACKENDS).map(|b| self.backends.check(id, b)).collect();
            let n = self.node(id);
            n.watchdog_step(None, &mut effects);
            if std::mem::take(&mut n.probing) {
                let alive = n.monitor.is_some();
                n.watchdog_step(Some(WInput::Probed(alive)), &mut effects);
            }
            n.monitor_tick(&mut effects);
            if (now + id).is_multiple_of(CHECK_EVERY) {
                for (b, result) in checks.into_iter().enumerate() {
                    n.monitor_step(
                        MInput::Event(Event::Checked {
                            id: b,
                            at_ms: now as i64 * 100,
                            result,
                        }),
                        &mut effects,
                    );
                }
            }
            if now % 10 == id % 10 {
                n.reporting.clear();
                n.report_opinion(&mut effects);
            }
            self.effects(id, effects);
        }
        self.check()
    }

    /// Carries out what node `from` asked for.
    fn effects(&mut self, from: u64, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Send { to, wire } => {
                    let cut = self.isolated.contains(&from) || self.isolated.contains(&to);
                    if cut || to == from || self.rng.random_bool(self.loss) {
                        self.stats.lost += 1;
                        continue;
                    }
                    let delay = 1 + self.rng.random_range(0..=self.max_delay);
                    self.queue.push((self.now + delay, from, to, wire));
                }
                Effect::Perform(action) => {
                    let delay = self.rng.random_range(1..=4);
                    self.actions.push((self.now + delay, from, action));
                }
                Effect::Answered { answer, .. } => {
                    if answer.is_ok() {
                        self.stats.operator_ok += 1;
                    }
                }
            }
        }
    }

    /// With `PGWARDEN_SIM_TRACE` set, what happens, for replaying a seed.
    fn trace(&self, what: std::fmt::Arguments<'_>) {
        if std::env::var_os("PGWARDEN_SIM_TRACE").is_some() {
            eprintln!("tick {}: {what}", self.now);
        }
    }

    // === invariants ===

    fn violation(&self, what: String) -> Result<(), Violation> {
        Err(Violation(format!("tick {}: {what}", self.now)))
    }

    /// One leader per term, one delegate-IP holder, one primary per
    /// generation (in every record and every state a monitor published),
    /// and no primary replaced unless a quorum saw it down or an operator
    /// asked for a promotion.
    fn check(&mut self) -> Result<(), Violation> {
        let n = self.nodes.len();
        let mut holders = Vec::new();
        let mut seen: Vec<(u64, Option<String>)> = Vec::new();
        for (&id, node) in &self.nodes {
            if node.holding {
                holders.push(id);
            }
            let Some(core) = node.core.as_ref() else {
                continue;
            };
            let w = core.node();
            if w.is_leader() {
                let leader = *self.leaders.entry(w.term()).or_insert(id);
                if leader != id {
                    return self.violation(format!(
                        "nodes {leader} and {id} both lead term {}",
                        w.term()
                    ));
                }
            }
            let r = w.record();
            seen.push((r.generation, r.primary.clone()));
            for b in r.votes.keys() {
                if r.quorum_down(b, n) {
                    self.quorum_down_seen.insert((r.generation, b.clone()));
                }
            }
            for s in &node.published {
                let primary = s
                    .primary_id
                    .and_then(|p| s.backends.iter().find(|b| b.id == p))
                    .map(|b| b.name.clone());
                if s.generation > 0 {
                    seen.push((s.generation, primary));
                }
            }
        }
        for node in self.nodes.values_mut() {
            node.published.clear();
        }
        if holders.len() > 1 {
            return self.violation(format!("nodes {holders:?} all hold the delegate IP"));
        }
        for (generation, primary) in seen {
            if generation == 0 {
                continue;
            }
            if let Some(known) = self.primaries.get(&generation) {
                if *known != primary {
                    return self.violation(format!(
                        "generation {generation} has primary {known:?} and {primary:?}"
                    ));
                }
                continue;
            }
            let before = self
                .primaries
                .range(..generation)
                .next_back()
                .map(|(g, p)| (*g, p.clone()));
            if let Some((g, Some(old))) = before
                && primary.as_ref() != Some(&old)
            {
                let quorum = self
                    .quorum_down_seen
                    .iter()
                    .any(|(at, b)| *at <= g && *b == old);
                // Or an operator asked to promote the new primary (a
                // switchover withdraws none first).
                let asked = self
                    .promote_asked
                    .iter()
                    .any(|(_, b)| primary.as_ref().is_none_or(|p| p == b));
                if !quorum && !asked {
                    return self.violation(format!(
                        "generation {generation} replaced primary {old} (generation {g}) though no quorum saw it down and no operator asked to promote {primary:?}"
                    ));
                }
                self.stats.primary_changes += 1;
            }
            self.trace(format_args!("generation {generation}: primary {primary:?}"));
            self.primaries.insert(generation, primary);
            self.stats.generations = self.stats.generations.max(generation);
        }
        Ok(())
    }
}

fn same(a: Fault, b: Fault) -> bool {
    use Fault::*;
    match (a, b) {
        (Isolate(x), Isolate(y))
        | (WatchdogDown(x), WatchdogDown(y))
        | (MonitorDown(x), MonitorDown(y)) => x == y,
        (ServerDown(x), ServerDown(y)) => x == y,
        (LinkDown(x, c), LinkDown(y, d)) => x == y && c == d,
        _ => false,
    }
}
