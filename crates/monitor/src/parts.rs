//! What both ways of running the monitor share (alone, or with the
//! watchdog): the API on `monitor.sock`, one check task per backend, and
//! the channels between them and the loop that decides.

use std::sync::Arc;

use pgwarden_proto::v1::ClusterState;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::checks::{self, CheckTarget};
use crate::machine::Event;
use crate::service::{Command, MonitorService};
use crate::settings::Settings;
use crate::state_file;

/// Why the monitor could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state file is unreadable.
    #[error("node.state_dir: {0}")]
    State(#[from] state_file::StateFileError),
    /// The socket could not be bound.
    #[error("node.runtime_dir: {0}")]
    Socket(String),
    /// `admin.listen` could not be bound.
    #[error("admin.listen: cannot listen on {listen}: {error}")]
    Admin {
        /// The address.
        listen: std::net::SocketAddr,
        /// Why.
        error: std::io::Error,
    },
}

/// What both ways of running share: the API, the checks, the channels.
pub(crate) struct Parts {
    pub(crate) events_tx: mpsc::Sender<Event>,
    pub(crate) events: mpsc::Receiver<Event>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) current_tx: watch::Sender<ClusterState>,
    pub(crate) generations: broadcast::Sender<ClusterState>,
    pub(crate) ready_tx: watch::Sender<bool>,
    /// The failover history the API shows.
    pub(crate) history_tx: watch::Sender<Vec<pgwarden_proto::v1::FailoverRecord>>,
    /// The watchdog's status as this node hears it (the status page shows
    /// it; with a watchdog, the consensus loop follows and fills it).
    pub(crate) watchdog_tx: watch::Sender<Option<pgwarden_proto::v1::WatchdogStatus>>,
    pub(crate) stop: CancellationToken,
    pub(crate) recheck: Arc<Notify>,
    server: tokio::task::JoinHandle<()>,
    admin: Option<tokio::task::JoinHandle<()>>,
}

/// Binds `monitor.sock`, serves the API and starts the checks.
pub(crate) async fn start(settings: &Settings, first: ClusterState) -> Result<Parts, StartError> {
    let (events_tx, events) = mpsc::channel::<Event>(256);
    let (commands_tx, commands) = mpsc::channel::<Command>(16);
    let (current_tx, current_rx) = watch::channel(first);
    let (generations, _) = broadcast::channel::<ClusterState>(1024);
    let (ready_tx, ready_rx) = watch::channel(false);
    let (history_tx, history_rx) = watch::channel(Vec::new());
    let (watchdog_tx, watchdog_rx) = watch::channel(None);
    let stop = CancellationToken::new();
    let recheck = Arc::new(Notify::new());

    let path = pgwarden_proto::uds::socket_path(
        &settings.runtime_dir,
        pgwarden_proto::uds::Daemon::Monitor,
    );
    let listener = pgwarden_proto::uds::bind(&path)
        .await
        .map_err(|e| StartError::Socket(e.to_string()))?;
    let service = MonitorService {
        commands: commands_tx,
        current: current_rx.clone(),
        generations: generations.clone(),
        ready: ready_rx,
        history: history_rx.clone(),
        stop: stop.clone(),
    };
    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        let (_health, health_service) =
            pgwarden_proto::uds::health_service(pgwarden_proto::v1::monitor_server::SERVICE_NAME)
                .await;
        let router = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(pgwarden_proto::v1::monitor_server::MonitorServer::new(
                service,
            ));
        if let Err(e) =
            pgwarden_proto::uds::serve(listener, router, server_stop.cancelled_owned()).await
        {
            tracing::error!(error = %e, "monitor API stopped");
        }
    });
    let admin = match &settings.admin {
        Some(admin) => Some(serve_admin(admin, settings, &stop).await?),
        None => None,
    };
    // The status page may share the metrics' listener: then it serves both.
    let shared = settings.http_listen == Some(settings.metrics_listen);
    if !shared {
        crate::metrics::spawn(
            settings.metrics_listen,
            current_rx.clone(),
            history_rx.clone(),
            stop.clone(),
        )
        .await;
    }
    if let Some(addr) = settings.http_listen {
        let metrics =
            shared.then(|| crate::metrics::renderer(current_rx.clone(), history_rx.clone()));
        let sources = crate::status::Sources {
            state: current_rx.clone(),
            history: history_rx,
            watchdog_enabled: settings.consensus,
            watchdog: watchdog_rx,
            lag: Arc::default(),
            metrics,
        };
        crate::status::spawn(addr, sources, stop.clone()).await;
    }
    for t in &settings.backends {
        let target = CheckTarget {
            id: t.id,
            host: t.host.clone(),
            port: t.port,
        };
        tokio::spawn(checks::run(
            target,
            settings.checks.clone(),
            events_tx.clone(),
            Arc::clone(&recheck),
            stop.clone(),
        ));
    }
    Ok(Parts {
        events_tx,
        events,
        commands,
        current_tx,
        generations,
        ready_tx,
        history_tx,
        watchdog_tx,
        stop,
        recheck,
        server,
        admin,
    })
}

/// Serves the remote admin API (`[admin]`): every daemon's service over
/// mutual TLS, each call passed on to that daemon's socket.
async fn serve_admin(
    admin: &crate::settings::Admin,
    settings: &Settings,
    stop: &CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    let listener = tokio::net::TcpListener::bind(admin.listen)
        .await
        .map_err(|error| StartError::Admin {
            listen: admin.listen,
            error,
        })?;
    tracing::info!(listen = %admin.listen, "remote admin API listening (mutual TLS)");
    let incoming =
        pgwarden_proto::tcp::incoming(listener, Some(Arc::clone(&admin.tls)), "admin client");
    let router = pgwarden_proto::tcp::gateway::router(&settings.runtime_dir);
    let stop = stop.clone();
    Ok(tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "remote admin API stopped");
        }
    }))
}

impl Parts {
    /// Stops the checks and the API.
    pub(crate) async fn finish(self) {
        self.stop.cancel();
        let _ = self.server.await;
        if let Some(admin) = self.admin {
            // Open watch streams do not end by themselves: bounded, as the socket's drain.
            let _ = tokio::time::timeout(pgwarden_proto::uds::DRAIN_TIMEOUT, admin).await;
        }
        tracing::info!("pgwarden-monitor stopped");
    }
}
