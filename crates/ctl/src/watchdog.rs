//! The connection to `pgwarden-watchdog` on `watchdog.sock`: the read-only
//! calls an operator makes (`GetStatus`, `WatchLeadership`), with the same
//! deadlines and error mapping as the monitor's (see [`Socket`]).

use pgwarden_proto::uds::Daemon;
use pgwarden_proto::v1::watchdog_client::WatchdogClient;
use pgwarden_proto::v1::{
    GetStatusRequest, LeadershipEvent, WatchLeadershipRequest, WatchdogStatus,
};
use tonic::transport::Channel;

use crate::CtlError;
use crate::socket::{Connected, Place, Stream};

/// A connected client of the watchdog on one socket.
pub type Watchdog = Connected<WatchdogClient<Channel>>;

impl Watchdog {
    /// Connects to the watchdog's socket now; an error means it is not
    /// running (or `watchdog.enabled` is off, so it was never started).
    pub async fn connect(at: Place) -> Result<Self, CtlError> {
        Self::open(Daemon::Watchdog, at, WatchdogClient::new).await
    }

    /// `GetStatus`: this node's view of the watchdog cluster now.
    pub async fn get_status(&mut self) -> Result<WatchdogStatus, CtlError> {
        let call = self.client.get_status(GetStatusRequest {});
        self.socket.deadline("GetStatus", call).await
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
