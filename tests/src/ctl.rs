//! Running `pgwardenctl` from the tests, and reading its `--json history`.

use super::*;

/// The outcome of one `pgwardenctl` run.
#[derive(Debug)]
pub struct CtlRun {
    /// Exit status (-1 when killed by a signal).
    pub code: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `pgwardenctl --config <config> ARGS`.
pub fn pgwardenctl(config: &std::path::Path, args: &[&str]) -> CtlRun {
    let out = Command::new(workspace_bin("pgwardenctl"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    CtlRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Starts `pgwardenctl --config <config> ARGS` for a command that runs
/// until interrupted (`watch`, `watchdog --watch`): the child (its stderr
/// goes to the test's), and its stdout's lines as they come.
pub fn pgwardenctl_spawn(
    config: &std::path::Path,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(workspace_bin("pgwardenctl"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stdout_lines(&mut child);
    (child, lines)
}

/// `pgwardenctl --json history` with `config`, polled until its newest
/// record has a phase named `phase` (a proxy reports its first transaction
/// on a new primary a moment after it ran), within `timeout`: that record.
pub async fn wait_history_phase(
    config: &std::path::Path,
    phase: &str,
    timeout: Duration,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let run = pgwardenctl_async(config, &["--json", "history"]).await;
        assert_eq!(run.code, 0, "{run:?}");
        let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        let newest = json["records"]
            .as_array()
            .and_then(|r| r.last())
            .cloned()
            .unwrap_or_default();
        let has = newest["phases"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["name"] == phase));
        if has {
            return newest;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {phase} phase in the failover history within {timeout:?}: {json}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// When `record`'s phase `phase` happened (unix ms); panics without it.
pub fn phase_at_ms(record: &serde_json::Value, phase: &str) -> i64 {
    record["phases"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == phase))
        .and_then(|p| p["at_unix_ms"].as_i64())
        .unwrap_or_else(|| panic!("no {phase} phase: {record}"))
}

/// The detail of `record`'s phase `phase` (empty when it has none).
pub fn phase_detail(record: &serde_json::Value, phase: &str) -> String {
    record["phases"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == phase))
        .and_then(|p| p["detail"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// [`pgwardenctl`] off the async runtime's threads.
pub async fn pgwardenctl_async(config: &std::path::Path, args: &[&str]) -> CtlRun {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pgwardenctl(&config, &args)
    })
    .await
    .unwrap()
}
