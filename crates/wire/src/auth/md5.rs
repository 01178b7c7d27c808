//! MD5 password authentication (`AuthenticationMD5Password`).
//!
//! The client answers `"md5" + hex(md5(hex(md5(password || user)) || salt))`.
//! The stored secret `"md5" + hex(md5(password || user))` is enough to both
//! check a client and answer a server, which is why md5 secrets work end to end.

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use super::hex;

/// The stored form: `"md5"` + hex(md5(password || user)), as PostgreSQL
/// stores it (postgres-protocol computes it).
pub fn secret(password: &str, user: &str) -> String {
    postgres_protocol::password::md5(password.as_bytes(), user)
}

/// The answer to a salt challenge, from the stored form (`md5...`).
pub fn response(stored: &str, salt: [u8; 4]) -> String {
    let inner = stored.strip_prefix("md5").unwrap_or(stored);
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    format!("md5{}", hex(&h.finalize()))
}

/// Checks a client's answer against the stored form, in constant time.
pub fn verify(stored: &str, salt: [u8; 4], answer: &str) -> bool {
    let expected = response(stored, salt);
    expected.as_bytes().ct_eq(answer.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_postgres_protocol() {
        let stored = secret("pencil", "bob");
        assert_eq!(stored, postgres_protocol::password::md5(b"pencil", "bob"));
        // What libpq sends (postgres-protocol's client computes the same thing).
        let salt = [0x01, 0x02, 0x03, 0x04];
        let answer = response(&stored, salt);
        assert!(verify(&stored, salt, &answer));
        assert!(!verify(&stored, [0, 0, 0, 0], &answer));
        assert!(!verify(&secret("pencil2", "bob"), salt, &answer));
        assert_eq!(answer.len(), 35);
    }

    #[test]
    fn recorded_exchange() {
        // Computed with coreutils: `printf pencilbob | md5sum`, then
        // `printf 'e4f7...bd0c\x01\x02\x03\x04' | md5sum`.
        assert_eq!(
            secret("pencil", "bob"),
            "md5e4f70fb0b8f2745aa7a69557c80cbd0c"
        );
        assert_eq!(
            response("md5e4f70fb0b8f2745aa7a69557c80cbd0c", [1, 2, 3, 4]),
            "md5735bfd3e1298fa49b4b28c02c7f176e1"
        );
    }
}
