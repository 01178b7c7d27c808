//! Messages the proxy sends to clients, as the server would (`R`, `S`, `K`,
//! `Z`, `v`). Each writer appends one complete message to a `BytesMut`.

use bytes::{BufMut, BytesMut};

/// Fills in the length field of the message that starts at `start` (its type byte).
pub(crate) fn finish_length(buf: &mut BytesMut, start: usize) {
    let len = (buf.len() - start - 1) as u32;
    if let Some(slot) = buf.get_mut(start + 1..start + 5) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
}

fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    let start = buf.len();
    buf.put_u8(tag);
    buf.put_u32(0);
    start
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    // A NUL inside would end the string early: left out. Nearly always
    // there is none, and the string goes in with one copy.
    if s.as_bytes().contains(&0) {
        buf.extend(s.bytes().filter(|b| *b != 0));
    } else {
        buf.extend_from_slice(s.as_bytes());
    }
    buf.put_u8(0);
}

/// AuthenticationOk.
pub fn authentication_ok(buf: &mut BytesMut) {
    let s = begin(buf, b'R');
    buf.put_u32(0);
    finish_length(buf, s);
}

/// AuthenticationCleartextPassword.
pub fn authentication_cleartext(buf: &mut BytesMut) {
    let s = begin(buf, b'R');
    buf.put_u32(3);
    finish_length(buf, s);
}

/// AuthenticationMD5Password with its 4-byte salt.
pub fn authentication_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    let s = begin(buf, b'R');
    buf.put_u32(5);
    buf.put_slice(&salt);
    finish_length(buf, s);
}

/// AuthenticationSASL offering the given mechanisms.
pub fn authentication_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    let s = begin(buf, b'R');
    buf.put_u32(10);
    for m in mechanisms {
        put_cstr(buf, m);
    }
    buf.put_u8(0);
    finish_length(buf, s);
}

/// AuthenticationSASLContinue carrying the server-first message.
pub fn authentication_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    let s = begin(buf, b'R');
    buf.put_u32(11);
    buf.put_slice(data);
    finish_length(buf, s);
}

/// AuthenticationSASLFinal carrying the server-final message.
pub fn authentication_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    let s = begin(buf, b'R');
    buf.put_u32(12);
    buf.put_slice(data);
    finish_length(buf, s);
}

/// ParameterStatus (`S`): a run-time parameter the client should know.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let s = begin(buf, b'S');
    put_cstr(buf, name);
    put_cstr(buf, value);
    finish_length(buf, s);
}

/// BackendKeyData (`K`): the key a client quotes in a CancelRequest.
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    let s = begin(buf, b'K');
    buf.put_i32(pid);
    buf.put_i32(secret);
    finish_length(buf, s);
}

/// Transaction status reported by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TransactionStatus {
    /// The status byte.
    pub fn as_byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// ReadyForQuery (`Z`).
pub fn ready_for_query(buf: &mut BytesMut, status: TransactionStatus) {
    let s = begin(buf, b'Z');
    buf.put_u8(status.as_byte());
    finish_length(buf, s);
}

/// NegotiateProtocolVersion (`v`): the newest minor version the proxy speaks
/// and the `_pq_.` options it did not recognise.
pub fn negotiate_protocol_version(buf: &mut BytesMut, newest_minor: u32, unrecognized: &[&str]) {
    let s = begin(buf, b'v');
    buf.put_u32(newest_minor);
    buf.put_u32(unrecognized.len() as u32);
    for o in unrecognized {
        put_cstr(buf, o);
    }
    finish_length(buf, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::message::backend::Message;

    #[test]
    fn a_nul_inside_a_string_is_left_out_so_it_cannot_end_the_field_early() {
        let mut buf = BytesMut::new();
        parameter_status(&mut buf, "application_name", "a\0b");
        parameter_status(&mut buf, "TimeZone", "UTC");
        assert_eq!(
            &buf[..],
            &b"S\0\0\0\x18application_name\0ab\0S\0\0\0\x11TimeZone\0UTC\0"[..]
        );
    }

    #[test]
    fn startup_reply_bytes() {
        let mut buf = BytesMut::new();
        authentication_ok(&mut buf);
        backend_key_data(&mut buf, 42, -7);
        ready_for_query(&mut buf, TransactionStatus::Idle);
        assert_eq!(
            &buf[..],
            b"R\0\0\0\x08\0\0\0\0K\0\0\0\x0c\0\0\0\x2a\xff\xff\xff\xf9Z\0\0\0\x05I"
        );
    }

    #[test]
    fn postgres_protocol_parses_what_we_write() {
        let mut buf = BytesMut::new();
        authentication_sasl(&mut buf, &["SCRAM-SHA-256"]);
        authentication_md5(&mut buf, [1, 2, 3, 4]);
        parameter_status(&mut buf, "server_version", "15.18");
        match Message::parse(&mut buf).unwrap() {
            Some(Message::AuthenticationSasl(body)) => {
                use fallible_iterator::FallibleIterator;
                let mechs: Vec<String> = body
                    .mechanisms()
                    .map(|m| Ok(m.to_string()))
                    .collect()
                    .unwrap();
                assert_eq!(mechs, vec!["SCRAM-SHA-256".to_string()]);
            }
            _ => panic!("expected AuthenticationSasl"),
        }
        match Message::parse(&mut buf).unwrap() {
            Some(Message::AuthenticationMd5Password(body)) => assert_eq!(body.salt(), [1, 2, 3, 4]),
            _ => panic!("expected md5"),
        }
        match Message::parse(&mut buf).unwrap() {
            Some(Message::ParameterStatus(body)) => {
                assert_eq!(body.name().unwrap(), "server_version");
                assert_eq!(body.value().unwrap(), "15.18");
            }
            _ => panic!("expected ParameterStatus"),
        }
        assert!(buf.is_empty());
    }
}
