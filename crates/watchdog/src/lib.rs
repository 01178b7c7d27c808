//! pgwarden-watchdog: the consensus core of the watchdog — Raft leader
//! election, the replicated cluster record, and the delegate-IP lease — as
//! plain structs with no network and no clock.
//!
//! - [`node`]: [`WatchdogNode`] owns a raft-rs `RawNode` (pre-vote and
//!   check-quorum on), is driven by `tick`, `step`, `propose`, and returns the
//!   work to do (messages, applied commands, role changes, delegate-IP
//!   actions) from `ready`.
//! - [`storage`]: [`DurableStorage`], the Raft log, hard state and snapshot,
//!   persisted atomically in `state_dir` (or in memory for simulations).
//! - [`state`]: [`ClusterRecord`], the replicated state machine (generation,
//!   primary, detached set, failover in progress, health votes) and its
//!   [`Command`]s.
//! - [`lease`]: [`Lease`], when this node may hold the delegate IP.
//! - [`fence`]: [`fence::Fence`], until when this node's proxies may route
//!   by its record (the lease the leader grants, see `pgwarden_proto::lease`).
//! - [`logger`]: raft-rs's `slog` output routed into `tracing`.
//! - [`core`]: [`core::Core`], the daemon's decisions around the node
//!   (pending proposals, monitor liveness, lead handover, the proxies'
//!   lease, what the API shows, where reports and operator requests go),
//!   driven by `step(Input)` and `tick()`, time counted in ticks.
//!
//! The daemon wraps these: [`runtime`] feeds the core and performs its
//! outputs, [`peers`] carries Raft messages between watchdogs
//! (authenticated by [`auth`], replays refused by [`replay`]), [`forward`]
//! hands a follower's reports and operators' requests to the leader,
//! [`renew`] asks it for the proxies' lease, [`api`]
//! serves `watchdog.sock`, [`vip`] runs the delegate-IP commands; the
//! tests here run the node and the core over an in-memory network with fixed seeds (partitions, message loss and
//! reordering, crashes and restarts) and check, after every simulated tick,
//! that there is at most one leader per term and at most one holder of the
//! delegate IP.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod core;
pub mod fence;
pub mod forward;
pub mod lease;
pub mod logger;
pub mod metrics;
pub mod node;
pub mod peers;
pub mod renew;
pub mod replay;
pub mod report;
pub mod runtime;
pub mod settings;
pub mod state;
pub mod storage;
pub mod vip;

#[cfg(test)]
mod sim;

pub use lease::{Lease, VipAction};
pub use node::{Error, NodeConfig, Output, ProposeError, RoleChange, WatchdogNode};
pub use raft::StateRole;
pub use raft::eraftpb::Message;
pub use report::Report;
pub use state::{Applied, ClusterRecord, Command, Generation, Rejection};
pub use storage::{Disk, DurableStorage, FilePersist, MemoryPersist, Persist, StorageError};
