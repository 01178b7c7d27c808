//! The proposals waiting for their entry to be applied: answered when it
//! is (or another entry took its place), when the lead is lost first, or
//! when they were not committed within [`PROPOSAL_TICKS`].

use std::collections::BTreeMap;

use super::output::Output;
use super::ticks::{PROPOSAL_TICKS, PROPOSAL_TIMEOUT};
use crate::{Applied, Command, ProposeError, WatchdogNode};

/// A proposal waiting for its entry to be applied.
#[derive(Debug)]
struct Pending<R> {
    command: Command,
    /// `None`: nobody waits for the answer (this node's own monitor report).
    reply: Option<R>,
    /// The tick it was proposed at.
    since: u64,
}

/// The proposals in flight, by the log index their entry will have.
#[derive(Debug)]
pub(super) struct Proposals<R> {
    pending: BTreeMap<u64, Pending<R>>,
}

impl<R> Default for Proposals<R> {
    fn default() -> Self {
        Proposals {
            pending: BTreeMap::new(),
        }
    }
}

/// An answer to `reply`, if anybody waits for it.
fn answer<R, O>(reply: Option<R>, result: Result<(), String>, out: &mut Vec<Output<R, O>>) {
    if let Some(to) = reply {
        out.push(Output::Answer { to, result });
    }
}

impl<R> Proposals<R> {
    /// Proposes `command` at tick `now`; refused at once when this node
    /// does not lead.
    pub(super) fn propose<O>(
        &mut self,
        node: &mut WatchdogNode,
        command: Command,
        reply: Option<R>,
        now: u64,
        out: &mut Vec<Output<R, O>>,
    ) {
        match node.propose(command.clone()) {
            Ok(index) => {
                self.pending.insert(
                    index,
                    Pending {
                        command,
                        reply,
                        since: now,
                    },
                );
            }
            Err(ProposeError::NotLeader { leader }) => answer(
                reply,
                Err(format!(
                    "this watchdog is not the leader (leader: {leader:?})"
                )),
                out,
            ),
            Err(e) => answer(reply, Err(e.to_string()), out),
        }
    }

    /// The entry at `index` was applied as `command`, with `applied`.
    pub(super) fn applied<O>(
        &mut self,
        index: u64,
        command: &Command,
        applied: &Applied,
        out: &mut Vec<Output<R, O>>,
    ) {
        let Some(p) = self.pending.remove(&index) else {
            return;
        };
        let result = if p.command != *command {
            Err("another change took this log position (leadership changed)".to_owned())
        } else {
            match applied {
                Applied::Rejected(why) => Err(format!("rejected: {why:?}")),
                _ => Ok(()),
            }
        };
        answer(p.reply, result, out);
    }

    /// This node no longer leads: none of them will be applied as proposed.
    pub(super) fn lead_lost<O>(&mut self, out: &mut Vec<Output<R, O>>) {
        for (_, p) in std::mem::take(&mut self.pending) {
            answer(
                p.reply,
                Err("leadership changed before the change committed".into()),
                out,
            );
        }
    }

    /// Answers the proposals not committed within [`PROPOSAL_TICKS`] of
    /// `now`, and forgets them: their proposer (a monitor) must not wait on
    /// a reply that never comes.
    pub(super) fn expire<O>(&mut self, now: u64, out: &mut Vec<Output<R, O>>) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_sub(p.since) >= PROPOSAL_TICKS)
            .map(|(i, _)| *i)
            .collect();
        for index in expired {
            if let Some(p) = self.pending.remove(&index) {
                tracing::warn!(index, "a proposed change was not committed in time");
                answer(
                    p.reply,
                    Err(format!(
                        "not committed within {PROPOSAL_TIMEOUT:?} (no quorum?)"
                    )),
                    out,
                );
            }
        }
    }

    /// How many wait.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }
}
