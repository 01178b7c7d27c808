//! libpq `key=value` connection strings, the format of `primary_conninfo`.
//!
//! Repointing a standby means rewriting its `primary_conninfo`: parse what
//! the server has ([`parse`]), change `host` and `port` ([`set`], [`remove`])
//! and write it back ([`format()`]) with everything else (user, passfile, SSL
//! settings, `application_name`) kept as it was.
//!
//! The rules are libpq's (`conninfo_parse` in `fe-connect.c`): pairs are
//! separated by whitespace, spaces around `=` are allowed, a value is either
//! bare (up to the next whitespace) or in single quotes, and a backslash
//! escapes the next character in both. URIs (`postgresql://...`) are not
//! supported. Keys are not checked against libpq's list: the server does
//! that when it uses the string.

/// Why a connection string could not be parsed. Values never appear in the
/// message (one may be a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConninfoError {
    /// A key not followed by `=` (libpq: `missing "=" after "..."`).
    #[error("missing \"=\" after {key:?} in connection info string")]
    MissingEquals {
        /// The key read so far.
        key: String,
    },
    /// `=` with no key before it.
    #[error("empty key before \"=\" at byte {offset} of connection info string")]
    EmptyKey {
        /// Byte offset of the `=`.
        offset: usize,
    },
    /// A quoted value with no closing quote.
    #[error("unterminated quoted string for {key:?} in connection info string")]
    UnterminatedQuote {
        /// The key whose value is unterminated.
        key: String,
    },
    /// A `postgresql://` URI, which this parser does not handle.
    #[error("URI connection strings (postgresql://...) are not supported, use key=value")]
    Uri,
}

/// libpq's `isspace`: ASCII space, `\t`, `\n`, `\v`, `\f`, `\r`.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// Parses `key=value key='quoted \' value'` into pairs, in order (a key
/// given twice appears twice; libpq uses the last one).
///
/// Errors on a key without `=`, an empty key, an unterminated quoted value,
/// or a URI.
pub fn parse(s: &str) -> Result<Vec<(String, String)>, ConninfoError> {
    let start = s.trim_start_matches(is_space);
    if start.starts_with("postgresql://") || start.starts_with("postgres://") {
        return Err(ConninfoError::Uri);
    }
    let mut pairs = Vec::new();
    let mut chars = s.char_indices().peekable();
    let skip_spaces = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.next_if(|&(_, c)| is_space(c)).is_some() {}
    };
    loop {
        skip_spaces(&mut chars);
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|&(_, c)| c != '=' && !is_space(c)) {
            key.push(c);
        }
        skip_spaces(&mut chars);
        let offset = match chars.next() {
            Some((offset, '=')) => offset,
            _ => return Err(ConninfoError::MissingEquals { key }),
        };
        if key.is_empty() {
            return Err(ConninfoError::EmptyKey { offset });
        }
        skip_spaces(&mut chars);
        let mut value = String::new();
        if chars.next_if(|&(_, c)| c == '\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(ConninfoError::UnterminatedQuote { key }),
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => return Err(ConninfoError::UnterminatedQuote { key }),
                    },
                    Some((_, c)) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|&(_, c)| !is_space(c)) {
                if c == '\\' {
                    // libpq drops a trailing lone backslash.
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// Serialises pairs as `key='value' ...`, quoting every value and escaping
/// `\` and `'` with a backslash, so [`parse`] gives the pairs back.
pub fn format(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (key, value) in pairs {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(key);
        out.push_str("='");
        for c in value.chars() {
            if c == '\\' || c == '\'' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('\'');
    }
    out
}

/// Sets `key` to `value`: replaces its first occurrence (dropping any
/// later duplicates, which libpq would otherwise prefer), or appends it.
pub fn set(pairs: &mut Vec<(String, String)>, key: &str, value: &str) {
    let mut seen = false;
    pairs.retain_mut(|(k, v)| {
        if k != key {
            return true;
        }
        if seen {
            return false;
        }
        seen = true;
        value.clone_into(v);
        true
    });
    if !seen {
        pairs.push((key.to_owned(), value.to_owned()));
    }
}

/// Removes every occurrence of `key`.
pub fn remove(pairs: &mut Vec<(String, String)>, key: &str) {
    pairs.retain(|(k, _)| k != key);
}

/// The value of `key` (the last occurrence, as libpq reads it).
pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// What PostgreSQL 15's `pg_basebackup -R` writes (after postgresql.conf
    /// unquoting), and what PostgreSQL 16+ adds.
    const BASEBACKUP: &str = "user=postgres passfile='/var/lib/postgresql/.pgpass' \
        channel_binding=prefer host=127.0.0.1 port=5432 sslmode=prefer sslcompression=0 \
        sslcertmode=allow sslsni=1 ssl_min_protocol_version=TLSv1.2 gssencmode=prefer \
        krbsrvname=postgres gssdelegation=0 target_session_attrs=any \
        load_balance_hosts=disable application_name=pg1";

    #[test]
    fn parses_pg_basebackup_output() {
        let parsed = parse(BASEBACKUP).unwrap();
        assert_eq!(parsed.len(), 16);
        assert_eq!(parsed[0], ("user".into(), "postgres".into()));
        assert_eq!(
            parsed[1],
            ("passfile".into(), "/var/lib/postgresql/.pgpass".into())
        );
        assert_eq!(get(&parsed, "host"), Some("127.0.0.1"));
        assert_eq!(get(&parsed, "port"), Some("5432"));
        assert_eq!(get(&parsed, "application_name"), Some("pg1"));
        assert_eq!(parse(&format(&parsed)).unwrap(), parsed);
    }

    #[test]
    fn round_trips_awkward_values() {
        let original = pairs(&[
            ("password", r"it's a \back'slash\\"),
            ("options", "-c search_path=a,b -c x='y z'"),
            ("dbname", ""),
            ("application_name", "naïve 名前"),
            ("host", "\t\n"),
        ]);
        let text = format(&original);
        assert_eq!(parse(&text).unwrap(), original);
        assert_eq!(
            format(&pairs(&[("password", r"a'b\c")])),
            r"password='a\'b\\c'"
        );
    }

    #[test]
    fn follows_libpq_lexing() {
        assert_eq!(
            parse("  host = db1  port= 5433\tuser =alice ").unwrap(),
            pairs(&[("host", "db1"), ("port", "5433"), ("user", "alice")])
        );
        // Backslash escapes outside quotes too.
        assert_eq!(
            parse(r"password=a\ b\'c\\").unwrap(),
            pairs(&[("password", r"a b'c\")])
        );
        // A quoted value needs no space after it.
        assert_eq!(
            parse("a='x y'b=z").unwrap(),
            pairs(&[("a", "x y"), ("b", "z")])
        );
        // Empty values, bare or quoted; a value may contain '='.
        assert_eq!(
            parse("a='' options=-c\\ x=1").unwrap(),
            pairs(&[("a", ""), ("options", "-c x=1")])
        );
        // libpq skips whitespace after '=': "a= b=c" is a="b=c".
        assert_eq!(parse("a= b=c").unwrap(), pairs(&[("a", "b=c")]));
        assert_eq!(parse("a=").unwrap(), pairs(&[("a", "")]));
        assert_eq!(parse("").unwrap(), Vec::new());
        assert_eq!(parse(" \n ").unwrap(), Vec::new());
    }

    #[test]
    fn rejects_malformed_strings() {
        assert_eq!(
            parse("host=a port"),
            Err(ConninfoError::MissingEquals { key: "port".into() })
        );
        assert_eq!(
            parse("host a"),
            Err(ConninfoError::MissingEquals { key: "host".into() })
        );
        assert_eq!(
            parse("host=a =b"),
            Err(ConninfoError::EmptyKey { offset: 7 })
        );
        assert_eq!(
            parse("password='secret"),
            Err(ConninfoError::UnterminatedQuote {
                key: "password".into()
            })
        );
        assert_eq!(
            parse(r"password='secret\'"),
            Err(ConninfoError::UnterminatedQuote {
                key: "password".into()
            })
        );
        assert_eq!(parse("postgresql://u@h/db"), Err(ConninfoError::Uri));
        let message = parse("password='s3cret").unwrap_err().to_string();
        assert!(!message.contains("s3cret"), "{message}");
    }

    #[test]
    fn set_replaces_or_appends_and_remove_drops_all() {
        let mut p = parse("host=a port=1 hostaddr=10.0.0.1 host=b").unwrap();
        set(&mut p, "host", "c");
        assert_eq!(
            p,
            pairs(&[("host", "c"), ("port", "1"), ("hostaddr", "10.0.0.1")])
        );
        set(&mut p, "application_name", "pg2");
        assert_eq!(get(&p, "application_name"), Some("pg2"));
        assert_eq!(p.len(), 4);
        remove(&mut p, "hostaddr");
        remove(&mut p, "absent");
        assert_eq!(
            p,
            pairs(&[("host", "c"), ("port", "1"), ("application_name", "pg2")])
        );
        assert_eq!(get(&p, "hostaddr"), None);
    }
}
