//! Operator requests (pgpool-II's pcp commands) against the machine that
//! decides: pure, shared by the monitor alone and the leader's monitor.

use pgwarden_proto::v1::OperatorRequest;
use pgwarden_proto::v1::operator_request::Kind;

use crate::machine::{Action, Machine};

/// A change an operator asks for, naming a backend by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// AttachBackend (pcp_attach_node).
    Attach(usize),
    /// DetachBackend (pcp_detach_node).
    Detach(usize),
    /// PromoteBackend (pcp_promote_node --switchover); `force` promotes a
    /// standby beyond `max_lag_bytes` too.
    Promote {
        /// The standby to promote.
        id: usize,
        /// Promote it however far behind it is.
        force: bool,
    },
    /// RejoinBackend (pcp_recovery_node).
    Rejoin(usize),
}

/// Why a rejoin is refused while `failover.rejoin_command` is not set.
const NO_REJOIN_COMMAND: &str = "failover.rejoin_command is not set: rejoin the backend by hand (pg_rewind or a new base backup), then attach it";

impl Ask {
    /// The backend it names.
    pub fn backend(&self) -> usize {
        match *self {
            Ask::Attach(id) | Ask::Detach(id) | Ask::Rejoin(id) | Ask::Promote { id, .. } => id,
        }
    }

    /// The request handed to the leader's monitor through the watchdogs,
    /// for backend `name` (which the leader checks against the id).
    pub fn forwarded(&self, name: &str) -> OperatorRequest {
        let (kind, force) = match *self {
            Ask::Attach(_) => (Kind::Attach, false),
            Ask::Detach(_) => (Kind::Detach, false),
            Ask::Rejoin(_) => (Kind::Rejoin, false),
            Ask::Promote { force, .. } => (Kind::Promote, force),
        };
        OperatorRequest {
            kind: kind as i32,
            backend_id: u32::try_from(self.backend()).unwrap_or(u32::MAX),
            force,
            backend_name: name.to_owned(),
        }
    }
}

/// Decides `ask` on the machine that decides: the actions to perform, and
/// the answer to give once they are performed (a refusal performs nothing).
/// `rejoin_enabled`: `failover.rejoin_command` is set.
pub fn decide(
    machine: &mut Machine,
    ask: Ask,
    rejoin_enabled: bool,
) -> (Vec<Action>, Result<String, String>) {
    let decided = match ask {
        Ask::Rejoin(_) if !rejoin_enabled => Err(NO_REJOIN_COMMAND.to_owned()),
        Ask::Rejoin(id) => machine.rejoin(id),
        Ask::Attach(id) => machine.attach(id),
        Ask::Detach(id) => machine.detach(id),
        Ask::Promote { id, force } => machine.promote(id, force),
    };
    match decided {
        Ok((msg, actions)) => {
            tracing::info!("{msg}");
            (actions, Ok(msg))
        }
        Err(e) => (Vec::new(), Err(e)),
    }
}
