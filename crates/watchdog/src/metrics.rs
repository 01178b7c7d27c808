//! The watchdog's Prometheus `/metrics` (`watchdog.metrics_listen`): this
//! node's view of the watchdog cluster (pgpool-II's pcp_watchdog_info as
//! gauges).

use pgwarden_daemon::metrics::{self as m, Registry, labels};
use pgwarden_proto::v1::{MemberState, WatchdogStatus};

/// Renders this node's view `s` into `r`.
pub fn render(s: &WatchdogStatus, r: &mut Registry) {
    let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    m::gauge(r, "pgwarden_watchdog_term", "Raft term", int(s.term));
    m::gauge(
        r,
        "pgwarden_watchdog_leader",
        "Raft id of the leader this node knows (0: none)",
        int(s.leader_id),
    );
    m::gauge(
        r,
        "pgwarden_watchdog_is_leader",
        "1 when this node leads",
        i64::from(s.id != 0 && s.leader_id == s.id),
    );
    m::gauge(
        r,
        "pgwarden_watchdog_quorum",
        "1 when this node is in touch with a quorum (without one its proxy does not route)",
        i64::from(s.quorum),
    );
    m::gauge(
        r,
        "pgwarden_watchdog_holds_delegate_ip",
        "1 when the delegate IP is up on this node",
        i64::from(s.holds_delegate_ip),
    );
    let record = s.record.clone().unwrap_or_default();
    m::gauge(
        r,
        "pgwarden_watchdog_generation",
        "Generation of the committed cluster record",
        int(record.generation),
    );
    m::gauge(
        r,
        "pgwarden_watchdog_applied_index",
        "Index of the last applied Raft log entry",
        int(record.applied_index),
    );
    let member = |id: u64, address: &str| {
        labels([("member", id.to_string()), ("address", address.to_owned())])
    };
    m::gauges(
        r,
        "pgwarden_watchdog_member_reachable",
        "1 when this node heard from the member in the last two seconds (itself included)",
        s.members.iter().map(|x| {
            (
                member(x.id, &x.address),
                i64::from(x.state == MemberState::Reachable as i32),
            )
        }),
    );
    m::gauges(
        r,
        "pgwarden_watchdog_member_monitor_up",
        "0 when the member's watchdog has recorded its monitor gone",
        s.members.iter().map(|x| {
            (
                member(x.id, &x.address),
                i64::from(!record.monitors_down.contains(&x.id)),
            )
        }),
    );
}

#[cfg(test)]
mod tests {
    use pgwarden_proto::v1::{ClusterRecord, Member};

    use super::*;

    #[test]
    fn renders_this_nodes_view() {
        let s = WatchdogStatus {
            id: 2,
            leader_id: 2,
            term: 7,
            quorum: true,
            holds_delegate_ip: true,
            members: vec![
                Member {
                    id: 1,
                    address: "10.0.0.1:9000".into(),
                    state: MemberState::Unreachable as i32,
                    last_seen_unix_ms: 0,
                },
                Member {
                    id: 2,
                    address: "10.0.0.2:9000".into(),
                    state: MemberState::Reachable as i32,
                    last_seen_unix_ms: 0,
                },
            ],
            record: Some(ClusterRecord {
                generation: 3,
                monitors_down: vec![1],
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = m::rendered(|r| render(&s, r)).unwrap();
        for line in [
            "pgwarden_watchdog_term 7",
            "pgwarden_watchdog_is_leader 1",
            "pgwarden_watchdog_quorum 1",
            "pgwarden_watchdog_holds_delegate_ip 1",
            "pgwarden_watchdog_generation 3",
            "pgwarden_watchdog_member_reachable{member=\"1\",address=\"10.0.0.1:9000\"} 0",
            "pgwarden_watchdog_member_reachable{member=\"2\",address=\"10.0.0.2:9000\"} 1",
            "pgwarden_watchdog_member_monitor_up{member=\"1\",address=\"10.0.0.1:9000\"} 0",
            "pgwarden_watchdog_member_monitor_up{member=\"2\",address=\"10.0.0.2:9000\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
