//! The monitor with a watchdog: decisions by the nodes together.
//!
//! Every node's monitor checks every backend and reports what it sees to its
//! watchdog (`ReportHealth`); the watchdogs commit those opinions through
//! Raft, so each node knows which backends a quorum sees down (pgpool-II's
//! failover_require_consensus). Only the monitor on the Raft leader's node
//! runs the failover [`Machine`](crate::machine::Machine), with
//! [`Decider::Quorum`](crate::machine::Decider::Quorum): a backend is
//! down when a quorum says so, never on this node's word alone. Each new
//! generation it decides is proposed to the watchdogs as a compare-and-set
//! (`ProposeClusterChange`); only a committed generation counts, and the
//! failover actions that follow it run only after it is committed. Every
//! monitor, leader or not, publishes the committed record to its proxy, so
//! all proxies route to the same primary.
//!
//! A node whose checks fail but whose peers disagree does nothing but say
//! so: the backend shows as quarantined in its `status`.
//!
//! Fencing the minority: a node whose watchdog loses the quorum cannot know
//! whether the majority has moved the primary, so its monitor says so
//! (`no_quorum`) and its proxy stops routing at once. That alone would
//! rest on every hop being quick; what the leader relies on is the lease
//! (`pgwarden_proto::lease`): each proxy takes it from its own node's
//! watchdog (not through this monitor) and stops routing on its own when it
//! runs out, and the leader's monitor promotes only once every lease on an
//! older generation has ended (the coordinator's fence).
//!
//! The node that decides also keeps the failover history
//! ([`Timeline`](crate::timeline::Timeline)), with the quorum's verdict and
//! the fence delay among its phases.
//!
//! The decisions themselves (leadership, the fence delay, proposals and
//! refusals, the proxies' fencing, where operator requests go) are the pure
//! [`Coordinator`]'s; this module is its driver: it turns channel and timer
//! events into [`Input`]s and performs the [`Output`]s.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use pgwarden_proto::uds::{self, Daemon};
use pgwarden_proto::v1::watchdog_client::WatchdogClient;
use pgwarden_proto::v1::{OperatorRequest, ProposeClusterChangeRequest, WatchdogStatus};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::coordinator::{Coordinator, Input, Output, Setup, TICK, unreported};
use crate::parts::{Parts, StartError};
use crate::perform::perform;
use crate::service::Command;
use crate::settings::Settings;
use crate::timeline::{Timeline, now_ms};

/// Where an operator's answer goes.
type Reply = tokio::sync::oneshot::Sender<Result<String, String>>;

/// Runs the monitor with the watchdog until `shutdown` completes.
pub(crate) async fn run(
    settings: Settings,
    mut p: Parts,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let path = uds::socket_path(&settings.runtime_dir, Daemon::Watchdog);
    let mut client = WatchdogClient::new(uds::connect_lazy(&path));
    // The status page reads the same channel.
    let status_tx = p.watchdog_tx.clone();
    let mut status_rx = status_tx.subscribe();
    // Its end (it only ends with a panic before the stop) ends this loop,
    // as the channel's closing did when the follower held its only sender.
    let mut follower = tokio::spawn(follow_watchdog(client.clone(), status_tx, p.stop.clone()));
    let (opinion_tx, opinion_rx) = watch::channel::<BTreeMap<String, bool>>(BTreeMap::new());
    tokio::spawn(report_health(
        client.clone(),
        opinion_rx,
        status_rx.clone(),
        p.stop.clone(),
    ));
    let setup = Setup {
        node: settings.node.clone(),
        backends: settings.backends.clone(),
        specs: settings.specs(),
        limits: settings.limits,
        rejoin_enabled: settings.rejoin_enabled(),
        synchronous: settings.keeper(),
    };
    let mut coordinator = Coordinator::new(setup, p.current_tx.borrow().clone())
        .with_timeline(Timeline::load(&settings.state_dir));
    p.history_tx.send_replace(coordinator.timeline().records());
    // A late tick delays the next ones instead of bursting: the tick count
    // may run behind the clock (a longer fence delay), never ahead of it.
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    // systemd's watchdog hears from this loop (it turns at least every
    // tick): a stuck loop stops it.
    let mut pinger = pgwarden_daemon::notify::Pinger::from_env();
    loop {
        pinger.ping();
        let input = tokio::select! {
            _ = &mut shutdown => break,
            _ = ticks.tick() => None,
            _ = &mut follower => break,
            Some(e) = p.events.recv() => Some(Input::Event(e)),
            changed = status_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let status = status_rx.borrow_and_update().clone();
                Some(Input::Watchdog(status.map(Box::new)))
            }
            Some(c) = p.commands.recv() => Some(match c {
                Command::Change { ask, forwarded, reply } => Input::Operator { ask, forwarded, reply },
                Command::Recheck => Input::Recheck,
                Command::Routed { generation, at_ms, detail } => Input::Routed { generation, at_ms, detail },
            }),
        };
        let history = coordinator.timeline().version();
        coordinator.set_wall_ms(now_ms());
        let outputs = match input {
            Some(input) => coordinator.step(input),
            None => coordinator.tick(),
        };
        let mut outputs = VecDeque::from(outputs);
        while let Some(output) = outputs.pop_front() {
            match output {
                Output::Perform(action) => perform(action, &settings, &p.events_tx),
                // The last of its batch: the round goes on with the answer.
                Output::Propose(request) => {
                    let answer = propose(&mut client, request).await;
                    // A round may chain proposals (10 s each at worst):
                    // each answered one shows the loop still turns.
                    pinger.ping();
                    coordinator.set_wall_ms(now_ms());
                    outputs.extend(coordinator.step(Input::Proposed(answer)));
                }
                Output::Opinion(opinion) => {
                    opinion_tx.send_replace(opinion);
                }
                Output::Publish(state) => {
                    let _ = p.generations.send(state);
                }
                Output::Current(state) => {
                    p.current_tx.send_replace(state);
                }
                Output::Ready => {
                    p.ready_tx.send_replace(true);
                }
                Output::Reply { to, answer } => {
                    let _ = to.send(answer);
                }
                Output::Forward { request, reply } => forward(&client, request, reply),
                Output::Recheck => p.recheck.notify_waiters(),
            }
        }
        if coordinator.timeline().version() != history {
            p.history_tx.send_replace(coordinator.timeline().records());
        }
    }
    p.finish().await;
    Ok(())
}

/// Hands an operator's request to the leader's monitor through the
/// watchdogs, and passes its answer back.
fn forward(watchdog: &WatchdogClient<Channel>, request: OperatorRequest, reply: Reply) {
    let mut watchdog = watchdog.clone();
    tokio::spawn(async move {
        let answer = match watchdog.forward_operator(request).await {
            Ok(r) => Ok(format!(
                "{} (decided by the leader's monitor)",
                r.into_inner().message
            )),
            // The leader's monitor's (or watchdog's) own refusal.
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                Err(status.message().to_owned())
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ) =>
            {
                Err(format!(
                    "the leader's monitor did not answer in time ({}): the change may still be made; check `pgwardenctl status`",
                    status.message()
                ))
            }
            Err(status) => Err(format!(
                "cannot hand the request to the leader's monitor: {}",
                status.message()
            )),
        };
        let _ = reply.send(answer);
    });
}

/// Proposes a generation to the watchdogs: committed, or why not.
async fn propose(
    client: &mut WatchdogClient<Channel>,
    request: ProposeClusterChangeRequest,
) -> Result<(), String> {
    let call = client.propose_cluster_change(request);
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(Ok(r)) if r.get_ref().committed => Ok(()),
        Ok(Ok(r)) => Err(r.into_inner().reason),
        Ok(Err(e)) => Err(e.message().to_owned()),
        Err(_) => Err("the watchdog did not answer within 10 s".into()),
    }
}

/// Keeps this node's votes in the committed record equal to its opinion,
/// reporting (and retrying) whatever differs.
async fn report_health(
    mut client: WatchdogClient<Channel>,
    mut desired: watch::Receiver<BTreeMap<String, bool>>,
    mut status: watch::Receiver<Option<WatchdogStatus>>,
    stop: CancellationToken,
) {
    loop {
        let votes = unreported(
            &desired.borrow_and_update(),
            status.borrow_and_update().as_ref(),
        );
        let mut failed = false;
        for vote in votes {
            let (backend, down) = (vote.backend.clone(), vote.down);
            match tokio::time::timeout(Duration::from_secs(10), client.report_health(vote)).await {
                Ok(Ok(_)) => tracing::info!(backend, down, "reported to the watchdog"),
                Ok(Err(e)) => {
                    tracing::debug!(backend, error = %e.message(), "health report not committed; retrying");
                    failed = true;
                }
                Err(_) => failed = true,
            }
        }
        let retry = tokio::time::sleep(Duration::from_millis(if failed { 500 } else { 2000 }));
        tokio::select! {
            _ = stop.cancelled() => return,
            r = desired.changed() => if r.is_err() { return },
            r = status.changed() => if r.is_err() { return },
            _ = retry => {}
        }
    }
}

/// Streams the watchdog's status into `out`, reconnecting as needed.
async fn follow_watchdog(
    client: WatchdogClient<Channel>,
    out: watch::Sender<Option<WatchdogStatus>>,
    stop: CancellationToken,
) {
    // Without its watchdog this node cannot know the quorum's view: None.
    uds::follow_watchdog(
        client,
        &stop,
        "lost the local watchdog: this monitor stops deciding until it is back",
        "watchdog reachable again",
        |s| {
            out.send_replace(s);
        },
    )
    .await;
}
