//! Which standby a failover promotes: the one holding the most WAL
//! ([`Observation::received_lsn`]) among those that may take over, ties to
//! the one that replayed further, then to the lowest id.
//!
//! [`Observation::received_lsn`]: super::backend::Observation::received_lsn

use super::backend::{BackendView, Status};
use super::health::{Limits, lag, off_timeline};

/// The standby to promote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Its id.
    pub id: usize,
    /// The WAL it holds.
    pub received: u64,
    /// The WAL it replayed.
    pub replayed: u64,
}

/// What a failover may promote from.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    /// Every backend, by id.
    pub backends: &'a [BackendView],
    /// Thresholds.
    pub limits: &'a Limits,
    /// The WAL position of the primary being replaced, when known.
    pub reference: Option<u64>,
    /// The timeline it was on, when known.
    pub timeline: Option<u32>,
}

impl Field<'_> {
    /// The best standby not in `excluded` (the primary being replaced and
    /// the standbys already tried), or why there is none, backend by
    /// backend. `force` (an operator's switchover) lets a standby off the
    /// primary's timeline or beyond `max_lag_bytes` be chosen.
    pub fn choose(&self, excluded: &[usize], force: bool) -> Result<Candidate, String> {
        let mut why_not = Vec::new();
        let mut best: Option<Candidate> = None;
        for (i, b) in self.backends.iter().enumerate() {
            if excluded.contains(&i) {
                continue;
            }
            let Some(o) = b.last.as_ref() else {
                why_not.push(format!("{}: never checked", b.spec.name));
                continue;
            };
            let lag = lag(self.reference, o.received_lsn());
            let max_lag = self.limits.max_lag_bytes;
            let refusal = if b.status == Status::Detached {
                Some("detached".to_owned())
            } else if !b.reachable() {
                Some("unreachable".to_owned())
            } else if !o.in_recovery {
                Some("not a standby".to_owned())
            } else if !b.spec.allow_failover {
                Some("allow_failover = false".to_owned())
            } else if let Some(r) = self
                .timeline
                .and_then(|t| off_timeline(o, t))
                .filter(|_| !force)
            {
                Some(r)
            } else if !force && lag > max_lag {
                Some(format!("{lag} bytes behind (max_lag_bytes {max_lag})"))
            } else {
                None
            };
            if let Some(r) = refusal {
                why_not.push(format!("{}: {r}", b.spec.name));
                continue;
            }
            let key = (o.received_lsn(), o.replay_lsn);
            if best.is_none_or(|c| key > (c.received, c.replayed)) {
                best = Some(Candidate {
                    id: i,
                    received: key.0,
                    replayed: key.1,
                });
            }
        }
        best.ok_or_else(|| {
            if why_not.is_empty() {
                "no standby".to_owned()
            } else {
                why_not.join("; ")
            }
        })
    }
}
