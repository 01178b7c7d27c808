//! `--json`: the state as JSON, written by hand (the prost messages do not
//! derive `Serialize`). LSNs are in PostgreSQL's text form, roles and
//! statuses in lower case, as in the text output.

use pgwarden_proto::v1::ChangeReply;
use serde_json::{Value, json};

pub use pgwarden_proto::json::state_json;

/// The reply to attach, detach or promote: `{"message": ..., "state": ...}`.
pub fn change_json(reply: &ChangeReply) -> Value {
    json!({
        "message": reply.message,
        "state": reply.state.as_ref().map(state_json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::table::tests::switched_over;

    #[test]
    fn state() {
        let v = state_json(&switched_over());
        assert_eq!(v["generation"], 4);
        assert_eq!(v["primary_id"], 1);
        assert_eq!(v["primary"], "pg1");
        assert_eq!(v["monitor"], "node1");
        assert_eq!(v["failover_in_progress"], false);
        let backends = v["backends"].as_array().unwrap();
        assert_eq!(backends.len(), 4);
        assert_eq!(
            backends[2],
            json!({
                "id": 2, "name": "pg2", "host": "127.0.0.1", "port": 5434,
                "address": "127.0.0.1:5434", "role": "standby", "status": "down",
                "reason": "not streaming\nfrom the primary",
                "replay_lsn": "0/3000A10", "flush_lsn": "0/3000F00",
                "lag_bytes": 1536, "lag_seconds": 2.34, "timeline": 2,
                "streaming": true, "last_check_unix_ms": 9800, "failed_checks": 0,
                "synchronous": false,
            })
        );
        assert_eq!(backends[3]["synchronous"], true);
        assert_eq!(v["failover_blocked"], Value::Null);
        assert_eq!(backends[3]["replay_lsn"], Value::Null);
        assert_eq!(backends[3]["timeline"], Value::Null);
        assert_eq!(backends[3]["last_check_unix_ms"], Value::Null);
    }

    #[test]
    fn no_primary() {
        let mut s = switched_over();
        s.primary_id = None;
        s.backends[0].lag_seconds = f64::NAN;
        let v = state_json(&s);
        assert_eq!(v["primary_id"], Value::Null);
        assert_eq!(v["primary"], Value::Null);
        assert_eq!(v["backends"][0]["lag_seconds"], Value::Null);
        // Serializes (no NaN slipped through).
        assert!(
            serde_json::to_string(&v)
                .unwrap()
                .contains("\"generation\":4")
        );
    }

    #[test]
    fn change() {
        let reply = ChangeReply {
            state: Some(switched_over()),
            message: "pg2 detached".into(),
        };
        let v = change_json(&reply);
        assert_eq!(v["message"], "pg2 detached");
        assert_eq!(v["state"]["generation"], 4);
        let v = change_json(&ChangeReply::default());
        assert_eq!(v["state"], Value::Null);
    }
}
