//! What a node reports about its own view (a backend's health, whether its
//! monitor answers): committed through the leader as a [`Command`],
//! proposed there or forwarded to it by a follower.

use crate::state::Command;

/// What a node reports about its own view, committed through the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Its monitor sees `backend` down, or up again.
    Backend {
        /// The backend's name.
        backend: String,
        /// Down or up.
        down: bool,
    },
    /// Its monitor answers, or has stopped answering.
    Monitor {
        /// Whether the monitor answers.
        alive: bool,
    },
}

impl Report {
    /// The command that records `node`'s report.
    pub fn command(self, node: u64) -> Command {
        match self {
            Report::Backend { backend, down } => Command::ReportHealth {
                node,
                backend,
                down,
            },
            Report::Monitor { alive } => Command::MonitorHealth { node, alive },
        }
    }
}
