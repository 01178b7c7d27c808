//! The contracts between pgwarden's daemons, and the plumbing to speak them.
//!
//! Every daemon (`pgwarden-proxy`, `pgwarden-monitor`, `pgwarden-watchdog`)
//! serves gRPC on a unix socket in `node.runtime_dir`, next to the standard
//! `grpc.health.v1` service, and the others (and `pgwardenctl`) connect to it.
//! This crate is the only thing the daemons share about that:
//!
//! - [`v1`]: the code generated from `proto/pgwarden/v1/*.proto` at the
//!   workspace root (messages, `monitor_server`/`monitor_client`,
//!   `proxy_server`/`proxy_client`, ...). The `.proto` files are the source of
//!   truth; they are compiled at build time by `protox`, no `protoc` needed.
//! - [`uds`]: where the sockets live ([`uds::socket_path`]), binding one safely
//!   ([`uds::bind`] refuses to steal a live daemon's socket and clears a stale
//!   one), serving a tonic router on it until shutdown ([`uds::serve`]), the
//!   health service ([`uds::health_service`]), and the client side
//!   ([`uds::connect`], [`uds::connect_lazy`], [`uds::reconnect_backoff`]).
//! - [`tcp`]: gRPC between nodes over TCP with mutual TLS: accepting
//!   ([`tcp::incoming`]), dialling ([`tcp::dial`]), and the remote admin
//!   API that passes calls on to the local sockets ([`tcp::gateway`]).
//! - [`json`]: the JSON form of the cluster state and the failover history,
//!   as `pgwardenctl --json` prints them and the monitor's status page serves them.
//! - [`lsn`]: PostgreSQL LSNs between `u64` (as on the wire) and the `16/B374D848`
//!   text form (as in logs and SQL).
//!
//! A daemon serves:
//!
//! ```no_run
//! # async fn run(runtime_dir: &std::path::Path, svc: impl pgwarden_proto::v1::monitor_server::Monitor) -> Result<(), pgwarden_proto::uds::UdsError> {
//! use pgwarden_proto::uds::{self, Daemon};
//! use pgwarden_proto::v1::monitor_server::{self, MonitorServer};
//! use tonic::transport::Server;
//!
//! let listener = uds::bind(&uds::socket_path(runtime_dir, Daemon::Monitor)).await?;
//! let (_reporter, health) = uds::health_service(monitor_server::SERVICE_NAME).await;
//! let router = Server::builder().add_service(health).add_service(MonitorServer::new(svc));
//! uds::serve(listener, router, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! and a client connects:
//!
//! ```no_run
//! # async fn run(runtime_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
//! use pgwarden_proto::uds::{self, Daemon};
//! use pgwarden_proto::v1::{GetClusterRequest, monitor_client::MonitorClient};
//!
//! let channel = uds::connect(&uds::socket_path(runtime_dir, Daemon::Monitor)).await?;
//! let state = MonitorClient::new(channel).get_cluster(GetClusterRequest {}).await?.into_inner();
//! println!("generation {}", state.generation);
//! # Ok(())
//! # }
//! ```

/// gRPC metadata a leader's watchdog sets on an operator request it hands
/// to its monitor on another node's behalf: that monitor decides it or
/// refuses it, never hands it on again.
pub const OPERATOR_FORWARDED: &str = "pgwarden-forwarded";

/// The innermost error of a chain: for a failed connect, the `io::Error`
/// (`Connection refused (os error 111)`, `received fatal alert: ...`)
/// rather than tonic's `transport error`.
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

pub mod json;
pub mod lease;
pub mod lsn;
pub mod model;
pub mod tcp;
pub mod uds;
pub mod v1;

pub use v1::monitor_client::MonitorClient;
pub use v1::monitor_server::{Monitor, MonitorServer};
pub use v1::proxy_client::ProxyClient;
pub use v1::proxy_server::{Proxy, ProxyServer};
