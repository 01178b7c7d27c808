//! Password authentication on both sides of the proxy.
//!
//! Clients authenticate to the proxy against the auth file ([`auth_file`]);
//! the proxy authenticates to servers as the same user. A secret is held in
//! one of three forms ([`Secret`]), and each form decides what the proxy can
//! do with it:
//!
//! | secret in the auth file | client → proxy | proxy → server |
//! |---|---|---|
//! | plain text | SCRAM (or md5 with `auth_type = "md5"`) | SCRAM, md5, cleartext |
//! | `SCRAM-SHA-256$...` | SCRAM | SCRAM with the client's own `ClientKey` (same salt and iterations as the server) |
//! | `md5...` | md5 | md5 |
//!
//! The middle row is PgBouncer's trick: a SCRAM client proves it knows
//! `ClientKey`, and the proxy recovers that key from the proof, so it can
//! log in to a server holding the same verifier without ever seeing the password.

pub mod auth_file;
pub mod md5;
pub mod scram;
mod secret;

pub use secret::{ScramVerifier, Secret};

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
