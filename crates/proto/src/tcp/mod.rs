//! gRPC over TCP between nodes, with mutual TLS: watchdog peers
//! (`watchdog.listen`) and the remote admin API (`admin.listen`).
//!
//! Server side: [`incoming`] accepts on a bound listener and, with TLS,
//! does each handshake (bounded in time and in number at once) before
//! tonic sees the connection; a client refused by TLS (no certificate, one
//! the CA did not sign, plain text) is logged with its address and why.
//! Client side: [`dial`] a lazily connecting channel, [`dial_now`] one that
//! reports an unreachable server at once. [`gateway`] is the admin API: the
//! daemons' unix-socket services, reached over one TCP port.

mod conn;
mod dial;
pub mod gateway;

pub use conn::{Conn, Peer, incoming};
pub use dial::{Confirmed, DialError, Dialled, dial, dial_now, host_of};
