//! `pgwardenctl watch`: one line per generation.

use std::fmt::Write as _;

use pgwarden_proto::v1::{ClusterState, Status};

use super::units::{primary_name, status};

/// `generation 5: primary pg1; pg0 detached (why), pg1 up, pg2 down (why)`;
/// `no primary, failover in progress` when so.
pub fn summary_line(state: &ClusterState) -> String {
    let mut line = format!("generation {}: ", state.generation);
    match primary_name(state) {
        Some(name) => {
            let _ = write!(line, "primary {name}");
        }
        None => line.push_str("no primary"),
    }
    if state.failover_in_progress {
        line.push_str(", failover in progress");
    }
    let backends: Vec<String> = state
        .backends
        .iter()
        .map(|b| {
            let mut text = format!("{} {}", b.name, status(b));
            if b.status() != Status::Up && !b.reason.is_empty() {
                let reason = b.reason.split_whitespace().collect::<Vec<_>>().join(" ");
                let _ = write!(text, " ({reason})");
            }
            text
        })
        .collect();
    if !backends.is_empty() {
        let _ = write!(line, "; {}", backends.join(", "));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::table::tests::switched_over;

    #[test]
    fn line() {
        assert_eq!(
            summary_line(&switched_over()),
            "generation 4: primary pg1; \
             pg0 detached (switched over to pg1: rejoin it as a standby, then attach it), \
             pg1 up, pg2 down (not streaming from the primary), pg3 up"
        );
    }

    #[test]
    fn failover_in_progress() {
        let mut s = switched_over();
        s.primary_id = None;
        s.failover_in_progress = true;
        s.backends.truncate(1);
        s.backends[0].reason.clear();
        assert_eq!(
            summary_line(&s),
            "generation 4: no primary, failover in progress; pg0 detached"
        );
        assert_eq!(
            summary_line(&ClusterState::default()),
            "generation 0: no primary"
        );
    }
}
