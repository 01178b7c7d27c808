//! Passwords in the config: the [`Secret`] newtype that never prints its
//! value, and the file-permission check every daemon applies to files
//! holding secrets.

use std::fmt;
use std::fs;
use std::path::Path;

use serde::Deserialize;

use crate::error::ConfigError;

/// A password or key read from the config or from a `*password_file`.
///
/// `Debug` and `Display` print `***` so a config can be logged whole;
/// [`Secret::expose`] is the one place the value comes out, which keeps
/// every use greppable.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one call that sends it somewhere.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string (treated as "no password").
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

/// Refuses a file holding secrets if every local user can read it
/// (`mode & 0o004`), or if it is not a regular file.
///
/// Used here for `health_check.password_file` and `failover.password_file`,
/// and by the daemons for `proxy.auth_file` and `watchdog.auth_key_file`
/// (which this crate does not read). The `Err` is a reason without the path
/// or key: callers name both, e.g. `proxy.auth_file: secret file
/// /etc/pgwarden/users.txt: <reason>`. Owner and group may read it (0600,
/// 0640, 0440 are fine). On non-Unix targets only the file type is checked.
pub fn check_secret_file_mode(path: &Path) -> Result<(), String> {
    let metadata = fs::metadata(path).map_err(|e| format!("cannot stat: {e}"))?;
    if !metadata.is_file() {
        return Err("not a regular file".to_owned());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o004 != 0 {
            return Err(format!(
                "is readable by every user (mode {mode:04o}); \
                 restrict it, e.g. chmod 600 or chmod 640"
            ));
        }
    }
    Ok(())
}

/// Reads a `*password_file`: permission check, then contents with trailing
/// newlines removed. An empty file is refused (a forgotten password, not an
/// intended empty one: leave both keys unset for that).
pub(crate) fn read_secret_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let refuse = |reason: String| ConfigError::Secret {
        key: key.to_owned(),
        path: path.to_owned(),
        reason,
    };
    check_secret_file_mode(path).map_err(refuse)?;
    let contents = fs::read_to_string(path).map_err(|e| refuse(format!("cannot read: {e}")))?;
    let value = contents.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(refuse("file is empty".to_owned()));
    }
    Ok(Secret::new(value))
}

/// Implements `Default` for a section's raw (as read) form from its
/// config's defaults: each listed field copied, and neither a `password`
/// nor a `password_file` (the config has no default password).
macro_rules! raw_default_without_password {
    ($raw:ident from $config:ident { $($field:ident),+ $(,)? }) => {
        impl Default for $raw {
            fn default() -> Self {
                let d = $config::default();
                Self {
                    $($field: d.$field,)+
                    password: None,
                    password_file: None,
                }
            }
        }
    };
}

/// Resolves a `password` / `password_file` pair under `section` into at most
/// one secret. An empty `password` or `password_file` counts as unset.
pub(crate) fn resolve_password(
    section: &str,
    password: Option<Secret>,
    password_file: Option<&Path>,
) -> Result<Option<Secret>, ConfigError> {
    let password = password.filter(|p| !p.is_empty());
    let password_file = password_file.filter(|p| !p.as_os_str().is_empty());
    match (password, password_file) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            format!("{section}.password_file"),
            format!("set either {section}.password or {section}.password_file, not both"),
        )),
        (Some(password), None) => Ok(Some(password)),
        (None, Some(file)) => read_secret_file(&format!("{section}.password_file"), file).map(Some),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;

    fn secret_file(contents: &str, mode: u32) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(contents.as_bytes()).unwrap();
        fs::set_permissions(file.path(), fs::Permissions::from_mode(mode)).unwrap();
        file
    }

    #[test]
    fn secret_never_prints_its_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some(***)");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn mode_check_accepts_owner_and_group_only() {
        for mode in [0o600, 0o640, 0o400, 0o440] {
            let file = secret_file("x", mode);
            assert_eq!(check_secret_file_mode(file.path()), Ok(()), "mode {mode:o}");
        }
    }

    #[test]
    fn mode_check_refuses_world_readable() {
        for mode in [0o644, 0o604, 0o666] {
            let file = secret_file("x", mode);
            let reason = check_secret_file_mode(file.path()).unwrap_err();
            assert!(reason.contains("readable by every user"), "{reason}");
            assert!(reason.contains(&format!("{mode:04o}")), "{reason}");
        }
    }

    #[test]
    fn mode_check_refuses_missing_file_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            check_secret_file_mode(&dir.path().join("nope"))
                .unwrap_err()
                .starts_with("cannot stat")
        );
        assert_eq!(
            check_secret_file_mode(dir.path()),
            Err("not a regular file".to_owned())
        );
    }

    #[test]
    fn read_trims_trailing_newlines_only() {
        let file = secret_file(" pa ss\r\n\n", 0o600);
        let secret = read_secret_file("k", file.path()).unwrap();
        assert_eq!(secret.expose(), " pa ss");
    }

    #[test]
    fn read_refuses_empty_file() {
        let file = secret_file("\n", 0o600);
        let err = read_secret_file("failover.password_file", file.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("failover.password_file"), "{msg}");
        assert!(msg.contains("file is empty"), "{msg}");
    }

    #[test]
    fn empty_password_counts_as_unset() {
        assert_eq!(
            resolve_password("health_check", Some(Secret::new("")), None).unwrap(),
            None
        );
        assert_eq!(
            resolve_password("health_check", None, Some(Path::new(""))).unwrap(),
            None
        );
    }
}
