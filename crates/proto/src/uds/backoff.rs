//! Pacing reconnects to a daemon that is away.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// First nominal delay.
const MIN_DELAY: Duration = Duration::from_millis(100);
/// Nominal delays stop doubling here; jitter adds up to as much again, so no
/// delay reaches 2 s.
const MAX_NOMINAL_DELAY: Duration = Duration::from_secs(1);

/// Delays between reconnect attempts to a daemon, forever: nominally 100 ms,
/// 200 ms, 400 ms, 800 ms, then 1 s each time, each with a random jitter of
/// up to as much again (so every delay lies in `[nominal, 2 × nominal)`:
/// 100–200 ms first, never 2 s or more).
///
/// Long-lived clients (the proxy's `WatchCluster` loop) connect, stream, and
/// on an error sleep the next delay; after a successful call they take a
/// fresh iterator, so a daemon restart is noticed within about 100–200 ms.
/// See [`connect_lazy`](super::connect_lazy) for the loop.
pub fn reconnect_backoff() -> impl Iterator<Item = Duration> + Send + Sync + 'static {
    ExponentialBuilder::new()
        .with_min_delay(MIN_DELAY)
        .with_max_delay(MAX_NOMINAL_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_100ms_with_jitter_below_2s_forever() {
        let nominal_ms = [100, 200, 400, 800, 1000, 1000, 1000];
        for _ in 0..50 {
            let delays: Vec<Duration> = reconnect_backoff().take(1000).collect();
            assert_eq!(delays.len(), 1000, "the back-off must never end");
            for (i, delay) in delays.iter().enumerate() {
                let nominal = Duration::from_millis(nominal_ms.get(i).copied().unwrap_or(1000));
                assert!(
                    *delay >= nominal && *delay < nominal * 2,
                    "delay {i} = {delay:?}, nominal {nominal:?}"
                );
                assert!(*delay < Duration::from_secs(2));
            }
        }
    }

    #[test]
    fn jitter_varies() {
        let firsts: std::collections::HashSet<Duration> =
            (0..20).filter_map(|_| reconnect_backoff().next()).collect();
        assert!(firsts.len() > 1, "no jitter: {firsts:?}");
    }
}
