//! The one runner of operators' shell hooks (the monitor's
//! `failover.command`, `follow_primary_command` and `rejoin_command`, the
//! watchdog's `if_up_cmd`, `if_down_cmd` and `arping_cmd`): `/bin/sh -c` in a
//! process group of its own, stdin from `/dev/null`, every output line
//! logged, a timeout that kills the whole group.

use std::os::unix::process::ExitStatusExt as _;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Most output kept from a hook (its last 64 KiB); every line is logged
/// anyway.
pub const OUTPUT_CAP: usize = 64 * 1024;

/// A line longer than this is logged in pieces.
const MAX_LINE: usize = 8 * 1024;

/// Lines of output quoted in [`HookError::Failed`].
const TAIL_LINES: usize = 20;

/// How long output is still read after the shell exited, for descendants
/// that keep its stdout open (`cmd &`).
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Why a hook did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// It exited with a non-zero status or was killed by a signal.
    #[error("{status}")]
    Failed {
        /// `exit status N` or `killed by signal N`.
        status: String,
        /// The last lines of its output (stdout and stderr), as written.
        output_tail: String,
    },
    /// It ran past its timeout; its whole process group was killed.
    #[error("timed out after {after:?} and was killed")]
    Timeout {
        /// The limit that passed.
        after: Duration,
    },
    /// `/bin/sh` could not be started or waited for.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
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
/// [`HookError::Failed`] when it exits non-zero or is killed by a signal
/// (with the tail of its output); [`HookError::Timeout`] when it runs past
/// `timeout`, after its whole process group was sent `SIGKILL`;
/// [`HookError::Io`] when `/bin/sh` cannot be started.
pub async fn run(name: &str, command: &str, timeout: Duration) -> Result<HookOutput, HookError> {
    let io_error =
        |context: String| move |source: std::io::Error| HookError::Io { context, source };
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
            return Err(HookError::Timeout { after: timeout });
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
            Err(HookError::Failed {
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
