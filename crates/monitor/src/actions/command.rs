//! `failover.mode = "command"`: pgpool-II compatible hooks.
//!
//! `failover.command` and `failover.follow_primary_command` are shell
//! commands with pgpool-II's `%` placeholders. [`expand`] substitutes them
//! (as pgpool does, without any shell quoting: the values come from the
//! config), and [`run_hook`] runs the result with `/bin/sh -c` under a
//! timeout, logging its output line by line and checking its exit status.

use std::os::unix::process::ExitStatusExt as _;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{ActionError, Target};

/// Most output kept from a hook (its last 64 KiB); every line is logged
/// anyway.
const OUTPUT_CAP: usize = 64 * 1024;

/// A line longer than this is logged in pieces.
const MAX_LINE: usize = 8 * 1024;

/// Lines of output quoted in [`ActionError::HookFailed`].
const TAIL_LINES: usize = 20;

/// How long output is still read after the shell exited, for descendants
/// that keep its stdout open (`cmd &`).
const DRAIN_GRACE: Duration = Duration::from_millis(500);

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

/// What a hook that succeeded printed.
#[derive(Debug, Clone)]
pub struct HookOutput {
    /// Its exit status (0).
    pub status: i32,
    /// Its stdout and stderr, interleaved by line as they came; the last 64
    /// KiB when it printed more.
    pub output: String,
}

/// Runs `/bin/sh -c <command>` (placeholders already expanded) in a process
/// group of its own, with stdin from `/dev/null`, and waits for it for at
/// most `timeout`.
///
/// Each line of stdout and stderr is logged (`tracing::info!` with field
/// `hook = name`) and kept (the last 64 KiB). Output is read until the shell
/// exits and then for half a second more, so a background descendant that
/// keeps the pipe open does not hold the hook up.
///
/// If the future is dropped before the hook ends, the hook's process group
/// is killed.
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
    let io_error =
        |context: String| move |source: std::io::Error| ActionError::Io { context, source };
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(io_error(format!("hook {name}: start /bin/sh")))?;
    // The shell leads its own group: its pid is the group id.
    let mut group = GroupGuard(
        child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw),
    );
    tracing::info!(hook = name, pid = ?child.id(), "running: {command}");

    let (tx, mut lines) = mpsc::channel(64);
    let readers = Readers(
        [
            child
                .stdout
                .take()
                .map(|out| tokio::spawn(read_lines(out, tx.clone()))),
            child
                .stderr
                .take()
                .map(|err| tokio::spawn(read_lines(err, tx.clone()))),
        ]
        .into_iter()
        .flatten()
        .collect(),
    );
    drop(tx);

    let mut output = Output::default();
    let run = async {
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                Some(line) = lines.recv() => output.push(name, &line),
            }
        };
        let drain = tokio::time::sleep(DRAIN_GRACE);
        tokio::pin!(drain);
        loop {
            tokio::select! {
                line = lines.recv() => match line {
                    Some(line) => output.push(name, &line),
                    None => break,
                },
                () = &mut drain => break,
            }
        }
        status
    };
    let status = match tokio::time::timeout(timeout, run).await {
        Ok(status) => status.map_err(io_error(format!("hook {name}: wait for /bin/sh")))?,
        Err(_) => {
            group.kill();
            // Reap the shell; its descendants were in the group.
            let _ = child.wait().await;
            drop(readers);
            tracing::warn!(hook = name, "timed out after {timeout:?}: killed");
            return Err(ActionError::HookTimeout {
                hook: name.to_owned(),
                after: timeout,
            });
        }
    };
    // Background descendants of a finished hook are its own business.
    group.disarm();
    drop(readers);
    let text = output.text();
    match status.code() {
        Some(0) => {
            tracing::info!(hook = name, "succeeded");
            Ok(HookOutput {
                status: 0,
                output: text,
            })
        }
        _ => {
            let status = describe_status(status);
            tracing::warn!(hook = name, "failed: {status}");
            Err(ActionError::HookFailed {
                hook: name.to_owned(),
                status,
                output_tail: tail(&text, TAIL_LINES),
            })
        }
    }
}

/// `exit status N` or `killed by signal N`.
fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .get(lines.len().saturating_sub(n)..)
        .unwrap_or_default()
        .join("\n")
}

/// Reads `stream` and sends it line by line (lossy UTF-8, without the line
/// end; over-long lines in pieces) until EOF or a read error.
async fn read_lines(mut stream: impl AsyncRead + Unpin, tx: mpsc::Sender<String>) {
    let mut buf = vec![0u8; 8192];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(buf.get(..n).unwrap_or_default());
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if tx.send(line_text(&line)).await.is_err() {
                return;
            }
        }
        if pending.len() >= MAX_LINE {
            let line = std::mem::take(&mut pending);
            if tx.send(line_text(&line)).await.is_err() {
                return;
            }
        }
    }
    if !pending.is_empty() {
        let _ = tx.send(line_text(&pending)).await;
    }
}

/// A line's text without its `\n` / `\r\n`.
fn line_text(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(line).into_owned()
}

/// A hook's output: every line logged, the last [`OUTPUT_CAP`] bytes kept.
#[derive(Default)]
struct Output {
    text: String,
    truncated: bool,
}

impl Output {
    fn push(&mut self, hook: &str, line: &str) {
        tracing::info!(hook, "{line}");
        self.text.push_str(line);
        self.text.push('\n');
        if self.text.len() > OUTPUT_CAP {
            let excess = self.text.len() - OUTPUT_CAP;
            let cut = (excess..=self.text.len())
                .find(|&i| self.text.is_char_boundary(i))
                .unwrap_or(self.text.len());
            self.text.drain(..cut);
            self.truncated = true;
        }
    }

    fn text(self) -> String {
        if self.truncated {
            format!("[earlier output dropped]\n{}", self.text)
        } else {
            self.text
        }
    }
}

/// Kills the hook's process group (`SIGKILL`) when dropped, unless
/// disarmed: a cancelled or timed-out hook leaves nothing behind.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(group) = self.0.take() {
            // ESRCH: every member has exited already.
            let _ = killpg(group, Signal::SIGKILL);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The output reader tasks, aborted when dropped.
struct Readers(Vec<JoinHandle<()>>);

impl Drop for Readers {
    fn drop(&mut self) {
        for reader in &self.0 {
            reader.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn target(id: usize, host: &str, port: u16, data_dir: &str) -> Target {
        Target {
            id,
            name: format!("pg{id}"),
            host: host.to_owned(),
            port,
            data_dir: PathBuf::from(data_dir),
        }
    }

    fn placeholders() -> Placeholders {
        Placeholders {
            node: target(2, "pg2.localnet", 5434, "/data/pg2"),
            new_main: target(1, "pg1.localnet", 5433, "/data/pg1"),
            old_main_id: 0,
            old_primary: target(0, "pg0.localnet", 5432, "/data/pg0"),
        }
    }

    #[test]
    fn expands_every_placeholder() {
        assert_eq!(
            expand(
                "f.sh %d %h %p %D %m %H %M %P %r %R %N %S %%",
                &placeholders()
            ),
            "f.sh 2 pg2.localnet 5434 /data/pg2 1 pg1.localnet 0 0 5433 /data/pg1 \
             pg0.localnet 5432 %"
        );
    }

    #[test]
    fn keeps_unknown_and_escaped_percents() {
        let p = placeholders();
        assert_eq!(expand("%x %d%%d %%%d", &p), "%x 2%d %2");
        assert_eq!(expand("50% done %", &p), "50% done %");
        assert_eq!(expand("%é%", &p), "%é%");
        assert_eq!(expand("", &p), "");
        assert_eq!(expand("no placeholders", &p), "no placeholders");
    }

    #[tokio::test]
    async fn captures_output_on_success() {
        let out = run_hook(
            "test",
            "echo one; echo two >&2; printf 'no newline'",
            Duration::from_secs(10),
        )
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
        let err = run_hook(
            "failover.command",
            "for i in $(seq 1 30); do echo line $i; done; echo 'it broke' >&2; exit 3",
            Duration::from_secs(10),
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
        let err = run_hook("h", "kill -TERM $$", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ActionError::HookFailed { status, .. } if status == "killed by signal 15"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn background_descendant_does_not_hold_the_hook() {
        let started = std::time::Instant::now();
        let out = run_hook("h", "sleep 5 & echo started", Duration::from_secs(10))
            .await
            .unwrap();
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
        assert!(out.output.len() <= OUTPUT_CAP + 64, "{}", out.output.len());
        assert!(out.output.starts_with("[earlier output dropped]\n"));
        assert!(out.output.ends_with("1234567\nlast\n"));
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
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while is_alive(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "sleep {pid} still alive after the hook timed out"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while is_alive(pid) {
            assert!(std::time::Instant::now() < deadline, "{pid} still alive");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn line_text_strips_line_ends_and_is_lossy() {
        assert_eq!(line_text(b"abc\r\n"), "abc");
        assert_eq!(line_text(b"abc"), "abc");
        assert_eq!(line_text(b"a\xffb\n"), "a\u{fffd}b");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
