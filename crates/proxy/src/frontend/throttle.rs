//! Slowing password guessing (PostgreSQL's `auth_delay`, per address): a
//! failed login is answered only after `proxy.auth_failure_delay`, doubled
//! for each further failure from the same address up to
//! `proxy.auth_failure_max_delay`; once an address has failed three times
//! in a row, its next logins wait before they are even asked for a
//! password. Each wait is the client's own (its task sleeps): nobody else
//! is slowed. IPv6 clients are counted per /64. A successful login forgives
//! one failure; a quiet [`WINDOW`] forgets the address; at most
//! [`MAX_ADDRESSES`] are remembered.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an address's failures are remembered after its last one.
pub const WINDOW: Duration = Duration::from_secs(10 * 60);

/// Addresses remembered at most (the oldest is forgotten first).
pub const MAX_ADDRESSES: usize = 10_000;

/// Failures after which an address's logins wait before they start.
const SLOW_AFTER: u32 = 3;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// The failed logins per address.
#[derive(Debug)]
pub struct Throttle {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

/// Whom failures are counted for: an IPv4 address, or an IPv6 /64 (one
/// host can hold a whole /64).
fn key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

impl Throttle {
    /// A zero `base` turns it off.
    pub fn new(base: Duration, max: Duration) -> Throttle {
        Throttle {
            base,
            max: max.max(base),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `base` doubled `n` times, at most `max`.
    fn doubled(&self, n: u32) -> Duration {
        self.base
            .checked_mul(1u32.checked_shl(n.min(30)).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// Records a failed login from `addr` at `now`; returns how long to
    /// wait before telling the client.
    pub fn failed(&self, addr: IpAddr, now: Instant) -> Duration {
        if self.base.is_zero() {
            return Duration::ZERO;
        }
        let addr = key(addr);
        let mut map = self.lock();
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&addr) {
            map.retain(|_, f| now.saturating_duration_since(f.last) < WINDOW);
            if map.len() >= MAX_ADDRESSES
                && let Some(oldest) = map.iter().min_by_key(|(_, f)| f.last).map(|(a, _)| *a)
            {
                map.remove(&oldest);
            }
        }
        let f = map.entry(addr).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.saturating_duration_since(f.last) >= WINDOW {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        self.doubled(f.count - 1)
    }

    /// How long a new login from `addr` waits before it starts: nothing
    /// unless the address failed [`SLOW_AFTER`] times in a row lately.
    pub fn before(&self, addr: IpAddr, now: Instant) -> Duration {
        if self.base.is_zero() {
            return Duration::ZERO;
        }
        let map = self.lock();
        match map.get(&key(addr)) {
            Some(f) if f.count >= SLOW_AFTER && now.saturating_duration_since(f.last) < WINDOW => {
                self.doubled(f.count - SLOW_AFTER)
            }
            _ => Duration::ZERO,
        }
    }

    /// A login from `addr` succeeded: one failure is forgiven (a user
    /// who mistyped once is back to normal; someone guessing between
    /// logins to an account of their own still climbs).
    pub fn succeeded(&self, addr: IpAddr) {
        if self.base.is_zero() {
            return;
        }
        let key = key(addr);
        let mut map = self.lock();
        if let Some(f) = map.get_mut(&key) {
            f.count = f.count.saturating_sub(1);
            if f.count == 0 {
                map.remove(&key);
            }
        }
    }

    /// Addresses remembered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn failures_double_the_wait_up_to_the_cap_and_slow_later_logins() {
        let t = Throttle::new(500 * MS, 4000 * MS);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let now = Instant::now();
        assert_eq!(t.before(a, now), Duration::ZERO);
        let waits: Vec<Duration> = (0..6).map(|_| t.failed(a, now)).collect();
        assert_eq!(
            waits,
            [
                500 * MS,
                1000 * MS,
                2000 * MS,
                4000 * MS,
                4000 * MS,
                4000 * MS
            ]
        );
        // Six failures: later logins from a wait before they start;
        // another address does not.
        assert_eq!(t.before(a, now), 4000 * MS);
        assert_eq!(t.before(b, now), Duration::ZERO);
        assert_eq!(t.failed(b, now), 500 * MS);
        // A success forgives one failure only: failing twice between
        // logins of one's own still climbs.
        t.succeeded(a);
        assert_eq!(t.before(a, now), 2000 * MS);
        for _ in 0..5 {
            t.succeeded(a);
        }
        assert_eq!(t.before(a, now), Duration::ZERO);
        // A quiet window forgets too.
        assert_eq!(t.failed(b, now + WINDOW), 500 * MS);
        // v4-mapped v6 is the same address.
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        assert_eq!(t.failed(mapped, now + WINDOW), 1000 * MS);
        // Two addresses of one IPv6 /64 count together.
        let x: IpAddr = "2001:db8::1".parse().unwrap();
        let y: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        assert_eq!(t.failed(x, now), 500 * MS);
        assert_eq!(t.failed(y, now), 1000 * MS);
    }

    #[test]
    fn a_flood_of_addresses_is_bounded_and_zero_turns_it_off() {
        let t = Throttle::new(MS, MS);
        let now = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 50) {
            t.failed(IpAddr::from(i.to_be_bytes()), now + i * MS);
        }
        assert_eq!(t.len(), MAX_ADDRESSES);
        let off = Throttle::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(off.failed([1, 2, 3, 4].into(), now), Duration::ZERO);
        assert!(off.is_empty());
    }
}
