//! `PGWARDEN_*` environment overrides as a figment provider.
//!
//! figment's own `Env` parses every value as TOML-ish text, so
//! `PGWARDEN_HEALTH_CHECK__PASSWORD=0123` would arrive as the integer 123
//! and fail (or lose its leading zero). Here scalars stay strings, and
//! [`crate::Config::from_figment`] extracts leniently so numeric and boolean
//! keys still accept `"5"` or `"true"`; only arrays (`["a:1","b:2"]`) are
//! parsed.

use figment::providers::Env;
use figment::value::{Dict, Map, Tag, Value};
use figment::{Metadata, Profile, Provider};

use crate::ENV_PREFIX;

/// The environment variables that override config keys: `PGWARDEN_` then
/// `SECTION__KEY`. Variables without `__` (`PGWARDEN_LOG`, `PGWARDEN_CONFIG`)
/// are not config keys and are ignored rather than refused as unknown.
pub(crate) struct EnvOverrides(Env);

impl EnvOverrides {
    pub(crate) fn new() -> Self {
        Self(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .filter(|key| key.as_str().contains('.')),
        )
    }
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, raw) in self.0.iter() {
            let value = match raw.parse::<Value>() {
                Ok(array @ Value::Array(..)) => array,
                _ => Value::from(raw),
            };
            let path: Vec<&str> = key.as_str().split('.').collect();
            insert(&mut dict, &path, value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Sets `path` in `dict`, creating (or replacing non-table values with)
/// tables on the way.
fn insert(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_owned())
                .or_insert_with(|| Value::Dict(Tag::Default, Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::Dict(Tag::Default, Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}
