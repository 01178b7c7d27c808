//! The core's decisions as tables, over cores wired in memory (no sockets,
//! no clock, fixed election seeds): monitor liveness, handover, quorum,
//! proposals, report and operator routing, shutdown, the proxies' lease.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::*;
use crate::fence::{Grantable, Granted};
use crate::storage::{DurableStorage, MemoryPersist};
use crate::{Generation, NodeConfig, WatchdogNode};
use pgwarden_proto::v1::{OperatorRequest, WatchdogStatus};

type C = Core<u32, u32>;
type Out = Output<u32, u32>;

/// A core `id` of `voters`; elections after `election_tick` ticks.
fn core(id: u64, voters: &[u64], election_tick: usize) -> C {
    let storage = DurableStorage::open_with(Box::new(MemoryPersist::new()), voters).unwrap();
    let mut cfg = NodeConfig::new(id, voters.to_vec());
    cfg.timeout_seed = Some(id * 7 + 1);
    cfg.election_tick = election_tick;
    let node = WatchdogNode::new(cfg, storage).unwrap();
    let setup = Setup {
        members: voters.iter().map(|v| format!("10.0.0.{v}:9000")).collect(),
        delegate_ip: String::new(),
    };
    Core::new(setup, node)
}

/// Cores wired in memory: messages are delivered at once unless their link
/// is cut, monitor probes are answered at once by `monitors`.
struct Net {
    cores: BTreeMap<u64, C>,
    now: u64,
    cut: BTreeSet<(u64, u64)>,
    monitors: BTreeMap<u64, bool>,
    /// Per node, every output but messages and probes, in order.
    log: BTreeMap<u64, Vec<Out>>,
    /// Whether reports forwarded to a leader reach it (their answers go to
    /// the leader's log).
    forwards: bool,
}

fn link(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}

impl Net {
    fn new(n: u64, election_tick: usize) -> Net {
        let voters: Vec<u64> = (1..=n).collect();
        Net {
            cores: voters
                .iter()
                .map(|&id| (id, core(id, &voters, election_tick)))
                .collect(),
            now: 0,
            cut: BTreeSet::new(),
            monitors: voters.iter().map(|&id| (id, true)).collect(),
            log: BTreeMap::new(),
            forwards: true,
        }
    }

    fn readings(&self) -> Readings {
        Readings {
            mono_ms: 10_000 + self.now * 100,
            wall_ms: 1_700_000_000_000 + self.now as i64 * 100,
            ..Readings::default()
        }
    }

    fn core(&mut self, id: u64) -> &mut C {
        let readings = self.readings();
        let c = self.cores.get_mut(&id).expect("a node of the net");
        c.read(readings);
        c
    }

    fn node(&self, id: u64) -> &WatchdogNode {
        self.cores[&id].node()
    }

    /// Carries out `out` of node `from`: delivers its messages and answers
    /// its probes (and so on, for what they cause); returns the rest.
    fn carry(&mut self, from: u64, out: Vec<Out>) -> Vec<Out> {
        let mut rest = Vec::new();
        let mut work: VecDeque<(u64, Vec<Out>, bool)> = VecDeque::from([(from, out, true)]);
        while let Some((id, out, mine)) = work.pop_front() {
            for o in out {
                match o {
                    Output::Send(m) => {
                        let to = m.to;
                        if self.cut.contains(&link(id, to)) || !self.cores.contains_key(&to) {
                            continue;
                        }
                        let more = self.core(to).step(Input::Peer {
                            from: id,
                            messages: vec![m],
                        });
                        work.push_back((to, more, false));
                    }
                    Output::Probe => {
                        let alive = self.monitors[&id];
                        let more = self.core(id).step(Input::Probed(alive));
                        work.push_back((id, more, mine));
                    }
                    Output::Forward {
                        leader,
                        term,
                        report,
                        reply,
                    } if self.forwards && !self.cut.contains(&link(id, leader)) => {
                        let more = self.core(leader).step(Input::Forwarded {
                            from: id,
                            report,
                            term: Some(term),
                            reply: reply.unwrap_or(0),
                        });
                        work.push_back((leader, more, false));
                    }
                    o if mine => rest.push(o),
                    o => self.log.entry(id).or_default().push(o),
                }
            }
        }
        rest
    }

    /// One tick of every node; their other outputs go to the log.
    fn tick(&mut self) {
        self.now += 1;
        let ids: Vec<u64> = self.cores.keys().copied().collect();
        for id in ids {
            let out = self.core(id).tick();
            let rest = self.carry(id, out);
            self.log.entry(id).or_default().extend(rest);
        }
    }

    fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.tick();
        }
    }

    /// Feeds `input` to node `id`; its outputs but messages and probes.
    fn step(&mut self, id: u64, input: Input<u32, u32>) -> Vec<Out> {
        let out = self.core(id).step(input);
        self.carry(id, out)
    }

    fn leader(&self) -> Option<u64> {
        self.cores
            .iter()
            .find(|(_, c)| c.node().is_leader())
            .map(|(id, _)| *id)
    }

    /// Runs until a leader is elected (and has committed in its term).
    fn elect(&mut self) -> u64 {
        for _ in 0..3000 {
            self.tick();
            if let Some(l) = self.leader()
                && self.node(l).lead_confirmed().is_some()
            {
                return l;
            }
        }
        panic!("no leader elected");
    }

    fn isolate(&mut self, id: u64) {
        let others: Vec<u64> = self.cores.keys().copied().filter(|&o| o != id).collect();
        for o in others {
            self.cut.insert(link(id, o));
        }
    }

    /// The last status node `id` showed.
    fn status(&self, id: u64) -> WatchdogStatus {
        statuses(&self.log[&id]).pop().expect("a status shown")
    }

    fn monitors_down(&self, id: u64) -> Vec<u64> {
        self.node(id)
            .record()
            .monitors_down
            .iter()
            .copied()
            .collect()
    }
}

/// What `pick` takes from each of `out` it matches, in order.
fn picked<T>(out: &[Out], pick: impl Fn(&Out) -> Option<T>) -> Vec<T> {
    out.iter().filter_map(pick).collect()
}

/// The answers in `out`: (to, result).
fn answers(out: &[Out]) -> Vec<(u32, Result<(), String>)> {
    picked(out, |o| match o {
        Output::Answer { to, result } => Some((*to, result.clone())),
        _ => None,
    })
}

/// The statuses shown in `out`, in order.
fn statuses(out: &[Out]) -> Vec<WatchdogStatus> {
    picked(out, |o| match o {
        Output::Status(s) => Some((**s).clone()),
        _ => None,
    })
}

/// Shorthand: an answer's result as "ok" or its message.
fn said(r: &Result<(), String>) -> String {
    match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    }
}

// === monitor liveness ===

#[test]
fn a_monitor_is_recorded_gone_only_after_the_grace() {
    // (case, ticks run with the monitor silent from the start, recorded gone)
    let cases: &[(&str, u64, bool)] = &[
        ("within the grace", MONITOR_GRACE_TICKS - 1, false),
        ("at the grace", MONITOR_GRACE_TICKS, false),
        (
            "the first probe after the grace",
            MONITOR_GRACE_TICKS + 1,
            true,
        ),
    ];
    for &(case, ticks, gone) in cases {
        let mut net = Net::new(1, 10);
        net.monitors.insert(1, false);
        net.run(ticks);
        assert!(net.node(1).is_leader(), "{case}: a single node leads");
        assert_eq!(net.monitors_down(1) == [1], gone, "{case}");
    }
}

#[test]
fn a_monitor_that_answers_again_is_recorded_alive() {
    let mut net = Net::new(1, 10);
    net.monitors.insert(1, false);
    net.run(MONITOR_GRACE_TICKS + 1);
    assert_eq!(net.monitors_down(1), [1]);
    net.monitors.insert(1, true);
    net.run(MONITOR_PROBE_TICKS + 1);
    assert!(net.monitors_down(1).is_empty());
}

#[test]
fn a_followers_monitor_state_reaches_the_record_through_the_leader() {
    let mut net = Net::new(3, 10);
    net.forwards = false;
    let leader = net.elect();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    net.monitors.insert(follower, false);
    let forwards = |net: &Net| {
        net.log[&follower]
            .iter()
            .filter(|o| matches!(o, Output::Forward { leader: l, report: Report::Monitor { alive: false }, .. } if *l == leader))
            .count()
    };
    net.run(MONITOR_GRACE_TICKS + MONITOR_PROBE_TICKS + 1);
    assert_eq!(forwards(&net), 1, "forwarded once the grace is over");
    // Not committed yet (the net here does not carry forwards): sent again
    // after the retry period only.
    net.run(MONITOR_RETRY_TICKS - MONITOR_PROBE_TICKS);
    assert!(forwards(&net) <= 2);
    net.run(MONITOR_RETRY_TICKS);
    assert!(forwards(&net) >= 2, "sent again while the record disagrees");
    // The leader takes it in.
    let out = net.step(
        leader,
        Input::Forwarded {
            from: follower,
            report: Report::Monitor { alive: false },
            term: Some(net.node(leader).term()),
            reply: 9,
        },
    );
    assert!(answers(&out).is_empty(), "answered once applied");
    net.run(2);
    assert_eq!(net.monitors_down(leader), [follower]);
    assert_eq!(answers(&net.log[&leader]), [(9, Ok(()))]);
}

// === handover ===

#[test]
fn a_leader_whose_monitor_is_gone_hands_the_lead_over() {
    // (case, the other nodes' monitors answer, the lead moves)
    let cases: &[(&str, bool, bool)] = &[
        ("to a node whose monitor answers", true, true),
        ("not when no other monitor answers", false, false),
    ];
    for &(case, others_alive, moves) in cases {
        let mut net = Net::new(3, 10);
        let leader = net.elect();
        for id in (1..=3).filter(|&i| i != leader) {
            net.monitors.insert(id, others_alive);
        }
        net.run(MONITOR_GRACE_TICKS + MONITOR_PROBE_TICKS * 2);
        net.monitors.insert(leader, false);
        net.run(MONITOR_GRACE_TICKS * 2 + MONITOR_RETRY_TICKS);
        let now = net.leader().expect("a leader");
        assert_eq!(now != leader, moves, "{case}: leader {leader} then {now}");
        if moves {
            assert!(net.monitors_down(now).contains(&leader), "{case}");
            let lowest = (1..=3).find(|&i| i != leader).unwrap();
            assert_eq!(now, lowest, "{case}: the lowest id heard from");
        }
    }
}

#[test]
fn the_lead_goes_only_to_a_node_heard_from_lately() {
    let mut net = Net::new(3, 10);
    let leader = net.elect();
    let others: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    let (first, second) = (others[0], others[1]);
    // The lowest other node is cut off: the lead goes to the other one.
    net.cut.insert(link(leader, first));
    net.cut.insert(link(first, second));
    net.monitors.insert(leader, false);
    net.run(MONITOR_GRACE_TICKS * 2 + MONITOR_RETRY_TICKS);
    assert_eq!(
        net.cores
            .iter()
            .filter(|(id, c)| **id != first && c.node().is_leader())
            .map(|(id, _)| *id)
            .collect::<Vec<_>>(),
        [second]
    );
}

// === quorum ===

#[test]
fn a_follower_has_a_quorum_while_it_heard_from_its_leader_lately() {
    // (case, ticks after the leader was cut off, the follower's quorum)
    let cases: &[(&str, u64, bool)] = &[
        ("connected", 0, true),
        ("just cut off", FRESH_TICKS / 2, true),
        ("cut off too long", FRESH_TICKS + 2, false),
    ];
    for &(case, after, quorum) in cases {
        // Elections slow enough not to interfere.
        let mut net = Net::new(3, 60);
        let leader = net.elect();
        net.run(4);
        let follower = (1..=3).find(|&i| i != leader).unwrap();
        net.cut.insert(link(leader, follower));
        net.run(after);
        let s = net.status(follower);
        assert_eq!(s.leader_id, leader, "{case}");
        assert_eq!(s.quorum, quorum, "{case}");
        assert_eq!(
            s.delegate_ip_holder,
            if quorum { leader } else { 0 },
            "{case}"
        );
    }
}

#[test]
fn a_leader_cut_off_from_the_majority_has_no_quorum() {
    let mut net = Net::new(3, 10);
    let leader = net.elect();
    net.run(4);
    assert!(net.status(leader).quorum);
    net.isolate(leader);
    net.run(25);
    let s = net.status(leader);
    assert!(!s.quorum, "{s:?}");
}

// === proposals ===

#[test]
fn proposals_are_answered_when_applied_refused_or_out_of_time() {
    // (case, election ticks, what happens to the proposer's leader, after
    // ticks, answer)
    let cases: &[(&str, usize, &str, u64, &str)] = &[
        ("committed", 10, "nothing", 2, "ok"),
        ("out of time", 400, "isolated", PROPOSAL_TICKS - 1, ""),
        (
            "out of time",
            400,
            "isolated",
            PROPOSAL_TICKS,
            "not committed within 15s",
        ),
        (
            "lead lost",
            10,
            "isolated",
            40,
            "leadership changed before the change committed",
        ),
        (
            "at a follower",
            10,
            "follower",
            0,
            "this watchdog is not the leader",
        ),
    ];
    for &(case, election, what, after, answer) in cases {
        let mut net = Net::new(3, election);
        let leader = net.elect();
        let at = if what == "follower" {
            (1..=3).find(|&i| i != leader).unwrap()
        } else {
            leader
        };
        if what == "isolated" {
            net.isolate(leader);
        }
        let generation = Generation {
            generation: 1,
            primary: Some("pg0".into()),
            ..Generation::default()
        };
        net.log.clear();
        let mut got = answers(&net.step(
            at,
            Input::Propose {
                expected: 0,
                generation,
                reply: 7,
            },
        ));
        net.run(after);
        got.extend(answers(net.log.get(&at).map_or(&[][..], |l| &l[..])));
        let said: Vec<String> = got.iter().map(|(_, r)| said(r)).collect();
        if answer.is_empty() {
            assert!(said.is_empty(), "{case} after {after}: {said:?}");
        } else {
            assert_eq!(said.len(), 1, "{case}: {said:?}");
            assert!(said[0].starts_with(answer), "{case}: {said:?}");
        }
    }
}

// === reports ===

#[test]
fn reports_are_proposed_by_the_leader_and_forwarded_by_a_follower() {
    let mut net = Net::new(3, 10);
    net.forwards = false;
    let alone = net.step(
        1,
        Input::Report {
            report: Report::Backend {
                backend: "pg0".into(),
                down: true,
            },
            reply: 1,
        },
    );
    assert_eq!(
        answers(&alone),
        [(1, Err("no leader: the watchdogs have no quorum".into()))]
    );
    let leader = net.elect();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let term = net.node(leader).term();
    let report = Report::Backend {
        backend: "pg0".into(),
        down: true,
    };
    let out = net.step(
        follower,
        Input::Report {
            report: report.clone(),
            reply: 2,
        },
    );
    assert!(
        out.iter().any(|o| matches!(o, Output::Forward { leader: l, term: t, report: r, reply: Some(2) } if *l == leader && *t == term && *r == report)),
        "{out:?}"
    );
    // At the leader: in its term only.
    let forwarded = |net: &mut Net, term, reply| {
        let out = net.step(
            leader,
            Input::Forwarded {
                from: follower,
                report: report.clone(),
                term,
                reply,
            },
        );
        answers(&out)
    };
    assert_eq!(
        forwarded(&mut net, Some(term + 1), 3),
        [(
            3,
            Err("the lead moved while the report was on its way; retry".into())
        )]
    );
    assert!(forwarded(&mut net, Some(term), 4).is_empty(), "proposed");
    assert!(
        forwarded(&mut net, None, 5).is_empty(),
        "an older version's"
    );
    net.run(2);
    let applied: Vec<u32> = answers(&net.log[&leader])
        .iter()
        .map(|(to, _)| *to)
        .collect();
    assert_eq!(applied, [4, 5]);
    assert!(net.node(leader).record().votes["pg0"].contains(&follower));
}

// === operator requests ===

#[test]
fn operator_requests_go_to_the_leaders_monitor_in_its_term_only() {
    let mut net = Net::new(3, 10);
    let refused = |out: &[Out]| {
        out.iter().find_map(|o| match o {
            Output::Refuse { why, .. } => Some(*why),
            _ => None,
        })
    };
    let request = OperatorRequest::default();
    let local = |net: &mut Net, id| {
        net.step(
            id,
            Input::LocalOperator {
                request: request.clone(),
                reply: 1,
            },
        )
    };
    assert_eq!(refused(&local(&mut net, 1)), Some(Refusal::NoLeader));
    let leader = net.elect();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let term = net.node(leader).term();
    assert_eq!(
        refused(&local(&mut net, leader)),
        Some(Refusal::JustLeading)
    );
    let out = local(&mut net, follower);
    assert!(
        out.iter().any(|o| matches!(o, Output::ForwardOperator { leader: l, term: t, .. } if *l == leader && *t == term)),
        "{out:?}"
    );
    // (case, at, term, handed to the monitor)
    let cases: &[(&str, u64, u64, bool)] = &[
        ("the leader in its term", leader, term, true),
        ("the leader in another term", leader, term + 1, false),
        ("a follower", follower, term, false),
    ];
    for &(case, at, t, asked) in cases {
        let out = net.step(
            at,
            Input::Operator {
                request: request.clone(),
                term: t,
                reply: 2,
            },
        );
        let handed = out.iter().any(|o| matches!(o, Output::AskMonitor { .. }));
        assert_eq!(handed, asked, "{case}");
        let why = refused(&out);
        assert_eq!(why, (!asked).then_some(Refusal::LeadMoved), "{case}");
    }
}

// === shutdown ===

#[test]
fn shutting_down_hands_the_lead_over_and_waits_at_most_the_leave_timeout() {
    // (case, nodes, who shuts down, peers reachable, done at once, done
    // within ticks)
    let cases: &[(&str, u64, &str, bool, bool, u64)] = &[
        ("a follower", 3, "follower", true, true, 0),
        ("a single node", 1, "leader", true, true, 0),
        ("a leader with a peer", 3, "leader", true, false, 5),
        ("a leader cut off", 3, "leader", false, false, LEAVE_TICKS),
    ];
    for &(case, n, who, reachable, at_once, within) in cases {
        let mut net = Net::new(n, 10);
        let leader = net.elect();
        net.run(4);
        let id = if who == "leader" {
            leader
        } else {
            (1..=n).find(|&i| i != leader).unwrap()
        };
        if !reachable {
            // Heard from lately, but nothing arrives any more.
            net.isolate(id);
        }
        let out = net.step(id, Input::Shutdown);
        let done = |out: &[Out]| out.iter().any(|o| matches!(o, Output::Done));
        assert_eq!(done(&out), at_once, "{case}");
        if at_once {
            continue;
        }
        net.log.clear();
        net.run(within.saturating_sub(1));
        let early = net.log.get(&id).is_some_and(|l| done(l));
        net.run(1);
        assert!(done(&net.log[&id]), "{case}: done within {within}");
        if !reachable {
            assert!(!early, "{case}: waits out the leave timeout");
        } else {
            assert!(!net.node(id).is_leader(), "{case}: the lead moved");
        }
    }
}

// === the proxies' lease ===

#[test]
fn a_follower_takes_a_grant_only_from_its_leader_in_its_term() {
    let mut net = Net::new(3, 10);
    let leader = net.elect();
    net.run(2);
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let other = (1..=3).find(|&i| i != leader && i != follower).unwrap();
    let term = net.node(follower).term();
    let generation = net.node(follower).record().generation;
    let asked_at = 50_000;
    // (case, granting leader, term, generation, leased)
    let cases: &[(&str, u64, u64, u64, bool)] = &[
        ("another node", other, term, generation, false),
        ("another term", leader, term + 1, generation, false),
        ("another generation", leader, term, generation + 1, false),
        ("its leader", leader, term, generation, true),
    ];
    for &(case, from, t, g, leased) in cases {
        let out = net.step(
            follower,
            Input::Granted(Granted {
                leader: from,
                term: t,
                generation: g,
                asked_at,
            }),
        );
        let s = statuses(&out).remove(0);
        let until = asked_at + pgwarden_proto::lease::PROXY_LEASE.as_millis() as u64;
        assert_eq!(
            s.lease_until_mono_ms == until,
            leased,
            "{case}: {}",
            s.lease_until_mono_ms
        );
    }
    // And it asks its leader, for the generation it applied.
    let asks: Vec<Option<LeaseAsk>> = picked(&net.log[&follower], |o| match o {
        Output::Ask(a) => Some(*a),
        _ => None,
    });
    assert_eq!(asks.last(), Some(&Some((leader, term, generation))));
}

#[test]
fn a_confirmed_leader_grants_and_leases_its_own_proxies() {
    let mut net = Net::new(3, 10);
    let leader = net.elect();
    net.run(2);
    let grants: Vec<Option<Grantable>> = picked(&net.log[&leader], |o| match o {
        Output::Grant(g) => Some(*g),
        _ => None,
    });
    let g = grants.last().copied().flatten().expect("granting");
    assert_eq!(g.term, net.node(leader).term());
    assert!(net.status(leader).lease_until_mono_ms > net.readings().mono_ms);
    assert_eq!(net.core(leader).proposals.len(), 0);
}

// === the delegate IP ===

#[test]
fn the_leader_beats_for_the_delegate_ip_guard_while_its_lease_holds() {
    let mut net = Net::new(3, 10);
    let leader = net.elect();
    // Past the lease's wait of two election timeouts: the IP is taken.
    net.run(25);
    let log = &net.log[&leader];
    let acquired = log
        .iter()
        .position(|o| matches!(o, Output::Vip(crate::VipAction::Acquire)))
        .expect("the leader acquires");
    // The heartbeat comes first, so the IP task finds it as it takes the IP.
    assert!(
        matches!(log[acquired - 1], Output::VipConfirmed(Some(_))),
        "{:?}",
        &log[acquired - 1]
    );
    // Then one per tick (a new confirmation each), from the time a quorum
    // confirmed the lead.
    let beats: Vec<Option<u64>> = picked(&log[acquired..], |o| match o {
        Output::VipConfirmed(c) => Some(*c),
        _ => None,
    });
    assert!(beats.len() >= 4, "{beats:?}");
    assert!(beats.windows(2).all(|w| w[0] < w[1]), "{beats:?}");
    assert_eq!(
        beats.last().copied().flatten(),
        net.node(leader).confirmation()
    );
    // Followers never beat.
    for (id, log) in &net.log {
        if *id != leader {
            assert!(
                !log.iter()
                    .any(|o| matches!(o, Output::VipConfirmed(Some(_)))),
                "node {id}"
            );
        }
    }
    // Cut off from the majority: no more confirmations; the lease's release
    // comes with the end of the heartbeat.
    net.isolate(leader);
    let before = net.log[&leader].len();
    net.run(25);
    let after = &net.log[&leader][before..];
    let beats: Vec<Option<u64>> = picked(after, |o| match o {
        Output::VipConfirmed(c) => Some(*c),
        _ => None,
    });
    assert_eq!(beats, vec![None], "{after:?}");
    let stopped = after
        .iter()
        .position(|o| matches!(o, Output::VipConfirmed(None)))
        .unwrap();
    assert!(matches!(
        after[stopped + 1],
        Output::Vip(crate::VipAction::Release)
    ));
}

// === storage ===

#[test]
fn a_node_that_cannot_make_its_state_durable_stops() {
    let disk = MemoryPersist::new();
    let storage = DurableStorage::open_with(Box::new(disk.clone()), &[1]).unwrap();
    let mut cfg = NodeConfig::new(1, vec![1]);
    cfg.timeout_seed = Some(3);
    let setup = Setup {
        members: vec!["10.0.0.1:9000".into()],
        delegate_ip: String::new(),
    };
    let mut c: C = Core::new(setup, WatchdogNode::new(cfg, storage).unwrap());
    disk.set_failing(true);
    let failed = (0..100).find(|_| c.tick().iter().any(|o| matches!(o, Output::Failed(_))));
    assert!(
        failed.is_some(),
        "the first durable write (its election) fails"
    );
}

// === what the API shows ===

#[test]
fn the_delegate_ip_holder_shown_is_this_node_while_it_holds_it() {
    // (case, this node holds the IP, its leader is fresh, holder shown)
    let cases: &[(&str, bool, bool, &str)] = &[
        ("holding", true, true, "me"),
        ("holding, cut off", true, false, "me"),
        ("the leader holds it", false, true, "leader"),
        ("nobody known", false, false, "none"),
    ];
    for &(case, holding, fresh, shown) in cases {
        let mut net = Net::new(3, 60);
        let leader = net.elect();
        net.run(4);
        let me = (1..=3).find(|&i| i != leader).unwrap();
        if !fresh {
            net.cut.insert(link(leader, me));
            net.run(FRESH_TICKS + 2);
        }
        let readings = Readings {
            holding,
            ..net.readings()
        };
        let c = net.cores.get_mut(&me).unwrap();
        c.read(readings);
        let out = c.step(Input::ProxyRouting);
        let s = statuses(&out).remove(0);
        let expected = match shown {
            "me" => me,
            "leader" => leader,
            _ => 0,
        };
        assert_eq!(s.delegate_ip_holder, expected, "{case}");
        assert_eq!(s.holds_delegate_ip, holding, "{case}");
    }
}
