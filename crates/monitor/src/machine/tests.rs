//! The machine driven through whole failovers as tables of events.

use super::*;

mod candidates;
mod synchronous;

const GB: u64 = 1 << 30;

fn spec(name: &str, port: u16) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        host: "127.0.0.1".into(),
        port,
        allow_failover: true,
    }
}

/// A machine over `backends` that counts a backend down after more than
/// `max_retries` failed checks and promotes no standby over 16 MiB behind,
/// starting from the committed record `persisted`.
fn machine(backends: Vec<BackendSpec>, max_retries: u32, persisted: &Generation) -> Machine {
    Machine::new(
        backends,
        Limits {
            max_retries,
            max_lag_bytes: 16 << 20,
        },
        persisted,
    )
}

/// pg0 (5000), pg1 (5001) and pg2 (5002), starting from `persisted`.
fn three_from(persisted: &Generation) -> Machine {
    machine(
        vec![spec("pg0", 5000), spec("pg1", 5001), spec("pg2", 5002)],
        2,
        persisted,
    )
}

/// pg0 (5000) primary, pg1 (5001) and pg2 (5002) standbys.
fn three() -> Machine {
    three_from(&Generation::default())
}

/// A committed record: generation `generation`, `primary` taking writes.
fn recorded(generation: u64, primary: &str) -> Generation {
    Generation {
        generation,
        primary: Some(primary.into()),
        ..Generation::default()
    }
}

/// A check of backend `id` that saw `result`.
fn checked(id: usize, result: Result<Observation, String>) -> Event {
    Event::Checked {
        id,
        at_ms: 0,
        result,
    }
}

fn ok(m: &mut Machine, id: usize, o: Observation) -> Vec<Action> {
    m.step(checked(id, Ok(o)))
}

fn fail(m: &mut Machine, id: usize) -> Vec<Action> {
    m.step(checked(id, Err("connection refused".into())))
}

/// [`up`] at 1 GiB, then pg0 failed and pg1 was promoted to timeline 2
/// (pg2 not yet following it).
fn failed_over_to_pg1() -> Machine {
    let mut m = up(GB);
    kill_primary(&mut m);
    finish_promotion(&mut m, 1, 2);
    m
}

/// Backend `id`'s promotion finished: it is on timeline `timeline` now.
fn finish_promotion(m: &mut Machine, id: usize, timeline: u32) -> Vec<Action> {
    m.step(Event::Promoted {
        id,
        result: Ok(timeline),
    })
}

/// Promoting `id` in place of pg0, letting running transactions finish
/// first if `drain` (a switchover).
fn promotion(id: usize, drain: bool) -> Action {
    Action::Promote {
        id,
        old_primary: Some(0),
        drain,
        synchronous_standby_names: None,
    }
}

/// Asserts that `a` promotes `id` in place of pg0, without draining.
#[track_caller]
fn assert_promotes(a: &[Action], id: usize) {
    assert!(a.contains(&promotion(id, false)), "{a:?}");
}

/// A healthy cluster: pg0 at `lsn`, standbys streaming at the same LSN.
fn healthy(m: &mut Machine, lsn: u64) {
    ok(m, 0, Observation::primary(1, lsn));
    ok(m, 1, Observation::standby(1, lsn, Some(5000)));
    ok(m, 2, Observation::standby(1, lsn, Some(5000)));
}

/// [`three`] checked [`healthy`] at `lsn`.
fn up(lsn: u64) -> Machine {
    let mut m = three();
    healthy(&mut m, lsn);
    m
}

fn statuses(m: &Machine) -> Vec<Status> {
    m.backends().iter().map(|b| b.status).collect()
}

fn kill_primary(m: &mut Machine) -> Vec<Action> {
    let mut all = Vec::new();
    for _ in 0..3 {
        all.extend(fail(m, 0));
    }
    all
}

#[test]
fn rejoin_runs_the_command_then_attaches_once_streaming() {
    let mut m = up(GB);
    let a = kill_primary(&mut m);
    // Equal positions: the lowest id wins.
    let promoted = 1;
    assert_promotes(&a, promoted);
    ok(&mut m, promoted, Observation::primary(2, GB));
    finish_promotion(&mut m, promoted, 2);
    let other = 3 - promoted;
    m.step(Event::Followed {
        id: other,
        result: Ok(()),
    });
    let port = 5000 + u16::try_from(promoted).unwrap();
    ok(&mut m, other, Observation::standby(2, GB, Some(port)));
    assert_eq!(m.backends()[other].status, Status::Up);
    // The old primary comes back out of recovery: fenced.
    ok(&mut m, 0, Observation::primary(1, GB));
    assert_eq!(m.backends()[0].status, Status::Detached);
    assert!(m.rejoin(promoted).unwrap_err().contains("is the primary"));
    assert!(m.rejoin(other).unwrap_err().contains("is up"));

    let g = m.generation();
    let (_, actions) = m.rejoin(0).unwrap();
    let Some(&Action::Rejoin {
        id: 0,
        primary,
        attempt,
    }) = actions.last()
    else {
        panic!("{actions:?}")
    };
    assert_eq!(primary, promoted);
    assert!(m.backends()[0].reason.starts_with("rejoining as a standby"));
    assert!(m.rejoin(0).unwrap_err().contains("already being rejoined"));
    // Checks while the command runs change nothing.
    fail(&mut m, 0);
    ok(&mut m, 0, Observation::standby(1, GB, None));
    assert_eq!(m.backends()[0].status, Status::Detached);

    // A failed command leaves it detached, saying why; it may be retried.
    // A switchover waits for the rejoin.
    assert!(
        m.promote(other, false)
            .unwrap_err()
            .contains("being rejoined")
    );
    m.step(Event::Rejoined {
        id: 0,
        attempt,
        result: Err("pg_rewind: could not connect".into()),
    });
    assert_eq!(
        m.backends()[0].reason,
        "rejoin failed: pg_rewind: could not connect"
    );
    let (_, actions) = m.rejoin(0).unwrap();
    let Some(&Action::Rejoin {
        attempt: second, ..
    }) = actions.last()
    else {
        panic!("{actions:?}")
    };
    assert_ne!(second, attempt);
    // The first attempt's late result is not this one's.
    m.step(Event::Rejoined {
        id: 0,
        attempt,
        result: Ok(()),
    });
    assert_eq!(m.backends()[0].rejoin, Rejoin::Running(second));
    let a = m.step(Event::Rejoined {
        id: 0,
        attempt: second,
        result: Ok(()),
    });
    // The new reason is committed; not attached until it streams.
    assert_eq!(a, vec![Action::Publish]);
    assert_eq!(m.backends()[0].status, Status::Detached);
    assert_eq!(
        m.backends()[0].reason,
        format!("rejoined; attached once it streams from pg{promoted}")
    );
    // Streaming from another server than the primary is not enough, on
    // the old timeline or on the new one.
    ok(&mut m, 0, Observation::standby(1, GB, Some(5000)));
    assert_eq!(m.backends()[0].status, Status::Detached);
    ok(&mut m, 0, Observation::standby(2, GB, Some(5000)));
    assert_eq!(m.backends()[0].status, Status::Detached);
    ok(&mut m, 0, Observation::standby(1, GB, Some(port)));
    assert_eq!(m.backends()[0].status, Status::Detached);
    let a = ok(&mut m, 0, Observation::standby(2, GB, Some(port)));
    assert_eq!(a, vec![Action::Publish]);
    assert_eq!(m.backends()[0].status, Status::Up);
    assert_eq!(m.backends()[0].rejoin, Rejoin::No);
    assert!(m.generation() > g);
    assert_eq!(m.primary(), Some(promoted));
}

#[test]
fn bootstrap_waits_for_every_backend_then_commits_generation_1() {
    let mut m = three();
    assert!(ok(&mut m, 0, Observation::primary(1, GB)).is_empty());
    assert!(ok(&mut m, 1, Observation::standby(1, GB, Some(5000))).is_empty());
    assert!(!m.is_bootstrapped());
    let a = ok(&mut m, 2, Observation::standby(1, GB, Some(5000)));
    assert_eq!(a, vec![Action::Publish]);
    assert_eq!(m.generation(), 1);
    assert_eq!(m.primary(), Some(0));
    assert_eq!(statuses(&m), vec![Status::Up, Status::Up, Status::Up]);
}

#[test]
fn primary_dies_most_advanced_standby_is_promoted_and_the_other_follows() {
    let mut m = up(GB);
    // pg2 replayed further than pg1.
    ok(&mut m, 1, Observation::standby(1, GB + 100, Some(5000)));
    ok(&mut m, 2, Observation::standby(1, GB + 200, Some(5000)));
    let g = m.generation();
    assert!(fail(&mut m, 0).is_empty(), "one failure is not enough");
    assert!(
        fail(&mut m, 0).is_empty(),
        "max_retries = 2 means 3 failures"
    );
    let a = fail(&mut m, 0);
    assert_eq!(a, vec![Action::Publish, promotion(2, false)]);
    assert!(m.failover_in_progress());
    assert!(m.generation() > g);
    // While it is promoted, pg2 already reports out of recovery: not fenced.
    ok(&mut m, 2, Observation::primary(2, GB + 200));
    assert_eq!(m.backends()[2].status, Status::Up);
    let a = finish_promotion(&mut m, 2, 2);
    assert_eq!(
        a,
        vec![
            Action::Publish,
            Action::Follow {
                id: 1,
                new_primary: 2,
                old_primary: Some(0)
            }
        ]
    );
    assert_eq!(m.primary(), Some(2));
    assert_eq!(
        statuses(&m),
        vec![Status::Detached, Status::Down, Status::Up]
    );
    assert!(m.backends()[0].reason.contains("former primary"));
    // pg1 follows and streams on timeline 2 from pg2: up again.
    assert!(
        m.step(Event::Followed {
            id: 1,
            result: Ok(())
        })
        .is_empty()
    );
    let a = ok(&mut m, 1, Observation::standby(2, GB + 300, Some(5002)));
    assert_eq!(a, vec![Action::Publish]);
    assert_eq!(statuses(&m), vec![Status::Detached, Status::Up, Status::Up]);
    // The old primary comes back as a primary: it stays detached.
    assert!(ok(&mut m, 0, Observation::primary(1, GB)).is_empty());
    assert_eq!(m.backends()[0].status, Status::Detached);
    assert_eq!(m.primary(), Some(2));
}

/// A standby that received (and flushed) WAL up to `received` and
/// replayed it up to `replayed`, streaming from pg0 unless `streaming` is false.
#[test]
fn a_standby_dying_is_detached_from_routing_without_any_failover() {
    let mut m = up(GB);
    let mut all = Vec::new();
    for _ in 0..3 {
        all.extend(fail(&mut m, 1));
    }
    assert_eq!(all, vec![Action::Publish]);
    assert_eq!(statuses(&m), vec![Status::Up, Status::Down, Status::Up]);
    assert_eq!(m.primary(), Some(0));
    // It comes back reachable but not yet streaming: still down.
    assert!(ok(&mut m, 1, Observation::standby(1, GB, None)).is_empty());
    assert_eq!(m.backends()[1].status, Status::Down);
    // Streaming again: up.
    assert_eq!(
        ok(&mut m, 1, Observation::standby(1, GB, Some(5000))),
        vec![Action::Publish]
    );
    assert_eq!(statuses(&m), vec![Status::Up, Status::Up, Status::Up]);
}

#[test]
fn both_standbys_lagging_means_no_promotion() {
    let mut m = up(GB);
    ok(&mut m, 0, Observation::primary(1, 2 * GB));
    ok(&mut m, 1, Observation::standby(1, GB, Some(5000)));
    ok(&mut m, 2, Observation::standby(1, GB + 5, Some(5000)));
    let a = kill_primary(&mut m);
    assert_eq!(
        a,
        vec![Action::Publish],
        "the primary is down, nobody promoted"
    );
    assert_eq!(m.primary(), Some(0));
    assert!(!m.failover_in_progress());
    let why = m.blocked.clone().unwrap_or_default();
    assert!(
        why.contains("pg1") && why.contains("max_lag_bytes"),
        "{why}"
    );
    // An operator may still force it.
    let (_, a) = m.promote(2, true).unwrap();
    assert!(a.contains(&promotion(2, true)), "{a:?}");
}

#[test]
fn a_flapping_primary_never_fails_over() {
    let mut m = up(GB);
    for _ in 0..50 {
        assert!(fail(&mut m, 0).is_empty());
        assert!(fail(&mut m, 0).is_empty());
        assert!(ok(&mut m, 0, Observation::primary(1, GB)).is_empty());
    }
    assert_eq!(m.primary(), Some(0));
    assert_eq!(m.generation(), 1);
}

#[test]
fn two_backends_claiming_primary_at_start_up() {
    // Different timelines: the newer wins, the older is fenced.
    let mut m = three();
    ok(&mut m, 0, Observation::primary(1, GB));
    ok(&mut m, 1, Observation::primary(2, GB));
    ok(&mut m, 2, Observation::standby(2, GB, Some(5001)));
    assert_eq!(m.primary(), Some(1));
    assert_eq!(statuses(&m), vec![Status::Detached, Status::Up, Status::Up]);

    // Same timeline, nothing recorded: nobody is trusted.
    let mut m = three();
    ok(&mut m, 0, Observation::primary(1, GB));
    ok(&mut m, 1, Observation::primary(1, GB));
    ok(&mut m, 2, Observation::standby(1, GB, Some(5000)));
    assert_eq!(m.primary(), None);
    assert_eq!(m.backends()[0].status, Status::Detached);
    assert_eq!(m.backends()[1].status, Status::Detached);

    // Same timeline, pg1 recorded as primary: pg1.
    let mut m = three_from(&recorded(7, "pg1"));
    ok(&mut m, 0, Observation::primary(1, GB));
    ok(&mut m, 1, Observation::primary(1, GB));
    ok(&mut m, 2, Observation::standby(1, GB, Some(5001)));
    assert_eq!(m.primary(), Some(1));
    assert_eq!(m.generation(), 8);
    assert_eq!(statuses(&m), vec![Status::Detached, Status::Up, Status::Up]);
}

#[test]
fn a_standby_promoted_behind_our_back_is_fenced() {
    let mut m = up(GB);
    let a = ok(&mut m, 2, Observation::primary(2, GB));
    assert_eq!(a, vec![Action::Publish]);
    assert_eq!(m.backends()[2].status, Status::Detached);
    assert_eq!(
        m.primary(),
        Some(0),
        "the committed primary keeps the writes"
    );
}

#[test]
fn the_primary_returns_after_a_failover_and_stays_detached_across_restarts() {
    let p = failed_over_to_pg1().committed();
    assert_eq!(p.primary.as_deref(), Some("pg1"));
    assert!(p.detached.iter().any(|(n, _)| n == "pg0"));
    // The monitor restarts: pg0 is back as a primary on the old timeline.
    let mut m = three_from(&p);
    ok(&mut m, 0, Observation::primary(1, GB));
    ok(&mut m, 1, Observation::primary(2, GB + 10));
    ok(&mut m, 2, Observation::standby(2, GB + 10, Some(5001)));
    assert_eq!(m.primary(), Some(1));
    assert_eq!(statuses(&m), vec![Status::Detached, Status::Up, Status::Up]);
    assert!(m.generation() > p.generation);
}

#[test]
fn a_failed_promotion_fences_that_standby_and_tries_the_next() {
    let mut m = up(GB);
    ok(&mut m, 2, Observation::standby(1, GB + 1, Some(5000)));
    let a = kill_primary(&mut m);
    assert_promotes(&a, 2);
    let a = m.step(Event::Promoted {
        id: 2,
        result: Err("pg_promote timed out".into()),
    });
    assert_promotes(&a, 1);
    assert_eq!(m.backends()[2].status, Status::Detached);
    finish_promotion(&mut m, 1, 2);
    assert_eq!(m.primary(), Some(1));
}

#[test]
fn a_standby_that_cannot_follow_is_detached_with_the_reason() {
    let mut m = failed_over_to_pg1();
    let a = m.step(Event::Followed {
        id: 2,
        result: Err("timeline diverged".into()),
    });
    assert_eq!(a, vec![Action::Publish]);
    assert_eq!(m.backends()[2].status, Status::Detached);
    assert!(m.backends()[2].reason.contains("timeline diverged"));
}

#[test]
fn standbys_are_not_marked_down_for_not_streaming_while_the_primary_is_failing() {
    let mut m = up(GB);
    // The primary dies; standbys notice first (not streaming) but the
    // primary has failed a check, so they are not judged.
    fail(&mut m, 0);
    for _ in 0..5 {
        ok(&mut m, 1, Observation::standby(1, GB, None));
        ok(&mut m, 2, Observation::standby(1, GB, None));
    }
    assert_eq!(statuses(&m), vec![Status::Up, Status::Up, Status::Up]);
    let a = fail(&mut m, 0)
        .into_iter()
        .chain(fail(&mut m, 0))
        .collect::<Vec<_>>();
    assert_promotes(&a, 1);
}

#[test]
fn allow_failover_false_is_never_promoted() {
    let mut m = machine(
        vec![
            spec("pg0", 5000),
            BackendSpec {
                allow_failover: false,
                ..spec("pg1", 5001)
            },
            spec("pg2", 5002),
        ],
        0,
        &Generation::default(),
    );
    healthy(&mut m, GB);
    ok(&mut m, 1, Observation::standby(1, GB + 100, Some(5000)));
    let a = fail(&mut m, 0);
    assert_promotes(&a, 2);
}

#[test]
fn operator_detach_and_attach() {
    let mut m = up(GB);
    let (_, a) = m.detach(2).unwrap();
    assert_eq!(a, vec![Action::Publish]);
    assert_eq!(m.backends()[2].status, Status::Detached);
    // Checks never re-attach a detached backend.
    assert!(ok(&mut m, 2, Observation::standby(1, GB, Some(5000))).is_empty());
    assert_eq!(m.backends()[2].status, Status::Detached);
    let (_, a) = m.attach(2).unwrap();
    assert_eq!(a, vec![Action::Publish]);
    assert_eq!(m.backends()[2].status, Status::Up);
    // Detaching the primary fails over.
    let (_, a) = m.detach(0).unwrap();
    assert_promotes(&a, 1);
}

#[test]
fn attach_refuses_what_is_unsafe() {
    let mut m = up(GB);
    m.detach(2).unwrap();
    ok(&mut m, 2, Observation::standby(1, GB, None));
    assert!(m.attach(2).unwrap_err().contains("does not stream"));
    ok(&mut m, 2, Observation::primary(2, GB));
    assert!(
        m.attach(2)
            .unwrap_err()
            .contains("two backends take writes")
    );
    fail(&mut m, 2);
    assert!(m.attach(2).unwrap_err().contains("not reachable"));
}

#[test]
fn switchover_fences_the_old_primary_before_promoting() {
    let mut m = up(GB);
    let (_, a) = m.promote(2, false).unwrap();
    assert_eq!(a, vec![Action::Publish, promotion(2, true)]);
    assert_eq!(m.backends()[0].status, Status::Detached);
    assert!(
        m.switchover_in_progress(),
        "published: proxies let running transactions finish"
    );
    assert!(m.promote(1, false).is_err(), "one at a time");
    finish_promotion(&mut m, 2, 2);
    assert_eq!(m.primary(), Some(2));
    assert!(!m.switchover_in_progress());
    // pg0 still runs as a primary: it stays fenced.
    ok(&mut m, 0, Observation::primary(1, GB));
    assert_eq!(m.backends()[0].status, Status::Detached);
}

fn three_quorum() -> Machine {
    three().with_decider(Decider::Quorum)
}

#[test]
fn with_a_quorum_deciding_local_failures_alone_never_fail_over() {
    let mut m = three_quorum();
    healthy(&mut m, GB);
    for _ in 0..10 {
        assert!(fail(&mut m, 0).is_empty(), "no local decision");
    }
    assert_eq!(statuses(&m), vec![Status::Up, Status::Up, Status::Up]);
    // One other node agrees: a quorum sees pg0 down.
    let a = m.step(Event::QuorumDown(vec![0]));
    assert_eq!(a, vec![Action::Publish, promotion(1, false)]);
    assert_eq!(m.backends()[0].status, Status::Down);
}

#[test]
fn with_a_quorum_deciding_a_backend_comes_back_only_when_the_quorum_lets_go() {
    let mut m = three_quorum();
    healthy(&mut m, GB);
    m.step(Event::QuorumDown(vec![2]));
    assert_eq!(m.backends()[2].status, Status::Down);
    // This node reaches it fine, but the quorum still says down.
    assert!(ok(&mut m, 2, Observation::standby(1, GB, Some(5000))).is_empty());
    assert_eq!(m.backends()[2].status, Status::Down);
    m.step(Event::QuorumDown(vec![]));
    assert_eq!(
        ok(&mut m, 2, Observation::standby(1, GB, Some(5000))),
        vec![Action::Publish]
    );
    assert_eq!(m.backends()[2].status, Status::Up);
}

#[test]
fn with_a_quorum_deciding_a_new_leader_unable_to_reach_the_primary_keeps_it() {
    // The leader's monitor restarts from the committed record and cannot
    // reach pg0 itself; the other nodes can.
    let mut m = three_from(&recorded(3, "pg0")).with_decider(Decider::Quorum);
    for _ in 0..3 {
        fail(&mut m, 0);
    }
    ok(&mut m, 1, Observation::standby(1, GB, Some(5000)));
    let a = ok(&mut m, 2, Observation::standby(1, GB, Some(5000)));
    assert_eq!(a, vec![Action::Publish]);
    assert_eq!(m.primary(), Some(0));
    assert_eq!(m.backends()[0].status, Status::Up);
    assert!(!m.failover_in_progress());
}

#[test]
fn no_primary_at_start_up_waits_instead_of_promoting() {
    let mut m = three();
    for _ in 0..3 {
        fail(&mut m, 0);
    }
    ok(&mut m, 1, Observation::standby(1, GB, None));
    let a = ok(&mut m, 2, Observation::standby(1, GB, None));
    assert_eq!(a, vec![Action::Publish]);
    assert_eq!(m.primary(), None);
    assert!(!m.failover_in_progress());
    // The primary comes up: adopted.
    let a = ok(&mut m, 0, Observation::primary(1, GB));
    assert_eq!(a, vec![Action::Publish]);
    assert_eq!(m.primary(), Some(0));
}

#[test]
fn generations_only_grow() {
    let mut m = three();
    let mut last = m.generation();
    let script: Vec<Event> = vec![
        checked(0, Ok(Observation::primary(1, GB))),
        checked(1, Ok(Observation::standby(1, GB, Some(5000)))),
        checked(2, Ok(Observation::standby(1, GB, Some(5000)))),
        checked(0, Err("x".into())),
        checked(0, Err("x".into())),
        checked(0, Err("x".into())),
        Event::Promoted {
            id: 1,
            result: Ok(2),
        },
        Event::Followed {
            id: 2,
            result: Ok(()),
        },
        checked(2, Ok(Observation::standby(2, GB, Some(5001)))),
    ];
    for e in script {
        let a = m.step(e);
        assert!(m.generation() >= last);
        assert_eq!(a.contains(&Action::Publish), m.generation() > last);
        last = m.generation();
    }
}
