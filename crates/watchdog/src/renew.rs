//! A follower's side of the proxies' lease (see [`crate::fence`] and
//! `pgwarden_proto::lease`): it asks the leader to renew it, relays what
//! its proxy routes by, and hands each grant to the core loop.

use std::time::Duration;

use pgwarden_proto::v1::PeerLeaseAsk;
use pgwarden_proto::v1::watchdog_peer_client::WatchdogPeerClient;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::fence::Granted;
use crate::peers::{Identity, Inbound, channel};

/// How long a lease ask may take before it counts as unanswered.
const LEASE_ASK_TIMEOUT: Duration = Duration::from_millis(300);

/// Asks the leader for this node's lease every [`pgwarden_proto::lease::RENEW`]
/// while `target` names one (its id and term, and the generation this node
/// applied: asked for again at once when it changes), and hands each grant
/// to the core loop as [`Inbound::Granted`].
pub async fn renew_lease(
    id: Identity,
    addresses: Vec<(u64, String)>,
    mut target: watch::Receiver<Option<(u64, u64, u64)>>,
    mut proxy_routing: watch::Receiver<u64>,
    events: mpsc::Sender<Inbound>,
) {
    let mut clients: std::collections::HashMap<u64, WatchdogPeerClient<Channel>> =
        std::collections::HashMap::new();
    let mut nonce = 0u64;
    let mut ticker = tokio::time::interval(pgwarden_proto::lease::RENEW);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            r = target.changed() => if r.is_err() { return },
            // The local proxy moved on: the leader hears of it at once.
            r = proxy_routing.changed() => if r.is_err() { return },
        }
        let proxy_generation = *proxy_routing.borrow_and_update();
        let Some((leader, term, _)) = *target.borrow_and_update() else {
            continue;
        };
        let client = match clients.entry(leader) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let Some((_, address)) = addresses.iter().find(|(i, _)| *i == leader) else {
                    continue;
                };
                match channel(address, id.tls.clone()) {
                    Ok(c) => v.insert(WatchdogPeerClient::new(c)),
                    Err(e) => {
                        tracing::debug!(leader, "{e}");
                        continue;
                    }
                }
            }
        };
        nonce += 1;
        let mut ask = PeerLeaseAsk {
            from: id.me,
            to: leader,
            members_hash: id.members_hash,
            term,
            epoch: id.epoch,
            nonce,
            mac: Vec::new(),
            proxy_generation,
        };
        id.signer.sign_lease_ask(&mut ask);
        // Taken before the ask leaves: the lease cannot count from later.
        let asked_at = pgwarden_proto::lease::monotonic_ms();
        let answer = tokio::time::timeout(LEASE_ASK_TIMEOUT, client.lease(ask.clone())).await;
        let grant = match answer {
            Ok(Ok(g)) => g.into_inner(),
            Ok(Err(e)) => {
                tracing::debug!(leader, error = %e.message(), "lease ask refused");
                continue;
            }
            Err(_) => {
                // A connection that does not answer may never again (the
                // leader's side of it wedged while this node was frozen):
                // the next ask dials afresh.
                tracing::debug!(leader, "lease ask not answered in time");
                clients.remove(&leader);
                continue;
            }
        };
        if !id.signer.verify_lease_grant(&ask, &grant) {
            tracing::warn!(leader, "dropping a lease grant with a bad MAC");
            continue;
        }
        if !grant.granted || grant.term != term {
            continue;
        }
        let granted = Granted {
            leader,
            term,
            generation: grant.generation,
            asked_at,
        };
        if events.send(Inbound::Granted(granted)).await.is_err() {
            return;
        }
    }
}
