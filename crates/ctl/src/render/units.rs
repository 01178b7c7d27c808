//! Units and names shared by every format.

use std::time::{SystemTime, UNIX_EPOCH};

/// The current time as Unix milliseconds, the unit of
/// `BackendState.last_check_unix_ms`.
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A byte count for people: `0 B`, `912 B`, `1.5 KiB`, `16.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // Precision loss above 2^53 bytes does not show at one decimal.
    #[allow(clippy::cast_precision_loss)]
    let mut value = n as f64 / 1024.0;
    let mut unit = "KiB";
    for next in UNITS.iter().skip(1) {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

/// A duration in seconds for people: `0.4s`, `12s`, `3m05s`, `2h07m`.
pub fn seconds(s: f64) -> String {
    let s = if s.is_finite() { s.max(0.0) } else { 0.0 };
    if s < 10.0 {
        return format!("{s:.1}s");
    }
    // Truncation is the point: whole seconds from here on.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let whole = s as u64;
    match whole {
        0..60 => format!("{whole}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m", whole / 3600, whole % 3600 / 60),
    }
}

/// How long ago a check ran: `0.4s ago`; `never` for 0. A check stamped
/// after `now` (clocks apart) counts as just now.
pub fn age(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".to_owned();
    }
    // Milliseconds to seconds: exact enough for any age shown.
    #[allow(clippy::cast_precision_loss)]
    let secs = now_ms.saturating_sub(then_ms).max(0) as f64 / 1000.0;
    format!("{} ago", seconds(secs))
}

pub use pgwarden_proto::json::{address, primary_name, role, status};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        for (n, want) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (16 * 1024 * 1024, "16.0 MiB"),
            (5 * 1024 * 1024 * 1024, "5.0 GiB"),
            (u64::MAX, "16.0 EiB"),
        ] {
            assert_eq!(bytes(n), want, "bytes({n})");
        }
    }

    #[test]
    fn durations() {
        for (s, want) in [
            (0.0, "0.0s"),
            (0.44, "0.4s"),
            (9.94, "9.9s"),
            (12.7, "12s"),
            (185.0, "3m05s"),
            (7620.0, "2h07m"),
            (-3.0, "0.0s"),
            (f64::NAN, "0.0s"),
            (f64::INFINITY, "0.0s"),
        ] {
            assert_eq!(seconds(s), want, "seconds({s})");
        }
    }

    #[test]
    fn ages() {
        assert_eq!(age(10_000, 0), "never");
        assert_eq!(age(10_000, 9_600), "0.4s ago");
        assert_eq!(age(10_000, 11_000), "0.0s ago");
        assert_eq!(age(100_000, 1), "1m39s ago");
        assert_eq!(age(30_000, 1), "29s ago");
    }
}
