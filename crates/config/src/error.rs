//! [`ConfigError`]: every way loading the node config can fail, each naming
//! the key at fault so an operator can fix the file without guessing.

use std::fmt::{self, Write as _};
use std::io;
use std::path::PathBuf;

use figment::error::{Actual, Kind};
use figment::value::Value;
use figment::{Figment, Source};

use crate::ENV_PREFIX;

/// An error loading the node config.
///
/// Every variant except [`ConfigError::Io`] names the offending key as a
/// path such as `proxy.pool_size`, `backends[1].port` or
/// `watchdog.peers[0]`; [`ConfigError::key`] returns it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read (missing, unreadable, a directory).
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The config file path as given.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A value could not be deserialized: TOML syntax, an unknown key, a
    /// missing required key, a wrong type, a bad duration or address.
    #[error("invalid config: {}", keyed(key, message))]
    Parse {
        /// The key path, e.g. `proxy.listen`; empty when the whole file is
        /// at fault (a TOML syntax error).
        key: String,
        /// What is wrong, and where the value came from when known
        /// (`in FILE` or `from environment variable PGWARDEN_...`).
        message: String,
    },

    /// A value parsed but is out of range or inconsistent with another key.
    #[error("invalid config: {key}: {reason}")]
    Invalid {
        /// The key path, e.g. `proxy.pool_size`.
        key: String,
        /// What is wrong with the value, including the value itself.
        reason: String,
    },

    /// A secret file named by a `*password_file` key could not be used.
    #[error("invalid config: {key}: secret file {}: {reason}", path.display())]
    Secret {
        /// The key naming the file, e.g. `health_check.password_file`.
        key: String,
        /// The file path as configured.
        path: PathBuf,
        /// Why it was refused (world-readable, unreadable, empty).
        reason: String,
    },
}

impl ConfigError {
    /// The key path the error is about (`proxy.pool_size`,
    /// `backends[1].port`), or `None` for a config file that cannot be read
    /// or a TOML syntax error.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Io { .. } => None,
            Self::Parse { key, .. } | Self::Invalid { key, .. } | Self::Secret { key, .. } => {
                (!key.is_empty()).then_some(key.as_str())
            }
        }
    }

    /// Builds an [`ConfigError::Invalid`].
    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// Turns figment's error into one naming the full key as the file
    /// spells it (`backends[1].port`, where figment's `Display` says
    /// `for key "default.backends.1.port"`), with a message an operator can
    /// act on, and the variable's name when the value came from the
    /// environment.
    pub(crate) fn from_figment(error: figment::Error, figment: &Figment) -> Self {
        // figment chains errors; extraction stops at the first one, so the
        // first is the one worth reporting.
        let Some(error) = error.into_iter().next() else {
            return Self::Parse {
                key: String::new(),
                message: "unknown error".to_owned(),
            };
        };

        let mut path = error.path.clone();
        // Never quote a password back, not even a mistyped one.
        let bad_value = matches!(
            error.kind,
            Kind::InvalidType(..) | Kind::InvalidValue(..) | Kind::Message(..)
        );
        if bad_value && path.last().is_some_and(|key| key == "password") {
            return Self::Parse {
                message: match origin(&error, &path) {
                    Some(origin) => format!("invalid value, expected a string ({origin})"),
                    None => "invalid value, expected a string".to_owned(),
                },
                key: key_path(&path),
            };
        }
        let message = match &error.kind {
            Kind::UnknownField(field, expected) => {
                // figment already ends the path with the field; serde's
                // other deserializers do not.
                if path.last() != Some(field) {
                    path.push(field.clone());
                }
                format!("unknown key (expected one of: {})", expected.join(", "))
            }
            Kind::MissingField(field) => {
                if path.last().map(String::as_str) != Some(field.as_ref()) {
                    path.push(field.to_string());
                }
                "missing required key".to_owned()
            }
            Kind::UnknownVariant(value, expected) => {
                let expected: Vec<String> = expected.iter().map(|v| format!("{v:?}")).collect();
                format!(
                    "unknown value {value:?} (expected one of: {})",
                    expected.join(", ")
                )
            }
            Kind::InvalidValue(Actual::Str(value), expected) if expected == "a duration" => {
                duration_message(value)
            }
            Kind::InvalidType(actual, expected) if expected == "a duration" => {
                format!("invalid duration: found {actual}, {DURATION_HINT}")
            }
            Kind::InvalidType(actual, expected) => {
                format!(
                    "invalid type: found {actual}, expected {}",
                    friendly(expected)
                )
            }
            Kind::InvalidValue(actual, expected) => {
                format!(
                    "invalid value: found {actual}, expected {}",
                    friendly(expected)
                )
            }
            // A custom message from a `FromStr`-based deserializer, which
            // does not quote the value: look it up.
            Kind::Message(message) => {
                let mut message = message.clone();
                if let Some(value) = lookup(figment, &path) {
                    let _ = write!(message, " (got {value})");
                }
                if message.starts_with("invalid socket address syntax") {
                    let _ = write!(message, "; {ADDR_HINT}");
                }
                message
            }
            other => other.to_string(),
        };

        let mut message = message.trim_end().to_owned();
        match origin(&error, &path) {
            // A syntax error: no key, so lead with the file.
            Some(Origin::File(file)) if path.is_empty() => {
                message = format!("{}: {message}", file.display());
            }
            Some(origin) => {
                let _ = write!(message, " ({origin})");
            }
            None => {}
        }
        Self::Parse {
            key: key_path(&path),
            message,
        }
    }
}

/// `a.b[1].c` from `["a", "b", "1", "c"]`: all-digit segments are sequence
/// indices (no config table has a numeric key).
pub(crate) fn key_path<S: AsRef<str>>(segments: &[S]) -> String {
    let mut key = String::new();
    for segment in segments {
        let segment = segment.as_ref();
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            let _ = write!(key, "[{segment}]");
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(segment);
        }
    }
    key
}

/// Where a bad value came from.
enum Origin {
    /// The config file.
    File(PathBuf),
    /// The environment variable that overrode the file (an operator reading
    /// only the file would be lost).
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(file) => write!(f, "in {}", file.display()),
            Self::Env(var) => write!(f, "from environment variable {var}"),
        }
    }
}

fn origin(error: &figment::Error, path: &[String]) -> Option<Origin> {
    let metadata = error.metadata.as_ref()?;
    match &metadata.source {
        Some(Source::File(file)) => Some(Origin::File(file.clone())),
        _ if metadata.name.contains("environment") => {
            let var: Vec<String> = path.iter().map(|s| s.to_ascii_uppercase()).collect();
            Some(Origin::Env(format!("{ENV_PREFIX}{}", var.join("__"))))
        }
        _ => None,
    }
}

/// The merged value at `path` (figment's own `find_value` cannot index
/// arrays), quoted for a message.
fn lookup(figment: &Figment, path: &[String]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let mut value = figment.find_value(first).ok()?;
    for segment in rest {
        value = match value {
            Value::Dict(_, mut dict) => dict.remove(segment)?,
            Value::Array(_, array) => array.into_iter().nth(segment.parse().ok()?)?,
            _ => return None,
        };
    }
    match value {
        Value::String(_, s) => Some(format!("{s:?}")),
        Value::Dict(..) | Value::Array(..) => None,
        other => Some(other.to_actual().to_string()),
    }
}

/// serde names integer types by their Rust name; say what they accept.
fn friendly(expected: &str) -> String {
    match expected {
        "u16" => format!("an integer from 0 to {}", u16::MAX),
        "u32" => format!("an integer from 0 to {}", u32::MAX),
        "u64" | "usize" => format!("an integer from 0 to {}", u64::MAX),
        other => other.to_owned(),
    }
}

/// What a listen address looks like.
const ADDR_HINT: &str = "expected \"ip:port\" with an IP address, not a host name, e.g. \"0.0.0.0:9999\" or \"[::]:9999\"";

/// What a duration looks like, for messages about one.
const DURATION_HINT: &str = "expected a string like \"500ms\", \"2s\", \"10m\" or \"1h 30m\"";

/// humantime-serde reports only "expected a duration"; humantime itself
/// says what is wrong with the string.
fn duration_message(value: &str) -> String {
    match humantime::parse_duration(value) {
        Err(reason) => format!("invalid duration {value:?}: {reason}; {DURATION_HINT}"),
        Ok(_) => format!("invalid duration {value:?}; {DURATION_HINT}"),
    }
}

fn keyed(key: &str, message: &str) -> String {
    if key.is_empty() {
        message.to_owned()
    } else {
        format!("{key}: {message}")
    }
}
