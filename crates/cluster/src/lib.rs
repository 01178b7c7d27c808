//! The cluster model the monitor and the watchdog share, as pure code: no
//! IO, no clock, no tokio (the daemons that use it still never import each
//! other).
//!
//! - [`record`]: the [`ClusterRecord`] Raft replicates, the [`Command`]s that
//!   change it and what applying one did; a [`Generation`] is the part a
//!   failover commits, and what the monitor persists of it;
//! - [`status`]: a backend's [`Role`] and [`Status`] (up, down, detached,
//!   quarantined), as every daemon and pgwardenctl name them;
//! - [`health`]: what a check saw ([`Observation`]), the health rule
//!   ([`Limits`]: down after more than `max_retries` failures) and lag.
//!
//! The projection of these onto the gRPC types (`ClusterState`,
//! `ClusterRecord` of `pgwarden.v1`) lives in `pgwarden-proto`, which
//! depends on this crate.

pub mod health;
pub mod record;
pub mod status;

pub use health::{Limits, Observation, lag};
pub use record::{Applied, ClusterRecord, Command, Generation, Rejection, Synchronous};
pub use status::{Role, Status};
