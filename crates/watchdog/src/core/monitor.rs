//! Whether this node's monitor answers: probed every
//! [`MONITOR_PROBE_TICKS`] (after the last probe ended), alive at its first
//! answer, gone once it has not answered for [`MONITOR_GRACE_TICKS`]
//! (counted from the core's start while it never answered), and reported
//! while the record disagrees, at most every [`MONITOR_RETRY_TICKS`]
//! (at once after what is known changed).

use super::ticks::{MONITOR_GRACE_TICKS, MONITOR_PROBE_TICKS, MONITOR_RETRY_TICKS};

/// What is known of this node's monitor, and when to ask and report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MonitorWatch {
    /// Alive or gone; `None` until known.
    known: Option<bool>,
    /// The tick since which every probe failed.
    failing_since: Option<u64>,
    /// A probe is out.
    probing: bool,
    /// The tick from which the next probe may start.
    next_probe: u64,
    /// The tick this node last reported what is known (reset when it
    /// changes).
    reported: Option<u64>,
}

impl MonitorWatch {
    /// Nothing known at tick `now`: the grace counts from here.
    pub(super) fn new(now: u64) -> Self {
        MonitorWatch {
            known: None,
            failing_since: Some(now),
            probing: false,
            next_probe: now,
            reported: None,
        }
    }

    /// Whether a probe starts now (then it is out until [`Self::probed`]).
    pub(super) fn probe_due(&mut self, now: u64) -> bool {
        let due = !self.probing && now >= self.next_probe;
        self.probing |= due;
        due
    }

    /// A probe ended at `now`: the monitor answered, or not.
    pub(super) fn probed(&mut self, now: u64, alive: bool) {
        self.probing = false;
        self.next_probe = now + MONITOR_PROBE_TICKS;
        let before = self.known;
        if alive {
            self.failing_since = None;
            self.known = Some(true);
        } else {
            let since = *self.failing_since.get_or_insert(now);
            if now - since >= MONITOR_GRACE_TICKS {
                self.known = Some(false);
            }
        }
        if self.known != before {
            self.reported = None;
        }
    }

    /// Alive or gone, once known.
    pub(super) fn known(&self) -> Option<bool> {
        self.known
    }

    /// What to report at `now`, the record saying `recorded_alive`: the
    /// known state when it differs and no report went out lately.
    pub(super) fn report_due(&mut self, now: u64, recorded_alive: bool) -> Option<bool> {
        let alive = self.known?;
        let due =
            recorded_alive != alive && self.reported.is_none_or(|t| now - t >= MONITOR_RETRY_TICKS);
        if due {
            self.reported = Some(now);
        }
        due.then_some(alive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probes failing from `from` to `to` (inclusive), one per probe period;
    /// what is known after each.
    fn failing(w: &mut MonitorWatch, ticks: impl Iterator<Item = u64>) -> Vec<(u64, Option<bool>)> {
        ticks
            .map(|t| {
                w.probed(t, false);
                (t, w.known())
            })
            .collect()
    }

    /// A case: its name, the first failure after an answer (`None`: never
    /// answered), the failures' ticks, what is known after the last.
    type Case = (&'static str, Option<u64>, &'static [u64], Option<bool>);

    #[test]
    fn the_monitor_is_gone_only_after_the_grace() {
        let cases: &[Case] = &[
            (
                "never answered: counted from the start",
                None,
                &[10, 20, 49],
                None,
            ),
            ("never answered, grace over", None, &[10, 50], Some(false)),
            (
                "answered, then failing",
                Some(100),
                &[100, 110, 149],
                Some(true),
            ),
            (
                "answered, then failing past the grace",
                Some(100),
                &[100, 150],
                Some(false),
            ),
        ];
        for (case, answered_before, failures, known) in cases {
            let mut w = MonitorWatch::new(0);
            if let Some(first) = answered_before {
                w.probed(first - 10, true);
            }
            let after = failing(&mut w, failures.iter().copied());
            assert_eq!(after.last().map(|a| a.1), Some(*known), "{case}: {after:?}");
        }
    }

    #[test]
    fn one_answer_ends_the_failing_run() {
        let mut w = MonitorWatch::new(0);
        w.probed(40, false);
        w.probed(45, true);
        w.probed(60, false);
        w.probed(100, false);
        assert_eq!(w.known(), Some(true), "failing since 60 only");
        w.probed(110, false);
        assert_eq!(w.known(), Some(false));
    }

    #[test]
    fn probes_do_not_overlap_and_wait_a_period_after_the_last() {
        let mut w = MonitorWatch::new(0);
        let mut started = Vec::new();
        let mut ends = None;
        for t in 0..60 {
            if ends == Some(t) {
                w.probed(t, true);
                ends = None;
            }
            if w.probe_due(t) {
                assert_eq!(ends, None, "a probe started while one was out");
                started.push(t);
                // Each probe takes 3 ticks.
                ends = Some(t + 3);
            }
        }
        assert_eq!(started, [0, 13, 26, 39, 52]);
    }

    #[test]
    fn the_state_is_reported_while_the_record_disagrees_at_most_every_retry() {
        let mut w = MonitorWatch::new(0);
        assert_eq!(w.report_due(1, true), None, "nothing known");
        w.probed(5, true);
        assert_eq!(w.report_due(5, true), None, "the record agrees");
        assert_eq!(w.report_due(6, false), Some(true));
        assert_eq!(w.report_due(7, false), None, "just reported");
        assert_eq!(w.report_due(6 + MONITOR_RETRY_TICKS, false), Some(true));
        // What is known changed: reported at once.
        w.probed(100, false);
        w.probed(160, false);
        assert_eq!(w.known(), Some(false));
        assert_eq!(w.report_due(161, true), Some(false));
    }
}
