//! The client side of the proxy: from the first byte a client sends to
//! its goodbye.
//!
//! - [`handshake`]: SSLRequest, GSSENCRequest, CancelRequest and the
//!   StartupMessage; [`startup_params`]: what of its parameters a client
//!   keeps and what goes to the server.
//! - [`hba`]: the proxy's own pg_hba rules; [`throttle`]: failed logins
//!   slow their source down.
//! - [`auth`]: the client's authentication (SCRAM-SHA-256, md5,
//!   certificates).
//! - [`session`]: the client's life after login, in either pool mode.
//! - [`clients`]: the logged-in clients, their cancel keys and what their
//!   server connections are doing.

pub mod auth;
pub mod clients;
pub mod handshake;
pub mod hba;
pub mod session;
pub mod startup_params;
pub mod throttle;
