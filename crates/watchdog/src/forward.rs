//! A follower's side of forwarding to the leader (only the leader
//! proposes, and only the leader's monitor decides): this node's reports,
//! and operators' requests for the leader's monitor, each a signed
//! [`PeerProposal`] bound to the leader and term it is for (see
//! [`crate::peers`] for the leader's side, [`crate::replay`] for why a
//! captured one cannot be used again).

use std::time::Duration;

use pgwarden_proto::v1::watchdog_peer_client::WatchdogPeerClient;
use pgwarden_proto::v1::{OperatorRequest, PeerProposal};
use tonic::Status;

use crate::peers::{Identity, OPERATOR_TIMEOUT, channel};
use crate::report::Report;

/// Forwards this node's report to the leader at `address`, for that
/// leader (`leader`: its id and Raft term) only.
pub async fn report(
    address: &str,
    id: &Identity,
    seq: u64,
    leader: (u64, u64),
    report: &Report,
) -> Result<(), String> {
    let mut client = WatchdogPeerClient::new(channel(address, id.tls.clone())?);
    let (backend, down, monitor) = match report {
        Report::Backend { backend, down } => (backend.clone(), *down, false),
        Report::Monitor { alive } => (String::new(), !*alive, true),
    };
    let mut p = PeerProposal {
        from: id.me,
        members_hash: id.members_hash,
        backend,
        down,
        epoch: id.epoch,
        seq,
        mac: Vec::new(),
        monitor,
        to: leader.0,
        term: leader.1,
        bound_mac: Vec::new(),
        operator: None,
    };
    id.signer.sign_proposal(&mut p);
    let reply = client
        .propose(p)
        .await
        .map_err(|e| e.message().to_owned())?
        .into_inner();
    if reply.committed {
        Ok(())
    } else {
        Err(reply.reason)
    }
}

/// Hands an operator's request to the leader's watchdog at `address`
/// (`leader`: its id and Raft term, the only ones it is for), which passes
/// it to its monitor; the monitor's answer, or why there is none.
pub async fn operator(
    address: &str,
    id: &Identity,
    seq: u64,
    leader: (u64, u64),
    request: OperatorRequest,
) -> Result<String, Status> {
    let channel = pgwarden_proto::tcp::dial(
        address,
        id.tls.clone(),
        Duration::from_secs(2),
        // Longer than the leader's own bound, so its answer (even "no answer
        // in time") arrives rather than a bare client timeout.
        OPERATOR_TIMEOUT + Duration::from_secs(2),
    )
    .map_err(|e| Status::invalid_argument(format!("peer: {e}")))?;
    let (to, term) = leader;
    let mut p = PeerProposal {
        from: id.me,
        members_hash: id.members_hash,
        epoch: id.epoch,
        seq,
        to,
        term,
        operator: Some(request),
        ..PeerProposal::default()
    };
    id.signer.sign_proposal(&mut p);
    let reply = WatchdogPeerClient::new(channel)
        .propose(p)
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown => Status::unavailable(format!(
                "cannot reach the leader's watchdog at {address}: {}",
                status.message()
            )),
            tonic::Code::Unauthenticated => Status::unauthenticated(format!(
                "the leader's watchdog at {address} refused the request ({}): another cluster key, or a watchdog of an older version, which takes operator requests once upgraded",
                status.message()
            )),
            _ => status,
        })?
        .into_inner();
    if reply.committed {
        Ok(reply.message)
    } else {
        Err(Status::new(tonic::Code::from_i32(reply.code), reply.reason))
    }
}
