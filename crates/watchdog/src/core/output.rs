//! What comes out of the core: the [`Output`]s the driver performs in
//! order, and why an operator's request is refused ([`Refusal`]).

use pgwarden_proto::v1::{OperatorRequest, WatchdogStatus};

use crate::fence::Grantable;
use crate::report::Report;
use crate::{Error, Message, VipAction};

/// A follower's lease ask: the leader, its term, and the generation this
/// node applied.
pub type LeaseAsk = (u64, u64, u64);

/// Why an operator's request is refused here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This node leads, but its monitor does not decide yet.
    JustLeading,
    /// No leader is known: nothing can be changed.
    NoLeader,
    /// A forwarded request reached a node that no longer leads in its term.
    LeadMoved,
}

impl Refusal {
    /// What the operator is told.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::JustLeading => {
                "this node's watchdog has just become the leader and its monitor does not decide yet: retry in a moment"
            }
            Refusal::NoLeader => {
                "no leader: the watchdogs have no quorum, so nothing can be changed now"
            }
            Refusal::LeadMoved => "the lead moved while the request was on its way; retry",
        }
    }
}

/// Output of the core, performed by the driver in order.
#[derive(Debug)]
pub enum Output<R, O> {
    /// What this node grants lease asks from now on (it changed).
    Grant(Option<Grantable>),
    /// Whom this node asks for its lease from now on (it changed).
    Ask(Option<LeaseAsk>),
    /// Send a Raft message to peer `to`; on failure, give
    /// [`Input::Unreachable`](super::Input::Unreachable).
    Send(Message),
    /// Acquire or release the delegate IP.
    Vip(VipAction),
    /// While the lease holds the delegate IP, the time (`CLOCK_BOOTTIME`
    /// ms) a quorum last confirmed this node's lead
    /// ([`WatchdogNode::confirmation`](crate::WatchdogNode::confirmation));
    /// `None` while it does not hold. Given when it changed, which while
    /// holding is about every tick: the delegate-IP guard's heartbeat
    /// ([`crate::vip`]), which stops when this loop stalls.
    VipConfirmed(Option<u64>),
    /// What the API shows from now on.
    Status(Box<WatchdogStatus>),
    /// Answer a proposer (`None`: nobody waits for it).
    Answer {
        /// Where the answer goes.
        to: R,
        /// Committed, or why not.
        result: Result<(), String>,
    },
    /// Forward this node's report to the leader, for that leader and term
    /// only; its answer goes to `reply` (if any).
    Forward {
        /// The leader's id.
        leader: u64,
        /// Its term.
        term: u64,
        /// The report.
        report: Report,
        /// Where its answer goes.
        reply: Option<R>,
    },
    /// Forward an operator's request to the leader, for that leader and
    /// term only.
    ForwardOperator {
        /// The leader's id.
        leader: u64,
        /// Its term.
        term: u64,
        /// The request.
        request: OperatorRequest,
        /// Where the answer goes.
        reply: O,
    },
    /// Hand a forwarded operator's request to this node's monitor.
    AskMonitor {
        /// The request.
        request: OperatorRequest,
        /// Where the monitor's answer goes.
        reply: O,
    },
    /// Refuse an operator's request.
    Refuse {
        /// Where the answer goes.
        to: O,
        /// Why.
        why: Refusal,
    },
    /// Ask this node's monitor whether it answers; give the result as
    /// [`Input::Probed`](super::Input::Probed).
    Probe,
    /// The daemon may stop now (shutting down, the lead handed over or
    /// given up on).
    Done,
    /// The Raft state could not be made durable: the node must stop.
    Failed(Error),
}
