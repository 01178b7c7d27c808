//! How the cluster state and the watchdog's view are shown: pure functions
//! from the protobuf messages (and, for ages, the current time) to text or
//! JSON, so every format is unit-tested on fixed states.

mod history;
mod json;
mod proxy;
mod summary;
mod table;
mod units;
mod watchdog;

pub use history::{history_json, history_text};
pub use json::{change_json, state_json};
pub use proxy::{clients_json, clients_text, pools_json, pools_text};
pub use summary::summary_line;
pub use table::status_text;
pub use units::now_unix_ms;
pub use watchdog::{leadership_line, watchdog_json, watchdog_text};

#[cfg(test)]
pub(crate) use watchdog::tests as watchdog_tests;
