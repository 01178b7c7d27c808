//! pgwarden-monitor: health and replication checks of every backend, and
//! automatic failover.
//!
//! - [`checks`]: one task per backend runs the health and replication query.
//! - [`machine`]: the failover decision as a pure state machine.
//! - [`actions`]: promote a standby, repoint the others (builtin SQL or
//!   pgpool-II-style hook commands).
//! - [`coordinator`]: with a watchdog, when this node's monitor decides,
//!   what it proposes, what the proxies see, as a pure `step`/`tick` core.
//! - [`operator`]: operator requests (attach, detach, promote, rejoin)
//!   against the machine that decides.
//! - [`runtime`]: the daemon loop tying them together (alone, or with the
//!   watchdog in `consensus`), from [`settings`]; `parts` starts the API and
//!   the checks, `perform` carries out the machine's actions; [`service`]:
//!   the gRPC API on `monitor.sock`; [`state_file`]: the persisted state.

pub mod actions;
pub mod checks;
mod consensus;
pub mod coordinator;
pub mod machine;
pub mod metrics;
pub mod operator;
mod parts;
mod perform;
pub mod runtime;
pub mod service;
pub mod settings;
pub mod state_file;
pub mod status;
pub mod timeline;
