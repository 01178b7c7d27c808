//! Which backend `ID_OR_NAME` means, by the monitor's current state.

use pgwarden_proto::v1::{BackendState, ClusterState};

use crate::CtlError;

/// The backend named `given`, or else the one whose id `given` is. A name
/// wins over an id, so a backend named `1` is still reachable by name.
/// An unknown one is an error listing every backend.
pub fn resolve<'a>(state: &'a ClusterState, given: &str) -> Result<&'a BackendState, CtlError> {
    let by_name = state.backends.iter().find(|b| b.name == given);
    let by_id = || {
        let id = given.parse::<u32>().ok()?;
        state.backends.iter().find(|b| b.id == id)
    };
    by_name
        .or_else(by_id)
        .ok_or_else(|| CtlError::UnknownBackend {
            given: given.to_owned(),
            known: if state.backends.is_empty() {
                "none".to_owned()
            } else {
                state
                    .backends
                    .iter()
                    .map(|b| format!("{} {}", b.id, b.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(names: &[&str]) -> ClusterState {
        ClusterState {
            backends: names
                .iter()
                .zip(0..)
                .map(|(name, id)| BackendState {
                    id,
                    name: (*name).to_owned(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn by_name_or_id() {
        let s = state(&["pg0", "pg1", "pg2"]);
        assert_eq!(resolve(&s, "pg2").unwrap().id, 2);
        assert_eq!(resolve(&s, "1").unwrap().name, "pg1");
        assert_eq!(resolve(&s, "0").unwrap().name, "pg0");
    }

    #[test]
    fn a_name_wins_over_an_id() {
        let s = state(&["2", "a", "b"]);
        assert_eq!(resolve(&s, "2").unwrap().id, 0);
        assert_eq!(resolve(&s, "1").unwrap().name, "a");
    }

    #[test]
    fn unknown_lists_the_backends() {
        let s = state(&["pg0", "pg1"]);
        for given in ["99", "pg9", "-1", "PG0", ""] {
            let e = resolve(&s, given).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("no backend {given}; the backends are: 0 pg0, 1 pg1")
            );
            assert_eq!(e.exit_code(), 2);
        }
        let e = resolve(&state(&[]), "pg0").unwrap_err();
        assert_eq!(e.to_string(), "no backend pg0; the backends are: none");
    }
}
