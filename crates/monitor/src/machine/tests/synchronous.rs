//! Synchronous replication recorded for the generation: a failover
//! promotes only a standby that provably holds every commit the primary
//! acknowledged, or none.

use super::candidates::standby_at;
use super::*;

/// The record of generation 1, pg0 primary, with `standbys` synchronous
/// (`count` of them confirming each commit).
fn synchronous(standbys: &[&str], count: u32) -> Generation {
    Generation {
        synchronous: Some(Synchronous {
            standbys: standbys.iter().map(|s| (*s).to_owned()).collect(),
            count,
        }),
        ..recorded(1, "pg0")
    }
}

/// pg0, pg1, pg2 starting from `record`, checked healthy at 1 GiB, then pg1
/// and pg2 as given (`None`: its checks fail from then on), then pg0 dies:
/// the machine and what the death set off.
fn killed_under(
    record: &Generation,
    pg1: Option<Observation>,
    pg2: Option<Observation>,
) -> (Machine, Vec<Action>) {
    let mut m = three_from(record);
    healthy(&mut m, GB);
    for (id, o) in [(1, pg1), (2, pg2)] {
        match o {
            Some(o) => {
                ok(&mut m, id, o);
            }
            None => {
                for _ in 0..3 {
                    fail(&mut m, id);
                }
            }
        }
    }
    let a = kill_primary(&mut m);
    (m, a)
}

fn promoted_any(a: &[Action]) -> bool {
    a.iter().any(|a| matches!(a, Action::Promote { .. }))
}

#[test]
fn only_the_synchronous_standby_is_promoted_even_when_another_received_more() {
    let (_, a) = killed_under(
        &synchronous(&["pg1"], 1),
        Some(standby_at(1, GB + 100, GB, true)),
        Some(standby_at(1, GB + 900, GB + 900, true)),
    );
    assert_promotes(&a, 1);
}

#[test]
fn a_standby_that_received_less_is_not_promoted_over_the_synchronous_one_that_replayed_less() {
    // pg2 replayed further, pg1 (synchronous) holds more.
    let (_, a) = killed_under(
        &synchronous(&["pg1", "pg2"], 2),
        Some(standby_at(1, GB + 500, GB, true)),
        Some(standby_at(1, GB + 400, GB + 400, true)),
    );
    assert_promotes(&a, 1);
}

#[test]
fn without_its_synchronous_standby_no_failover_happens_and_the_status_says_why() {
    let (m, a) = killed_under(
        &synchronous(&["pg1"], 1),
        None,
        Some(standby_at(1, GB + 900, GB + 900, true)),
    );
    assert!(!promoted_any(&a), "{a:?}");
    let why = m.blocked.clone().unwrap_or_default();
    assert!(
        why.contains("no safe candidate") && why.contains("pg1"),
        "{why}"
    );
}

#[test]
fn any_one_of_two_confirming_needs_both_to_answer_to_choose() {
    // ANY 1 (pg1, pg2): a commit may be on pg2 alone, which does not
    // answer: pg1 cannot be shown to hold it.
    let (m, a) = killed_under(
        &synchronous(&["pg1", "pg2"], 1),
        Some(standby_at(1, GB + 500, GB + 500, true)),
        None,
    );
    assert!(!promoted_any(&a), "{a:?}");
    assert!(
        m.blocked.as_deref().is_some_and(
            |w| w.contains("1 of the synchronous standbys (pg1, pg2) answer, 2 needed")
        ),
        "{:?}",
        m.blocked
    );
    // Both answering: the one holding more is promoted.
    let (_, a) = killed_under(
        &synchronous(&["pg1", "pg2"], 1),
        Some(standby_at(1, GB + 500, GB + 500, true)),
        Some(standby_at(1, GB + 700, GB + 100, true)),
    );
    assert_promotes(&a, 2);
}

#[test]
fn all_of_two_confirming_lets_either_take_over_when_the_other_is_gone() {
    let (_, a) = killed_under(
        &synchronous(&["pg1", "pg2"], 2),
        None,
        Some(standby_at(1, GB + 700, GB + 700, true)),
    );
    assert_promotes(&a, 2);
}

#[test]
fn an_asynchronous_record_promotes_by_received_wal_as_before() {
    let (_, a) = killed_under(
        &recorded(1, "pg0"),
        Some(standby_at(1, GB + 100, GB, true)),
        Some(standby_at(1, GB + 900, GB + 900, true)),
    );
    assert_promotes(&a, 2);
}

#[test]
fn the_synchronous_standbys_are_kept_in_what_the_machine_commits() {
    let record = synchronous(&["pg1"], 1);
    let m = three_from(&record);
    assert_eq!(m.committed().synchronous, record.synchronous);
}

#[test]
fn the_safe_floor_is_the_wal_the_confirming_standbys_are_sure_to_hold() {
    use super::super::candidate::safe_floor;
    let sync = |names: &[&str], count| Synchronous {
        standbys: names.iter().map(|s| (*s).to_owned()).collect(),
        count,
    };
    /// What, the record, the standbys answering with their WAL, the floor
    /// or words of the error.
    type Row<'a> = (
        &'a str,
        Synchronous,
        Vec<(&'a str, u64)>,
        Result<u64, &'a str>,
    );
    let table: [Row; 6] = [
        (
            "one of one",
            sync(&["a"], 1),
            vec![("a", 10), ("b", 50)],
            Ok(10),
        ),
        (
            "one of one, gone",
            sync(&["a"], 1),
            vec![("b", 50)],
            Err("0 of"),
        ),
        (
            "any one of three, all answer: the most",
            sync(&["a", "b", "c"], 1),
            vec![("a", 10), ("b", 30), ("c", 20)],
            Ok(30),
        ),
        (
            "any two of three, two answer: the more of the two",
            sync(&["a", "b", "c"], 2),
            vec![("a", 10), ("c", 20)],
            Ok(20),
        ),
        (
            "any two of three, three answer: the second most",
            sync(&["a", "b", "c"], 2),
            vec![("a", 10), ("b", 30), ("c", 20)],
            Ok(20),
        ),
        (
            "none recorded",
            sync(&[], 1),
            vec![("a", 10)],
            Err("no safe candidate"),
        ),
    ];
    for (what, record, answering, want) in table {
        match (safe_floor(&record, &answering), want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{what}"),
            (Err(e), Err(words)) => assert!(e.contains(words), "{what}: {e}"),
            (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
        }
    }
}

mod wanted_and_steps {
    use super::super::super::synchronous::{
        Applied, Mode, Step, named_in, next_step, standby_names, wanted,
    };
    use super::*;

    fn set(names: &[&str], count: u32) -> Synchronous {
        Synchronous {
            standbys: names.iter().map(|s| (*s).to_owned()).collect(),
            count,
        }
    }

    /// pg0 primary at 1 GiB, pg1 and pg2 streaming from it holding `pg1`
    /// and `pg2` bytes of WAL.
    fn streaming(pg1: u64, pg2: u64) -> Machine {
        let mut m = up(GB);
        ok(&mut m, 1, standby_at(1, pg1, pg1, true));
        ok(&mut m, 2, standby_at(1, pg2, pg2, true));
        m
    }

    fn wanted_of(
        m: &Machine,
        mode: Mode,
        count: u32,
        recorded: Option<&Synchronous>,
    ) -> Option<Synchronous> {
        wanted(mode, count, m.backends(), 0, &m.limits, recorded)
    }

    #[test]
    fn the_standbys_holding_the_most_wal_are_wanted_and_a_recorded_healthy_one_stays() {
        let m = streaming(GB - 10, GB - 5);
        assert_eq!(wanted_of(&m, Mode::On, 1, None), Some(set(&["pg2"], 1)));
        // pg1 recorded and healthy: kept, though pg2 holds more.
        let pg1 = set(&["pg1"], 1);
        assert_eq!(wanted_of(&m, Mode::On, 1, Some(&pg1)), Some(pg1.clone()));
        assert_eq!(
            wanted_of(&m, Mode::On, 2, Some(&pg1)),
            Some(set(&["pg1", "pg2"], 2))
        );
        // Asking for more than there are: as many as there are.
        assert_eq!(
            wanted_of(&m, Mode::On, 3, None),
            Some(set(&["pg1", "pg2"], 2))
        );
    }

    #[test]
    fn a_standby_down_or_behind_or_not_streaming_is_not_wanted() {
        let mut m = streaming(GB, GB - (32 << 20));
        // pg2 is 32 MiB behind (max_lag_bytes is 16 MiB).
        assert_eq!(wanted_of(&m, Mode::On, 2, None), Some(set(&["pg1"], 1)));
        ok(&mut m, 1, standby_at(1, GB, GB, false));
        assert_eq!(
            wanted_of(&m, Mode::On, 2, None),
            None,
            "nobody streams close enough: asynchronous"
        );
        let pg1 = set(&["pg1"], 1);
        assert_eq!(
            wanted_of(&m, Mode::Strict, 2, Some(&pg1)),
            Some(pg1.clone()),
            "strict keeps waiting for the recorded standby"
        );
        for _ in 0..3 {
            fail(&mut m, 1);
        }
        assert_eq!(wanted_of(&m, Mode::Strict, 1, Some(&pg1)), Some(pg1));
    }

    /// Runs [`next_step`] from `recorded` (the primary's setting the same)
    /// to `target`, the standbys holding `held` (by name) and the primary's
    /// WAL at `at_lsn` when a setting takes effect; checks after each step
    /// that the record covers what the primary acknowledges. The steps.
    fn walk(
        recorded: Option<Synchronous>,
        target: Option<Synchronous>,
        held: &dyn Fn(&str) -> Option<u64>,
        at_lsn: u64,
    ) -> Vec<Step> {
        let mut record = recorded.clone();
        let mut applied = Applied {
            set: recorded,
            at_lsn: 0,
        };
        let mut steps = Vec::new();
        while let Some(step) = next_step(record.as_ref(), Some(&applied), target.as_ref(), held) {
            match &step {
                Step::Record(r) => record.clone_from(r),
                Step::Primary(s) => {
                    applied = Applied {
                        set: s.clone(),
                        at_lsn,
                    }
                }
            }
            // Every acknowledged commit is on `count` of the applied set:
            // the record must name them all, asking no more of them.
            if let Some(a) = &applied.set {
                let r = record
                    .as_ref()
                    .unwrap_or_else(|| panic!("{step:?}: no record of {a:?}"));
                assert!(
                    a.standbys.is_subset(&r.standbys) && r.count <= a.count,
                    "{step:?}: {r:?} does not cover {a:?}"
                );
            }
            steps.push(step);
            assert!(steps.len() < 10, "{steps:?}");
        }
        assert_eq!(record, target);
        steps
    }

    #[test]
    fn becoming_synchronous_records_the_standby_before_the_primary_waits_for_it() {
        let steps = walk(None, Some(set(&["pg1"], 1)), &|_| Some(0), 100);
        assert_eq!(
            steps,
            [
                Step::Record(Some(set(&["pg1"], 1))),
                Step::Primary(Some(set(&["pg1"], 1)))
            ]
        );
    }

    #[test]
    fn a_replaced_standby_leaves_the_record_only_once_its_successor_holds_the_wal() {
        let pg1 = set(&["pg1"], 1);
        let pg2 = set(&["pg2"], 1);
        // pg2 behind what the primary had written when it took pg2: the
        // record keeps pg1 too, and next_step waits.
        let mut record = Some(set(&["pg1", "pg2"], 1));
        let applied = Applied {
            set: Some(pg2.clone()),
            at_lsn: 100,
        };
        let behind = |n: &str| (n == "pg2").then_some(99);
        assert_eq!(
            next_step(record.as_ref(), Some(&applied), Some(&pg2), &behind),
            None
        );
        let there = |n: &str| (n == "pg2").then_some(100);
        assert_eq!(
            next_step(record.as_ref(), Some(&applied), Some(&pg2), &there),
            Some(Step::Record(Some(pg2.clone())))
        );
        record = Some(pg2.clone());
        assert_eq!(
            next_step(record.as_ref(), Some(&applied), Some(&pg2), &there),
            None
        );
        // The whole way.
        let steps = walk(Some(pg1), Some(pg2.clone()), &there, 100);
        assert_eq!(
            steps,
            [
                Step::Record(Some(set(&["pg1", "pg2"], 1))),
                Step::Primary(Some(pg2.clone())),
                Step::Record(Some(pg2)),
            ]
        );
    }

    #[test]
    fn becoming_asynchronous_clears_the_primary_before_the_record() {
        let steps = walk(Some(set(&["pg1"], 1)), None, &|_| None, 100);
        assert_eq!(steps, [Step::Primary(None), Step::Record(None)]);
    }

    #[test]
    fn fewer_confirming_standbys_are_recorded_with_the_smaller_count_first() {
        let steps = walk(
            Some(set(&["pg1", "pg2"], 2)),
            Some(set(&["pg1"], 1)),
            &|_| Some(100),
            100,
        );
        assert_eq!(
            steps,
            [
                Step::Record(Some(set(&["pg1", "pg2"], 1))),
                Step::Primary(Some(set(&["pg1"], 1))),
                Step::Record(Some(set(&["pg1"], 1))),
            ]
        );
    }

    #[test]
    fn synchronous_standby_names_quotes_each_name() {
        assert_eq!(standby_names(None), "");
        assert_eq!(standby_names(Some(&set(&["pg1"], 1))), "ANY 1 (\"pg1\")");
        assert_eq!(
            standby_names(Some(&set(&["pg2", "a\"b"], 2))),
            "ANY 2 (\"a\"\"b\", \"pg2\")"
        );
    }

    #[test]
    fn the_names_a_setting_names_are_read_back_as_written() {
        for names in [vec![], vec!["pg1"], vec!["pg1", "we\"ird, (name)"]] {
            let set = Synchronous {
                standbys: names.iter().map(|n| (*n).to_owned()).collect(),
                count: 1,
            };
            let written = standby_names(Some(&set));
            let mut read = named_in(&written);
            read.sort();
            let want: Vec<String> = set.standbys.iter().cloned().collect();
            assert_eq!(read, want, "{written}");
        }
    }
}

mod kept {
    use super::super::super::synchronous::{Keeper, Mode};
    use super::*;

    fn set(names: &[&str], count: u32) -> Option<Synchronous> {
        Some(Synchronous {
            standbys: names.iter().map(|s| (*s).to_owned()).collect(),
            count,
        })
    }

    /// A machine keeping synchronous standbys whose settings are answered
    /// at once, made in force at the primary's WAL position `at_lsn`.
    struct Kept {
        m: Machine,
        at_lsn: u64,
        /// The settings asked for, in order, with the record when asked.
        asked: Vec<(Option<Synchronous>, Option<Synchronous>)>,
    }

    impl Kept {
        /// [`three`] keeping `count` synchronous standbys in `mode`,
        /// checked healthy at 1 GiB.
        fn new(mode: Mode, count: u32) -> Kept {
            let mut k = Kept {
                m: three().with_synchronous(Some(Keeper::new(mode, count))),
                at_lsn: GB,
                asked: Vec::new(),
            };
            k.check(0, Observation::primary(1, GB));
            for id in [1, 2] {
                k.check(id, Observation::standby(1, GB, Some(5000)));
            }
            k
        }

        /// Feeds `event`, answering the settings it asks for: the actions.
        fn step(&mut self, event: Event) -> Vec<Action> {
            let mut all = Vec::new();
            let mut next = Some(event);
            while let Some(e) = next.take() {
                let a = self.m.step(e);
                for action in &a {
                    if let Action::SetSynchronous { id, set } = action {
                        self.asked
                            .push((set.clone(), self.m.committed().synchronous));
                        next = Some(Event::SynchronousSet {
                            id: *id,
                            set: set.clone(),
                            result: Ok(self.at_lsn),
                        });
                    }
                }
                all.extend(a);
            }
            all
        }

        fn check(&mut self, id: usize, o: Observation) -> Vec<Action> {
            self.step(checked(id, Ok(o)))
        }

        fn fail(&mut self, id: usize) {
            for _ in 0..3 {
                self.step(checked(id, Err("connection refused".into())));
            }
        }

        /// Checks pg0 at `lsn` a few times.
        fn settle(&mut self, lsn: u64) {
            for _ in 0..4 {
                self.check(0, Observation::primary(1, lsn));
            }
        }

        fn recorded(&self) -> Option<Synchronous> {
            self.m.committed().synchronous
        }
    }

    #[test]
    fn a_healthy_standby_is_recorded_then_made_synchronous_and_nothing_more_is_asked() {
        let mut k = Kept::new(Mode::On, 1);
        k.settle(GB);
        assert_eq!(
            k.asked,
            [(set(&["pg1"], 1), set(&["pg1"], 1))],
            "recorded before the primary waits for it, then set once"
        );
        assert_eq!(k.recorded(), set(&["pg1"], 1));
    }

    #[test]
    fn with_the_synchronous_standby_down_the_other_one_takes_its_place() {
        let mut k = Kept::new(Mode::On, 1);
        k.settle(GB);
        k.at_lsn = GB + 10;
        k.fail(1);
        k.settle(GB);
        assert_eq!(
            k.asked.last(),
            Some(&(set(&["pg2"], 1), set(&["pg1", "pg2"], 1))),
            "both recorded while the setting moves"
        );
        assert_eq!(
            k.recorded(),
            set(&["pg1", "pg2"], 1),
            "pg2 lacks WAL written before"
        );
        // pg2 holds the WAL written before its setting took effect: pg1
        // leaves the record.
        k.check(2, Observation::standby(1, GB + 10, Some(5000)));
        assert_eq!(k.recorded(), set(&["pg2"], 1));
    }

    #[test]
    fn with_no_standby_left_on_turns_asynchronous_and_strict_keeps_waiting() {
        for (mode, last_asked, record) in [
            (Mode::On, None, None),
            // pg2 took over from pg1, then failed too: commits wait for it.
            (Mode::Strict, set(&["pg2"], 1), set(&["pg2"], 1)),
        ] {
            let mut k = Kept::new(mode, 1);
            k.settle(GB);
            k.fail(1);
            k.fail(2);
            k.settle(GB);
            assert_eq!(
                k.asked.last().map(|(s, _)| s.clone()),
                Some(last_asked),
                "{mode:?}"
            );
            assert_eq!(k.recorded(), record, "{mode:?}");
        }
    }

    #[test]
    fn a_promoted_standby_is_set_before_it_takes_writes_and_recorded_alone() {
        for (mode, names) in [(Mode::On, ""), (Mode::Strict, "ANY 1 (\"pg2\")")] {
            let mut k = Kept::new(mode, 1);
            k.settle(GB);
            let mut a = Vec::new();
            for _ in 0..3 {
                a.extend(k.step(checked(0, Err("connection refused".into()))));
            }
            let promote = a.iter().find_map(|a| match a {
                Action::Promote {
                    id: 1,
                    synchronous_standby_names,
                    ..
                } => Some(synchronous_standby_names.clone()),
                _ => None,
            });
            assert_eq!(promote, Some(Some(names.to_owned())), "{mode:?}: {a:?}");
            k.step(Event::Promoted {
                id: 1,
                result: Ok(2),
            });
            assert_eq!(k.recorded(), set(&["pg1"], 1), "{mode:?}");
        }
    }

    #[test]
    fn a_failed_setting_is_made_again_at_the_next_check() {
        let mut m = three().with_synchronous(Some(Keeper::new(Mode::On, 1)));
        let mut asked = 0;
        for round in 0..4 {
            for id in 0..3 {
                let o = if id == 0 {
                    Observation::primary(1, GB)
                } else {
                    Observation::standby(1, GB, Some(5000))
                };
                for action in ok(&mut m, id, o) {
                    if let Action::SetSynchronous { id, set } = action {
                        asked += 1;
                        let answer = m.step(Event::SynchronousSet {
                            id,
                            set,
                            result: Err("permission denied".into()),
                        });
                        // Not at once: at the next check.
                        assert!(
                            !answer
                                .iter()
                                .any(|a| matches!(a, Action::SetSynchronous { .. })),
                            "round {round}: {answer:?}"
                        );
                    }
                }
            }
        }
        assert!(asked >= 4, "asked {asked} times");
        assert_eq!(m.committed().synchronous, set(&["pg1"], 1));
    }

    #[test]
    fn off_leaves_the_setting_alone_but_clears_one_it_made() {
        for (record, asked, left) in [
            (recorded(1, "pg0"), 0, None),
            (synchronous(&["pg1"], 1), 1, None),
        ] {
            let mut k = Kept {
                m: three_from(&record).with_synchronous(Some(Keeper::new(Mode::Off, 1))),
                at_lsn: GB,
                asked: Vec::new(),
            };
            k.check(0, Observation::primary(1, GB));
            for id in [1, 2] {
                k.check(id, Observation::standby(1, GB, Some(5000)));
            }
            k.settle(GB);
            assert_eq!(k.asked.len(), asked, "{:?}", k.asked);
            assert!(
                k.asked.iter().all(|(set, _)| set.is_none()),
                "{:?}",
                k.asked
            );
            assert_eq!(k.recorded(), left);
        }
    }
}
