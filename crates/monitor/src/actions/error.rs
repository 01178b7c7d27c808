//! [`ActionError`]: why a failover action did not happen.

use std::time::Duration;

/// Why a failover action failed. Its `Display` is one line, naming the
/// backend (`name (host:port)`) or the hook.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// Could not log in to a backend (refused, unreachable, auth failed, or
    /// `connect_timeout` passed).
    #[error("{target}: cannot connect: {message}")]
    Connect {
        /// The backend, as [`Target::label`](super::Target::label).
        target: String,
        /// Why, from the driver.
        message: String,
    },
    /// A statement failed on a backend.
    #[error("{target}: {message}")]
    Sql {
        /// The backend.
        target: String,
        /// What was run and the server's error.
        message: String,
    },
    /// A step did not finish in time.
    #[error("{what}: timed out after {after:?}")]
    Timeout {
        /// The step, with the backend it ran on.
        what: String,
        /// The limit that passed.
        after: Duration,
    },
    /// `pg_promote()` returned but the server is still a standby.
    #[error("{target}: still in recovery after pg_promote()")]
    StillInRecovery {
        /// The backend.
        target: String,
    },
    /// A standby could not be repointed at the new primary.
    #[error("{target}: cannot follow: {reason}")]
    CannotFollow {
        /// The standby.
        target: String,
        /// Why (not a standby, never streamed, ...).
        reason: String,
    },
    /// A hook exited with a non-zero status or was killed by a signal.
    #[error("hook {hook} failed ({status}): {}", one_line(.output_tail))]
    HookFailed {
        /// The hook's name (`failover.command`, ...).
        hook: String,
        /// `exit status N` or `killed by signal N`.
        status: String,
        /// The last lines of its output (stdout and stderr), as written.
        output_tail: String,
    },
    /// A hook ran past its timeout; its whole process group was killed.
    #[error("hook {hook} timed out after {after:?} and was killed")]
    HookTimeout {
        /// The hook's name.
        hook: String,
        /// The limit that passed.
        after: Duration,
    },
    /// An OS error (spawning or waiting for a hook).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Joins the non-blank lines of `text` with ` | `, so multi-line output fits
/// in a one-line message.
pub(crate) fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "no output".to_owned()
    } else {
        lines.join(" | ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line() {
        let e = ActionError::HookFailed {
            hook: "failover.command".into(),
            status: "exit status 3".into(),
            output_tail: "first\n\nsecond\n".into(),
        };
        assert_eq!(
            e.to_string(),
            "hook failover.command failed (exit status 3): first | second"
        );
        let e = ActionError::Timeout {
            what: "pg1 (127.0.0.1:5433): pg_promote()".into(),
            after: Duration::from_millis(1500),
        };
        assert_eq!(
            e.to_string(),
            "pg1 (127.0.0.1:5433): pg_promote(): timed out after 1.5s"
        );
        let e = ActionError::HookFailed {
            hook: "h".into(),
            status: "exit status 1".into(),
            output_tail: String::new(),
        };
        assert_eq!(e.to_string(), "hook h failed (exit status 1): no output");
    }
}
