//! Protocol errors and the ErrorResponse message that reports them to clients.

use bytes::{BufMut, BytesMut};

use crate::sqlstate;

/// Why bytes from a peer could not be accepted. Each variant maps to the
/// SQLSTATE the proxy reports before closing that one connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A length field smaller than the length field itself.
    #[error("invalid message length {len}")]
    InvalidLength {
        /// The length as sent (it counts itself, so at least 4).
        len: u32,
    },
    /// A message longer than the configured or protocol maximum.
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    TooLong {
        /// Body length as sent.
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// A message type byte that is not valid from this peer at this point.
    #[error("unexpected message type 0x{tag:02x}")]
    UnexpectedMessage {
        /// The type byte received.
        tag: u8,
    },
    /// A startup packet with a protocol version the proxy cannot speak.
    #[error("unsupported frontend protocol {major}.{minor}")]
    UnsupportedProtocol {
        /// Major version requested.
        major: u16,
        /// Minor version requested.
        minor: u16,
    },
    /// A message whose body does not parse as its type says.
    #[error("malformed {what} message")]
    Malformed {
        /// Which message.
        what: &'static str,
    },
    /// Valid protocol the proxy cannot follow in its current mode.
    #[error("not supported: {what}")]
    NotSupported {
        /// What, and what to do instead.
        what: &'static str,
    },
}

impl ProtocolError {
    /// The SQLSTATE a client sees for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ProtocolError::TooLong { .. } => sqlstate::PROGRAM_LIMIT_EXCEEDED,
            ProtocolError::UnsupportedProtocol { .. } | ProtocolError::NotSupported { .. } => {
                sqlstate::FEATURE_NOT_SUPPORTED
            }
            _ => sqlstate::PROTOCOL_VIOLATION,
        }
    }

    /// The FATAL ErrorResponse that reports this error to the peer.
    pub fn to_error_response(&self) -> ErrorResponse {
        ErrorResponse::fatal(self.sqlstate(), self.to_string())
    }
}

/// Severity of an [`ErrorResponse`]. Statement errors come from the
/// server, relayed as they are; pgwarden's own are FATAL, but for a
/// request whose server was lost while the session goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The request failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An ErrorResponse (`E`) that pgwarden itself sends to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    /// ERROR or FATAL.
    pub severity: Severity,
    /// Five-character SQLSTATE, see [`crate::sqlstate`].
    pub code: &'static str,
    /// The primary message, one line, no trailing period (PostgreSQL style).
    pub message: String,
    /// Optional detail line.
    pub detail: Option<String>,
    /// Optional hint line.
    pub hint: Option<String>,
}

impl ErrorResponse {
    /// A FATAL error: the proxy closes the connection after sending it.
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        ErrorResponse {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// An ERROR: the request failed, the session goes on.
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        ErrorResponse {
            severity: Severity::Error,
            ..Self::fatal(code, message)
        }
    }

    /// Adds a detail line.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a hint line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Appends the encoded message to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let start = buf.len();
        buf.put_u8(b'E');
        buf.put_u32(0);
        let sev = self.severity.as_str();
        put_field(buf, b'S', sev);
        put_field(buf, b'V', sev);
        put_field(buf, b'C', self.code);
        put_field(buf, b'M', &self.message);
        if let Some(d) = &self.detail {
            put_field(buf, b'D', d);
        }
        if let Some(h) = &self.hint {
            put_field(buf, b'H', h);
        }
        buf.put_u8(0);
        crate::backend::finish_length(buf, start);
    }

    /// The encoded message as a fresh buffer.
    pub fn to_bytes(&self) -> BytesMut {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf
    }
}

/// The fields of an ErrorResponse or NoticeResponse received from a server,
/// enough to log it or to decide what to do; relay the raw message to clients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerMessageFields {
    /// `S` (localized) or `V` severity, e.g. `FATAL`.
    pub severity: String,
    /// `C`: the SQLSTATE.
    pub code: String,
    /// `M`: the primary message.
    pub message: String,
}

impl ServerMessageFields {
    /// Parses an ErrorResponse/NoticeResponse body; unknown fields are skipped,
    /// malformed bytes end the parse with what was read so far.
    pub fn parse(body: &[u8]) -> ServerMessageFields {
        let mut out = ServerMessageFields::default();
        let mut rest = body;
        while let Some((&tag, after)) = rest.split_first() {
            if tag == 0 {
                break;
            }
            let Some((value, after)) = crate::startup::take_cstr(after) else {
                break;
            };
            let value = String::from_utf8_lossy(value).into_owned();
            match tag {
                b'V' => out.severity = value,
                b'S' if out.severity.is_empty() => out.severity = value,
                b'C' => out.code = value,
                b'M' => out.message = value,
                _ => {}
            }
            rest = after;
        }
        out
    }
}

fn put_field(buf: &mut BytesMut, tag: u8, value: &str) {
    buf.put_u8(tag);
    // A NUL inside a field would end it early; PostgreSQL never sends one.
    buf.extend(value.bytes().filter(|b| *b != 0));
    buf.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::message::backend::Message;

    #[test]
    fn encodes_fields_postgres_protocol_can_read() {
        let mut buf = ErrorResponse::fatal(
            sqlstate::INVALID_PASSWORD,
            "password authentication failed for user \"bob\"",
        )
        .with_hint("check auth_file")
        .to_bytes();
        let Some(Message::ErrorResponse(body)) = Message::parse(&mut buf).unwrap() else {
            panic!("not an ErrorResponse")
        };
        use fallible_iterator::FallibleIterator;
        let fields: Vec<(u8, String)> = body
            .fields()
            .map(|f| {
                Ok((
                    f.type_(),
                    String::from_utf8_lossy(f.value_bytes()).into_owned(),
                ))
            })
            .collect()
            .unwrap();
        assert_eq!(
            fields,
            vec![
                (b'S', "FATAL".into()),
                (b'V', "FATAL".into()),
                (b'C', "28P01".into()),
                (
                    b'M',
                    "password authentication failed for user \"bob\"".into()
                ),
                (b'H', "check auth_file".into()),
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn parses_server_error_fields() {
        let bytes = ErrorResponse::fatal("3D000", "database \"x\" does not exist").to_bytes();
        let f = ServerMessageFields::parse(&bytes[5..]);
        assert_eq!(f.severity, "FATAL");
        assert_eq!(f.code, "3D000");
        assert_eq!(f.message, "database \"x\" does not exist");
        assert_eq!(
            ServerMessageFields::parse(b"Cabc"),
            ServerMessageFields::default()
        );
    }

    #[test]
    fn protocol_errors_map_to_sqlstates() {
        assert_eq!(
            ProtocolError::TooLong { len: 10, max: 5 }.sqlstate(),
            "54000"
        );
        assert_eq!(
            ProtocolError::UnexpectedMessage { tag: b'?' }.sqlstate(),
            "08P01"
        );
        assert_eq!(ProtocolError::InvalidLength { len: 2 }.sqlstate(), "08P01");
    }
}
