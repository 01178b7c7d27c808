//! The subject common name of a certificate: what the `cert` method of
//! the hba file compares with the user name, as PostgreSQL does.

use rustls_pki_types::CertificateDer;

use crate::endpoint::element_any;

/// The first common name (OID 2.5.4.3) in the certificate's subject, when
/// it is text.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (tag, certificate, _) = element_any(cert.as_ref())?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element_any(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    // version [0] (optional), serialNumber, signature, issuer, validity,
    // subject.
    let mut rest = tbs;
    let (tag, _, after) = element_any(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..4 {
        let (_, _, after) = element_any(rest)?;
        rest = after;
    }
    let (tag, mut subject, _) = element_any(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    // Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }
    while !subject.is_empty() {
        let (_, set, after) = element_any(subject)?;
        subject = after;
        let mut attrs = set;
        while !attrs.is_empty() {
            let (_, attr, after) = element_any(attrs)?;
            attrs = after;
            let (tag, oid, value) = element_any(attr)?;
            if tag == OID && oid == COMMON_NAME {
                let (tag, text, _) = element_any(value)?;
                // UTF8String, PrintableString, IA5String, TeletexString.
                if matches!(tag, 0x0c | 0x13 | 0x16 | 0x14) {
                    return String::from_utf8(text.to_vec()).ok();
                }
                return None;
            }
        }
    }
    None
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
/// 2.5.4.3
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_of_a_generated_certificate_is_read() {
        let mut params = rcgen::CertificateParams::new(vec!["ignored.example".to_owned()])
            .unwrap_or_else(|e| panic!("{e}"));
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "pgwarden");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(common_name(cert.der()).as_deref(), Some("alice"));
        // Every truncation: no panic.
        let der: &[u8] = cert.der().as_ref();
        for n in 0..der.len() {
            let _ = common_name(&CertificateDer::from(
                der.get(..n).unwrap_or_default().to_vec(),
            ));
        }
    }
}
