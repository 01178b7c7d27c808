//! The machine driven through whole failovers as tables of events.

use super::*;

const GB: u64 = 1 << 30;

fn spec(name: &str, port: u16) -> BackendSpec {
    BackendSpec {
        name: name.into(),
        host: "127.0.0.1".into(),
        port,
        allow_failover: true,
    }
}

/// pg0 (5000) primary, pg1 (5001) and pg2 (5002) standbys.
fn three() -> Machine {
    Machine::new(
        vec![spec("pg0", 5000), spec("pg1", 5001), spec("pg2", 5002)],
        Limits {
            max_retries: 2,
            max_lag_bytes: 16 << 20,
        },
        &Persisted::default(),
    )
}

fn ok(m: &mut Machine, id: usize, o: Observation) -> Vec<Action> {
    m.step(Event::Checked {
        id,
        at_ms: 0,
        result: Ok(o),
    })
}

fn fail(m: &mut Machine, id: usize) -> Vec<Action> {
    m.step(Event::Checked {
        id,
        at_ms: 0,
        result: Err("connection refused".into()),
    })
}

/// A healthy cluster: pg0 at `lsn`, standbys streaming at the same LSN.
fn healthy(m: &mut Machine, lsn: u64) {
    ok(m, 0, Observation::primary(1, lsn));
    ok(m, 1, Observation::standby(1, lsn, Some(5000)));
    ok(m, 2, Observation::standby(1, lsn, Some(5000)));
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
    let mut m = three();
    healthy(&mut m, GB);
    let a = kill_primary(&mut m);
    // Equal positions: the lowest id wins.
    let promoted = 1;
    assert!(a.contains(&Action::Promote {
        id: promoted,
        old_primary: Some(0),
        drain: false
    }));
    ok(&mut m, promoted, Observation::primary(2, GB));
    m.step(Event::Promoted {
        id: promoted,
        result: Ok(2),
    });
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
    let mut m = three();
    healthy(&mut m, GB);
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
    assert_eq!(
        a,
        vec![
            Action::Publish,
            Action::Promote {
                id: 2,
                old_primary: Some(0),
                drain: false
            }
        ]
    );
    assert!(m.failover_in_progress());
    assert!(m.generation() > g);
    // While it is promoted, pg2 already reports out of recovery: not fenced.
    ok(&mut m, 2, Observation::primary(2, GB + 200));
    assert_eq!(m.backends()[2].status, Status::Up);
    let a = m.step(Event::Promoted {
        id: 2,
        result: Ok(2),
    });
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
fn standby_at(timeline: u32, received: u64, replayed: u64, streaming: bool) -> Observation {
    Observation {
        flush_lsn: received,
        replay_lsn: replayed,
        ..Observation::standby(timeline, replayed, streaming.then_some(5000))
    }
}

fn alive(m: &mut Machine, id: usize) -> Vec<Action> {
    m.step(Event::AliveUnobserved {
        id,
        at_ms: 0,
        reason: "terminated by someone else".into(),
    })
}

#[test]
fn issue_7_candidates_rank_by_received_wal_not_replayed() {
    // The issue's figures: pg1 replayed all it received, pg2 received
    // more but its replay is paused further back.
    let mut m = three();
    healthy(&mut m, 0x402_0000);
    ok(&mut m, 0, Observation::primary(1, 0x402_CC68));
    ok(&mut m, 1, standby_at(1, 0x402_48C8, 0x402_48C8, false));
    ok(&mut m, 2, standby_at(1, 0x402_CC68, 0x402_2780, false));
    let a = kill_primary(&mut m);
    assert!(
        a.contains(&Action::Promote {
            id: 2,
            old_primary: Some(0),
            drain: false
        }),
        "{a:?}"
    );
}

#[test]
fn issue_7_no_walreceiver_ever_ran_falls_back_to_the_replay_position() {
    // pg_last_wal_receive_lsn() is NULL (0) after a restart until a WAL
    // receiver streams again: the replay position is what it holds.
    let mut m = three();
    healthy(&mut m, GB);
    ok(&mut m, 1, standby_at(1, 0, GB + 300, false));
    ok(&mut m, 2, standby_at(1, GB + 200, GB + 100, false));
    let a = kill_primary(&mut m);
    assert!(
        a.contains(&Action::Promote {
            id: 1,
            old_primary: Some(0),
            drain: false
        }),
        "{a:?}"
    );
}

#[test]
fn issue_7_equal_received_wal_prefers_the_one_that_replayed_further_then_the_lowest_id() {
    let mut m = three();
    healthy(&mut m, GB);
    ok(&mut m, 1, standby_at(1, GB + 500, GB, true));
    ok(&mut m, 2, standby_at(1, GB + 500, GB + 400, true));
    let a = kill_primary(&mut m);
    assert!(
        a.contains(&Action::Promote {
            id: 2,
            old_primary: Some(0),
            drain: false
        }),
        "{a:?}"
    );
}

#[test]
fn issue_7_lag_for_promotion_counts_received_wal() {
    // pg1's replay is far behind (paused), but it received everything:
    // promotable. pg2 received too little: not.
    let mut m = three();
    healthy(&mut m, GB);
    ok(&mut m, 0, Observation::primary(1, 2 * GB));
    ok(&mut m, 1, standby_at(1, 2 * GB, GB, true));
    ok(&mut m, 2, standby_at(1, GB, GB, true));
    assert_eq!(m.lag_bytes(1), GB, "status shows the replay lag");
    let a = kill_primary(&mut m);
    assert!(
        a.contains(&Action::Promote {
            id: 1,
            old_primary: Some(0),
            drain: false
        }),
        "{a:?}"
    );
    // A switchover measures it the same way.
    let mut m = three();
    healthy(&mut m, GB);
    ok(&mut m, 0, Observation::primary(1, 2 * GB));
    ok(&mut m, 1, standby_at(1, 2 * GB, GB, true));
    ok(&mut m, 2, standby_at(1, GB, GB, true));
    assert!(m.promote(2, false).unwrap_err().contains("max_lag_bytes"));
    assert!(m.promote(1, false).is_ok());
}

#[test]
fn issue_7_a_standby_off_the_primarys_timeline_is_not_promoted() {
    let mut m = three();
    healthy(&mut m, GB);
    // pg1 is on a newer timeline (it follows some other server); pg2
    // streams but is still on an older one.
    ok(&mut m, 0, Observation::primary(3, GB));
    ok(&mut m, 1, standby_at(4, GB + 900, GB + 900, false));
    ok(&mut m, 2, standby_at(2, GB + 800, GB + 800, true));
    let a = kill_primary(&mut m);
    assert_eq!(a, vec![Action::Publish], "nobody promoted");
    let why = m.blocked.clone().unwrap_or_default();
    assert!(
        why.contains("pg1: on timeline 4, the primary's is 3")
            && why.contains("pg2: on timeline 2, the primary's is 3"),
        "{why}"
    );
    // Not streaming, an older timeline is the last restartpoint's: fine.
    let a = ok(&mut m, 2, standby_at(2, GB + 800, GB + 800, false));
    assert!(
        a.contains(&Action::Promote {
            id: 2,
            old_primary: Some(0),
            drain: false
        }),
        "{a:?}"
    );
}

#[test]
fn issue_7_killed_check_sessions_reset_the_failure_count_and_keep_the_observation() {
    let mut m = three();
    healthy(&mut m, GB);
    let g = m.generation();
    for _ in 0..50 {
        assert!(fail(&mut m, 0).is_empty());
        assert!(fail(&mut m, 0).is_empty());
        assert!(alive(&mut m, 0).is_empty());
        assert!(alive(&mut m, 1).is_empty());
    }
    assert_eq!(m.generation(), g);
    assert_eq!(statuses(&m), vec![Status::Up, Status::Up, Status::Up]);
    assert_eq!(m.backends()[0].failures, 0);
    assert_eq!(
        m.backends()[0].last,
        Some(Observation::primary(1, GB)),
        "the last observation stands"
    );
    // Real failures still count from there.
    let a = kill_primary(&mut m);
    assert!(
        a.contains(&Action::Promote {
            id: 1,
            old_primary: Some(0),
            drain: false
        }),
        "{a:?}"
    );
}

#[test]
fn issue_7_alive_without_an_observation_brings_nothing_back_up() {
    let mut m = three();
    healthy(&mut m, GB);
    for _ in 0..3 {
        fail(&mut m, 2);
    }
    assert_eq!(m.backends()[2].status, Status::Down);
    assert!(alive(&mut m, 2).is_empty());
    assert_eq!(m.backends()[2].status, Status::Down, "needs an observation");
}

#[test]
fn ties_go_to_the_lowest_id() {
    let mut m = three();
    healthy(&mut m, GB);
    let a = kill_primary(&mut m);
    assert!(a.contains(&Action::Promote {
        id: 1,
        old_primary: Some(0),
        drain: false
    }));
}

#[test]
fn a_standby_dying_is_detached_from_routing_without_any_failover() {
    let mut m = three();
    healthy(&mut m, GB);
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
    let mut m = three();
    healthy(&mut m, GB);
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
    assert!(a.contains(&Action::Promote {
        id: 2,
        old_primary: Some(0),
        drain: true
    }));
}

#[test]
fn a_flapping_primary_never_fails_over() {
    let mut m = three();
    healthy(&mut m, GB);
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
    let persisted = Persisted {
        generation: 7,
        primary: Some("pg1".into()),
        detached: vec![],
    };
    let mut m = Machine::new(
        vec![spec("pg0", 5000), spec("pg1", 5001), spec("pg2", 5002)],
        Limits {
            max_retries: 2,
            max_lag_bytes: 1 << 24,
        },
        &persisted,
    );
    ok(&mut m, 0, Observation::primary(1, GB));
    ok(&mut m, 1, Observation::primary(1, GB));
    ok(&mut m, 2, Observation::standby(1, GB, Some(5001)));
    assert_eq!(m.primary(), Some(1));
    assert_eq!(m.generation(), 8);
    assert_eq!(statuses(&m), vec![Status::Detached, Status::Up, Status::Up]);
}

#[test]
fn a_standby_promoted_behind_our_back_is_fenced() {
    let mut m = three();
    healthy(&mut m, GB);
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
    let mut m = three();
    healthy(&mut m, GB);
    kill_primary(&mut m);
    m.step(Event::Promoted {
        id: 1,
        result: Ok(2),
    });
    let p = m.persisted();
    assert_eq!(p.primary.as_deref(), Some("pg1"));
    assert!(p.detached.iter().any(|(n, _)| n == "pg0"));
    // The monitor restarts: pg0 is back as a primary on the old timeline.
    let mut m = Machine::new(
        vec![spec("pg0", 5000), spec("pg1", 5001), spec("pg2", 5002)],
        Limits {
            max_retries: 2,
            max_lag_bytes: 1 << 24,
        },
        &p,
    );
    ok(&mut m, 0, Observation::primary(1, GB));
    ok(&mut m, 1, Observation::primary(2, GB + 10));
    ok(&mut m, 2, Observation::standby(2, GB + 10, Some(5001)));
    assert_eq!(m.primary(), Some(1));
    assert_eq!(statuses(&m), vec![Status::Detached, Status::Up, Status::Up]);
    assert!(m.generation() > p.generation);
}

#[test]
fn a_failed_promotion_fences_that_standby_and_tries_the_next() {
    let mut m = three();
    healthy(&mut m, GB);
    ok(&mut m, 2, Observation::standby(1, GB + 1, Some(5000)));
    let a = kill_primary(&mut m);
    assert!(a.contains(&Action::Promote {
        id: 2,
        old_primary: Some(0),
        drain: false
    }));
    let a = m.step(Event::Promoted {
        id: 2,
        result: Err("pg_promote timed out".into()),
    });
    assert!(
        a.contains(&Action::Promote {
            id: 1,
            old_primary: Some(0),
            drain: false
        }),
        "{a:?}"
    );
    assert_eq!(m.backends()[2].status, Status::Detached);
    m.step(Event::Promoted {
        id: 1,
        result: Ok(2),
    });
    assert_eq!(m.primary(), Some(1));
}

#[test]
fn a_standby_that_cannot_follow_is_detached_with_the_reason() {
    let mut m = three();
    healthy(&mut m, GB);
    kill_primary(&mut m);
    m.step(Event::Promoted {
        id: 1,
        result: Ok(2),
    });
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
    let mut m = three();
    healthy(&mut m, GB);
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
    assert!(
        a.contains(&Action::Promote {
            id: 1,
            old_primary: Some(0),
            drain: false
        }),
        "{a:?}"
    );
}

#[test]
fn allow_failover_false_is_never_promoted() {
    let mut m = Machine::new(
        vec![
            spec("pg0", 5000),
            BackendSpec {
                allow_failover: false,
                ..spec("pg1", 5001)
            },
            spec("pg2", 5002),
        ],
        Limits {
            max_retries: 0,
            max_lag_bytes: 1 << 24,
        },
        &Persisted::default(),
    );
    healthy(&mut m, GB);
    ok(&mut m, 1, Observation::standby(1, GB + 100, Some(5000)));
    let a = fail(&mut m, 0);
    assert!(
        a.contains(&Action::Promote {
            id: 2,
            old_primary: Some(0),
            drain: false
        }),
        "{a:?}"
    );
}

#[test]
fn operator_detach_and_attach() {
    let mut m = three();
    healthy(&mut m, GB);
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
    assert!(
        a.contains(&Action::Promote {
            id: 1,
            old_primary: Some(0),
            drain: false
        }),
        "{a:?}"
    );
}

#[test]
fn attach_refuses_what_is_unsafe() {
    let mut m = three();
    healthy(&mut m, GB);
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
    let mut m = three();
    healthy(&mut m, GB);
    let (_, a) = m.promote(2, false).unwrap();
    assert_eq!(
        a,
        vec![
            Action::Publish,
            Action::Promote {
                id: 2,
                old_primary: Some(0),
                drain: true
            }
        ]
    );
    assert_eq!(m.backends()[0].status, Status::Detached);
    assert!(
        m.switchover_in_progress(),
        "published: proxies let running transactions finish"
    );
    assert!(m.promote(1, false).is_err(), "one at a time");
    m.step(Event::Promoted {
        id: 2,
        result: Ok(2),
    });
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
    assert_eq!(
        a,
        vec![
            Action::Publish,
            Action::Promote {
                id: 1,
                old_primary: Some(0),
                drain: false
            }
        ]
    );
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
    let persisted = Persisted {
        generation: 3,
        primary: Some("pg0".into()),
        detached: vec![],
    };
    let mut m = Machine::new(
        vec![spec("pg0", 5000), spec("pg1", 5001), spec("pg2", 5002)],
        Limits {
            max_retries: 2,
            max_lag_bytes: 1 << 24,
        },
        &persisted,
    )
    .with_decider(Decider::Quorum);
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
        Event::Checked {
            id: 0,
            at_ms: 0,
            result: Ok(Observation::primary(1, GB)),
        },
        Event::Checked {
            id: 1,
            at_ms: 0,
            result: Ok(Observation::standby(1, GB, Some(5000))),
        },
        Event::Checked {
            id: 2,
            at_ms: 0,
            result: Ok(Observation::standby(1, GB, Some(5000))),
        },
        Event::Checked {
            id: 0,
            at_ms: 0,
            result: Err("x".into()),
        },
        Event::Checked {
            id: 0,
            at_ms: 0,
            result: Err("x".into()),
        },
        Event::Checked {
            id: 0,
            at_ms: 0,
            result: Err("x".into()),
        },
        Event::Promoted {
            id: 1,
            result: Ok(2),
        },
        Event::Followed {
            id: 2,
            result: Ok(()),
        },
        Event::Checked {
            id: 2,
            at_ms: 0,
            result: Ok(Observation::standby(2, GB, Some(5001))),
        },
    ];
    for e in script {
        let a = m.step(e);
        assert!(m.generation() >= last);
        assert_eq!(a.contains(&Action::Publish), m.generation() > last);
        last = m.generation();
    }
}

/// Candidate choice alone: pg0 the primary being replaced (at LSN 1000, on
/// timeline 2), pg1 and pg2 standbys as each row says.
#[test]
fn candidates_as_a_table() {
    use super::candidate::{Candidate, Field};
    let view = |id: usize, o: Option<Observation>| BackendView {
        spec: spec(&format!("pg{id}"), 5000 + id as u16),
        role: Role::Standby,
        status: Status::Up,
        reason: String::new(),
        failures: 0,
        last_error: None,
        not_streaming: 0,
        last: o,
        last_check_ms: 0,
        following: false,
        rejoin: Rejoin::No,
    };
    let at = |received, replayed| Some(standby_at(2, received, replayed, true));
    let detached = |mut b: BackendView| {
        b.status = Status::Detached;
        b
    };
    let failing = |mut b: BackendView| {
        b.failures = 1;
        b
    };
    let no_failover = |mut b: BackendView| {
        b.spec.allow_failover = false;
        b
    };
    let limits = Limits {
        max_retries: 2,
        max_lag_bytes: 100,
    };
    // (pg1, pg2, force, chosen id or why not)
    let table: Vec<(BackendView, BackendView, bool, Result<usize, &str>)> = vec![
        (view(1, at(990, 990)), view(2, at(995, 900)), false, Ok(2)),
        (view(1, at(995, 990)), view(2, at(995, 900)), false, Ok(1)),
        (view(1, at(995, 990)), view(2, at(995, 990)), false, Ok(1)),
        (
            detached(view(1, at(995, 995))),
            failing(view(2, at(995, 995))),
            false,
            Err("pg1: detached; pg2: unreachable"),
        ),
        (
            view(1, None),
            view(2, Some(Observation::primary(2, 995))),
            false,
            Err("pg1: never checked; pg2: not a standby"),
        ),
        (
            no_failover(view(1, at(995, 995))),
            view(2, at(800, 800)),
            false,
            Err("pg1: allow_failover = false; pg2: 200 bytes behind (max_lag_bytes 100)"),
        ),
        (view(1, at(800, 800)), view(2, at(700, 700)), true, Ok(1)),
        (
            view(1, Some(standby_at(3, 995, 995, true))),
            view(2, at(800, 800)),
            false,
            Err(
                "pg1: on timeline 3, the primary's is 2: its WAL is not the primary's history; pg2: 200 bytes behind (max_lag_bytes 100)",
            ),
        ),
        (
            view(1, Some(standby_at(3, 995, 995, true))),
            view(2, at(800, 800)),
            true,
            Ok(1),
        ),
    ];
    for (i, (pg1, pg2, force, want)) in table.into_iter().enumerate() {
        let backends = vec![view(0, Some(Observation::primary(2, 1000))), pg1, pg2];
        let field = Field {
            backends: &backends,
            limits: &limits,
            reference: Some(1000),
            timeline: Some(2),
        };
        let got = field.choose(&[0], force).map(|c: Candidate| c.id);
        assert_eq!(got, want.map_err(str::to_owned), "row {i}");
    }
    let field = Field {
        backends: &[],
        limits: &limits,
        reference: None,
        timeline: None,
    };
    assert_eq!(field.choose(&[], false), Err("no standby".to_owned()));
}
