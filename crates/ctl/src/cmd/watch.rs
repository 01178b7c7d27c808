//! `pgwardenctl watch`: WatchCluster, one line per generation, until
//! interrupted (see [`super::follow`]).

use pgwarden_proto::v1::ClusterState;

use crate::CtlError;
use crate::monitor::States;
use crate::render::{state_json, summary_line};
use crate::socket::Stream;

/// The current state's line, then each new generation's as it is
/// committed: its JSON, or its summary line.
impl super::Feed for States {
    type Item = ClusterState;

    async fn next(&mut self) -> Result<ClusterState, CtlError> {
        Stream::next(self).await
    }

    fn line(&mut self, state: &ClusterState, json: bool) -> Option<String> {
        Some(if json {
            state_json(state).to_string()
        } else {
            summary_line(state)
        })
    }
}
