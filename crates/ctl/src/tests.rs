//! [`run`] end to end against a stub monitor (and a stub watchdog) on a
//! real unix socket: the same code path as the binary, with buffers for
//! stdout and a channel for Ctrl-C.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use clap::Parser;
use pgwarden_proto::uds;
use pgwarden_proto::v1::monitor_server::{Monitor, MonitorServer};
use pgwarden_proto::v1::watchdog_server::{Watchdog, WatchdogServer};
use pgwarden_proto::v1::{
    BackendRequest, BackendState, ChangeReply, ClusterState, GetClusterRequest, GetStatusRequest,
    LeadershipEvent, PromoteBackendRequest, ProposeClusterChangeReply, ProposeClusterChangeRequest,
    RecheckReply, RecheckRequest, ReportHealthReply, ReportHealthRequest, Role, Status,
    WatchClusterRequest, WatchLeadershipRequest, WatchdogStatus,
};
use tokio::sync::{oneshot, watch};
use tokio_stream::Stream;
use tonic::{Request, Response};

use super::*;

/// What the stub was asked, in order.
type Calls = Arc<Mutex<Vec<String>>>;

/// Records `call` in `calls` for the test to check.
fn record(calls: &Calls, call: impl Into<String>) {
    calls.lock().unwrap().push(call.into());
}

/// What a stub's streaming call answers with.
type Replies<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// A monitor with pg0 primary and pg1, pg2 standbys; refuses to promote
/// the primary; a promotion of pg1 commits two more generations.
struct Stub {
    state: watch::Sender<ClusterState>,
    calls: Calls,
}

fn initial() -> ClusterState {
    let backend = |id: u32| BackendState {
        id,
        name: format!("pg{id}"),
        host: "127.0.0.1".into(),
        port: 5432 + id,
        role: if id == 0 {
            Role::Primary
        } else {
            Role::Standby
        } as i32,
        status: Status::Up as i32,
        replay_lsn: 0x300_0148,
        flush_lsn: 0x300_0148,
        timeline: 1,
        last_check_unix_ms: render::now_unix_ms(),
        ..Default::default()
    };
    ClusterState {
        generation: 3,
        primary_id: Some(0),
        backends: (0..3).map(backend).collect(),
        failover_in_progress: false,
        monitor: "node1".into(),
        no_quorum: false,
        switchover_in_progress: false,
        failover_blocked: String::new(),
    }
}

impl Stub {
    fn change(&self, message: String) -> Result<Response<ChangeReply>, tonic::Status> {
        Ok(Response::new(ChangeReply {
            state: Some(self.state.borrow().clone()),
            message,
        }))
    }

    /// Records `call` for the test to check.
    fn record(&self, call: impl Into<String>) {
        record(&self.calls, call);
    }

    /// AttachBackend or DetachBackend (`call`): records `call id`, gives
    /// the backend `status` and `reason`, replies `pg{id} {done}`.
    fn change_status(
        &self,
        r: Request<BackendRequest>,
        call: &str,
        (status, reason): (Status, &str),
        done: &str,
    ) -> Result<Response<ChangeReply>, tonic::Status> {
        let id = r.into_inner().id;
        self.record(format!("{call} {id}"));
        self.set(id, status, reason);
        self.change(format!("pg{id} {done}"))
    }

    fn set(&self, id: u32, status: Status, reason: &str) {
        self.state.send_modify(|s| {
            s.generation += 1;
            if let Some(b) = s.backends.iter_mut().find(|b| b.id == id) {
                b.status = status as i32;
                b.reason = reason.to_owned();
            }
        });
    }
}

#[tonic::async_trait]
impl Monitor for Stub {
    type WatchClusterStream = Replies<ClusterState>;

    async fn watch_cluster(
        &self,
        _: Request<WatchClusterRequest>,
    ) -> Result<Response<Self::WatchClusterStream>, tonic::Status> {
        self.record("WatchCluster");
        let states = tokio_stream::wrappers::WatchStream::new(self.state.subscribe());
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            states, Ok,
        ))))
    }

    async fn get_cluster(
        &self,
        _: Request<GetClusterRequest>,
    ) -> Result<Response<ClusterState>, tonic::Status> {
        self.record("GetCluster");
        Ok(Response::new(self.state.borrow().clone()))
    }

    async fn attach_backend(
        &self,
        r: Request<BackendRequest>,
    ) -> Result<Response<ChangeReply>, tonic::Status> {
        self.change_status(r, "Attach", (Status::Up, ""), "attached")
    }

    async fn detach_backend(
        &self,
        r: Request<BackendRequest>,
    ) -> Result<Response<ChangeReply>, tonic::Status> {
        let detached = (Status::Detached, "detached by an operator");
        self.change_status(r, "Detach", detached, "detached")
    }

    async fn promote_backend(
        &self,
        r: Request<PromoteBackendRequest>,
    ) -> Result<Response<ChangeReply>, tonic::Status> {
        let PromoteBackendRequest { id, force } = r.into_inner();
        self.record(format!("Promote {id} force={force}"));
        if id == 0 {
            return Err(tonic::Status::failed_precondition(
                "pg0 is already the primary",
            ));
        }
        self.state.send_modify(|s| {
            s.generation += 1;
            s.failover_in_progress = true;
            s.primary_id = None;
            s.backends[0].status = Status::Detached as i32;
            s.backends[0].reason = format!("switched over to pg{id}");
        });
        let reply = self.change(format!("promoting pg{id}"));
        let state = self.state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            state.send_modify(|s| {
                s.generation += 1;
                s.failover_in_progress = false;
                s.primary_id = Some(id);
                for b in &mut s.backends {
                    if b.id == id {
                        b.role = Role::Primary as i32;
                    }
                }
            });
        });
        reply
    }

    async fn get_history(
        &self,
        _: Request<pgwarden_proto::v1::GetHistoryRequest>,
    ) -> Result<Response<pgwarden_proto::v1::GetHistoryReply>, tonic::Status> {
        self.record("GetHistory");
        Ok(Response::new(pgwarden_proto::v1::GetHistoryReply::default()))
    }

    async fn report_routed(
        &self,
        _: tonic::Request<pgwarden_proto::v1::ReportRoutedRequest>,
    ) -> Result<tonic::Response<pgwarden_proto::v1::ReportRoutedReply>, tonic::Status> {
        Ok(tonic::Response::new(
            pgwarden_proto::v1::ReportRoutedReply {},
        ))
    }

    async fn recheck(
        &self,
        _: Request<RecheckRequest>,
    ) -> Result<Response<RecheckReply>, tonic::Status> {
        self.record("Recheck");
        Ok(Response::new(RecheckReply {}))
    }

    async fn rejoin_backend(
        &self,
        r: Request<BackendRequest>,
    ) -> Result<Response<ChangeReply>, tonic::Status> {
        let id = r.into_inner().id;
        self.record(format!("Rejoin {id}"));
        Err(tonic::Status::failed_precondition(
            "failover.rejoin_command is not set",
        ))
    }
}

/// Runs `pgwardenctl --config <config> ARGS` as `main` does, until it ends
/// or `interrupt` resolves: what it printed, and how it ended.
async fn run_ctl(
    config: &std::path::Path,
    args: &[&str],
    interrupt: impl Future<Output = ()>,
) -> (String, Result<(), CtlError>) {
    let argv = ["pgwardenctl", "--config", config.to_str().unwrap()]
        .into_iter()
        .chain(args.iter().copied());
    let cli = Cli::try_parse_from(argv).unwrap();
    let mut out = Vec::new();
    let result = run(&cli, &mut out, interrupt).await;
    (String::from_utf8(out).unwrap(), result)
}

/// A stub monitor on a socket in a temp dir, and a config pointing at it.
struct Served {
    dir: tempfile::TempDir,
    calls: Calls,
    _stop: oneshot::Sender<()>,
}

impl Served {
    async fn start() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let socket = uds::socket_path(dir.path(), uds::Daemon::Monitor);
        let listener = uds::bind(&socket).await.unwrap();
        let calls = Calls::default();
        let stub = Stub {
            state: watch::Sender::new(initial()),
            calls: calls.clone(),
        };
        let router = tonic::transport::Server::builder().add_service(MonitorServer::new(stub));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(uds::serve(listener, router, async move {
            let _ = stopped.await;
        }));
        std::fs::write(
            dir.path().join("pgwarden.toml"),
            format!(
                "[node]\nname = \"node1\"\nruntime_dir = \"{}\"\n\n[[backends]]\nname = \"pg0\"\nhost = \"127.0.0.1\"\n",
                dir.path().display()
            ),
        )
        .unwrap();
        Served {
            dir,
            calls,
            _stop: stop,
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("pgwarden.toml")
    }

    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    /// Runs `pgwardenctl --config <config> ARGS`; returns the output and the
    /// result.
    async fn ctl(&self, args: &[&str]) -> (String, Result<(), CtlError>) {
        self.ctl_until(args, std::future::pending()).await
    }

    /// [`Served::ctl`], which must succeed: what it printed.
    async fn ctl_ok(&self, args: &[&str]) -> String {
        let (out, result) = self.ctl(args).await;
        result.unwrap_or_else(|e| panic!("pgwardenctl {args:?}: {e}\n{out}"));
        out
    }

    async fn ctl_until(
        &self,
        args: &[&str],
        interrupt: impl Future<Output = ()>,
    ) -> (String, Result<(), CtlError>) {
        run_ctl(&self.config(), args, interrupt).await
    }
}

#[tokio::test]
async fn status_by_default_via_the_config() {
    let served = Served::start().await;
    let out = served.ctl_ok(&[]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "generation 3, primary pg0 (id 0), monitor node1");
    assert!(lines[1].starts_with("ID  NAME  ADDRESS"), "{out}");
    assert!(
        lines[2].starts_with(
            "0   pg0   127.0.0.1:5432  primary  up      -    0/3000148   0/3000148     -     1         0."
        ),
        "{out}"
    );
    assert!(lines[3].contains("standby  up      0 B"), "{out}");
    assert_eq!(lines.len(), 5);
    assert_eq!(served.calls(), ["GetCluster"]);
}

#[tokio::test]
async fn status_json() {
    let served = Served::start().await;
    let out = served.ctl_ok(&["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["generation"], 3);
    assert_eq!(v["primary"], "pg0");
    assert_eq!(v["backends"][2]["role"], "standby");
}

#[tokio::test]
async fn socket_flag_skips_the_config() {
    let served = Served::start().await;
    let socket = uds::socket_path(served.dir.path(), uds::Daemon::Monitor);
    let cli = Cli::try_parse_from([
        "pgwardenctl",
        "--config",
        "/nonexistent/pgwarden.toml",
        "--socket",
        socket.to_str().unwrap(),
        "recheck",
    ])
    .unwrap();
    let mut out = Vec::new();
    run(&cli, &mut out, std::future::pending()).await.unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "recheck requested: the monitor checks every backend now\n"
    );
    assert_eq!(served.calls(), ["Recheck"]);
}

#[tokio::test]
async fn detach_and_attach_by_name_or_id() {
    let served = Served::start().await;
    let out = served.ctl_ok(&["detach", "pg2"]).await;
    assert_eq!(out, "pg2 detached\n");
    assert_eq!(served.calls(), ["GetCluster", "Detach 2"]);

    let out = served.ctl_ok(&["attach", "2", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["message"], "pg2 attached");
    assert_eq!(v["state"]["generation"], 5);
    assert_eq!(v["state"]["backends"][2]["status"], "up");
    assert_eq!(served.calls(), ["GetCluster", "Attach 2"]);
}

#[tokio::test]
async fn unknown_backend_is_a_usage_error_and_asks_nothing() {
    let served = Served::start().await;
    let (out, result) = served.ctl(&["attach", "99"]).await;
    let e = result.unwrap_err();
    assert_eq!(
        e.to_string(),
        "no backend 99; the backends are: 0 pg0, 1 pg1, 2 pg2"
    );
    assert_eq!(e.exit_code(), 2);
    assert_eq!(out, "");
    assert_eq!(served.calls(), ["GetCluster"]);
}

#[tokio::test]
async fn refusal_exits_1_with_the_monitors_message() {
    let served = Served::start().await;
    let (_, result) = served.ctl(&["promote", "pg0"]).await;
    let e = result.unwrap_err();
    assert_eq!(e.to_string(), "pg0 is already the primary");
    assert_eq!(e.exit_code(), 1);
}

#[tokio::test]
async fn promote_wait_follows_the_switchover() {
    let served = Served::start().await;
    let out = served
        .ctl_ok(&["promote", "pg1", "--force", "--wait"])
        .await;
    assert_eq!(
        out,
        "promoting pg1\n\
         generation 5: primary pg1; pg0 detached (switched over to pg1), pg1 up, pg2 up\n\
         pg1 is the primary (generation 5)\n"
    );
    assert_eq!(
        served.calls(),
        ["GetCluster", "Promote 1 force=true", "WatchCluster"]
    );
}

#[tokio::test]
async fn promote_without_wait_returns_at_once() {
    let served = Served::start().await;
    let out = served.ctl_ok(&["promote", "1"]).await;
    assert_eq!(out, "promoting pg1\n");
}

#[tokio::test]
async fn watch_prints_each_generation_until_interrupted() {
    let served = Served::start().await;
    let (stop, stopped) = oneshot::channel::<()>();
    let config = served.config();
    let watching = tokio::spawn(async move {
        let cli =
            Cli::try_parse_from(["pgwardenctl", "--config", config.to_str().unwrap(), "watch"])
                .unwrap();
        let mut out = Vec::new();
        let result = run(&cli, &mut out, async move {
            let _ = stopped.await;
        })
        .await;
        (String::from_utf8(out).unwrap(), result)
    });
    // Let the watch start, then change something.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    served.ctl(&["detach", "pg1"]).await.1.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    let (out, result) = watching.await.unwrap();
    result.unwrap();
    assert_eq!(
        out,
        "generation 3: primary pg0; pg0 up, pg1 up, pg2 up\n\
         generation 4: primary pg0; pg0 up, pg1 detached (detached by an operator), pg2 up\n"
    );
}

#[tokio::test]
async fn broken_config_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgwarden.toml");
    std::fs::write(&config, "[node]\nname = \"n\"\nbogus = 1\n").unwrap();
    let cli = Cli::try_parse_from(["pgwardenctl", "--config", config.to_str().unwrap()]).unwrap();
    let e = run(&cli, &mut Vec::new(), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(e, CtlError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("bogus"), "{e}");
    assert_eq!(e.exit_code(), 2);

    let missing = Path::new("/nonexistent/pgwarden.toml");
    let cli = Cli::try_parse_from(["pgwardenctl", "--config", missing.to_str().unwrap()]).unwrap();
    let e = run(&cli, &mut Vec::new(), std::future::pending())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot read config file /nonexistent/pgwarden.toml"),
        "{e}"
    );
    assert_eq!(e.exit_code(), 2);
}

// === watchdog ===

/// A watchdog answering with `status`: GetStatus the current one,
/// WatchLeadership every change of it, ending when its sender is dropped.
struct WatchdogStub {
    status: watch::Receiver<WatchdogStatus>,
    calls: Calls,
}

#[tonic::async_trait]
impl Watchdog for WatchdogStub {
    type WatchLeadershipStream = Replies<LeadershipEvent>;

    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<WatchdogStatus>, tonic::Status> {
        record(&self.calls, "GetStatus");
        Ok(Response::new(self.status.borrow().clone()))
    }

    async fn watch_leadership(
        &self,
        _: Request<WatchLeadershipRequest>,
    ) -> Result<Response<Self::WatchLeadershipStream>, tonic::Status> {
        record(&self.calls, "WatchLeadership");
        let statuses = tokio_stream::wrappers::WatchStream::new(self.status.clone());
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            statuses,
            |s| Ok(LeadershipEvent { status: Some(s) }),
        ))))
    }

    async fn report_health(
        &self,
        _: Request<ReportHealthRequest>,
    ) -> Result<Response<ReportHealthReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("not for pgwardenctl"))
    }

    async fn propose_cluster_change(
        &self,
        _: Request<ProposeClusterChangeRequest>,
    ) -> Result<Response<ProposeClusterChangeReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("not for pgwardenctl"))
    }

    async fn forward_operator(
        &self,
        _: Request<pgwarden_proto::v1::OperatorRequest>,
    ) -> Result<Response<pgwarden_proto::v1::OperatorReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("not for pgwardenctl"))
    }

    async fn proxy_routing(
        &self,
        _: Request<pgwarden_proto::v1::ProxyRoutingRequest>,
    ) -> Result<Response<pgwarden_proto::v1::ProxyRoutingReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("not for pgwardenctl"))
    }
}

/// A stub monitor and a stub watchdog on their sockets in one runtime dir.
struct ServedWatchdog {
    served: Served,
    status: watch::Sender<WatchdogStatus>,
    _stop: oneshot::Sender<()>,
}

impl ServedWatchdog {
    async fn start() -> ServedWatchdog {
        let served = Served::start().await;
        let socket = uds::socket_path(served.dir.path(), uds::Daemon::Watchdog);
        let listener = uds::bind(&socket).await.unwrap();
        let mut view = render::watchdog_tests::follower_view();
        for m in &mut view.members {
            m.last_seen_unix_ms = render::now_unix_ms();
        }
        let status = watch::Sender::new(view);
        let stub = WatchdogStub {
            status: status.subscribe(),
            calls: served.calls.clone(),
        };
        let router = tonic::transport::Server::builder().add_service(WatchdogServer::new(stub));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(uds::serve(listener, router, async move {
            let _ = stopped.await;
        }));
        ServedWatchdog {
            served,
            status,
            _stop: stop,
        }
    }
}

#[tokio::test]
async fn watchdog_via_the_config() {
    let w = ServedWatchdog::start().await;
    for command in ["watchdog", "wd"] {
        let (out, result) = w.served.ctl(&[command]).await;
        result.unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "node 2 (10.213.0.12:9000): term 3, leader 1 (10.213.0.11:9000), quorum yes"
        );
        assert_eq!(
            lines[1],
            "delegate IP 10.213.0.100: held by node 1 (10.213.0.11:9000); held here: no"
        );
        assert!(
            lines[3].starts_with("1   10.213.0.11:9000  reachable    0."),
            "{out}"
        );
        assert!(lines[3].ends_with(" ago   leader"), "{out}");
        assert_eq!(lines[4], "2   10.213.0.12:9000  this node    -");
        assert_eq!(lines.len(), 11, "{out}");
        // The monitor is not asked.
        assert_eq!(w.served.calls(), ["GetStatus"]);
    }
}

#[tokio::test]
async fn watchdog_json() {
    let w = ServedWatchdog::start().await;
    let (out, result) = w.served.ctl(&["--json", "watchdog"]).await;
    result.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["leader_id"], 1);
    assert_eq!(v["term"], 3);
    assert_eq!(v["holds_delegate_ip"], false);
    assert_eq!(v["members"][2]["state"], "unreachable");
    assert_eq!(v["record"]["primary"], "pg1");
}

#[tokio::test]
async fn watchdog_socket_flag_skips_the_config_and_socket_is_the_monitors() {
    let w = ServedWatchdog::start().await;
    let dir = w.served.dir.path();
    let watchdog = uds::socket_path(dir, uds::Daemon::Watchdog);
    let monitor = uds::socket_path(dir, uds::Daemon::Monitor);
    let argv = |args: &[&str]| {
        let argv = ["pgwardenctl", "--config", "/nonexistent/pgwarden.toml"]
            .into_iter()
            .chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap()
    };
    let cli = argv(&["wd", "--watchdog-socket", watchdog.to_str().unwrap()]);
    let mut out = Vec::new();
    run(&cli, &mut out, std::future::pending()).await.unwrap();
    assert!(String::from_utf8(out).unwrap().starts_with("node 2 "));

    // `--socket` names the monitor's socket: `watchdog` still needs its own.
    let cli = argv(&["wd", "--socket", monitor.to_str().unwrap()]);
    let e = run(&cli, &mut Vec::new(), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(e, CtlError::Config(_)), "{e:?}");
    assert_eq!(w.served.calls(), ["GetStatus"]);
}

#[tokio::test]
async fn no_watchdog_is_a_connection_error() {
    // A node with the monitor but no watchdog (watchdog.enabled = false).
    let served = Served::start().await;
    let (out, result) = served.ctl(&["watchdog"]).await;
    let e = result.unwrap_err();
    let path = uds::socket_path(served.dir.path(), uds::Daemon::Watchdog);
    assert_eq!(
        e.to_string(),
        format!(
            "cannot reach pgwarden-watchdog at {}: No such file or directory (os error 2) (is it running? watchdog.enabled?)",
            path.display()
        )
    );
    assert_eq!(e.exit_code(), 2);
    assert_eq!(out, "");
    assert!(served.calls().is_empty());
}

#[tokio::test]
async fn watchdog_watch_prints_each_change_until_interrupted() {
    let w = ServedWatchdog::start().await;
    let (stop, stopped) = oneshot::channel::<()>();
    let config = w.served.config();
    let watching = tokio::spawn(async move {
        let interrupt = async move {
            let _ = stopped.await;
        };
        run_ctl(&config, &["watchdog", "--watch"], interrupt).await
    });
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(200));
    pause().await;
    // Node 1 is lost: node 2 leads in term 4 and takes the delegate IP.
    w.status.send_modify(|s| {
        s.term = 4;
        s.leader_id = 2;
        s.members[0].state = pgwarden_proto::v1::MemberState::Unreachable as i32;
    });
    pause().await;
    // A change the line leaves out (a down vote): no line.
    w.status.send_modify(|s| {
        if let Some(r) = s.record.as_mut() {
            r.down_votes.clear();
        }
    });
    pause().await;
    w.status.send_modify(|s| {
        s.delegate_ip_holder = 2;
        s.holds_delegate_ip = true;
    });
    pause().await;
    stop.send(()).unwrap();
    let (out, result) = watching.await.unwrap();
    result.unwrap();
    assert_eq!(
        out,
        "term 3, leader 1 (10.213.0.11:9000), quorum yes, unreachable: 3, delegate IP on node 1, \
         generation 4: primary pg1, down pg2, detached pg0\n\
         term 4, leader 2 (this node), quorum yes, unreachable: 1 3, delegate IP on node 1, \
         generation 4: primary pg1, down pg2, detached pg0\n\
         term 4, leader 2 (this node), quorum yes, unreachable: 1 3, delegate IP on this node, \
         generation 4: primary pg1, down pg2, detached pg0\n"
    );
    assert_eq!(w.served.calls(), ["WatchLeadership"]);
}

#[tokio::test]
async fn watchdog_watch_json_and_a_lost_watchdog() {
    let w = ServedWatchdog::start().await;
    let config = w.served.config();
    let watching = tokio::spawn(async move {
        let args = ["--json", "wd", "--watch"];
        run_ctl(&config, &args, std::future::pending()).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // The watchdog stops: its stream ends.
    drop(w);
    // (The stream's end, not the server's drain, ends the watch.)
    let (out, result) = watching.await.unwrap();
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["term"], 3);
    assert_eq!(out.lines().count(), 1, "{out}");
    let e = result.unwrap_err();
    assert!(
        e.to_string().starts_with("lost pgwarden-watchdog at "),
        "{e}"
    );
    assert_eq!(e.exit_code(), 2);
}
