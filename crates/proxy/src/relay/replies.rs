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
    /// The length of the chunk being scanned.
    pub(super) chunk_len: usize,
    /// Where in it the pids of NotificationResponses start (see
    /// [`tell_own_notifications`]).
    pub(super) notify_pids: Vec<usize>,
}

impl Observer for Replies<'_, '_> {
    fn start(&mut self, tag: u8) -> Result<Flow, ProtocolError> {
        self.last_tag = tag;
        Ok(Flow::Continue)
    }

    fn start_at(&mut self, tag: u8, offset: usize) -> Result<Flow, ProtocolError> {
        if tag == b'A' {
            // A notification's pid is rewritten in place: it waits for
            // more bytes unless the whole field is in this chunk.
            if offset + 9 > self.chunk_len {
                return Ok(Flow::Stop);
            }
            self.notify_pids.push(offset + 5);
        }
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

/// Gives the NotificationResponses whose pid fields start at `at` in
/// `chunk` the pid the client was told (`own`) where they come from its
/// own server (`server_pid`): its own notifications, as a direct
/// connection names them, so a listener skipping those by pid still does.
/// Another client's keep the pid of the server that ran its transaction:
/// which of that server's clients it was, the proxy cannot know (the
/// notification may arrive long after the server went to another).
/// Before [`apply_edits`], whose cuts move them.
pub(super) fn tell_own_notifications(chunk: &mut [u8], at: &[usize], server_pid: i32, own: i32) {
    for &at in at {
        let Some(field) = chunk.get_mut(at..at + 4) else {
            continue;
        };
        if *field == server_pid.to_be_bytes() {
            field.copy_from_slice(&own.to_be_bytes());
        }
    }
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

    /// A NotificationResponse from server pid `pid` on channel `c`.
    fn notification(pid: i32, channel: &str) -> Vec<u8> {
        let mut body = pid.to_be_bytes().to_vec();
        body.extend_from_slice(channel.as_bytes());
        body.extend_from_slice(b"\0\0");
        let mut m = vec![b'A'];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn a_notification_waits_for_its_whole_pid_and_then_names_its_own_client() {
        let activity = Activity::default();
        let mut tracker = Tracker::new(10, 1 << 20);
        let mut statements = ServerStatements::default();
        let (tracker, statements) = (Mutex::new(&mut tracker), Mutex::new(&mut statements));
        let (mut params, mut applied, mut settled) = (Vec::new(), Vec::new(), None);
        let (mut wanted, mut memo) = (Vec::new(), checkout::Memo::default());
        let mut replies = Replies {
            activity: &activity,
            tracker: &tracker,
            statements: &statements,
            reports: pump::Reports {
                status: b'I',
                params: &mut params,
                applied: &mut applied,
                settled: &mut settled,
            },
            last_tag: 0,
            wanted: &mut wanted,
            memo: &mut memo,
            edits: Vec::new(),
            chunk_len: 0,
            notify_pids: Vec::new(),
        };
        let mut scanner = pgwarden_wire::scan::Scanner::new(u32::MAX);
        // A first chunk ends inside the pid: the notification waits.
        let mut stream = b"N\0\0\0\x05x".to_vec();
        let at = stream.len();
        // From the client's own server (4242), then from another's.
        stream.extend(notification(4242, "jobs"));
        stream.extend(notification(999, "jobs"));
        let first = stream.get(..at + 7).unwrap();
        replies.chunk_len = first.len();
        assert_eq!(scanner.scan(first, &mut replies).unwrap(), Some(at));
        assert!(replies.notify_pids.is_empty());
        // Whole, with the rest: both pids are found; its own is told as
        // the pid the client was given, the other's stays.
        let mut rest = stream.get(at..).unwrap().to_vec();
        replies.chunk_len = rest.len();
        assert_eq!(scanner.scan(&rest, &mut replies).unwrap(), None);
        assert_eq!(replies.notify_pids, [5, 20]);
        tell_own_notifications(&mut rest, &replies.notify_pids, 4242, 1_000_001);
        let mut told = notification(1_000_001, "jobs");
        told.extend(notification(999, "jobs"));
        assert_eq!(rest, told);
    }

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
