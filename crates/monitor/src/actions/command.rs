//! `failover.mode = "command"`: pgpool-II compatible hooks.
//!
//! `failover.command` and `failover.follow_primary_command` are shell
//! commands with pgpool-II's `%` placeholders. [`expand`] substitutes them
//! (as pgpool does, without any shell quoting: the values come from the
//! config), and [`run_hook`] runs the result with `/bin/sh -c` under a
//! timeout, logging its output line by line and checking its exit status.

use std::time::Duration;

use pgwarden_daemon::hook::HookError;

use super::{ActionError, Target};

/// Values for the placeholders, with pgpool-II's meanings:
///
/// - `%d %h %p %D`: id, host, port and data dir of [`node`](Self::node), the
///   failed node (in `failover.command`) or the standby being repointed (in
///   `follow_primary_command`);
/// - `%m %H %r %R`: id, host, port and data dir of the new main (primary)
///   node;
/// - `%M`: the old main node id; `%P`: the old primary node id;
/// - `%N %S`: host and port of the old primary;
/// - `%a`: the name of [`node`](Self::node) (pgwarden's own, for
///   `failover.rejoin_command`);
/// - `%%`: a literal `%`. An unknown `%x` is left as it is.
#[derive(Debug, Clone)]
pub struct Placeholders {
    /// `%d %h %p %D`.
    pub node: Target,
    /// `%m %H %r %R`.
    pub new_main: Target,
    /// `%M`.
    pub old_main_id: usize,
    /// `%P` (its id), `%N` (its host), `%S` (its port).
    pub old_primary: Target,
}

impl Placeholders {
    /// The value of `%<c>`, `None` for an unknown placeholder.
    fn value(&self, c: char) -> Option<String> {
        let value = match c {
            'd' => self.node.id.to_string(),
            'h' => self.node.host.clone(),
            'p' => self.node.port.to_string(),
            'D' => self.node.data_dir.to_string_lossy().into_owned(),
            'm' => self.new_main.id.to_string(),
            'H' => self.new_main.host.clone(),
            'r' => self.new_main.port.to_string(),
            'R' => self.new_main.data_dir.to_string_lossy().into_owned(),
            'M' => self.old_main_id.to_string(),
            'P' => self.old_primary.id.to_string(),
            'N' => self.old_primary.host.clone(),
            'S' => self.old_primary.port.to_string(),
            'a' => self.node.name.clone(),
            '%' => "%".to_owned(),
            _ => return None,
        };
        Some(value)
    }
}

/// Substitutes the placeholders in `template` (see [`Placeholders`]). An
/// unknown `%x`, and a `%` ending the template, are kept as they are.
pub fn expand(template: &str, p: &Placeholders) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            None => out.push('%'),
            Some(next) => match p.value(next) {
                Some(value) => out.push_str(&value),
                None => {
                    out.push('%');
                    out.push(next);
                }
            },
        }
    }
    out
}

pub use pgwarden_daemon::hook::HookOutput;

/// [`pgwarden_daemon::hook::run`], with its errors as [`ActionError`]s
/// naming the hook.
///
/// # Errors
/// [`ActionError::HookFailed`] when it exits non-zero or is killed by a
/// signal (with the tail of its output); [`ActionError::HookTimeout`] when it
/// runs past `timeout`, after its whole process group was sent `SIGKILL`;
/// [`ActionError::Io`] when `/bin/sh` cannot be started.
pub async fn run_hook(
    name: &str,
    command: &str,
    timeout: Duration,
) -> Result<HookOutput, ActionError> {
    pgwarden_daemon::hook::run(name, command, timeout)
        .await
        .map_err(|e| match e {
            HookError::Failed {
                status,
                output_tail,
            } => ActionError::HookFailed {
                hook: name.to_owned(),
                status,
                output_tail,
            },
            HookError::Timeout { after } => ActionError::HookTimeout {
                hook: name.to_owned(),
                after,
            },
            HookError::Io { context, source } => ActionError::Io { context, source },
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// [`run_hook`] with 10 s to finish.
    async fn run(name: &str, command: &str) -> Result<HookOutput, ActionError> {
        run_hook(name, command, Duration::from_secs(10)).await
    }

    #[tokio::test]
    async fn captures_output_on_success() {
        let out = run("test", "echo one; echo two >&2; printf 'no newline'")
            .await
            .unwrap();
        assert_eq!(out.status, 0);
        // stdout and stderr are read concurrently: compare as sets of lines.
        let mut lines: Vec<&str> = out.output.lines().collect();
        lines.sort_unstable();
        assert_eq!(lines, ["no newline", "one", "two"]);
    }

    #[tokio::test]
    async fn non_zero_exit_is_hook_failed_with_the_tail() {
        let err = run(
            "failover.command",
            "for i in $(seq 1 30); do echo line $i; done; echo 'it broke' >&2; exit 3",
        )
        .await
        .unwrap_err();
        let ActionError::HookFailed {
            hook,
            status,
            output_tail,
        } = &err
        else {
            panic!("expected HookFailed, got {err:?}");
        };
        assert_eq!(hook, "failover.command");
        assert_eq!(status, "exit status 3");
        assert!(output_tail.contains("it broke"), "{output_tail}");
        assert!(output_tail.contains("line 30"), "{output_tail}");
        assert!(!output_tail.contains("line 1\n"), "{output_tail}");
        let message = err.to_string();
        assert!(!message.contains('\n'), "{message}");
        assert!(message.contains("exit status 3"), "{message}");
        assert!(message.contains("it broke"), "{message}");
    }

    #[tokio::test]
    async fn a_signal_is_hook_failed() {
        let err = run("h", "kill -TERM $$").await.unwrap_err();
        assert!(
            matches!(&err, ActionError::HookFailed { status, .. } if status == "killed by signal 15"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn background_descendant_does_not_hold_the_hook() {
        let started = std::time::Instant::now();
        let out = run("h", "sleep 5 & echo started").await.unwrap();
        assert_eq!(out.output, "started\n");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn keeps_the_last_64_kib() {
        // 200 000 bytes of output, in 8-byte lines.
        let out = run_hook(
            "h",
            "i=0; while [ $i -lt 25000 ]; do echo 1234567; i=$((i+1)); done; echo last",
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert!(
            out.output.len() <= pgwarden_daemon::hook::OUTPUT_CAP + 64,
            "{}",
            out.output.len()
        );
        assert!(out.output.starts_with("[earlier output dropped]\n"));
        assert!(out.output.ends_with("1234567\nlast\n"));
    }

    /// Waits up to 5 s for the process whose id the hook wrote to
    /// `pid_file` to end, failing the test if it does not.
    async fn assert_ends(pid_file: &Path, hook: &str) {
        let pid: i32 = std::fs::read_to_string(pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while is_alive(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "{pid} still alive after the hook {hook} was killed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether `pid` is a live process (a zombie counts as dead: it only
    /// waits to be reaped).
    fn is_alive(pid: i32) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        state != Some('Z')
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // The sleep is a child of the shell, so killing the shell alone would
        // leave it running.
        let command = format!("sleep 30 & echo $! > '{}'; wait", pid_file.display());
        let started = std::time::Instant::now();
        let err = run_hook("slow", &command, Duration::from_millis(300))
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            matches!(&err, ActionError::HookTimeout { hook, after }
                if hook == "slow" && *after == Duration::from_millis(300)),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "hook slow timed out after 300ms and was killed"
        );
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
        assert_ends(&pid_file, "slow").await;
    }

    #[tokio::test]
    async fn dropping_the_future_kills_the_hook() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let command = format!("echo $$ > '{}'; exec sleep 30", pid_file.display());
        let hook = run_hook("cancelled", &command, Duration::from_secs(60));
        // Cancel it once it is running.
        let cancelled = tokio::time::timeout(Duration::from_millis(500), hook).await;
        assert!(cancelled.is_err());
        assert_ends(&pid_file, "cancelled").await;
    }
}
