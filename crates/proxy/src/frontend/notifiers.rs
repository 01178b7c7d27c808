//! Which client a server backend last ran a transaction for, by the
//! backend's pid: in transaction mode a NOTIFY reaches its listeners with
//! the pid of the server that ran the notifying transaction, and the proxy
//! gives them the pid that transaction's client was told instead (its
//! BackendKeyData), as a direct connection would.
//!
//! A listener is pinned to its server, so its own notifications (the ones
//! clients most often check the pid of, to skip them) always carry its own
//! pid. Another client's carry the pid of the client whose transaction last
//! ran on that server: the notifying one, unless the server was handed to a
//! third client between the commit and the notification's arrival here. A
//! notification from a server this proxy never gave a client (a direct
//! connection, another node's proxy) keeps the server's pid.
//!
//! A fixed table of slots, one atomic word each, written at every checkout
//! and read only for a notification: no lock, no allocation, nothing to
//! remove when a connection closes (a slot another server takes over simply
//! stops matching the old one's pid).

use std::sync::atomic::{AtomicU64, Ordering};

/// Slots in the table; servers whose slots collide forget each other's
/// clients (their notifications then keep the server's pid).
const SLOTS: usize = 4096;

/// Server pids and backends past these are not recorded (Linux's pids
/// stay below 2^22).
const PID_BITS: u32 = 24;
const BACKENDS: usize = 256;

/// The table: per slot, the server (its backend and pid) in the high word
/// and the client's pid in the low one.
#[derive(Debug)]
pub struct Notifiers {
    slots: Box<[AtomicU64]>,
}

impl Default for Notifiers {
    fn default() -> Self {
        Notifiers {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Notifiers {
    /// Records that the server with pid `server_pid` on `backend` now runs
    /// a transaction of the client told `client_pid`.
    pub fn ran(&self, backend: usize, server_pid: i32, client_pid: i32) {
        if let Some((slot, server)) = self.slot(backend, server_pid) {
            let word = (u64::from(server) << 32) | u64::from(client_pid.cast_unsigned());
            // A plain store when it changed: the common case of one client
            // on one server writes nothing.
            if slot.load(Ordering::Relaxed) != word {
                slot.store(word, Ordering::Relaxed);
            }
        }
    }

    /// The pid of the client whose transaction last ran on that server, if
    /// it is known.
    pub fn client_of(&self, backend: usize, server_pid: i32) -> Option<i32> {
        let (slot, server) = self.slot(backend, server_pid)?;
        let word = slot.load(Ordering::Relaxed);
        let client = (word as u32).cast_signed();
        ((word >> 32) as u32 == server && client != 0).then_some(client)
    }

    /// The slot of a server, and the server's own word (never 0).
    fn slot(&self, backend: usize, server_pid: i32) -> Option<(&AtomicU64, u32)> {
        let pid = u32::try_from(server_pid).ok()?;
        if pid == 0 || pid >= 1 << PID_BITS || backend >= BACKENDS {
            return None;
        }
        let backend = backend as u32;
        let server = (backend << PID_BITS) | pid;
        // Pids come roughly in sequence: the low bits spread them already;
        // the backend moves its servers to other slots.
        let at = (pid as usize).wrapping_add((backend as usize).wrapping_mul(977)) % SLOTS;
        self.slots.get(at).map(|slot| (slot, server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_names_the_client_of_its_last_transaction() {
        let n = Notifiers::default();
        assert_eq!(n.client_of(0, 4242), None);
        n.ran(0, 4242, 1_000_001);
        assert_eq!(n.client_of(0, 4242), Some(1_000_001));
        n.ran(0, 4242, 1_000_002);
        assert_eq!(n.client_of(0, 4242), Some(1_000_002));
        // The same pid on another backend is another server.
        assert_eq!(n.client_of(1, 4242), None);
        n.ran(1, 4242, 7);
        assert_eq!(n.client_of(0, 4242), Some(1_000_002));
        assert_eq!(n.client_of(1, 4242), Some(7));
    }

    #[test]
    fn a_server_that_took_over_a_slot_does_not_answer_for_the_one_before() {
        let n = Notifiers::default();
        n.ran(0, 100, 5);
        // Same slot, another pid.
        let other = 100 + SLOTS as i32;
        n.ran(0, other, 6);
        assert_eq!(n.client_of(0, 100), None);
        assert_eq!(n.client_of(0, other), Some(6));
    }

    #[test]
    fn pids_out_of_range_are_never_recorded() {
        let n = Notifiers::default();
        for pid in [0, -1, 1 << PID_BITS, i32::MAX] {
            n.ran(0, pid, 9);
            assert_eq!(n.client_of(0, pid), None, "{pid}");
        }
        n.ran(BACKENDS, 10, 9);
        assert_eq!(n.client_of(BACKENDS, 10), None);
    }
}
