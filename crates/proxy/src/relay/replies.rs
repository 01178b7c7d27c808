//! The server's side of a transaction-mode relay: what its replies tell the
//! client's state (the reply queue, transaction status, tracked settings,
//! statements a server prepared), and the edits that replies for messages
//! the proxy synthesized or skipped need before they reach the client.

use std::sync::Mutex;

use bytes::BytesMut;
use pgwarden_wire::ProtocolError;
use pgwarden_wire::scan::{Flow, Observer};

use super::pump;
use super::statements::{Edit, ServerStatements, Tracker};
use crate::frontend::clients::Activity;
use crate::pool::checkout;

/// The server's replies during a transaction.
pub(super) struct Replies<'a, 'm> {
    pub(super) activity: &'a Activity,
    pub(super) tracker: &'a Mutex<&'m mut Tracker>,
    pub(super) statements: &'a Mutex<&'m mut ServerStatements>,
    pub(super) reports: pump::Reports<'a>,
    pub(super) last_tag: u8,
    pub(super) wanted: &'a mut Vec<(String, String)>,
    pub(super) memo: &'a mut checkout::Memo,
    /// Where the chunk being scanned needs changing.
    pub(super) edits: Vec<(usize, Edit)>,
}

impl Observer for Replies<'_, '_> {
    fn start(&mut self, tag: u8) -> Result<Flow, ProtocolError> {
        self.last_tag = tag;
        Ok(Flow::Continue)
    }

    fn start_at(&mut self, tag: u8, offset: usize) -> Result<Flow, ProtocolError> {
        self.last_tag = tag;
        if tag == b'G' {
            let syncs = self.activity.copy_in_started();
            lock(self.tracker).copy_in_started(syncs);
        }
        // Only these replies move the tracker; rows and the rest pass
        // without touching it.
        if !Tracker::follows_reply(tag) {
            return Ok(Flow::Continue);
        }
        let mut tracker = lock(self.tracker);
        let edit = tracker.reply(tag, &mut lock(self.statements));
        if tag == b'E' {
            self.activity.unanswered(tracker.take_skipped());
        }
        drop(tracker);
        if edit != Edit::Keep {
            self.edits.push((offset, edit));
        }
        Ok(Flow::Continue)
    }

    fn wants_body(&self, tag: u8) -> bool {
        tag == b'Z' || tag == b'S'
    }

    fn body(&mut self, tag: u8, body: &[u8]) {
        self.reports.body(tag, body, self.activity);
        if tag == b'Z' {
            lock(self.tracker).ready(self.reports.status);
            return;
        }
        // A tracked setting the client changed follows it to its next server.
        let mut parts = body.split(|b| *b == 0);
        if let (Some(name), Some(value)) = (parts.next(), parts.next()) {
            let name = String::from_utf8_lossy(name);
            if super::features::is_tracked(&name) {
                let value = String::from_utf8_lossy(value).into_owned();
                self.wanted.retain(|(k, _)| !k.eq_ignore_ascii_case(&name));
                self.wanted.push((name.into_owned(), value));
                self.memo.settings_changed();
            }
        }
    }
}

/// The two halves of the relay run in one task, never at once: the locks
/// are never contended (they make the shared state `Send`).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies the edits the reply scan asked for to the chunk: cuts (of
/// five-byte messages) by copying; a cut running past the
/// chunk's end continues in the next one (`carry`).
pub(super) fn apply_edits(buf: &mut BytesMut, edits: &[(usize, Edit)], carry: &mut usize) {
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    if *carry > 0 {
        let end = (*carry).min(buf.len());
        cuts.push((0, end));
        *carry -= end;
    }
    for &(at, edit) in edits {
        match edit {
            Edit::Drop => {
                let end = at + 5;
                if end > buf.len() {
                    *carry = end - buf.len();
                }
                cuts.push((at, end.min(buf.len())));
            }
            Edit::Keep => {}
        }
    }
    if cuts.is_empty() {
        return;
    }
    let mut kept = BytesMut::with_capacity(buf.capacity());
    let mut from = 0;
    for (start, end) in cuts {
        kept.extend_from_slice(buf.get(from..start).unwrap_or_default());
        from = end;
    }
    kept.extend_from_slice(buf.get(from..).unwrap_or_default());
    *buf = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_cut_within_and_across_chunks() {
        // ParseComplete, CloseComplete, BindComplete.
        let mut buf = BytesMut::from(&b"1\0\0\0\x043\0\0\0\x042\0\0\0\x04"[..]);
        let mut carry = 0;
        apply_edits(&mut buf, &[(5, Edit::Drop)], &mut carry);
        assert_eq!(&buf[..], b"1\0\0\0\x042\0\0\0\x04");
        assert_eq!(carry, 0);
        // A dropped message split over two chunks.
        let mut first = BytesMut::from(&b"2\0\0\0\x041\0\0"[..]);
        apply_edits(&mut first, &[(5, Edit::Drop)], &mut carry);
        assert_eq!(&first[..], b"2\0\0\0\x04");
        assert_eq!(carry, 2);
        let mut second = BytesMut::from(&b"\0\x04Z\0\0\0\x05I"[..]);
        apply_edits(&mut second, &[], &mut carry);
        assert_eq!(&second[..], b"Z\0\0\0\x05I");
        assert_eq!(carry, 0);
    }
}
