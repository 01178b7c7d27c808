//! Sans-IO pieces of the PostgreSQL v3 protocol that the pgwarden proxy needs.
//!
//! Nothing here touches a socket or a clock: callers feed bytes in and get
//! messages, events or bytes to send back out, like `postgres-protocol`, whose
//! frontend writers and backend parser the proxy uses for its own server
//! connections. What that crate lacks, a proxy needs, and lives here:
//!
//! - [`startup`]: the startup phase a *server* sees (StartupMessage, SSLRequest,
//!   GSSENCRequest, CancelRequest), with PostgreSQL's 10,000-byte limit.
//! - [`frame`]: whole typed messages from a buffer, for the phases where the
//!   proxy buffers (authentication, its own queries), with a length limit.
//! - [`scan`]: a streaming [`scan::Scanner`] that walks message boundaries in
//!   chunks as they pass through the proxy, without copying or buffering
//!   whole messages, so a 5 MB row costs no more memory than a 5-byte one.
//! - [`backend`]: messages the proxy writes to clients, and [`error`]'s
//!   [`error::ErrorResponse`] with its SQLSTATE ([`sqlstate`]).
//! - [`auth`]: the SCRAM-SHA-256 server and client, md5, and the auth file of
//!   `"user" "secret"` lines.

pub mod auth;
pub mod backend;
pub mod error;
pub mod frame;
pub mod scan;
pub mod sqlstate;
pub mod startup;

pub use error::{ErrorResponse, ProtocolError, ServerMessageFields, Severity};

/// The largest startup-phase packet PostgreSQL accepts (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: u32 = 10_000;
