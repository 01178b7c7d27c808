use super::*;

/// Feeds a simple Query and its answer (CommandComplete `tag`, or an
/// error), ending with ReadyForQuery `status`.
fn query(log: &mut SessionLog, sql: &str, answer: Result<&str, ()>, status: u8) {
    match answer {
        Ok(tag) => query_tags(log, sql, &[tag], status),
        Err(()) => {
            send_query(log, sql);
            log.server_start(b'E');
            log.server_start(b'Z');
            log.server_ready(status);
        }
    }
}

/// The client's side of a simple Query.
fn send_query(log: &mut SessionLog, sql: &str) {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    log.client_start(b'Q', false);
    log.client_body(b'Q', &body);
}

/// Asserts what a move would replay, in order.
#[track_caller]
fn assert_replays(log: &SessionLog, expected: &[&str]) {
    let replayed: Vec<String> = log
        .replay()
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect();
    assert_eq!(replayed, expected);
}

fn parse_body(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.push(0);
    b.extend_from_slice(&0u16.to_be_bytes());
    b
}

fn parse(log: &mut SessionLog, name: &str, sql: &str) {
    log.client_start(b'P', false);
    log.client_body(b'P', &parse_body(name, sql));
}

fn sync(log: &mut SessionLog) {
    log.client_start(b'S', true);
}

fn statement_names(log: &SessionLog) -> Vec<String> {
    log.statements
        .iter()
        .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
        .collect()
}

#[test]
fn classify_finds_carried_statements_and_what_cannot_move() {
    let c = |s: &str| classify(s.as_bytes());
    assert_eq!(
        c("SET search_path TO app, public").carried,
        Some(Carried::Set("search_path".into()))
    );
    assert_eq!(
        c("set session Work_Mem = '64MB';").carried,
        Some(Carried::Set("work_mem".into()))
    );
    assert_eq!(
        c("SET TIME ZONE 'UTC'").carried,
        Some(Carried::Set("timezone".into()))
    );
    assert_eq!(c("SET LOCAL work_mem = 1").carried, None);
    assert_eq!(c("RESET ALL").carried, Some(Carried::ResetAll));
    assert_eq!(
        c("PREPARE q(int) AS SELECT $1").carried,
        Some(Carried::Prepare("q".into()))
    );
    assert_eq!(c("PREPARE TRANSACTION 'x'"), Classified::default());
    assert_eq!(
        c("DEALLOCATE PREPARE ALL").carried,
        Some(Carried::DeallocateAll)
    );
    assert_eq!(
        c("LISTEN jobs").carried,
        Some(Carried::Listen("jobs".into()))
    );
    assert_eq!(c("UNLISTEN *").carried, Some(Carried::UnlistenAll));
    assert_eq!(c("SELECT 1; SELECT 2"), Classified::default());
    assert_eq!(
        c("SET a.b = 1; SELECT 1").unmovable,
        Some("SET, PREPARE or LISTEN among several statements of one query")
    );
    assert_eq!(
        c("CREATE TEMP TABLE t(x int)").unmovable,
        Some("temporary table")
    );
    assert_eq!(
        c("select pg_advisory_lock(1)").unmovable,
        Some("session advisory lock")
    );
    assert_eq!(
        c("DECLARE c CURSOR WITH HOLD FOR SELECT 1").unmovable,
        Some("WITH HOLD cursor")
    );
    assert_eq!(
        c("SET ROLE admin").unmovable,
        Some("SET ROLE / SESSION AUTHORIZATION")
    );
    // Quoted text hides nothing and is not taken for a statement.
    assert_eq!(c("SELECT 'SET x = 1; LISTEN y'"), Classified::default());
}

/// Feeds simple Queries that all succeed, each answered with its
/// command's first word as its CommandComplete tag (`SET`, `BEGIN`,
/// `LISTEN`...), and ReadyForQuery `status`.
fn succeed(log: &mut SessionLog, status: u8, sqls: &[&str]) {
    for sql in sqls {
        let tag = sql.split(' ').next().unwrap_or_default();
        query(log, sql, Ok(tag), status);
    }
}

/// [`succeed`] with the server idle after each Query.
fn ok_idle(log: &mut SessionLog, sqls: &[&str]) {
    succeed(log, b'I', sqls);
}

/// [`succeed`] with the server in a transaction block after each Query.
fn ok_in_block(log: &mut SessionLog, sqls: &[&str]) {
    succeed(log, b'T', sqls);
}

/// Feeds the server's replies `tags` (message types), each ReadyForQuery
/// saying idle.
fn replies(log: &mut SessionLog, tags: &[u8]) {
    for &tag in tags {
        log.server_start(tag);
        if tag == b'Z' {
            log.server_ready(b'I');
        }
    }
}

#[test]
fn an_autocommit_set_is_replayed_once_with_its_last_value_and_reset_removes_it() {
    let mut log = SessionLog::default();
    ok_idle(&mut log, &["SET search_path TO a", "SET work_mem = '8MB'"]);
    ok_idle(&mut log, &["SET search_path TO b, public"]);
    assert_replays(
        &log,
        &["SET work_mem = '8MB'", "SET search_path TO b, public"],
    );
    ok_idle(&mut log, &["RESET work_mem"]);
    assert_replays(&log, &["SET search_path TO b, public"]);
    ok_idle(&mut log, &["RESET ALL"]);
    assert_replays(&log, &[]);
    assert_eq!(log.unmovable(), None);
}

#[test]
fn a_failed_set_and_a_tracked_setting_are_not_replayed() {
    let mut log = SessionLog::default();
    query(&mut log, "SET work_mem = 'lots'", Err(()), b'I');
    // application_name comes back from what the server reported.
    ok_idle(&mut log, &["SET application_name = 'x'"]);
    assert_replays(&log, &[]);
}

#[test]
fn a_set_in_a_block_holds_only_if_the_block_commits() {
    let mut log = SessionLog::default();
    ok_in_block(&mut log, &["BEGIN", "SET search_path TO a"]);
    ok_idle(&mut log, &["ROLLBACK"]);
    assert_replays(&log, &[]);

    ok_in_block(&mut log, &["BEGIN", "SET search_path TO b"]);
    ok_idle(&mut log, &["COMMIT"]);
    assert_replays(&log, &["SET search_path TO b"]);

    // A failed block's COMMIT says ROLLBACK.
    ok_in_block(&mut log, &["BEGIN", "SET search_path TO c"]);
    query(&mut log, "SELECT 1/0", Err(()), b'E');
    query(&mut log, "COMMIT", Ok("ROLLBACK"), b'I');
    assert_replays(&log, &["SET search_path TO b"]);
    assert_eq!(log.unmovable(), None);
}

#[test]
fn a_set_undone_by_rollback_to_savepoint_makes_the_session_unmovable() {
    let mut log = SessionLog::default();
    ok_in_block(&mut log, &["BEGIN", "SAVEPOINT s"]);
    ok_in_block(&mut log, &["SET search_path TO a", "ROLLBACK TO s"]);
    assert!(log.unmovable().is_some());
}

#[test]
fn unmovable_state_is_named_and_for_good() {
    let mut log = SessionLog::default();
    query(
        &mut log,
        "CREATE TEMP TABLE t(x int)",
        Ok("CREATE TABLE"),
        b'I',
    );
    assert_eq!(log.unmovable(), Some("temporary table"));
    query(&mut log, "DISCARD ALL", Ok("DISCARD ALL"), b'I');
    assert_eq!(log.unmovable(), Some("temporary table"));
}

#[test]
fn named_statements_are_kept_once_parsed_and_forgotten_once_closed() {
    let mut log = SessionLog::default();
    parse(&mut log, "s1", "SELECT $1::int");
    parse(&mut log, "", "SELECT 2");
    parse(&mut log, "s2", "SELECT 3");
    sync(&mut log);
    replies(&mut log, b"111Z");
    assert_eq!(statement_names(&log), ["s1", "s2"]);
    // The message kept is the Parse as sent.
    let first = log.parses().next().cloned().unwrap_or_default();
    assert_eq!(first.first(), Some(&b'P'));
    assert_eq!(
        first.get(5..),
        Some(&parse_body("s1", "SELECT $1::int")[..])
    );

    log.client_start(b'C', false);
    log.client_body(b'C', b"Ss1\0");
    sync(&mut log);
    replies(&mut log, b"3Z");
    assert_eq!(statement_names(&log), ["s2"]);
    ok_idle(&mut log, &["DEALLOCATE s2"]);
    assert!(statement_names(&log).is_empty());
    assert_eq!(log.unmovable(), None);
}

#[test]
fn a_parse_skipped_after_an_error_is_not_kept_but_the_next_batch_is() {
    let mut log = SessionLog::default();
    parse(&mut log, "bad", "SELEC 1");
    parse(&mut log, "skipped", "SELECT 1");
    sync(&mut log);
    parse(&mut log, "good", "SELECT 2");
    sync(&mut log);
    // The first batch: an error, the rest skipped to its Sync.
    replies(&mut log, b"EZ");
    replies(&mut log, b"1Z");
    assert_eq!(statement_names(&log), ["good"]);
    assert_eq!(log.unmovable(), None);
}

#[test]
fn set_through_the_extended_protocol_or_a_long_query_is_not_followed() {
    let mut log = SessionLog::default();
    parse(&mut log, "", "SET search_path TO x");
    assert!(log.unmovable().is_some());

    let mut log = SessionLog::default();
    // A Query whose body never came (over the capture limit).
    log.client_start(b'Q', false);
    assert_eq!(log.unmovable(), Some("a message too long to look into"));

    let mut log = SessionLog::default();
    log.client_start(b'Q', true);
    assert!(log.unmovable().is_some());
}

#[test]
fn listen_is_replayed_once_until_unlisten() {
    let mut log = SessionLog::default();
    ok_idle(&mut log, &["LISTEN jobs", "LISTEN jobs", "LISTEN other"]);
    assert_replays(&log, &["LISTEN jobs", "LISTEN other"]);
    ok_idle(&mut log, &["UNLISTEN jobs"]);
    assert_replays(&log, &["LISTEN other"]);
    ok_idle(&mut log, &["UNLISTEN *"]);
    assert_replays(&log, &[]);
}

#[test]
fn after_a_move_the_log_waits_for_nothing() {
    let mut log = SessionLog::default();
    ok_idle(&mut log, &["SET search_path TO a"]);
    log.moved();
    ok_idle(&mut log, &["SET work_mem = 1024"]);
    assert_replays(&log, &["SET search_path TO a", "SET work_mem = 1024"]);
}

/// [`query`] for a Query of several statements: one CommandComplete per tag.
fn query_tags(log: &mut SessionLog, sql: &str, tags: &[&str], status: u8) {
    send_query(log, sql);
    for tag in tags {
        log.server_start(b'C');
        let mut t = tag.as_bytes().to_vec();
        t.push(0);
        log.server_command(&t);
    }
    log.server_start(b'Z');
    log.server_ready(status);
}

#[test]
fn dotted_settings_are_kept_apart_by_their_whole_name() {
    let mut log = SessionLog::default();
    ok_idle(&mut log, &["SET app.tenant_id = 1", "SET app.user_id = 7"]);
    ok_idle(&mut log, &["RESET app.other"]);
    assert_replays(&log, &["SET app.tenant_id = 1", "SET app.user_id = 7"]);
    ok_idle(&mut log, &["SET app.tenant_id = 2", "RESET app.user_id"]);
    assert_replays(&log, &["SET app.tenant_id = 2"]);
    assert!(log.movable_now());
}

#[test]
fn prepared_statements_hold_whatever_becomes_of_their_block() {
    let mut log = SessionLog::default();
    ok_in_block(&mut log, &["BEGIN", "PREPARE p AS SELECT 1"]);
    ok_idle(&mut log, &["ROLLBACK"]);
    assert_replays(&log, &["PREPARE p AS SELECT 1"]);
    ok_in_block(&mut log, &["BEGIN", "DEALLOCATE p"]);
    ok_idle(&mut log, &["ROLLBACK"]);
    assert_replays(&log, &[]);
    assert!(log.movable_now());
}

#[test]
fn the_first_transaction_end_of_a_batch_decides_its_blocks_settings() {
    // COMMIT, then more in the same query: the block committed.
    let mut log = SessionLog::default();
    ok_in_block(&mut log, &["BEGIN", "SET work_mem = '8MB'"]);
    query_tags(&mut log, "COMMIT; SELECT 1", &["COMMIT", "SELECT 1"], b'I');
    assert_replays(&log, &["SET work_mem = '8MB'"]);
    assert!(log.movable_now());

    // A ROLLBACK then a new block committed in one query: not followed.
    let mut log = SessionLog::default();
    ok_in_block(&mut log, &["BEGIN", "SET work_mem = '8MB'"]);
    query_tags(
        &mut log,
        "ROLLBACK; BEGIN; COMMIT",
        &["ROLLBACK", "BEGIN", "COMMIT"],
        b'I',
    );
    assert_replays(&log, &[]);
    assert!(log.unmovable().is_some());
}
