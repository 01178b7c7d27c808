//! The simulation's seeded schedules: 1,000 in CI (`PGWARDEN_SIM_SCHEDULES`
//! sets another count), each checked after every step.

#[test]
fn seeded_schedules_break_no_invariant() {
    let count: u64 = std::env::var("PGWARDEN_SIM_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut total = pgwarden_sim::Stats::default();
    for seed in 0..count {
        let s = pgwarden_sim::run(seed, 600).unwrap_or_else(|v| panic!("{}", v.0));
        total.generations += s.generations;
        total.primary_changes += s.primary_changes;
        total.faults += s.faults;
        total.operator_requests += s.operator_requests;
        total.operator_ok += s.operator_ok;
        total.delivered += s.delivered;
        total.lost += s.lost;
    }
    eprintln!("{count} schedules: {total:?}");
    // The schedules reach what the invariants are about.
    assert!(total.generations >= count, "{total:?}");
    assert!(total.primary_changes > count / 10, "{total:?}");
    assert!(total.operator_ok > 0, "{total:?}");
}

/// Replays one seed with a trace: `PGWARDEN_SIM_SEED=3 PGWARDEN_SIM_TRACE=1
/// cargo test -p pgwarden-sim --test schedules replay -- --ignored --nocapture`.
#[test]
#[ignore = "replays the seed in PGWARDEN_SIM_SEED, for debugging"]
fn replay() {
    let seed = std::env::var("PGWARDEN_SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("PGWARDEN_SIM_SEED");
    if let Err(v) = pgwarden_sim::run(seed, 600) {
        panic!("{}", v.0);
    }
}
