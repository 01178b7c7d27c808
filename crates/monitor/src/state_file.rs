//! The last committed cluster state, persisted in `state_dir` so a restarted
//! monitor keeps fencing what it fenced (a former primary stays detached).
//! Written atomically: temp file, fsync, rename, fsync of the directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::machine::Persisted;

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
pub fn load(state_dir: &Path) -> Result<Persisted, StateFileError> {
    let path = state_dir.join(FILE_NAME);
    let err = |reason: String| StateFileError {
        path: path.clone(),
        reason,
    };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            err(format!(
                "not a valid monitor state file ({e}); move it away to start from the live cluster"
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persisted::default()),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Writes the state atomically.
pub fn save(state_dir: &Path, state: &Persisted) -> Result<(), StateFileError> {
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
        assert_eq!(load(dir.path()).unwrap(), Persisted::default());
        let s = Persisted {
            generation: 9,
            primary: Some("pg1".into()),
            detached: vec![("pg0".into(), "former".into())],
        };
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()).unwrap(), s);
        std::fs::write(dir.path().join(FILE_NAME), "{not json").unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.to_string().contains(FILE_NAME));
    }
}
