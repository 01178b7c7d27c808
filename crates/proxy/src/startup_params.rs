//! A client's startup parameters, split by what the proxy does with them.
//!
//! Server connections are pooled per (backend, user, database), not per
//! set of startup parameters: a connection is opened with the user and the
//! database alone (so after `DISCARD ALL` it is back at the server's
//! defaults), and the parameters a client sent (`application_name`,
//! `client_encoding`, `DateStyle`, `TimeZone`, `search_path`, the `-c`
//! settings in `options`...) are *replayed* with `set_config()` on whichever
//! connection it gets. Only what cannot be replayed stays a startup
//! parameter of the server connection, and so part of the pool's key:
//! `replication`, and an `options` string holding anything but settings.

/// Where each of a client's startup parameters goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupParams {
    /// Settings to replay on the server connection (name, value), in the
    /// client's order; `options`' settings come after the others, as
    /// PostgreSQL applies them.
    pub replayed: Vec<(String, String)>,
    /// Parameters the server connection must be opened with (besides user
    /// and database): they key the pool.
    pub startup_only: Vec<(String, String)>,
}

impl StartupParams {
    /// Splits a client's startup parameters (without `user`, `database` and
    /// protocol options).
    pub fn split(params: &[(String, String)]) -> StartupParams {
        let mut out = StartupParams::default();
        let mut from_options = Vec::new();
        for (name, value) in params {
            match name.as_str() {
                "options" => match parse_options(value) {
                    Some(settings) => from_options.extend(settings),
                    None => out.startup_only.push((name.clone(), value.clone())),
                },
                "replication" => out.startup_only.push((name.clone(), value.clone())),
                _ => out.replayed.push((name.clone(), value.clone())),
            }
        }
        out.replayed.extend(from_options);
        out
    }
}

/// The settings in an `options` startup parameter (`-c name=value`,
/// `-cname=value`, `--name=value`, split at unescaped whitespace, `\`
/// escaping the next character, as PostgreSQL's `pg_split_opts`), or `None`
/// when it holds anything else (another command-line switch), which only a
/// fresh server connection can take.
pub fn parse_options(options: &str) -> Option<Vec<(String, String)>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_whitespace() {
            if in_word {
                words.push(std::mem::take(&mut word));
                in_word = false;
            }
            continue;
        }
        in_word = true;
        if c == '\\' {
            word.push(chars.next()?);
        } else {
            word.push(c);
        }
    }
    if in_word {
        words.push(word);
    }
    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        let setting = if w == "-c" {
            words.next()?
        } else if let Some(s) = w.strip_prefix("--") {
            s.to_owned()
        } else if let Some(s) = w.strip_prefix("-c") {
            s.to_owned()
        } else {
            return None;
        };
        let (name, value) = setting.split_once('=')?;
        if name.is_empty() {
            return None;
        }
        // PostgreSQL's ParseLongOption: dashes in the name are underscores.
        settings.push((name.replace('-', "_"), value.to_owned()));
    }
    Some(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn options_settings_in_every_spelling() {
        assert_eq!(
            parse_options(
                r"-c search_path=a,b  -cstatement_timeout=5s --lock-timeout=1s -c application_name=two\ words"
            ),
            Some(pairs(&[
                ("search_path", "a,b"),
                ("statement_timeout", "5s"),
                ("lock_timeout", "1s"),
                ("application_name", "two words"),
            ]))
        );
        assert_eq!(parse_options(""), Some(vec![]));
        assert_eq!(parse_options("   "), Some(vec![]));
    }

    #[test]
    fn options_with_anything_but_settings_cannot_be_replayed() {
        assert_eq!(parse_options("-d 5"), None);
        assert_eq!(parse_options("-c"), None, "a -c with no setting");
        assert_eq!(parse_options("-c noequals"), None);
        assert_eq!(parse_options("-c =x"), None);
        assert_eq!(parse_options(r"-c a=b\"), None, "a trailing escape");
    }

    #[test]
    fn settings_are_replayed_and_the_rest_keys_the_pool() {
        let p = StartupParams::split(&pairs(&[
            ("options", "-c search_path=s"),
            ("application_name", "app"),
            ("client_encoding", "UTF8"),
        ]));
        assert_eq!(
            p.replayed,
            pairs(&[
                ("application_name", "app"),
                ("client_encoding", "UTF8"),
                ("search_path", "s"),
            ])
        );
        assert!(p.startup_only.is_empty());
        let p = StartupParams::split(&pairs(&[("options", "-d 2"), ("replication", "true")]));
        assert!(p.replayed.is_empty());
        assert_eq!(
            p.startup_only,
            pairs(&[("options", "-d 2"), ("replication", "true")])
        );
    }
}
