//! What `pgwarden-cluster` and `pgwarden-demo` share: holding the stop
//! signals until they are waited for, and how `main` ends.

use std::process::ExitCode;

use anyhow::Context as _;
use nix::sys::signal::{SigSet, Signal};

/// Blocks `signals` in this thread and returns them, to be waited for with
/// [`SigSet::wait`]. Call before any thread exists, so that one arriving
/// during start-up waits for `wait()` and the binary always stops cleanly;
/// child processes start with an empty mask (std resets it).
pub fn block(signals: &[Signal]) -> anyhow::Result<SigSet> {
    let mut set = SigSet::empty();
    for signal in signals {
        set.add(*signal);
    }
    set.thread_block().context("block SIGINT/SIGTERM")?;
    Ok(set)
}

/// How the binary `name` exits after its work ended with `result`: an error
/// is written to stderr first, as `name: error: cause`.
pub fn exit_code(name: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
