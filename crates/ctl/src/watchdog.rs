//! The connection to `pgwarden-watchdog` on `watchdog.sock`: the read-only
//! calls an operator makes (`GetStatus`, `WatchLeadership`), with the same
//! deadlines and error mapping as the monitor's (see
//! [`Socket`](crate::socket::Socket)).

use pgwarden_proto::v1::watchdog_client::WatchdogClient;
use pgwarden_proto::v1::{
    GetStatusRequest, LeadershipEvent, WatchLeadershipRequest, WatchdogStatus,
};
use tonic::transport::Channel;

use crate::CtlError;
use crate::socket::{Connected, Stream};

/// A connected client of the watchdog on one socket; connecting fails when
/// it is not running (or `watchdog.enabled` is off, so it was never
/// started).
pub type Watchdog = Connected<WatchdogClient<Channel>>;

impl Watchdog {
    unary! {
        /// `GetStatus`: this node's view of the watchdog cluster now.
        get_status() -> WatchdogStatus = get_status(GetStatusRequest {}), "GetStatus";
    }

    /// `WatchLeadership`: the current status, then every change of leader,
    /// term, quorum, delegate IP holder or committed record.
    pub async fn watch(&mut self) -> Result<Events, CtlError> {
        let call = self.client.watch_leadership(WatchLeadershipRequest {});
        let ended = "the watchdog ended the stream";
        Ok(Events(
            self.socket.stream("WatchLeadership", call, ended).await?,
        ))
    }
}

/// The statuses a `WatchLeadership` call streams.
#[derive(Debug)]
pub struct Events(Stream<LeadershipEvent>);

impl Events {
    /// The next status. The stream never ends while the watchdog runs, so
    /// its end is an error too. An event without a status (a newer or
    /// broken watchdog) is skipped.
    pub async fn next(&mut self) -> Result<WatchdogStatus, CtlError> {
        loop {
            if let LeadershipEvent {
                status: Some(status),
            } = self.0.next().await?
            {
                return Ok(status);
            }
        }
    }
}
