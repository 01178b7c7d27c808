//! `tls-server-end-point` channel binding (RFC 5929 section 4.1): a hash
//! of the server's certificate, with the hash of the certificate's own
//! signature algorithm, SHA-256 in place of MD5 and SHA-1. PostgreSQL
//! binds SCRAM-SHA-256-PLUS to it, and so does the proxy, hashing as
//! PostgreSQL does: a certificate signed with no separate hash (Ed25519)
//! or with RSA-PSS gets no channel binding.

use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// The channel binding data of `cert` (DER), or `None` when its signature
/// algorithm has no hash to use or the certificate cannot be read.
pub fn server_end_point(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let der: &[u8] = cert.as_ref();
    let hash = signature_hash(signature_oid(der)?)?;
    Some(match hash {
        Hash::Sha224 => Sha224::digest(der).to_vec(),
        Hash::Sha256 => Sha256::digest(der).to_vec(),
        Hash::Sha384 => Sha384::digest(der).to_vec(),
        Hash::Sha512 => Sha512::digest(der).to_vec(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The hash of a signature algorithm, by its OID's DER contents.
fn signature_hash(oid: &[u8]) -> Option<Hash> {
    // 1.2.840.113549.1.1.x: PKCS #1 RSA signatures.
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    // 1.2.840.10045.4.3.x: ECDSA with SHA-2; 1.2.840.10045.4.1: with SHA-1.
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    if oid == ECDSA_SHA1 {
        return Some(Hash::Sha256);
    }
    if let Some(rest) = oid.strip_prefix(RSA) {
        return match rest {
            // md5, sha1: upgraded to SHA-256 by the RFC.
            [0x04] | [0x05] | [0x0b] => Some(Hash::Sha256),
            [0x0c] => Some(Hash::Sha384),
            [0x0d] => Some(Hash::Sha512),
            [0x0e] => Some(Hash::Sha224),
            // RSA-PSS (0x0a) names its hash in parameters PostgreSQL
            // does not read; nothing else is a signature.
            _ => None,
        };
    }
    match oid.strip_prefix(ECDSA_SHA2)? {
        [0x01] => Some(Hash::Sha224),
        [0x02] => Some(Hash::Sha256),
        [0x03] => Some(Hash::Sha384),
        [0x04] => Some(Hash::Sha512),
        _ => None,
    }
}

/// The contents of the signature algorithm OID of an X.509 certificate:
/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm
/// SEQUENCE { algorithm OID, .. }, signature }`.
fn signature_oid(der: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = element(der, SEQUENCE)?;
    let (_tbs, rest) = element(certificate, SEQUENCE)?;
    let (algorithm, _) = element(rest, SEQUENCE)?;
    let (oid, _) = element(algorithm, OID)?;
    Some(oid)
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;

/// One DER element of type `tag` at the start of `der`: its contents and
/// what follows it.
fn element(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match element_any(der)? {
        (t, contents, rest) if t == tag => Some((contents, rest)),
        _ => None,
    }
}

/// The DER element at the start of `der`: its tag, its contents and what
/// follows it (single-byte tags only, which X.509 uses).
pub(crate) fn element_any(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&t, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((t, contents, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_follow_the_signature_algorithm_as_postgresql_does() {
        let rsa = |last: u8| {
            let mut o = vec![0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
            o.push(last);
            o
        };
        assert_eq!(signature_hash(&rsa(0x0b)), Some(Hash::Sha256));
        assert_eq!(signature_hash(&rsa(0x05)), Some(Hash::Sha256));
        assert_eq!(signature_hash(&rsa(0x0c)), Some(Hash::Sha384));
        assert_eq!(signature_hash(&rsa(0x0d)), Some(Hash::Sha512));
        assert_eq!(signature_hash(&rsa(0x0a)), None, "RSA-PSS");
        assert_eq!(
            signature_hash(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]),
            Some(Hash::Sha384)
        );
        // Ed25519 (1.3.101.112): no hash, no channel binding.
        assert_eq!(signature_hash(&[0x2b, 0x65, 0x70]), None);
    }

    #[test]
    fn broken_der_gives_no_binding_and_no_panic() {
        for der in [
            &b""[..],
            b"\x30",
            b"\x30\x85\x01",
            b"\x30\x03\x30\x01",
            b"\x31\x00",
        ] {
            assert_eq!(signature_oid(der), None);
        }
        // Every truncation of a real certificate.
        let cert = rcgen::generate_simple_self_signed(vec!["db".to_owned()])
            .map(|c| c.cert.der().to_vec())
            .unwrap_or_default();
        assert!(signature_oid(&cert).is_some());
        for n in 0..cert.len() {
            let _ = signature_oid(cert.get(..n).unwrap_or_default());
        }
    }
}
