//! The auth file: one user per line, `"user" "secret"`, as PgBouncer's
//! `userlist.txt` (so an existing one can be reused as it is).
//!
//! Fields are double-quoted; `""` inside a field is a literal quote; fields
//! after the second are ignored; blank lines and lines starting with `;` or
//! `#` are comments. The secret is plain text, `SCRAM-SHA-256$...` or
//! `md5...` (see [`Secret::parse`]).

use std::collections::HashMap;

use super::Secret;

/// A parse error, naming the 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct AuthFileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong (never the secret).
    pub reason: String,
}

/// Users and their secrets.
#[derive(Debug, Clone, Default)]
pub struct AuthFile {
    users: HashMap<String, Secret>,
}

impl AuthFile {
    /// Parses the whole file text.
    pub fn parse(text: &str) -> Result<AuthFile, AuthFileError> {
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |reason: &str| AuthFileError {
                line,
                reason: reason.to_owned(),
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
                continue;
            }
            let (user, rest) =
                quoted(trimmed).ok_or_else(|| err("expected \"user\" \"secret\""))?;
            let (secret, _) = quoted(rest.trim_start())
                .ok_or_else(|| err("expected a quoted secret after the user"))?;
            if user.is_empty() {
                return Err(err("empty user name"));
            }
            let secret = Secret::parse(&secret).map_err(err)?;
            if users.insert(user.clone(), secret).is_some() {
                return Err(err(&format!("user \"{user}\" is listed twice")));
            }
        }
        Ok(AuthFile { users })
    }

    /// The secret of `user`, if listed.
    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user)
    }

    /// Every user and secret, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Secret)> {
        self.users.iter().map(|(u, s)| (u.as_str(), s))
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when no user is listed.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Reads one `"..."` field (with `""` escapes) from the front of `s`.
fn quoted(s: &str) -> Option<(String, &str)> {
    let rest = s.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            if rest.get(i + 1..i + 2) == Some("\"") {
                out.push('"');
                chars.next();
            } else {
                return Some((out, rest.get(i + 1..)?));
            }
        } else {
            out.push(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbouncer_userlist() {
        let scram = postgres_protocol::password::scram_sha_256(b"pw");
        let text = format!(
            "; comment\n# another\n\n\"alice\" \"plain pw\"\n\"bob\" \"md5e4f70fb0b8f2745aa7a69557c80cbd0c\" \"\"\n\"carol\" \"{scram}\"\n\"q\"\"uote\" \"a\"\"b\"\n"
        );
        let f = AuthFile::parse(&text).unwrap();
        assert_eq!(f.len(), 4);
        assert_eq!(f.get("alice"), Some(&Secret::Plain("plain pw".into())));
        assert!(matches!(f.get("bob"), Some(Secret::Md5(_))));
        assert!(matches!(f.get("carol"), Some(Secret::Scram(_))));
        assert_eq!(f.get("q\"uote"), Some(&Secret::Plain("a\"b".into())));
        assert_eq!(f.get("dave"), None);
    }

    #[test]
    fn errors_name_the_line_and_hide_the_secret() {
        let e = AuthFile::parse("\"a\" \"x\"\nbob hunter2\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(!e.to_string().contains("hunter2"));
        let e = AuthFile::parse("\"a\" \"unterminated\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e = AuthFile::parse("\"a\" \"x\"\n\"a\" \"y\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.reason.as_str()),
            (2, "user \"a\" is listed twice")
        );
        let e = AuthFile::parse("\"a\" \"SCRAM-SHA-256$bad\"").unwrap_err();
        assert!(e.reason.contains("malformed SCRAM"));
    }
}
