//! Synchronous replication (`failover.synchronous_mode`, Patroni's
//! meanings): which standbys the primary's `synchronous_standby_names`
//! names, and the order in which a change of them is made.
//!
//! The record of the generation ([`Synchronous`]) must cover every commit
//! the primary acknowledged at every moment: a failover trusts it to know
//! which standbys hold them ([`super::candidate::safe_floor`]). So a change
//! from the standbys recorded to the ones wanted goes in steps
//! ([`next_step`]): the record first grows to cover both sets, then the
//! primary's setting changes, and the record shrinks to the wanted set only
//! once enough of those standbys hold all the WAL written before the
//! setting took effect.

use pgwarden_cluster::Synchronous;

use super::backend::{BackendView, Status};
use super::health::{Limits, lag, streams_from};

/// `failover.synchronous_mode` when not `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `"on"`: with no standby able to confirm commits, replication
    /// becomes asynchronous (and says so) rather than block writes.
    On,
    /// `"strict"`: never asynchronous; writes wait for the recorded
    /// standbys rather than be acknowledged without a copy.
    Strict,
}

/// What the primary's setting is known to be: the standbys it names, and
/// its WAL position once that setting was in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The standbys named (`None`: `synchronous_standby_names` is empty).
    pub set: Option<Synchronous>,
    /// The primary's WAL position (LSN) when the setting was seen in force.
    pub at_lsn: u64,
}

/// The standbys that may confirm commits for primary `primary`: up,
/// streaming from it, within `max_lag_bytes` of its WAL; with the WAL each
/// holds, by id.
fn eligible(backends: &[BackendView], primary: usize, limits: &Limits) -> Vec<(usize, u64)> {
    let Some(p) = backends.get(primary) else {
        return Vec::new();
    };
    let reference = p.last.as_ref().map(|o| o.received_lsn());
    backends
        .iter()
        .enumerate()
        .filter(|&(i, b)| i != primary && b.status == Status::Up && streams_from(b, p))
        .filter_map(|(i, b)| {
            let held = b.last.as_ref()?.received_lsn();
            (lag(reference, held) <= limits.max_lag_bytes).then_some((i, held))
        })
        .collect()
}

/// The synchronous standbys wanted for `primary`: `count` of the eligible
/// standbys, those `recorded` first (a healthy synchronous standby is not
/// swapped for another), then the ones holding the most WAL, then by id.
/// Fewer are eligible: as many as there are, and with none, `None`
/// (asynchronous) in [`Mode::On`], the recorded standbys still in
/// [`Mode::Strict`].
pub fn wanted(
    mode: Mode,
    count: u32,
    backends: &[BackendView],
    primary: usize,
    limits: &Limits,
    recorded: Option<&Synchronous>,
) -> Option<Synchronous> {
    let mut candidates = eligible(backends, primary, limits);
    let is_recorded = |id: usize| {
        recorded.is_some_and(|r| {
            backends
                .get(id)
                .is_some_and(|b| r.standbys.contains(&b.spec.name))
        })
    };
    candidates.sort_by_key(|&(id, held)| (!is_recorded(id), std::cmp::Reverse(held), id));
    let count = count.max(1);
    let standbys: std::collections::BTreeSet<String> = candidates
        .iter()
        .take(usize::try_from(count).unwrap_or(usize::MAX))
        .filter_map(|&(id, _)| backends.get(id).map(|b| b.spec.name.clone()))
        .collect();
    if standbys.is_empty() {
        return match mode {
            Mode::On => None,
            Mode::Strict => recorded.cloned(),
        };
    }
    let count = u32::try_from(standbys.len()).unwrap_or(count).min(count);
    Some(Synchronous { standbys, count })
}

/// One step of a change of the synchronous standbys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Commit this as the generation's synchronous standbys.
    Record(Option<Synchronous>),
    /// Set the primary's `synchronous_standby_names` to name these
    /// (`None`: empty, asynchronous).
    Primary(Option<Synchronous>),
}

/// Whether a record of `recorded` covers commits acknowledged by `set`:
/// each of those is on `count` of `set`'s standbys, so on at least
/// `recorded.count` of the recorded ones. Asynchronous commits are covered
/// by any record (they were never promised a copy).
fn covers(recorded: Option<&Synchronous>, set: Option<&Synchronous>) -> bool {
    match (recorded, set) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(r), Some(s)) => s.standbys.is_subset(&r.standbys) && r.count <= s.count,
    }
}

/// The record covering both `a` and `b`.
fn union(a: Option<&Synchronous>, b: Option<&Synchronous>) -> Option<Synchronous> {
    match (a, b) {
        (None, None) => None,
        (Some(x), None) | (None, Some(x)) => Some(x.clone()),
        (Some(x), Some(y)) => Some(Synchronous {
            standbys: x.standbys.union(&y.standbys).cloned().collect(),
            count: x.count.min(y.count),
        }),
    }
}

/// The next step from the `recorded` standbys and the primary's `applied`
/// setting towards `wanted`, given the WAL each standby holds (by name):
/// `None` once there, or while the wanted standbys do not yet hold the WAL
/// written before their setting took effect (the record then keeps the old
/// standbys too).
pub fn next_step(
    recorded: Option<&Synchronous>,
    applied: &Applied,
    wanted: Option<&Synchronous>,
    held: &dyn Fn(&str) -> Option<u64>,
) -> Option<Step> {
    if !covers(recorded, wanted) {
        return Some(Step::Record(union(recorded, wanted)));
    }
    if applied.set.as_ref() != wanted {
        return Some(Step::Primary(wanted.cloned()));
    }
    if recorded == wanted {
        return None;
    }
    let caught_up = wanted.is_none_or(|w| {
        let holding = w
            .standbys
            .iter()
            .filter(|name| held(name).is_some_and(|lsn| lsn >= applied.at_lsn))
            .count();
        holding >= usize::try_from(w.count).unwrap_or(usize::MAX)
    });
    caught_up.then(|| Step::Record(wanted.cloned()))
}

/// `synchronous_standby_names` for `set`: `ANY count ("a", "b")`, names
/// quoted (a backend name may hold any character but a double quote,
/// which is doubled); empty for `None`.
pub fn standby_names(set: Option<&Synchronous>) -> String {
    let Some(s) = set.filter(|s| !s.standbys.is_empty()) else {
        return String::new();
    };
    let names: Vec<String> = s
        .standbys
        .iter()
        .map(|n| format!("\"{}\"", n.replace('"', "\"\"")))
        .collect();
    format!("ANY {} ({})", s.count.max(1), names.join(", "))
}
