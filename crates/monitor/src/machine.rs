//! The failover decision, as a pure state machine.
//!
//! [`Machine`] holds the committed cluster view: each backend's role and
//! status, the primary, the generation. Check results, action results and
//! operator requests go in as [`Event`]s; what to do comes out as
//! [`Action`]s (publish a new generation, promote a standby, repoint one).
//! No sockets, no clock, no randomness: its tests (`machine/tests.rs`)
//! drive it through whole failovers as tables of events.
//!
//! Its parts, by the data they hold, none importing the machine: `backend`
//! (each backend as configured, as last seen, its role and status),
//! `health` (the health rule and its thresholds, [`Limits`]), `candidate`
//! (which standby a failover promotes) and `event` (what goes in and out).
//!
//! The rules, in short:
//! - a backend is `Down` after more than `max_retries` consecutive failed
//!   checks, and keeps being checked; a check whose sessions were killed by
//!   someone else while the server kept accepting fresh connections
//!   ([`Event::AliveUnobserved`]) is not a failure;
//! - when the primary is not `Up` and no failover runs, the reachable
//!   standby holding the most WAL is promoted ([`Observation::received_lsn`]:
//!   received and flushed, which `pg_promote()` replays; never the replay
//!   position alone), among those on the primary's timeline, lag (from the
//!   received position) within `max_lag_bytes`, `allow_failover`; ties go to
//!   the one that replayed further (less to replay), then to the lowest id;
//! - the promoted standby becomes the primary of generation g+1; the old
//!   primary is `Detached` (fenced) at that moment, so wherever it comes back
//!   it is never routed to; the other standbys are repointed;
//! - a backend out of recovery that is not the committed primary is
//!   `Detached` (split brain is never routed to);
//! - only checks and operators change a status: nothing a client does reaches here.

use pgwarden_proto::lsn::lsn_to_string;

mod backend;
mod candidate;
mod event;
mod health;
mod start;
pub mod synchronous;

pub use self::backend::{BackendSpec, BackendView, Observation, Rejoin, Role, Status};
pub use self::event::{Action, Decider, Event};
pub use self::health::Limits;
pub use pgwarden_cluster::{Generation, Synchronous};

use self::candidate::{Candidate, Field};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Failover {
    candidate: usize,
    old_primary: Option<usize>,
    tried: Vec<usize>,
    force: bool,
    /// An operator's switchover: the old primary is alive and let finish
    /// its running transactions before it is fenced.
    planned: bool,
}

/// Rejoin attempts started in this process (see [`Action::Rejoin`]).
static REJOIN_ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The failover state machine. See the module docs.
#[derive(Debug, Clone)]
pub struct Machine {
    limits: Limits,
    backends: Vec<BackendView>,
    generation: u64,
    primary: Option<usize>,
    failover: Option<Failover>,
    bootstrapped: bool,
    persisted_primary: Option<usize>,
    dirty: bool,
    decider: Decider,
    quorum_down: std::collections::BTreeSet<usize>,
    /// The synchronous standbys of the committed generation.
    synchronous: Option<Synchronous>,
    /// Keeps them, with `failover.synchronous_mode`.
    sync: Option<synchronous::Keeper>,
    /// Why no standby could be promoted (logged once per cause).
    pub blocked: Option<String>,
}

impl Machine {
    /// A machine for `specs`, starting from what was persisted (never
    /// trusted blindly: the first decision waits for every backend's first
    /// check, see [`Machine::is_bootstrapped`]).
    pub fn new(specs: Vec<BackendSpec>, limits: Limits, persisted: &Generation) -> Machine {
        let backends: Vec<BackendView> = specs
            .into_iter()
            .map(|spec| {
                let detached = persisted.detached.get(&spec.name);
                BackendView {
                    role: Role::Unknown,
                    status: if detached.is_some() {
                        Status::Detached
                    } else {
                        Status::Down
                    },
                    reason: detached.map_or_else(|| "not checked yet".to_owned(), Clone::clone),
                    failures: 0,
                    last_error: None,
                    not_streaming: 0,
                    last: None,
                    last_check_ms: 0,
                    following: false,
                    rejoin: Rejoin::No,
                    spec,
                }
            })
            .collect();
        let persisted_primary = persisted
            .primary
            .as_ref()
            .and_then(|p| backends.iter().position(|b| b.spec.name == *p));
        Machine {
            limits,
            backends,
            generation: persisted.generation,
            primary: None,
            failover: None,
            bootstrapped: false,
            persisted_primary,
            dirty: false,
            decider: Decider::Local,
            quorum_down: std::collections::BTreeSet::new(),
            synchronous: persisted.synchronous.clone(),
            sync: None,
            blocked: None,
        }
    }

    /// Keeps the primary's synchronous standbys as `keeper` says
    /// (`failover.synchronous_mode`; see [`synchronous`]).
    pub fn with_synchronous(mut self, keeper: Option<synchronous::Keeper>) -> Self {
        self.sync = keeper;
        self
    }

    /// Lets a quorum of nodes, not this monitor's checks alone, decide that
    /// a backend is down (see [`Decider::Quorum`]).
    pub fn with_decider(mut self, decider: Decider) -> Self {
        self.decider = decider;
        self
    }

    /// Whether backend `id` is routable as far as who decides "down" goes.
    fn not_voted_down(&self, id: usize) -> bool {
        self.decider == Decider::Local || !self.quorum_down.contains(&id)
    }

    /// The committed generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The committed primary.
    pub fn primary(&self) -> Option<usize> {
        self.primary
    }

    /// The backends.
    pub fn backends(&self) -> &[BackendView] {
        &self.backends
    }

    /// True while a promotion runs.
    pub fn failover_in_progress(&self) -> bool {
        self.failover.is_some()
    }

    /// The standby being promoted, while a failover runs.
    pub fn failover_candidate(&self) -> Option<usize> {
        self.failover.as_ref().map(|f| f.candidate)
    }

    /// True while an operator's switchover runs: the old primary's running
    /// transactions are let finish before it is fenced.
    pub fn switchover_in_progress(&self) -> bool {
        self.failover.as_ref().is_some_and(|f| f.planned)
    }

    /// True once the first decision (which backend is the primary) is made.
    pub fn is_bootstrapped(&self) -> bool {
        self.bootstrapped
    }

    /// Replay lag of standby `id` behind the primary, in bytes (0 when
    /// unknown): how stale its reads are. (Promotion decisions use the WAL
    /// it holds instead, see [`Observation::received_lsn`].)
    pub fn lag_bytes(&self, id: usize) -> u64 {
        let Some(b) = self.backends.get(id) else {
            return 0;
        };
        let Some(o) = b.last.as_ref().filter(|o| o.in_recovery) else {
            return 0;
        };
        health::lag(self.reference_lsn(), o.replay_lsn)
    }

    /// Lag of standby `id` in seconds, as the primary reports it.
    pub fn lag_seconds(&self, id: usize) -> f64 {
        let (Some(b), Some(p)) = (
            self.backends.get(id),
            self.primary.and_then(|p| self.backends.get(p)),
        ) else {
            return 0.0;
        };
        p.last
            .as_ref()
            .map_or(0.0, |o| o.lag_seconds_of(&b.spec.name))
    }

    /// The committed generation as the machine holds it: what it proposes,
    /// and what it persists.
    pub fn committed(&self) -> Generation {
        let named = |status: Status| {
            self.backends
                .iter()
                .filter(move |b| b.status == status)
                .map(|b| (b.spec.name.clone(), b.reason.clone()))
        };
        Generation {
            generation: self.generation,
            primary: self
                .primary
                .and_then(|p| self.backends.get(p))
                .map(|b| b.spec.name.clone()),
            detached: named(Status::Detached).collect(),
            failover_in_progress: self.failover_in_progress(),
            down: named(Status::Down).collect(),
            synchronous: self.synchronous.clone(),
        }
    }

    /// Whether backend `id` is one of the generation's synchronous standbys.
    pub fn is_synchronous(&self, id: usize) -> bool {
        (self.backends.get(id))
            .is_some_and(|b| Synchronous::includes(self.synchronous.as_ref(), &b.spec.name))
    }

    /// The WAL position the primary last reported (what standbys lag behind).
    fn reference_lsn(&self) -> Option<u64> {
        let p = self.backends.get(self.primary?)?;
        p.last
            .as_ref()
            .filter(|o| !o.in_recovery)
            .map(Observation::received_lsn)
    }

    /// Marks the view changed: [`Machine::finish`] commits one new
    /// generation per event, however many changes the event made.
    fn commit(&mut self) {
        self.dirty = true;
    }

    fn finish(&mut self, actions: &mut Vec<Action>) {
        if std::mem::take(&mut self.dirty) {
            self.generation += 1;
            actions.insert(0, Action::Publish);
        }
    }

    fn set_status(&mut self, id: usize, status: Status, reason: &str) {
        let Some(b) = self.backends.get_mut(id) else {
            return;
        };
        if b.status == status && b.reason == reason {
            return;
        }
        let changed = b.status != status;
        b.status = status;
        if status == Status::Up {
            b.rejoin = Rejoin::No;
        }
        b.reason = if status == Status::Up {
            String::new()
        } else {
            reason.to_owned()
        };
        if changed {
            tracing::info!(backend = id, name = %b.spec.name, %status, reason, "backend status changed");
            self.commit();
        }
    }

    /// Feeds one event; returns what to do.
    pub fn step(&mut self, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        // Checks pace the synchronous standbys' upkeep (a failed setting is
        // tried again at the next one).
        let checked = matches!(event, Event::Checked { .. });
        match event {
            Event::Checked { id, at_ms, result } => self.checked(id, at_ms, result),
            Event::AliveUnobserved { id, at_ms, .. } => self.alive(id, at_ms),
            Event::Promoted { id, result } => self.promoted(id, result, &mut actions),
            Event::Followed { id, result } => self.followed(id, result),
            Event::QuorumDown(ids) => self.quorum(ids),
            Event::Rejoined {
                id,
                attempt,
                result,
            } => self.rejoined(id, attempt, result),
            Event::SynchronousSet { id, set, result } => {
                if let Some(k) = self.sync.as_mut().filter(|_| Some(id) == self.primary) {
                    k.made(set, &result);
                }
            }
        }
        self.evaluate(&mut actions);
        if checked {
            self.keep_synchronous(&mut actions);
        }
        self.finish(&mut actions);
        actions
    }

    fn checked(&mut self, id: usize, at_ms: i64, result: Result<Observation, String>) {
        let limits = self.limits;
        let Some(b) = self.backends.get_mut(id) else {
            return;
        };
        b.last_check_ms = at_ms;
        let obs = match result {
            Err(reason) => {
                b.failures = b.failures.saturating_add(1);
                b.last_error = Some(reason.clone());
                let local = self.decider == Decider::Local;
                if local && limits.exceeded(b.failures) && b.status == Status::Up {
                    let reason = format!("failed {} consecutive checks: {reason}", b.failures);
                    self.set_status(id, Status::Down, &reason);
                }
                return;
            }
            Ok(o) => o,
        };
        b.failures = 0;
        b.last_error = None;
        let role = if obs.in_recovery {
            Role::Standby
        } else {
            Role::Primary
        };
        let role_changed = b.role != role;
        b.role = role;
        b.last = Some(obs);
        if role_changed && self.bootstrapped {
            self.commit();
        }
        if !self.bootstrapped {
            return;
        }
        self.reconcile(id);
    }

    /// Backend `id` accepts connections, with nothing new to observe: no
    /// longer failing, its last observation stands.
    fn alive(&mut self, id: usize, at_ms: i64) {
        if let Some(b) = self.backends.get_mut(id) {
            b.last_check_ms = at_ms;
            b.failures = 0;
        }
    }

    /// Applies a successful check of `id` to its status.
    fn reconcile(&mut self, id: usize) {
        let Some(b) = self.backends.get(id) else {
            return;
        };
        if b.status == Status::Detached {
            if b.rejoin == Rejoin::Waiting {
                self.attach_rejoined(id);
            }
            return;
        }
        let in_recovery = b.in_recovery().unwrap_or(true);
        let candidate = self.failover.as_ref().map(|f| f.candidate);
        if Some(id) == self.primary {
            if in_recovery {
                self.set_status(id, Status::Down, "the primary is in recovery");
            } else if self.failover.is_none() && self.not_voted_down(id) {
                self.set_status(id, Status::Up, "");
            }
            return;
        }
        if !in_recovery {
            // Out of recovery but not the committed primary: never route to
            // it. (With no primary at all, `evaluate` may adopt it.)
            if Some(id) != candidate && self.primary.is_some() {
                let reason = format!(
                    "out of recovery but not the primary of generation {}: fenced (rejoin it as a standby, then attach it)",
                    self.generation
                );
                self.set_status(id, Status::Detached, &reason);
            }
            return;
        }
        // A standby: healthy when it streams from the primary.
        let Some(p) = self.healthy_primary() else {
            // No healthy primary to stream from: nothing to judge it by.
            return;
        };
        let streams = self.streams_from(id, p) && self.not_voted_down(id);
        let limits = self.limits;
        let Some(b) = self.backends.get_mut(id) else {
            return;
        };
        if streams {
            b.not_streaming = 0;
            if !b.following || b.status == Status::Down {
                b.following = false;
                self.set_status(id, Status::Up, "");
            }
        } else {
            b.not_streaming = b.not_streaming.saturating_add(1);
            if b.status == Status::Up && limits.exceeded(b.not_streaming) {
                let reason = format!("not streaming from the primary {}", self.name(p));
                self.set_status(id, Status::Down, &reason);
            }
        }
    }

    /// A quorum of nodes now sees exactly `ids` down.
    fn quorum(&mut self, ids: Vec<usize>) {
        let now: std::collections::BTreeSet<usize> = ids.into_iter().collect();
        let newly: Vec<usize> = now.difference(&self.quorum_down).copied().collect();
        self.quorum_down = now;
        if self.decider != Decider::Quorum || !self.bootstrapped {
            return;
        }
        for id in newly {
            if self
                .backends
                .get(id)
                .is_some_and(|b| b.status == Status::Up)
            {
                self.set_status(id, Status::Down, "a quorum of nodes cannot reach it");
            }
        }
    }

    /// The primary, when it is up and its last check succeeded: what a
    /// standby can be judged by.
    fn healthy_primary(&self) -> Option<usize> {
        self.primary.filter(|p| {
            self.backends
                .get(*p)
                .is_some_and(|pb| pb.status == Status::Up && pb.reachable())
        })
    }

    fn name(&self, id: usize) -> String {
        self.backends
            .get(id)
            .map_or_else(|| format!("#{id}"), |b| b.spec.name.clone())
    }

    /// Standby `id` streams from primary `p` (see [`health::streams_from`]).
    fn streams_from(&self, id: usize, p: usize) -> bool {
        match (self.backends.get(id), self.backends.get(p)) {
            (Some(s), Some(pb)) => health::streams_from(s, pb),
            _ => false,
        }
    }

    fn promoted(&mut self, id: usize, result: Result<u32, String>, actions: &mut Vec<Action>) {
        let Some(f) = self.failover.take().filter(|f| f.candidate == id) else {
            return;
        };
        match result {
            Ok(timeline) => {
                let old = f.old_primary;
                tracing::info!(new_primary = id, name = %self.name(id), timeline, "failover: promotion succeeded");
                self.primary = Some(id);
                if let Some(b) = self.backends.get_mut(id) {
                    b.role = Role::Primary;
                    b.following = false;
                    b.not_streaming = 0;
                }
                self.set_status(id, Status::Up, "");
                let name = self.name(id);
                if let Some(k) = self.sync.as_mut() {
                    k.promoted(name, &mut self.synchronous);
                }
                if let Some(o) = old.filter(|o| *o != id) {
                    let reason = format!(
                        "former primary, replaced by {} in generation {}: rejoin it as a standby, then attach it",
                        self.name(id),
                        self.generation + 1
                    );
                    self.set_status(o, Status::Detached, &reason);
                }
                let followers: Vec<usize> = (0..self.backends.len())
                    .filter(|s| *s != id && Some(*s) != old)
                    .filter(|s| {
                        self.backends
                            .get(*s)
                            .is_some_and(|b| b.status != Status::Detached)
                    })
                    .collect();
                for s in followers {
                    if let Some(b) = self.backends.get_mut(s) {
                        b.following = true;
                    }
                    let reason = format!("repointing to the new primary {}", self.name(id));
                    self.set_status(s, Status::Down, &reason);
                    actions.push(Action::Follow {
                        id: s,
                        new_primary: id,
                        old_primary: old,
                    });
                }
                self.blocked = None;
                self.commit();
            }
            Err(e) => {
                tracing::warn!(candidate = id, error = %e, "failover: promotion failed; trying the next standby");
                // It may still leave recovery later: fence it.
                self.set_status(id, Status::Detached, &format!("promotion failed: {e}"));
                let mut tried = f.tried;
                tried.push(id);
                self.start_failover(f.old_primary, tried, f.force, actions);
                if self.failover.is_none() {
                    self.commit();
                }
            }
        }
    }

    fn followed(&mut self, id: usize, result: Result<(), String>) {
        let Some(b) = self.backends.get_mut(id) else {
            return;
        };
        if !b.following {
            return;
        }
        b.following = false;
        match result {
            Ok(()) => {
                // Up once a check sees it streaming from the new primary.
                tracing::info!(backend = id, "standby repointed at the new primary");
            }
            Err(e) => {
                let reason = format!("cannot follow the new primary: {e}");
                self.set_status(id, Status::Detached, &reason);
            }
        }
    }

    /// Decides what the current view calls for: the first decision, or a failover.
    fn evaluate(&mut self, actions: &mut Vec<Action>) {
        if !self.bootstrapped {
            self.bootstrap(actions);
            return;
        }
        if self.failover.is_some() {
            return;
        }
        let primary_up = self
            .primary
            .and_then(|p| self.backends.get(p))
            .is_some_and(|b| b.status == Status::Up);
        if primary_up {
            return;
        }
        // Without a committed primary (none ever found), wait for one rather
        // than promote: it may just be unreachable from here.
        let Some(old) = self.primary else {
            self.adopt_lone_primary();
            return;
        };
        self.start_failover(Some(old), Vec::new(), false, actions);
    }

    /// Steps towards the synchronous standbys the mode wants, while the
    /// primary is up and no failover runs.
    fn keep_synchronous(&mut self, actions: &mut Vec<Action>) {
        let (Some(k), Some(p)) = (self.sync.as_mut(), self.primary) else {
            return;
        };
        if self.bootstrapped && self.failover.is_none() {
            let (recorded, action) = k.keep(&self.backends, p, &self.limits, &mut self.synchronous);
            actions.extend(action);
            if recorded {
                self.commit();
            }
        }
    }

    /// With no committed primary, a backend that is out of recovery and not
    /// fenced becomes the primary (e.g. the primary was down at start-up).
    fn adopt_lone_primary(&mut self) {
        if let [only] = start::claims(&self.backends)[..] {
            self.primary = Some(only);
            self.set_status(only, Status::Up, "");
            self.commit();
        }
    }

    /// The first decision: waits until every backend has answered or is
    /// known to be down, then picks the primary.
    fn bootstrap(&mut self, actions: &mut Vec<Action>) {
        let limits = self.limits;
        let all_known = self
            .backends
            .iter()
            .all(|b| b.reachable() || limits.exceeded(b.failures));
        if !all_known {
            return;
        }
        let claims = start::claims(&self.backends);
        let chosen = start::choose(&self.backends, &claims, self.persisted_primary);
        if chosen.is_none() && !claims.is_empty() {
            tracing::error!(
                ?claims,
                "several backends are out of recovery on the same timeline and none is the recorded primary; \
                 fencing all of them: resolve the split brain, then attach the right one"
            );
        }
        // A persisted primary that is down now stays the primary of record:
        // the normal failover rules take over from here.
        let chosen = chosen.or_else(|| {
            self.persisted_primary.filter(|p| {
                claims.is_empty()
                    && self
                        .backends
                        .get(*p)
                        .is_some_and(|b| !b.reachable() && b.status != Status::Detached)
            })
        });
        self.bootstrapped = true;
        self.primary = chosen;
        for i in 0..self.backends.len() {
            let Some(b) = self.backends.get(i) else {
                continue;
            };
            if b.status == Status::Detached {
                continue;
            }
            if Some(i) == chosen {
                // With a quorum deciding, this node failing to reach the
                // primary is not enough to call it down.
                let unreachable_here_only =
                    self.decider == Decider::Quorum && !self.quorum_down.contains(&i);
                if (b.reachable() || unreachable_here_only) && self.not_voted_down(i) {
                    self.set_status(i, Status::Up, "");
                } else {
                    let reason = "the recorded primary is unreachable".to_owned();
                    self.set_status(i, Status::Down, &reason);
                }
            } else if claims.contains(&i) {
                let reason = "also out of recovery at start-up: fenced (rejoin it as a standby, then attach it)";
                self.set_status(i, Status::Detached, reason);
            } else if !b.reachable() {
                // What the checks say (a refused login, a certificate for
                // another name...) is what the operator needs to know.
                let reason = match &b.last_error {
                    Some(e) => format!("unreachable at start-up: {e}"),
                    None => "unreachable at start-up".to_owned(),
                };
                self.set_status(i, Status::Down, &reason);
            } else if chosen.is_some_and(|p| self.streams_from(i, p)) {
                self.set_status(i, Status::Up, "");
            } else {
                self.set_status(i, Status::Down, "not streaming from the primary");
            }
        }
        self.commit();
        // The recorded primary may be down already: fail over now.
        if self.primary.is_some()
            && !self
                .primary
                .and_then(|p| self.backends.get(p))
                .is_some_and(|b| b.status == Status::Up)
        {
            self.start_failover(self.primary, Vec::new(), false, actions);
        }
    }

    /// Picks the standby to promote and asks for it; records why not otherwise.
    fn start_failover(
        &mut self,
        old: Option<usize>,
        tried: Vec<usize>,
        force: bool,
        actions: &mut Vec<Action>,
    ) {
        let field = Field {
            backends: &self.backends,
            limits: &self.limits,
            reference: self.reference_lsn(),
            timeline: self.primary_timeline(old),
            synchronous: self.synchronous.as_ref(),
        };
        let excluded: Vec<usize> = tried.iter().copied().chain(old).collect();
        match field.choose(&excluded, force) {
            Ok(Candidate {
                id,
                received,
                replayed,
            }) => {
                tracing::warn!(
                    old_primary = ?old, candidate = id, name = %self.name(id),
                    received_lsn = %lsn_to_string(received), replay_lsn = %lsn_to_string(replayed),
                    "failover: promoting the standby holding the most WAL (it replays the rest)"
                );
                self.failover = Some(Failover {
                    candidate: id,
                    old_primary: old,
                    tried,
                    force,
                    planned: false,
                });
                self.blocked = None;
                self.commit();
                actions.push(Action::Promote {
                    id,
                    old_primary: old,
                    drain: false,
                    synchronous_standby_names: self
                        .sync
                        .as_ref()
                        .and_then(|k| k.names_at(&self.backends, id, old)),
                });
            }
            Err(why) => {
                if self.blocked.as_deref() != Some(&why) {
                    tracing::error!(reason = %why, "failover needed but no standby can be promoted");
                    self.blocked = Some(why);
                }
            }
        }
    }

    /// The timeline the primary `old` was last seen on (`None` when unknown).
    fn primary_timeline(&self, old: Option<usize>) -> Option<u32> {
        let o = self.backends.get(old?)?.last.as_ref()?;
        (o.timeline != 0).then_some(o.timeline)
    }

    /// Lag of standby `id` behind the primary by the WAL it holds
    /// ([`Observation::received_lsn`]): what a promotion would lose.
    fn received_lag_bytes(&self, id: usize) -> u64 {
        let Some(o) = self
            .backends
            .get(id)
            .and_then(|b| b.last.as_ref())
            .filter(|o| o.in_recovery)
        else {
            return 0;
        };
        health::lag(self.reference_lsn(), o.received_lsn())
    }

    // === operator requests ===

    /// Backend `id`, or the refusal an operator naming it gets.
    fn known(&self, id: usize) -> Result<&BackendView, String> {
        self.backends
            .get(id)
            .ok_or_else(|| format!("no backend with id {id}"))
    }

    /// Routes to backend `id` again (pcp_attach_node): only a healthy primary
    /// of record, or a standby streaming from the primary.
    pub fn attach(&mut self, id: usize) -> Result<(String, Vec<Action>), String> {
        let mut actions = Vec::new();
        let name = self.name(id);
        let b = self.known(id)?;
        if b.status == Status::Up {
            return Ok((format!("{name} is already up"), actions));
        }
        if !b.reachable() {
            return Err(format!("{name} is not reachable: {}", b.reason));
        }
        if Some(id) == self.primary {
            if b.in_recovery() == Some(true) {
                return Err(format!(
                    "{name} is the primary of record but is in recovery"
                ));
            }
            self.set_status(id, Status::Up, "");
            self.finish(&mut actions);
            return Ok((format!("{name} attached as primary"), actions));
        }
        if b.in_recovery() == Some(false) {
            return Err(format!(
                "{name} is out of recovery but is not the primary: attaching it would let two backends take writes"
            ));
        }
        let Some(p) = self.primary else {
            return Err("there is no primary to check its replication against".to_owned());
        };
        if !self.streams_from(id, p) {
            return Err(format!(
                "{name} does not stream from the primary {}: rejoin it first",
                self.name(p)
            ));
        }
        if let Some(b) = self.backends.get_mut(id) {
            b.following = false;
            b.not_streaming = 0;
        }
        self.set_status(id, Status::Up, "");
        self.finish(&mut actions);
        Ok((format!("{name} attached"), actions))
    }

    /// Starts making detached (or down) backend `id` a standby of the
    /// primary again (pgpool-II's pcp_recovery_node): the caller runs
    /// `failover.rejoin_command`, and once it succeeded the backend is
    /// attached as soon as a check sees it stream from the primary.
    pub fn rejoin(&mut self, id: usize) -> Result<(String, Vec<Action>), String> {
        let name = self.name(id);
        let b = self.known(id)?;
        if Some(id) == self.primary {
            return Err(format!(
                "{name} is the primary: switch over first (pgwardenctl promote)"
            ));
        }
        if b.status == Status::Up {
            return Err(format!("{name} is up: nothing to rejoin"));
        }
        if matches!(b.rejoin, Rejoin::Running(_)) {
            return Err(format!("{name} is already being rejoined"));
        }
        if b.following {
            return Err(format!(
                "{name} is being repointed at the new primary: rejoin it once that is over"
            ));
        }
        if self.failover.is_some() {
            return Err("a failover is in progress: rejoin once it is over".to_owned());
        }
        let Some(p) = self.primary.filter(|p| {
            self.backends
                .get(*p)
                .is_some_and(|pb| pb.status == Status::Up)
        }) else {
            return Err("there is no healthy primary to rejoin it to".to_owned());
        };
        let reason = format!("rejoining as a standby of {}", self.name(p));
        self.set_status(id, Status::Detached, &reason);
        // Unique in the process, across machines: a machine rebuilt (after
        // a refused proposal, a change of leader) never mistakes an older
        // machine's rejoin result for its own.
        let attempt = REJOIN_ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let Some(b) = self.backends.get_mut(id) {
            b.rejoin = Rejoin::Running(attempt);
        }
        self.commit();
        let mut actions = Vec::new();
        self.finish(&mut actions);
        actions.push(Action::Rejoin {
            id,
            primary: p,
            attempt,
        });
        Ok((format!("{name}: rejoin started"), actions))
    }

    fn rejoined(&mut self, id: usize, attempt: u64, result: Result<(), String>) {
        let primary = self.primary.map(|p| self.name(p)).unwrap_or_default();
        let Some(b) = self
            .backends
            .get_mut(id)
            .filter(|b| b.rejoin == Rejoin::Running(attempt))
        else {
            tracing::debug!(
                backend = id,
                attempt,
                "result of a rejoin no longer awaited ignored"
            );
            return;
        };
        match result {
            Ok(()) => {
                b.rejoin = Rejoin::Waiting;
                b.reason = format!("rejoined; attached once it streams from {primary}");
                // Reasons of detached backends are part of the committed state.
                self.dirty = true;
                tracing::info!(backend = id, name = %b.spec.name, "rejoin command succeeded; waiting for the backend to stream from the primary");
                self.attach_rejoined(id);
            }
            Err(e) => {
                b.rejoin = Rejoin::No;
                b.reason = format!("rejoin failed: {e}");
                self.dirty = true;
                tracing::warn!(backend = id, name = %b.spec.name, error = %e, "rejoin failed; the backend stays detached");
            }
        }
    }

    /// Attaches a rejoined backend once it streams from a healthy primary.
    fn attach_rejoined(&mut self, id: usize) {
        let Some(p) = self.healthy_primary() else {
            return;
        };
        let ready = self.backends.get(id).is_some_and(|b| {
            b.reachable() && b.in_recovery() == Some(true) && b.rejoin == Rejoin::Waiting
        }) && self.streams_from(id, p)
            && self.not_voted_down(id);
        if !ready {
            return;
        }
        if let Some(b) = self.backends.get_mut(id) {
            b.rejoin = Rejoin::No;
            b.following = false;
            b.not_streaming = 0;
            b.role = Role::Standby;
            tracing::info!(backend = id, name = %b.spec.name, "rejoined backend streams from the primary: attached");
        }
        self.set_status(id, Status::Up, "");
    }

    /// Stops routing to backend `id` (pcp_detach_node). Detaching the
    /// primary fails over, as in pgpool-II.
    pub fn detach(&mut self, id: usize) -> Result<(String, Vec<Action>), String> {
        let mut actions = Vec::new();
        let name = self.name(id);
        self.known(id)?;
        if self.failover.as_ref().is_some_and(|f| f.candidate == id) {
            return Err(format!("{name} is being promoted"));
        }
        self.set_status(id, Status::Detached, "detached by an operator");
        if let Some(b) = self.backends.get_mut(id) {
            b.rejoin = Rejoin::No;
        }
        self.evaluate(&mut actions);
        self.finish(&mut actions);
        Ok((format!("{name} detached"), actions))
    }

    /// Planned switchover to standby `id` (pcp_promote_node --switchover):
    /// the current primary is fenced first, then `id` is promoted.
    pub fn promote(&mut self, id: usize, force: bool) -> Result<(String, Vec<Action>), String> {
        if let Some(b) = self
            .backends
            .iter()
            .find(|b| matches!(b.rejoin, Rejoin::Running(_)))
        {
            return Err(format!(
                "{} is being rejoined to the current primary: switch over once that is over",
                b.spec.name
            ));
        }
        let mut actions = Vec::new();
        let name = self.name(id);
        let b = self.known(id)?;
        if self.failover.is_some() {
            return Err("a failover is already in progress".to_owned());
        }
        if Some(id) == self.primary {
            return Err(format!("{name} is already the primary"));
        }
        if b.status == Status::Detached {
            return Err(format!("{name} is detached: {}", b.reason));
        }
        if !b.reachable() || b.in_recovery() != Some(true) {
            return Err(format!("{name} is not a reachable standby"));
        }
        let lag = self.received_lag_bytes(id);
        if !force && lag > self.limits.max_lag_bytes {
            return Err(format!(
                "{name} is {lag} bytes behind (max_lag_bytes {}); use force to promote it anyway",
                self.limits.max_lag_bytes
            ));
        }
        let old = self.primary;
        if let Some(o) = old {
            let reason = format!("switched over to {name}: rejoin it as a standby, then attach it");
            self.set_status(o, Status::Detached, &reason);
        }
        self.failover = Some(Failover {
            candidate: id,
            old_primary: old,
            tried: Vec::new(),
            force,
            planned: true,
        });
        self.commit();
        actions.push(Action::Promote {
            id,
            old_primary: old,
            drain: old.is_some(),
            synchronous_standby_names: self
                .sync
                .as_ref()
                .and_then(|k| k.names_at(&self.backends, id, old)),
        });
        self.finish(&mut actions);
        Ok((format!("promoting {name}"), actions))
    }
}

#[cfg(test)]
mod tests;
