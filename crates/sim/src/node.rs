//! One simulated node: its watchdog's [`Core`] and its monitor's
//! [`Coordinator`], wired as the daemons' drivers wire them, with the
//! answers they wait for.

use std::collections::{BTreeMap, BTreeSet};

use pgwarden_monitor::coordinator::{
    Coordinator, Input as MInput, Output as MOutput, Setup as MSetup,
};
use pgwarden_monitor::operator::Ask;
use pgwarden_proto::v1::operator_request::Kind;
use pgwarden_proto::v1::{ClusterState, OperatorRequest, WatchdogStatus};
use pgwarden_watchdog::core::{
    Core, Input as WInput, Output as WOutput, Readings, Setup as WSetup,
};
use pgwarden_watchdog::{DurableStorage, MemoryPersist, NodeConfig, Report, WatchdogNode};

/// Where a watchdog core's answer to a proposal goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WReply {
    /// This node's monitor's proposal.
    Proposal,
    /// This node's monitor's health report on `backend`.
    Report(String),
    /// A follower's forwarded report, answered over the network.
    Remote { node: u64, id: u64 },
}

/// Where an operator's answer goes, at a watchdog core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OReply {
    /// The operator of ticket `t` on this node.
    Operator(u64),
    /// A follower's forwarded request, answered over the network.
    Remote { node: u64, id: u64 },
}

/// Where an operator's answer goes, at a monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MReply {
    /// The operator of ticket `t` on this node.
    Operator(u64),
    /// A request the watchdogs handed over.
    Forwarded(OReply),
}

/// What nodes send each other, besides Raft messages.
#[derive(Debug, Clone)]
pub enum Wire {
    Raft(pgwarden_watchdog::Message),
    Report {
        term: u64,
        report: Report,
        id: u64,
    },
    ReportAnswer {
        id: u64,
    },
    Operator {
        term: u64,
        request: OperatorRequest,
        id: u64,
    },
    OperatorAnswer {
        id: u64,
        answer: Result<String, String>,
    },
}

/// What a node asks the world to do.
#[derive(Debug)]
pub enum Effect {
    Send { to: u64, wire: Wire },
    Perform(pgwarden_monitor::machine::Action),
    Answered { answer: Result<String, String> },
}

pub type WCore = Core<WReply, OReply>;

/// A simulated node.
pub struct SimNode {
    pub id: u64,
    pub voters: Vec<u64>,
    pub disk: MemoryPersist,
    pub core: Option<WCore>,
    pub monitor: Option<Coordinator<MReply>>,
    pub msetup: MSetup,
    pub holding: bool,
    /// The last status given to the monitor.
    pub status: Option<WatchdogStatus>,
    /// The monitor's opinion, and the reports on their way.
    pub opinion: BTreeMap<String, bool>,
    pub reporting: BTreeSet<String>,
    /// The monitor's proposal waits for its answer.
    pub proposing: bool,
    /// A probe of the monitor is due to be answered.
    pub probing: bool,
    /// Requests forwarded to the leader, by id.
    pub remote_reports: BTreeMap<u64, WReply>,
    pub remote_ops: BTreeMap<u64, OReply>,
    pub next_id: u64,
    /// The newest generation this node's proxy routes by.
    pub routing: u64,
    /// What this node's monitor published last.
    pub published: Vec<ClusterState>,
    /// The world's tick.
    pub now: u64,
}

impl SimNode {
    pub fn new(id: u64, voters: Vec<u64>, msetup: MSetup) -> Self {
        SimNode {
            id,
            voters,
            disk: MemoryPersist::new(),
            core: None,
            monitor: None,
            msetup,
            holding: false,
            status: None,
            opinion: BTreeMap::new(),
            reporting: BTreeSet::new(),
            proposing: false,
            probing: false,
            remote_reports: BTreeMap::new(),
            remote_ops: BTreeMap::new(),
            next_id: 0,
            routing: 0,
            published: Vec::new(),
            now: 0,
        }
    }

    /// Starts (or restarts) the watchdog from what its disk kept.
    pub fn start_watchdog(&mut self, seed: u64) {
        let storage = DurableStorage::open_with(Box::new(self.disk.clone()), &self.voters)
            .expect("the simulated disk holds a valid state");
        let mut cfg = NodeConfig::new(self.id, self.voters.clone());
        cfg.timeout_seed = Some(seed);
        let node = WatchdogNode::new(cfg, storage).expect("a valid node");
        let setup = WSetup {
            members: self
                .voters
                .iter()
                .map(|v| format!("10.0.0.{v}:9000"))
                .collect(),
            delegate_ip: "10.0.0.100".into(),
        };
        self.core = Some(Core::new(setup, node));
    }

    /// The watchdog crashes: what it did not persist is gone, and whoever
    /// waited for it hears it is gone.
    pub fn crash_watchdog(&mut self, effects: &mut Vec<Effect>) {
        self.core = None;
        self.holding = false;
        self.reporting.clear();
        self.remote_reports.clear();
        for (_, r) in std::mem::take(&mut self.remote_ops) {
            self.answer_op(r, Err("the watchdog is gone".into()), effects);
        }
        if self.proposing {
            self.proposing = false;
            self.monitor_step(
                MInput::Proposed(Err("the watchdog is gone".into())),
                effects,
            );
        }
        if self.status.take().is_some() {
            self.monitor_step(MInput::Watchdog(None), effects);
        }
    }

    pub fn start_monitor(&mut self, effects: &mut Vec<Effect>) {
        self.monitor = Some(Coordinator::new(
            self.msetup.clone(),
            ClusterState::default(),
        ));
        self.proposing = false;
        if let Some(s) = self.status.clone() {
            self.monitor_step(MInput::Watchdog(Some(Box::new(s))), effects);
        }
    }

    pub fn readings(&self) -> Readings {
        let now = self.now;
        Readings {
            mono_ms: 10_000 + now * 100,
            wall_ms: 0,
            holding: self.holding,
            own_routing: self.routing,
            routes: Default::default(),
        }
    }

    /// Feeds the watchdog one input (or a tick) and performs its outputs.
    pub fn watchdog_step(
        &mut self,
        input: Option<WInput<WReply, OReply>>,
        effects: &mut Vec<Effect>,
    ) {
        let readings = self.readings();
        let Some(core) = self.core.as_mut() else {
            return;
        };
        core.read(readings);
        let outputs = match input {
            Some(i) => core.step(i),
            None => core.tick(),
        };
        for o in outputs {
            self.perform_watchdog(o, effects);
        }
    }

    fn perform_watchdog(&mut self, o: WOutput<WReply, OReply>, effects: &mut Vec<Effect>) {
        match o {
            WOutput::Grant(_) | WOutput::Ask(_) | WOutput::VipConfirmed(_) | WOutput::Done => {}
            WOutput::Send(m) => effects.push(Effect::Send {
                to: m.to,
                wire: Wire::Raft(m),
            }),
            WOutput::Vip(v) => self.holding = v == pgwarden_watchdog::VipAction::Acquire,
            WOutput::Status(s) => {
                if self.status.as_ref() != Some(&*s) {
                    self.status = Some((*s).clone());
                    self.monitor_step(MInput::Watchdog(Some(s)), effects);
                    self.report_opinion(effects);
                }
            }
            WOutput::Answer { to, result } => match to {
                WReply::Proposal => {
                    if self.proposing {
                        self.proposing = false;
                        self.monitor_step(MInput::Proposed(result), effects);
                    }
                }
                WReply::Report(b) => {
                    self.reporting.remove(&b);
                }
                WReply::Remote { node, id } => effects.push(Effect::Send {
                    to: node,
                    wire: Wire::ReportAnswer { id },
                }),
            },
            WOutput::Forward {
                leader,
                term,
                report,
                reply,
            } => {
                let id = self.fresh_id();
                if let Some(r) = reply {
                    self.remote_reports.insert(id, r);
                }
                effects.push(Effect::Send {
                    to: leader,
                    wire: Wire::Report { term, report, id },
                });
            }
            WOutput::ForwardOperator {
                leader,
                term,
                request,
                reply,
            } => {
                let id = self.fresh_id();
                self.remote_ops.insert(id, reply);
                effects.push(Effect::Send {
                    to: leader,
                    wire: Wire::Operator { term, request, id },
                });
            }
            WOutput::AskMonitor { request, reply } => {
                match (self.monitor.is_some(), ask_of(&request)) {
                    (true, Some(ask)) => self.monitor_step(
                        MInput::Operator {
                            ask,
                            forwarded: true,
                            reply: MReply::Forwarded(reply),
                        },
                        effects,
                    ),
                    _ => self.answer_op(
                        reply,
                        Err("the leader's monitor is not reachable".into()),
                        effects,
                    ),
                }
            }
            WOutput::Refuse { to, why } => {
                self.answer_op(to, Err(why.message().to_owned()), effects)
            }
            WOutput::Probe => self.probing = true,
            WOutput::Failed(e) => panic!("node {}: the simulated disk failed: {e}", self.id),
        }
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn answer_op(&mut self, to: OReply, answer: Result<String, String>, effects: &mut Vec<Effect>) {
        match to {
            OReply::Operator(_) => effects.push(Effect::Answered { answer }),
            OReply::Remote { node, id } => effects.push(Effect::Send {
                to: node,
                wire: Wire::OperatorAnswer { id, answer },
            }),
        }
    }

    /// A message from `from` arrives.
    pub fn receive(&mut self, from: u64, wire: Wire, effects: &mut Vec<Effect>) {
        if self.core.is_none() {
            return;
        }
        let input = match wire {
            Wire::Raft(m) => WInput::Peer {
                from,
                messages: vec![m],
            },
            Wire::Report { term, report, id } => WInput::Forwarded {
                from,
                report,
                term: Some(term),
                reply: WReply::Remote { node: from, id },
            },
            Wire::ReportAnswer { id } => {
                if let Some(WReply::Report(b)) = self.remote_reports.remove(&id) {
                    self.reporting.remove(&b);
                }
                return;
            }
            Wire::Operator { term, request, id } => WInput::Operator {
                request,
                term,
                reply: OReply::Remote { node: from, id },
            },
            Wire::OperatorAnswer { id, answer } => {
                if let Some(r) = self.remote_ops.remove(&id) {
                    self.answer_op(r, answer, effects);
                }
                return;
            }
        };
        self.watchdog_step(Some(input), effects);
    }

    /// Feeds the monitor one input and performs its outputs.
    pub fn monitor_step(&mut self, input: MInput<MReply>, effects: &mut Vec<Effect>) {
        let Some(m) = self.monitor.as_mut() else {
            return;
        };
        let outputs = m.step(input);
        self.perform_monitor(outputs, effects);
    }

    pub fn monitor_tick(&mut self, effects: &mut Vec<Effect>) {
        let Some(m) = self.monitor.as_mut() else {
            return;
        };
        let outputs = m.tick();
        self.perform_monitor(outputs, effects);
    }

    fn perform_monitor(&mut self, outputs: Vec<MOutput<MReply>>, effects: &mut Vec<Effect>) {
        for o in outputs {
            match o {
                MOutput::Perform(a) => effects.push(Effect::Perform(a)),
                MOutput::Propose(request) => {
                    if let Some(core) = self.core.as_mut() {
                        self.proposing = true;
                        let expected = request.expected_generation;
                        let outputs = core.step(WInput::Propose {
                            expected,
                            generation: request.proposed(),
                            reply: WReply::Proposal,
                        });
                        // Performed at the next turn of the world (no time passed).
                        for o in outputs {
                            self.perform_watchdog(o, effects);
                        }
                    } else {
                        self.monitor_step(MInput::Proposed(Err("no watchdog".into())), effects);
                    }
                }
                MOutput::Opinion(o) => self.opinion = o,
                MOutput::Publish(s) => {
                    if !s.no_quorum {
                        self.routing = self.routing.max(s.generation);
                    }
                    self.published.push(s);
                }
                MOutput::Current(_) | MOutput::Ready | MOutput::Recheck => {}
                MOutput::Reply { to, answer } => match to {
                    MReply::Operator(_) => effects.push(Effect::Answered { answer }),
                    MReply::Forwarded(r) => self.answer_op(r, answer, effects),
                },
                MOutput::Forward { request, reply } => match (reply, self.core.is_some()) {
                    (MReply::Operator(t), true) => {
                        let input = WInput::LocalOperator {
                            request,
                            reply: OReply::Operator(t),
                        };
                        if let Some(core) = self.core.as_mut() {
                            for o in core.step(input) {
                                self.perform_watchdog(o, effects);
                            }
                        }
                    }
                    (MReply::Operator(_), false) => effects.push(Effect::Answered {
                        answer: Err("no watchdog".into()),
                    }),
                    (MReply::Forwarded(r), _) => {
                        self.answer_op(r, Err("handed on twice".into()), effects)
                    }
                },
            }
        }
    }

    /// Reports the monitor's opinion where the committed votes differ,
    /// one report per backend at a time (the daemon's `report_health`).
    pub fn report_opinion(&mut self, effects: &mut Vec<Effect>) {
        if self.monitor.is_none() || self.core.is_none() {
            return;
        }
        let votes = pgwarden_monitor::coordinator::unreported(&self.opinion, self.status.as_ref());
        for v in votes {
            if !self.reporting.insert(v.backend.clone()) {
                continue;
            }
            let input = WInput::Report {
                report: Report::Backend {
                    backend: v.backend.clone(),
                    down: v.down,
                },
                reply: WReply::Report(v.backend),
            };
            self.watchdog_step(Some(input), effects);
        }
    }
}

/// The monitor's request for an operator's request the watchdogs carry.
fn ask_of(r: &OperatorRequest) -> Option<Ask> {
    let id = r.backend_id as usize;
    Some(match Kind::try_from(r.kind).ok()? {
        Kind::Attach => Ask::Attach(id),
        Kind::Detach => Ask::Detach(id),
        Kind::Promote => Ask::Promote { id, force: r.force },
        Kind::Rejoin => Ask::Rejoin(id),
        Kind::Unspecified => return None,
    })
}
