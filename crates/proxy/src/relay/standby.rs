//! Reads on standbys (`proxy.load_balance`, transaction pool mode): which
//! first requests of a transaction may run on one, the choice of the
//! server, and the run.
//!
//! - A transaction may go to a standby when its first request, whole in
//!   the client's buffer, only reads and leaves no transaction open (a
//!   simple Query, or extended-protocol messages up to their Sync, the
//!   statements they bind known by their text), or when it starts a
//!   read-only transaction (which then runs there whole: PostgreSQL
//!   refuses its writes on the primary as on a standby, 25006).
//! - The relay sends such a transaction one request at a time and waits
//!   for each one's ReadyForQuery: once the server is idle again nothing
//!   more goes to the standby, whatever the client pipelined behind.
//! - A standby read that got no reply byte (its connection had died, say)
//!   runs again on the primary: the client sees nothing of it.
//!
//! This module is the pure part (what a request is); the choice of the
//! server and the run are `txn`'s.

use super::features;
use super::statements::Tracker;
use crate::route::classify::{Class, Classifier};

/// First requests up to this size are looked at; bigger ones go to the
/// primary (the tracker streams Queries over 1 MiB unexamined).
const LOOKED_AT: usize = 1 << 20;

/// A transaction whose first request may run on a standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Balanced {
    /// The first request's length in the client's buffer.
    pub len: usize,
    /// It starts a read-only transaction (else it reads in autocommit).
    pub transaction: bool,
}

/// Whether the transaction at the head of `buf` may run on a standby.
/// `tracker` knows the client's prepared statements; `read_only_default`:
/// its `default_transaction_read_only` is on.
pub(super) fn first_request(
    buf: &[u8],
    tracker: &Tracker,
    classifier: &Classifier,
    read_only_default: bool,
) -> Option<Balanced> {
    let (tag, body, end) = message_at(buf, 0)?;
    if tag == b'Q' {
        if end > LOOKED_AT {
            return None;
        }
        let text = harmless_text(body)?;
        if classifier.autocommit(text) == Class::Read {
            return Some(Balanced {
                len: end,
                transaction: false,
            });
        }
        return classifier
            .starts_read_only(text, read_only_default)
            .then_some(Balanced {
                len: end,
                transaction: true,
            });
    }
    // Extended-protocol messages up to their Sync: what each Parse
    // prepares and each Bind runs.
    let mut parsed: Vec<(&[u8], &str)> = Vec::new();
    let mut bound: Vec<&str> = Vec::new();
    let mut executes = false;
    let mut at = 0;
    loop {
        let (tag, body, end) = message_at(buf, at)?;
        if end > LOOKED_AT {
            return None;
        }
        match tag {
            b'P' => {
                let (name, rest) = split_cstr(body)?;
                if !name.is_empty() && tracker.names_pin() {
                    return None;
                }
                let text = harmless_text(rest)?;
                parsed.retain(|(n, _)| *n != name);
                parsed.push((name, text));
            }
            b'B' => {
                let (_portal, rest) = split_cstr(body)?;
                let (name, _) = split_cstr(rest)?;
                if !name.is_empty() && tracker.names_pin() {
                    return None;
                }
                // The unnamed statement only when parsed here: another
                // transaction's may be on another server.
                let text = match parsed.iter().rev().find(|(n, _)| *n == name) {
                    Some((_, text)) => *text,
                    None if name.is_empty() => return None,
                    None => harmless_text(tracker.statement_text(name)?)?,
                };
                bound.push(text);
            }
            b'E' => executes = true,
            b'D' | b'C' | b'H' => {}
            b'S' => break,
            _ => return None,
        }
        at = end;
    }
    let len = message_at(buf, at)?.2;
    let texts = || parsed.iter().map(|(_, t)| *t).chain(bound.iter().copied());
    if parsed.is_empty() && bound.is_empty() {
        // Close and Describe of statements run nothing: any server answers
        // them (tokio-postgres closes a statement just before the next
        // request, which would take the primary otherwise).
        return (!executes).then_some(Balanced {
            len,
            transaction: false,
        });
    }
    if texts().all(|t| classifier.autocommit_prepared(t) == Class::Read) {
        return Some(Balanced {
            len,
            transaction: false,
        });
    }
    let starts = bound
        .first()
        .is_some_and(|t| classifier.starts_read_only(t, read_only_default));
    (starts && texts().all(|t| classifier.sql(t, read_only_default) == Class::Read)).then_some(
        Balanced {
            len,
            transaction: true,
        },
    )
}

/// Where the first request in `buf` ends, as the relay sends a standby's
/// transaction: after a Query, FunctionCall or Sync (`true`: the server
/// answers it with ReadyForQuery, to wait for), or after a Flush or
/// Terminate (`false`). `None` while no whole message ends one.
pub(super) fn unit_end(buf: &[u8]) -> Option<(usize, bool)> {
    let mut at = 0;
    loop {
        let (tag, _, end) = message_at(buf, at)?;
        match tag {
            b'Q' | b'F' | b'S' => return Some((end, true)),
            b'H' | b'X' => return Some((end, false)),
            _ => at = end,
        }
    }
}

/// Where the whole messages at the head of `buf` end.
pub(super) fn whole_prefix(buf: &[u8]) -> usize {
    let mut at = 0;
    while let Some((_, _, end)) = message_at(buf, at) {
        at = end;
    }
    at
}

/// The message at `at` in `buf`, when whole: (tag, body, end).
fn message_at(buf: &[u8], at: usize) -> Option<(u8, &[u8], usize)> {
    let header = buf.get(at..)?.first_chunk::<5>()?;
    let [tag, len @ ..] = *header;
    let len = u32::from_be_bytes(len) as usize;
    let end = (at + 1).checked_add(len)?;
    let body = buf.get(at + 5..end)?;
    Some((tag, body, end))
}

fn split_cstr(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = body.iter().position(|b| *b == 0)?;
    Some((body.get(..nul)?, body.get(nul + 1..)?))
}

/// The SQL text at the start of `body` (up to its NUL) when it leaves the
/// session as it found it: whatever would pin the client or touch its
/// settings stays on the primary (the hold releases only an unpinned,
/// unchanged client).
fn harmless_text(body: &[u8]) -> Option<&str> {
    let text = match body.iter().position(|b| *b == 0) {
        Some(nul) => body.get(..nul)?,
        None => body,
    };
    let fx = features::effects(text);
    if fx.pins.is_some() || fx.reads_back || fx.resets_settings || fx.drops_statements {
        return None;
    }
    std::str::from_utf8(text).ok()
}

/// True when the client's `default_transaction_read_only` is on: a plain
/// `BEGIN` starts a read-only transaction.
pub(super) fn read_only_default(wanted: &[(String, String)]) -> bool {
    wanted.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("default_transaction_read_only")
            && matches!(
                v.to_ascii_lowercase().as_str(),
                "on" | "true" | "yes" | "1" | "t" | "y"
            )
    })
}

/// An LSN as PostgreSQL prints it (`16/B374D848`).
pub(super) fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    Some(hi << 32 | lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(out: &mut Vec<u8>, tag: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum::<usize>() + 4;
        out.push(tag);
        out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        for p in parts {
            out.extend_from_slice(p);
        }
    }

    fn query(sql: &str) -> Vec<u8> {
        let mut out = Vec::new();
        msg(&mut out, b'Q', &[sql.as_bytes(), b"\0"]);
        out
    }

    /// Parse (named `stmt`, or unnamed), Bind, Execute, Sync.
    fn extended(stmt: &str, sql: &str) -> Vec<u8> {
        batch(&[(stmt, sql)])
    }

    /// Parse, Bind and Execute of each (statement name, SQL) in turn, then
    /// one Sync.
    fn batch(statements: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (stmt, sql) in statements {
            msg(
                &mut out,
                b'P',
                &[stmt.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"],
            );
            bind(&mut out, stmt);
        }
        msg(&mut out, b'S', &[]);
        out
    }

    /// What [`first_request`] gives for a first request of `len` bytes.
    fn balanced(len: usize, transaction: bool) -> Option<Balanced> {
        Some(Balanced { len, transaction })
    }

    fn bind(out: &mut Vec<u8>, stmt: &str) {
        msg(out, b'B', &[b"\0", stmt.as_bytes(), b"\0", b"\0\0\0\0\0\0"]);
        msg(out, b'E', &[b"\0", b"\0\0\0\0"]);
    }

    fn first(buf: &[u8]) -> Option<Balanced> {
        first_request(
            buf,
            &Tracker::new(100, 1 << 30),
            &Classifier::default(),
            false,
        )
    }

    #[test]
    fn reads_in_either_protocol_are_balanced_up_to_their_end() {
        let q = query("SELECT 1");
        let mut buf = q.clone();
        // What the client pipelined after it is not part of it.
        buf.extend_from_slice(&query("INSERT INTO t VALUES (1)"));
        assert_eq!(first(&buf), balanced(q.len(), false));
        for stmt in ["", "s1"] {
            let e = extended(stmt, "SELECT abalance FROM pgbench_accounts WHERE aid = $1");
            let mut buf = e.clone();
            buf.extend_from_slice(&query("DELETE FROM t"));
            assert_eq!(first(&buf), balanced(e.len(), false), "{stmt:?}");
            // Not before its Sync is in.
            assert_eq!(first(e.get(..e.len() - 5).unwrap_or_default()), None);
        }
        let t = query("BEGIN READ ONLY");
        assert_eq!(first(&t), balanced(t.len(), true));
        let e = batch(&[("", "BEGIN READ ONLY"), ("", "SELECT 1")]);
        assert_eq!(first(&e), balanced(e.len(), true));
    }

    #[test]
    fn writes_unknown_statements_and_session_changes_are_not_balanced() {
        for buf in [
            query("INSERT INTO t VALUES (1)"),
            query("SET search_path = a"),
            query("SELECT set_config('a.b', '1', false)"),
            query("BEGIN"),
            extended("", "UPDATE t SET x = 1"),
            extended("s", "SELECT nextval('s')"),
            // A read-only transaction's start must be what runs first.
            batch(&[("", "SELECT 1"), ("", "BEGIN READ ONLY")]),
        ] {
            assert_eq!(first(&buf), None, "{buf:?}");
        }
        // A Bind of a statement the client never prepared, or of the
        // unnamed one parsed in an earlier transaction.
        for stmt in ["", "nope"] {
            let mut e = Vec::new();
            bind(&mut e, stmt);
            msg(&mut e, b'S', &[]);
            assert_eq!(first(&e), None, "{stmt:?}");
        }
        // Named statements with max_prepared_statements = 0 pin.
        let e = extended("s1", "SELECT 1");
        let pinning = Tracker::new(0, 1 << 30);
        assert_eq!(
            first_request(&e, &pinning, &Classifier::default(), false),
            None
        );
        // An Execute of no statement bound here.
        let mut e = Vec::new();
        msg(&mut e, b'E', &[b"\0", b"\0\0\0\0"]);
        msg(&mut e, b'S', &[]);
        assert_eq!(first(&e), None);
        // A FunctionCall is not looked into.
        let mut f = Vec::new();
        msg(&mut f, b'F', &[b"\0\0\0\x01\0\0\0\0\0\0"]);
        assert_eq!(first(&f), None);
    }

    #[test]
    fn closing_a_statement_runs_anywhere() {
        let mut e = Vec::new();
        msg(&mut e, b'C', &[b"Ss3\0"]);
        msg(&mut e, b'S', &[]);
        let close = e.len();
        bind(&mut e, "s1");
        msg(&mut e, b'S', &[]);
        assert_eq!(first(&e), balanced(close, false));
    }

    #[test]
    fn a_plain_begin_is_read_only_with_default_transaction_read_only() {
        let b = query("BEGIN");
        let c = Classifier::default();
        let t = Tracker::new(100, 1 << 30);
        let on = vec![("default_transaction_read_only".to_owned(), "on".to_owned())];
        assert!(read_only_default(&on));
        assert!(!read_only_default(&[]));
        assert_eq!(
            first_request(&b, &t, &c, read_only_default(&on)),
            balanced(b.len(), true)
        );
    }

    #[test]
    fn units_end_at_what_the_server_answers() {
        let mut buf = extended("", "SELECT 1");
        let one = buf.len();
        buf.extend_from_slice(&query("SELECT 2"));
        assert_eq!(unit_end(&buf), Some((one, true)));
        let mut h = Vec::new();
        msg(&mut h, b'P', &[b"\0SELECT 1\0\0\0"]);
        msg(&mut h, b'H', &[]);
        assert_eq!(unit_end(&h), Some((h.len(), false)));
        assert_eq!(unit_end(h.get(..h.len() - 1).unwrap_or_default()), None);
        // Only whole messages are sent on while a unit is incomplete.
        let mut e = Vec::new();
        msg(&mut e, b'P', &[b"\0SELECT 1\0\0\0"]);
        let parse = e.len();
        msg(&mut e, b'E', &[b"\0", b"\0\0\0\0"]);
        assert_eq!(
            whole_prefix(e.get(..e.len() - 2).unwrap_or_default()),
            parse
        );
        assert_eq!(whole_prefix(&e), e.len());
    }

    #[test]
    fn lsns_parse_as_postgresql_prints_them() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0\n"), Some(0));
        assert_eq!(parse_lsn("nope"), None);
    }
}
