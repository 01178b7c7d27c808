//! What every pgwarden daemon's `main` shares: logs and signals
//! ([`startup`]), and the service manager's notifications ([`notify`]).

pub mod notify;
pub mod startup;

pub use startup::{init_logs, reset_signal_mask, shutdown_signal};
