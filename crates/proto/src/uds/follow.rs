//! Following the local watchdog's status stream (`WatchLeadership`), for
//! every daemon that acts on it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::v1::WatchLeadershipRequest;
use crate::v1::WatchdogStatus;
use crate::v1::watchdog_client::WatchdogClient;

use super::reconnect_backoff;

/// Streams the watchdog's status into `each` until `stop`, reconnecting
/// with [`reconnect_backoff`]: `each(Some(status))` for every status,
/// `each(None)` each time the stream is lost (once per loss; what a lost
/// watchdog means is the caller's to say: `lost` is logged as a warning,
/// once, and `back` when a status comes again).
pub async fn follow_watchdog(
    mut client: WatchdogClient<Channel>,
    stop: &CancellationToken,
    lost: &str,
    back: &str,
    mut each: impl FnMut(Option<WatchdogStatus>),
) {
    let mut backoff = reconnect_backoff();
    let mut gone = false;
    loop {
        let call = tokio::select! {
            _ = stop.cancelled() => return,
            r = client.watch_leadership(WatchLeadershipRequest {}) => r,
        };
        if let Ok(resp) = call {
            let mut stream = resp.into_inner();
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = stream.message() => m,
                };
                let Ok(Some(event)) = msg else { break };
                if gone {
                    tracing::info!("{back}");
                    gone = false;
                }
                backoff = reconnect_backoff();
                if let Some(status) = event.status {
                    each(Some(status));
                }
            }
        }
        if !gone {
            tracing::warn!("{lost}");
            gone = true;
        }
        each(None);
        let pause = backoff.next().unwrap_or(Duration::from_secs(1));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
