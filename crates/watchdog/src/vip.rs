//! The delegate IP: runs `if_up_cmd` + `arping_cmd` when the lease says
//! acquire, `if_down_cmd` when it says release, one at a time, each through
//! `/bin/sh -c` with `$_IP_$` replaced, a timeout, and its output logged.
//! The lease states what it wants and never waits for the commands: while
//! one runs, only the newest wish is kept (an acquire and release that came
//! and went meanwhile run nothing).
//!
//! While the IP is up, a guard process (this binary with `--vip-guard`)
//! takes it down (`if_down_cmd`) when the watchdog can no longer do so
//! itself: when the watchdog dies (`kill -9`, a crash), and when it stops
//! confirming its lead (a dead-man's switch: a frozen or stalled watchdog,
//! `SIGSTOP`). The watchdog's loop hands over, about every tick while its
//! lease holds, the time a quorum last confirmed its lead
//! ([`crate::core::Output::VipConfirmed`]); it goes to the guard's stdin as
//! one decimal line of `CLOCK_BOOTTIME` ms. The guard takes the IP down
//! once the newest such time is [`GUARD_GRACE`] old, then exits. This task
//! notices the guard's exit and takes the IP up again only while the lease
//! still wants it *and* a confirmation younger than [`GUARD_GRACE`] came
//! (a watchdog that resumes after a freeze still believes in its lease,
//! which counts ticks, until it hears of the new leader: its confirmations
//! have stopped, so it does not take the IP back).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::sync::watch;

use crate::VipAction;
use crate::settings::{ELECTION_TICKS, Settings, TICK};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the guard keeps the delegate IP up after the newest lead
/// confirmation it was sent: one election timeout, `E` ([`ELECTION_TICKS`]
/// [`TICK`]s, 1 s).
///
/// # Why no other node holds the IP before the guard drops it
///
/// A confirmation at `c` (`CLOCK_BOOTTIME` of this host) is Raft's
/// ReadIndex round: heartbeats sent at `c`, answered by a quorum of this
/// leader's term ([`crate::WatchdogNode::confirm_lead`]). Let `B` become
/// leader in a later term at `t_B`, voted for by a majority `M`. A voter in
/// `M` answers this leader's term only until it votes for `B`, and any
/// quorum meets `M` (this leader votes only after stepping down); so
/// every confirmation this leader holds is of a round that a voter in `M`
/// answered before voting for `B`: `c <= t_B`, however long messages took
/// and however long this watchdog was frozen. The guard drops the IP by
/// `c + G + GUARD_POLL +` the time `if_down_cmd` takes. `B` acquires no sooner than `2E` ticks
/// after `t_B` ([`crate::lease`]), ticks coming late, never early: at
/// `t_B + 2E` or later. With `G = E` the guard has fired a full `E` minus a
/// poll before `B` may acquire (this host's and `B`'s clocks are only
/// compared as durations: both run at the same rate, as the lease
/// assumes). The same bound keeps this task from taking the IP up again
/// on a confirmation older than `G`.
///
/// The guard measures on `CLOCK_BOOTTIME`, so a host that was suspended
/// sees the elapsed time at once when it resumes. A guard frozen along
/// with its watchdog (the whole host or service stopped) fires as soon as
/// it runs again, within a [`GUARD_POLL`].
pub const GUARD_GRACE: Duration = TICK.saturating_mul(ELECTION_TICKS as u32);

/// How often the guard looks at its parent and at the clock.
pub const GUARD_POLL: Duration = Duration::from_millis(50);

/// [`GUARD_GRACE`] in ms.
const GUARD_GRACE_MS: u64 = GUARD_GRACE.as_millis() as u64;

// The guard fires, its poll included, at least half an election timeout
// before another leader may acquire (`2E` after its election, see
// [`GUARD_GRACE`]), and only after several rounds of confirmations (one
// per tick) went missing.
const _: () = {
    let e = ELECTION_TICKS as u128 * TICK.as_millis();
    assert!(GUARD_GRACE.as_millis() + GUARD_POLL.as_millis() + e / 2 <= 2 * e);
    assert!(GUARD_GRACE.as_millis() >= 5 * TICK.as_millis());
};

/// Whether a lead confirmation at `confirmed` (`CLOCK_BOOTTIME` ms) still
/// lets this node hold the IP at `now`: younger than [`GUARD_GRACE`].
pub fn fresh(confirmed: u64, now: u64) -> bool {
    now.saturating_sub(confirmed) < GUARD_GRACE_MS
}

/// Why the guard takes the IP down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fire {
    /// The watchdog died (the guard's parent changed).
    ParentGone,
    /// The watchdog's newest lead confirmation is this many ms old
    /// (at least [`GUARD_GRACE`]).
    Unconfirmed(u64),
}

/// The guard's decision at `now` (`CLOCK_BOOTTIME` ms): whether its parent
/// still lives and the newest lead confirmation it was sent, `confirmed`.
pub fn verdict(parent_alive: bool, confirmed: u64, now: u64) -> Option<Fire> {
    if !parent_alive {
        Some(Fire::ParentGone)
    } else if !fresh(confirmed, now) {
        Some(Fire::Unconfirmed(now.saturating_sub(confirmed)))
    } else {
        None
    }
}

/// What this task does once the guard has exited (it took the IP down)
/// while the IP was up here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterGuard {
    /// The lease still wants the IP and the lead is confirmed: take it up
    /// again.
    TakeAgain,
    /// The lease still wants it, but the lead has not been confirmed
    /// within [`GUARD_GRACE`]: take it up again once it is.
    AwaitConfirmation,
    /// The lease no longer wants it: it is down, as wanted.
    LetGo,
}

/// This task's reaction, at `now`, to a guard that exited: given the
/// lease's newest wish and the newest lead confirmation.
pub fn after_guard(wish: Option<VipAction>, confirmed: Option<u64>, now: u64) -> AfterGuard {
    match (wish, confirmed) {
        (Some(VipAction::Acquire), Some(c)) if fresh(c, now) => AfterGuard::TakeAgain,
        (Some(VipAction::Acquire), _) => AfterGuard::AwaitConfirmation,
        _ => AfterGuard::LetGo,
    }
}

/// Builds the guard's command: the IP, `if_down_cmd`, and the lead
/// confirmation it starts from; `None` if it cannot be built.
type GuardCommand =
    fn(ip: &str, if_down_cmd: &str, confirmed: u64) -> Option<tokio::process::Command>;

/// The real guard: this binary with `--vip-guard`.
fn guard_command(ip: &str, if_down_cmd: &str, confirmed: u64) -> Option<tokio::process::Command> {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tracing::warn!(error = %e, "cannot find this program to start the delegate-IP guard");
            return None;
        }
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["--vip-guard", "--vip", ip, "--vip-down-cmd", if_down_cmd])
        .arg("--vip-confirmed")
        .arg(confirmed.to_string());
    Some(cmd)
}

/// A running guard, and the task feeding it the lead confirmations.
struct Guard {
    /// The guard process (`pgwarden-watchdog --vip-guard`).
    child: tokio::process::Child,
    /// Writes each new lead confirmation to its stdin.
    feeder: tokio::task::JoinHandle<()>,
}

impl Guard {
    /// Starts the guard from the lead confirmation `confirmed`; later ones
    /// from `confirmations` go to its stdin.
    fn start(
        command: GuardCommand,
        ip: &str,
        if_down_cmd: &str,
        confirmed: u64,
        mut confirmations: watch::Receiver<Option<u64>>,
    ) -> Option<Guard> {
        let mut cmd = command(ip, if_down_cmd, confirmed)?;
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the delegate-IP guard; a killed or frozen watchdog would leave the IP up");
                return None;
            }
        };
        let stdin = child.stdin.take();
        // Only what comes after `confirmed`: it is on the command line.
        confirmations.borrow_and_update();
        let feeder = tokio::spawn(async move {
            let Some(mut stdin) = stdin else { return };
            while confirmations.changed().await.is_ok() {
                let Some(at) = *confirmations.borrow_and_update() else {
                    continue;
                };
                // Fails once the guard is gone.
                if stdin.write_all(format!("{at}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        Some(Guard { child, feeder })
    }

    /// Stops the guard (it must not take the IP down any more).
    async fn stop(mut self) {
        self.feeder.abort();
        if let Err(e) = self.child.kill().await {
            tracing::debug!(error = %e, "the delegate-IP guard was already gone");
        }
    }
}

/// Waits until the guard (if any) exits; never returns without one.
async fn exited(guard: &mut Option<Guard>) -> std::io::Result<std::process::ExitStatus> {
    match guard {
        Some(g) => g.child.wait().await,
        None => std::future::pending().await,
    }
}

/// Runs delegate-IP actions in order; publishes whether this node holds the IP.
///
/// `confirmed` carries, while the lease holds, when a quorum last
/// confirmed this node's lead: the guard's heartbeat (see the module docs).
pub async fn run(
    settings: Settings,
    wanted: watch::Receiver<Option<VipAction>>,
    confirmed: watch::Receiver<Option<u64>>,
    holding: watch::Sender<bool>,
) {
    run_with(settings, wanted, confirmed, holding, guard_command).await;
}

/// [`run`], with the guard built by `command`.
async fn run_with(
    settings: Settings,
    mut wanted: watch::Receiver<Option<VipAction>>,
    mut confirmed: watch::Receiver<Option<u64>>,
    holding: watch::Sender<bool>,
    command: GuardCommand,
) {
    let mut guard: Option<Guard> = None;
    let mut done: Option<VipAction> = None;
    // The lease wants the IP, but it is not up here for want of a fresh
    // lead confirmation: taken up once one comes.
    let mut awaiting = false;
    loop {
        tokio::select! {
            changed = wanted.changed() => {
                // Ends once the sender is gone and its last wish has been seen.
                if changed.is_err() {
                    break;
                }
                let Some(action) = *wanted.borrow_and_update() else {
                    continue;
                };
                if done == Some(action) {
                    continue;
                }
                done = Some(action);
                let Some(ip) = settings.delegate_ip else {
                    // No delegate IP configured: only escalation commands run.
                    holding.send_replace(action == VipAction::Acquire);
                    escalate(&settings, action).await;
                    continue;
                };
                let ip = ip.to_string();
                match action {
                    VipAction::Acquire => {
                        tracing::info!(%ip, "taking the delegate IP");
                        (guard, awaiting) = take(&settings, &ip, &confirmed, &holding, command).await.split();
                    }
                    VipAction::Release => {
                        tracing::info!(%ip, "releasing the delegate IP");
                        awaiting = false;
                        if let Some(g) = guard.take() {
                            g.stop().await;
                        }
                        run_command("if_down_cmd", &settings.if_down_cmd, &ip).await;
                        holding.send_replace(false);
                    }
                }
                escalate(&settings, action).await;
            }
            status = exited(&mut guard) => {
                // The guard fired (the watchdog's lead went unconfirmed:
                // this process was stalled or frozen). Its if_down_cmd may
                // have failed, or raced an if_up_cmd: the IP is taken down
                // here too, so it is known down whatever comes next.
                guard = None;
                let ip = ip_text(&settings);
                run_command("if_down_cmd", &settings.if_down_cmd, &ip).await;
                holding.send_replace(false);
                let newest = *confirmed.borrow();
                let now = pgwarden_proto::lease::monotonic_ms();
                let age = newest.map(|c| Duration::from_millis(now.saturating_sub(c)));
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                match after_guard(done, newest, now) {
                    AfterGuard::TakeAgain => {
                        tracing::warn!(%ip, guard = %status, confirmed_ago = ?age, grace = ?GUARD_GRACE, "the delegate-IP guard took the IP down (this watchdog stalled?); the lease still holds and the lead is confirmed: taking it up again");
                        (guard, awaiting) = take(&settings, &ip, &confirmed, &holding, command).await.split();
                    }
                    AfterGuard::AwaitConfirmation => {
                        tracing::warn!(%ip, guard = %status, confirmed_ago = ?age, grace = ?GUARD_GRACE, "the delegate-IP guard took the IP down: this watchdog's lead went unconfirmed (stalled or frozen?); the IP stays down until a quorum confirms the lead again");
                        awaiting = true;
                    }
                    AfterGuard::LetGo => {
                        tracing::warn!(%ip, guard = %status, "the delegate-IP guard took the IP down; the lease no longer holds it");
                    }
                }
            }
            changed = confirmed.changed(), if awaiting => {
                if changed.is_err() {
                    awaiting = false;
                    continue;
                }
                let now = pgwarden_proto::lease::monotonic_ms();
                let newest = *confirmed.borrow_and_update();
                if after_guard(done, newest, now) == AfterGuard::TakeAgain {
                    let ip = ip_text(&settings);
                    tracing::info!(%ip, "the lead is confirmed again: taking the delegate IP again");
                    (guard, awaiting) = take(&settings, &ip, &confirmed, &holding, command).await.split();
                }
            }
        }
    }
}

/// What came of bringing the IP up ([`take`]).
enum Taken {
    /// It is up, guarded (`None`: the guard could not start).
    Up(Option<Guard>),
    /// It is down: the lead was not confirmed lately, or the guard fired
    /// while it came up. Taken up once the lead is confirmed.
    Unconfirmed,
    /// `if_up_cmd` failed: it stays down (until the lease wants it again).
    Failed,
}

impl Taken {
    /// The guard, and whether to wait for a fresh lead confirmation.
    fn split(self) -> (Option<Guard>, bool) {
        match self {
            Taken::Up(guard) => (guard, false),
            Taken::Unconfirmed => (None, true),
            Taken::Failed => (None, false),
        }
    }
}

/// Brings the IP up, guarded, if the lead is confirmed now: the guard
/// first (so a watchdog frozen during `if_up_cmd` still has one), then
/// `if_up_cmd`, then, if the guard did not fire meanwhile, `arping_cmd`.
/// `holding` says whether the IP is up.
async fn take(
    settings: &Settings,
    ip: &str,
    confirmed: &watch::Receiver<Option<u64>>,
    holding: &watch::Sender<bool>,
    command: GuardCommand,
) -> Taken {
    let newest = *confirmed.borrow();
    let now = pgwarden_proto::lease::monotonic_ms();
    let Some(at) = newest.filter(|c| fresh(*c, now)) else {
        tracing::info!(%ip, "the lead is not confirmed lately: the delegate IP waits until it is");
        return Taken::Unconfirmed;
    };
    let mut guard = Guard::start(command, ip, &settings.if_down_cmd, at, confirmed.clone());
    if !run_command("if_up_cmd", &settings.if_up_cmd, ip).await {
        if let Some(g) = guard.take() {
            g.stop().await;
        }
        return Taken::Failed;
    }
    if let Some(g) = guard.as_mut()
        && !matches!(g.child.try_wait(), Ok(None))
    {
        // It fired while the IP came up: its if_down_cmd may have run
        // before: take it down here.
        tracing::warn!(%ip, "the delegate-IP guard fired while the IP came up: taking it down");
        run_command("if_down_cmd", &settings.if_down_cmd, ip).await;
        holding.send_replace(false);
        return Taken::Unconfirmed;
    }
    holding.send_replace(true);
    if !settings.arping_cmd.is_empty() {
        run_command("arping_cmd", &settings.arping_cmd, ip).await;
    }
    Taken::Up(guard)
}

/// The guard process: takes the IP down once its parent (the watchdog) is
/// gone or the newest lead confirmation it was sent (`confirmed` at first,
/// then one decimal `CLOCK_BOOTTIME` ms per stdin line) is
/// [`GUARD_GRACE`] old ([`verdict`]), then exits.
pub fn guard(ip: &str, if_down_cmd: &str, confirmed: u64) -> std::process::ExitCode {
    let parent = nix::unistd::getppid();
    let newest = Arc::new(AtomicU64::new(confirmed));
    let heard = Arc::clone(&newest);
    // Reads the heartbeats; at end of input (the watchdog closed the pipe
    // or died) the last one stands.
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if let Ok(at) = line.trim().parse::<u64>() {
                heard.fetch_max(at, Ordering::Relaxed);
            }
        }
    });
    let why = loop {
        std::thread::sleep(GUARD_POLL);
        let alive = nix::unistd::getppid() == parent;
        let now = pgwarden_proto::lease::monotonic_ms();
        if let Some(why) = verdict(alive, newest.load(Ordering::Relaxed), now) {
            break why;
        }
    };
    match why {
        Fire::ParentGone => {
            eprintln!("pgwarden-watchdog: the watchdog died holding {ip}; running if_down_cmd");
        }
        Fire::Unconfirmed(ms) => eprintln!(
            "pgwarden-watchdog: the watchdog holding {ip} has not confirmed its lead for {ms} ms (grace {GUARD_GRACE:?}: stalled or frozen?); running if_down_cmd"
        ),
    }
    let command = if_down_cmd.replace("$_IP_$", ip);
    let Ok(mut child) = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&command)
        .spawn()
    else {
        return std::process::ExitCode::FAILURE;
    };
    // Bounded like the watchdog's own commands: a hung if_down_cmd must
    // not leave a guard the watchdog takes for a live one.
    let deadline = std::time::Instant::now() + COMMAND_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return std::process::ExitCode::SUCCESS,
            Ok(Some(_)) | Err(_) => return std::process::ExitCode::FAILURE,
            Ok(None) if std::time::Instant::now() >= deadline => {
                eprintln!(
                    "pgwarden-watchdog: if_down_cmd still runs after {COMMAND_TIMEOUT:?}: killed"
                );
                let _ = child.kill();
                let _ = child.wait();
                return std::process::ExitCode::FAILURE;
            }
            Ok(None) => std::thread::sleep(GUARD_POLL),
        }
    }
}

/// The delegate IP as the commands' `$_IP_$` (empty when none is set).
fn ip_text(settings: &Settings) -> String {
    settings
        .delegate_ip
        .map(|i| i.to_string())
        .unwrap_or_default()
}

/// Runs `escalation_cmd` after an acquire, `de_escalation_cmd` after a
/// release, when set (pgpool-II's escalation hooks).
async fn escalate(settings: &Settings, action: VipAction) {
    let (name, cmd) = match action {
        VipAction::Acquire => ("escalation_cmd", &settings.escalation_cmd),
        VipAction::Release => ("de_escalation_cmd", &settings.de_escalation_cmd),
    };
    if !cmd.is_empty() {
        let ip = ip_text(settings);
        run_command(name, cmd, &ip).await;
    }
}

/// Runs one command; true when it exited 0: `$_IP_$` replaced, then the
/// daemons' one hook runner ([`pgwarden_daemon::hook::run`]: `/bin/sh -c` in
/// its own process group, every output line logged, the whole group killed
/// after [`COMMAND_TIMEOUT`]).
pub async fn run_command(name: &str, template: &str, ip: &str) -> bool {
    let command = template.replace("$_IP_$", ip);
    match pgwarden_daemon::hook::run(name, &command, COMMAND_TIMEOUT).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(hook = name, command = %command, error = %e, "command failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = GUARD_GRACE_MS;

    #[test]
    fn the_grace_is_one_election_timeout_well_before_another_leader_may_acquire() {
        let e = crate::NodeConfig::new(1, vec![1]).election_tick;
        assert_eq!(e, ELECTION_TICKS, "the daemon's election timeout");
        assert_eq!(GUARD_GRACE, TICK * e as u32);
        assert_eq!(GUARD_GRACE, Duration::from_secs(1));
        // A new leader acquires no sooner than 2E after its election; every
        // confirmation the old one holds is from before that election.
        let new_leader_acquires = TICK * 2 * e as u32;
        assert!(GUARD_GRACE + GUARD_POLL < new_leader_acquires);
        assert!(new_leader_acquires - (GUARD_GRACE + GUARD_POLL) >= TICK * e as u32 / 2);
    }

    #[test]
    fn the_guard_fires_when_its_parent_is_gone_or_the_lead_went_unconfirmed_for_the_grace() {
        let c = 50_000;
        // (case, parent alive, now, verdict)
        let cases: &[(&str, bool, u64, Option<Fire>)] = &[
            ("just confirmed", true, c, None),
            ("confirmed a tick ago", true, c + 100, None),
            ("just within the grace", true, c + G - 1, None),
            ("the grace is over", true, c + G, Some(Fire::Unconfirmed(G))),
            (
                "resumed from a long freeze",
                true,
                c + 60_000,
                Some(Fire::Unconfirmed(60_000)),
            ),
            ("parent gone", false, c, Some(Fire::ParentGone)),
            (
                "parent gone, unconfirmed too",
                false,
                c + G,
                Some(Fire::ParentGone),
            ),
            ("a confirmation from after now", true, c - 5, None),
        ];
        for &(case, alive, now, expected) in cases {
            assert_eq!(verdict(alive, c, now), expected, "{case}");
        }
    }

    #[test]
    fn after_its_guard_fired_the_ip_is_taken_again_only_on_a_fresh_confirmation() {
        let now = 80_000;
        use VipAction::{Acquire, Release};
        // (case, wish, newest confirmation, reaction)
        let cases: &[(&str, Option<VipAction>, Option<u64>, AfterGuard)] = &[
            (
                "confirmed lately",
                Some(Acquire),
                Some(now - 100),
                AfterGuard::TakeAgain,
            ),
            (
                "confirmed at the grace",
                Some(Acquire),
                Some(now - G),
                AfterGuard::AwaitConfirmation,
            ),
            (
                "resumed after a freeze: stale",
                Some(Acquire),
                Some(now - 6_000),
                AfterGuard::AwaitConfirmation,
            ),
            (
                "the lease holds, no confirmation",
                Some(Acquire),
                None,
                AfterGuard::AwaitConfirmation,
            ),
            (
                "released meanwhile",
                Some(Release),
                Some(now),
                AfterGuard::LetGo,
            ),
            ("no wish", None, Some(now), AfterGuard::LetGo),
        ];
        for &(case, wish, confirmed, expected) in cases {
            assert_eq!(after_guard(wish, confirmed, now), expected, "{case}");
        }
    }

    /// A guard that "fires" 300 ms after it starts.
    fn short_lived_guard(_: &str, _: &str, _: u64) -> Option<tokio::process::Command> {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args(["-c", "sleep 0.3"]);
        Some(cmd)
    }

    fn settings_in(dir: &std::path::Path, log: &std::path::Path) -> Settings {
        Settings {
            node_name: "n".into(),
            runtime_dir: dir.to_path_buf(),
            state_dir: dir.to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            members: vec!["n".into()],
            id: 1,
            key: vec![0; 32],
            delegate_ip: Some("10.9.9.9".parse().unwrap()),
            if_up_cmd: format!("echo up $_IP_$ >> {}", log.display()),
            if_down_cmd: format!("echo down $_IP_$ >> {}", log.display()),
            arping_cmd: String::new(),
            escalation_cmd: String::new(),
            de_escalation_cmd: String::new(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            tls: None,
        }
    }

    fn ups(log: &std::path::Path) -> usize {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("up"))
            .count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fired_guard_is_replaced_while_the_lead_is_confirmed_and_the_ip_waits_otherwise() {
        let dir = std::env::temp_dir().join(format!("pgwarden-vip-guard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let _ = std::fs::remove_file(&log);
        let settings = settings_in(&dir, &log);
        let now = pgwarden_proto::lease::monotonic_ms;
        let (tx, rx) = watch::channel(None);
        let (confirmed_tx, confirmed) = watch::channel(None);
        let (holding_tx, mut holding) = watch::channel(false);
        let task = tokio::spawn(run_with(
            settings,
            rx,
            confirmed,
            holding_tx,
            short_lived_guard,
        ));
        let wait = |what: &'static str, f: Box<dyn Fn() -> bool + Send>| async move {
            let t = std::time::Instant::now();
            while !f() {
                assert!(t.elapsed() < Duration::from_secs(10), "waiting for {what}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };

        // Wanted, but not confirmed yet: it waits for a confirmation.
        tx.send_replace(Some(VipAction::Acquire));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(ups(&log), 0);
        assert!(!*holding.borrow());
        // Confirmed every 50 ms (the loop's heartbeat): up, and each time
        // the guard fires, up again.
        let beating = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let b = Arc::clone(&beating);
        let tx2 = confirmed_tx.clone();
        let beater = tokio::spawn(async move {
            while b.load(Ordering::Relaxed) {
                tx2.send_replace(Some(now()));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        holding.wait_for(|h| *h).await.unwrap();
        let l = log.clone();
        wait("the guard replaced twice", Box::new(move || ups(&l) >= 3)).await;
        // Each time a guard exited (this fake one runs no if_down_cmd, as a
        // guard killed or whose command failed), the IP was taken down
        // before it came up again: never up twice in a row.
        let ran = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = ran.lines().collect();
        assert!(
            lines
                .windows(2)
                .all(|w| !(w[0].starts_with("up") && w[1].starts_with("up"))),
            "{ran}"
        );

        // The loop stalls: no new confirmations. Once the newest is older
        // than the grace, a fired guard is not replaced, the IP stays down.
        beating.store(false, Ordering::Relaxed);
        beater.await.unwrap();
        // By then the newest confirmation is past the grace and the last
        // guard started on it has fired.
        tokio::time::sleep(GUARD_GRACE).await;
        tokio::time::timeout(Duration::from_secs(10), holding.wait_for(|h| !*h))
            .await
            .expect("down once unconfirmed for the grace")
            .unwrap();
        let settled = ups(&log);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(ups(&log), settled, "not taken up again while unconfirmed");
        assert!(!*holding.borrow());

        // A fresh confirmation: taken up again.
        confirmed_tx.send_replace(Some(now()));
        let l = log.clone();
        wait("taken again", Box::new(move || ups(&l) > settled)).await;
        holding.wait_for(|h| *h).await.unwrap();

        // Released: the guard is stopped and the IP goes down.
        confirmed_tx.send_replace(None);
        tx.send_replace(Some(VipAction::Release));
        holding.wait_for(|h| !*h).await.unwrap();
        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        let ran = std::fs::read_to_string(&log).unwrap();
        assert!(ran.ends_with("down 10.9.9.9\n"), "{ran}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn wishes_never_wait_for_the_commands_and_only_the_newest_runs() {
        let dir = std::env::temp_dir().join(format!("pgwarden-vip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        // No delegate IP: only the escalation commands run.
        let settings = Settings {
            delegate_ip: None,
            if_up_cmd: String::new(),
            if_down_cmd: String::new(),
            escalation_cmd: format!("sleep 0.5; echo up >> {}", log.display()),
            de_escalation_cmd: format!("echo down >> {}", log.display()),
            ..settings_in(&dir, &log)
        };
        let (tx, rx) = watch::channel(None);
        let (_confirmed, confirmed) = watch::channel(None);
        let (holding_tx, mut holding) = watch::channel(false);
        let task = tokio::spawn(run(settings, rx, confirmed, holding_tx));
        tx.send_replace(Some(VipAction::Acquire));
        holding.wait_for(|h| *h).await.unwrap();
        // While the slow escalation runs, the lease changes its mind often;
        // none of this may wait (the Raft loop sends these).
        let t = std::time::Instant::now();
        for _ in 0..100 {
            tx.send_replace(Some(VipAction::Release));
            tx.send_replace(Some(VipAction::Acquire));
        }
        tx.send_replace(Some(VipAction::Release));
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert!(
            !*holding.borrow(),
            "the last wish (release) was carried out"
        );
        let ran = std::fs::read_to_string(&log).unwrap();
        assert_eq!(ran, "up\ndown\n", "only the first and the newest ran");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn commands_report_status_and_do_not_wait_for_background_children() {
        assert!(run_command("t", "echo up $_IP_$ >&2", "10.0.0.1").await);
        assert!(!run_command("t", "exit 3", "").await);
        // A background child holding stdout open must not stall the caller.
        let t = std::time::Instant::now();
        assert!(run_command("t", "sleep 30 & echo started", "").await);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // Lots of stderr does not deadlock.
        assert!(run_command("t", "head -c 200000 /dev/zero >&2", "").await);
    }
}
