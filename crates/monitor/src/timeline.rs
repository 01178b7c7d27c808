//! The failover timeline (`pgwardenctl history`): each failover or
//! switchover this monitor decided, with the time of each phase as it saw
//! it (the primary's first failed check; with a watchdog, when a quorum saw
//! it down and when the fence delay let the leader act; the decision, the
//! promotion, each standby repointed, the new generation; then the first
//! transaction this node's proxy routed to the new primary, with the
//! sessions it moved and ended) and the WAL the promoted standby lacked
//! (RPO). Fed by the deciding loop around [`Machine::step`] (alone, or the
//! [`Coordinator`](crate::coordinator::Coordinator) on the watchdog
//! leader's node); kept in `node.state_dir` (`history.json`, the last
//! [`KEPT`]) across restarts.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

use pgwarden_proto::v1::{FailoverPhase, FailoverRecord};
use serde::{Deserialize, Serialize};

use crate::machine::{Event, Machine};

/// Records kept.
pub const KEPT: usize = 50;

const FILE_NAME: &str = "history.json";

/// The primary's first failed check.
const SUSPECT: &str = "suspect";

/// One phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    /// What happened.
    pub name: String,
    /// When (unix ms).
    pub at_ms: i64,
    /// More about it.
    #[serde(default)]
    pub detail: String,
}

/// One failover or switchover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Record {
    /// "failover" or "switchover".
    pub kind: String,
    /// The generation before it.
    pub from_generation: u64,
    /// The generation that ended it (0 while it runs).
    pub to_generation: u64,
    /// The primary it replaced.
    pub old_primary: String,
    /// The primary it made.
    pub new_primary: String,
    /// Oldest first.
    pub phases: Vec<Phase>,
    /// WAL the old primary had flushed beyond what the promoted standby
    /// had received, at their last checks.
    pub rpo_bytes: Option<u64>,
}

/// The timeline: finished records and the one under way.
#[derive(Debug, Default)]
pub struct Timeline {
    done: VecDeque<Record>,
    open: Option<Record>,
    /// Phases before the decision: the primary's first failed check since
    /// it was last healthy, the quorum's verdict, the fence delay.
    early: Vec<Phase>,
    /// The primary and generation before the last step.
    primary: Option<usize>,
    generation: u64,
    path: Option<PathBuf>,
    /// Bumped at each change, for the API to pick up.
    version: u64,
}

impl Timeline {
    /// The timeline kept in `state_dir` (empty when there is none; a broken
    /// file is logged and started afresh: history is never worth refusing
    /// to start over).
    pub fn load(state_dir: &Path) -> Timeline {
        let path = state_dir.join(FILE_NAME);
        let done = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<VecDeque<Record>>(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "unreadable failover history; starting a new one");
                VecDeque::new()
            }),
            Err(_) => VecDeque::new(),
        };
        Timeline {
            done,
            path: Some(path),
            ..Timeline::default()
        }
    }

    /// Changes so far: the API's copy is stale when this moved.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Before `m` takes an operator's request.
    pub fn mark(&mut self, m: &Machine) {
        self.primary = m.primary();
        self.generation = m.generation();
    }

    /// Before `m` takes `e` (at `now_ms`).
    pub fn before(&mut self, m: &Machine, e: &Event, now_ms: i64) {
        self.mark(m);
        let name = |id: usize| {
            m.backends()
                .get(id)
                .map_or_else(|| id.to_string(), |b| b.spec.name.clone())
        };
        match e {
            Event::Checked { id, result, .. } if Some(*id) == m.primary() => match result {
                Err(why) if self.open.is_none() && !self.early.iter().any(|p| p.name == SUSPECT) => {
                    self.early.push(Phase {
                        name: SUSPECT.to_owned(),
                        at_ms: now_ms,
                        detail: format!("{}: {why}", name(*id)),
                    });
                }
                Ok(_) if self.open.is_none() => self.early.retain(|p| p.name != SUSPECT),
                _ => {}
            },
            Event::Promoted { id, result } => match result {
                Ok(timeline) => self.phase(
                    "promoted",
                    now_ms,
                    &format!("{} on timeline {timeline} (after the fence of the old primary, if it answered)", name(*id)),
                ),
                Err(why) => self.phase("promotion failed", now_ms, &format!("{}: {why}", name(*id))),
            },
            Event::Followed { id, result } => match result {
                Ok(()) => self.phase("repointed", now_ms, &name(*id)),
                Err(why) => self.phase("repoint failed", now_ms, &format!("{}: {why}", name(*id))),
            },
            _ => {}
        }
    }

    /// After `m` took a step, or an operator's request (at `now_ms`).
    pub fn after(&mut self, m: &Machine, now_ms: i64) {
        let name = |id: Option<usize>| {
            id.and_then(|i| m.backends().get(i))
                .map_or_else(String::new, |b| b.spec.name.clone())
        };
        if m.failover_in_progress() && self.open.is_none() {
            let candidate = m.failover_candidate();
            let old = self.primary;
            let flushed = old
                .and_then(|o| m.backends().get(o))
                .and_then(|b| b.last.as_ref())
                .map(|o| o.flush_lsn);
            let received = candidate
                .and_then(|c| m.backends().get(c))
                .and_then(|b| b.last.as_ref())
                .map(|o| o.received_lsn());
            let switchover = m.switchover_in_progress();
            let mut phases = std::mem::take(&mut self.early);
            phases.push(Phase {
                name: if switchover { "switchover" } else { "down" }.to_owned(),
                at_ms: now_ms,
                detail: format!("promoting {}", name(candidate)),
            });
            self.version += 1;
            self.open = Some(Record {
                kind: if switchover { "switchover" } else { "failover" }.to_owned(),
                from_generation: self.generation,
                to_generation: 0,
                old_primary: name(old),
                new_primary: name(candidate),
                phases,
                rpo_bytes: flushed.zip(received).map(|(f, r)| f.saturating_sub(r)),
            });
        } else if !m.failover_in_progress()
            && let Some(mut r) = self.open.take()
        {
            r.to_generation = m.generation();
            r.new_primary = name(m.primary());
            r.phases.push(Phase {
                name: "completed".to_owned(),
                at_ms: now_ms,
                detail: match m.primary() {
                    Some(_) => format!("generation {}, primary {}", m.generation(), r.new_primary),
                    None => format!("generation {}, no primary", m.generation()),
                },
            });
            tracing::info!(
                kind = %r.kind,
                old = %r.old_primary,
                new = %r.new_primary,
                took_ms = r.phases.last().map_or(0, |l| l.at_ms) - r.phases.first().map_or(0, |f| f.at_ms),
                "failover recorded in the history"
            );
            self.push_done(r);
        }
    }

    /// A phase before the decision about `m`'s primary `id` (the quorum's
    /// verdict, the fence delay): kept for the record the decision opens,
    /// once each; ignored for another backend or once a record is open.
    pub fn early(&mut self, m: &Machine, id: usize, name: &str, at_ms: i64, detail: &str) {
        if self.open.is_some()
            || m.primary() != Some(id)
            || self.early.iter().any(|p| p.name == name)
        {
            return;
        }
        self.early.push(Phase {
            name: name.to_owned(),
            at_ms,
            detail: detail.to_owned(),
        });
    }

    /// The fence let the promotion of the failover under way go ahead.
    pub fn fenced(&mut self, at_ms: i64, detail: &str) {
        self.phase("fence", at_ms, detail);
    }

    /// `names` no longer hold before a decision (the quorum sees the
    /// primary up again).
    pub fn drop_early(&mut self, names: &[&str]) {
        self.early.retain(|p| !names.contains(&p.name.as_str()));
    }

    /// The machine that was deciding is gone (the lead moved, or a
    /// proposal was refused) while a record was open: the record ends
    /// here, saying why; whoever decides next records its own.
    pub fn abandon(&mut self, at_ms: i64, why: &str) {
        self.early.clear();
        if let Some(mut r) = self.open.take() {
            r.phases.push(Phase {
                name: "abandoned".to_owned(),
                at_ms,
                detail: why.to_owned(),
            });
            self.push_done(r);
        }
    }

    /// What this node's proxy reports of `generation`: when it routed the
    /// first transaction to its primary, and the sessions it moved and
    /// ended. Added, in time order, to the record whose generations include
    /// it (a failover may take several: the promotion, then each standby
    /// repointed); ignored for another (a generation this monitor did not
    /// decide, or a report repeated).
    pub fn routed(&mut self, generation: u64, at_ms: i64, detail: &str) -> bool {
        const NAME: &str = "first write routed";
        let Some(r) = self
            .done
            .iter_mut()
            .rev()
            .find(|r| r.from_generation < generation && generation <= r.to_generation)
        else {
            return false;
        };
        if r.phases.iter().any(|p| p.name == NAME) {
            return false;
        }
        let at = r.phases.partition_point(|p| p.at_ms <= at_ms);
        r.phases.insert(
            at,
            Phase {
                name: NAME.to_owned(),
                at_ms,
                detail: detail.to_owned(),
            },
        );
        self.version += 1;
        self.save();
        true
    }

    fn push_done(&mut self, r: Record) {
        self.version += 1;
        self.done.push_back(r);
        while self.done.len() > KEPT {
            self.done.pop_front();
        }
        self.save();
    }

    fn phase(&mut self, name: &str, at_ms: i64, detail: &str) {
        if let Some(r) = self.open.as_mut() {
            self.version += 1;
            r.phases.push(Phase {
                name: name.to_owned(),
                at_ms,
                detail: detail.to_owned(),
            });
        }
    }

    /// The records for the API: finished ones, then the one under way.
    pub fn records(&self) -> Vec<FailoverRecord> {
        self.done
            .iter()
            .chain(self.open.as_ref())
            .map(|r| FailoverRecord {
                kind: r.kind.clone(),
                from_generation: r.from_generation,
                to_generation: r.to_generation,
                old_primary: r.old_primary.clone(),
                new_primary: r.new_primary.clone(),
                phases: r
                    .phases
                    .iter()
                    .map(|p| FailoverPhase {
                        name: p.name.clone(),
                        at_unix_ms: p.at_ms,
                        detail: p.detail.clone(),
                    })
                    .collect(),
                rpo_bytes: r.rpo_bytes,
            })
            .collect()
    }

    fn save(&self) {
        let Some(path) = &self.path else { return };
        let write = || -> std::io::Result<()> {
            let tmp = path.with_extension("json.tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&self.done)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %path.display(), error = %e, "could not save the failover history");
        }
    }
}

/// Now, in unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
