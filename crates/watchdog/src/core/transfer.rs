//! Handing the lead over: a leader whose monitor is gone (only the
//! leader's monitor decides failovers) tries every [`MONITOR_RETRY_TICKS`],
//! and a leader shutting down tries once and waits up to [`LEAVE_TICKS`]
//! for the lead to move. Both hand it to [`transferee`].

use super::status::Seen;
use super::ticks::{LEAVE_TICKS, MONITOR_RETRY_TICKS};
use crate::WatchdogNode;

/// Where a leader hands the lead: the lowest-id voter heard from lately
/// ([`Seen::fresh`]) whose monitor is not recorded gone.
pub(super) fn transferee(node: &WatchdogNode, seen: &Seen, now: u64) -> Option<u64> {
    let me = node.id();
    node.voters()
        .iter()
        .copied()
        .find(|&v| v != me && !node.record().monitors_down.contains(&v) && seen.fresh(v, now))
}

/// When the lead was last handed over for a gone monitor, and until when
/// a leader shutting down waits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Handover {
    /// The tick of the last try for a gone monitor.
    tried: Option<u64>,
    /// Shutting down: the tick until which the transfer may take.
    leaving: Option<u64>,
}

impl Handover {
    /// This node's monitor is gone at `now`: as leader, it hands the lead
    /// to a node whose monitor answers, if one is reachable and no try was
    /// made lately.
    pub(super) fn monitor_gone(&mut self, node: &mut WatchdogNode, seen: &Seen, now: u64) {
        if !node.is_leader() || self.tried.is_some_and(|t| now - t < MONITOR_RETRY_TICKS) {
            return;
        }
        self.tried = Some(now);
        match transferee(node, seen, now) {
            Some(to) => {
                tracing::warn!(
                    to,
                    "this node's monitor is gone and only the leader's monitor decides failovers: handing the lead to a node whose monitor answers"
                );
                node.transfer_leader(to);
            }
            None => tracing::warn!(
                "this node's monitor is gone, and no reachable node has one that answers: keeping the lead; no failover can be decided"
            ),
        }
    }

    /// Shutting down at `now`: a leader hands the lead over first (the
    /// others then need no election timeout, and the proxies' leases need
    /// not run out on the way). True when there is nothing to wait for.
    pub(super) fn leave(&mut self, node: &mut WatchdogNode, seen: &Seen, now: u64) -> bool {
        if self.leaving.is_some() {
            return false;
        }
        match node
            .is_leader()
            .then(|| transferee(node, seen, now))
            .flatten()
        {
            Some(to) => {
                tracing::info!(to, "shutting down: handing the lead over first");
                node.transfer_leader(to);
                self.leaving = Some(now + LEAVE_TICKS);
                false
            }
            None => true,
        }
    }

    /// Whether a node shutting down may stop now: its lead moved, or the
    /// wait is over.
    pub(super) fn left(&self, node: &WatchdogNode, now: u64) -> bool {
        self.leaving
            .is_some_and(|deadline| !node.is_leader() || now >= deadline)
    }
}
