//! The unix-socket helpers over real sockets in temp dirs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Server;
use tonic::{Request, Response};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as PbServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::*;
use crate::v1::monitor_client::MonitorClient;
use crate::v1::monitor_server::{Monitor, MonitorServer};
use crate::v1::{
    BackendRequest, ChangeReply, ClusterState, GetClusterRequest, GetHistoryReply,
    GetHistoryRequest, PromoteBackendRequest, RecheckReply, RecheckRequest, ReportRoutedReply,
    ReportRoutedRequest, WatchClusterRequest,
};

/// A monitor that serves fixed states.
struct StubMonitor {
    /// WatchCluster never ends after its states (a daemon that ignores shutdown).
    endless: bool,
}

fn state(generation: u64) -> ClusterState {
    ClusterState {
        generation,
        primary_id: Some(0),
        monitor: "pg01".to_owned(),
        ..Default::default()
    }
}

type StateStream = Pin<Box<dyn Stream<Item = Result<ClusterState, tonic::Status>> + Send>>;

/// What every call of the stub answers.
type Reply<T> = Result<Response<T>, tonic::Status>;

#[tonic::async_trait]
impl Monitor for StubMonitor {
    type WatchClusterStream = StateStream;

    async fn watch_cluster(&self, _: Request<WatchClusterRequest>) -> Reply<StateStream> {
        let states = tokio_stream::iter((1..=3).map(|g| Ok(state(g))));
        let stream: StateStream = if self.endless {
            Box::pin(states.chain(tokio_stream::pending()))
        } else {
            Box::pin(states)
        };
        Ok(Response::new(stream))
    }

    async fn get_cluster(&self, _: Request<GetClusterRequest>) -> Reply<ClusterState> {
        Ok(Response::new(state(7)))
    }

    async fn attach_backend(&self, _: Request<BackendRequest>) -> Reply<ChangeReply> {
        Err(tonic::Status::unimplemented("stub"))
    }

    async fn detach_backend(&self, _: Request<BackendRequest>) -> Reply<ChangeReply> {
        Err(tonic::Status::unimplemented("stub"))
    }

    async fn promote_backend(&self, _: Request<PromoteBackendRequest>) -> Reply<ChangeReply> {
        Err(tonic::Status::unimplemented("stub"))
    }

    async fn get_history(&self, _: Request<GetHistoryRequest>) -> Reply<GetHistoryReply> {
        Ok(Response::new(GetHistoryReply::default()))
    }

    async fn report_routed(&self, _: Request<ReportRoutedRequest>) -> Reply<ReportRoutedReply> {
        Ok(Response::new(ReportRoutedReply {}))
    }

    async fn recheck(&self, _: Request<RecheckRequest>) -> Reply<RecheckReply> {
        Ok(Response::new(RecheckReply {}))
    }

    async fn rejoin_backend(&self, _: Request<BackendRequest>) -> Reply<ChangeReply> {
        Err(tonic::Status::unimplemented("stub"))
    }
}

/// A stub monitor served on `path` until the returned sender fires (or is
/// dropped).
struct Served {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), UdsError>>,
}

impl Served {
    async fn start(path: &Path, endless: bool, drain: Duration) -> Served {
        let listener = bind(path).await.unwrap();
        let (_reporter, health) = health_service(crate::v1::monitor_server::SERVICE_NAME).await;
        let router = Server::builder()
            .add_service(health)
            .add_service(MonitorServer::new(StubMonitor { endless }));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_with_drain_timeout(
            listener,
            router,
            async move {
                let _ = stopped.await;
            },
            drain,
        ));
        Served { stop, task }
    }

    async fn stop(self) -> Result<(), UdsError> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve did not return after shutdown")
            .unwrap()
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn socket_paths() {
    let dir = Path::new("/run/pgwarden");
    assert_eq!(socket_path(dir, Daemon::Proxy), dir.join("proxy.sock"));
    assert_eq!(socket_path(dir, Daemon::Monitor), dir.join("monitor.sock"));
    assert_eq!(
        socket_path(dir, Daemon::Watchdog),
        dir.join("watchdog.sock")
    );
}

#[tokio::test]
async fn serve_get_watch_and_remove_on_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let runtime_dir = tmp.path().join("run/pgwarden");
    let path = socket_path(&runtime_dir, Daemon::Monitor);
    let served = Served::start(&path, false, DRAIN_TIMEOUT).await;

    assert_eq!(mode(&runtime_dir), 0o750, "created runtime dir");
    assert_eq!(mode(&path), 0o660, "socket");

    let mut client = MonitorClient::new(connect(&path).await.unwrap());
    let got = client
        .get_cluster(GetClusterRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, state(7));

    let mut states = client
        .watch_cluster(WatchClusterRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut generations = Vec::new();
    while let Some(state) = states.message().await.unwrap() {
        generations.push(state.generation);
    }
    assert_eq!(generations, [1, 2, 3]);

    served.stop().await.unwrap();
    assert!(!path.exists(), "socket file left behind");
    drop(client);
}

#[tokio::test]
async fn health_reports_serving_through_the_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let path = socket_path(tmp.path(), Daemon::Monitor);
    let served = Served::start(&path, false, DRAIN_TIMEOUT).await;

    let mut health = HealthClient::new(connect(&path).await.unwrap());
    for service in ["", "pgwarden.v1.Monitor"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status(), PbServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "pgwarden.v1.Nope".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let t = Duration::from_secs(2);
    assert!(is_serving(&path, "pgwarden.v1.Monitor", t).await);
    assert!(!is_serving(&path, "pgwarden.v1.Nope", t).await);
    served.stop().await.unwrap();
    assert!(!is_serving(&path, "pgwarden.v1.Monitor", t).await, "gone");
}

#[tokio::test]
async fn stale_socket_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("monitor.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "the crashed daemon's socket stays");

    let listener = bind(&path).await.unwrap();
    assert_eq!(mode(&path), 0o660);
    drop(listener);
}

#[tokio::test]
async fn live_socket_is_refused_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("monitor.sock");
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();

    let err = bind(&path).await.unwrap_err();
    assert!(matches!(err, UdsError::AlreadyListening { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("another daemon is listening on {}", path.display())
    );
    assert!(path.exists());

    // The live daemon still gets its connections.
    let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let (_conn, _) = live.accept().unwrap();
}

#[tokio::test]
async fn non_socket_is_refused_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file.sock");
    std::fs::write(&file, b"precious").unwrap();
    let err = bind(&file).await.unwrap_err();
    assert!(matches!(err, UdsError::NotASocket { .. }), "{err:?}");
    assert!(err.to_string().contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");

    let dir = tmp.path().join("dir.sock");
    std::fs::create_dir(&dir).unwrap();
    let err = bind(&dir).await.unwrap_err();
    assert!(matches!(err, UdsError::NotASocket { .. }), "{err:?}");
    assert!(dir.is_dir());
}

#[tokio::test]
async fn existing_runtime_dir_keeps_its_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _listener = bind(&dir.join("proxy.sock")).await.unwrap();
    assert_eq!(mode(&dir), 0o755);
}

#[tokio::test]
async fn connect_without_daemon_fails_fast() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("monitor.sock");
    let started = Instant::now();
    let err = connect(&path).await.unwrap_err();
    assert!(matches!(err, UdsError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(started.elapsed() < CONNECT_TIMEOUT);
}

/// Calls GetCluster until it succeeds, sleeping the back-off between tries;
/// returns how many calls failed first.
async fn get_cluster_with_retry(client: &mut MonitorClient<tonic::transport::Channel>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut backoff = reconnect_backoff();
    let mut failures = 0;
    loop {
        match client.get_cluster(GetClusterRequest {}).await {
            Ok(reply) => {
                assert_eq!(reply.into_inner(), state(7));
                return failures;
            }
            Err(status) => {
                assert!(Instant::now() < deadline, "still failing: {status}");
                failures += 1;
                tokio::time::sleep(backoff.next().unwrap()).await;
            }
        }
    }
}

#[tokio::test]
async fn lazy_channel_follows_daemon_start_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let path = socket_path(tmp.path(), Daemon::Monitor);
    let mut client = MonitorClient::new(connect_lazy(&path));

    // Not started yet: the call fails instead of waiting.
    let status = client.get_cluster(GetClusterRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");

    // The daemon appears: a retry succeeds on the same channel.
    let served = Served::start(&path, false, DRAIN_TIMEOUT).await;
    get_cluster_with_retry(&mut client).await;

    // Restarted on the same path: a new call succeeds, after at most a
    // couple of failures while the old connection is found dead.
    served.stop().await.unwrap();
    assert!(!path.exists());
    let served = Served::start(&path, false, DRAIN_TIMEOUT).await;
    let failures = get_cluster_with_retry(&mut client).await;
    assert!(failures <= 2, "{failures} failures after restart");

    served.stop().await.unwrap();
}

#[tokio::test]
async fn open_stream_does_not_block_shutdown_past_the_drain_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let path = socket_path(tmp.path(), Daemon::Monitor);
    let drain = Duration::from_millis(200);
    let served = Served::start(&path, true, drain).await;

    let mut client = MonitorClient::new(connect(&path).await.unwrap());
    let mut states = client
        .watch_cluster(WatchClusterRequest {})
        .await
        .unwrap()
        .into_inner();
    for generation in 1..=3 {
        assert_eq!(
            states.message().await.unwrap().unwrap().generation,
            generation
        );
    }

    let started = Instant::now();
    served.stop().await.unwrap();
    assert!(
        started.elapsed() >= drain,
        "returned before the drain timeout"
    );
    assert!(started.elapsed() < drain + Duration::from_secs(3));
    assert!(!path.exists());
}

#[tokio::test]
async fn shutdown_leaves_a_successors_socket_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let path = socket_path(tmp.path(), Daemon::Proxy);
    let served = Served::start(&path, false, DRAIN_TIMEOUT).await;

    // An operator removed the socket and another instance bound the path.
    std::fs::remove_file(&path).unwrap();
    let successor = bind(&path).await.unwrap();

    served.stop().await.unwrap();
    assert!(path.exists(), "the successor's socket was removed");
    drop(successor);
}
