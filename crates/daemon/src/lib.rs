//! What every pgwarden daemon's `main` shares: logs and signals
//! ([`startup`]), the service manager's notifications ([`notify`]), and the
//! runner of operators' shell hooks ([`hook`]), and the `/metrics` server
//! ([`metrics`]).

pub mod hook;
pub mod metrics;
pub mod notify;
pub mod startup;

pub use startup::{
    Shutdown, init_logs, main, reset_signal_mask, run_main, runtime, shutdown_signal, stop_signal,
    until_stopped,
};
