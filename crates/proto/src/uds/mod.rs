//! gRPC over unix sockets: every daemon serves its API on
//! `<runtime_dir>/<daemon>.sock` (mode 0660), next to `grpc.health.v1`, and
//! every client reaches it there.
//!
//! Server side: [`bind`] the daemon's [`socket_path`], build a tonic router
//! with [`health_service`] and the daemon's service, and [`serve`] it until
//! the daemon's shutdown signal; the socket file is removed afterwards.
//!
//! Client side: [`connect`] for one-shot callers (`pgwardenctl`), which want
//! an immediate, clear error when the daemon is not running;
//! [`connect_lazy`] for long-lived clients (the proxy watching the monitor),
//! which keep one [`Channel`](tonic::transport::Channel) across daemon
//! restarts and pace their own retries with [`reconnect_backoff`].

mod backoff;
mod connect;
mod error;
mod follow;
mod health;
mod listen;
mod path;
mod serve;

pub use backoff::reconnect_backoff;
pub use connect::{CONNECT_TIMEOUT, connect, connect_lazy};
pub use error::UdsError;
pub use follow::follow_watchdog;
pub use health::{health_service, is_serving};
pub use listen::bind;
pub use path::{Daemon, socket_path};
pub use serve::{DRAIN_TIMEOUT, RoutesService, serve, serve_with_drain_timeout};

/// Re-exported so daemons can keep and update the health reporter without
/// depending on `tonic-health` themselves.
pub use tonic_health::{ServingStatus, server::HealthReporter};

#[cfg(test)]
mod tests;
