#![allow(clippy::indexing_slicing)]

use super::*;
use postgres_protocol::message::frontend;

fn parse(name: &str, query: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::parse(name, query, [23u32], &mut b).unwrap();
    b.to_vec()
}

fn bind(stmt: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::bind(
        "",
        stmt,
        [1i16],
        [&b"7"[..]],
        |v, buf| {
            buf.extend_from_slice(v);
            Ok(postgres_protocol::IsNull::No)
        },
        [1i16],
        &mut b,
    )
    .map_err(|_| ())
    .unwrap();
    b.to_vec()
}

fn execute_sync() -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::execute("", 0, &mut b).unwrap();
    frontend::sync(&mut b);
    b.to_vec()
}

fn close(name: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::close(b'S', name, &mut b).unwrap();
    b.to_vec()
}

/// (type, body) of each message in `bytes`.
fn messages(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        out.push((rest[0], rest[5..1 + len].to_vec()));
        rest = &rest[1 + len..];
    }
    out
}

/// The message types of `m`, in order.
fn types(m: &[(u8, Vec<u8>)]) -> Vec<u8> {
    m.iter().map(|x| x.0).collect()
}

/// The statement the first message of `out`, one of type `tag`, names.
fn first_names(tag: u8, out: &[u8]) -> String {
    let m = messages(out);
    assert_eq!(m[0].0, tag, "the first message's type");
    stmt_of(tag, &m[0].1)
}

/// The statement name a Parse, Bind or Describe (statement) body names.
fn stmt_of(tag: u8, body: &[u8]) -> String {
    let field = match tag {
        b'P' => body.split(|b| *b == 0).next().unwrap(),
        b'B' => body.split(|b| *b == 0).nth(1).unwrap(),
        b'D' | b'C' => body[1..].split(|b| *b == 0).next().unwrap(),
        _ => panic!("no statement in {}", tag as char),
    };
    String::from_utf8(field.to_vec()).unwrap()
}

/// Feeds `input` whole; returns what goes to the server.
/// A tracker keeping up to `max` prepared statements (messages up to
/// 1 MiB), and its server connection's statements, none yet.
fn tracker(max: usize) -> (Tracker, ServerStatements) {
    (Tracker::new(max, 1 << 20), ServerStatements::default())
}

fn send(t: &mut Tracker, s: &mut ServerStatements, input: &[u8]) -> Vec<u8> {
    let activity = Activity::default();
    let fed = t.feed(input, s, &activity).unwrap();
    assert_eq!(fed.upto, input.len(), "all consumed");
    fed.rewritten.map_or_else(|| input.to_vec(), |b| b.to_vec())
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// [`tracker`] and the activity its feeds count in.
fn counted(max: usize) -> (Tracker, ServerStatements, Activity) {
    let (t, s) = tracker(max);
    (t, s, Activity::default())
}

/// A [`tracker`] whose client has sent the Parses of `statements` (name,
/// SQL), in one read.
fn parsed(max: usize, statements: &[(&str, &str)]) -> (Tracker, ServerStatements) {
    let (mut t, mut s) = tracker(max);
    let parses: Vec<Vec<u8>> = statements.iter().map(|(n, q)| parse(n, q)).collect();
    send_all(&mut t, &mut s, &parses);
    (t, s)
}

/// Parse of `sql` as statement `name`, Bind of it, Execute and Sync.
fn parse_bind_run(name: &str, sql: &str) -> [Vec<u8>; 3] {
    [parse(name, sql), bind(name), execute_sync()]
}

/// [`send`] of `parts`, one after the other in one read.
fn send_all(t: &mut Tracker, s: &mut ServerStatements, parts: &[Vec<u8>]) -> Vec<u8> {
    send(t, s, &cat(parts))
}

/// The server's replies, one message of each type in `tags`, in order.
fn replies(t: &mut Tracker, s: &mut ServerStatements, tags: &[u8]) {
    for &tag in tags {
        t.reply(tag, s);
    }
}

#[test]
fn messages_without_statement_names_pass_uncopied() {
    let (mut t, mut s) = tracker(200);
    let mut input = BytesMut::new();
    frontend::query("SELECT 1", &mut input).unwrap();
    input.extend_from_slice(&parse("", "SELECT $1"));
    input.extend_from_slice(&bind(""));
    input.extend_from_slice(&execute_sync());
    let activity = Activity::default();
    let fed = t.feed(&input, &mut s, &activity).unwrap();
    assert!(fed.rewritten.is_none());
    assert_eq!(fed.upto, input.len());
    assert_eq!(activity.owed(), 2, "a Query and a Sync are owed replies");
    assert_eq!(t.reply(b'1', &mut s), Edit::Keep);
}

#[test]
fn a_statement_moves_with_its_client_to_another_server() {
    let mut t = Tracker::new(200, 1 << 20);
    let mut a = ServerStatements::default();
    // First transaction, on server a: Parse goes out under a's name.
    t.begin(false);
    let out = send_all(&mut t, &mut a, &parse_bind_run("s1", "SELECT $1"));
    let m = messages(&out);
    assert_eq!(types(&m), b"PBES");
    assert_eq!(stmt_of(b'P', &m[0].1), "pgwarden_1");
    assert_eq!(stmt_of(b'B', &m[1].1), "pgwarden_1");
    assert_eq!(
        t.reply(b'1', &mut a),
        Edit::Keep,
        "the client's ParseComplete"
    );
    t.reply(b'Z', &mut a);

    // Next transaction on server b, which never saw it: a Parse goes first
    // and its ParseComplete is dropped.
    let mut b = ServerStatements::default();
    t.begin(false);
    let out = send_all(&mut t, &mut b, &[bind("s1"), execute_sync()]);
    let m = messages(&out);
    assert_eq!(types(&m), b"PBES");
    assert_eq!(stmt_of(b'P', &m[0].1), stmt_of(b'B', &m[1].1));
    assert_eq!(t.reply(b'1', &mut b), Edit::Drop);
    assert_eq!(t.reply(b'2', &mut b), Edit::Keep);

    // Another client parsing the same text on b: analysed afresh (the
    // schema may have changed since), under a new name, b's old one closed.
    let mut t2 = Tracker::new(200, 1 << 20);
    let old = stmt_of(b'P', &m[0].1);
    let out = send_all(&mut t2, &mut b, &parse_bind_run("other", "SELECT $1"));
    let m = messages(&out);
    assert_eq!(types(&m), b"PCBES");
    let fresh = stmt_of(b'P', &m[0].1);
    assert_ne!(fresh, old);
    assert_eq!(stmt_of(b'C', &m[1].1), old);
    assert_eq!(stmt_of(b'B', &m[2].1), fresh);
    assert_eq!(t2.reply(b'1', &mut b), Edit::Keep, "its ParseComplete");
    assert_eq!(t2.reply(b'3', &mut b), Edit::Drop, "the old one's close");
    t2.reply(b'Z', &mut b);
    // The first client's statement is the fresh one too.
    assert_eq!(
        stmt_of(b'B', &messages(&send(&mut t, &mut b, &bind("s1")))[0].1),
        fresh
    );
    assert_eq!(b.len(), 1);
}

#[test]
fn a_parse_the_server_skips_keeps_the_statement_it_had() {
    // Client 1 leaves "SELECT $1" on the server; client 2's Parse of it
    // comes after an error in its batch, so the server skips the Parse and
    // the Close of the old name: the server still has the old one.
    let mut s = ServerStatements::default();
    let mut t1 = Tracker::new(200, 1 << 20);
    let out = send_all(&mut t1, &mut s, &[parse("a", "SELECT $1"), execute_sync()]);
    let old = first_names(b'P', &out);
    replies(&mut t1, &mut s, b"1Z");
    let mut t2 = Tracker::new(200, 1 << 20);
    send_all(
        &mut t2,
        &mut s,
        &[bind("a_missing"), parse("b", "SELECT $1"), execute_sync()],
    );
    replies(&mut t2, &mut s, b"EZ");
    assert_eq!(t2.statements(), 0, "client 2 has no statement");
    let out = send(&mut t1, &mut s, &bind("a"));
    assert_eq!(first_names(b'B', &out), old, "no Parse needed");
    // The Parse itself failing (the table is gone) keeps the old one too.
    let mut t3 = Tracker::new(200, 1 << 20);
    send_all(&mut t3, &mut s, &[parse("c", "SELECT $1"), execute_sync()]);
    replies(&mut t3, &mut s, b"EZ");
    let out = send(&mut t1, &mut s, &bind("a"));
    assert_eq!(first_names(b'B', &out), old);
    assert_eq!(s.len(), 1);
}

#[test]
fn a_failed_parse_leaves_no_statement_behind() {
    let (mut t, mut s) = tracker(200);
    send_all(&mut t, &mut s, &parse_bind_run("bad", "SELEC $1"));
    assert_eq!(s.len(), 1);
    // The server's answer: ErrorResponse, then ReadyForQuery after the Sync.
    replies(&mut t, &mut s, b"EZ");
    assert!(s.is_empty(), "the server has no such statement");
    assert_eq!(t.statements(), 0, "nor has the client");
    // A Bind of it now is passed as it is: the server says it does not exist.
    let out = send(&mut t, &mut s, &bind("bad"));
    assert_eq!(out, bind("bad"));
}

#[test]
fn an_error_skips_only_the_rest_of_its_own_batch() {
    let (mut t, mut s) = tracker(200);
    // Batch 0 fails at its Execute; batch 1 prepares a statement.
    let input = cat(&[
        parse("a", "SELECT 1/$1"),
        bind("a"),
        execute_sync(),
        parse("b", "SELECT 2"),
        execute_sync(),
    ]);
    send(&mut t, &mut s, &input);
    assert_eq!(t.reply(b'1', &mut s), Edit::Keep);
    replies(&mut t, &mut s, b"2EZ");
    assert_eq!(t.statements(), 2, "a's Parse had succeeded");
    assert_eq!(
        t.reply(b'1', &mut s),
        Edit::Keep,
        "b's ParseComplete is b's"
    );
    t.reply(b'Z', &mut s);
    assert_eq!(s.len(), 2);
}

#[test]
fn the_least_recently_used_statement_is_closed_when_a_server_is_full() {
    let (mut t, mut s) = parsed(2, &[("a", "SELECT 1"), ("b", "SELECT 2")]);
    send(&mut t, &mut s, &bind("a"));
    let out = send(&mut t, &mut s, &parse("c", "SELECT 3"));
    let m = messages(&out);
    assert_eq!(types(&m), b"CP");
    assert_eq!(
        stmt_of(b'C', &m[0].1),
        "pgwarden_2",
        "b was used least recently"
    );
    assert_eq!(s.len(), 2);
    for _ in 0..2 {
        t.reply(b'1', &mut s);
    }
    assert_eq!(
        t.reply(b'3', &mut s),
        Edit::Drop,
        "the eviction's CloseComplete"
    );
    assert_eq!(t.reply(b'1', &mut s), Edit::Keep, "c's ParseComplete");
}

#[test]
fn closing_a_statement_keeps_it_on_the_server() {
    let (mut t, mut s) = parsed(200, &[("a", "SELECT 1")]);
    let out = send(&mut t, &mut s, &close("a"));
    assert_eq!(first_names(b'C', &out), "pgwarden_none");
    assert_eq!(t.statements(), 0);
    assert_eq!(s.len(), 1);
    t.reply(b'1', &mut s);
    assert_eq!(t.reply(b'3', &mut s), Edit::Keep);
}

#[test]
fn names_of_the_proxys_own_never_reach_a_server() {
    let (mut t, mut s) = parsed(200, &[("x", "SELECT 1")]);
    let out = send(&mut t, &mut s, &bind("pgwarden_1"));
    assert_eq!(first_names(b'B', &out), "pgwarden_none");
}

#[test]
fn half_a_message_waits_for_the_rest() {
    let (mut t, mut s) = tracker(200);
    let p = parse("a", "SELECT 1");
    let input = cat(&[execute_sync(), p.clone()]);
    let cut = input.len() - 3;
    assert_eq!(t.start(&p[..4]), Start::NeedMore(5));
    assert_eq!(t.start(&p[..p.len() - 1]), Start::NeedMore(p.len()));
    assert_eq!(t.start(&p), Start::Go);
    let activity = Activity::default();
    let fed = t.feed(&input[..cut], &mut s, &activity).unwrap();
    assert_eq!(fed.upto, execute_sync().len());
    assert!(fed.rewritten.is_none());
    assert!(t.at_boundary());
    // A streamed message (CopyData) goes on in parts.
    let mut copy = vec![b'd'];
    copy.extend_from_slice(&104u32.to_be_bytes());
    copy.extend_from_slice(&[9u8; 100]);
    let fed = t.feed(&copy[..50], &mut s, &activity).unwrap();
    assert_eq!(fed.upto, 50);
    assert!(!t.at_boundary(), "half a CopyData is at the server");
    let fed = t.feed(&copy[50..], &mut s, &activity).unwrap();
    assert_eq!(fed.upto, copy.len() - 50);
    assert!(t.at_boundary());
}

#[test]
fn terminate_and_bad_messages_end_the_feed() {
    let mut t = Tracker::new(200, 100);
    let mut s = ServerStatements::default();
    let activity = Activity::default();
    let mut input = execute_sync();
    let at = input.len();
    input.extend_from_slice(b"X\0\0\0\x04");
    let fed = t.feed(&input, &mut s, &activity).unwrap();
    assert!(fed.terminate);
    assert_eq!(fed.upto, at);
    assert_eq!(t.start(b"X\0\0\0\x04"), Start::Terminate);
    assert!(t.feed(b"Z\0\0\0\x05I", &mut s, &activity).is_err());
    assert!(
        t.feed(b"Q\0\0\x10\0", &mut s, &activity).is_err(),
        "over max_message"
    );
}

#[test]
fn zero_max_prepared_statements_pins_instead_of_mapping() {
    let (mut t, mut s) = tracker(0);
    let input = cat(&[parse("a", "SELECT 1"), bind("a")]);
    assert_eq!(send(&mut t, &mut s, &input), input);
    assert!(t.pinned.is_some());
}

#[test]
fn session_features_in_queries_pin() {
    let (mut t, mut s) = tracker(200);
    let mut q = BytesMut::new();
    frontend::query("LISTEN jobs", &mut q).unwrap();
    send(&mut t, &mut s, &q);
    assert_eq!(t.pinned, Some("LISTEN"));
    send(&mut t, &mut s, &parse("a", "SELECT 1"));
    let mut q = BytesMut::new();
    frontend::query("DISCARD ALL", &mut q).unwrap();
    send(&mut t, &mut s, &q);
    assert!(s.is_empty(), "DISCARD ALL drops the server's statements");
}

#[test]
fn preparing_a_name_in_use_fails_as_on_postgresql() {
    let (mut t, mut s) = parsed(200, &[("a", "SELECT 1")]);
    t.reply(b'1', &mut s);
    // The server is asked to prepare its own name for "a" again: it
    // refuses with 42P05, and the client's "a" is still SELECT 1.
    let out = send_all(&mut t, &mut s, &[parse("a", "SELECT 2"), execute_sync()]);
    let m = messages(&out);
    assert_eq!(m[0].0, b'P');
    assert_eq!(stmt_of(b'P', &m[0].1), "pgwarden_1");
    replies(&mut t, &mut s, b"EZ");
    assert_eq!(t.statements(), 1);
    assert_eq!(s.len(), 1, "the server keeps the first one");
    let out = send(&mut t, &mut s, &bind("a"));
    assert_eq!(first_names(b'B', &out), "pgwarden_1");
}

fn query(sql: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::query(sql, &mut b).unwrap();
    b.to_vec()
}

#[test]
fn a_close_the_server_skipped_leaves_the_statement_with_its_client() {
    let (mut t, mut s) = tracker(200);
    send_all(&mut t, &mut s, &[parse("a", "SELECT 1"), execute_sync()]);
    replies(&mut t, &mut s, b"1Z");
    // An error before the Close: the server skips it, so "a" lives on.
    send_all(&mut t, &mut s, &[bind("nope"), close("a"), execute_sync()]);
    replies(&mut t, &mut s, b"EZ");
    assert_eq!(t.statements(), 1);
    let out = send(&mut t, &mut s, &bind("a"));
    assert_eq!(first_names(b'B', &out), "pgwarden_1");
}

#[test]
fn an_eviction_the_server_skipped_is_remembered() {
    let (mut t, mut s) = tracker(1);
    send_all(&mut t, &mut s, &[parse("a", "SELECT 1"), execute_sync()]);
    replies(&mut t, &mut s, b"1Z");
    // The Close of "a"'s server statement and the Parse of "b" come after
    // an error: skipped, so the server still has "a"'s.
    send_all(
        &mut t,
        &mut s,
        &[bind("nope"), parse("b", "SELECT 2"), execute_sync()],
    );
    replies(&mut t, &mut s, b"EZ");
    let out = send(&mut t, &mut s, &bind("a"));
    assert_eq!(messages(&out).len(), 1, "no new Parse: the server has it");
}

#[test]
fn another_clients_unnamed_statement_is_never_run() {
    let (mut t, mut s) = tracker(200);
    t.begin(false);
    let out = send(&mut t, &mut s, &bind(""));
    assert_eq!(first_names(b'B', &out), "pgwarden_none");
    // Its own, parsed on this server connection, is its own.
    let input = cat(&[parse("", "SELECT 1"), bind("")]);
    assert_eq!(send(&mut t, &mut s, &input), input);
}

/// Feeds `input` whole, counting in `activity`; returns the message types
/// that go to the server.
fn send_counted(t: &mut Tracker, s: &mut ServerStatements, a: &Activity, input: &[u8]) -> Vec<u8> {
    let fed = t.feed(input, s, a).unwrap();
    assert_eq!(fed.upto, input.len(), "all consumed");
    let out = fed.rewritten.map_or_else(|| input.to_vec(), |b| b.to_vec());
    types(&messages(&out))
}

fn describe(name: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::describe(b'S', name, &mut b).unwrap();
    b.to_vec()
}

/// One batch: a Parse of `first` (name, SQL), a Query of `sql`, a Parse of
/// `then`, an Execute and the Sync.
fn parse_query_parse(first: (&str, &str), sql: &str, then: (&str, &str)) -> Vec<u8> {
    cat(&[
        parse(first.0, first.1),
        query(sql),
        parse(then.0, then.1),
        execute_sync(),
    ])
}

#[test]
fn a_query_before_sync_runs_after_a_marker_whose_reply_is_dropped() {
    let (mut t, mut s, a) = counted(200);
    let input = cat(&[
        parse("", "SELECT $1"),
        bind(""),
        query("SELECT 2"),
        execute_sync(),
    ]);
    let sent = send_counted(&mut t, &mut s, &a, &input);
    assert_eq!(sent, b"PBCQES", "a Close (the marker) before the Query");
    assert_eq!(a.owed(), 2, "the Query and the Sync");
    assert_eq!(t.reply(b'1', &mut s), Edit::Keep);
    assert_eq!(
        t.reply(b'3', &mut s),
        Edit::Drop,
        "the marker's CloseComplete"
    );
    replies(&mut t, &mut s, b"ZZ");
    assert_eq!(t.take_skipped(), 0);
    // After the Sync, a Query needs no marker.
    assert_eq!(send_counted(&mut t, &mut s, &a, &query("SELECT 3")), b"Q");
}

#[test]
fn a_failed_parse_skips_the_query_and_the_statements_before_the_sync() {
    let (mut t, mut s, a) = counted(200);
    let input = parse_query_parse(("bad", "SELEC 1"), "SELECT 2", ("good", "SELECT 1"));
    send_counted(&mut t, &mut s, &a, &input);
    assert_eq!(a.owed(), 2);
    // The Parse fails: the server skips the Query (no ReadyForQuery for
    // it), the marker and the second Parse, up to the Sync.
    t.reply(b'E', &mut s);
    assert_eq!(
        t.take_skipped(),
        1,
        "the Query's ReadyForQuery will not come"
    );
    t.reply(b'Z', &mut s);
    assert_eq!(
        t.statements(),
        0,
        "neither statement exists, as on PostgreSQL"
    );
    assert!(s.is_empty(), "nor on the server");
    // The next batch is answered in order.
    let sent = send_counted(
        &mut t,
        &mut s,
        &a,
        &cat(&[parse("good", "SELECT 1"), execute_sync()]),
    );
    assert_eq!(sent, b"PES");
    assert_eq!(t.reply(b'1', &mut s), Edit::Keep);
    t.reply(b'Z', &mut s);
    assert_eq!(t.statements(), 1);
}

#[test]
fn a_querys_own_error_skips_nothing_after_it() {
    let (mut t, mut s, a) = counted(200);
    let input = parse_query_parse(("a", "SELECT 1"), "SELEC 2", ("b", "SELECT 2"));
    send_counted(&mut t, &mut s, &a, &input);
    assert_eq!(t.reply(b'1', &mut s), Edit::Keep, "a's ParseComplete");
    assert_eq!(t.reply(b'3', &mut s), Edit::Drop, "the marker");
    t.reply(b'E', &mut s);
    assert_eq!(
        t.take_skipped(),
        0,
        "the Query's own error: its ReadyForQuery follows"
    );
    t.reply(b'Z', &mut s);
    assert_eq!(t.reply(b'1', &mut s), Edit::Keep, "b's ParseComplete");
    t.reply(b'Z', &mut s);
    assert_eq!(t.statements(), 2);
}

#[test]
fn a_query_sent_after_the_error_arrived_is_skipped_until_the_sync() {
    // asyncpg: Parse, Describe, Flush; the error comes back; then a Query.
    let (mut t, mut s, a) = counted(200);
    let mut flush = BytesMut::new();
    frontend::flush(&mut flush);
    send_counted(
        &mut t,
        &mut s,
        &a,
        &cat(&[parse("p", "SELEC 1"), describe("p"), flush.to_vec()]),
    );
    t.reply(b'E', &mut s);
    assert_eq!(t.take_skipped(), 0);
    assert_eq!(t.statements(), 0);
    let sent = send_counted(&mut t, &mut s, &a, &query("SELECT 1"));
    assert_eq!(sent, b"Q", "no marker: the server skips it anyway");
    assert_eq!(a.owed(), 0, "and will not answer it");
    let mut sync = BytesMut::new();
    frontend::sync(&mut sync);
    send_counted(&mut t, &mut s, &a, &sync);
    assert_eq!(a.owed(), 1);
    t.reply(b'Z', &mut s);
    assert_eq!(send_counted(&mut t, &mut s, &a, &query("SELECT 1")), b"Q");
    assert_eq!(a.owed(), 2, "a Query after the Sync is answered");
}

#[test]
fn what_cannot_be_followed_pins() {
    let (t, mut s) = parsed(200, &[("d", "DISCARD ALL")]);
    assert!(t.pinned.is_some(), "a DISCARD ALL prepared for later");
    let mut t = Tracker::new(200, 1 << 20);
    let mut f = vec![b'F'];
    f.extend_from_slice(&14u32.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    send(&mut t, &mut s, &f);
    assert_eq!(t.pinned, Some("FunctionCall"));
    let mut t = Tracker::new(200, 1 << 20);
    send(&mut t, &mut s, &query("RESET ALL"));
    assert!(t.pinned.is_none() && t.settings_reset);
}

#[test]
fn a_parse_in_a_failed_transaction_fails_as_on_postgresql() {
    let (mut t, mut s) = parsed(200, &[("a", "SELECT 1")]);
    t.reply(b'1', &mut s);
    t.ready(b'E');
    let mut t2 = Tracker::new(200, 1 << 20);
    t2.ready(b'E');
    let out = send(&mut t2, &mut s, &parse("b", "SELECT 1"));
    let m = messages(&out);
    assert_eq!(
        m[0].0, b'P',
        "a Parse the server refuses with 25P02, not a no-op"
    );
    t2.reply(b'E', &mut s);
    assert_eq!(t2.statements(), 0);
}

#[test]
fn the_unnamed_statement_outlives_a_sync_on_a_connection_nobody_used_since() {
    let (mut t, mut s) = tracker(200);
    t.begin(false);
    send(&mut t, &mut s, &parse("", "SELECT 1"));
    // The same connection back, unused by anyone else: the client's own.
    t.begin(true);
    let input = bind("");
    assert_eq!(send(&mut t, &mut s, &input), input);
    // Another client had it in between: not the client's any more.
    t.begin(false);
    let out = send(&mut t, &mut s, &bind(""));
    assert_eq!(first_names(b'B', &out), "pgwarden_none");
}
