//! The watchdog's decisions, as pure code: no tokio, no sockets, no clock
//! (time is counted in [`TICK`]s).
//!
//! The driver ([`crate::runtime`]) owns one [`Core`]: it tells it what the
//! clocks and the other tasks read ([`Core::read`]), feeds it every peer
//! message, API request and monitor probe result as an [`Input`], calls
//! [`Core::tick`] every [`TICK`], and performs the [`Output`]s in order.
//! The core owns the [`WatchdogNode`] and decides:
//! - **proposals** (`proposals.rs`): a proposed change is answered once its
//!   entry is applied, when the lead is lost first, or when it was not
//!   committed within [`PROPOSAL_TICKS`];
//! - **reports** (a backend's health, this node's monitor): proposed here
//!   while this node leads, forwarded to the leader otherwise, refused while
//!   there is none; a forwarded one only in the leader's term it was sent to;
//! - **monitor liveness** (`monitor.rs`): this node's monitor is probed every
//!   [`MONITOR_PROBE_TICKS`], counts as gone once it has not answered for
//!   [`MONITOR_GRACE_TICKS`], and its state is reported (again every
//!   [`MONITOR_RETRY_TICKS`]) while the record disagrees;
//! - **handover** (`transfer.rs`): a leader whose monitor is gone hands the
//!   lead to a node heard from lately whose monitor answers, and so does a
//!   leader shutting down (waiting up to [`LEAVE_TICKS`] for the lead to
//!   move);
//! - **the proxies' lease** (`lease.rs`): what this node grants while it
//!   leads, what it asks while it follows, and its own fence;
//! - **what the API shows** (`status.rs`): members, quorum (a follower has
//!   one while it heard from its leader lately), the delegate IP's holder;
//! - **operator requests**: a follower's go to the leader's watchdog, a
//!   leader's (in the term they were sent to) to its monitor.

use crate::WatchdogNode;
use crate::report::Report;
use crate::state::Command;

mod input;
mod lease;
mod monitor;
mod output;
mod proposals;
mod status;
mod ticks;
mod transfer;

#[cfg(test)]
mod tests;

pub use input::{Input, Readings, Setup};
pub use output::{LeaseAsk, Output, Refusal};
pub use status::proxies_on;
pub use ticks::{
    FRESH_TICKS, LEAVE_TICKS, MONITOR_GRACE, MONITOR_GRACE_TICKS, MONITOR_PROBE,
    MONITOR_PROBE_TICKS, MONITOR_RETRY_TICKS, PROPOSAL_TICKS, PROPOSAL_TIMEOUT, TICK,
};

use lease::ProxyLease;
use monitor::MonitorWatch;
use proposals::Proposals;
use status::{Seen, status};
use transfer::Handover;

/// The watchdog's decisions. See the module docs.
pub struct Core<R, O> {
    setup: Setup,
    node: WatchdogNode,
    /// Ticks so far.
    now: u64,
    readings: Readings,
    proposals: Proposals<R>,
    monitor: MonitorWatch,
    handover: Handover,
    seen: Seen,
    lease: ProxyLease,
    /// The last [`Output::VipConfirmed`] given.
    vip_confirmed: Option<u64>,
    /// Runs the node's `ready` (which writes and fsyncs): the daemon moves
    /// it off its async worker.
    blocking: fn(&mut dyn FnMut()),
    _operator: std::marker::PhantomData<fn(O)>,
}

impl<R, O> std::fmt::Debug for Core<R, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("node", &self.node)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl<R, O> Core<R, O> {
    /// A core around `node`, its monitor not known yet (gone after
    /// [`MONITOR_GRACE_TICKS`] without an answer).
    pub fn new(setup: Setup, node: WatchdogNode) -> Self {
        Core {
            setup,
            node,
            now: 0,
            readings: Readings::default(),
            proposals: Proposals::default(),
            monitor: MonitorWatch::new(0),
            handover: Handover::default(),
            seen: Seen::default(),
            lease: ProxyLease::default(),
            vip_confirmed: None,
            blocking: |f| f(),
            _operator: std::marker::PhantomData,
        }
    }

    /// Runs the node's durable writes through `blocking` (e.g. tokio's
    /// `block_in_place`) instead of in place.
    #[must_use]
    pub fn with_blocking(mut self, blocking: fn(&mut dyn FnMut())) -> Self {
        self.blocking = blocking;
        self
    }

    /// What the clocks and the other tasks read now: used by the next
    /// input or tick.
    pub fn read(&mut self, readings: Readings) {
        self.readings = readings;
    }

    /// The node, for inspection.
    pub fn node(&self) -> &WatchdogNode {
        &self.node
    }

    /// Advances time by one [`TICK`]: Raft's timers, a lead confirmation at
    /// [`Readings::mono_ms`], and the monitor probe when it is due.
    pub fn tick(&mut self) -> Vec<Output<R, O>> {
        self.now += 1;
        self.node.tick();
        // The lead confirmed by a quorum, from now: leases may be granted
        // only shortly after (see crate::fence).
        self.node.confirm_lead(self.readings.mono_ms);
        let mut out = Vec::new();
        if self.monitor.probe_due(self.now) {
            out.push(Output::Probe);
        }
        self.turn(&mut out);
        out
    }

    /// Feeds one input; returns what to do, in order.
    pub fn step(&mut self, input: Input<R, O>) -> Vec<Output<R, O>> {
        let mut out = Vec::new();
        match input {
            Input::Peer { from, messages } => {
                self.seen.heard(from, self.now, self.readings.wall_ms);
                for m in messages {
                    if let Err(e) = self.node.step(m) {
                        tracing::debug!(from, error = %e, "peer message refused");
                    }
                }
            }
            Input::Forwarded {
                from,
                report,
                term,
                reply,
            } => {
                // A report is for the leader and term it was sent to:
                // captured, it cannot be committed again by a later leader.
                if term.is_some_and(|t| !self.node.is_leader() || self.node.term() != t) {
                    out.push(Output::Answer {
                        to: reply,
                        result: Err("the lead moved while the report was on its way; retry".into()),
                    });
                } else {
                    let cmd = report.command(from);
                    self.proposals
                        .propose(&mut self.node, cmd, Some(reply), self.now, &mut out);
                }
            }
            Input::Operator {
                request,
                term,
                reply,
            } => {
                if self.node.is_leader() && self.node.term() == term {
                    out.push(Output::AskMonitor { request, reply });
                } else {
                    out.push(Output::Refuse {
                        to: reply,
                        why: Refusal::LeadMoved,
                    });
                }
            }
            Input::Granted(g) => self.lease.granted(&self.node, g),
            Input::ProxyRouting => {}
            Input::Unreachable(peer) => self.node.report_unreachable(peer),
            Input::Snapshot(peer, ok) => self.node.report_snapshot(peer, ok),
            Input::Report { report, reply } => self.submit(report, Some(reply), &mut out),
            Input::LocalOperator { request, reply } => {
                // The local monitor asks only when it does not decide: if
                // this node leads, its monitor has not caught up yet.
                let n = &self.node;
                match n.leader() {
                    _ if n.is_leader() => out.push(Output::Refuse {
                        to: reply,
                        why: Refusal::JustLeading,
                    }),
                    Some(leader) => out.push(Output::ForwardOperator {
                        leader,
                        term: n.term(),
                        request,
                        reply,
                    }),
                    None => out.push(Output::Refuse {
                        to: reply,
                        why: Refusal::NoLeader,
                    }),
                }
            }
            Input::Propose {
                expected,
                generation,
                reply,
            } => {
                let cmd = Command::Commit {
                    expected_generation: expected,
                    record: generation,
                };
                self.proposals
                    .propose(&mut self.node, cmd, Some(reply), self.now, &mut out);
            }
            Input::Probed(alive) => self.monitor.probed(self.now, alive),
            Input::Shutdown => {
                if self.handover.leave(&mut self.node, &self.seen, self.now) {
                    out.push(Output::Done);
                    return out;
                }
            }
        }
        self.turn(&mut out);
        out
    }

    /// Commits this node's `report`: proposed here when this node leads,
    /// forwarded to the leader otherwise.
    fn submit(&mut self, report: Report, reply: Option<R>, out: &mut Vec<Output<R, O>>) {
        let n = &self.node;
        if n.is_leader() {
            let cmd = report.command(n.id());
            self.proposals
                .propose(&mut self.node, cmd, reply, self.now, out);
        } else if let Some(leader) = n.leader() {
            out.push(Output::Forward {
                leader,
                term: n.term(),
                report,
                reply,
            });
        } else if let Some(to) = reply {
            out.push(Output::Answer {
                to,
                result: Err("no leader: the watchdogs have no quorum".into()),
            });
        }
    }

    /// What follows every input and tick: this node's monitor recorded as
    /// it is (a leader without one hands the lead over), then the node's
    /// work ([`Self::ready`]).
    fn turn(&mut self, out: &mut Vec<Output<R, O>>) {
        let me = self.node.id();
        let recorded_alive = !self.node.record().monitors_down.contains(&me);
        if let Some(alive) = self.monitor.report_due(self.now, recorded_alive) {
            if alive {
                tracing::info!("this node's monitor answers again");
            } else {
                tracing::warn!(grace = ?MONITOR_GRACE, "this node's monitor does not answer");
            }
            self.submit(Report::Monitor { alive }, None, out);
        }
        if self.monitor.known() == Some(false) {
            self.handover
                .monitor_gone(&mut self.node, &self.seen, self.now);
        }
        self.ready(out);
    }

    /// The node's work after every input and tick, in this order: its
    /// `ready` (durable first), the proxies' lease before any message goes
    /// out, the messages, a role change (a leader no more: its proposals
    /// are answered), the delegate IP (the guard's heartbeat, then the
    /// action), the status, then the proposers
    /// whose entries were applied (after the status, so an answered
    /// proposer reads the state it caused), the proposals out of time, and
    /// whether a node shutting down may stop.
    fn ready(&mut self, out: &mut Vec<Output<R, O>>) {
        // Making the Raft state durable writes and fsyncs files: through
        // `blocking` (off the daemon's async worker).
        let ready = if self.node.has_ready() {
            let mut result = None;
            let node = &mut self.node;
            (self.blocking)(&mut || result = Some(node.ready()));
            result.unwrap_or_else(|| self.node.ready())
        } else {
            self.node.ready()
        };
        let done = match ready {
            Ok(done) => done,
            Err(e) => {
                out.push(Output::Failed(e));
                return;
            }
        };
        // The lease, before any message goes out, before the status and
        // before any proposer hears of its commit: from here on, asks are
        // answered with the newly applied generation only.
        self.lease.follow(&self.node, self.readings.mono_ms, out);
        out.extend(done.messages.into_iter().map(Output::Send));
        if let Some(change) = done.role_changed {
            tracing::info!(role = ?change.role, term = change.term, leader = ?change.leader, "watchdog role changed");
            if !self.node.is_leader() {
                self.proposals.lead_lost(out);
            }
        }
        // The guard's heartbeat before the acquisition it guards, so the
        // delegate-IP task finds it when it brings the IP up.
        let confirmed = self
            .node
            .holds_vip()
            .then(|| self.node.confirmation())
            .flatten();
        if confirmed != self.vip_confirmed {
            self.vip_confirmed = confirmed;
            out.push(Output::VipConfirmed(confirmed));
        }
        if let Some(v) = done.vip {
            out.push(Output::Vip(v));
        }
        let generation = self.node.record().generation;
        let shown = status(
            &self.node,
            &self.setup,
            &self.seen,
            self.now,
            &self.readings,
            self.lease.until(generation),
        );
        out.push(Output::Status(Box::new(shown)));
        for (index, cmd, applied) in &done.applied {
            self.proposals.applied(*index, cmd, applied, out);
        }
        self.proposals.expire(self.now, out);
        if self.handover.left(&self.node, self.now) {
            out.push(Output::Done);
        }
    }
}
