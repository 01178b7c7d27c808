//! The first decision's data: which backends claim to be the primary at
//! start-up, and which of them is.

use super::backend::{BackendView, Status};

/// The backends that answer out of recovery and are not fenced: each
/// claims to be a primary.
pub fn claims(backends: &[BackendView]) -> Vec<usize> {
    (0..backends.len())
        .filter(|i| {
            backends.get(*i).is_some_and(|b| {
                b.status != Status::Detached && b.reachable() && b.in_recovery() == Some(false)
            })
        })
        .collect()
}

/// Among `claims`, the primary: the only one on the newest timeline, or
/// the `persisted` primary when it is one of several there; `None` when
/// that does not tell.
pub fn choose(
    backends: &[BackendView],
    claims: &[usize],
    persisted: Option<usize>,
) -> Option<usize> {
    let timeline = |i: usize| {
        backends
            .get(i)
            .and_then(|b| b.last.as_ref())
            .map_or(0, |o| o.timeline)
    };
    let newest = claims.iter().map(|i| timeline(*i)).max().unwrap_or(0);
    let top: Vec<usize> = claims
        .iter()
        .copied()
        .filter(|i| timeline(*i) == newest)
        .collect();
    match (&top[..], persisted) {
        ([only], _) => Some(*only),
        (several, Some(p)) if several.contains(&p) => Some(p),
        _ => None,
    }
}
