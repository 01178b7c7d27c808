//! The replicated state machine: the cluster record every watchdog agrees
//! on. It lives in `pgwarden-cluster` ([`pgwarden_cluster::record`]), which
//! the monitor shares; this module names it where the watchdog has always
//! found it.

pub use pgwarden_cluster::record::{Applied, ClusterRecord, Command, Generation, Rejection};
