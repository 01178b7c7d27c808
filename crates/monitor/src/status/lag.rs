//! The lag chart's data: per standby, one sample per check (its replay lag
//! in bytes and seconds), over the last hour, in memory only.

use std::collections::{BTreeMap, VecDeque};

use pgwarden_proto::json::finite;
use pgwarden_proto::v1::{ClusterState, Role};
use serde_json::{Value, json};

/// How far back the chart goes.
pub const WINDOW_MS: i64 = 3_600_000;
/// Samples kept per backend at most, whatever the check period (checks
/// every 250 ms fill an hour).
pub const MAX_SAMPLES: usize = 14_400;

/// One check's lag: when, bytes (`None` while not streaming), seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at_unix_ms: i64,
    pub bytes: Option<u64>,
    pub seconds: Option<f64>,
}

#[derive(Debug, Default, Clone)]
struct Series {
    name: String,
    samples: VecDeque<Sample>,
}

/// The samples of every backend that was a standby, by backend id.
#[derive(Debug, Default, Clone)]
pub struct LagRing {
    series: BTreeMap<u32, Series>,
}

impl LagRing {
    /// Takes a sample from each standby of `state` that was checked since
    /// its last one, and forgets what is older than the window before `now_ms`.
    pub fn record(&mut self, state: &ClusterState, now_ms: i64) {
        for b in &state.backends {
            if b.role() != Role::Standby || b.last_check_unix_ms == 0 {
                continue;
            }
            let s = self.series.entry(b.id).or_default();
            if s.name != b.name {
                s.name.clone_from(&b.name);
            }
            if s.samples
                .back()
                .is_some_and(|last| last.at_unix_ms >= b.last_check_unix_ms)
            {
                continue;
            }
            s.samples.push_back(Sample {
                at_unix_ms: b.last_check_unix_ms,
                bytes: b.streaming.then_some(b.lag_bytes),
                seconds: b.lag_seconds.is_finite().then_some(b.lag_seconds),
            });
            if s.samples.len() > MAX_SAMPLES {
                s.samples.pop_front();
            }
        }
        let oldest = now_ms - WINDOW_MS;
        for s in self.series.values_mut() {
            while s.samples.front().is_some_and(|x| x.at_unix_ms < oldest) {
                s.samples.pop_front();
            }
        }
        self.series.retain(|_, s| !s.samples.is_empty());
    }

    /// `{"window_s": 3600, "backends": [{"id": 2, "name": "pg2",
    /// "samples": [[unix_ms, bytes|null, seconds|null], ...]}]}`, oldest first.
    pub fn to_json(&self) -> Value {
        json!({
            "window_s": WINDOW_MS / 1000,
            "backends": self.series.iter().map(|(id, s)| json!({
                "id": id,
                "name": s.name,
                "samples": s.samples.iter().map(|x| json!([
                    x.at_unix_ms,
                    x.bytes,
                    x.seconds.map_or(Value::Null, finite),
                ])).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    /// The samples of backend `id`, oldest first.
    #[cfg(test)]
    fn samples(&self, id: u32) -> Vec<Sample> {
        self.series
            .get(&id)
            .map(|s| s.samples.iter().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_proto::v1::BackendState;

    fn state(checked_ms: i64, lag: u64, streaming: bool) -> ClusterState {
        ClusterState {
            backends: vec![
                BackendState {
                    id: 0,
                    name: "pg0".into(),
                    role: Role::Primary as i32,
                    last_check_unix_ms: checked_ms,
                    ..Default::default()
                },
                BackendState {
                    id: 1,
                    name: "pg1".into(),
                    role: Role::Standby as i32,
                    last_check_unix_ms: checked_ms,
                    lag_bytes: lag,
                    lag_seconds: f64::NAN,
                    streaming,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn one_sample_per_check_of_each_standby_and_none_of_the_primary() {
        let mut ring = LagRing::default();
        ring.record(&state(1_000, 10, true), 1_000);
        // The same check published again (another backend's event).
        ring.record(&state(1_000, 99, true), 1_100);
        ring.record(&state(1_500, 20, false), 1_500);
        assert_eq!(
            ring.samples(1),
            vec![
                Sample {
                    at_unix_ms: 1_000,
                    bytes: Some(10),
                    seconds: None
                },
                // Not streaming: the lag is unknown, not 20 bytes.
                Sample {
                    at_unix_ms: 1_500,
                    bytes: None,
                    seconds: None
                },
            ]
        );
        assert!(ring.samples(0).is_empty());
        let v = ring.to_json();
        assert_eq!(v["backends"][0]["name"], "pg1");
        assert_eq!(v["backends"][0]["samples"][0], json!([1_000, 10, null]));
    }

    #[test]
    fn samples_older_than_an_hour_are_forgotten_and_the_count_is_bounded() {
        let mut ring = LagRing::default();
        ring.record(&state(1_000, 1, true), 1_000);
        ring.record(&state(2_000, 2, true), 2_000);
        ring.record(&state(WINDOW_MS + 1_500, 3, true), WINDOW_MS + 1_500);
        let kept: Vec<i64> = ring.samples(1).iter().map(|s| s.at_unix_ms).collect();
        assert_eq!(kept, vec![2_000, WINDOW_MS + 1_500]);
        for i in 0..(MAX_SAMPLES as i64 + 10) {
            let at = WINDOW_MS + 2_000 + i;
            ring.record(&state(at, 1, true), at);
        }
        assert_eq!(ring.samples(1).len(), MAX_SAMPLES);
    }
}
