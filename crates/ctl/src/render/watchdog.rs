//! `pgwardenctl watchdog`: this node's view of the watchdog cluster, as
//! text (like pgpool-II's `pcp_watchdog_info`), as one line per change for
//! `--watch`, and as JSON. Maps from the protobuf (hash maps) are listed by
//! name and node ids in order, so the output is stable.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use pgwarden_proto::v1::{ClusterRecord, Member, MemberState, WatchdogStatus};
use serde_json::{Value, json};

use super::table::{align, one_line};
use super::units::age;

/// The whole `watchdog` output, newline-terminated, ages relative to
/// `now_ms` (Unix milliseconds):
///
/// ```text
/// node 2 (10.213.0.12:9000): term 3, leader 1 (10.213.0.11:9000), quorum yes
/// delegate IP 10.213.0.100: held by node 1 (10.213.0.11:9000); held here: no
/// ID  ADDRESS           STATE        LAST SEEN
/// 1   10.213.0.11:9000  reachable    0.1s ago   leader
/// 2   10.213.0.12:9000  this node    -
/// 3   10.213.0.13:9000  unreachable  12s ago
/// committed generation 4: primary pg1, failover in progress: no, log index 17
/// down: none
/// detached: pg0 (switched over to pg1)
/// seen down by nodes: none
/// monitors gone on nodes: none
/// ```
pub fn watchdog_text(s: &WatchdogStatus, now_ms: i64) -> String {
    let mut out = format!(
        "node {} ({}): term {}, {}, quorum {}\n",
        s.id,
        s.address,
        s.term,
        leader(s),
        yes_no(s.quorum)
    );
    out.push_str(&delegate_ip_line(s));
    out.push('\n');
    let mut rows = vec![["ID", "ADDRESS", "STATE", "LAST SEEN", ""].map(str::to_owned)];
    rows.extend(s.members.iter().map(|m| member_row(s, m, now_ms)));
    out.push_str(&align(&rows));
    match &s.record {
        Some(r) => out.push_str(&record_text(r)),
        None => out.push_str("no committed record\n"),
    }
    if s.id != 0 && s.leader_id == s.id {
        out.push_str(&proxies_line(s));
    }
    out
}

/// On the leader: what every node's proxy routes by (a failover promotes
/// as soon as all of them took in the withdrawal, else once their leases
/// ran out).
fn proxies_line(s: &WatchdogStatus) -> String {
    match s.proxies_on_generation {
        0 => "proxies: not every node's proxy has said what it routes by (a failover waits for their leases to run out)\n".to_owned(),
        g => format!("proxies: every node's proxy routes by generation {g} or newer\n"),
    }
}

/// `watchdog --watch`: one line per change, without what changes all the
/// time (ages, the log index):
///
/// `term 3, leader 1 (10.213.0.11:9000), quorum yes, delegate IP on node 1, generation 4: primary pg1`
///
/// with `unreachable: 3` after the quorum when members are, and the
/// failover, down and detached backends after the primary when there are.
pub fn leadership_line(s: &WatchdogStatus) -> String {
    let mut line = format!(
        "term {}, {}, quorum {}",
        s.term,
        leader(s),
        yes_no(s.quorum)
    );
    let unreachable: Vec<String> = s
        .members
        .iter()
        .filter(|m| m.id != s.id && m.state() == MemberState::Unreachable)
        .map(|m| m.id.to_string())
        .collect();
    if !unreachable.is_empty() {
        let _ = write!(line, ", unreachable: {}", unreachable.join(" "));
    }
    if !s.delegate_ip.is_empty() {
        let holder = match (s.holds_delegate_ip, s.delegate_ip_holder) {
            (true, _) => "on this node".to_owned(),
            (false, 0) => "holder unknown".to_owned(),
            (false, id) if id == s.id => "going up on this node".to_owned(),
            (false, id) => format!("on node {id}"),
        };
        let _ = write!(line, ", delegate IP {holder}");
    }
    match &s.record {
        Some(r) => {
            let _ = write!(line, ", generation {}: {}", r.generation, primary(r));
            if r.failover_in_progress {
                line.push_str(", failover in progress");
            }
            for (what, names) in [
                ("down", sorted_keys(&r.down)),
                ("detached", sorted_keys(&r.detached)),
            ] {
                if !names.is_empty() {
                    let _ = write!(line, ", {what} {}", names.join(" "));
                }
            }
        }
        None => line.push_str(", no committed record"),
    }
    line
}

/// One `WatchdogStatus`:
///
/// ```json
/// {"id": 2, "address": "10.213.0.12:9000", "term": 3, "leader_id": 1,
///  "leader_address": "10.213.0.11:9000", "quorum": true,
///  "delegate_ip": "10.213.0.100", "delegate_ip_holder": 1,
///  "holds_delegate_ip": false, "members": [{"id": 1, ...}],
///  "record": {"generation": 4, "primary": "pg1", ...}}
/// ```
///
/// Unknowns (no leader, no holder, never seen, no delegate IP) are `null`.
pub fn watchdog_json(s: &WatchdogStatus) -> Value {
    json!({
        "id": s.id,
        "address": s.address,
        "term": s.term,
        "leader_id": nonzero(s.leader_id),
        "leader_address": member(s, s.leader_id).map(|m| m.address.clone()),
        "quorum": s.quorum,
        "delegate_ip": (!s.delegate_ip.is_empty()).then_some(&s.delegate_ip),
        "delegate_ip_holder": nonzero(s.delegate_ip_holder),
        "holds_delegate_ip": s.holds_delegate_ip,
        "members": s.members.iter().map(|m| json!({
            "id": m.id,
            "address": m.address,
            "state": state(m),
            "last_seen_unix_ms": (m.last_seen_unix_ms > 0).then_some(m.last_seen_unix_ms),
            "leader": m.id == s.leader_id,
            "this_node": m.id == s.id,
        })).collect::<Vec<_>>(),
        "record": s.record.as_ref().map(record_json),
        "proxies_on_generation": (s.id != 0 && s.leader_id == s.id).then_some(s.proxies_on_generation),
    })
}

fn record_json(r: &ClusterRecord) -> Value {
    let mut down_by_quorum = r.down_by_quorum.clone();
    down_by_quorum.sort();
    let mut monitors_down = r.monitors_down.clone();
    monitors_down.sort_unstable();
    json!({
        "generation": r.generation,
        "primary": r.primary,
        "failover_in_progress": r.failover_in_progress,
        "applied_index": r.applied_index,
        "down": r.down.iter().collect::<BTreeMap<_, _>>(),
        "detached": r.detached.iter().collect::<BTreeMap<_, _>>(),
        "down_by_quorum": down_by_quorum,
        "down_votes": down_votes(r),
        "monitors_down": monitors_down,
    })
}

// === text pieces ===

/// `leader 1 (10.213.0.11:9000)`, `leader 2 (this node)`, `no leader`.
fn leader(s: &WatchdogStatus) -> String {
    match s.leader_id {
        0 => "no leader".to_owned(),
        id => format!("leader {}", node(s, id)),
    }
}

/// `1 (10.213.0.11:9000)`, `2 (this node)`, or the bare id of a node
/// the member list does not have.
fn node(s: &WatchdogStatus, id: u64) -> String {
    if id == s.id {
        return format!("{id} (this node)");
    }
    match member(s, id) {
        Some(m) => format!("{id} ({})", m.address),
        None => id.to_string(),
    }
}

/// Who holds the delegate IP as far as this node knows, and whether it is
/// up here (the one thing this node knows for sure).
fn delegate_ip_line(s: &WatchdogStatus) -> String {
    if s.delegate_ip.is_empty() {
        return "delegate IP: none configured".to_owned();
    }
    let holder = match s.delegate_ip_holder {
        0 => "holder unknown".to_owned(),
        // This node leads with a quorum but has not brought it up yet.
        id if id == s.id && !s.holds_delegate_ip => {
            format!("node {} is bringing it up", node(s, id))
        }
        id => format!("held by node {}", node(s, id)),
    };
    format!(
        "delegate IP {}: {holder}; held here: {}",
        s.delegate_ip,
        yes_no(s.holds_delegate_ip)
    )
}

fn member_row(s: &WatchdogStatus, m: &Member, now_ms: i64) -> [String; 5] {
    let (state, seen) = if m.id == s.id {
        ("this node".to_owned(), "-".to_owned())
    } else {
        (state(m).to_owned(), age(now_ms, m.last_seen_unix_ms))
    };
    let role = if m.id == s.leader_id { "leader" } else { "" };
    [
        m.id.to_string(),
        m.address.clone(),
        state,
        seen,
        role.to_owned(),
    ]
}

/// The committed record, four lines: the generation, the backends the
/// leader's monitor committed down and detached (with reasons), and the
/// down votes of each node.
fn record_text(r: &ClusterRecord) -> String {
    let mut out = format!(
        "committed generation {}: {}, failover in progress: {}, log index {}\n",
        r.generation,
        primary(r),
        yes_no(r.failover_in_progress),
        r.applied_index
    );
    for (label, reasons) in [("down", &r.down), ("detached", &r.detached)] {
        let listed: Vec<String> = reasons
            .iter()
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .map(|(name, reason)| match one_line(reason) {
                reason if reason.is_empty() => name.clone(),
                reason => format!("{name} ({reason})"),
            })
            .collect();
        let _ = writeln!(out, "{label}: {}", or_none(&listed));
    }
    let votes: Vec<String> = down_votes(r)
        .into_iter()
        .map(|(name, ids)| {
            let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
            let quorum = if r.down_by_quorum.contains(&name) {
                " (quorum)"
            } else {
                ""
            };
            format!("{name} by {}{quorum}", ids.join(", "))
        })
        .collect();
    let _ = writeln!(out, "seen down by nodes: {}", or_none(&votes));
    let mut gone = r.monitors_down.clone();
    gone.sort_unstable();
    let gone: Vec<String> = gone.iter().map(u64::to_string).collect();
    let _ = writeln!(out, "monitors gone on nodes: {}", or_none(&gone));
    out
}

/// Per backend, the sorted ids of the nodes that see it down; backends a
/// quorum sees down but without votes listed (an older watchdog) get an
/// empty list.
fn down_votes(r: &ClusterRecord) -> BTreeMap<String, Vec<u64>> {
    let mut votes: BTreeMap<String, Vec<u64>> = r
        .down_votes
        .iter()
        .map(|(name, ids)| {
            let mut ids = ids.ids.clone();
            ids.sort_unstable();
            (name.clone(), ids)
        })
        .collect();
    for name in &r.down_by_quorum {
        votes.entry(name.clone()).or_default();
    }
    votes
}

// === units ===

fn member(s: &WatchdogStatus, id: u64) -> Option<&Member> {
    s.members.iter().find(|m| m.id == id && id != 0)
}

/// `reachable`, `unreachable`, or `unknown` (not judged: a follower hears only from the leader; or a newer watchdog's
/// state this build does not know).
fn state(m: &Member) -> &'static str {
    match m.state() {
        MemberState::Reachable => "reachable",
        MemberState::Unreachable => "unreachable",
        MemberState::Unknown => "unknown",
    }
}

/// `primary pg1` or `no primary`.
fn primary(r: &ClusterRecord) -> String {
    match &r.primary {
        Some(name) => format!("primary {name}"),
        None => "no primary".to_owned(),
    }
}

fn sorted_keys(map: &std::collections::HashMap<String, String>) -> Vec<&str> {
    let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

fn or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn nonzero(id: u64) -> Option<u64> {
    (id != 0).then_some(id)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pgwarden_proto::v1::NodeIds;

    /// Node 2's view at 20 s: node 1 leads and holds the delegate IP, node
    /// 3 went quiet at 7.6 s; pg1 is the primary since a switchover from pg0,
    /// and nodes 1 and 3 see pg2 down.
    pub(crate) fn follower_view() -> WatchdogStatus {
        let member = |id: u64, state: MemberState, seen: i64| Member {
            id,
            address: format!("10.213.0.1{id}:9000"),
            state: state as i32,
            last_seen_unix_ms: seen,
        };
        WatchdogStatus {
            id: 2,
            address: "10.213.0.12:9000".into(),
            members: vec![
                member(1, MemberState::Reachable, 19_900),
                member(2, MemberState::Reachable, 20_000),
                member(3, MemberState::Unreachable, 7_600),
            ],
            leader_id: 1,
            term: 3,
            quorum: true,
            delegate_ip_holder: 1,
            holds_delegate_ip: false,
            lease_until_mono_ms: 1,
            proxies_on_generation: 0,
            delegate_ip: "10.213.0.100".into(),
            record: Some(ClusterRecord {
                generation: 4,
                primary: Some("pg1".into()),
                detached: [(
                    "pg0".to_owned(),
                    "switched over to pg1:\nrejoin it as a standby".to_owned(),
                )]
                .into(),
                failover_in_progress: false,
                down_by_quorum: vec!["pg2".into()],
                down_votes: [
                    ("pg2".to_owned(), NodeIds { ids: vec![3, 1] }),
                    ("pg3".to_owned(), NodeIds { ids: vec![2] }),
                ]
                .into(),
                applied_index: 17,
                down: [("pg2".to_owned(), "connection refused".to_owned())].into(),
                monitors_down: vec![3],
                synchronous: None,
            }),
        }
    }

    #[test]
    fn follower() {
        let text = watchdog_text(&follower_view(), 20_000);
        let expected = "\
node 2 (10.213.0.12:9000): term 3, leader 1 (10.213.0.11:9000), quorum yes
delegate IP 10.213.0.100: held by node 1 (10.213.0.11:9000); held here: no
ID  ADDRESS           STATE        LAST SEEN
1   10.213.0.11:9000  reachable    0.1s ago   leader
2   10.213.0.12:9000  this node    -
3   10.213.0.13:9000  unreachable  12s ago
committed generation 4: primary pg1, failover in progress: no, log index 17
down: pg2 (connection refused)
detached: pg0 (switched over to pg1: rejoin it as a standby)
seen down by nodes: pg2 by 1, 3 (quorum), pg3 by 2
monitors gone on nodes: 3
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn leader_holding_the_ip() {
        let mut s = follower_view();
        s.leader_id = 2;
        s.delegate_ip_holder = 2;
        s.holds_delegate_ip = true;
        s.record = Some(ClusterRecord::default());
        let text = watchdog_text(&s, 20_000);
        let expected = "\
node 2 (10.213.0.12:9000): term 3, leader 2 (this node), quorum yes
delegate IP 10.213.0.100: held by node 2 (this node); held here: yes
ID  ADDRESS           STATE        LAST SEEN
1   10.213.0.11:9000  reachable    0.1s ago
2   10.213.0.12:9000  this node    -          leader
3   10.213.0.13:9000  unreachable  12s ago
committed generation 0: no primary, failover in progress: no, log index 0
down: none
detached: none
seen down by nodes: none
monitors gone on nodes: none
proxies: not every node's proxy has said what it routes by (a failover waits for their leases to run out)
";
        assert_eq!(text, expected, "\n{text}");
        s.proxies_on_generation = 4;
        assert_eq!(
            watchdog_text(&s, 20_000).lines().last(),
            Some("proxies: every node's proxy routes by generation 4 or newer")
        );
        s.proxies_on_generation = 0;

        // Leading with a quorum, the IP not up yet.
        s.holds_delegate_ip = false;
        let text = watchdog_text(&s, 20_000);
        assert_eq!(
            text.lines().nth(1),
            Some("delegate IP 10.213.0.100: node 2 (this node) is bringing it up; held here: no")
        );
    }

    #[test]
    fn alone_without_quorum() {
        let mut s = follower_view();
        s.leader_id = 0;
        s.quorum = false;
        s.delegate_ip_holder = 0;
        s.members[0].state = MemberState::Unreachable as i32;
        s.members[2].last_seen_unix_ms = 0;
        s.members[2].state = 42;
        s.record = None;
        let text = watchdog_text(&s, 20_000);
        let expected = "\
node 2 (10.213.0.12:9000): term 3, no leader, quorum no
delegate IP 10.213.0.100: holder unknown; held here: no
ID  ADDRESS           STATE        LAST SEEN
1   10.213.0.11:9000  unreachable  0.1s ago
2   10.213.0.12:9000  this node    -
3   10.213.0.13:9000  unknown      never
no committed record
";
        assert_eq!(text, expected, "\n{text}");

        s.delegate_ip.clear();
        assert_eq!(
            watchdog_text(&s, 20_000).lines().nth(1),
            Some("delegate IP: none configured")
        );
    }

    #[test]
    fn watch_lines() {
        let mut s = follower_view();
        assert_eq!(
            leadership_line(&s),
            "term 3, leader 1 (10.213.0.11:9000), quorum yes, unreachable: 3, \
             delegate IP on node 1, generation 4: primary pg1, down pg2, detached pg0"
        );
        s.members[2].state = MemberState::Reachable as i32;
        s.leader_id = 2;
        s.term = 4;
        s.holds_delegate_ip = true;
        s.delegate_ip_holder = 2;
        s.record = Some(ClusterRecord {
            generation: 5,
            failover_in_progress: true,
            ..Default::default()
        });
        assert_eq!(
            leadership_line(&s),
            "term 4, leader 2 (this node), quorum yes, delegate IP on this node, \
             generation 5: no primary, failover in progress"
        );
        s.holds_delegate_ip = false;
        s.delegate_ip.clear();
        s.record = None;
        assert_eq!(
            leadership_line(&s),
            "term 4, leader 2 (this node), quorum yes, no committed record"
        );
        assert_eq!(
            leadership_line(&WatchdogStatus::default()),
            "term 0, no leader, quorum no, no committed record"
        );
    }

    #[test]
    fn json() {
        let v = watchdog_json(&follower_view());
        assert_eq!(
            v,
            json!({
                "id": 2, "address": "10.213.0.12:9000", "term": 3,
                "leader_id": 1, "leader_address": "10.213.0.11:9000", "quorum": true,
                "delegate_ip": "10.213.0.100", "delegate_ip_holder": 1,
                "holds_delegate_ip": false,
                "members": [
                    {"id": 1, "address": "10.213.0.11:9000", "state": "reachable",
                     "last_seen_unix_ms": 19_900, "leader": true, "this_node": false},
                    {"id": 2, "address": "10.213.0.12:9000", "state": "reachable",
                     "last_seen_unix_ms": 20_000, "leader": false, "this_node": true},
                    {"id": 3, "address": "10.213.0.13:9000", "state": "unreachable",
                     "last_seen_unix_ms": 7_600, "leader": false, "this_node": false},
                ],
                "record": {
                    "generation": 4, "primary": "pg1", "failover_in_progress": false,
                    "applied_index": 17,
                    "down": {"pg2": "connection refused"},
                    "detached": {"pg0": "switched over to pg1:\nrejoin it as a standby"},
                    "down_by_quorum": ["pg2"],
                    "down_votes": {"pg2": [1, 3], "pg3": [2]},
                    "monitors_down": [3],
                },
                // Shown by the leader only.
                "proxies_on_generation": null,
            })
        );
        let v = watchdog_json(&WatchdogStatus::default());
        for key in [
            "leader_id",
            "leader_address",
            "delegate_ip",
            "delegate_ip_holder",
            "record",
        ] {
            assert_eq!(v[key], Value::Null, "{key}");
        }
    }
}
