//! The JSON form of the contract's messages, written by hand (the prost
//! messages do not derive `Serialize`): what `pgwardenctl --json` prints
//! and the monitor's status page (`monitor.http_listen`) serves. LSNs are in
//! PostgreSQL's text form, roles and statuses in lower case, as in the text
//! output.

use serde_json::{Value, json};

use crate::lsn::lsn_to_string;
use crate::v1::{
    BackendState, ClusterState, FailoverRecord, MemberState, Role, Status, WatchdogStatus,
};

/// `host:port`, bracketing an IPv6 address.
pub fn address(b: &BackendState) -> String {
    if b.host.contains(':') {
        format!("[{}]:{}", b.host, b.port)
    } else {
        format!("{}:{}", b.host, b.port)
    }
}

/// `primary`, `standby` or `unknown`.
pub fn role(b: &BackendState) -> &'static str {
    match b.role() {
        Role::Primary => "primary",
        Role::Standby => "standby",
        Role::Unknown => "unknown",
    }
}

/// `up`, `down`, `detached`, `quarantined`, or `unknown` (unset, or a newer monitor's
/// status this build does not know).
pub fn status(b: &BackendState) -> &'static str {
    match b.status() {
        Status::Up => "up",
        Status::Down => "down",
        Status::Detached => "detached",
        Status::Quarantined => "quarantined",
        Status::Unspecified => "unknown",
    }
}

/// The name of this generation's primary, if there is one: its backend's
/// name, or `id N` for an id the state does not list.
pub fn primary_name(state: &ClusterState) -> Option<String> {
    let id = state.primary_id?;
    Some(
        state
            .backends
            .iter()
            .find(|b| b.id == id)
            .map_or_else(|| format!("id {id}"), |b| b.name.clone()),
    )
}

/// One `ClusterState`:
///
/// ```json
/// {"generation": 4, "primary_id": 1, "primary": "pg1", "monitor": "node1",
///  "failover_in_progress": false, "backends": [{"id": 0, "name": "pg0", ...}]}
/// ```
pub fn state_json(state: &ClusterState) -> Value {
    json!({
        "generation": state.generation,
        "primary_id": state.primary_id,
        "primary": state.primary_id.and(primary_name(state)),
        "monitor": state.monitor,
        "failover_in_progress": state.failover_in_progress,
        "failover_blocked": (!state.failover_blocked.is_empty()).then_some(&state.failover_blocked),
        "backends": state.backends.iter().map(backend_json).collect::<Vec<_>>(),
    })
}

fn backend_json(b: &BackendState) -> Value {
    json!({
        "id": b.id,
        "name": b.name,
        "host": b.host,
        "port": b.port,
        "address": address(b),
        "role": role(b),
        "status": status(b),
        "reason": b.reason,
        "replay_lsn": lsn_or_null(b.replay_lsn),
        "flush_lsn": lsn_or_null(b.flush_lsn),
        "lag_bytes": b.lag_bytes,
        // NaN and infinities are not JSON.
        "lag_seconds": finite(b.lag_seconds),
        "timeline": (b.timeline != 0).then_some(b.timeline),
        "streaming": b.streaming,
        "last_check_unix_ms": (b.last_check_unix_ms != 0).then_some(b.last_check_unix_ms),
        "failed_checks": b.failed_checks,
        "synchronous": b.synchronous,
    })
}

/// A number, or `null` for NaN and the infinities (not JSON).
pub fn finite(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}

/// Milliseconds from a record's first phase to its last.
pub fn took_ms(r: &FailoverRecord) -> i64 {
    match (r.phases.first(), r.phases.last()) {
        (Some(f), Some(l)) => l.at_unix_ms - f.at_unix_ms,
        _ => 0,
    }
}

/// The failover history, oldest first: `{"records": [{"kind": "failover",
/// "from_generation": 3, "to_generation": 4, "phases": [...]}, ...]}`.
pub fn history_json(records: &[FailoverRecord]) -> Value {
    json!({
        "records": records.iter().map(|r| json!({
            "kind": r.kind,
            "from_generation": r.from_generation,
            "to_generation": r.to_generation,
            "old_primary": r.old_primary,
            "new_primary": r.new_primary,
            "rpo_bytes": r.rpo_bytes,
            "took_ms": took_ms(r),
            "phases": r.phases.iter().map(|p| json!({
                "name": p.name,
                "at_unix_ms": p.at_unix_ms,
                "detail": p.detail,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// What this node's watchdog says, for the status page: `{"enabled":
/// false}` without one, `{"enabled": true, "reachable": false}` while it
/// does not answer, else its leader, term, quorum, the delegate IP and its
/// holder (members named by their addresses) and the members.
pub fn watchdog_json(enabled: bool, status: Option<&WatchdogStatus>) -> Value {
    if !enabled {
        return json!({"enabled": false});
    }
    let Some(s) = status else {
        return json!({"enabled": true, "reachable": false});
    };
    let name = |id: u64| {
        (id != 0).then(|| {
            s.members
                .iter()
                .find(|m| m.id == id)
                .map_or_else(|| format!("id {id}"), |m| m.address.clone())
        })
    };
    json!({
        "enabled": true,
        "reachable": true,
        "node": s.address,
        "leader": name(s.leader_id),
        "term": s.term,
        "quorum": s.quorum,
        "delegate_ip": (!s.delegate_ip.is_empty()).then_some(&s.delegate_ip),
        "delegate_ip_holder": name(s.delegate_ip_holder),
        "members": s.members.iter().map(|m| json!({
            "id": m.id,
            "address": m.address,
            "state": match m.state() {
                MemberState::Reachable => "reachable",
                MemberState::Unreachable => "unreachable",
                MemberState::Unknown => "unknown",
            },
            "last_seen_unix_ms": (m.last_seen_unix_ms != 0).then_some(m.last_seen_unix_ms),
        })).collect::<Vec<_>>(),
    })
}

/// `"0/3000A10"`, or `null` for 0 (unknown).
fn lsn_or_null(lsn: u64) -> Value {
    if lsn == 0 {
        Value::Null
    } else {
        Value::String(lsn_to_string(lsn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::Member;

    #[test]
    fn lag_seconds_that_are_not_numbers_are_null() {
        let state = ClusterState {
            backends: vec![BackendState {
                lag_seconds: f64::NAN,
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = state_json(&state);
        assert_eq!(v["backends"][0]["lag_seconds"], Value::Null);
        assert_eq!(v["primary"], Value::Null);
        // And the whole is valid JSON text.
        assert!(serde_json::from_str::<Value>(&v.to_string()).is_ok());
    }

    #[test]
    fn watchdog_leader_and_ip_holder_are_named_by_member_address() {
        assert_eq!(watchdog_json(false, None), json!({"enabled": false}));
        assert_eq!(
            watchdog_json(true, None),
            json!({"enabled": true, "reachable": false})
        );
        let member = |id: u64, address: &str| Member {
            id,
            address: address.to_owned(),
            state: MemberState::Reachable as i32,
            last_seen_unix_ms: 0,
        };
        let s = WatchdogStatus {
            id: 1,
            address: "10.0.0.1:9000".into(),
            members: vec![member(1, "10.0.0.1:9000"), member(2, "10.0.0.2:9000")],
            leader_id: 2,
            term: 7,
            quorum: true,
            delegate_ip_holder: 0,
            delegate_ip: "10.0.0.100/24".into(),
            ..Default::default()
        };
        let v = watchdog_json(true, Some(&s));
        assert_eq!(v["leader"], "10.0.0.2:9000");
        assert_eq!(v["delegate_ip_holder"], Value::Null);
        assert_eq!(v["members"][1]["state"], "reachable");
        assert_eq!(v["term"], 7);
    }

    #[test]
    fn addresses() {
        let mut b = BackendState {
            host: "127.0.0.1".into(),
            port: 5432,
            ..Default::default()
        };
        assert_eq!(address(&b), "127.0.0.1:5432");
        b.host = "::1".into();
        assert_eq!(address(&b), "[::1]:5432");
    }

    #[test]
    fn unknown_enum_values() {
        let b = BackendState {
            role: 42,
            status: 42,
            ..Default::default()
        };
        assert_eq!(role(&b), "unknown");
        assert_eq!(status(&b), "unknown");
    }

    #[test]
    fn primary_names() {
        let mut s = ClusterState {
            backends: vec![BackendState {
                id: 1,
                name: "pg1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(primary_name(&s), None);
        s.primary_id = Some(1);
        assert_eq!(primary_name(&s).as_deref(), Some("pg1"));
        s.primary_id = Some(7);
        assert_eq!(primary_name(&s).as_deref(), Some("id 7"));
    }
}
