//! The handshake phase: connections that have not logged in yet.
//!
//! A connection counts against `max_client_connections` only once it has
//! logged in. Before that it is in the handshake phase, which has bounds of
//! its own, so sockets that connect and say nothing (or stall half-way
//! through authentication) cannot take the place of real clients:
//!
//! - the startup packet must arrive within [`STARTUP_PACKET_TIMEOUT`] (or
//!   `client_login_timeout`, when shorter), and authentication must finish
//!   within `client_login_timeout`;
//! - at most [`Handshakes::limit`] connections are in the phase at once;
//!   one more pushes out the *oldest* (which gets 53300), never the
//!   newcomer: a flood of idle sockets delays a real client by nothing, and
//!   the oldest one is the likeliest to be stale.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long a new connection may take to send its startup packet (a client
/// sends it at once; PostgreSQL's own bound is `authentication_timeout`).
pub const STARTUP_PACKET_TIMEOUT: Duration = Duration::from_secs(5);

/// The connections in the handshake phase, oldest first.
#[derive(Debug)]
pub struct Handshakes {
    limit: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    pending: BTreeMap<u64, CancellationToken>,
}

/// One connection's place in the handshake phase; leaves it on drop.
#[derive(Debug)]
pub struct Handshake {
    handshakes: Arc<Handshakes>,
    id: u64,
    pushed_out: CancellationToken,
}

impl Handshakes {
    /// Room for `limit` connections at once (at least one).
    pub fn new(limit: usize) -> Arc<Handshakes> {
        Arc::new(Handshakes {
            limit: limit.max(1),
            state: Mutex::new(State::default()),
        })
    }

    /// The bound for a proxy taking `max_client_connections` clients: twice
    /// that, and never under 1,024, so a connection storm of legitimate
    /// clients is not pushed out by itself.
    pub fn limit_for(max_client_connections: usize) -> usize {
        max_client_connections.saturating_mul(2).max(1024)
    }

    /// How many connections may be in the phase at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How many connections are in the phase now.
    pub fn len(&self) -> usize {
        self.lock().pending.len()
    }

    /// True when no connection is in the phase.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Enters a new connection, pushing out the oldest one when the phase
    /// is full.
    pub fn enter(self: &Arc<Self>) -> Handshake {
        let mut state = self.lock();
        while state.pending.len() >= self.limit {
            let Some((_, oldest)) = state.pending.pop_first() else {
                break;
            };
            oldest.cancel();
        }
        let id = state.next;
        state.next += 1;
        let pushed_out = CancellationToken::new();
        state.pending.insert(id, pushed_out.clone());
        Handshake {
            handshakes: Arc::clone(self),
            id,
            pushed_out,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Handshake {
    /// Fires when a newer connection pushed this one out of the phase.
    pub fn pushed_out(&self) -> &CancellationToken {
        &self.pushed_out
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.handshakes.lock().pending.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_phase_pushes_out_the_oldest_and_never_the_newcomer() {
        let h = Handshakes::new(3);
        let first = h.enter();
        let second = h.enter();
        let third = h.enter();
        assert_eq!(h.len(), 3);
        let fourth = h.enter();
        assert!(first.pushed_out().is_cancelled());
        assert!(!second.pushed_out().is_cancelled());
        assert!(!fourth.pushed_out().is_cancelled());
        assert_eq!(h.len(), 3);
        // A connection that logs in leaves the phase and makes room.
        drop(third);
        let fifth = h.enter();
        assert!(!second.pushed_out().is_cancelled());
        assert!(!fifth.pushed_out().is_cancelled());
        // The pushed-out one leaving later changes nothing.
        drop(first);
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn the_bound_scales_with_max_client_connections() {
        assert_eq!(Handshakes::limit_for(10), 1024);
        assert_eq!(Handshakes::limit_for(1000), 2000);
        assert_eq!(Handshakes::new(0).limit(), 1);
    }
}
