//! The coordinator's decisions as tables: leadership, the fence,
//! proposals and refusals, the proxies' fencing, operator routing.

use super::*;

type C = Coordinator<u32>;
type Out = Output<u32>;
type Opinion = BTreeMap<String, bool>;
/// A case: its name, the watchdog's status, what is published (generation, no_quorum).
type Shown = (&'static str, Option<WatchdogStatus>, Vec<(u64, bool)>);
/// A case: its name, the watchdog's status, the votes reported (backend, down).
type Votes = (
    &'static str,
    Option<WatchdogStatus>,
    Vec<(&'static str, bool)>,
);

fn setup() -> Setup {
    let backends: Vec<Target> = (0..3)
        .map(|i| Target {
            id: i,
            name: format!("pg{i}"),
            host: "127.0.0.1".to_owned(),
            port: 5432 + i as u16,
            data_dir: std::path::PathBuf::new(),
        })
        .collect();
    let specs = backends
        .iter()
        .map(|t| BackendSpec {
            name: t.name.clone(),
            host: t.host.clone(),
            port: t.port,
            allow_failover: true,
        })
        .collect();
    Setup {
        node: "node1".to_owned(),
        backends,
        specs,
        limits: Limits {
            max_retries: 2,
            max_lag_bytes: 1 << 20,
        },
        rejoin_enabled: true,
        synchronous: None,
    }
}

fn record(generation: u64, down_by_quorum: &[&str]) -> ClusterRecord {
    ClusterRecord {
        generation,
        primary: Some("pg0".to_owned()),
        down_by_quorum: down_by_quorum.iter().map(|s| (*s).to_owned()).collect(),
        ..ClusterRecord::default()
    }
}

/// This node (id 1) as its watchdog sees it: `leader`, `quorum`, `record`.
fn status(leader: u64, quorum: bool, record: ClusterRecord) -> Option<WatchdogStatus> {
    Some(WatchdogStatus {
        id: 1,
        leader_id: leader,
        quorum,
        members: vec![Default::default(); 3],
        record: Some(record),
        ..WatchdogStatus::default()
    })
}

fn watchdog(s: Option<WatchdogStatus>) -> Input<u32> {
    Input::Watchdog(s.map(Box::new))
}

fn leading(generation: u64, down: &[&str]) -> Input<u32> {
    watchdog(status(1, true, record(generation, down)))
}

fn following(generation: u64, down: &[&str]) -> Input<u32> {
    watchdog(status(2, true, record(generation, down)))
}

fn following_record(r: ClusterRecord) -> Input<u32> {
    watchdog(status(2, true, r))
}

fn operator(ask: Ask, forwarded: bool, reply: u32) -> Input<u32> {
    Input::Operator {
        ask,
        forwarded,
        reply,
    }
}

fn checked(id: usize, result: Result<Observation, String>) -> Input<u32> {
    Input::Event(Event::Checked {
        id,
        at_ms: 1,
        result,
    })
}

/// pg0 a primary at LSN 100, pg1 and pg2 standbys streaming from it.
fn healthy(c: &mut C) -> Vec<Out> {
    let mut out = c.step(checked(0, Ok(Observation::primary(1, 100))));
    for id in 1..3 {
        out.extend(c.step(checked(id, Ok(Observation::standby(1, 100, Some(5432))))));
    }
    out
}

/// Fails three checks of backend `id` with `error`: more than
/// `max_retries`, so this node sees it down.
fn seen_down(c: &mut C, id: usize, error: &str) {
    for _ in 0..3 {
        c.step(checked(id, Err(error.to_owned())));
    }
}

/// Performs `outputs` as the driver does, answering every proposal with
/// `answer`; returns every output seen, proposals' followers included.
fn drive(c: &mut C, outputs: Vec<Out>, answer: Result<(), String>) -> Vec<Out> {
    let mut seen = Vec::new();
    let mut queue = VecDeque::from(outputs);
    while let Some(o) = queue.pop_front() {
        if matches!(o, Output::Propose(_)) {
            queue.extend(c.step(Input::Proposed(answer.clone())));
        }
        seen.push(o);
    }
    seen
}

/// A batch of outputs sorted by kind, in order within each kind.
#[derive(Default)]
struct Sorted<'a> {
    proposals: Vec<&'a ProposeClusterChangeRequest>,
    performed: Vec<&'a Action>,
    /// (generation, no_quorum) of each published state.
    published: Vec<(u64, bool)>,
    replies: Vec<(u32, Result<String, String>)>,
    opinions: Vec<Opinion>,
}

fn sorted(out: &[Out]) -> Sorted<'_> {
    let mut sorted = Sorted::default();
    for o in out {
        match o {
            Output::Propose(p) => sorted.proposals.push(p),
            Output::Perform(a) => sorted.performed.push(a),
            Output::Publish(s) => sorted.published.push((s.generation, s.no_quorum)),
            Output::Reply { to, answer } => sorted.replies.push((*to, answer.clone())),
            Output::Opinion(m) => sorted.opinions.push(m.clone()),
            _ => {}
        }
    }
    sorted
}

fn proposals(out: &[Out]) -> Vec<&ProposeClusterChangeRequest> {
    sorted(out).proposals
}

fn performed(out: &[Out]) -> Vec<&Action> {
    sorted(out).performed
}

fn published(out: &[Out]) -> Vec<(u64, bool)> {
    sorted(out).published
}

fn replies(out: &[Out]) -> Vec<(u32, Result<String, String>)> {
    sorted(out).replies
}

/// A coordinator deciding with a healthy cluster, its first generation (2) committed.
/// It has led for longer than the lead wait, and its last commit is older
/// than the fence wait.
fn deciding() -> C {
    let mut c = C::new(setup(), ClusterState::default());
    healthy(&mut c);
    let out = c.step(leading(1, &[]));
    drive(&mut c, out, Ok(()));
    assert!(c.machine().is_some());
    ticks(&mut c, LEAD_WAIT_TICKS + 1);
    c
}

fn ticks(c: &mut C, n: u64) -> Vec<Out> {
    (0..n).flat_map(|_| c.tick()).collect()
}

/// Drives `out` (proposals committed), then lets the fence wait pass,
/// driving what it releases: everything a round does once the leases
/// allow it.
fn fenced(c: &mut C, out: Vec<Out>) -> Vec<Out> {
    let mut seen = drive(c, out, Ok(()));
    let released = ticks(c, FENCE_WAIT_TICKS + 1);
    seen.extend(drive(c, released, Ok(())));
    seen
}

/// The promotions in `out`: (the backend promoted, the primary it replaces).
fn promoted(out: &[Out]) -> Vec<(usize, Option<usize>)> {
    performed(out)
        .into_iter()
        .filter_map(|a| match a {
            Action::Promote {
                id, old_primary, ..
            } => Some((*id, *old_primary)),
            _ => None,
        })
        .collect()
}

fn promotes(out: &[Out]) -> bool {
    !promoted(out).is_empty()
}

/// Whether `out` promotes backend `id`.
fn promotes_backend(out: &[Out], id: usize) -> bool {
    promoted(out).iter().any(|&(p, _)| p == id)
}

// === leadership ===

#[test]
fn decides_only_while_its_watchdog_leads_with_a_quorum() {
    let no_record = Some(WatchdogStatus {
        id: 1,
        leader_id: 1,
        quorum: true,
        ..WatchdogStatus::default()
    });
    let unknown_self = Some(WatchdogStatus {
        id: 0,
        leader_id: 0,
        quorum: true,
        record: Some(record(1, &[])),
        ..WatchdogStatus::default()
    });
    let table: Vec<(&str, Option<WatchdogStatus>, bool)> = vec![
        ("no watchdog", None, false),
        ("this node's id unknown", unknown_self, false),
        ("another node leads", status(2, true, record(1, &[])), false),
        (
            "leads without a quorum",
            status(1, false, record(1, &[])),
            false,
        ),
        ("leads, no record yet", no_record, false),
        ("leads with a quorum", status(1, true, record(1, &[])), true),
    ];
    for (case, s, decides) in table {
        let mut c = C::new(setup(), ClusterState::default());
        healthy(&mut c);
        let out = c.step(Input::Watchdog(s.map(Box::new)));
        assert_eq!(c.machine().is_some(), decides, "{case}");
        // A new leader decides at once from what this node already saw.
        assert_eq!(proposals(&out).len(), usize::from(decides), "{case}");
    }
}

#[test]
fn a_new_leader_starts_from_the_committed_record_and_proposes_the_next_generation() {
    let mut c = C::new(setup(), ClusterState::default());
    healthy(&mut c);
    let out = c.step(leading(7, &[]));
    let p = proposals(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].expected_generation, 7);
    assert_eq!(p[0].generation, 8);
    assert_eq!(p[0].primary.as_deref(), Some("pg0"));
    assert!(
        matches!(out.last(), Some(Output::Propose(_))),
        "the round waits"
    );
}

#[test]
fn losing_the_lead_or_the_watchdog_stops_deciding_and_regaining_it_starts_afresh() {
    let table: Vec<(&str, Input<u32>)> = vec![
        ("another leader", following(2, &[])),
        ("no quorum", watchdog(status(1, false, record(2, &[])))),
        ("watchdog gone", watchdog(None)),
    ];
    for (case, lose) in table {
        let mut c = deciding();
        c.step(lose);
        assert!(c.machine().is_none(), "{case}");
        let out = c.step(leading(5, &[]));
        assert_eq!(c.machine().map(Machine::generation), Some(6), "{case}");
        assert_eq!(proposals(&out)[0].expected_generation, 5, "{case}");
    }
}

// === the fence ===

#[test]
fn the_waits_in_ticks_cover_the_leases() {
    let t = |n: u64| TICK * u32::try_from(n).unwrap();
    assert!(t(FENCE_WAIT_TICKS) >= pgwarden_proto::lease::AFTER_COMMIT);
    assert!(t(LEAD_WAIT_TICKS) >= pgwarden_proto::lease::AFTER_ELECTION);
    assert!(pgwarden_proto::lease::AFTER_COMMIT > pgwarden_proto::lease::PROXY_LEASE);
}

#[test]
fn a_quorums_verdict_withdraws_the_primary_at_once_and_the_promotion_waits_for_the_leases() {
    let mut c = deciding();
    // The verdict is acted on as it comes: the withdrawal is proposed.
    let out = c.step(leading(2, &["pg0"]));
    let withdraw = proposals(&out);
    assert_eq!(withdraw.len(), 1, "{out:?}");
    assert!(withdraw[0].failover_in_progress, "{out:?}");
    let out = drive(&mut c, out, Ok(()));
    assert!(!promotes(&out), "no promotion before the fence: {out:?}");
    // Every lease on the old generation ends PROXY_LEASE after it was
    // asked for, which was before the withdrawal committed.
    let held = ticks(&mut c, FENCE_WAIT_TICKS);
    assert!(!promotes(&held), "{held:?}");
    let released = c.tick();
    assert!(promoted(&released).contains(&(1, Some(0))), "{released:?}");
}

/// This node leading, its watchdog showing the withdrawal of pg0 in
/// generation 3 and every voter's proxy routing by `proxies_on` or newer.
fn withdrawn_with_proxies_on(proxies_on: u64) -> Input<u32> {
    let mut r = record(3, &["pg0"]);
    r.failover_in_progress = true;
    let mut s = status(1, true, r);
    if let Some(s) = s.as_mut() {
        s.proxies_on_generation = proxies_on;
    }
    watchdog(s)
}

#[test]
fn a_held_promotion_runs_as_soon_as_every_proxy_routes_by_the_withdrawal() {
    let mut c = deciding();
    let out = c.step(leading(2, &["pg0"]));
    let out = drive(&mut c, out, Ok(()));
    assert!(!promotes(&out), "{out:?}");
    // One proxy still routes by generation 2: the fence holds.
    let out = c.step(withdrawn_with_proxies_on(2));
    assert!(!promotes(&out), "{out:?}");
    // Every proxy took in the withdrawal (3): none routes to pg0 any
    // more, so no lease needs to run out.
    let out = c.step(withdrawn_with_proxies_on(3));
    assert!(promoted(&out).contains(&(1, Some(0))), "{out:?}");
    let record = &c.timeline().records()[0];
    let fence = record.phases.iter().find(|p| p.name == "fence").unwrap();
    assert!(fence.detail.contains("every node's proxy"), "{record:?}");
}

#[test]
fn a_new_leader_promotes_only_once_the_old_leaders_leases_have_ended() {
    let mut c = C::new(setup(), ClusterState::default());
    healthy(&mut c);
    seen_down(&mut c, 0, "refused");
    c.step(following(2, &["pg0"]));
    ticks(&mut c, 50);
    // It leads now, with the verdict already there: the withdrawal goes at
    // once, the promotion only after LEAD_WAIT_TICKS.
    let out = c.step(leading(2, &["pg0"]));
    let out = fenced(&mut c, out);
    assert_eq!(proposals(&out).len(), 1, "{out:?}");
    assert!(
        !promotes(&out),
        "the fence wait alone is not enough: {out:?}"
    );
    let waited = FENCE_WAIT_TICKS + 1;
    let held = ticks(&mut c, LEAD_WAIT_TICKS - waited);
    assert!(!promotes(&held), "{held:?}");
    let released = c.tick();
    assert!(promotes_backend(&released, 1), "{released:?}");
}

#[test]
fn a_promotion_held_by_the_fence_is_dropped_when_the_lead_moves() {
    // (what the watchdog says while the promotion waits)
    let mut moved = record(3, &["pg0"]);
    moved.failover_in_progress = true;
    let mut newer = moved.clone();
    newer.generation = 9;
    let regained = moved.clone();
    let table: Vec<(&str, Input<u32>)> = vec![
        (
            "another node leads",
            watchdog(status(2, true, moved.clone())),
        ),
        ("no quorum", watchdog(status(1, false, moved.clone()))),
        ("the watchdog is gone", watchdog(None)),
        (
            "another generation committed",
            watchdog(status(1, true, newer)),
        ),
        ("the lead lost and regained in a new term", {
            let mut again = status(1, true, regained).unwrap();
            again.term = 5;
            watchdog(Some(again))
        }),
    ];
    for (case, input) in table {
        let mut c = deciding();
        let out = c.step(leading(2, &["pg0"]));
        let out = drive(&mut c, out, Ok(()));
        assert!(!promotes(&out), "{case}");
        let mut out = c.step(input);
        out.extend(ticks(&mut c, 2 * FENCE_WAIT_TICKS));
        let out = drive(&mut c, out, Ok(()));
        assert!(!promotes(&out), "{case}: {out:?}");
    }
}

#[test]
fn an_operators_promotion_held_by_the_fence_hears_when_the_lead_moved() {
    let mut c = deciding();
    let out = c.step(operator(
        Ask::Promote {
            id: 1,
            force: false,
        },
        false,
        7,
    ));
    let out = drive(&mut c, out, Ok(()));
    assert!(!promotes(&out) && replies(&out).is_empty(), "{out:?}");
    let out = c.step(following(3, &[]));
    let answer = replies(&out);
    assert_eq!(answer.len(), 1, "{out:?}");
    assert!(
        answer[0]
            .1
            .as_ref()
            .is_err_and(|e| e.contains("lead moved")),
        "{answer:?}"
    );
    assert!(!promotes(&ticks(&mut c, 2 * FENCE_WAIT_TICKS)));
}

#[test]
fn what_follows_a_generation_runs_only_once_it_is_committed() {
    let table: Vec<(Result<(), String>, bool)> = vec![
        (Ok(()), true),
        (Err("generation moved on".to_owned()), false),
    ];
    for (answer, promoted) in table {
        let mut c = deciding();
        let out = c.step(leading(2, &["pg0"]));
        assert!(performed(&out).is_empty(), "nothing before the proposal");
        let mut out = drive(&mut c, out, answer.clone());
        out.extend(ticks(&mut c, FENCE_WAIT_TICKS + 1));
        assert_eq!(promotes(&out), promoted, "{answer:?}");
        assert_eq!(c.machine().is_some(), answer.is_ok(), "{answer:?}");
    }
}

#[test]
fn after_a_refusal_the_next_round_decides_again_from_the_committed_record() {
    let mut c = deciding();
    let out = c.step(operator(Ask::Detach(2), false, 9));
    let out = drive(&mut c, out, Err("generation moved on".to_owned()));
    assert_eq!(
        replies(&out),
        vec![(
            9,
            Err("not committed by the watchdogs: generation moved on".to_owned())
        )]
    );
    assert!(c.machine().is_none());
    // The stream shows what the watchdogs did commit: decide from there.
    let out = c.step(leading(4, &[]));
    assert_eq!(c.machine().map(Machine::generation), Some(5));
    assert_eq!(proposals(&out)[0].expected_generation, 4);
}

#[test]
fn a_proposal_expects_the_newest_generation_committed_even_before_the_stream_shows_it() {
    let mut c = deciding();
    // Generation 2 committed; the stream still shows 1.
    let out = c.step(operator(Ask::Detach(2), false, 1));
    let p = proposals(&out);
    assert_eq!((p[0].expected_generation, p[0].generation), (2, 3));
}

#[test]
fn inputs_while_a_proposal_is_out_wait_for_its_answer() {
    let mut c = C::new(setup(), ClusterState::default());
    healthy(&mut c);
    let out = c.step(leading(1, &[]));
    assert_eq!(proposals(&out).len(), 1);
    let held = c.step(operator(Ask::Detach(2), false, 3));
    assert!(held.is_empty(), "{held:?}");
    assert!(c.tick().is_empty());
    // The answer ends the first round, then the held request runs.
    let out = c.step(Input::Proposed(Ok(())));
    let p = proposals(&out);
    assert_eq!((p[0].expected_generation, p[0].generation), (2, 3));
    let out = drive(&mut c, out, Ok(()));
    assert_eq!(replies(&out), vec![(3, Ok("pg2 detached".to_owned()))]);
}

#[test]
fn an_answer_to_no_proposal_changes_nothing() {
    let mut c = deciding();
    assert!(c.step(Input::Proposed(Ok(()))).is_empty());
    assert!(c.machine().is_some());
}

// === fencing the proxies ===

#[test]
fn proxies_see_each_committed_generation_and_each_change_of_quorum() {
    // Another node leads; this one sees `generation` committed, with or without a quorum.
    let seen = |generation, quorum| status(2, quorum, record(generation, &[]));
    // (case, watchdog status, what is published: (generation, no_quorum))
    let table: Vec<Shown> = vec![
        ("first record", seen(1, true), vec![(1, false)]),
        ("nothing new", seen(1, true), vec![]),
        ("next generation", seen(2, true), vec![(2, false)]),
        ("quorum lost", seen(2, false), vec![(2, true)]),
        ("still lost", seen(2, false), vec![]),
        ("regained", seen(2, true), vec![(2, false)]),
        ("watchdog gone", None, vec![(2, true)]),
        ("still gone", None, vec![]),
        ("back, newer", seen(3, true), vec![(3, false), (3, false)]),
    ];
    let mut c = C::new(setup(), ClusterState::default());
    for (case, s, want) in table {
        let out = c.step(Input::Watchdog(s.map(Box::new)));
        assert_eq!(published(&out), want, "{case}");
    }
}

#[test]
fn watchers_wait_for_a_committed_record() {
    let table: Vec<(&str, Option<WatchdogStatus>, bool)> = vec![
        ("no watchdog", None, false),
        ("generation 0", status(2, true, record(0, &[])), false),
        ("generation 1", status(2, true, record(1, &[])), true),
    ];
    for (case, s, ready) in table {
        let mut c = C::new(setup(), ClusterState::default());
        let out = c.step(Input::Watchdog(s.map(Box::new)));
        assert_eq!(out.contains(&Output::Ready), ready, "{case}");
        assert!(published(&out).iter().all(|(_, nq)| !nq), "{case}");
    }
}

#[test]
fn the_state_shown_is_the_committed_record_with_this_nodes_view() {
    let mut c = C::new(setup(), ClusterState::default());
    healthy(&mut c);
    seen_down(&mut c, 2, "timeout");
    let mut r = record(4, &["pg1"]);
    r.detached.insert("pg0".to_owned(), "fenced".to_owned());
    let out = c.step(watchdog(status(2, true, r)));
    let Some(Output::Current(s)) = out.iter().find(|o| matches!(o, Output::Current(_))) else {
        panic!("no state shown: {out:?}");
    };
    let status: Vec<i32> = s.backends.iter().map(|b| b.status).collect();
    let want = [PStatus::Detached, PStatus::Down, PStatus::Quarantined];
    assert_eq!(status, want.map(|s| s as i32).to_vec());
    assert_eq!(
        (s.generation, s.primary_id, s.no_quorum),
        (4, Some(0), false)
    );
    assert_eq!(s.monitor, "node1");
}

// === operator requests ===

#[test]
fn operator_requests_go_to_the_machine_or_to_the_leader_never_twice() {
    use pgwarden_proto::v1::operator_request::Kind;
    let forward = |kind: Kind, id: u32, name: &str| Output::Forward {
        request: OperatorRequest {
            kind: kind as i32,
            backend_id: id,
            force: false,
            backend_name: name.to_owned(),
        },
        reply: 1,
    };
    let answer = |answer: Result<&str, &str>| Output::Reply {
        to: 1,
        answer: answer.map(str::to_owned).map_err(str::to_owned),
    };
    // (deciding, forwarded, ask, where it goes)
    let table: Vec<(bool, bool, Ask, Out)> = vec![
        (
            false,
            false,
            Ask::Detach(2),
            forward(Kind::Detach, 2, "pg2"),
        ),
        (
            false,
            false,
            Ask::Attach(1),
            forward(Kind::Attach, 1, "pg1"),
        ),
        (false, true, Ask::Detach(2), answer(Err(LEAD_MOVED))),
        (
            false,
            false,
            Ask::Detach(9),
            answer(Err("no backend with id 9")),
        ),
        (true, false, Ask::Attach(1), answer(Ok("pg1 is already up"))),
        (true, true, Ask::Attach(1), answer(Ok("pg1 is already up"))),
    ];
    for (decides, forwarded, ask, want) in table {
        let mut c = if decides {
            deciding()
        } else {
            let mut c = C::new(setup(), ClusterState::default());
            healthy(&mut c);
            c
        };
        let out = c.step(operator(ask, forwarded, 1));
        let routed: Vec<&Out> = out
            .iter()
            .filter(|o| matches!(o, Output::Reply { .. } | Output::Forward { .. }))
            .collect();
        assert_eq!(routed, vec![&want], "{ask:?} forwarded {forwarded}");
    }
}

#[test]
fn a_decided_request_is_answered_after_its_generation_is_committed() {
    let mut c = deciding();
    let out = c.step(operator(Ask::Detach(2), true, 5));
    assert!(replies(&out).is_empty(), "not before the commit: {out:?}");
    let out = drive(&mut c, out, Ok(()));
    assert_eq!(replies(&out), vec![(5, Ok("pg2 detached".to_owned()))]);
}

#[test]
fn a_rejoin_without_a_rejoin_command_is_refused() {
    let mut s = setup();
    s.rejoin_enabled = false;
    let mut c = C::new(s, ClusterState::default());
    healthy(&mut c);
    let out = c.step(leading(1, &[]));
    drive(&mut c, out, Ok(()));
    let out = c.step(operator(Ask::Rejoin(2), false, 2));
    let r = replies(&out);
    assert!(
        r[0].1
            .as_ref()
            .is_err_and(|e| e.contains("rejoin_command is not set")),
        "{r:?}"
    );
}

#[test]
fn another_nodes_new_down_vote_makes_this_node_check_at_once() {
    let voted = |votes: &[(&str, &[u64])]| {
        let mut r = record(2, &[]);
        for (b, ids) in votes {
            r.down_votes.insert(
                (*b).to_owned(),
                pgwarden_proto::v1::NodeIds { ids: ids.to_vec() },
            );
        }
        following_record(r)
    };
    let rechecks = |out: &[Out]| out.iter().filter(|o| matches!(o, Output::Recheck)).count();
    let mut c = C::new(setup(), ClusterState::default());
    healthy(&mut c);
    assert_eq!(rechecks(&c.step(voted(&[]))), 0);
    assert_eq!(
        rechecks(&c.step(voted(&[("pg0", &[2])]))),
        1,
        "node 2 sees pg0 down"
    );
    assert_eq!(
        rechecks(&c.step(voted(&[("pg0", &[2])]))),
        0,
        "not again for the same vote"
    );
    assert_eq!(
        rechecks(&c.step(voted(&[("pg0", &[1, 2])]))),
        0,
        "this node's own vote is no news"
    );
    assert_eq!(
        rechecks(&c.step(voted(&[("pg0", &[1, 2, 3])]))),
        1,
        "node 3 joins"
    );
    // Once this node sees pg0 down itself, others' votes on it are no news.
    seen_down(&mut c, 0, "refused");
    assert_eq!(rechecks(&c.step(voted(&[]))), 0);
    assert_eq!(rechecks(&c.step(voted(&[("pg0", &[2])]))), 0);
}

#[test]
fn a_recheck_is_always_this_nodes() {
    for mut c in [deciding(), C::new(setup(), ClusterState::default())] {
        let out = c.step(Input::Recheck);
        assert_eq!(out.first(), Some(&Output::Recheck));
    }
}

// === this node's opinion ===

#[test]
fn this_nodes_opinion_changes_after_more_than_max_retries_failures() {
    let mut c = C::new(setup(), ClusterState::default());
    let opinions = |out: &[Out]| sorted(out).opinions;
    let up = BTreeMap::from([("pg0".to_owned(), false)]);
    let down = BTreeMap::from([("pg0".to_owned(), true)]);
    let fail = || checked(0, Err("refused".to_owned()));
    // (input, opinion reported)
    let table: Vec<(Input<u32>, Vec<Opinion>)> = vec![
        (checked(0, Ok(Observation::primary(1, 1))), vec![up.clone()]),
        (fail(), vec![]),
        (fail(), vec![]),
        (fail(), vec![down]),
        (fail(), vec![]),
        (
            Input::Event(Event::AliveUnobserved {
                id: 0,
                at_ms: 2,
                reason: "terminated".to_owned(),
            }),
            vec![up],
        ),
    ];
    for (i, (input, want)) in table.into_iter().enumerate() {
        assert_eq!(opinions(&c.step(input)), want, "row {i}");
    }
}

#[test]
fn this_node_reports_the_votes_its_watchdog_does_not_hold() {
    use pgwarden_proto::v1::NodeIds;
    let opinion = BTreeMap::from([
        ("pg0".to_owned(), true),
        ("pg1".to_owned(), false),
        ("pg2".to_owned(), true),
    ]);
    let voted = |id: u64, down_votes: &[(&str, &[u64])]| {
        let mut r = record(1, &[]);
        r.down_votes = down_votes
            .iter()
            .map(|(b, ids)| ((*b).to_owned(), NodeIds { ids: ids.to_vec() }))
            .collect();
        let mut s = status(2, true, r);
        if let Some(s) = s.as_mut() {
            s.id = id;
        }
        s
    };
    // (case, watchdog status, votes reported: (backend, down))
    let table: Vec<Votes> = vec![
        ("no watchdog", None, vec![]),
        ("its id unknown", voted(0, &[]), vec![]),
        (
            "no vote yet",
            voted(1, &[]),
            vec![("pg0", true), ("pg2", true)],
        ),
        (
            "others' votes are not this node's",
            voted(1, &[("pg0", &[2, 3])]),
            vec![("pg0", true), ("pg2", true)],
        ),
        (
            "one held, one to withdraw",
            voted(1, &[("pg0", &[1]), ("pg1", &[1, 2])]),
            vec![("pg1", false), ("pg2", true)],
        ),
        (
            "all held",
            voted(1, &[("pg0", &[1]), ("pg2", &[3, 1])]),
            vec![],
        ),
    ];
    for (case, s, want) in table {
        let got: Vec<(String, bool)> = unreported(&opinion, s.as_ref())
            .into_iter()
            .map(|v| (v.backend, v.down))
            .collect();
        let want: Vec<(String, bool)> = want.into_iter().map(|(b, d)| (b.to_owned(), d)).collect();
        assert_eq!(got, want, "{case}");
    }
}

/// Two generations decided in one round: every `Publish` carries the
/// machine's newest state, so once the first is committed the second has
/// nothing new and is skipped, rather than proposed again (which the
/// watchdogs refuse as `GenerationNotIncreasing`, dropping the machine and
/// what followed, here the promotion). Here: a verdict ripens while a
/// proposal is out, and the request held back meanwhile decides a
/// generation too.
#[test]
fn a_generation_already_committed_is_never_proposed_again() {
    let mut c = deciding();
    let out = c.step(operator(Ask::Detach(2), false, 1));
    assert_eq!(proposals(&out).len(), 1);
    // The verdict comes while the detach is being committed ...
    assert!(c.step(leading(2, &["pg0"])).is_empty());
    // ... and an attach waits for it.
    assert!(c.step(operator(Ask::Attach(2), false, 2)).is_empty());
    let out = c.step(Input::Proposed(Ok(())));
    let out = drive(&mut c, out, Ok(()));
    for p in proposals(&out) {
        assert!(p.generation > p.expected_generation, "{p:?}");
    }
}

// === the timeline ===

/// The names of the phases of the timeline's newest record, with their
/// wall times.
fn phases(c: &C) -> Vec<(String, i64)> {
    c.timeline()
        .records()
        .last()
        .map(|r| {
            r.phases
                .iter()
                .map(|p| (p.name.clone(), p.at_unix_ms))
                .collect()
        })
        .unwrap_or_default()
}

fn event(e: Event) -> Input<u32> {
    Input::Event(e)
}

#[test]
fn the_leaders_timeline_has_the_quorums_verdict_the_fence_and_the_proxys_first_write() {
    let mut c = deciding();
    c.set_wall_ms(1_000);
    c.step(checked(0, Err("refused".to_owned())));
    c.set_wall_ms(1_300);
    let out = c.step(leading(2, &["pg0"]));
    let mut out = drive(&mut c, out, Ok(()));
    // Each tick 100 ms of wall time, as the driver's interval gives.
    for t in 1..=FENCE_WAIT_TICKS + 1 {
        c.set_wall_ms(1_300 + 100 * i64::try_from(t).unwrap());
        out.extend(c.tick());
    }
    let out = drive(&mut c, out, Ok(()));
    assert!(promotes_backend(&out, 1), "{out:?}");
    let fence_at = 1_300 + 100 * i64::try_from(FENCE_WAIT_TICKS + 1).unwrap();
    let names: Vec<(String, i64)> = phases(&c);
    assert_eq!(
        names,
        vec![
            ("suspect".to_owned(), 1_000),
            ("quorum".to_owned(), 1_300),
            ("down".to_owned(), 1_300),
            ("fence".to_owned(), fence_at),
        ]
    );
    // Promotion, repointing, the new generation committed.
    c.set_wall_ms(5_000);
    let out = c.step(checked(1, Ok(Observation::primary(2, 100))));
    drive(&mut c, out, Ok(()));
    let out = c.step(event(Event::Promoted {
        id: 1,
        result: Ok(2),
    }));
    drive(&mut c, out, Ok(()));
    c.set_wall_ms(5_200);
    let out = c.step(event(Event::Followed {
        id: 2,
        result: Ok(()),
    }));
    drive(&mut c, out, Ok(()));
    let record = c.timeline().records().last().cloned().unwrap();
    assert_eq!(
        record.phases.last().map(|p| p.name.as_str()),
        Some("completed"),
        "{record:?}"
    );
    let generation = record.to_generation;
    assert!(generation > 2, "{record:?}");
    // The proxy's report lands in that record, in time order; a repeat or
    // another generation's report is ignored.
    let report = |generation, at_ms| Input::Routed {
        generation,
        at_ms,
        detail: "this node's proxy: 1 session(s) moved".to_owned(),
    };
    // The proxy may first route in any generation of the failover (the
    // promotion's, before the standbys are repointed).
    c.step(report(record.from_generation + 1, 5_300));
    c.step(report(generation, 5_400));
    c.step(report(generation + 7, 5_500));
    let routed: Vec<(String, i64)> = phases(&c)
        .into_iter()
        .filter(|(n, _)| n == "first write routed")
        .collect();
    assert_eq!(routed, vec![("first write routed".to_owned(), 5_300)]);
    assert_eq!(
        phases(&c).last().map(|(n, _)| n.as_str()),
        Some("first write routed")
    );
}

#[test]
fn a_quorums_verdict_withdrawn_before_it_was_acted_on_leaves_no_phase_behind() {
    let mut c = deciding();
    c.set_wall_ms(1_000);
    // The verdict comes while a detach is being committed, and is gone
    // before the coordinator takes it in.
    let out = c.step(operator(Ask::Detach(2), false, 1));
    c.step(leading(2, &["pg0"]));
    c.step(leading(2, &[]));
    drive(&mut c, out, Ok(()));
    ticks(&mut c, 2 * FENCE_WAIT_TICKS);
    // Later, a real failover: its record starts at its own verdict.
    c.set_wall_ms(9_000);
    let out = c.step(leading(3, &["pg0"]));
    fenced(&mut c, out);
    let quorum: Vec<i64> = phases(&c)
        .into_iter()
        .filter(|(n, _)| n == "quorum")
        .map(|(_, at)| at)
        .collect();
    assert_eq!(quorum, vec![9_000]);
}

#[test]
fn a_refused_proposal_ends_the_open_record_as_abandoned() {
    let mut c = deciding();
    let out = c.step(leading(2, &["pg0"]));
    drive(&mut c, out, Err("generation moved on".to_owned()));
    let record = c.timeline().records().last().cloned().unwrap();
    let last = record.phases.last().unwrap();
    assert_eq!(last.name, "abandoned", "{record:?}");
    assert!(last.detail.contains("generation moved on"), "{last:?}");
    assert_eq!(record.to_generation, 0);
}

/// With `failover.synchronous_mode`, a new synchronous standby is
/// committed through the watchdogs before the primary is set to wait for
/// it: the setting is performed only once the proposal carrying it is
/// committed, and not at all when it is refused.
#[test]
fn a_synchronous_standby_is_committed_before_the_primary_waits_for_it() {
    use crate::machine::synchronous::{Keeper, Mode};
    for (answer, set_after) in [(Ok(()), true), (Err("no quorum".to_owned()), false)] {
        let mut c = C::new(
            Setup {
                synchronous: Some(Keeper::new(Mode::On, 1)),
                ..setup()
            },
            ClusterState::default(),
        );
        healthy(&mut c);
        // Leading, it tells its machine what it saw: a round that records
        // pg1 synchronous.
        let out = c.step(leading(1, &[]));
        let mut seen = drive(&mut c, out, answer.clone());
        let out = healthy(&mut c);
        seen.extend(drive(&mut c, out, answer.clone()));
        let proposed = seen
            .iter()
            .position(|o| {
                matches!(o, Output::Propose(p)
                    if p.synchronous.as_ref().is_some_and(|s| s.standbys == ["pg1"]))
            })
            .unwrap_or_else(|| panic!("{answer:?}: no proposal of pg1 synchronous: {seen:?}"));
        let set = seen.iter().position(|o| {
            matches!(o, Output::Perform(Action::SetSynchronous { id: 0, set: Some(s) })
                if s.standbys.contains("pg1"))
        });
        if set_after {
            assert!(set.is_some_and(|s| s > proposed), "{seen:?}");
        } else {
            assert_eq!(set, None, "set though its record was refused: {seen:?}");
        }
    }
}
