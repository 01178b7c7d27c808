//! The monitor's decisions with a watchdog, as pure code: no tokio, no
//! sockets, no clock (time is counted in [`TICK`]s).
//!
//! The driver (`consensus.rs`) feeds a [`Coordinator`] every check result, every
//! change of the local watchdog's status and every operator request as an
//! [`Input`], calls [`Coordinator::tick`] every [`TICK`], and performs the
//! [`Output`]s in order. The coordinator decides:
//! - **leadership**: only while this node's watchdog leads with a quorum does
//!   its monitor run the failover [`Machine`] (with [`Decider::Quorum`]),
//!   built afresh from the committed record each time it starts leading,
//!   and told at once what the quorum and this node already saw;
//! - **the fence**: a backend a quorum sees down is handed to the machine
//!   at once, but a promotion waits until every proxy's lease on an older
//!   generation has ended ([`pgwarden_proto::lease`]): [`FENCE_WAIT_TICKS`]
//!   after the last generation committed (the one that withdrew the
//!   primary), and [`LEAD_WAIT_TICKS`] after this node's watchdog became
//!   leader (leases the previous leader granted), so that a node cut off
//!   from the majority has stopped routing to the old primary before a new
//!   one is promoted; or as soon as the leader's watchdog shows every
//!   voter's proxy routing by the newest committed generation or a newer
//!   one (`proxies_on_generation`): then no proxy routes to the old
//!   primary, whatever its lease;
//! - **proposals**: each new generation the machine decides is proposed to
//!   the watchdogs ([`Output::Propose`]) and nothing that follows it is
//!   performed before it is committed; a refused proposal drops the
//!   machine, so that the next round decides again from the committed
//!   record, and the operator whose request caused it hears why;
//! - **fencing the proxies**: what every proxy sees is the committed record
//!   ([`Output::Publish`]), marked `no_quorum` while this node's watchdog
//!   has no quorum or is gone, which stops the proxy routing;
//! - **where operator requests go**: to the machine while this node decides,
//!   else to the leader's monitor through the watchdogs, never twice.
//!
//! It also keeps this node's own opinion of each backend (down after more
//! than `max_retries` failed checks), which the driver reports to the
//! watchdog as this node's vote ([`Output::Opinion`]), and, while it decides,
//! the failover [`Timeline`] (the driver gives it the wall clock with
//! [`Coordinator::set_wall_ms`], for the phases' times only: no decision
//! reads it).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use pgwarden_proto::v1::{
    BackendState, ClusterRecord, ClusterState, OperatorRequest, ProposeClusterChangeRequest,
    ReportHealthRequest, Role as PRole, Status as PStatus, WatchdogStatus,
};

use crate::actions::Target;
use crate::machine::synchronous::Keeper;
use crate::machine::{Action, BackendSpec, Decider, Event, Limits, Machine, Observation};
use crate::operator::{self, Ask};
use crate::timeline::Timeline;

/// One tick of the coordinator's clock: how often the driver calls
/// [`Coordinator::tick`].
pub const TICK: Duration = Duration::from_millis(100);

/// `d` in ticks, such that `now - since > ticks(d)` holds only once at least
/// `d` has passed since an event seen at tick `since` (however it fell
/// between two ticks; ticks come late, never early).
const fn ticks_for(d: Duration) -> u64 {
    d.as_millis().div_ceil(TICK.as_millis()) as u64
}

/// How long after a generation committed no promotion runs:
/// [`pgwarden_proto::lease::AFTER_COMMIT`] in ticks.
pub const FENCE_WAIT_TICKS: u64 = ticks_for(pgwarden_proto::lease::AFTER_COMMIT);

/// How long after this node's watchdog became leader no promotion runs:
/// [`pgwarden_proto::lease::AFTER_ELECTION`] in ticks.
pub const LEAD_WAIT_TICKS: u64 = ticks_for(pgwarden_proto::lease::AFTER_ELECTION);

/// The answer to a request handed over by another node's monitor when this
/// one no longer decides (never handed on again: the operator retries).
pub const LEAD_MOVED: &str = "the lead moved while the request was on its way; retry";

/// What the coordinator knows of the cluster, from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    /// `node.name`: the monitor named in every state shown.
    pub node: String,
    /// The backends, by id.
    pub backends: Vec<Target>,
    /// The backends as the machine sees them.
    pub specs: Vec<BackendSpec>,
    /// Thresholds.
    pub limits: Limits,
    /// `failover.rejoin_command` is set.
    pub rejoin_enabled: bool,
    /// Keeps the primary's synchronous standbys (`failover.synchronous_mode`).
    pub synchronous: Option<Keeper>,
}

/// Input to the coordinator; `R` is where an operator's answer goes.
#[derive(Debug)]
pub enum Input<R> {
    /// A check finished, or a failover action's result came back.
    Event(Event),
    /// The local watchdog's status changed; `None`: it is unreachable.
    Watchdog(Option<Box<WatchdogStatus>>),
    /// An operator asks for a change.
    Operator {
        /// What is asked.
        ask: Ask,
        /// Handed over by another node's monitor because this one leads.
        forwarded: bool,
        /// Where the answer goes.
        reply: R,
    },
    /// An operator asks for every backend to be checked now.
    Recheck,
    /// The answer to the last [`Output::Propose`]: committed, or why not.
    Proposed(Result<(), String>),
    /// This node's proxy reports the first transaction it routed to the
    /// primary of `generation` (for the timeline).
    Routed {
        /// The generation.
        generation: u64,
        /// When (unix ms).
        at_ms: i64,
        /// The sessions it moved and ended.
        detail: String,
    },
}

/// Output of the coordinator, performed by the driver in order.
#[derive(Debug, PartialEq)]
pub enum Output<R> {
    /// Start a failover action (never [`Action::Publish`]); its result
    /// comes back as an [`Input::Event`].
    Perform(Action),
    /// Propose this generation to the watchdogs (a compare-and-set on
    /// `expected_generation`). Always the last output of its batch: the
    /// rest of the round waits for the [`Input::Proposed`] answering it,
    /// which the driver gives before any other input (any other is held
    /// back until then).
    Propose(ProposeClusterChangeRequest),
    /// This node's opinion of the backends (name -> down) changed: its
    /// votes in the committed record must follow it.
    Opinion(BTreeMap<String, bool>),
    /// Tell every watcher (the proxies): a new committed generation, or
    /// this node losing or regaining its quorum.
    Publish(ClusterState),
    /// The state `GetCluster` shows from now on.
    Current(ClusterState),
    /// The first committed state is shown: watchers may start.
    Ready,
    /// Answer an operator.
    Reply {
        /// Where the answer goes.
        to: R,
        /// The message, or why the request was refused.
        answer: Result<String, String>,
    },
    /// Hand an operator's request to the leader's monitor through the
    /// watchdogs, and pass its answer back to `reply`.
    Forward {
        /// The request as the leader's monitor gets it.
        request: OperatorRequest,
        /// Where its answer goes.
        reply: R,
    },
    /// Check every backend now.
    Recheck,
}

/// What this node last saw of each backend.
#[derive(Debug, Clone, Default, PartialEq)]
struct Local {
    last: Option<Result<Observation, String>>,
    failures: u32,
    at_ms: i64,
}

/// An operator's answer, held until its round's actions are carried out.
type Held<R> = (R, Result<String, String>);

/// The machine's actions of one round, carried out in order; `reply`
/// answers the operator request that started it once they are.
#[derive(Debug)]
struct Round<R> {
    actions: VecDeque<Action>,
    reply: Option<Held<R>>,
}

/// The decisions of the monitor with a watchdog. See the module docs.
#[derive(Debug)]
pub struct Coordinator<R> {
    setup: Setup,
    /// Ticks so far.
    now: u64,
    local: Vec<Local>,
    /// This node's opinion: backend name -> down.
    opinion: BTreeMap<String, bool>,
    /// The local watchdog's last status (`None`: unreachable).
    watchdog: Option<WatchdogStatus>,
    /// When (in ticks) each backend entered the quorum's down set.
    down_since: BTreeMap<usize, u64>,
    /// The ripe verdicts last handed to the machine.
    fed_down: Vec<usize>,
    /// The machine, while this node decides.
    machine: Option<Machine>,
    /// The newest generation this coordinator had committed (the stream
    /// may not show it yet).
    committed: u64,
    /// The newest generation published to the watchers.
    published: u64,
    /// Whether the last published state said `no_quorum`.
    published_no_quorum: bool,
    /// Other nodes' down votes for backends this node sees up (backend,
    /// node id), as last seen.
    peer_votes: std::collections::BTreeSet<(String, u64)>,
    /// The tick of the last committed generation, and of the start of
    /// this node's lead: no promotion before [`FENCE_WAIT_TICKS`] and
    /// [`LEAD_WAIT_TICKS`] after them.
    last_commit: u64,
    lead_since: u64,
    /// The generation every voter's proxy routes by at least, as this
    /// node's watchdog last showed it while leading in `lead_term`.
    proxies_on: u64,
    /// The Raft term this node leads in, while it decides.
    lead_term: u64,
    /// A round held at a promotion until the fence allows it.
    fencing: Option<Round<R>>,
    /// What `GetCluster` shows.
    current: ClusterState,
    ready: bool,
    /// The round waiting for its proposal's answer.
    proposing: Option<Round<R>>,
    /// Inputs that came while a proposal was out, taken in order after it.
    deferred: VecDeque<Input<R>>,
    /// The failovers this node decided.
    timeline: Timeline,
    /// The wall clock (unix ms), for the timeline's phases only.
    wall_ms: i64,
}

impl<R> Coordinator<R> {
    /// A coordinator for `setup` that decides nothing until its watchdog
    /// leads; `current` is what `GetCluster` shows until the first
    /// committed state.
    pub fn new(setup: Setup, current: ClusterState) -> Self {
        let n = setup.backends.len();
        Coordinator {
            setup,
            now: 0,
            local: vec![Local::default(); n],
            opinion: BTreeMap::new(),
            watchdog: None,
            down_since: BTreeMap::new(),
            fed_down: Vec::new(),
            machine: None,
            committed: 0,
            published: 0,
            published_no_quorum: false,
            peer_votes: std::collections::BTreeSet::new(),
            last_commit: 0,
            lead_since: 0,
            proxies_on: 0,
            lead_term: 0,
            fencing: None,
            current,
            ready: false,
            proposing: None,
            deferred: VecDeque::new(),
            timeline: Timeline::default(),
            wall_ms: 0,
        }
    }

    /// Records the failovers this node decides in `timeline` (kept in
    /// `state_dir`), instead of a timeline kept nowhere.
    #[must_use]
    pub fn with_timeline(mut self, timeline: Timeline) -> Self {
        self.timeline = timeline;
        self
    }

    /// The wall clock now (unix ms): the time of the phases the next input
    /// or tick records.
    pub fn set_wall_ms(&mut self, ms: i64) {
        self.wall_ms = ms;
    }

    /// The failovers and switchovers this node decided.
    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// The machine, while this node's monitor decides.
    pub fn machine(&self) -> Option<&Machine> {
        self.machine.as_ref()
    }

    /// Feeds one input; returns what to do, in order.
    pub fn step(&mut self, input: Input<R>) -> Vec<Output<R>> {
        let mut out = Vec::new();
        if let Input::Watchdog(s) = &input {
            // Read at once, even while a round waits: it may open the fence.
            self.proxies_on = s
                .as_deref()
                .filter(|s| s.id != 0 && s.leader_id == s.id && s.term == self.lead_term)
                .map_or(0, |s| s.proxies_on_generation);
        }
        match input {
            Input::Proposed(result) => self.proposed(result, &mut out),
            input if self.busy() => {
                if let Input::Watchdog(s) = &input {
                    self.unfence_if_lead_lost(s.as_deref(), &mut out);
                    // A status is a snapshot: only the newest waits (as the
                    // driver's channel keeps only the newest too).
                    self.deferred.retain(|i| !matches!(i, Input::Watchdog(_)));
                }
                self.deferred.push_back(input);
            }
            input => self.round(input, &mut out),
        }
        self.release_fence(&mut out);
        self.drain_deferred(&mut out);
        self.record_after();
        out
    }

    /// Whether `s` shows a node other than this one newly voting a backend
    /// down that this node does not see down.
    fn peer_votes_news(&mut self, s: Option<&WatchdogStatus>) -> bool {
        let Some((me, record)) = s.and_then(|s| s.record.as_ref().map(|r| (s.id, r))) else {
            return false;
        };
        let votes: std::collections::BTreeSet<(String, u64)> = record
            .down_votes
            .iter()
            .filter(|(b, _)| self.opinion.get(*b) != Some(&true))
            .flat_map(|(b, ids)| {
                ids.ids
                    .iter()
                    .filter(move |&&id| id != me)
                    .map(move |&id| (b.clone(), id))
            })
            .collect();
        let news = votes.iter().any(|v| !self.peer_votes.contains(v));
        self.peer_votes = votes;
        news
    }

    /// A round is under way (its proposal out, or held by the fence):
    /// inputs wait for it.
    fn busy(&self) -> bool {
        self.proposing.is_some() || self.fencing.is_some()
    }

    fn drain_deferred(&mut self, out: &mut Vec<Output<R>>) {
        while !self.busy()
            && let Some(input) = self.deferred.pop_front()
        {
            self.round(input, out);
        }
    }

    /// A round held by the fence is dropped if this node's watchdog no
    /// longer leads with a quorum, or another generation was committed
    /// meanwhile: the promotion it holds was decided on a lead that is
    /// gone. The status then takes its turn (and stops this machine).
    fn unfence_if_lead_lost(&mut self, s: Option<&WatchdogStatus>, out: &mut Vec<Output<R>>) {
        if self.fencing.is_none() {
            return;
        }
        let leads = s.is_some_and(|s| {
            s.id != 0
                && s.leader_id == s.id
                && s.quorum
                && s.term == self.lead_term
                && s.record
                    .as_ref()
                    .is_none_or(|r| r.generation <= self.committed)
        });
        if leads {
            return;
        }
        tracing::warn!("the lead moved while a promotion waited for the fence: not promoting");
        if let Some(round) = self.fencing.take()
            && let Some((to, _)) = round.reply
        {
            out.push(Output::Reply {
                to,
                answer: Err(
                    "the lead moved before the promotion: nothing was promoted; check `pgwardenctl status`"
                        .to_owned(),
                ),
            });
        }
    }

    /// The timeline sees the machine after each step.
    fn record_after(&mut self) {
        if let Some(m) = self.machine.as_ref() {
            self.timeline.after(m, self.wall_ms);
        }
    }

    /// One [`TICK`] passed: acts on the quorum's verdicts that ripened.
    pub fn tick(&mut self) -> Vec<Output<R>> {
        self.now += 1;
        let mut out = Vec::new();
        if self.release_fence(&mut out) {
            self.drain_deferred(&mut out);
        }
        self.record_after();
        out
    }

    /// Carries out the round the fence held, once it opens; true then.
    fn release_fence(&mut self, out: &mut Vec<Output<R>>) -> bool {
        if self.fencing.is_none() || !self.fence_open() {
            return false;
        }
        let Some(round) = self.fencing.take() else {
            return false;
        };
        let why = if self.proxies_moved_on() {
            "every node's proxy routes by the new generation: none routes to the old primary any more"
        } else {
            "every proxy's lease on an older generation has ended: a node cut off with the old primary has stopped routing to it"
        };
        self.timeline.fenced(self.wall_ms, why);
        self.carry_out(round, out);
        true
    }

    /// Whether a promotion may run now (see the module docs).
    fn fence_open(&self) -> bool {
        self.proxies_moved_on()
            || (self.now.saturating_sub(self.last_commit) > FENCE_WAIT_TICKS
                && self.now.saturating_sub(self.lead_since) > LEAD_WAIT_TICKS)
    }

    /// Whether the newest committed generation (as this node's watchdog
    /// streamed it, or as this coordinator committed it) withdraws the
    /// primary, and every voter's proxy routes by it or a newer one: then
    /// none routes to the old primary.
    fn proxies_moved_on(&self) -> bool {
        let streamed = self
            .watchdog
            .as_ref()
            .and_then(|s| s.record.as_ref())
            .map(|r| (r.generation, r.failover_in_progress || r.primary.is_none()));
        let ours = self
            .machine
            .as_ref()
            .filter(|m| m.generation() == self.committed)
            .map(|m| {
                let withdrawn = m.failover_in_progress() || m.committed().primary.is_none();
                (self.committed, withdrawn)
            });
        let newest = match (streamed, ours) {
            (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        newest.is_some_and(|(g, withdrawn)| g > 0 && withdrawn && self.proxies_on >= g)
    }

    /// Takes `input` in, then decides and carries out what follows.
    fn round(&mut self, input: Input<R>, out: &mut Vec<Output<R>>) {
        let (actions, reply) = match input {
            Input::Event(e) => {
                self.observe(&e);
                if update_opinion(&mut self.opinion, &self.setup, &self.local) {
                    out.push(Output::Opinion(self.opinion.clone()));
                }
                let actions = self.machine.as_mut().map(|m| {
                    self.timeline.before(m, &e, self.wall_ms);
                    m.step(e)
                });
                (actions.unwrap_or_default(), None)
            }
            Input::Watchdog(status) => {
                let now_down = status
                    .as_ref()
                    .and_then(|s| s.record.as_ref())
                    .map(|r| quorum_down_ids(&self.setup, r))
                    .unwrap_or_default();
                let primary = self.machine.as_ref().and_then(Machine::primary);
                if primary
                    .is_some_and(|p| self.down_since.contains_key(&p) && !now_down.contains(&p))
                {
                    self.timeline.drop_early(&["quorum", "fence"]);
                }
                self.down_since.retain(|id, _| now_down.contains(id));
                for id in now_down {
                    if self.down_since.contains_key(&id) {
                        continue;
                    }
                    self.down_since.insert(id, self.now);
                    if let Some(m) = self.machine.as_ref() {
                        self.timeline.early(
                            m,
                            id,
                            "quorum",
                            self.wall_ms,
                            "a quorum of the nodes sees the primary down",
                        );
                    }
                }
                if self.peer_votes_news(status.as_deref()) {
                    // Another node sees a backend down that this one does
                    // not: check it now rather than at the next period. The
                    // opinion stays this node's own evidence.
                    out.push(Output::Recheck);
                }
                self.watchdog = status.map(|s| *s);
                (Vec::new(), None)
            }
            Input::Operator {
                ask,
                forwarded,
                reply,
            } => self.route(ask, forwarded, reply, out),
            Input::Recheck => {
                out.push(Output::Recheck);
                (Vec::new(), None)
            }
            Input::Proposed(_) => (Vec::new(), None),
            Input::Routed {
                generation,
                at_ms,
                detail,
            } => {
                self.timeline.routed(generation, at_ms, &detail);
                (Vec::new(), None)
            }
        };
        self.decide(actions, reply, out);
    }

    /// What this node saw of a backend, whoever decides.
    fn observe(&mut self, e: &Event) {
        match e {
            Event::Checked { id, at_ms, result } => {
                if let Some(l) = self.local.get_mut(*id) {
                    l.failures = if result.is_ok() {
                        0
                    } else {
                        l.failures.saturating_add(1)
                    };
                    l.last = Some(result.clone());
                    l.at_ms = *at_ms;
                }
            }
            // Alive without an observation: not failing, the last
            // observation stands (see `Event::AliveUnobserved`).
            Event::AliveUnobserved { id, at_ms, .. } => {
                if let Some(l) = self.local.get_mut(*id) {
                    l.failures = 0;
                    l.at_ms = *at_ms;
                }
            }
            _ => {}
        }
    }

    /// Where an operator's request goes: the machine while this node
    /// decides (its answer then waits for the round's actions), else the
    /// leader's monitor through the watchdogs (as pgpool's pcp commands
    /// work against any node).
    fn route(
        &mut self,
        ask: Ask,
        forwarded: bool,
        reply: R,
        out: &mut Vec<Output<R>>,
    ) -> (Vec<Action>, Option<Held<R>>) {
        if let Some(m) = self.machine.as_mut() {
            self.timeline.mark(m);
            let (actions, answer) = operator::decide(m, ask, self.setup.rejoin_enabled);
            return (actions, Some((reply, answer)));
        }
        let answer = if forwarded {
            // Handed over by another node because this one led: never
            // handed on again (no loops).
            Err(LEAD_MOVED.to_owned())
        } else if let Some(b) = self.setup.backends.get(ask.backend()) {
            out.push(Output::Forward {
                request: ask.forwarded(&b.name),
                reply,
            });
            return (Vec::new(), None);
        } else {
            Err(format!("no backend with id {}", ask.backend()))
        };
        out.push(Output::Reply { to: reply, answer });
        (Vec::new(), None)
    }

    /// After an input: follows the lead, hands the machine the ripe
    /// verdicts, then carries out the round.
    fn decide(
        &mut self,
        mut actions: Vec<Action>,
        reply: Option<Held<R>>,
        out: &mut Vec<Output<R>>,
    ) {
        // Decide while this node's watchdog leads (and start again from
        // the committed record after a refused proposal).
        let deciding = self.machine.is_some();
        self.follow_lead();
        let down: Vec<usize> = self.down_since.keys().copied().collect();
        if !deciding && let Some(m) = self.machine.as_mut() {
            self.timeline.mark(m);
            actions.extend(bootstrap(m, self.setup.limits, &self.local, &down));
            self.fed_down.clone_from(&down);
        }
        // The quorum's verdicts, at once (the fence holds the promotion).
        if down != self.fed_down {
            if let Some(m) = self.machine.as_mut() {
                self.timeline.mark(m);
                actions.extend(m.step(Event::QuorumDown(down.clone())));
            }
            self.fed_down = down;
        }
        let round = Round {
            actions: actions.into(),
            reply,
        };
        self.carry_out(round, out);
    }

    /// Starts or stops deciding as this node's watchdog gains or loses the lead.
    fn follow_lead(&mut self) {
        let Some(s) = self.watchdog.as_ref() else {
            if self.machine.take().is_some() {
                self.timeline
                    .abandon(self.wall_ms, "this node lost its watchdog");
            }
            return;
        };
        let leads = s.id != 0 && s.leader_id == s.id && s.quorum;
        if leads && self.machine.is_some() && s.term != self.lead_term {
            // The lead was lost and regained meanwhile: whatever the machine
            // held may have been decided against since. Start afresh.
            self.machine = None;
            tracing::info!(
                term = s.term,
                "this node's watchdog leads again in a new term: deciding afresh"
            );
            self.timeline.abandon(
                self.wall_ms,
                "this node's watchdog lost the lead and got it back in a new term",
            );
        }
        if !leads {
            if self.machine.take().is_some() {
                tracing::info!(
                    "this node's watchdog is no longer the leader: this monitor stops deciding"
                );
                self.timeline.abandon(
                    self.wall_ms,
                    "this node's watchdog lost the lead; the new leader's monitor decides",
                );
            }
            return;
        }
        if self.machine.is_none()
            && let Some(record) = s.record.as_ref()
        {
            tracing::info!(
                generation = record.generation,
                "this node's watchdog leads: this monitor decides failovers"
            );
            let committed = record.generation_record();
            self.machine = Some(
                Machine::new(self.setup.specs.clone(), self.setup.limits, &committed)
                    .with_decider(Decider::Quorum)
                    .with_synchronous(self.setup.synchronous.clone()),
            );
            self.lead_since = self.now;
            self.lead_term = s.term;
        }
    }

    /// The round's actions in order; a generation must commit before what
    /// follows it runs. Then what everyone sees, then the operator's answer.
    fn carry_out(&mut self, mut round: Round<R>, out: &mut Vec<Output<R>>) {
        while let Some(action) = round.actions.pop_front() {
            let Some(m) = self.machine.as_ref() else {
                break;
            };
            if matches!(action, Action::Promote { .. }) && !self.fence_open() {
                // Held until every proxy's lease on an older generation
                // has ended; the rest of the round with it.
                round.actions.push_front(action);
                self.fencing = Some(round);
                // What is committed (the withdrawal) is shown meanwhile.
                self.show(out);
                return;
            }
            if action == Action::Publish {
                let streamed = self
                    .watchdog
                    .as_ref()
                    .and_then(|s| s.record.as_ref())
                    .map_or(0, |r| r.generation);
                let expected = streamed.max(self.committed);
                if m.generation() <= expected {
                    // Already committed: a round's publishes all carry the
                    // machine's newest state, which the first one sent.
                    continue;
                }
                out.push(Output::Propose(proposal(m, expected)));
                self.proposing = Some(round);
                return;
            }
            out.push(Output::Perform(action));
        }
        self.show(out);
        if let Some((to, answer)) = round.reply {
            out.push(Output::Reply { to, answer });
        }
    }

    /// The watchdogs answered the proposal: the round goes on, or (refused)
    /// stops, the machine dropped.
    fn proposed(&mut self, result: Result<(), String>, out: &mut Vec<Output<R>>) {
        let Some(mut round) = self.proposing.take() else {
            tracing::debug!("an answer to no proposal ignored");
            return;
        };
        match result {
            Ok(()) => {
                self.last_commit = self.now;
                if let Some(m) = self.machine.as_ref() {
                    self.committed = m.generation();
                    tracing::info!(generation = self.committed, primary = ?m.primary(), "cluster state committed by the quorum");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster change not committed; re-deciding from the committed state");
                self.machine = None;
                self.timeline.abandon(
                    self.wall_ms,
                    &format!("not committed by the watchdogs ({e}); decided again from the committed state"),
                );
                // An operator request that caused it hears the truth.
                if let Some((_, answer)) = round.reply.as_mut() {
                    *answer = Err(format!("not committed by the watchdogs: {e}"));
                }
            }
        }
        self.carry_out(round, out);
    }

    /// What everyone sees: the committed record, with this node's live
    /// data, `no_quorum` while this node's watchdog has none (or is gone).
    fn show(&mut self, out: &mut Vec<Output<R>>) {
        if let Some(s) = self.watchdog.as_ref()
            && let Some(record) = s.record.as_ref()
            && record.generation > 0
        {
            let mut state = committed_state(&self.setup, record, &self.local, Some(s));
            state.no_quorum = !s.quorum;
            if let Some(m) = &self.machine {
                state.failover_blocked = m.blocked.clone().unwrap_or_default();
            }
            if state.no_quorum != self.published_no_quorum {
                self.published_no_quorum = state.no_quorum;
                if state.no_quorum {
                    tracing::warn!(
                        "this node's watchdog has no quorum: its proxy stops routing until it has"
                    );
                } else {
                    tracing::info!("quorum regained");
                }
                out.push(Output::Publish(state.clone()));
            }
            if record.generation > self.published {
                self.published = record.generation;
                tracing::info!(generation = self.published, primary = ?record.primary, "following committed cluster state");
                out.push(Output::Publish(state.clone()));
            }
            self.current = state.clone();
            out.push(Output::Current(state));
            if !self.ready {
                self.ready = true;
                out.push(Output::Ready);
            }
        }
        if self.watchdog.is_none() && !self.published_no_quorum && self.ready {
            // The watchdog itself is gone: no quorum as far as this node knows.
            self.published_no_quorum = true;
            tracing::warn!("lost the local watchdog: its proxy stops routing until it is back");
            self.current.no_quorum = true;
            out.push(Output::Current(self.current.clone()));
            out.push(Output::Publish(self.current.clone()));
        }
    }
}

/// A new deciding machine learns the quorum's verdicts and replays what this
/// node already saw, so its first decision need not wait for a round of checks.
fn bootstrap(m: &mut Machine, limits: Limits, local: &[Local], down: &[usize]) -> Vec<Action> {
    let mut actions = m.step(Event::QuorumDown(down.to_vec()));
    for (id, l) in local.iter().enumerate() {
        match &l.last {
            Some(Ok(o)) => actions.extend(m.step(Event::Checked {
                id,
                at_ms: l.at_ms,
                result: Ok(o.clone()),
            })),
            Some(Err(e)) => {
                for _ in 0..l.failures.min(limits.max_retries + 1) {
                    actions.extend(m.step(Event::Checked {
                        id,
                        at_ms: l.at_ms,
                        result: Err(e.clone()),
                    }));
                }
            }
            None => {}
        }
    }
    actions
}

/// Backend ids a quorum sees down.
fn quorum_down_ids(setup: &Setup, record: &ClusterRecord) -> Vec<usize> {
    setup
        .backends
        .iter()
        .filter(|b| record.down_by_quorum.contains(&b.name))
        .map(|b| b.id)
        .collect()
}

/// The machine's current view as the generation after `expected`.
fn proposal(m: &Machine, expected: u64) -> ProposeClusterChangeRequest {
    ProposeClusterChangeRequest::proposing(expected, m.committed())
}

/// This node's opinion per backend: down after more than max_retries
/// failed checks. True when it changed.
fn update_opinion(d: &mut BTreeMap<String, bool>, setup: &Setup, local: &[Local]) -> bool {
    let mut changed = false;
    for (b, l) in setup.backends.iter().zip(local) {
        if l.last.is_none() {
            continue;
        }
        let down = setup.limits.exceeded(l.failures);
        if d.get(&b.name) != Some(&down) {
            d.insert(b.name.clone(), down);
            changed = true;
        }
    }
    changed
}

/// This node's votes that its watchdog does not hold yet: each backend
/// whose vote in the committed record differs from this node's `opinion`
/// (none while the watchdog, or this node's id, is unknown).
pub fn unreported(
    opinion: &BTreeMap<String, bool>,
    status: Option<&WatchdogStatus>,
) -> Vec<ReportHealthRequest> {
    let Some((s, r)) = status
        .filter(|s| s.id != 0)
        .and_then(|s| Some((s, s.record.as_ref()?)))
    else {
        return Vec::new();
    };
    let voted = |backend: &str| {
        r.down_votes
            .get(backend)
            .is_some_and(|ids| ids.ids.contains(&s.id))
    };
    opinion
        .iter()
        .filter(|(backend, down)| voted(backend) != **down)
        .map(|(backend, down)| ReportHealthRequest {
            backend: backend.clone(),
            down: *down,
        })
        .collect()
}

/// The committed record as a [`ClusterState`], with this node's live check
/// data (roles, WAL positions, lag); a backend up in the record that this
/// node cannot reach is shown quarantined.
fn committed_state(
    setup: &Setup,
    record: &ClusterRecord,
    local: &[Local],
    status: Option<&WatchdogStatus>,
) -> ClusterState {
    let obs = |i: usize| {
        local
            .get(i)
            .and_then(|l| l.last.as_ref())
            .and_then(|r| r.as_ref().ok())
    };
    let primary_id = record
        .primary
        .as_ref()
        .and_then(|p| setup.backends.iter().find(|b| b.name == *p))
        .map(|b| b.id);
    let primary_obs = primary_id.and_then(obs).filter(|o| !o.in_recovery);
    let voters = status.map_or(1, |s| s.members.len().max(1));
    let backends = setup
        .backends
        .iter()
        .map(|t| {
            let l = local.get(t.id).cloned().unwrap_or_default();
            let o = obs(t.id);
            let (st, reason) = if let Some(r) = record.detached.get(&t.name) {
                (PStatus::Detached, r.clone())
            } else if let Some(r) = record.down.get(&t.name) {
                (PStatus::Down, r.clone())
            } else if record.down_by_quorum.contains(&t.name) {
                (
                    PStatus::Down,
                    format!("a quorum of the {voters} nodes cannot reach it"),
                )
            } else if setup.limits.exceeded(l.failures) {
                (
                    PStatus::Quarantined,
                    "this node cannot reach it, but the quorum does not agree: no failover"
                        .to_owned(),
                )
            } else {
                (PStatus::Up, String::new())
            };
            let standby = o.is_some_and(|o| o.in_recovery);
            BackendState {
                id: t.id as u32,
                name: t.name.clone(),
                host: t.host.clone(),
                port: u32::from(t.port),
                role: match o {
                    Some(o) if o.in_recovery => PRole::Standby,
                    Some(_) => PRole::Primary,
                    None => PRole::Unknown,
                } as i32,
                status: st as i32,
                reason,
                replay_lsn: o.map_or(0, |o| o.replay_lsn),
                flush_lsn: o.map_or(0, |o| o.flush_lsn),
                lag_bytes: match (o, primary_obs) {
                    (Some(o), Some(p)) if standby => o.replay_lag(p),
                    _ => 0,
                },
                lag_seconds: primary_obs.map_or(0.0, |p| p.lag_seconds_of(&t.name)),
                timeline: o.map_or(0, |o| o.timeline),
                streaming: o.is_some_and(|o| o.streaming),
                last_check_unix_ms: l.at_ms,
                failed_checks: l.failures,
                synchronous: (record.synchronous.as_ref())
                    .is_some_and(|s| s.standbys.contains(&t.name)),
            }
        })
        .collect();
    ClusterState {
        generation: record.generation,
        primary_id: primary_id.map(|p| p as u32),
        backends,
        failover_in_progress: record.failover_in_progress,
        monitor: setup.node.clone(),
        no_quorum: false,
        switchover_in_progress: false,
        failover_blocked: String::new(),
    }
}

#[cfg(test)]
mod tests;
