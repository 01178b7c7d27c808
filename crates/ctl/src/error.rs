//! [`CtlError`]: every way a `pgwardenctl` command can fail, each with its
//! exit status and a one-line reason for the operator.

use std::io;
use std::time::Duration;

use pgwarden_proto::uds::Daemon;

use crate::socket::Place;

/// Exit status of a request the monitor refused or failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status of a usage, config or connection error.
pub const EXIT_USAGE: u8 = 2;

/// Why a command failed. `Display` is the whole reason, on one line, ready to
/// follow `pgwardenctl: `.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CtlError {
    /// The config file could not be read or is invalid.
    #[error(transparent)]
    Config(#[from] pgwarden_config::ConfigError),

    /// No connection to a daemon's socket could be made: it is not
    /// running, or not accepting, or the socket is not ours to open.
    #[error("cannot reach pgwarden-{daemon} at {at}: {reason} ({})", unreachable_hint(*daemon, at))]
    Unreachable {
        /// The daemon that was asked for.
        daemon: Daemon,
        /// Where: its socket, or a node's admin API.
        at: Place,
        /// The underlying error (e.g. `Connection refused (os error 111)`).
        reason: String,
    },

    /// The daemon went away during a call or a watch.
    #[error("lost pgwarden-{daemon} at {at}: {reason}")]
    Lost {
        /// The daemon.
        daemon: Daemon,
        /// Where.
        at: Place,
        /// What the transport said.
        reason: String,
    },

    /// The daemon accepted the connection but did not answer in time.
    #[error("pgwarden-{daemon} at {at} did not answer {rpc} within {}", humantime::format_duration(*after))]
    Timeout {
        /// The daemon.
        daemon: Daemon,
        /// Where.
        at: Place,
        /// The call, e.g. `GetCluster`.
        rpc: &'static str,
        /// How long was waited.
        after: Duration,
    },

    /// The monitor refused the request as unsafe or impossible now (gRPC
    /// `FailedPrecondition`); the monitor's own explanation.
    #[error("{0}")]
    Refused(String),

    /// The call failed otherwise (any other gRPC error).
    #[error("{rpc} failed: {message} (gRPC {code:?})")]
    Failed {
        /// The call, e.g. `DetachBackend`.
        rpc: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },

    /// The request was accepted but did not reach its goal (`promote
    /// --wait`: the switchover failed, timed out, or the wait was
    /// interrupted).
    #[error("{0}")]
    NotCompleted(String),

    /// The named backend is not in the cluster.
    #[error("no backend {given}; the backends are: {known}")]
    UnknownBackend {
        /// The name or id as given.
        given: String,
        /// `0 pg0, 1 pg1, ...`.
        known: String,
    },

    /// A `--cert`, `--key` or `--ca` file is unusable.
    #[error(transparent)]
    Tls(#[from] pgwarden_tls::TlsError),

    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
}

impl CtlError {
    /// The process exit status for this error: [`EXIT_FAILED`] when a
    /// request was refused or failed, [`EXIT_USAGE`] for usage, config and
    /// connection errors.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused(_)
            | CtlError::Failed { .. }
            | CtlError::NotCompleted(_)
            | CtlError::Output(_) => EXIT_FAILED,
            CtlError::Config(_)
            | CtlError::Tls(_)
            | CtlError::Unreachable { .. }
            | CtlError::Lost { .. }
            | CtlError::Timeout { .. }
            | CtlError::UnknownBackend { .. } => EXIT_USAGE,
        }
    }

    /// The output was a pipe closed early (`pgwardenctl watch | head`):
    /// not a failure, and nothing to report.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CtlError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// What to check when a daemon cannot be reached: the watchdog only runs
/// where `watchdog.enabled` is set.
fn unreachable_hint(daemon: Daemon, at: &Place) -> &'static str {
    if at.is_remote() {
        return "is admin.listen set on that node, and does it admit this certificate?";
    }
    match daemon {
        Daemon::Watchdog => "is it running? watchdog.enabled?",
        Daemon::Monitor | Daemon::Proxy => "is it running?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_exit_codes() {
        let cases = [
            (
                CtlError::Unreachable {
                    daemon: Daemon::Monitor,
                    at: "/run/pgwarden/monitor.sock".into(),
                    reason: "No such file or directory (os error 2)".into(),
                },
                "cannot reach pgwarden-monitor at /run/pgwarden/monitor.sock: No such file or directory (os error 2) (is it running?)",
                2,
            ),
            (
                CtlError::Unreachable {
                    daemon: Daemon::Watchdog,
                    at: "/run/pgwarden/watchdog.sock".into(),
                    reason: "Connection refused (os error 111)".into(),
                },
                "cannot reach pgwarden-watchdog at /run/pgwarden/watchdog.sock: Connection refused (os error 111) (is it running? watchdog.enabled?)",
                2,
            ),
            (
                CtlError::Refused("pg0 is already the primary".into()),
                "pg0 is already the primary",
                1,
            ),
            (
                CtlError::UnknownBackend {
                    given: "99".into(),
                    known: "0 pg0, 1 pg1".into(),
                },
                "no backend 99; the backends are: 0 pg0, 1 pg1",
                2,
            ),
            (
                CtlError::Timeout {
                    daemon: Daemon::Monitor,
                    at: "/m.sock".into(),
                    rpc: "GetCluster",
                    after: Duration::from_secs(30),
                },
                "pgwarden-monitor at /m.sock did not answer GetCluster within 30s",
                2,
            ),
            (
                CtlError::Failed {
                    rpc: "Recheck",
                    code: tonic::Code::Internal,
                    message: "boom".into(),
                },
                "Recheck failed: boom (gRPC Internal)",
                1,
            ),
        ];
        for (e, message, code) in cases {
            assert_eq!(e.to_string(), message);
            assert_eq!(e.exit_code(), code, "exit code of: {message}");
        }
    }

    #[test]
    fn broken_pipe_is_not_a_failure() {
        assert!(CtlError::Output(io::ErrorKind::BrokenPipe.into()).is_broken_pipe());
        assert!(!CtlError::Output(io::ErrorKind::Other.into()).is_broken_pipe());
        assert!(!CtlError::Refused(String::new()).is_broken_pipe());
    }
}
