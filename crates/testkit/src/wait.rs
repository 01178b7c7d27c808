//! Polling a condition with a deadline.

use std::thread::sleep;
use std::time::{Duration, Instant};

/// How often [`wait_until`] re-evaluates its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Calls `f` every 50 ms until it returns `true` or `timeout` has passed.
///
/// Tests wait for asynchronous effects (a failover, a replica catching up, a
/// daemon listening) with generous bounds; this keeps those loops uniform and
/// their error messages readable: `timed out after 10s waiting for <what>`.
/// `f` is always called at least once, and once more after the deadline.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let expired = start.elapsed() >= timeout;
        if f() {
            return Ok(());
        }
        if expired {
            anyhow::bail!(
                "timed out after {}s waiting for {what}",
                timeout.as_secs_f64()
            );
        }
        sleep(
            POLL_INTERVAL
                .min(timeout.saturating_sub(start.elapsed()))
                .max(Duration::from_millis(1)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_condition_holds() {
        let mut calls = 0;
        wait_until(Duration::from_secs(5), "three calls", || {
            calls += 1;
            calls >= 3
        })
        .unwrap();
        assert_eq!(calls, 3);
    }

    #[test]
    fn times_out_with_a_readable_message() {
        let err = wait_until(Duration::from_millis(120), "godot", || false).unwrap_err();
        assert_eq!(err.to_string(), "timed out after 0.12s waiting for godot");
    }
}
