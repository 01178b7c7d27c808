//! The candidate for promotion: received WAL first, then replayed, then
//! the lowest id; timelines and missing walreceivers (issue 7).

use super::*;

pub(super) fn standby_at(
    timeline: u32,
    received: u64,
    replayed: u64,
    streaming: bool,
) -> Observation {
    Observation {
        flush_lsn: received,
        replay_lsn: replayed,
        ..Observation::standby(timeline, replayed, streaming.then_some(5000))
    }
}

/// [`up`] at `lsn`, then each backend checked as `checks` says (its id,
/// what the check saw), in that order.
fn seen(lsn: u64, checks: impl IntoIterator<Item = (usize, Observation)>) -> Machine {
    let mut m = up(lsn);
    for (id, o) in checks {
        ok(&mut m, id, o);
    }
    m
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
    let mut m = seen(
        0x402_0000,
        [
            (0, Observation::primary(1, 0x402_CC68)),
            (1, standby_at(1, 0x402_48C8, 0x402_48C8, false)),
            (2, standby_at(1, 0x402_CC68, 0x402_2780, false)),
        ],
    );
    let a = kill_primary(&mut m);
    assert_promotes(&a, 2);
}

/// What pg0's death sets off after pg1 and pg2 were checked at these
/// (received, replayed, streaming) positions on timeline 1, pg0 at 1 GiB.
fn killed_after(pg1: (u64, u64, bool), pg2: (u64, u64, bool)) -> Vec<Action> {
    let mut m = seen(
        GB,
        [(1, pg1), (2, pg2)].map(|(id, (received, replayed, streaming))| {
            (id, standby_at(1, received, replayed, streaming))
        }),
    );
    kill_primary(&mut m)
}

#[test]
fn issue_7_no_walreceiver_ever_ran_falls_back_to_the_replay_position() {
    // pg_last_wal_receive_lsn() is NULL (0) after a restart until a WAL
    // receiver streams again: the replay position is what it holds.
    let a = killed_after((0, GB + 300, false), (GB + 200, GB + 100, false));
    assert_promotes(&a, 1);
}

#[test]
fn issue_7_equal_received_wal_prefers_the_one_that_replayed_further_then_the_lowest_id() {
    let a = killed_after((GB + 500, GB, true), (GB + 500, GB + 400, true));
    assert_promotes(&a, 2);
}

#[test]
fn issue_7_lag_for_promotion_counts_received_wal() {
    // pg1's replay is far behind (paused), but it received everything:
    // promotable. pg2 received too little: not.
    let paused = || {
        seen(
            GB,
            [
                (0, Observation::primary(1, 2 * GB)),
                (1, standby_at(1, 2 * GB, GB, true)),
                (2, standby_at(1, GB, GB, true)),
            ],
        )
    };
    let mut m = paused();
    assert_eq!(m.lag_bytes(1), GB, "status shows the replay lag");
    let a = kill_primary(&mut m);
    assert_promotes(&a, 1);
    // A switchover measures it the same way.
    let mut m = paused();
    assert!(m.promote(2, false).unwrap_err().contains("max_lag_bytes"));
    assert!(m.promote(1, false).is_ok());
}

#[test]
fn issue_7_a_standby_off_the_primarys_timeline_is_not_promoted() {
    // pg1 is on a newer timeline (it follows some other server); pg2
    // streams but is still on an older one.
    let mut m = seen(
        GB,
        [
            (0, Observation::primary(3, GB)),
            (1, standby_at(4, GB + 900, GB + 900, false)),
            (2, standby_at(2, GB + 800, GB + 800, true)),
        ],
    );
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
    assert_promotes(&a, 2);
}

#[test]
fn issue_7_killed_check_sessions_reset_the_failure_count_and_keep_the_observation() {
    let mut m = up(GB);
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
    assert_promotes(&a, 1);
}

#[test]
fn issue_7_alive_without_an_observation_brings_nothing_back_up() {
    let mut m = up(GB);
    for _ in 0..3 {
        fail(&mut m, 2);
    }
    assert_eq!(m.backends()[2].status, Status::Down);
    assert!(alive(&mut m, 2).is_empty());
    assert_eq!(m.backends()[2].status, Status::Down, "needs an observation");
}

#[test]
fn ties_go_to_the_lowest_id() {
    let mut m = up(GB);
    let a = kill_primary(&mut m);
    assert_promotes(&a, 1);
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
            synchronous: None,
        };
        let got = field.choose(&[0], force).map(|c: Candidate| c.id);
        assert_eq!(got, want.map_err(str::to_owned), "row {i}");
    }
    let field = Field {
        backends: &[],
        limits: &limits,
        reference: None,
        timeline: None,
        synchronous: None,
    };
    assert_eq!(field.choose(&[], false), Err("no standby".to_owned()));
}
