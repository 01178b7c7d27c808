//! pgwarden-monitor: health and replication checks of every backend, and
//! automatic failover.
//!
//! - [`checks`]: one task per backend runs the health and replication query.
//! - [`machine`]: the failover decision as a pure state machine.
//! - [`actions`]: promote a standby, repoint the others (builtin SQL or
//!   pgpool-II-style hook commands).
//! - [`runtime`]: the daemon loop tying them together; [`service`]: the
//!   gRPC API on `monitor.sock`; [`state_file`]: the persisted state.

pub mod actions;
pub mod checks;
mod consensus;
pub mod machine;
pub mod metrics;
pub mod runtime;
pub mod service;
pub mod state_file;
