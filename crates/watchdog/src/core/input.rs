//! What goes into the core: the cluster it belongs to ([`Setup`]), what
//! the driver read before each turn ([`Readings`]), and the [`Input`]s.

use std::collections::HashMap;

use pgwarden_proto::v1::OperatorRequest;

use crate::Message;
use crate::fence::Granted;
use crate::report::Report;
use crate::state::Generation;

/// What the core knows of the cluster, from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    /// Every member's address; the Raft id of `members[i]` is `i + 1`.
    pub members: Vec<String>,
    /// `watchdog.delegate_ip`, shown in the status (empty: none).
    pub delegate_ip: String,
}

/// What the driver read from the clocks and the other tasks, given before
/// each input or tick ([`Core::read`](super::Core::read)). Values, not decisions: the core
/// only compares them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readings {
    /// `CLOCK_BOOTTIME` ms ([`pgwarden_proto::lease::monotonic_ms`]): the
    /// proxies' leases count on it, in every process of the host.
    pub mono_ms: u64,
    /// The wall clock (unix ms), for the last-seen times shown only.
    pub wall_ms: i64,
    /// Whether the delegate-IP task holds the IP now.
    pub holding: bool,
    /// The newest generation this node's proxy said it routes by.
    pub own_routing: u64,
    /// Per follower, the newest generation its proxy routes by (from its
    /// lease asks).
    pub routes: HashMap<u64, u64>,
}

/// Input to the core; `R` is where a proposal's answer goes, `O` where an
/// operator's.
#[derive(Debug)]
pub enum Input<R, O> {
    /// Raft messages from a peer.
    Peer {
        /// The (authenticated) sender.
        from: u64,
        /// Its messages.
        messages: Vec<Message>,
    },
    /// A follower forwarded its report to this node as leader.
    Forwarded {
        /// The reporting node.
        from: u64,
        /// What it reports.
        report: Report,
        /// The Raft term the follower addressed this node as leader in
        /// (`None` from a watchdog of an older version, which does not say).
        term: Option<u64>,
        /// Where the answer goes.
        reply: R,
    },
    /// A follower forwarded an operator's request for this node's monitor.
    Operator {
        /// What the operator asked.
        request: OperatorRequest,
        /// The Raft term the follower addressed this node as leader in.
        term: u64,
        /// Where the monitor's answer goes.
        reply: O,
    },
    /// The leader granted this node's proxies a lease.
    Granted(Granted),
    /// A proxy (this node's, or a follower's) routes by a newer generation:
    /// the status shows it (from [`Readings`]).
    ProxyRouting,
    /// Delivery to a peer failed.
    Unreachable(u64),
    /// A snapshot was (or was not) delivered to a peer.
    Snapshot(u64, bool),
    /// This node's monitor reports a backend's health.
    Report {
        /// What it reports.
        report: Report,
        /// Committed, or why not.
        reply: R,
    },
    /// An operator's request this node's monitor does not decide.
    LocalOperator {
        /// What the operator asked.
        request: OperatorRequest,
        /// Where the answer goes.
        reply: O,
    },
    /// A new generation from this node's (leading) monitor.
    Propose {
        /// The generation the monitor based its change on.
        expected: u64,
        /// The new generation.
        generation: Generation,
        /// Committed, or why not.
        reply: R,
    },
    /// The last [`Output::Probe`](super::Output::Probe) ended: whether the monitor answered.
    Probed(bool),
    /// The daemon is asked to stop.
    Shutdown,
}
