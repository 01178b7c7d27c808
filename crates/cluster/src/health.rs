//! What a check sees and the rules on it: when a backend is down (more
//! than `max_retries` consecutive failures) and how far a standby is behind.

/// Thresholds from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `health_check.max_retries`: a backend is down after more consecutive failures than this.
    pub max_retries: u32,
    /// `replication_check.max_lag_bytes`: a standby further behind is not promoted.
    pub max_lag_bytes: u64,
}

impl Limits {
    /// More consecutive failed checks (or checks finding a standby not
    /// streaming) than `max_retries`: down.
    pub fn exceeded(&self, count: u32) -> bool {
        count > self.max_retries
    }

    /// How many failed checks make a backend down: `max_retries` + 1.
    pub fn failures_to_down(&self) -> u32 {
        self.max_retries.saturating_add(1)
    }
}

/// What one successful check saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// Timeline (0 when unknown).
    pub timeline: u32,
    /// Primary: current WAL LSN; standby: last replayed LSN.
    pub replay_lsn: u64,
    /// Primary: flushed WAL LSN; standby: last received LSN.
    pub flush_lsn: u64,
    /// Standby: the WAL receiver is streaming.
    pub streaming: bool,
    /// Standby: the port of the server it streams from.
    pub upstream_port: Option<u16>,
    /// Primary: replay lag in seconds per standby `application_name`.
    pub replica_lag: Vec<(String, f64)>,
}

impl Observation {
    /// Standby: the WAL it holds, which a promotion keeps: the last WAL
    /// received and flushed (`pg_last_wal_receive_lsn()`), or the replay
    /// position when that is further (WAL restored from an archive) or
    /// unknown (0: no WAL receiver ran since the server started).
    /// Primary: its flushed WAL.
    pub fn received_lsn(&self) -> u64 {
        self.flush_lsn.max(self.replay_lsn)
    }

    /// How many bytes this standby's replay trails `primary`'s WAL: the lag
    /// every status shows.
    pub fn replay_lag(&self, primary: &Observation) -> u64 {
        lag(Some(primary.received_lsn()), self.replay_lsn)
    }

    /// The replay lag in seconds `primary` reports for standby `name`
    /// (0 when it reports none).
    pub fn lag_seconds_of(&self, name: &str) -> f64 {
        self.replica_lag
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, secs)| *secs)
    }

    /// A primary at `lsn` on `timeline`.
    pub fn primary(timeline: u32, lsn: u64) -> Self {
        Observation {
            in_recovery: false,
            timeline,
            replay_lsn: lsn,
            flush_lsn: lsn,
            streaming: false,
            upstream_port: None,
            replica_lag: Vec::new(),
        }
    }

    /// A standby at `lsn` on `timeline`, streaming from `upstream_port` if given.
    pub fn standby(timeline: u32, lsn: u64, upstream_port: Option<u16>) -> Self {
        Observation {
            in_recovery: true,
            timeline,
            replay_lsn: lsn,
            flush_lsn: lsn,
            streaming: upstream_port.is_some(),
            upstream_port,
            replica_lag: Vec::new(),
        }
    }
}

/// How many bytes `lsn` is behind the primary's `reference` position (0
/// when that is unknown).
pub fn lag(reference: Option<u64>, lsn: u64) -> u64 {
    reference.map_or(0, |r| r.saturating_sub(lsn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_takes_more_than_max_retries_failures() {
        let limits = Limits {
            max_retries: 2,
            max_lag_bytes: 0,
        };
        assert!(!limits.exceeded(2));
        assert!(limits.exceeded(3));
        assert_eq!(limits.failures_to_down(), 3);
    }

    #[test]
    fn lag_is_counted_from_what_the_primary_flushed_to_what_the_standby_replayed() {
        let mut primary = Observation::primary(1, 1000);
        primary.flush_lsn = 1500;
        let standby = Observation::standby(1, 400, Some(5432));
        assert_eq!(standby.replay_lag(&primary), 1100);
        assert_eq!(Observation::standby(1, 2000, None).replay_lag(&primary), 0);
        assert_eq!(lag(None, 10), 0);
    }
}
