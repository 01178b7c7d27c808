//! Whole typed messages, for the phases where the proxy buffers: client
//! authentication and the proxy's own exchanges with servers. The data path
//! streams with [`crate::scan::Scanner`] instead.

use bytes::{Buf, Bytes, BytesMut};

use crate::ProtocolError;
use crate::startup::take_cstr;

/// One typed message: its type byte and body (length field removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Type byte, e.g. `b'p'`.
    pub tag: u8,
    /// The body after the length field.
    pub body: Bytes,
}

impl Message {
    /// The whole message re-encoded (type, length, body), e.g. to relay it.
    pub fn to_bytes(&self) -> BytesMut {
        let mut buf = BytesMut::with_capacity(5 + self.body.len());
        buf.extend_from_slice(&[self.tag]);
        buf.extend_from_slice(&(self.body.len() as u32 + 4).to_be_bytes());
        buf.extend_from_slice(&self.body);
        buf
    }
}

/// The body length of a typed message whose length field says `len` (it
/// counts itself): refused when `len` is under 4 or the body longer than
/// `max_body`. Inlined: the data path's scanners check every header with it.
#[inline]
pub fn body_len(len: u32, max_body: u32) -> Result<u32, ProtocolError> {
    let Some(body_len) = len.checked_sub(4) else {
        return Err(ProtocolError::InvalidLength { len });
    };
    if body_len > max_body {
        return Err(ProtocolError::TooLong {
            len: body_len,
            max: max_body,
        });
    }
    Ok(body_len)
}

/// Takes one complete typed message off the front of `buf`, refusing bodies
/// longer than `max_body`. `Ok(None)`: more bytes needed, nothing consumed.
pub fn read_message(buf: &mut BytesMut, max_body: u32) -> Result<Option<Message>, ProtocolError> {
    let Some(&[tag, a, b, c, d]) = buf.first_chunk::<5>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([a, b, c, d]);
    body_len(len, max_body)?;
    if buf.len() < 1 + len as usize {
        return Ok(None);
    }
    buf.advance(5);
    let body = buf.split_to(len as usize - 4).freeze();
    Ok(Some(Message { tag, body }))
}

/// The body of a PasswordMessage (`p`) answering cleartext or md5: one string.
pub fn parse_password(body: &[u8]) -> Result<&str, ProtocolError> {
    const WHAT: ProtocolError = ProtocolError::Malformed { what: "password" };
    let (pw, rest) = take_cstr(body).ok_or(WHAT)?;
    if !rest.is_empty() {
        return Err(WHAT);
    }
    std::str::from_utf8(pw).map_err(|_| WHAT)
}

/// A SASLInitialResponse (`p`): the chosen mechanism and its first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    /// Mechanism name, e.g. `SCRAM-SHA-256`.
    pub mechanism: &'a str,
    /// The client-first-message (absent when the length is -1).
    pub data: Option<&'a [u8]>,
}

/// Parses a SASLInitialResponse body.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<SaslInitialResponse<'_>, ProtocolError> {
    const WHAT: ProtocolError = ProtocolError::Malformed {
        what: "SASLInitialResponse",
    };
    let (mech, rest) = take_cstr(body).ok_or(WHAT)?;
    let mechanism = std::str::from_utf8(mech).map_err(|_| WHAT)?;
    let mut rest = rest;
    if rest.len() < 4 {
        return Err(WHAT);
    }
    let len = rest.get_i32();
    let data = match len {
        -1 if rest.is_empty() => None,
        n if n >= 0 && n as usize == rest.len() => Some(rest),
        _ => return Err(WHAT),
    };
    Ok(SaslInitialResponse { mechanism, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_messages_and_waits_for_partial_ones() {
        let mut buf = BytesMut::new();
        postgres_protocol::message::frontend::password_message(b"secret", &mut buf).unwrap();
        postgres_protocol::message::frontend::query("SELECT 1", &mut buf).unwrap();
        let total = buf.clone();
        for cut in 0..6 {
            let mut partial = BytesMut::from(&total[..cut]);
            assert_eq!(read_message(&mut partial, 100).unwrap(), None);
        }
        let m = read_message(&mut buf, 100).unwrap().unwrap();
        assert_eq!(m.tag, b'p');
        assert_eq!(parse_password(&m.body).unwrap(), "secret");
        let q = read_message(&mut buf, 100).unwrap().unwrap();
        assert_eq!((q.tag, &q.body[..]), (b'Q', &b"SELECT 1\0"[..]));
        assert_eq!(read_message(&mut buf, 100).unwrap(), None);
    }

    #[test]
    fn refuses_oversize_and_short_lengths() {
        let mut buf = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        assert!(matches!(
            read_message(&mut buf, 1 << 20),
            Err(ProtocolError::TooLong { .. })
        ));
        let mut buf = BytesMut::from(&b"Q\0\0\0\x03"[..]);
        assert_eq!(
            read_message(&mut buf, 100),
            Err(ProtocolError::InvalidLength { len: 3 })
        );
    }

    #[test]
    fn parses_sasl_initial_response() {
        let mut buf = BytesMut::new();
        postgres_protocol::message::frontend::sasl_initial_response(
            "SCRAM-SHA-256",
            b"n,,n=,r=abc",
            &mut buf,
        )
        .unwrap();
        let m = read_message(&mut buf, 1000).unwrap().unwrap();
        let r = parse_sasl_initial_response(&m.body).unwrap();
        assert_eq!(r.mechanism, "SCRAM-SHA-256");
        assert_eq!(r.data, Some(&b"n,,n=,r=abc"[..]));
        assert!(parse_sasl_initial_response(b"SCRAM-SHA-256\0\0\0\0\x09abc").is_err());
        assert_eq!(
            parse_sasl_initial_response(b"X\0\xff\xff\xff\xff").unwrap(),
            SaslInitialResponse {
                mechanism: "X",
                data: None
            }
        );
    }

    #[test]
    fn to_bytes_round_trips() {
        let m = Message {
            tag: b'E',
            body: Bytes::from_static(b"SFATAL\0\0"),
        };
        let mut buf = m.to_bytes();
        assert_eq!(read_message(&mut buf, 100).unwrap(), Some(m));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = read_message(&mut buf, 16);
            let _ = parse_sasl_initial_response(&bytes);
            let _ = parse_password(&bytes);
        }
    }
}
