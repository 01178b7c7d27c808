//! `pgwardenctl watchdog` (`wd`): GetStatus of this node's watchdog, as
//! text or JSON (pcp_watchdog_info); with `--watch`, WatchLeadership, one
//! line per change until interrupted.

use std::io::Write;

use pgwarden_proto::v1::WatchdogStatus;

use crate::CtlError;
use crate::render::{leadership_line, watchdog_json};
use crate::watchdog::{Events, Watchdog};

/// Prints the watchdog's status.
pub async fn status(
    watchdog: &mut Watchdog,
    json: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    super::print(out, json, &watchdog.get_status().await?)
}

/// `--watch`: the current status's line, then one per event. Text skips a
/// line equal to the previous one (an event about something the line
/// leaves out, such as a down vote); JSON prints every event.
pub struct Leadership {
    events: Events,
    /// The last text line written.
    last: Option<String>,
}

impl Leadership {
    /// Follows `events`, no line written yet.
    pub fn new(events: Events) -> Self {
        Leadership { events, last: None }
    }
}

impl super::Feed for Leadership {
    type Item = WatchdogStatus;

    async fn next(&mut self) -> Result<WatchdogStatus, CtlError> {
        self.events.next().await
    }

    fn line(&mut self, status: &WatchdogStatus, json: bool) -> Option<String> {
        if json {
            return Some(watchdog_json(status).to_string());
        }
        let line = leadership_line(status);
        if self.last.as_ref() == Some(&line) {
            return None;
        }
        self.last = Some(line.clone());
        Some(line)
    }
}
