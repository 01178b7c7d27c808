//! The last committed cluster state, persisted in `state_dir` so a restarted
//! monitor keeps fencing what it fenced (a former primary stays detached).
//! Written atomically: temp file, fsync, rename, fsync of the directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use pgwarden_cluster::Generation;

/// File name inside `node.state_dir`.
pub const FILE_NAME: &str = "monitor-state.json";

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct StateFileError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// Reads the state; a missing file is a fresh start.
///
/// The file holds a [`Generation`]; one written by an earlier version lists
/// the detached backends as `[name, reason]` pairs, and reads the same.
pub fn load(state_dir: &Path) -> Result<Generation, StateFileError> {
    let path = state_dir.join(FILE_NAME);
    let err = |reason: String| StateFileError {
        path: path.clone(),
        reason,
    };
    match std::fs::read(&path) {
        Ok(bytes) => decode(&bytes).map_err(|e| {
            err(format!(
                "not a valid monitor state file ({e}); move it away to start from the live cluster"
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Generation::default()),
        Err(e) => Err(err(e.to_string())),
    }
}

fn decode(bytes: &[u8]) -> Result<Generation, serde_json::Error> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes)?;
    if let Some(detached) = value.get_mut("detached")
        && let Some(pairs) = detached.as_array()
    {
        let map: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .filter_map(|pair| match pair.as_array()?.as_slice() {
                [name, reason] => Some((name.as_str()?.to_owned(), reason.clone())),
                _ => None,
            })
            .collect();
        *detached = serde_json::Value::Object(map);
    }
    serde_json::from_value(value)
}

/// Writes the state atomically.
pub fn save(state_dir: &Path, state: &Generation) -> Result<(), StateFileError> {
    let path = state_dir.join(FILE_NAME);
    let err = |reason: String| StateFileError {
        path: path.clone(),
        reason,
    };
    std::fs::create_dir_all(state_dir)
        .map_err(|e| err(format!("create {}: {e}", state_dir.display())))?;
    let tmp = state_dir.join(format!(".{FILE_NAME}.tmp"));
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| err(e.to_string()))?;
    let mut f =
        std::fs::File::create(&tmp).map_err(|e| err(format!("create {}: {e}", tmp.display())))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| err(format!("write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(|e| err(format!("rename: {e}")))?;
    std::fs::File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(format!("fsync dir: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Generation::default());
        let s = Generation {
            generation: 9,
            primary: Some("pg1".into()),
            detached: [("pg0".into(), "former".into())].into(),
            failover_in_progress: false,
            down: [("pg2".into(), "refused".into())].into(),
            synchronous: Some(pgwarden_cluster::Synchronous {
                standbys: ["pg2".into()].into(),
                count: 1,
            }),
        };
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()).unwrap(), s);
        std::fs::write(dir.path().join(FILE_NAME), "{not json").unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.to_string().contains(FILE_NAME));
    }

    #[test]
    fn a_file_of_the_previous_version_loads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            r#"{"generation": 4, "primary": "pg1", "detached": [["pg0", "former primary"]]}"#,
        )
        .unwrap();
        let s = load(dir.path()).unwrap();
        assert_eq!(s.generation, 4);
        assert_eq!(s.primary.as_deref(), Some("pg1"));
        assert_eq!(
            s.detached.get("pg0").map(String::as_str),
            Some("former primary")
        );
        assert!(s.down.is_empty());
    }
}
