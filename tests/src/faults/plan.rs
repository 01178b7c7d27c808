//! The fault schedule of one seed, as pure data: which faults, on whom
//! (named by role, resolved against the cluster when the fault starts),
//! and for how long.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};

use crate::lab::Daemon;

/// Whom a fault hits, chosen when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The host of the watchdog leader.
    Leader,
    /// The host of the current primary server.
    PrimaryHost,
    /// The host of a standby server (the first, or the second, by `pick`).
    Standby(usize),
}

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The host's link is cut (both ways): a failed switch port.
    Cut(Target),
    /// The host drops what it sends to one other host (`ip route add
    /// blackhole` inside its namespace): a one-way partition.
    OneWay(Target, Target),
    /// `kill -9` of one daemon; started again when the fault ends.
    KillDaemon(Target, Daemon),
    /// `kill -9` of the PostgreSQL server; started again when it ends.
    KillPostgres(Target),
    /// SIGSTOP of one daemon; SIGCONT when it ends.
    StopDaemon(Target, Daemon),
    /// SIGSTOP of every process of the host; SIGCONT when it ends.
    FreezeHost(Target),
    /// A daemon stopped (SIGTERM) and started again at once.
    RestartDaemon(Target, Daemon),
    /// A planned switchover to a standby (`pgwardenctl promote --wait`).
    Switchover(Target),
}

/// One step of a schedule: a fault held for `hold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The fault.
    pub fault: Fault,
    /// How long it lasts before it is undone (nothing to undo for a
    /// restart or a switchover).
    pub hold: Duration,
}

/// The steps of the schedule `seed`: `faults` faults, one at a time.
pub fn plan(seed: u64, faults: usize) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..faults)
        .map(|_| {
            let fault = fault(&mut rng);
            let hold = match fault {
                Fault::RestartDaemon(..) | Fault::Switchover(_) => Duration::ZERO,
                _ => Duration::from_millis(rng.random_range(2_000..=6_000)),
            };
            Step { fault, hold }
        })
        .collect()
}

fn target(rng: &mut StdRng) -> Target {
    match rng.random_range(0..4) {
        0 => Target::Leader,
        1 => Target::PrimaryHost,
        n => Target::Standby(n - 2),
    }
}

fn daemon(rng: &mut StdRng) -> Daemon {
    Daemon::ALL[rng.random_range(0..Daemon::ALL.len())]
}

fn fault(rng: &mut StdRng) -> Fault {
    match rng.random_range(0..8) {
        0 => Fault::Cut(target(rng)),
        1 => {
            let from = target(rng);
            let mut to = target(rng);
            while to == from {
                to = target(rng);
            }
            Fault::OneWay(from, to)
        }
        2 => Fault::KillDaemon(target(rng), daemon(rng)),
        3 => Fault::KillPostgres(target(rng)),
        4 => Fault::StopDaemon(target(rng), daemon(rng)),
        5 => Fault::FreezeHost(target(rng)),
        6 => Fault::RestartDaemon(target(rng), daemon(rng)),
        _ => Fault::Switchover(Target::Standby(rng.random_range(0..2))),
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Leader => f.write_str("leader"),
            Target::PrimaryHost => f.write_str("primary"),
            Target::Standby(n) => write!(f, "standby{n}"),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Cut(t) => write!(f, "cut {t}"),
            Fault::OneWay(a, b) => write!(f, "drop {a}->{b}"),
            Fault::KillDaemon(t, d) => write!(f, "kill -9 {} on {t}", d.bin()),
            Fault::KillPostgres(t) => write!(f, "kill -9 postgres on {t}"),
            Fault::StopDaemon(t, d) => write!(f, "SIGSTOP {} on {t}", d.bin()),
            Fault::FreezeHost(t) => write!(f, "freeze {t}"),
            Fault::RestartDaemon(t, d) => write!(f, "restart {} on {t}", d.bin()),
            Fault::Switchover(t) => write!(f, "switchover to {t}"),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hold.is_zero() {
            write!(f, "{}", self.fault)
        } else {
            write!(f, "{} {:.1}s", self.fault, self.hold.as_secs_f64())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_every_time_and_seeds_differ() {
        assert_eq!(plan(7, 5), plan(7, 5));
        let differ = (0..20).filter(|s| plan(*s, 4) != plan(s + 1, 4)).count();
        assert!(
            differ >= 18,
            "only {differ} of 20 neighbouring seeds differ"
        );
    }

    #[test]
    fn every_kind_of_fault_comes_up_and_holds_stay_bounded() {
        let steps: Vec<Step> = (0..200).flat_map(|s| plan(s, 3)).collect();
        let kinds: std::collections::BTreeSet<String> = steps
            .iter()
            .map(|s| {
                s.fault
                    .to_string()
                    .split(' ')
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        for k in [
            "cut",
            "drop",
            "kill",
            "SIGSTOP",
            "freeze",
            "restart",
            "switchover",
        ] {
            assert!(kinds.contains(k), "{k} never planned: {kinds:?}");
        }
        for s in &steps {
            assert!(s.hold <= Duration::from_secs(6), "{s}");
            if let Fault::OneWay(a, b) = s.fault {
                assert_ne!(a, b, "{s}");
            }
        }
    }
}
