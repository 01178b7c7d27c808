//! The delegate IP: runs `if_up_cmd` + `arping_cmd` when the lease says
//! acquire, `if_down_cmd` when it says release, one at a time, each through
//! `/bin/sh -c` with `$_IP_$` replaced, a timeout, and its output logged.
//! The lease states what it wants and never waits for the commands: while
//! one runs, only the newest wish is kept (an acquire and release that came
//! and went meanwhile run nothing).

use std::time::Duration;

use tokio::sync::watch;

use crate::VipAction;
use crate::settings::Settings;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs delegate-IP actions in order; publishes whether this node holds the IP.
///
/// While the IP is up, a guard process (this binary with `--vip-guard`)
/// watches the watchdog: if the watchdog dies without releasing the IP
/// (`kill -9`, a crash), the guard runs `if_down_cmd`, so a dead watchdog
/// never leaves the IP on a host that is still up.
pub async fn run(
    settings: Settings,
    mut wanted: watch::Receiver<Option<VipAction>>,
    holding: watch::Sender<bool>,
) {
    let mut guard_process: Option<std::process::Child> = None;
    let mut done: Option<VipAction> = None;
    // Ends once the sender is gone and its last wish has been seen.
    while wanted.changed().await.is_ok() {
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
        match action {
            VipAction::Acquire => {
                tracing::info!(%ip, "taking the delegate IP");
                let up = run_command("if_up_cmd", &settings.if_up_cmd, &ip.to_string()).await;
                if up {
                    holding.send_replace(true);
                    guard_process = spawn_guard(&settings.if_down_cmd, &ip.to_string());
                    if !settings.arping_cmd.is_empty() {
                        run_command("arping_cmd", &settings.arping_cmd, &ip.to_string()).await;
                    }
                }
            }
            VipAction::Release => {
                tracing::info!(%ip, "releasing the delegate IP");
                if let Some(mut g) = guard_process.take() {
                    let _ = g.kill();
                    let _ = g.wait();
                }
                run_command("if_down_cmd", &settings.if_down_cmd, &ip.to_string()).await;
                holding.send_replace(false);
            }
        }
        escalate(&settings, action).await;
    }
}

fn spawn_guard(if_down_cmd: &str, ip: &str) -> Option<std::process::Child> {
    let exe = std::env::current_exe().ok()?;
    let child = std::process::Command::new(exe)
        .args(["--vip-guard", "--vip", ip, "--vip-down-cmd", if_down_cmd])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn();
    match child {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the delegate-IP guard; a killed watchdog would leave the IP up");
            None
        }
    }
}

/// The guard process: waits until its parent (the watchdog) is gone, then
/// takes the IP down. Never returns while the parent lives.
pub fn guard(ip: &str, if_down_cmd: &str) -> std::process::ExitCode {
    let parent = nix::unistd::getppid();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if nix::unistd::getppid() != parent {
            break;
        }
    }
    let command = if_down_cmd.replace("$_IP_$", ip);
    eprintln!("pgwarden-watchdog: the watchdog died holding {ip}; running if_down_cmd");
    match std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&command)
        .status()
    {
        Ok(s) if s.success() => std::process::ExitCode::SUCCESS,
        _ => std::process::ExitCode::FAILURE,
    }
}

async fn escalate(settings: &Settings, action: VipAction) {
    let (name, cmd) = match action {
        VipAction::Acquire => ("escalation_cmd", &settings.escalation_cmd),
        VipAction::Release => ("de_escalation_cmd", &settings.de_escalation_cmd),
    };
    if !cmd.is_empty() {
        let ip = settings
            .delegate_ip
            .map(|i| i.to_string())
            .unwrap_or_default();
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

    #[tokio::test]
    async fn wishes_never_wait_for_the_commands_and_only_the_newest_runs() {
        let dir = std::env::temp_dir().join(format!("pgwarden-vip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let settings = Settings {
            node_name: "n".into(),
            runtime_dir: dir.clone(),
            state_dir: dir.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            members: vec!["n".into()],
            id: 1,
            key: vec![0; 32],
            delegate_ip: None,
            if_up_cmd: String::new(),
            if_down_cmd: String::new(),
            arping_cmd: String::new(),
            escalation_cmd: format!("sleep 0.5; echo up >> {}", log.display()),
            de_escalation_cmd: format!("echo down >> {}", log.display()),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            tls: None,
        };
        let (tx, rx) = watch::channel(None);
        let (holding_tx, mut holding) = watch::channel(false);
        let task = tokio::spawn(run(settings, rx, holding_tx));
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
