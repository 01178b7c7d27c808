//! The health rule: when a backend is down (more than `max_retries`
//! consecutive failures), when a standby is healthy (it streams from the
//! primary, on its timeline), how far behind it is, and when its WAL is not
//! the primary's history.

use super::backend::{BackendView, Observation};

pub use pgwarden_cluster::{Limits, lag};

/// Standby `s` streams from primary `p`, on its timeline (a timeline of 0
/// is unknown and matches), from `p`'s port when it says where from.
pub fn streams_from(s: &BackendView, p: &BackendView) -> bool {
    let (Some(so), Some(po)) = (&s.last, &p.last) else {
        return false;
    };
    so.in_recovery
        && so.streaming
        && (so.timeline == po.timeline || so.timeline == 0 || po.timeline == 0)
        && so.upstream_port.is_none_or(|port| port == p.spec.port)
}

/// Why standby `o` cannot take over from a primary on `timeline`, when its
/// WAL is not that primary's history: a newer timeline (it follows another
/// server), or an older one while it streams (it has not followed a
/// timeline switch). An older timeline while not streaming says nothing: it
/// is then the last restartpoint's, which trails a switch for a while.
pub fn off_timeline(o: &Observation, timeline: u32) -> Option<String> {
    let newer = o.timeline > timeline;
    let behind = o.streaming && o.timeline != 0 && o.timeline < timeline;
    (newer || behind).then(|| {
        format!(
            "on timeline {}, the primary's is {timeline}: its WAL is not the primary's history",
            o.timeline
        )
    })
}
