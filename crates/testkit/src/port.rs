//! Free loopback ports.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

/// Every port [`free_port`] has handed out in this process.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Returns a TCP port on 127.0.0.1 that is free right now.
///
/// Tests need ports for PostgreSQL servers and pgwarden daemons. The port is
/// found by binding `127.0.0.1:0` and released at once, so another process may
/// still take it before the caller binds it: callers that can retry should
/// (the cluster does). Within one process the same port is never handed out
/// twice, so concurrent tests of one binary do not collide with each other.
///
/// # Panics
/// When no port can be bound at all (the loopback interface is unusable).
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let mut last_error = None;
    for _ in 0..1000 {
        match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()) {
            Ok(addr) => {
                if handed_out.insert(addr.port()) {
                    return addr.port();
                }
            }
            Err(e) => last_error = Some(e),
        }
    }
    panic!("could not find a free port on 127.0.0.1 (last error: {last_error:?})");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_hands_out_a_port_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let unique: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|p| *p != 0));
    }

    #[test]
    fn port_is_bindable() {
        let port = free_port();
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}
