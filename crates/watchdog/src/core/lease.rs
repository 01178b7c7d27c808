//! The proxies' lease ([`crate::fence`], `pgwarden_proto::lease`) as this
//! node takes part in it: what it grants while it leads (only shortly
//! after a quorum confirmed its lead, for the generation it applied), its
//! own proxies' fence (renewed by itself while it may grant, else by its
//! leader's grants), and whom it asks while it follows.

use pgwarden_proto::lease::{GRANT_CONTACT, PROXY_LEASE};

use super::output::{LeaseAsk, Output};
use crate::WatchdogNode;
use crate::fence::{Fence, Grantable, Granted};

/// The leader renews its own lease when less than the lease minus this
/// is left (ms): in steps, not at every turn, as each change of the status
/// goes to every watcher.
const RENEW_STEP_MS: u64 = 50;

/// This node's side of the proxies' lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ProxyLease {
    fence: Fence,
    grantable: Option<Grantable>,
    ask: Option<LeaseAsk>,
}

impl ProxyLease {
    /// A grant came back: it counts if it is from the leader this node
    /// follows, in its term, for the generation this node has applied.
    pub(super) fn granted(&mut self, node: &WatchdogNode, g: Granted) {
        if !node.is_leader() && node.leader() == Some(g.leader) && node.term() == g.term {
            self.fence.renew(
                node.record().generation,
                g.generation,
                g.asked_at,
                PROXY_LEASE,
            );
        }
    }

    /// Follows the node after its `ready`, at `now_mono` (`CLOCK_BOOTTIME`
    /// ms): what it grants and whom it asks (each output when it changed),
    /// and its own lease while it may grant.
    pub(super) fn follow<R, O>(
        &mut self,
        node: &WatchdogNode,
        now_mono: u64,
        out: &mut Vec<Output<R, O>>,
    ) {
        let generation = node.record().generation;
        let term = node.term();
        let contact_ms = u64::try_from(GRANT_CONTACT.as_millis()).unwrap_or(0);
        let grantable = node.lead_confirmed().map(|at| Grantable {
            term,
            generation,
            until: at.saturating_add(contact_ms),
        });
        if grantable != self.grantable {
            self.grantable = grantable;
            out.push(Output::Grant(grantable));
        }
        let lease_ms = u64::try_from(PROXY_LEASE.as_millis()).unwrap_or(u64::MAX);
        if Grantable::answer(grantable, term, now_mono).is_some()
            && self.fence.until(generation) < now_mono + lease_ms - RENEW_STEP_MS
        {
            self.fence
                .renew(generation, generation, now_mono, PROXY_LEASE);
        }
        // With the generation applied: a new one is asked for at once, so
        // its proxy need not wait a renewal period to route by it.
        let ask = match node.leader() {
            Some(l) if !node.is_leader() => Some((l, term, generation)),
            _ => None,
        };
        if ask != self.ask {
            self.ask = ask;
            out.push(Output::Ask(ask));
        }
    }

    /// Until when this node's proxies may route by the record of generation
    /// `applied` (1: long past).
    pub(super) fn until(&self, applied: u64) -> u64 {
        self.fence.until(applied)
    }
}
