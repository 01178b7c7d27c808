//! The failover decision, as a pure state machine.
//!
//! [`Machine`] holds the committed cluster view: each backend's role and
//! status, the primary, the generation. Check results, action results and
//! operator requests go in as [`Event`]s; what to do comes out as
//! [`Action`]s (publish a new generation, promote a standby, repoint one).
//! No sockets, no clock, no randomness: the tests below drive it through
//! whole failovers as tables of events.
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

use std::fmt;

use pgwarden_proto::lsn::lsn_to_string;

/// Role a backend plays, as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Never checked successfully.
    Unknown,
    /// Out of recovery.
    Primary,
    /// In recovery.
    Standby,
}

/// Whether the backend is routable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Healthy: the primary, or a standby streaming from it.
    Up,
    /// Failing checks (or not streaming); re-attached automatically when healthy.
    Down,
    /// Fenced until an operator attaches it.
    Detached,
}

/// What one successful check saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// Timeline (0 when unknown).
    pub timeline: u32,
    /// Primary: current WAL LSN; standby: last replayed LSN.
    pub replay_lsn: u64,
    /// Primary: flushed WAL LSN; standby: last received LSN.
    pub flush_lsn: u64,
    /// Standby: the WAL receiver is streaming.
    pub streaming: bool,
    /// Standby: the port of the server it streams from.
    pub upstream_port: Option<u16>,
    /// Primary: replay lag in seconds per standby `application_name`.
    pub replica_lag: Vec<(String, f64)>,
}

impl Observation {
    /// Standby: the WAL it holds, which a promotion keeps: the last WAL
    /// received and flushed (`pg_last_wal_receive_lsn()`), or the replay
    /// position when that is further (WAL restored from an archive) or
    /// unknown (0: no WAL receiver ran since the server started).
    /// Primary: its flushed WAL.
    pub fn received_lsn(&self) -> u64 {
        self.flush_lsn.max(self.replay_lsn)
    }

    /// A primary at `lsn` on `timeline`.
    pub fn primary(timeline: u32, lsn: u64) -> Self {
        Observation {
            in_recovery: false,
            timeline,
            replay_lsn: lsn,
            flush_lsn: lsn,
            streaming: false,
            upstream_port: None,
            replica_lag: Vec::new(),
        }
    }

    /// A standby at `lsn` on `timeline`, streaming from `upstream_port` if given.
    pub fn standby(timeline: u32, lsn: u64, upstream_port: Option<u16>) -> Self {
        Observation {
            in_recovery: true,
            timeline,
            replay_lsn: lsn,
            flush_lsn: lsn,
            streaming: upstream_port.is_some(),
            upstream_port,
            replica_lag: Vec::new(),
        }
    }
}

/// A backend as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// `backends[].name`.
    pub name: String,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// May be promoted.
    pub allow_failover: bool,
}

/// Thresholds from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `health_check.max_retries`: a backend is down after more consecutive failures than this.
    pub max_retries: u32,
    /// `replication_check.max_lag_bytes`: a standby further behind is not promoted.
    pub max_lag_bytes: u64,
}

/// What survives a restart of the monitor (persisted in `state_dir`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Persisted {
    /// The last committed generation.
    pub generation: u64,
    /// Name of the committed primary.
    pub primary: Option<String>,
    /// Names of detached backends, with the reason.
    pub detached: Vec<(String, String)>,
}

/// Input to the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A check of backend `id` finished at `at_ms` (unix ms, for display only).
    Checked {
        /// Backend id.
        id: usize,
        /// When.
        at_ms: i64,
        /// What it saw, or why it failed.
        result: Result<Observation, String>,
    },
    /// A promotion finished.
    Promoted {
        /// The promoted backend.
        id: usize,
        /// Its new timeline, or why it failed.
        result: Result<u32, String>,
    },
    /// Repointing a standby finished.
    Followed {
        /// The standby.
        id: usize,
        /// Success, or why it cannot follow.
        result: Result<(), String>,
    },
    /// A check of backend `id` could not observe it, but the server is
    /// alive: it accepted fresh connections whose sessions someone else
    /// ended (`pg_terminate_backend()`) before the check answered. Resets
    /// the failure count, keeps the last observation: only the monitor's own
    /// evidence (a fresh connection refused or unanswered) fails a check.
    AliveUnobserved {
        /// Backend id.
        id: usize,
        /// When (unix ms, for display only).
        at_ms: i64,
        /// What happened, for the log.
        reason: String,
    },
    /// With the watchdog: the backends a quorum of nodes sees down now
    /// (committed through Raft). Only meaningful for a quorum machine.
    QuorumDown(Vec<usize>),
    /// `failover.rejoin_command` finished for backend `id`.
    Rejoined {
        /// The backend being rejoined.
        id: usize,
        /// Which rejoin (from [`Action::Rejoin`]): an older one's result is
        /// ignored.
        attempt: u64,
        /// Success, or why it failed.
        result: Result<(), String>,
    },
}

/// Who decides that a backend is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decider {
    /// This monitor's own checks (single node, `watchdog.enabled = false`).
    Local,
    /// A quorum of the nodes' monitors (pgpool's failover_require_consensus):
    /// local failures alone change nothing; [`Event::QuorumDown`] does.
    Quorum,
}

/// Output of the machine, performed by the caller in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new generation is committed: persist it and tell every watcher.
    Publish,
    /// Promote backend `id`; `old_primary` is the primary it replaces.
    Promote {
        /// The standby to promote.
        id: usize,
        /// The primary it replaces (if there was one).
        old_primary: Option<usize>,
    },
    /// Repoint standby `id` at `new_primary`.
    Follow {
        /// The standby.
        id: usize,
        /// The new primary.
        new_primary: usize,
        /// The primary it replaced (for hook placeholders).
        old_primary: Option<usize>,
    },
    /// Run `failover.rejoin_command` to make backend `id` a standby of
    /// `primary` (pcp_recovery_node).
    Rejoin {
        /// The backend to rejoin.
        id: usize,
        /// The primary it must follow.
        primary: usize,
        /// Tells this rejoin's [`Event::Rejoined`] from an older one's.
        attempt: u64,
    },
}

/// Where a rejoin of a detached backend stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rejoin {
    /// None asked for.
    #[default]
    No,
    /// `failover.rejoin_command` is running (this attempt).
    Running(u64),
    /// It succeeded: attached as soon as it streams from the primary.
    Waiting,
}

/// One backend in the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendView {
    /// Configuration.
    pub spec: BackendSpec,
    /// Role as last seen.
    pub role: Role,
    /// Routable or not.
    pub status: Status,
    /// Why down or detached.
    pub reason: String,
    /// Consecutive failed checks.
    pub failures: u32,
    /// Consecutive checks that found a standby not streaming from the primary.
    pub not_streaming: u32,
    /// The last successful check.
    pub last: Option<Observation>,
    /// When the last check finished (unix ms).
    pub last_check_ms: i64,
    /// Being repointed at the new primary.
    pub following: bool,
    /// An operator's rejoin in progress.
    pub rejoin: Rejoin,
}

impl BackendView {
    fn reachable(&self) -> bool {
        self.failures == 0 && self.last.is_some()
    }

    fn in_recovery(&self) -> Option<bool> {
        self.last.as_ref().map(|o| o.in_recovery)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Failover {
    candidate: usize,
    old_primary: Option<usize>,
    tried: Vec<usize>,
    force: bool,
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
    /// Why no standby could be promoted (logged once per cause).
    pub blocked: Option<String>,
}

/// Why standby `o` cannot take over from a primary on `timeline`, when its
/// WAL is not that primary's history: a newer timeline (it follows another
/// server), or an older one while it streams (it has not followed a
/// timeline switch). An older timeline while not streaming says nothing: it
/// is then the last restartpoint's, which trails a switch for a while.
fn off_timeline(o: &Observation, timeline: u32) -> Option<String> {
    let newer = o.timeline > timeline;
    let behind = o.streaming && o.timeline != 0 && o.timeline < timeline;
    (newer || behind).then(|| {
        format!(
            "on timeline {}, the primary's is {timeline}: its WAL is not the primary's history",
            o.timeline
        )
    })
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Up => "up",
            Status::Down => "down",
            Status::Detached => "detached",
        })
    }
}

impl Machine {
    /// A machine for `specs`, starting from what was persisted (never
    /// trusted blindly: the first decision waits for every backend's first
    /// check, see [`Machine::is_bootstrapped`]).
    pub fn new(specs: Vec<BackendSpec>, limits: Limits, persisted: &Persisted) -> Machine {
        let backends: Vec<BackendView> = specs
            .into_iter()
            .map(|spec| {
                let detached = persisted.detached.iter().find(|(n, _)| *n == spec.name);
                BackendView {
                    role: Role::Unknown,
                    status: if detached.is_some() {
                        Status::Detached
                    } else {
                        Status::Down
                    },
                    reason: detached
                        .map_or_else(|| "not checked yet".to_owned(), |(_, r)| r.clone()),
                    failures: 0,
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
            blocked: None,
        }
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
        self.reference_lsn()
            .map_or(0, |r| r.saturating_sub(o.replay_lsn))
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
            .and_then(|o| o.replica_lag.iter().find(|(n, _)| *n == b.spec.name))
            .map_or(0.0, |(_, s)| *s)
    }

    /// What to persist.
    pub fn persisted(&self) -> Persisted {
        Persisted {
            generation: self.generation,
            primary: self
                .primary
                .and_then(|p| self.backends.get(p))
                .map(|b| b.spec.name.clone()),
            detached: self
                .backends
                .iter()
                .filter(|b| b.status == Status::Detached)
                .map(|b| (b.spec.name.clone(), b.reason.clone()))
                .collect(),
        }
    }

    /// The WAL position the primary last reported (what standbys lag behind).
    fn reference_lsn(&self) -> Option<u64> {
        let p = self.backends.get(self.primary?)?;
        p.last
            .as_ref()
            .filter(|o| !o.in_recovery)
            .map(|o| o.flush_lsn.max(o.replay_lsn))
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
        }
        self.evaluate(&mut actions);
        self.finish(&mut actions);
        actions
    }

    fn checked(&mut self, id: usize, at_ms: i64, result: Result<Observation, String>) {
        let max_retries = self.limits.max_retries;
        let Some(b) = self.backends.get_mut(id) else {
            return;
        };
        b.last_check_ms = at_ms;
        let obs = match result {
            Err(reason) => {
                b.failures = b.failures.saturating_add(1);
                let local = self.decider == Decider::Local;
                if local && b.failures > max_retries && b.status == Status::Up {
                    let reason = format!("failed {} consecutive checks: {reason}", b.failures);
                    self.set_status(id, Status::Down, &reason);
                }
                return;
            }
            Ok(o) => o,
        };
        b.failures = 0;
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
        let max_retries = self.limits.max_retries;
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
            if b.status == Status::Up && b.not_streaming > max_retries {
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

    /// Standby `id` streams from primary `p`, on its timeline.
    fn streams_from(&self, id: usize, p: usize) -> bool {
        let (Some(s), Some(pb)) = (self.backends.get(id), self.backends.get(p)) else {
            return false;
        };
        let (Some(so), Some(po)) = (&s.last, &pb.last) else {
            return false;
        };
        so.in_recovery
            && so.streaming
            && (so.timeline == po.timeline || so.timeline == 0 || po.timeline == 0)
            && so.upstream_port.is_none_or(|port| port == pb.spec.port)
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

    /// With no committed primary, a backend that is out of recovery and not
    /// fenced becomes the primary (e.g. the primary was down at start-up).
    fn adopt_lone_primary(&mut self) {
        let claims: Vec<usize> = (0..self.backends.len())
            .filter(|i| {
                self.backends.get(*i).is_some_and(|b| {
                    b.status != Status::Detached && b.reachable() && b.in_recovery() == Some(false)
                })
            })
            .collect();
        if let [only] = claims[..] {
            self.primary = Some(only);
            self.set_status(only, Status::Up, "");
            self.commit();
        }
    }

    /// The first decision: waits until every backend has answered or is
    /// known to be down, then picks the primary.
    fn bootstrap(&mut self, actions: &mut Vec<Action>) {
        let max_retries = self.limits.max_retries;
        let all_known = self
            .backends
            .iter()
            .all(|b| b.reachable() || b.failures > max_retries);
        if !all_known {
            return;
        }
        let claims: Vec<usize> = (0..self.backends.len())
            .filter(|i| {
                self.backends.get(*i).is_some_and(|b| {
                    b.status != Status::Detached && b.reachable() && b.in_recovery() == Some(false)
                })
            })
            .collect();
        let timeline = |i: usize| {
            self.backends
                .get(i)
                .and_then(|b| b.last.as_ref())
                .map_or(0, |o| o.timeline)
        };
        let newest = claims.iter().map(|i| timeline(*i)).max().unwrap_or(0);
        let top: Vec<usize> = claims
            .iter()
            .copied()
            .filter(|i| timeline(*i) == newest)
            .collect();
        let chosen = match (&top[..], self.persisted_primary) {
            ([only], _) => Some(*only),
            (several, Some(p)) if several.contains(&p) => Some(p),
            _ => None,
        };
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
                self.set_status(i, Status::Down, "unreachable at start-up");
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
        let reference = self.reference_lsn();
        let timeline = self.primary_timeline(old);
        let mut why_not = Vec::new();
        // (received, replayed, id) of the best candidate so far.
        let mut best: Option<(u64, u64, usize)> = None;
        for (i, b) in self.backends.iter().enumerate() {
            if Some(i) == old || tried.contains(&i) {
                continue;
            }
            let Some(o) = b.last.as_ref() else {
                why_not.push(format!("{}: never checked", b.spec.name));
                continue;
            };
            let lag = reference.map_or(0, |r| r.saturating_sub(o.received_lsn()));
            let refusal = if b.status == Status::Detached {
                Some("detached".to_owned())
            } else if !b.reachable() {
                Some("unreachable".to_owned())
            } else if !o.in_recovery {
                Some("not a standby".to_owned())
            } else if !b.spec.allow_failover {
                Some("allow_failover = false".to_owned())
            } else if let Some(r) = timeline.and_then(|t| off_timeline(o, t)).filter(|_| !force) {
                Some(r)
            } else if !force && lag > self.limits.max_lag_bytes {
                Some(format!(
                    "{lag} bytes behind (max_lag_bytes {})",
                    self.limits.max_lag_bytes
                ))
            } else {
                None
            };
            if let Some(r) = refusal {
                why_not.push(format!("{}: {r}", b.spec.name));
                continue;
            }
            let key = (o.received_lsn(), o.replay_lsn);
            if best.is_none_or(|(received, replayed, _)| key > (received, replayed)) {
                best = Some((key.0, key.1, i));
            }
        }
        match best {
            Some((received, replayed, id)) => {
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
                });
                self.blocked = None;
                self.commit();
                actions.push(Action::Promote {
                    id,
                    old_primary: old,
                });
            }
            None => {
                let why = if why_not.is_empty() {
                    "no standby".to_owned()
                } else {
                    why_not.join("; ")
                };
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
        self.reference_lsn()
            .map_or(0, |r| r.saturating_sub(o.received_lsn()))
    }

    // === operator requests ===

    /// Routes to backend `id` again (pcp_attach_node): only a healthy primary
    /// of record, or a standby streaming from the primary.
    pub fn attach(&mut self, id: usize) -> Result<(String, Vec<Action>), String> {
        let mut actions = Vec::new();
        let name = self.name(id);
        let b = self
            .backends
            .get(id)
            .ok_or_else(|| format!("no backend with id {id}"))?;
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
        let b = self
            .backends
            .get(id)
            .ok_or_else(|| format!("no backend with id {id}"))?;
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
        if self.backends.get(id).is_none() {
            return Err(format!("no backend with id {id}"));
        }
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
        let b = self
            .backends
            .get(id)
            .ok_or_else(|| format!("no backend with id {id}"))?;
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
        });
        self.commit();
        actions.push(Action::Promote {
            id,
            old_primary: old,
        });
        self.finish(&mut actions);
        Ok((format!("promoting {name}"), actions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1 << 30;

    fn spec(name: &str, port: u16) -> BackendSpec {
        BackendSpec {
            name: name.into(),
            host: "127.0.0.1".into(),
            port,
            allow_failover: true,
        }
    }

    /// pg0 (5000) primary, pg1 (5001) and pg2 (5002) standbys.
    fn three() -> Machine {
        Machine::new(
            vec![spec("pg0", 5000), spec("pg1", 5001), spec("pg2", 5002)],
            Limits {
                max_retries: 2,
                max_lag_bytes: 16 << 20,
            },
            &Persisted::default(),
        )
    }

    fn ok(m: &mut Machine, id: usize, o: Observation) -> Vec<Action> {
        m.step(Event::Checked {
            id,
            at_ms: 0,
            result: Ok(o),
        })
    }

    fn fail(m: &mut Machine, id: usize) -> Vec<Action> {
        m.step(Event::Checked {
            id,
            at_ms: 0,
            result: Err("connection refused".into()),
        })
    }

    /// A healthy cluster: pg0 at `lsn`, standbys streaming at the same LSN.
    fn healthy(m: &mut Machine, lsn: u64) {
        ok(m, 0, Observation::primary(1, lsn));
        ok(m, 1, Observation::standby(1, lsn, Some(5000)));
        ok(m, 2, Observation::standby(1, lsn, Some(5000)));
    }

    fn statuses(m: &Machine) -> Vec<Status> {
        m.backends().iter().map(|b| b.status).collect()
    }

    fn kill_primary(m: &mut Machine) -> Vec<Action> {
        let mut all = Vec::new();
        for _ in 0..3 {
            all.extend(fail(m, 0));
        }
        all
    }

    #[test]
    fn rejoin_runs_the_command_then_attaches_once_streaming() {
        let mut m = three();
        healthy(&mut m, GB);
        let a = kill_primary(&mut m);
        // Equal positions: the lowest id wins.
        let promoted = 1;
        assert!(a.contains(&Action::Promote {
            id: promoted,
            old_primary: Some(0)
        }));
        ok(&mut m, promoted, Observation::primary(2, GB));
        m.step(Event::Promoted {
            id: promoted,
            result: Ok(2),
        });
        let other = 3 - promoted;
        m.step(Event::Followed {
            id: other,
            result: Ok(()),
        });
        let port = 5000 + u16::try_from(promoted).unwrap();
        ok(&mut m, other, Observation::standby(2, GB, Some(port)));
        assert_eq!(m.backends()[other].status, Status::Up);
        // The old primary comes back out of recovery: fenced.
        ok(&mut m, 0, Observation::primary(1, GB));
        assert_eq!(m.backends()[0].status, Status::Detached);
        assert!(m.rejoin(promoted).unwrap_err().contains("is the primary"));
        assert!(m.rejoin(other).unwrap_err().contains("is up"));

        let g = m.generation();
        let (_, actions) = m.rejoin(0).unwrap();
        let Some(&Action::Rejoin {
            id: 0,
            primary,
            attempt,
        }) = actions.last()
        else {
            panic!("{actions:?}")
        };
        assert_eq!(primary, promoted);
        assert!(m.backends()[0].reason.starts_with("rejoining as a standby"));
        assert!(m.rejoin(0).unwrap_err().contains("already being rejoined"));
        // Checks while the command runs change nothing.
        fail(&mut m, 0);
        ok(&mut m, 0, Observation::standby(1, GB, None));
        assert_eq!(m.backends()[0].status, Status::Detached);

        // A failed command leaves it detached, saying why; it may be retried.
        // A switchover waits for the rejoin.
        assert!(
            m.promote(other, false)
                .unwrap_err()
                .contains("being rejoined")
        );
        m.step(Event::Rejoined {
            id: 0,
            attempt,
            result: Err("pg_rewind: could not connect".into()),
        });
        assert_eq!(
            m.backends()[0].reason,
            "rejoin failed: pg_rewind: could not connect"
        );
        let (_, actions) = m.rejoin(0).unwrap();
        let Some(&Action::Rejoin {
            attempt: second, ..
        }) = actions.last()
        else {
            panic!("{actions:?}")
        };
        assert_ne!(second, attempt);
        // The first attempt's late result is not this one's.
        m.step(Event::Rejoined {
            id: 0,
            attempt,
            result: Ok(()),
        });
        assert_eq!(m.backends()[0].rejoin, Rejoin::Running(second));
        let a = m.step(Event::Rejoined {
            id: 0,
            attempt: second,
            result: Ok(()),
        });
        // The new reason is committed; not attached until it streams.
        assert_eq!(a, vec![Action::Publish]);
        assert_eq!(m.backends()[0].status, Status::Detached);
        assert_eq!(
            m.backends()[0].reason,
            format!("rejoined; attached once it streams from pg{promoted}")
        );
        // Streaming from another server than the primary is not enough, on
        // the old timeline or on the new one.
        ok(&mut m, 0, Observation::standby(1, GB, Some(5000)));
        assert_eq!(m.backends()[0].status, Status::Detached);
        ok(&mut m, 0, Observation::standby(2, GB, Some(5000)));
        assert_eq!(m.backends()[0].status, Status::Detached);
        ok(&mut m, 0, Observation::standby(1, GB, Some(port)));
        assert_eq!(m.backends()[0].status, Status::Detached);
        let a = ok(&mut m, 0, Observation::standby(2, GB, Some(port)));
        assert_eq!(a, vec![Action::Publish]);
        assert_eq!(m.backends()[0].status, Status::Up);
        assert_eq!(m.backends()[0].rejoin, Rejoin::No);
        assert!(m.generation() > g);
        assert_eq!(m.primary(), Some(promoted));
    }

    #[test]
    fn bootstrap_waits_for_every_backend_then_commits_generation_1() {
        let mut m = three();
        assert!(ok(&mut m, 0, Observation::primary(1, GB)).is_empty());
        assert!(ok(&mut m, 1, Observation::standby(1, GB, Some(5000))).is_empty());
        assert!(!m.is_bootstrapped());
        let a = ok(&mut m, 2, Observation::standby(1, GB, Some(5000)));
        assert_eq!(a, vec![Action::Publish]);
        assert_eq!(m.generation(), 1);
        assert_eq!(m.primary(), Some(0));
        assert_eq!(statuses(&m), vec![Status::Up, Status::Up, Status::Up]);
    }

    #[test]
    fn primary_dies_most_advanced_standby_is_promoted_and_the_other_follows() {
        let mut m = three();
        healthy(&mut m, GB);
        // pg2 replayed further than pg1.
        ok(&mut m, 1, Observation::standby(1, GB + 100, Some(5000)));
        ok(&mut m, 2, Observation::standby(1, GB + 200, Some(5000)));
        let g = m.generation();
        assert!(fail(&mut m, 0).is_empty(), "one failure is not enough");
        assert!(
            fail(&mut m, 0).is_empty(),
            "max_retries = 2 means 3 failures"
        );
        let a = fail(&mut m, 0);
        assert_eq!(
            a,
            vec![
                Action::Publish,
                Action::Promote {
                    id: 2,
                    old_primary: Some(0)
                }
            ]
        );
        assert!(m.failover_in_progress());
        assert!(m.generation() > g);
        // While it is promoted, pg2 already reports out of recovery: not fenced.
        ok(&mut m, 2, Observation::primary(2, GB + 200));
        assert_eq!(m.backends()[2].status, Status::Up);
        let a = m.step(Event::Promoted {
            id: 2,
            result: Ok(2),
        });
        assert_eq!(
            a,
            vec![
                Action::Publish,
                Action::Follow {
                    id: 1,
                    new_primary: 2,
                    old_primary: Some(0)
                }
            ]
        );
        assert_eq!(m.primary(), Some(2));
        assert_eq!(
            statuses(&m),
            vec![Status::Detached, Status::Down, Status::Up]
        );
        assert!(m.backends()[0].reason.contains("former primary"));
        // pg1 follows and streams on timeline 2 from pg2: up again.
        assert!(
            m.step(Event::Followed {
                id: 1,
                result: Ok(())
            })
            .is_empty()
        );
        let a = ok(&mut m, 1, Observation::standby(2, GB + 300, Some(5002)));
        assert_eq!(a, vec![Action::Publish]);
        assert_eq!(statuses(&m), vec![Status::Detached, Status::Up, Status::Up]);
        // The old primary comes back as a primary: it stays detached.
        assert!(ok(&mut m, 0, Observation::primary(1, GB)).is_empty());
        assert_eq!(m.backends()[0].status, Status::Detached);
        assert_eq!(m.primary(), Some(2));
    }

    /// A standby that received (and flushed) WAL up to `received` and
    /// replayed it up to `replayed`, streaming from pg0 unless `streaming` is false.
    fn standby_at(timeline: u32, received: u64, replayed: u64, streaming: bool) -> Observation {
        Observation {
            flush_lsn: received,
            replay_lsn: replayed,
            ..Observation::standby(timeline, replayed, streaming.then_some(5000))
        }
    }

    fn alive(m: &mut Machine, id: usize) -> Vec<Action> {
        m.step(Event::AliveUnobserved {
            id,
            at_ms: 0,
            reason: "terminated by someone else".into(),
        })
    }

    #[test]
    fn issue_7_candidates_rank_by_received_wal_not_replayed() {
        // The issue's figures: pg1 replayed all it received, pg2 received
        // more but its replay is paused further back.
        let mut m = three();
        healthy(&mut m, 0x402_0000);
        ok(&mut m, 0, Observation::primary(1, 0x402_CC68));
        ok(&mut m, 1, standby_at(1, 0x402_48C8, 0x402_48C8, false));
        ok(&mut m, 2, standby_at(1, 0x402_CC68, 0x402_2780, false));
        let a = kill_primary(&mut m);
        assert!(
            a.contains(&Action::Promote {
                id: 2,
                old_primary: Some(0)
            }),
            "{a:?}"
        );
    }

    #[test]
    fn issue_7_no_walreceiver_ever_ran_falls_back_to_the_replay_position() {
        // pg_last_wal_receive_lsn() is NULL (0) after a restart until a WAL
        // receiver streams again: the replay position is what it holds.
        let mut m = three();
        healthy(&mut m, GB);
        ok(&mut m, 1, standby_at(1, 0, GB + 300, false));
        ok(&mut m, 2, standby_at(1, GB + 200, GB + 100, false));
        let a = kill_primary(&mut m);
        assert!(
            a.contains(&Action::Promote {
                id: 1,
                old_primary: Some(0)
            }),
            "{a:?}"
        );
    }

    #[test]
    fn issue_7_equal_received_wal_prefers_the_one_that_replayed_further_then_the_lowest_id() {
        let mut m = three();
        healthy(&mut m, GB);
        ok(&mut m, 1, standby_at(1, GB + 500, GB, true));
        ok(&mut m, 2, standby_at(1, GB + 500, GB + 400, true));
        let a = kill_primary(&mut m);
        assert!(
            a.contains(&Action::Promote {
                id: 2,
                old_primary: Some(0)
            }),
            "{a:?}"
        );
    }

    #[test]
    fn issue_7_lag_for_promotion_counts_received_wal() {
        // pg1's replay is far behind (paused), but it received everything:
        // promotable. pg2 received too little: not.
        let mut m = three();
        healthy(&mut m, GB);
        ok(&mut m, 0, Observation::primary(1, 2 * GB));
        ok(&mut m, 1, standby_at(1, 2 * GB, GB, true));
        ok(&mut m, 2, standby_at(1, GB, GB, true));
        assert_eq!(m.lag_bytes(1), GB, "status shows the replay lag");
        let a = kill_primary(&mut m);
        assert!(
            a.contains(&Action::Promote {
                id: 1,
                old_primary: Some(0)
            }),
            "{a:?}"
        );
        // A switchover measures it the same way.
        let mut m = three();
        healthy(&mut m, GB);
        ok(&mut m, 0, Observation::primary(1, 2 * GB));
        ok(&mut m, 1, standby_at(1, 2 * GB, GB, true));
        ok(&mut m, 2, standby_at(1, GB, GB, true));
        assert!(m.promote(2, false).unwrap_err().contains("max_lag_bytes"));
        assert!(m.promote(1, false).is_ok());
    }

    #[test]
    fn issue_7_a_standby_off_the_primarys_timeline_is_not_promoted() {
        let mut m = three();
        healthy(&mut m, GB);
        // pg1 is on a newer timeline (it follows some other server); pg2
        // streams but is still on an older one.
        ok(&mut m, 0, Observation::primary(3, GB));
        ok(&mut m, 1, standby_at(4, GB + 900, GB + 900, false));
        ok(&mut m, 2, standby_at(2, GB + 800, GB + 800, true));
        let a = kill_primary(&mut m);
        assert_eq!(a, vec![Action::Publish], "nobody promoted");
        let why = m.blocked.clone().unwrap_or_default();
        assert!(
            why.contains("pg1: on timeline 4, the primary's is 3")
                && why.contains("pg2: on timeline 2, the primary's is 3"),
            "{why}"
        );
        // Not streaming, an older timeline is the last restartpoint's: fine.
        let a = ok(&mut m, 2, standby_at(2, GB + 800, GB + 800, false));
        assert!(
            a.contains(&Action::Promote {
                id: 2,
                old_primary: Some(0)
            }),
            "{a:?}"
        );
    }

    #[test]
    fn issue_7_killed_check_sessions_reset_the_failure_count_and_keep_the_observation() {
        let mut m = three();
        healthy(&mut m, GB);
        let g = m.generation();
        for _ in 0..50 {
            assert!(fail(&mut m, 0).is_empty());
            assert!(fail(&mut m, 0).is_empty());
            assert!(alive(&mut m, 0).is_empty());
            assert!(alive(&mut m, 1).is_empty());
        }
        assert_eq!(m.generation(), g);
        assert_eq!(statuses(&m), vec![Status::Up, Status::Up, Status::Up]);
        assert_eq!(m.backends()[0].failures, 0);
        assert_eq!(
            m.backends()[0].last,
            Some(Observation::primary(1, GB)),
            "the last observation stands"
        );
        // Real failures still count from there.
        let a = kill_primary(&mut m);
        assert!(
            a.contains(&Action::Promote {
                id: 1,
                old_primary: Some(0)
            }),
            "{a:?}"
        );
    }

    #[test]
    fn issue_7_alive_without_an_observation_brings_nothing_back_up() {
        let mut m = three();
        healthy(&mut m, GB);
        for _ in 0..3 {
            fail(&mut m, 2);
        }
        assert_eq!(m.backends()[2].status, Status::Down);
        assert!(alive(&mut m, 2).is_empty());
        assert_eq!(m.backends()[2].status, Status::Down, "needs an observation");
    }

    #[test]
    fn ties_go_to_the_lowest_id() {
        let mut m = three();
        healthy(&mut m, GB);
        let a = kill_primary(&mut m);
        assert!(a.contains(&Action::Promote {
            id: 1,
            old_primary: Some(0)
        }));
    }

    #[test]
    fn a_standby_dying_is_detached_from_routing_without_any_failover() {
        let mut m = three();
        healthy(&mut m, GB);
        let mut all = Vec::new();
        for _ in 0..3 {
            all.extend(fail(&mut m, 1));
        }
        assert_eq!(all, vec![Action::Publish]);
        assert_eq!(statuses(&m), vec![Status::Up, Status::Down, Status::Up]);
        assert_eq!(m.primary(), Some(0));
        // It comes back reachable but not yet streaming: still down.
        assert!(ok(&mut m, 1, Observation::standby(1, GB, None)).is_empty());
        assert_eq!(m.backends()[1].status, Status::Down);
        // Streaming again: up.
        assert_eq!(
            ok(&mut m, 1, Observation::standby(1, GB, Some(5000))),
            vec![Action::Publish]
        );
        assert_eq!(statuses(&m), vec![Status::Up, Status::Up, Status::Up]);
    }

    #[test]
    fn both_standbys_lagging_means_no_promotion() {
        let mut m = three();
        healthy(&mut m, GB);
        ok(&mut m, 0, Observation::primary(1, 2 * GB));
        ok(&mut m, 1, Observation::standby(1, GB, Some(5000)));
        ok(&mut m, 2, Observation::standby(1, GB + 5, Some(5000)));
        let a = kill_primary(&mut m);
        assert_eq!(
            a,
            vec![Action::Publish],
            "the primary is down, nobody promoted"
        );
        assert_eq!(m.primary(), Some(0));
        assert!(!m.failover_in_progress());
        let why = m.blocked.clone().unwrap_or_default();
        assert!(
            why.contains("pg1") && why.contains("max_lag_bytes"),
            "{why}"
        );
        // An operator may still force it.
        let (_, a) = m.promote(2, true).unwrap();
        assert!(a.contains(&Action::Promote {
            id: 2,
            old_primary: Some(0)
        }));
    }

    #[test]
    fn a_flapping_primary_never_fails_over() {
        let mut m = three();
        healthy(&mut m, GB);
        for _ in 0..50 {
            assert!(fail(&mut m, 0).is_empty());
            assert!(fail(&mut m, 0).is_empty());
            assert!(ok(&mut m, 0, Observation::primary(1, GB)).is_empty());
        }
        assert_eq!(m.primary(), Some(0));
        assert_eq!(m.generation(), 1);
    }

    #[test]
    fn two_backends_claiming_primary_at_start_up() {
        // Different timelines: the newer wins, the older is fenced.
        let mut m = three();
        ok(&mut m, 0, Observation::primary(1, GB));
        ok(&mut m, 1, Observation::primary(2, GB));
        ok(&mut m, 2, Observation::standby(2, GB, Some(5001)));
        assert_eq!(m.primary(), Some(1));
        assert_eq!(statuses(&m), vec![Status::Detached, Status::Up, Status::Up]);

        // Same timeline, nothing recorded: nobody is trusted.
        let mut m = three();
        ok(&mut m, 0, Observation::primary(1, GB));
        ok(&mut m, 1, Observation::primary(1, GB));
        ok(&mut m, 2, Observation::standby(1, GB, Some(5000)));
        assert_eq!(m.primary(), None);
        assert_eq!(m.backends()[0].status, Status::Detached);
        assert_eq!(m.backends()[1].status, Status::Detached);

        // Same timeline, pg1 recorded as primary: pg1.
        let persisted = Persisted {
            generation: 7,
            primary: Some("pg1".into()),
            detached: vec![],
        };
        let mut m = Machine::new(
            vec![spec("pg0", 5000), spec("pg1", 5001), spec("pg2", 5002)],
            Limits {
                max_retries: 2,
                max_lag_bytes: 1 << 24,
            },
            &persisted,
        );
        ok(&mut m, 0, Observation::primary(1, GB));
        ok(&mut m, 1, Observation::primary(1, GB));
        ok(&mut m, 2, Observation::standby(1, GB, Some(5001)));
        assert_eq!(m.primary(), Some(1));
        assert_eq!(m.generation(), 8);
        assert_eq!(statuses(&m), vec![Status::Detached, Status::Up, Status::Up]);
    }

    #[test]
    fn a_standby_promoted_behind_our_back_is_fenced() {
        let mut m = three();
        healthy(&mut m, GB);
        let a = ok(&mut m, 2, Observation::primary(2, GB));
        assert_eq!(a, vec![Action::Publish]);
        assert_eq!(m.backends()[2].status, Status::Detached);
        assert_eq!(
            m.primary(),
            Some(0),
            "the committed primary keeps the writes"
        );
    }

    #[test]
    fn the_primary_returns_after_a_failover_and_stays_detached_across_restarts() {
        let mut m = three();
        healthy(&mut m, GB);
        kill_primary(&mut m);
        m.step(Event::Promoted {
            id: 1,
            result: Ok(2),
        });
        let p = m.persisted();
        assert_eq!(p.primary.as_deref(), Some("pg1"));
        assert!(p.detached.iter().any(|(n, _)| n == "pg0"));
        // The monitor restarts: pg0 is back as a primary on the old timeline.
        let mut m = Machine::new(
            vec![spec("pg0", 5000), spec("pg1", 5001), spec("pg2", 5002)],
            Limits {
                max_retries: 2,
                max_lag_bytes: 1 << 24,
            },
            &p,
        );
        ok(&mut m, 0, Observation::primary(1, GB));
        ok(&mut m, 1, Observation::primary(2, GB + 10));
        ok(&mut m, 2, Observation::standby(2, GB + 10, Some(5001)));
        assert_eq!(m.primary(), Some(1));
        assert_eq!(statuses(&m), vec![Status::Detached, Status::Up, Status::Up]);
        assert!(m.generation() > p.generation);
    }

    #[test]
    fn a_failed_promotion_fences_that_standby_and_tries_the_next() {
        let mut m = three();
        healthy(&mut m, GB);
        ok(&mut m, 2, Observation::standby(1, GB + 1, Some(5000)));
        let a = kill_primary(&mut m);
        assert!(a.contains(&Action::Promote {
            id: 2,
            old_primary: Some(0)
        }));
        let a = m.step(Event::Promoted {
            id: 2,
            result: Err("pg_promote timed out".into()),
        });
        assert!(
            a.contains(&Action::Promote {
                id: 1,
                old_primary: Some(0)
            }),
            "{a:?}"
        );
        assert_eq!(m.backends()[2].status, Status::Detached);
        m.step(Event::Promoted {
            id: 1,
            result: Ok(2),
        });
        assert_eq!(m.primary(), Some(1));
    }

    #[test]
    fn a_standby_that_cannot_follow_is_detached_with_the_reason() {
        let mut m = three();
        healthy(&mut m, GB);
        kill_primary(&mut m);
        m.step(Event::Promoted {
            id: 1,
            result: Ok(2),
        });
        let a = m.step(Event::Followed {
            id: 2,
            result: Err("timeline diverged".into()),
        });
        assert_eq!(a, vec![Action::Publish]);
        assert_eq!(m.backends()[2].status, Status::Detached);
        assert!(m.backends()[2].reason.contains("timeline diverged"));
    }

    #[test]
    fn standbys_are_not_marked_down_for_not_streaming_while_the_primary_is_failing() {
        let mut m = three();
        healthy(&mut m, GB);
        // The primary dies; standbys notice first (not streaming) but the
        // primary has failed a check, so they are not judged.
        fail(&mut m, 0);
        for _ in 0..5 {
            ok(&mut m, 1, Observation::standby(1, GB, None));
            ok(&mut m, 2, Observation::standby(1, GB, None));
        }
        assert_eq!(statuses(&m), vec![Status::Up, Status::Up, Status::Up]);
        let a = fail(&mut m, 0)
            .into_iter()
            .chain(fail(&mut m, 0))
            .collect::<Vec<_>>();
        assert!(
            a.contains(&Action::Promote {
                id: 1,
                old_primary: Some(0)
            }),
            "{a:?}"
        );
    }

    #[test]
    fn allow_failover_false_is_never_promoted() {
        let mut m = Machine::new(
            vec![
                spec("pg0", 5000),
                BackendSpec {
                    allow_failover: false,
                    ..spec("pg1", 5001)
                },
                spec("pg2", 5002),
            ],
            Limits {
                max_retries: 0,
                max_lag_bytes: 1 << 24,
            },
            &Persisted::default(),
        );
        healthy(&mut m, GB);
        ok(&mut m, 1, Observation::standby(1, GB + 100, Some(5000)));
        let a = fail(&mut m, 0);
        assert!(
            a.contains(&Action::Promote {
                id: 2,
                old_primary: Some(0)
            }),
            "{a:?}"
        );
    }

    #[test]
    fn operator_detach_and_attach() {
        let mut m = three();
        healthy(&mut m, GB);
        let (_, a) = m.detach(2).unwrap();
        assert_eq!(a, vec![Action::Publish]);
        assert_eq!(m.backends()[2].status, Status::Detached);
        // Checks never re-attach a detached backend.
        assert!(ok(&mut m, 2, Observation::standby(1, GB, Some(5000))).is_empty());
        assert_eq!(m.backends()[2].status, Status::Detached);
        let (_, a) = m.attach(2).unwrap();
        assert_eq!(a, vec![Action::Publish]);
        assert_eq!(m.backends()[2].status, Status::Up);
        // Detaching the primary fails over.
        let (_, a) = m.detach(0).unwrap();
        assert!(
            a.contains(&Action::Promote {
                id: 1,
                old_primary: Some(0)
            }),
            "{a:?}"
        );
    }

    #[test]
    fn attach_refuses_what_is_unsafe() {
        let mut m = three();
        healthy(&mut m, GB);
        m.detach(2).unwrap();
        ok(&mut m, 2, Observation::standby(1, GB, None));
        assert!(m.attach(2).unwrap_err().contains("does not stream"));
        ok(&mut m, 2, Observation::primary(2, GB));
        assert!(
            m.attach(2)
                .unwrap_err()
                .contains("two backends take writes")
        );
        fail(&mut m, 2);
        assert!(m.attach(2).unwrap_err().contains("not reachable"));
    }

    #[test]
    fn switchover_fences_the_old_primary_before_promoting() {
        let mut m = three();
        healthy(&mut m, GB);
        let (_, a) = m.promote(2, false).unwrap();
        assert_eq!(
            a,
            vec![
                Action::Publish,
                Action::Promote {
                    id: 2,
                    old_primary: Some(0)
                }
            ]
        );
        assert_eq!(m.backends()[0].status, Status::Detached);
        assert!(m.promote(1, false).is_err(), "one at a time");
        m.step(Event::Promoted {
            id: 2,
            result: Ok(2),
        });
        assert_eq!(m.primary(), Some(2));
        // pg0 still runs as a primary: it stays fenced.
        ok(&mut m, 0, Observation::primary(1, GB));
        assert_eq!(m.backends()[0].status, Status::Detached);
    }

    fn three_quorum() -> Machine {
        three().with_decider(Decider::Quorum)
    }

    #[test]
    fn with_a_quorum_deciding_local_failures_alone_never_fail_over() {
        let mut m = three_quorum();
        healthy(&mut m, GB);
        for _ in 0..10 {
            assert!(fail(&mut m, 0).is_empty(), "no local decision");
        }
        assert_eq!(statuses(&m), vec![Status::Up, Status::Up, Status::Up]);
        // One other node agrees: a quorum sees pg0 down.
        let a = m.step(Event::QuorumDown(vec![0]));
        assert_eq!(
            a,
            vec![
                Action::Publish,
                Action::Promote {
                    id: 1,
                    old_primary: Some(0)
                }
            ]
        );
        assert_eq!(m.backends()[0].status, Status::Down);
    }

    #[test]
    fn with_a_quorum_deciding_a_backend_comes_back_only_when_the_quorum_lets_go() {
        let mut m = three_quorum();
        healthy(&mut m, GB);
        m.step(Event::QuorumDown(vec![2]));
        assert_eq!(m.backends()[2].status, Status::Down);
        // This node reaches it fine, but the quorum still says down.
        assert!(ok(&mut m, 2, Observation::standby(1, GB, Some(5000))).is_empty());
        assert_eq!(m.backends()[2].status, Status::Down);
        m.step(Event::QuorumDown(vec![]));
        assert_eq!(
            ok(&mut m, 2, Observation::standby(1, GB, Some(5000))),
            vec![Action::Publish]
        );
        assert_eq!(m.backends()[2].status, Status::Up);
    }

    #[test]
    fn with_a_quorum_deciding_a_new_leader_unable_to_reach_the_primary_keeps_it() {
        // The leader's monitor restarts from the committed record and cannot
        // reach pg0 itself; the other nodes can.
        let persisted = Persisted {
            generation: 3,
            primary: Some("pg0".into()),
            detached: vec![],
        };
        let mut m = Machine::new(
            vec![spec("pg0", 5000), spec("pg1", 5001), spec("pg2", 5002)],
            Limits {
                max_retries: 2,
                max_lag_bytes: 1 << 24,
            },
            &persisted,
        )
        .with_decider(Decider::Quorum);
        for _ in 0..3 {
            fail(&mut m, 0);
        }
        ok(&mut m, 1, Observation::standby(1, GB, Some(5000)));
        let a = ok(&mut m, 2, Observation::standby(1, GB, Some(5000)));
        assert_eq!(a, vec![Action::Publish]);
        assert_eq!(m.primary(), Some(0));
        assert_eq!(m.backends()[0].status, Status::Up);
        assert!(!m.failover_in_progress());
    }

    #[test]
    fn no_primary_at_start_up_waits_instead_of_promoting() {
        let mut m = three();
        for _ in 0..3 {
            fail(&mut m, 0);
        }
        ok(&mut m, 1, Observation::standby(1, GB, None));
        let a = ok(&mut m, 2, Observation::standby(1, GB, None));
        assert_eq!(a, vec![Action::Publish]);
        assert_eq!(m.primary(), None);
        assert!(!m.failover_in_progress());
        // The primary comes up: adopted.
        let a = ok(&mut m, 0, Observation::primary(1, GB));
        assert_eq!(a, vec![Action::Publish]);
        assert_eq!(m.primary(), Some(0));
    }

    #[test]
    fn generations_only_grow() {
        let mut m = three();
        let mut last = m.generation();
        let script: Vec<Event> = vec![
            Event::Checked {
                id: 0,
                at_ms: 0,
                result: Ok(Observation::primary(1, GB)),
            },
            Event::Checked {
                id: 1,
                at_ms: 0,
                result: Ok(Observation::standby(1, GB, Some(5000))),
            },
            Event::Checked {
                id: 2,
                at_ms: 0,
                result: Ok(Observation::standby(1, GB, Some(5000))),
            },
            Event::Checked {
                id: 0,
                at_ms: 0,
                result: Err("x".into()),
            },
            Event::Checked {
                id: 0,
                at_ms: 0,
                result: Err("x".into()),
            },
            Event::Checked {
                id: 0,
                at_ms: 0,
                result: Err("x".into()),
            },
            Event::Promoted {
                id: 1,
                result: Ok(2),
            },
            Event::Followed {
                id: 2,
                result: Ok(()),
            },
            Event::Checked {
                id: 2,
                at_ms: 0,
                result: Ok(Observation::standby(2, GB, Some(5001))),
            },
        ];
        for e in script {
            let a = m.step(e);
            assert!(m.generation() >= last);
            assert_eq!(a.contains(&Action::Publish), m.generation() > last);
            last = m.generation();
        }
    }
}
