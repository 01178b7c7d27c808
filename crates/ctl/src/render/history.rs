//! `history`: a block per failover or switchover, newest last:
//!
//! ```text
//! failover  generation 3 -> 4  pg0 -> pg1  RPO 0 B  took 420 ms
//!   +0 ms      suspect             pg0: connection refused
//!   +204 ms    down                promoting pg1
//!   +412 ms    completed           generation 4, primary pg1
//!   +420 ms    first write routed  this node's proxy: 2 session(s) moved ...
//! ```
//!
//! With a watchdog, the deciding (leader's) node's record also has
//! `quorum` (a quorum sees the primary down) and `fence` (the fence delay
//! passed) before `down`.

use pgwarden_proto::v1::GetHistoryReply;
use serde_json::Value;

use super::units;

use pgwarden_proto::json::took_ms;

/// The text form.
pub fn history_text(reply: &GetHistoryReply) -> String {
    if reply.records.is_empty() {
        return "no failover or switchover recorded\n".to_owned();
    }
    let mut s = String::new();
    for r in &reply.records {
        let to = if r.to_generation == 0 {
            "(under way)".to_owned()
        } else {
            r.to_generation.to_string()
        };
        let rpo = r
            .rpo_bytes
            .map_or_else(|| "unknown".to_owned(), units::bytes);
        s.push_str(&format!(
            "{}  generation {} -> {}  {} -> {}  RPO {}  took {} ms\n",
            r.kind,
            r.from_generation,
            to,
            r.old_primary,
            r.new_primary,
            rpo,
            took_ms(r)
        ));
        let start = r.phases.first().map_or(0, |p| p.at_unix_ms);
        let width = r.phases.iter().map(|p| p.name.len()).max().unwrap_or(0);
        for p in &r.phases {
            let offset = format!("+{} ms", p.at_unix_ms - start);
            s.push_str(&format!(
                "  {offset:<10} {:<width$}  {}\n",
                p.name, p.detail
            ));
        }
    }
    s
}

/// The `--json` form.
pub fn history_json(reply: &GetHistoryReply) -> Value {
    pgwarden_proto::json::history_json(&reply.records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_proto::v1::{FailoverPhase, FailoverRecord};

    fn phase(name: &str, at: i64, detail: &str) -> FailoverPhase {
        FailoverPhase {
            name: name.to_owned(),
            at_unix_ms: at,
            detail: detail.to_owned(),
        }
    }

    #[test]
    fn each_phase_shows_its_offset_from_the_first() {
        let reply = GetHistoryReply {
            records: vec![FailoverRecord {
                kind: "failover".to_owned(),
                from_generation: 3,
                to_generation: 4,
                old_primary: "pg0".to_owned(),
                new_primary: "pg1".to_owned(),
                phases: vec![
                    phase("suspect", 1000, "pg0: refused"),
                    phase("down", 1204, "promoting pg1"),
                    phase("completed", 1412, "generation 4, primary pg1"),
                ],
                rpo_bytes: Some(0),
            }],
        };
        let text = history_text(&reply);
        assert_eq!(
            text,
            "failover  generation 3 -> 4  pg0 -> pg1  RPO 0 B  took 412 ms\n  \
             +0 ms      suspect    pg0: refused\n  \
             +204 ms    down       promoting pg1\n  \
             +412 ms    completed  generation 4, primary pg1\n"
        );
        assert_eq!(history_json(&reply)["records"][0]["took_ms"], 412);
        assert_eq!(
            history_text(&GetHistoryReply { records: vec![] }),
            "no failover or switchover recorded\n"
        );
    }
}
