//! The connection to `pgwarden-watchdog` on `watchdog.sock`: the read-only
//! calls an operator makes (`GetStatus`, `WatchLeadership`), with the same
//! deadlines and error mapping as the monitor's (see [`Socket`]).

use pgwarden_proto::uds::Daemon;
use pgwarden_proto::v1::watchdog_client::WatchdogClient;
use pgwarden_proto::v1::{
    GetStatusRequest, LeadershipEvent, WatchLeadershipRequest, WatchdogStatus,
};
use tonic::Streaming;
use tonic::transport::Channel;

use crate::CtlError;
use crate::socket::{Place, Socket};

/// A connected client of the watchdog on one socket.
#[derive(Debug)]
pub struct Watchdog {
    client: WatchdogClient<Channel>,
    socket: Socket,
}

impl Watchdog {
    /// Connects to the watchdog's socket now; an error means it is not
    /// running (or `watchdog.enabled` is off, so it was never started).
    pub async fn connect(at: Place) -> Result<Self, CtlError> {
        let socket = Socket::new(Daemon::Watchdog, at);
        Ok(Watchdog {
            client: WatchdogClient::new(socket.connect().await?),
            socket,
        })
    }

    /// `GetStatus`: this node's view of the watchdog cluster now.
    pub async fn get_status(&mut self) -> Result<WatchdogStatus, CtlError> {
        let call = self.client.get_status(GetStatusRequest {});
        let reply = self.socket.deadline("GetStatus", call).await?;
        Ok(reply.into_inner())
    }

    /// `WatchLeadership`: the current status, then every change of leader,
    /// term, quorum, delegate IP holder or committed record.
    pub async fn watch(&mut self) -> Result<Events, CtlError> {
        let call = self.client.watch_leadership(WatchLeadershipRequest {});
        let stream = self.socket.deadline("WatchLeadership", call).await?;
        Ok(Events {
            stream: stream.into_inner(),
            socket: self.socket.clone(),
        })
    }
}

/// The statuses a `WatchLeadership` call streams.
#[derive(Debug)]
pub struct Events {
    stream: Streaming<LeadershipEvent>,
    socket: Socket,
}

impl Events {
    /// The next status. The stream never ends while the watchdog runs, so
    /// its end is an error too. An event without a status (a newer or
    /// broken watchdog) is skipped.
    pub async fn next(&mut self) -> Result<WatchdogStatus, CtlError> {
        loop {
            match self.stream.message().await {
                Ok(Some(LeadershipEvent {
                    status: Some(status),
                })) => return Ok(status),
                Ok(Some(LeadershipEvent { status: None })) => {}
                Ok(None) => {
                    return Err(self.socket.lost("the watchdog ended the stream".to_owned()));
                }
                Err(status) => return Err(self.socket.status_error("WatchLeadership", status)),
            }
        }
    }
}
