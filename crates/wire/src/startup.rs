//! The startup phase as a server sees it: the untyped packets a client sends
//! before its first typed message.

use bytes::{Buf, BytesMut};

use crate::{MAX_STARTUP_LEN, ProtocolError};

const CANCEL_REQUEST_CODE: u32 = (1234 << 16) | 5678;
const SSL_REQUEST_CODE: u32 = (1234 << 16) | 5679;
const GSSENC_REQUEST_CODE: u32 = (1234 << 16) | 5680;

/// The newest protocol minor version pgwarden speaks (3.0).
pub const NEWEST_MINOR: u16 = 0;

/// One packet of the startup phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// A StartupMessage: the client wants a session.
    Startup(StartupMessage),
    /// SSLRequest: answer `S` or `N`, then the client sends another packet.
    SslRequest,
    /// GSSENCRequest: answer `G` or `N`, then the client sends another packet.
    GssEncRequest,
    /// CancelRequest for the session holding this key.
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret key from BackendKeyData.
        secret: i32,
    },
}

/// A StartupMessage: protocol version and the parameters the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Protocol major version (always 3).
    pub major: u16,
    /// Protocol minor version as requested (PostgreSQL 18's libpq may ask for 2).
    pub minor: u16,
    /// Parameters in the order sent, names unique (a repeated name keeps its last value).
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// The value of a parameter, if sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `user` parameter (required by the protocol).
    pub fn user(&self) -> Option<&str> {
        self.get("user").filter(|u| !u.is_empty())
    }

    /// The database: `database`, defaulting to the user name as PostgreSQL does.
    pub fn database(&self) -> Option<&str> {
        self.get("database")
            .filter(|d| !d.is_empty())
            .or_else(|| self.user())
    }

    /// Protocol options (`_pq_.` names), which the proxy does not support and
    /// reports back in NegotiateProtocolVersion.
    pub fn protocol_options(&self) -> impl Iterator<Item = &str> {
        self.params
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.starts_with("_pq_."))
    }

    /// Whether the client asked for more than the proxy speaks, so it must be
    /// sent a NegotiateProtocolVersion.
    pub fn needs_negotiation(&self) -> bool {
        self.minor > NEWEST_MINOR || self.protocol_options().next().is_some()
    }
}

/// Takes one complete startup-phase packet from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed. Bytes of a packet are only
/// consumed once it is complete and valid.
pub fn parse_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtocolError> {
    let Some(&len_bytes) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(len_bytes);
    if len < 8 {
        return Err(ProtocolError::InvalidLength { len });
    }
    if len > MAX_STARTUP_LEN {
        return Err(ProtocolError::TooLong {
            len,
            max: MAX_STARTUP_LEN,
        });
    }
    if buf.len() < len as usize {
        return Ok(None);
    }
    let mut packet = buf.split_to(len as usize);
    packet.advance(4);
    let code = packet.get_u32();
    let parsed = match code {
        SSL_REQUEST_CODE if packet.is_empty() => StartupPacket::SslRequest,
        GSSENC_REQUEST_CODE if packet.is_empty() => StartupPacket::GssEncRequest,
        CANCEL_REQUEST_CODE if packet.len() == 8 => StartupPacket::Cancel {
            pid: packet.get_i32(),
            secret: packet.get_i32(),
        },
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE | CANCEL_REQUEST_CODE => {
            return Err(ProtocolError::Malformed {
                what: "startup request",
            });
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(ProtocolError::UnsupportedProtocol { major, minor });
            }
            StartupPacket::Startup(StartupMessage {
                major,
                minor,
                params: parse_params(&packet)?,
            })
        }
    };
    Ok(Some(parsed))
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    const WHAT: ProtocolError = ProtocolError::Malformed { what: "startup" };
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        let (name, after) = take_cstr(rest).ok_or(WHAT)?;
        if name.is_empty() {
            // The terminating empty name must end the packet.
            return if after.is_empty() {
                Ok(params)
            } else {
                Err(WHAT)
            };
        }
        let (value, after) = take_cstr(after).ok_or(WHAT)?;
        rest = after;
        let name = std::str::from_utf8(name).map_err(|_| WHAT)?.to_owned();
        let value = std::str::from_utf8(value).map_err(|_| WHAT)?.to_owned();
        match params.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => params.push((name, value)),
        }
    }
}

/// Splits a NUL-terminated string off the front of `b`.
pub(crate) fn take_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = b.iter().position(|c| *c == 0)?;
    Some((b.get(..nul)?, b.get(nul + 1..)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn startup_bytes(params: &[(&str, &str)]) -> BytesMut {
        let mut buf = BytesMut::new();
        postgres_protocol::message::frontend::startup_message(params.iter().copied(), &mut buf)
            .unwrap();
        buf
    }

    #[test]
    fn parses_a_libpq_startup() {
        let mut buf = startup_bytes(&[
            ("user", "alice"),
            ("database", "shop"),
            ("application_name", "psql"),
        ]);
        let Some(StartupPacket::Startup(m)) = parse_startup(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!((m.major, m.minor), (3, 0));
        assert_eq!(m.user(), Some("alice"));
        assert_eq!(m.database(), Some("shop"));
        assert_eq!(m.get("application_name"), Some("psql"));
        assert!(!m.needs_negotiation());
        assert!(buf.is_empty());
    }

    #[test]
    fn database_defaults_to_user() {
        let mut buf = startup_bytes(&[("user", "alice")]);
        let Some(StartupPacket::Startup(m)) = parse_startup(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(m.database(), Some("alice"));
    }

    #[test]
    fn ssl_gss_and_cancel_requests() {
        let mut buf = BytesMut::from(&b"\0\0\0\x08\x04\xd2\x16\x2f\0\0\0\x08\x04\xd2\x16\x30"[..]);
        assert_eq!(
            parse_startup(&mut buf).unwrap(),
            Some(StartupPacket::SslRequest)
        );
        assert_eq!(
            parse_startup(&mut buf).unwrap(),
            Some(StartupPacket::GssEncRequest)
        );
        let mut buf = BytesMut::new();
        postgres_protocol::message::frontend::cancel_request(1234, -99, &mut buf);
        assert_eq!(
            parse_startup(&mut buf).unwrap(),
            Some(StartupPacket::Cancel {
                pid: 1234,
                secret: -99
            })
        );
    }

    #[test]
    fn incomplete_packets_wait_for_more() {
        let full = startup_bytes(&[("user", "alice")]);
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(parse_startup(&mut buf).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn refuses_bad_lengths_and_versions() {
        let mut buf = BytesMut::from(&b"\0\0\0\x04"[..]);
        assert_eq!(
            parse_startup(&mut buf),
            Err(ProtocolError::InvalidLength { len: 4 })
        );
        let mut buf = BytesMut::from(&b"\x7f\xff\xff\xff"[..]);
        assert!(matches!(
            parse_startup(&mut buf),
            Err(ProtocolError::TooLong { .. })
        ));
        let mut buf = BytesMut::from(&b"\0\0\0\x09\0\x02\0\0\0"[..]);
        assert_eq!(
            parse_startup(&mut buf),
            Err(ProtocolError::UnsupportedProtocol { major: 2, minor: 0 })
        );
        // Missing terminator.
        let mut buf = BytesMut::from(&b"\0\0\0\x0d\0\x03\0\0user\0"[..]);
        assert!(matches!(
            parse_startup(&mut buf),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn protocol_3_2_with_options_needs_negotiation() {
        let mut buf = BytesMut::new();
        let body = b"\0\x03\0\x02user\0bob\0_pq_.x\0y\0\0";
        buf.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        buf.extend_from_slice(body);
        let Some(StartupPacket::Startup(m)) = parse_startup(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(m.minor, 2);
        assert!(m.needs_negotiation());
        assert_eq!(m.protocol_options().collect::<Vec<_>>(), vec!["_pq_.x"]);
    }

    proptest! {
        #[test]
        fn round_trips_any_params(params in proptest::collection::vec(("[a-z_]{1,12}", "[^\u{0}]{0,20}"), 0..8)) {
            let refs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut buf = startup_bytes(&refs);
            let Some(StartupPacket::Startup(m)) = parse_startup(&mut buf).unwrap() else { panic!() };
            for (k, _) in &params {
                let last = params.iter().rev().find(|(k2, _)| k2 == k).map(|(_, v)| v.as_str());
                prop_assert_eq!(m.get(k), last);
            }
        }

        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = parse_startup(&mut buf);
        }
    }
}
