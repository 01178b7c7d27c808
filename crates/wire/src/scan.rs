//! Streaming message boundaries for the proxy's data path.
//!
//! The proxy forwards bytes as they arrive; it only needs to know where each
//! message starts, its type, and the bodies of a few small messages
//! (ReadyForQuery, ParameterStatus). [`Scanner`] walks chunks with that in
//! mind: it keeps state across chunk boundaries, never copies a body it was
//! not asked for, and enforces the maximum message length from the header,
//! so a message is refused before any of its body is read.

use crate::ProtocolError;

/// Bodies longer than this are never delivered to [`Observer::body`].
pub const CAPTURE_LIMIT: u32 = 64 * 1024;

/// What to do after a message start was reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep scanning.
    Continue,
    /// Stop before this message: it is not consumed, and [`Scanner::scan`]
    /// returns its offset.
    Stop,
}

/// Receives what a [`Scanner`] finds in a chunk.
pub trait Observer {
    /// A message of type `tag` starts. Returning [`Flow::Stop`] leaves it
    /// unconsumed (`scan` returns where it starts); an error (say, a type not
    /// allowed from this peer) ends the scan.
    fn start(&mut self, tag: u8) -> Result<Flow, ProtocolError>;

    /// Like [`Observer::start`], with the offset in the chunk where the
    /// message starts (for observers that edit the chunk afterwards).
    fn start_at(&mut self, tag: u8, _offset: usize) -> Result<Flow, ProtocolError> {
        self.start(tag)
    }

    /// Whether [`Observer::body`] should receive bodies of messages of this type.
    fn wants_body(&self, _tag: u8) -> bool {
        false
    }

    /// The complete body of a message whose type [`Observer::wants_body`] asked for.
    fn body(&mut self, _tag: u8, _body: &[u8]) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting the type byte of the next message.
    Tag,
    /// Inside the 4-byte length field.
    Len { tag: u8, got: u8, bytes: [u8; 4] },
    /// Inside a body with `remaining` bytes to go.
    Body {
        tag: u8,
        remaining: u32,
        capture: bool,
    },
}

/// Tracks message boundaries of one direction of one connection.
#[derive(Debug, Clone)]
pub struct Scanner {
    max_body: u32,
    state: State,
    captured: Vec<u8>,
}

impl Scanner {
    /// A scanner refusing message bodies longer than `max_body` bytes.
    pub fn new(max_body: u32) -> Self {
        Scanner {
            max_body,
            state: State::Tag,
            captured: Vec::new(),
        }
    }

    /// True between messages: bytes injected now would not split one.
    pub fn at_boundary(&self) -> bool {
        self.state == State::Tag
    }

    /// Scans `chunk`, the next bytes of the stream.
    ///
    /// Returns `Ok(None)` when the whole chunk was consumed, or
    /// `Ok(Some(offset))` when the observer stopped at the message starting
    /// at `offset` (that message is not consumed: scan `&chunk[offset..]`
    /// again to go on).
    pub fn scan<O: Observer>(
        &mut self,
        chunk: &[u8],
        obs: &mut O,
    ) -> Result<Option<usize>, ProtocolError> {
        let mut pos = 0usize;
        while let Some(&byte) = chunk.get(pos) {
            match self.state {
                State::Tag => {
                    let tag = byte;
                    if obs.start_at(tag, pos)? == Flow::Stop {
                        return Ok(Some(pos));
                    }
                    pos += 1;
                    self.state = State::Len {
                        tag,
                        got: 0,
                        bytes: [0; 4],
                    };
                }
                State::Len {
                    tag,
                    mut got,
                    mut bytes,
                } => {
                    // Fast path: the whole length field is in this chunk.
                    if got == 0
                        && let Some(field) = chunk.get(pos..pos + 4)
                    {
                        bytes.copy_from_slice(field);
                        pos += 4;
                        got = 4;
                    } else {
                        if let Some(slot) = bytes.get_mut(got as usize) {
                            *slot = byte;
                        }
                        pos += 1;
                        got += 1;
                    }
                    if got < 4 {
                        self.state = State::Len { tag, got, bytes };
                        continue;
                    }
                    let body_len =
                        crate::frame::body_len(u32::from_be_bytes(bytes), self.max_body)?;
                    let capture = body_len <= CAPTURE_LIMIT && obs.wants_body(tag);
                    if capture {
                        self.captured.clear();
                        // The common case: the body is all here; hand it over in place.
                        if let Some(body) = chunk.get(pos..pos + body_len as usize) {
                            obs.body(tag, body);
                            pos += body_len as usize;
                            self.state = State::Tag;
                            continue;
                        }
                    }
                    self.state = State::Body {
                        tag,
                        remaining: body_len,
                        capture,
                    };
                    if body_len == 0 {
                        self.state = State::Tag;
                    }
                }
                State::Body {
                    tag,
                    remaining,
                    capture,
                } => {
                    let take = remaining.min((chunk.len() - pos) as u32) as usize;
                    if capture && let Some(part) = chunk.get(pos..pos + take) {
                        self.captured.extend_from_slice(part);
                    }
                    pos += take;
                    let remaining = remaining - take as u32;
                    if remaining == 0 {
                        if capture {
                            let body = std::mem::take(&mut self.captured);
                            obs.body(tag, &body);
                            self.captured = body;
                        }
                        self.state = State::Tag;
                    } else {
                        self.state = State::Body {
                            tag,
                            remaining,
                            capture,
                        };
                    }
                }
            }
        }
        Ok(None)
    }
}

/// Type bytes a client may send after startup (PostgreSQL 15's frontend
/// messages, `p` included for GSS/SASL continuation that never reaches a
/// server through pgwarden but is valid protocol).
pub fn is_frontend_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'B' | b'C'
            | b'c'
            | b'd'
            | b'D'
            | b'E'
            | b'f'
            | b'F'
            | b'H'
            | b'P'
            | b'p'
            | b'Q'
            | b'S'
            | b'X'
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;
    use proptest::prelude::*;

    #[derive(Default)]
    struct Record {
        starts: Vec<u8>,
        bodies: Vec<(u8, Vec<u8>)>,
        stop_at: Option<u8>,
    }

    impl Observer for Record {
        fn start(&mut self, tag: u8) -> Result<Flow, ProtocolError> {
            if Some(tag) == self.stop_at {
                return Ok(Flow::Stop);
            }
            if !tag.is_ascii_alphabetic() {
                return Err(ProtocolError::UnexpectedMessage { tag });
            }
            self.starts.push(tag);
            Ok(Flow::Continue)
        }
        fn wants_body(&self, tag: u8) -> bool {
            tag == b'Z' || tag == b'S'
        }
        fn body(&mut self, tag: u8, body: &[u8]) {
            self.bodies.push((tag, body.to_vec()));
        }
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn finds_messages_and_small_bodies() {
        let mut stream = msg(b'S', b"TimeZone\0UTC\0");
        stream.extend(msg(b'D', &[7u8; 300]));
        stream.extend(msg(b'Z', b"I"));
        let mut rec = Record::default();
        let mut sc = Scanner::new(1 << 20);
        assert_eq!(sc.scan(&stream, &mut rec).unwrap(), None);
        assert_eq!(rec.starts, b"SDZ");
        assert_eq!(
            rec.bodies,
            vec![(b'S', b"TimeZone\0UTC\0".to_vec()), (b'Z', b"I".to_vec())]
        );
        assert!(sc.at_boundary());
    }

    #[test]
    fn stops_before_a_message_and_resumes() {
        let mut stream = msg(b'Q', b"SELECT 1\0");
        let x_at = stream.len();
        stream.extend(msg(b'X', b""));
        let mut rec = Record {
            stop_at: Some(b'X'),
            ..Default::default()
        };
        let mut sc = Scanner::new(100);
        assert_eq!(sc.scan(&stream, &mut rec).unwrap(), Some(x_at));
        assert_eq!(rec.starts, b"Q");
        assert!(sc.at_boundary());
    }

    #[test]
    fn refuses_oversize_before_the_body() {
        let mut rec = Record::default();
        let mut sc = Scanner::new(10);
        let err = sc.scan(b"D\0\0\0\x10", &mut rec).unwrap_err();
        assert_eq!(err, ProtocolError::TooLong { len: 12, max: 10 });
        let mut sc = Scanner::new(10);
        assert_eq!(
            sc.scan(b"D\0\0\0\x02", &mut rec).unwrap_err(),
            ProtocolError::InvalidLength { len: 2 }
        );
    }

    #[test]
    fn a_big_body_streams_without_capture() {
        let big = vec![1u8; 5 * 1024 * 1024];
        let stream = msg(b'D', &big);
        let mut rec = Record::default();
        let mut sc = Scanner::new(u32::MAX);
        for chunk in stream.chunks(8192) {
            assert_eq!(sc.scan(chunk, &mut rec).unwrap(), None);
            assert!(sc.captured.capacity() == 0);
        }
        assert!(sc.at_boundary());
        assert_eq!(rec.starts, b"D");
    }

    proptest! {
        /// Any split of a stream into chunks yields the same messages and bodies.
        #[test]
        fn chunking_does_not_matter(
            msgs in proptest::collection::vec((prop_oneof![Just(b'Z'), Just(b'S'), Just(b'D'), Just(b'C')],
                                              proptest::collection::vec(any::<u8>(), 0..40)), 0..20),
            cuts in proptest::collection::vec(1usize..17, 0..40),
        ) {
            let stream: Vec<u8> = msgs.iter().flat_map(|(t, b)| msg(*t, b)).collect();
            let mut whole = Record::default();
            Scanner::new(1000).scan(&stream, &mut whole).unwrap();
            let mut parts = Record::default();
            let mut sc = Scanner::new(1000);
            let mut rest = &stream[..];
            let mut cuts = cuts.into_iter().cycle();
            while !rest.is_empty() {
                let n = cuts.next().unwrap_or(3).min(rest.len());
                sc.scan(&rest[..n], &mut parts).unwrap();
                rest = &rest[n..];
            }
            prop_assert_eq!(&whole.starts, &parts.starts);
            prop_assert_eq!(&whole.bodies, &parts.bodies);
            prop_assert_eq!(whole.starts.len(), msgs.len());
            prop_assert!(sc.at_boundary());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut rec = Record::default();
            let _ = Scanner::new(64).scan(&bytes, &mut rec);
        }
    }
}
