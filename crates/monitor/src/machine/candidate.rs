//! Which standby a failover promotes: the one holding the most WAL
//! ([`Observation::received_lsn`]) among those that may take over, ties to
//! the one that replayed further, then to the lowest id.
//!
//! With synchronous replication recorded for the generation, only a
//! standby that provably holds every commit the primary acknowledged may
//! take over ([`safe_floor`]); when none can be shown to, none is promoted.
//!
//! [`Observation::received_lsn`]: super::backend::Observation::received_lsn

use pgwarden_cluster::Synchronous;
use pgwarden_proto::lsn::lsn_to_string;

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
    /// The synchronous standbys of the generation being replaced.
    pub synchronous: Option<&'a Synchronous>,
}

/// The least WAL a standby must hold to hold every commit the primary
/// acknowledged under `sync`, given the WAL (received LSN) of the
/// synchronous standbys that answer, by name; `Err` when too few answer
/// to tell.
///
/// Every acknowledged commit is on at least `count` of the `n` recorded
/// standbys. Of `q` that answer, at least `q - (n - count)` hold it, so it
/// lies at or below the `(q - (n - count))`-th highest WAL among them: a
/// standby that answers and holds that much holds every acknowledged
/// commit. With one synchronous standby (`n = count = 1`) that is the
/// standby itself.
pub fn safe_floor(sync: &Synchronous, answering: &[(&str, u64)]) -> Result<u64, String> {
    let mut held: Vec<u64> = answering
        .iter()
        .filter(|(name, _)| sync.standbys.contains(*name))
        .map(|&(_, lsn)| lsn)
        .collect();
    let needed = sync.needed_to_decide();
    if sync.standbys.is_empty() || held.len() < needed {
        let names: Vec<&str> = sync.standbys.iter().map(String::as_str).collect();
        return Err(format!(
            "no safe candidate: {} of the synchronous standbys ({}) answer, {needed} needed to know which holds every acknowledged commit",
            held.len(),
            names.join(", ")
        ));
    }
    held.sort_unstable_by(|a, b| b.cmp(a));
    let holders = held.len() + 1 - needed;
    Ok(held.get(holders - 1).copied().unwrap_or(0))
}

impl Field<'_> {
    /// The best standby not in `excluded` (the primary being replaced and
    /// the standbys already tried), or why there is none, backend by
    /// backend. `force` (an operator's switchover) lets a standby off the
    /// primary's timeline or beyond `max_lag_bytes` be chosen.
    pub fn choose(&self, excluded: &[usize], force: bool) -> Result<Candidate, String> {
        // Synchronous: the least WAL that holds every acknowledged commit.
        // An operator's forced switchover decides for itself.
        let floor = match self.synchronous.filter(|_| !force) {
            Some(sync) => Some(safe_floor(sync, &self.answering_standbys(excluded))?),
            None => None,
        };
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
            } else if floor.is_some() && !self.is_synchronous(b) {
                Some("not a synchronous standby".to_owned())
            } else {
                floor.filter(|f| o.received_lsn() < *f).map(|floor| {
                    format!(
                        "may lack acknowledged commits (holds {}, they reach {})",
                        lsn_to_string(o.received_lsn()),
                        lsn_to_string(floor)
                    )
                })
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

    /// Whether `b` is one of the recorded synchronous standbys.
    fn is_synchronous(&self, b: &BackendView) -> bool {
        Synchronous::includes(self.synchronous, &b.spec.name)
    }

    /// The standbys that answer (not `excluded`, reachable, in recovery),
    /// with the WAL each holds.
    fn answering_standbys(&self, excluded: &[usize]) -> Vec<(&str, u64)> {
        self.backends
            .iter()
            .enumerate()
            .filter(|(i, b)| !excluded.contains(i) && b.reachable())
            .filter_map(|(_, b)| {
                let o = b.last.as_ref().filter(|o| o.in_recovery)?;
                Some((b.spec.name.as_str(), o.received_lsn()))
            })
            .collect()
    }
}
