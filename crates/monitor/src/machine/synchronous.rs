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
use super::event::Action;
use super::health::{Limits, lag, streams_from};

/// `failover.synchronous_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `"off"`: the primary's setting is left alone, but one this monitor
    /// made (a synchronous record left from when the mode was on) is
    /// cleared, and then the record.
    Off,
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
    if mode == Mode::Off {
        return None;
    }
    let mut candidates = eligible(backends, primary, limits);
    let is_recorded = |id: usize| {
        backends
            .get(id)
            .is_some_and(|b| Synchronous::includes(recorded, &b.spec.name))
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
            Mode::Off | Mode::On => None,
            Mode::Strict => waited_for(backends, primary, count, recorded),
        };
    }
    let count = u32::try_from(standbys.len()).unwrap_or(count).min(count);
    Some(Synchronous { standbys, count })
}

/// [`Mode::Strict`] with no standby eligible: the standbys commits keep
/// waiting for: the recorded ones but the primary, else (the primary was
/// just promoted from among them) `count` of the standbys not fenced;
/// `None` when there is none at all.
fn waited_for(
    backends: &[BackendView],
    primary: usize,
    count: u32,
    recorded: Option<&Synchronous>,
) -> Option<Synchronous> {
    let primary_name = backends.get(primary).map(|b| b.spec.name.as_str());
    let others = |s: &Synchronous| {
        let standbys: std::collections::BTreeSet<String> = s
            .standbys
            .iter()
            .filter(|n| Some(n.as_str()) != primary_name)
            .cloned()
            .collect();
        let n = u32::try_from(standbys.len()).unwrap_or(u32::MAX);
        (!standbys.is_empty()).then(|| Synchronous {
            standbys,
            count: s.count.min(n),
        })
    };
    recorded.and_then(others).or_else(|| {
        let all = Synchronous {
            standbys: backends
                .iter()
                .enumerate()
                .filter(|&(i, b)| i != primary && b.status != Status::Detached)
                .map(|(_, b)| b.spec.name.clone())
                .collect(),
            count,
        };
        others(&all)
    })
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
/// setting (`None`: not known) towards `wanted`, given the WAL each standby
/// holds (by name): `None` once there, or while the wanted standbys do not
/// yet hold the WAL written before their setting took effect (the record
/// then keeps the old standbys too).
pub fn next_step(
    recorded: Option<&Synchronous>,
    applied: Option<&Applied>,
    wanted: Option<&Synchronous>,
    held: &dyn Fn(&str) -> Option<u64>,
) -> Option<Step> {
    if !covers(recorded, wanted) {
        return Some(Step::Record(union(recorded, wanted)));
    }
    let Some(applied) = applied.filter(|a| a.set.as_ref() == wanted) else {
        return Some(Step::Primary(wanted.cloned()));
    };
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

/// The standbys a [`standby_names`] setting names (each name in double
/// quotes, `""` for a quote inside), in order.
pub fn named_in(names: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = names.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut name = String::new();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    name.push('"');
                } else {
                    break;
                }
            } else {
                name.push(c);
            }
        }
        out.push(name);
    }
    out
}

/// Keeps the primary's synchronous standbys as `failover.synchronous_mode`
/// asks, one [`Step`] at a time: the machine commits the records it gives
/// and performs the settings (one at a time), telling it how each went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keeper {
    mode: Mode,
    count: u32,
    /// The primary's setting as last made (`None`: not known, as after a
    /// start or a promotion: it is made again).
    applied: Option<Applied>,
    /// A setting is being made.
    setting: bool,
}

impl Keeper {
    /// A keeper for `mode`, `count` standbys confirming each commit.
    pub fn new(mode: Mode, count: u32) -> Self {
        Keeper {
            mode,
            count: count.max(1),
            applied: None,
            setting: false,
        }
    }

    /// The next step for `primary`, the generation recording `recorded`;
    /// `None` while a setting is being made.
    pub fn next(
        &mut self,
        backends: &[BackendView],
        primary: usize,
        limits: &Limits,
        recorded: Option<&Synchronous>,
    ) -> Option<Step> {
        if self.setting || (self.mode == Mode::Off && recorded.is_none()) {
            return None;
        }
        let wanted = wanted(self.mode, self.count, backends, primary, limits, recorded);
        let held = |name: &str| {
            backends
                .iter()
                .find(|b| b.spec.name == name)
                .and_then(|b| b.last.as_ref())
                .map(|o| o.received_lsn())
        };
        let step = next_step(recorded, self.applied.as_ref(), wanted.as_ref(), &held);
        self.setting = matches!(step, Some(Step::Primary(_)));
        step
    }

    /// The steps for `primary` now: a new record put in `recorded`
    /// (`true`: to commit), and the action making the primary's setting,
    /// which may follow the record at once (it is performed once the
    /// record is committed).
    pub fn keep(
        &mut self,
        backends: &[BackendView],
        primary: usize,
        limits: &Limits,
        recorded: &mut Option<Synchronous>,
    ) -> (bool, Option<Action>) {
        // Not while the primary is not up or its checks fail: a failover
        // may be near.
        let up = |b: &BackendView| b.status == Status::Up && b.failures == 0;
        if !backends.get(primary).is_some_and(up) {
            return (false, None);
        }
        let mut changed = false;
        for _ in 0..2 {
            match self.next(backends, primary, limits, recorded.as_ref()) {
                Some(Step::Record(set)) if !changed => {
                    Self::log_record(set.as_ref());
                    *recorded = set;
                    changed = true;
                }
                Some(Step::Primary(set)) => {
                    return (changed, Some(Action::SetSynchronous { id: primary, set }));
                }
                // A second record waits for the next round.
                _ => break,
            }
        }
        (changed, None)
    }

    fn log_record(set: Option<&Synchronous>) {
        let names = standby_names(set);
        tracing::info!(synchronous_standby_names = %names, "synchronous standbys recorded");
        if set.is_none() {
            tracing::warn!(
                "no standby can confirm commits: replication is asynchronous until one can \
                 (failover.synchronous_mode = \"on\")"
            );
        }
    }

    /// The setting of `set` was made, in force from the primary's WAL
    /// position in `result`, or failed (made again next time).
    pub fn made(&mut self, set: Option<Synchronous>, result: &Result<u64, String>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not set the primary's synchronous standbys; trying again");
        }
        self.setting = false;
        self.applied = result.as_ref().ok().map(|&at_lsn| Applied { set, at_lsn });
    }

    /// Standby `name` was promoted: it holds every commit acknowledged
    /// until now, so a synchronous `recorded` names it alone; its setting
    /// is made again.
    pub fn promoted(&mut self, name: String, recorded: &mut Option<Synchronous>) {
        self.setting = false;
        self.applied = None;
        if recorded.is_some() {
            *recorded = Some(Synchronous {
                standbys: [name].into(),
                count: 1,
            });
        }
    }

    /// The `synchronous_standby_names` promoted standby `id` gets before it
    /// takes writes, replacing `old` ([`Keeper::at_promotion`] of the
    /// standbys not fenced).
    pub fn names_at(
        &self,
        backends: &[BackendView],
        id: usize,
        old: Option<usize>,
    ) -> Option<String> {
        if self.mode == Mode::Off {
            return None;
        }
        let followers: Vec<&str> = (backends.iter().enumerate())
            .filter(|&(i, b)| i != id && Some(i) != old && b.status != Status::Detached)
            .map(|(_, b)| b.spec.name.as_str())
            .collect();
        Some(standby_names(self.at_promotion(&followers).as_ref()))
    }

    /// What a promoted standby is set to before it takes writes, given the
    /// standbys that will follow it: none in [`Mode::On`] (they stream
    /// again only once repointed; they are made synchronous then), and in
    /// [`Mode::Strict`] `count` of them, so that it acknowledges nothing
    /// before one of them confirms it.
    pub fn at_promotion(&self, followers: &[&str]) -> Option<Synchronous> {
        match self.mode {
            Mode::Off | Mode::On => None,
            Mode::Strict => {
                let standbys: std::collections::BTreeSet<String> =
                    followers.iter().map(|s| (*s).to_owned()).collect();
                let n = u32::try_from(standbys.len()).unwrap_or(u32::MAX);
                (!standbys.is_empty()).then(|| Synchronous {
                    standbys,
                    count: self.count.min(n),
                })
            }
        }
    }
}
