//! The three forms of a password secret.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::scram;

/// A user's secret as the proxy holds it. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The password itself.
    Plain(String),
    /// `md5` followed by 32 hex digits: md5(password || user).
    Md5(String),
    /// A SCRAM-SHA-256 verifier as stored in `pg_authid`.
    Scram(ScramVerifier),
}

impl Secret {
    /// Reads a secret as written in an auth file or `pg_authid.rolpassword`:
    /// `SCRAM-SHA-256$...` and `md5<32 hex>` are verifiers, anything else is
    /// a plain password. A malformed `SCRAM-SHA-256$` verifier is an error,
    /// not silently a password.
    pub fn parse(s: &str) -> Result<Secret, &'static str> {
        if s.starts_with("SCRAM-SHA-256$") {
            return ScramVerifier::parse(s).map(Secret::Scram);
        }
        if s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Secret::Md5(s.to_ascii_lowercase()));
        }
        Ok(Secret::Plain(s.to_owned()))
    }

    /// Which form this is, for logs: never the secret itself.
    pub fn kind(&self) -> &'static str {
        match self {
            Secret::Plain(_) => "plain",
            Secret::Md5(_) => "md5",
            Secret::Scram(_) => "scram-sha-256",
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret::{}(***)", self.kind())
    }
}

/// A SCRAM-SHA-256 verifier: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// The salt (decoded).
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl ScramVerifier {
    /// Parses the `pg_authid` text form.
    pub fn parse(s: &str) -> Result<ScramVerifier, &'static str> {
        const BAD: &str = "malformed SCRAM-SHA-256 verifier";
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or(BAD)?;
        let (params, keys) = rest.split_once('$').ok_or(BAD)?;
        let (iter, salt) = params.split_once(':').ok_or(BAD)?;
        let (stored, server) = keys.split_once(':').ok_or(BAD)?;
        let iterations: u32 = iter.parse().map_err(|_| BAD)?;
        if iterations == 0 {
            return Err(BAD);
        }
        let salt = B64.decode(salt).map_err(|_| BAD)?;
        let stored_key = B64
            .decode(stored)
            .map_err(|_| BAD)?
            .try_into()
            .map_err(|_| BAD)?;
        let server_key = B64
            .decode(server)
            .map_err(|_| BAD)?
            .try_into()
            .map_err(|_| BAD)?;
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// Derives a verifier from a password with the given salt and iteration count.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
        let keys = scram::Keys::derive(password, salt, iterations);
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: keys.stored_key(),
            server_key: keys.server_key,
        }
    }

    /// Derives a verifier with a fresh random 16-byte salt and 4096 iterations,
    /// as PostgreSQL's `password_encryption = scram-sha-256` does.
    pub fn generate(password: &str) -> ScramVerifier {
        let mut salt = [0u8; 16];
        rand::fill(&mut salt);
        Self::from_password(password, &salt, 4096)
    }

    /// The `pg_authid` text form.
    pub fn to_text(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_three_forms() {
        let v = postgres_protocol::password::scram_sha_256(b"pencil");
        assert!(matches!(Secret::parse(&v), Ok(Secret::Scram(_))));
        let m = postgres_protocol::password::md5(b"pencil", "bob");
        assert_eq!(Secret::parse(&m), Ok(Secret::Md5(m.clone())));
        assert_eq!(
            Secret::parse("md5short"),
            Ok(Secret::Plain("md5short".into()))
        );
        assert_eq!(Secret::parse("pencil"), Ok(Secret::Plain("pencil".into())));
        assert!(Secret::parse("SCRAM-SHA-256$x").is_err());
    }

    #[test]
    fn verifier_text_round_trips_and_matches_postgres() {
        let theirs = postgres_protocol::password::scram_sha_256(b"pencil");
        let parsed = ScramVerifier::parse(&theirs).unwrap();
        let ours = ScramVerifier::from_password("pencil", &parsed.salt, parsed.iterations);
        assert_eq!(ours, parsed);
        assert_eq!(ours.to_text(), theirs);
    }

    #[test]
    fn debug_hides_the_secret() {
        let s = Secret::parse("hunter2").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        let v = Secret::parse(&postgres_protocol::password::scram_sha_256(b"x")).unwrap();
        assert!(!format!("{v:?}").contains("SCRAM-SHA-256$"));
    }
}
