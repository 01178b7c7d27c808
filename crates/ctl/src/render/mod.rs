//! How the cluster state is shown: pure functions from the protobuf messages
//! (and, for ages, the current time) to text or JSON, so every format is
//! unit-tested on fixed states.

mod json;
mod summary;
mod table;
mod units;

pub use json::{change_json, state_json};
pub use summary::summary_line;
pub use table::status_text;
pub use units::now_unix_ms;
