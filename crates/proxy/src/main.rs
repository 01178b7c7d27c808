//! The `pgwarden-proxy` binary.
fn main() {}
