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
//!
//! A replication connection (`replication=true`, `database`, `on`...) takes
//! no replayed settings at all: a walsender refuses the extended query
//! protocol `set_config()` is replayed with, so every parameter its client
//! sent goes into the server connection's startup packet.

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
    /// The client asked for a replication connection (a walsender): it
    /// gets a server connection of its own for its whole session, never
    /// cached, whatever `pool_mode` says.
    pub replication: bool,
}

impl StartupParams {
    /// Splits a client's startup parameters (without `user`, `database` and
    /// protocol options).
    pub fn split(params: &[(String, String)]) -> StartupParams {
        let replication = params
            .iter()
            .any(|(name, value)| name == "replication" && !is_false(value));
        if replication {
            return StartupParams {
                replayed: Vec::new(),
                startup_only: params.to_vec(),
                replication,
            };
        }
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

/// True for the values PostgreSQL's `parse_bool` reads as false (`false`,
/// `off`, `no`, `0`, and their unique prefixes, in any case): a
/// `replication` parameter with one of them asks for a normal connection.
/// What a client's `replication` startup parameter asks for, read as
/// PostgreSQL reads it: a physical walsender for any true spelling (`t`,
/// `yes`, `1`... anything not false and not `database`), a logical one
/// (attached to its database) for `database`.
pub fn physical_replication(params: &[(String, String)]) -> bool {
    params.iter().any(|(name, value)| {
        name == "replication" && !is_false(value) && !value.eq_ignore_ascii_case("database")
    })
}

fn is_false(value: &str) -> bool {
    let v = value.to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| v.len() >= min && word.starts_with(v.as_str());
    v == "0" || prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2)
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

    #[test]
    fn every_true_spelling_is_physical_replication_and_database_is_not() {
        let p = |v: &str| vec![("replication".to_owned(), v.to_owned())];
        for v in ["t", "tr", "true", "y", "ye", "yes", "on", "1", "TRUE"] {
            assert!(physical_replication(&p(v)), "{v}");
            assert!(StartupParams::split(&p(v)).replication, "{v}");
        }
        for v in ["f", "false", "n", "no", "off", "0", "database", "DATABASE"] {
            assert!(!physical_replication(&p(v)), "{v}");
        }
        assert!(!physical_replication(&[]));
    }

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
        let p = StartupParams::split(&pairs(&[("options", "-d 2"), ("replication", "false")]));
        assert!(p.replayed.is_empty());
        assert!(!p.replication);
        assert_eq!(
            p.startup_only,
            pairs(&[("options", "-d 2"), ("replication", "false")])
        );
    }

    #[test]
    fn a_replication_connection_takes_every_parameter_at_startup() {
        for value in ["true", "database", "on", "1", "yes"] {
            let sent = pairs(&[
                ("application_name", "standby1"),
                ("replication", value),
                ("options", "-c datestyle=german"),
            ]);
            let p = StartupParams::split(&sent);
            assert!(p.replication, "replication={value}");
            assert!(p.replayed.is_empty(), "replication={value}");
            assert_eq!(p.startup_only, sent, "replication={value}");
        }
        for value in ["false", "off", "no", "0", "F", "of"] {
            let p =
                StartupParams::split(&pairs(&[("replication", value), ("application_name", "a")]));
            assert!(!p.replication, "replication={value}");
            assert_eq!(p.replayed, pairs(&[("application_name", "a")]));
        }
    }
}
