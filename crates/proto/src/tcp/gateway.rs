//! The remote admin API (`admin.listen`, pgpool's PCP port): the gRPC
//! services the daemons serve on their unix sockets, reached over one TCP
//! port with mutual TLS. Each call is passed on, as it came, to the socket
//! of the daemon whose service it names, and its answer (or stream) back:
//! remote and local callers get the same answers from the same code.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::path::Path;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::transport::server::Router;
use tower::{Service, ServiceExt};

use super::Peer;
use crate::uds::{Daemon, connect_lazy, socket_path};

/// Which daemon serves a service.
pub trait Served: Send + Sync + 'static {
    /// The gRPC service name.
    const NAME: &'static str;
    /// The daemon whose socket serves it.
    const DAEMON: Daemon;
}

/// Declares each `$service`, a type naming the gRPC service `$name` that
/// `$daemon`'s socket serves.
macro_rules! served {
    ($($(#[$doc:meta])* $service:ident = $name:expr, on $daemon:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub enum $service {}
        impl Served for $service {
            const NAME: &'static str = $name;
            const DAEMON: Daemon = Daemon::$daemon;
        }
    )*};
}

served! {
    /// `pgwarden.v1.Monitor`, on `monitor.sock`.
    MonitorService = crate::v1::monitor_server::SERVICE_NAME, on Monitor;
    /// `pgwarden.v1.Proxy`, on `proxy.sock`.
    ProxyService = crate::v1::proxy_server::SERVICE_NAME, on Proxy;
    /// `pgwarden.v1.Watchdog`, on `watchdog.sock`.
    WatchdogService = crate::v1::watchdog_server::SERVICE_NAME, on Watchdog;
    /// `grpc.health.v1.Health`, the monitor's.
    HealthService = "grpc.health.v1.Health", on Monitor;
}

/// Passes calls of service `S` on to its daemon's socket.
#[derive(Debug)]
pub struct Forward<S> {
    channel: Channel,
    served: PhantomData<S>,
}

impl<S> Clone for Forward<S> {
    fn clone(&self) -> Self {
        Forward {
            channel: self.channel.clone(),
            served: PhantomData,
        }
    }
}

impl<S: Served> Forward<S> {
    /// Calls of `S` to `S::DAEMON`'s socket in `runtime_dir` (connected on
    /// first use, again after the daemon restarts).
    pub fn new(runtime_dir: &Path) -> Self {
        Forward {
            channel: connect_lazy(&socket_path(runtime_dir, S::DAEMON)),
            served: PhantomData,
        }
    }
}

impl<S: Served> NamedService for Forward<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: Served> Service<http::Request<Body>> for Forward<S> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let channel = self.channel.clone();
        let (who, name) = request
            .extensions()
            .get::<Peer>()
            .map(|p| (p.address, p.name.clone()))
            .unwrap_or_default();
        tracing::debug!(
            client = ?who,
            certificate = name.as_deref().unwrap_or(""),
            call = request.uri().path(),
            "admin call"
        );
        Box::pin(async move {
            match channel.oneshot(request).await {
                Ok(response) => Ok(response),
                Err(e) => Ok(tonic::Status::unavailable(format!(
                    "pgwarden-{} does not answer on this node: {}",
                    S::DAEMON,
                    crate::root_cause(&e)
                ))
                .into_http()),
            }
        })
    }
}

/// A tonic router with every daemon's service (and the monitor's health)
/// passed on to the sockets in `runtime_dir`; serve it on
/// [`incoming`](super::incoming) with a mutual TLS config.
pub fn router(runtime_dir: &Path) -> Router {
    tonic::transport::Server::builder()
        .add_service(Forward::<MonitorService>::new(runtime_dir))
        .add_service(Forward::<ProxyService>::new(runtime_dir))
        .add_service(Forward::<WatchdogService>::new(runtime_dir))
        .add_service(Forward::<HealthService>::new(runtime_dir))
}
