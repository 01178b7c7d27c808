//! What a session-mode session holds that the proxy can carry to another
//! server connection: followed in the client's messages and the server's
//! answers, so that an idle session whose server is lost (a failover, a
//! dead primary) goes on on the new primary with the state it had.
//!
//! Carried: settings changed with `SET` (the tracked ones are replayed from
//! what the server reported, the others by running the client's own `SET`
//! again), SQL `PREPARE`d statements, `LISTEN` channels and the
//! protocol-level prepared statements (their Parse messages, sent again).
//! Each is kept only once the server said it took effect: a `SET` in a
//! block once the block committed, a Parse once its ParseComplete came back.
//!
//! What cannot move (temporary tables, session advisory locks, `WITH HOLD`
//! cursors, a role set with `SET ROLE`...) or what the proxy cannot follow
//! for sure (a query too long to look into, `SET` through the extended
//! protocol, `SET` among several statements of one query) makes the session
//! *unmovable*, for good: it ends at a failover, as before, and is told why.
//! Sans-IO: the data path feeds it ([`super::pump`]).

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use super::features::{self, Word, Words};

/// Statements and Parse messages kept at most, and their bytes: beyond,
/// the session is not followed any more (it is unmovable).
const MAX_ENTRIES: usize = 1_000;
const MAX_BYTES: usize = 1 << 20;

/// A statement that changes state the proxy carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carried {
    /// `SET [SESSION] name ...` (lower case; `SET TIME ZONE` is `timezone`).
    Set(String),
    /// `RESET name`.
    Reset(String),
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ALL`.
    DiscardAll,
    /// `PREPARE name ...`.
    Prepare(String),
    /// `DEALLOCATE [PREPARE] name`.
    Deallocate(String),
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
    /// `LISTEN channel`.
    Listen(String),
    /// `UNLISTEN channel`.
    Unlisten(String),
    /// `UNLISTEN *`.
    UnlistenAll,
}

/// What the text of one Query (or Parse) does to carried state.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Classified {
    /// State that cannot move to another server, by name.
    pub unmovable: Option<&'static str>,
    /// The statement, when the text is one statement changing carried state.
    pub carried: Option<Carried>,
}

/// First words of statements [`statement`] looks at.
const FIRST: &[&[u8]] = &[
    b"set",
    b"reset",
    b"discard",
    b"create",
    b"do",
    b"load",
    b"prepare",
    b"deallocate",
    b"listen",
    b"unlisten",
];

/// Words of a statement [`statement`] needs at most.
const WORDS: usize = 6;

/// Classifies SQL text (possibly several statements).
pub fn classify(sql: &[u8]) -> Classified {
    let mut out = Classified::default();
    let mut carried = Vec::new();
    let mut statements = 0usize;
    let mut words: Vec<String> = Vec::new();
    let (mut n, mut interesting) = (0usize, false);
    let mut prev: &[u8] = b"";
    // Where the previous word ended in `sql`: `app.tenant_id` is one name.
    let mut prev_end = usize::MAX;
    for w in Words::new(sql).chain(std::iter::once(Word::End)) {
        match w {
            Word::Ident(w) => {
                if out.unmovable.is_none() {
                    out.unmovable = features::anywhere_pins(prev, w);
                }
                prev = w;
                let start = w.as_ptr().addr().wrapping_sub(sql.as_ptr().addr());
                let dotted =
                    start > 0 && prev_end == start - 1 && sql.get(start - 1) == Some(&b'.');
                prev_end = start + w.len();
                if dotted && interesting && n > 0 && n <= WORDS {
                    if let Some(last) = words.last_mut() {
                        last.push('.');
                        last.push_str(&String::from_utf8_lossy(w).to_ascii_lowercase());
                    }
                    continue;
                }
                if n == 0 {
                    interesting = FIRST.iter().any(|k| k.eq_ignore_ascii_case(w));
                }
                if interesting && n < WORDS {
                    words.push(String::from_utf8_lossy(w).to_ascii_lowercase());
                }
                n += 1;
            }
            Word::Semicolon | Word::End => {
                if n > 0 {
                    statements += 1;
                }
                if interesting {
                    match statement(&words) {
                        Err(why) => {
                            out.unmovable.get_or_insert(why);
                        }
                        Ok(Some(c)) => carried.push(c),
                        Ok(None) => {}
                    }
                }
                words.clear();
                (n, interesting, prev, prev_end) = (0, false, b"", usize::MAX);
            }
        }
    }
    if !carried.is_empty() && statements > 1 {
        out.unmovable
            .get_or_insert("SET, PREPARE or LISTEN among several statements of one query");
    } else {
        out.carried = carried.pop();
    }
    out
}

/// What one statement (its first words, lower case) does to carried state:
/// `Err` names state that cannot move.
fn statement(words: &[String]) -> Result<Option<Carried>, &'static str> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    Ok(Some(match w.as_slice() {
        ["set", "local" | "transaction" | "constraints", ..] => return Ok(None),
        ["set", "session", "characteristics", ..] => return Err("SET SESSION CHARACTERISTICS"),
        ["set", "session", "authorization", ..] | ["set", "role", ..] => {
            return Err("SET ROLE / SESSION AUTHORIZATION");
        }
        ["set", "time", "zone", ..] | ["set", "session", "time", "zone", ..] => {
            Carried::Set("timezone".to_owned())
        }
        ["set", "session", name, ..] | ["set", name, ..] => Carried::Set((*name).to_owned()),
        ["reset", "all", ..] => Carried::ResetAll,
        ["reset", "role" | "session", ..] => return Ok(None),
        ["reset", "time", "zone", ..] => Carried::Reset("timezone".to_owned()),
        ["reset", name, ..] => Carried::Reset((*name).to_owned()),
        ["discard", "all", ..] => Carried::DiscardAll,
        ["create", rest @ ..] if features::is_temp_create(rest) => {
            return Err("temporary table");
        }
        ["do", ..] => return Err("DO block"),
        ["load", ..] => return Err("LOAD"),
        ["prepare", "transaction", ..] => return Ok(None),
        ["prepare", name, ..] => Carried::Prepare((*name).to_owned()),
        ["deallocate", "prepare", "all", ..] | ["deallocate", "all", ..] => Carried::DeallocateAll,
        ["deallocate", "prepare", name, ..] | ["deallocate", name, ..] => {
            Carried::Deallocate((*name).to_owned())
        }
        ["listen", channel, ..] => Carried::Listen((*channel).to_owned()),
        ["unlisten"] => Carried::UnlistenAll,
        ["unlisten", channel, ..] => Carried::Unlisten((*channel).to_owned()),
        _ => return Ok(None),
    }))
}

/// What a replayed statement is, so a later one replaces or removes it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Set(String),
    Prepare(String),
    Listen(String),
}

/// A client message whose outcome the server has not told yet.
#[derive(Debug)]
enum Pending {
    /// A Parse: its name and, when named, the whole message.
    Parse { batch: u64, name: Bytes, msg: Bytes },
    /// A Close: of this statement, or of a portal (`None`).
    Close {
        batch: u64,
        statement: Option<Bytes>,
    },
    /// A Query changing carried state: the statement and its text.
    Sql {
        batch: u64,
        carried: Carried,
        text: Bytes,
    },
}

impl Pending {
    fn batch(&self) -> u64 {
        match self {
            Pending::Parse { batch, .. }
            | Pending::Close { batch, .. }
            | Pending::Sql { batch, .. } => *batch,
        }
    }
}

/// A session's carried state, and what it waits to hear about.
#[derive(Debug)]
pub struct SessionLog {
    unmovable: Option<&'static str>,
    /// Statements run again on a new server connection, in order.
    replay: Vec<(Key, Bytes)>,
    /// Named protocol-level prepared statements: name, Parse message.
    statements: Vec<(Bytes, Bytes)>,
    /// Carried statements of the open transaction block, kept if it commits.
    in_block: Vec<(Carried, Bytes)>,
    pending: VecDeque<Pending>,
    /// Requests (Query, Sync, FunctionCall) sent, and answered (ReadyForQuery).
    sent: u64,
    answered: u64,
    /// An ErrorResponse came in the batch being answered.
    failed: bool,
    /// The first CommandComplete of the batch being answered that ends a
    /// block (`COMMIT` or `ROLLBACK`), or `Other`.
    last_command: LastCommand,
    /// How many block-ending CommandCompletes that batch had.
    block_ends: u32,
    /// The transaction status of the last ReadyForQuery.
    status: u8,
    /// A Query, Parse or Close started whose body was not seen (too long).
    body_due: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LastCommand {
    Commit,
    Rollback,
    Other,
}

impl Default for SessionLog {
    fn default() -> Self {
        SessionLog {
            unmovable: None,
            replay: Vec::new(),
            statements: Vec::new(),
            in_block: Vec::new(),
            pending: VecDeque::new(),
            sent: 0,
            answered: 0,
            failed: false,
            last_command: LastCommand::Other,
            block_ends: 0,
            status: b'I',
            body_due: false,
        }
    }
}

impl SessionLog {
    /// What keeps the session on its server, if anything.
    pub fn unmovable(&self) -> Option<&'static str> {
        if self.body_due {
            return self.unmovable.or(Some("a message too long to look into"));
        }
        self.unmovable
    }

    /// True when the session is between transactions with nothing awaited
    /// and nothing that keeps it on its server.
    pub fn movable_now(&self) -> bool {
        self.unmovable().is_none() && self.status == b'I' && self.pending.is_empty()
    }

    fn stop(&mut self, why: &'static str) {
        self.unmovable.get_or_insert(why);
        // Nothing more is followed: free what was.
        self.replay = Vec::new();
        self.statements = Vec::new();
        self.in_block = Vec::new();
        self.pending = VecDeque::new();
    }

    /// The client starts a message of type `tag`; `unsynced` when
    /// extended-protocol messages before it await their Sync.
    pub fn client_start(&mut self, tag: u8, unsynced: bool) {
        if self.unmovable.is_some() {
            return;
        }
        if self.body_due {
            self.stop("a message too long to look into");
            return;
        }
        match tag {
            b'Q' if unsynced => {
                self.stop("a Query among extended-protocol messages awaiting their Sync");
            }
            b'Q' | b'P' | b'C' => self.body_due = true,
            b'S' | b'F' => self.sent += 1,
            _ => {}
        }
    }

    /// The body of a client message [`SessionLog::client_start`] saw start
    /// (Query, Parse or Close).
    pub fn client_body(&mut self, tag: u8, body: &[u8]) {
        self.body_due = false;
        if self.unmovable.is_some() {
            return;
        }
        let batch = self.sent;
        match tag {
            b'Q' => {
                self.sent += 1;
                let sql = cstr(body).0;
                let c = classify(sql);
                if let Some(why) = c.unmovable {
                    return self.stop(why);
                }
                if let Some(carried) = c.carried {
                    self.pending.push_back(Pending::Sql {
                        batch,
                        carried,
                        text: Bytes::copy_from_slice(sql),
                    });
                }
            }
            b'P' => {
                let (name, rest) = cstr(body);
                let c = classify(cstr(rest).0);
                if let Some(why) = c.unmovable {
                    return self.stop(why);
                }
                if c.carried.is_some() {
                    return self.stop("SET, PREPARE or LISTEN through the extended protocol");
                }
                let msg = if name.is_empty() {
                    Bytes::new()
                } else {
                    let mut m = BytesMut::with_capacity(body.len() + 5);
                    m.put_u8(b'P');
                    m.put_u32(u32::try_from(body.len() + 4).unwrap_or(u32::MAX));
                    m.extend_from_slice(body);
                    m.freeze()
                };
                self.pending.push_back(Pending::Parse {
                    batch,
                    name: Bytes::copy_from_slice(name),
                    msg,
                });
            }
            b'C' => {
                let statement = match body.split_first() {
                    Some((b'S', rest)) => Some(Bytes::copy_from_slice(cstr(rest).0)),
                    _ => None,
                };
                self.pending.push_back(Pending::Close { batch, statement });
            }
            _ => {}
        }
    }

    /// The server starts a message of type `tag`.
    pub fn server_start(&mut self, tag: u8) {
        if self.unmovable.is_some() {
            return;
        }
        match tag {
            b'1' => match self.pending.pop_front() {
                Some(Pending::Parse { name, msg, .. }) => {
                    if !name.is_empty() {
                        self.statements.retain(|(n, _)| *n != name);
                        self.statements.push((name, msg));
                        self.check_size();
                    }
                }
                _ => self.stop("an answer the proxy did not expect"),
            },
            b'3' => match self.pending.pop_front() {
                Some(Pending::Close { statement, .. }) => {
                    if let Some(name) = statement {
                        self.statements.retain(|(n, _)| *n != name);
                    }
                }
                _ => self.stop("an answer the proxy did not expect"),
            },
            b'E' => self.failed = true,
            _ => {}
        }
    }

    /// A CommandComplete's body (its tag).
    pub fn server_command(&mut self, body: &[u8]) {
        let tag = cstr(body).0;
        let end = if tag == b"COMMIT" {
            LastCommand::Commit
        } else if tag == b"ROLLBACK" {
            LastCommand::Rollback
        } else {
            return;
        };
        // `COMMIT; SELECT 1` ends its block with the COMMIT: the first end
        // of a batch is the block's fate, whatever follows it.
        if self.block_ends == 0 {
            self.last_command = end;
        }
        self.block_ends += 1;
    }

    /// A ReadyForQuery with transaction status `status`: the oldest
    /// request's answers are all in.
    pub fn server_ready(&mut self, status: u8) {
        if self.unmovable.is_some() {
            return;
        }
        let batch = self.answered;
        let before = self.status;
        if self.block_ends > 1 && !self.in_block.is_empty() {
            // `ROLLBACK; BEGIN; ... COMMIT` in one query: which block the
            // earlier SETs belonged to is not followed.
            self.stop("SET, PREPARE or LISTEN before several transaction ends in one query");
            return;
        }
        while self.pending.front().is_some_and(|p| p.batch() == batch) {
            // Parses and Closes left unanswered were skipped after an error.
            if let Some(Pending::Sql { carried, text, .. }) = self.pending.pop_front()
                && !self.failed
            {
                // Prepared statements are not transactional: a PREPARE or
                // DEALLOCATE holds once answered, even in a block that rolls
                // back (as a protocol Parse or Close does).
                let transactional = !matches!(
                    carried,
                    Carried::Prepare(_) | Carried::Deallocate(_) | Carried::DeallocateAll
                );
                if (before == b'I' && status == b'I') || !transactional {
                    self.apply(carried, text);
                } else {
                    self.in_block.push((carried, text));
                }
            }
        }
        if before != b'I' && status == b'I' {
            // A block ended: what it carried holds if it committed.
            let block = std::mem::take(&mut self.in_block);
            if self.last_command == LastCommand::Commit {
                for (carried, text) in block {
                    self.apply(carried, text);
                }
            }
        } else if status != b'I' && self.last_command == LastCommand::Commit {
            // COMMIT AND CHAIN: the block's state holds, a new block begins.
            for (carried, text) in std::mem::take(&mut self.in_block) {
                self.apply(carried, text);
            }
        } else if status != b'I'
            && !self.in_block.is_empty()
            && self.last_command == LastCommand::Rollback
        {
            // ROLLBACK TO SAVEPOINT: which of the block's SETs it undid is
            // not followed.
            self.stop("SET, PREPARE or LISTEN undone by ROLLBACK TO SAVEPOINT");
        }
        if self.unmovable.is_none() {
            self.answered += 1;
            self.failed = false;
            self.status = status;
            self.last_command = LastCommand::Other;
            self.block_ends = 0;
        }
    }

    fn apply(&mut self, carried: Carried, text: Bytes) {
        match carried {
            Carried::Set(name) => {
                // Tracked settings follow from what the server reported.
                if !features::is_tracked(&name) {
                    let key = Key::Set(name);
                    self.replay.retain(|(k, _)| *k != key);
                    self.replay.push((key, text));
                }
            }
            Carried::Reset(name) => {
                let key = Key::Set(name);
                self.replay.retain(|(k, _)| *k != key);
            }
            Carried::ResetAll => self.replay.retain(|(k, _)| !matches!(k, Key::Set(_))),
            Carried::DiscardAll => {
                self.replay.clear();
                self.statements.clear();
            }
            Carried::Prepare(name) => self.replay.push((Key::Prepare(name), text)),
            Carried::Deallocate(name) => {
                let key = Key::Prepare(name.clone());
                self.replay.retain(|(k, _)| *k != key);
                self.statements
                    .retain(|(n, _)| !n.eq_ignore_ascii_case(name.as_bytes()));
            }
            Carried::DeallocateAll => {
                self.replay.retain(|(k, _)| !matches!(k, Key::Prepare(_)));
                self.statements.clear();
            }
            Carried::Listen(channel) => {
                let key = Key::Listen(channel);
                if !self.replay.iter().any(|(k, _)| *k == key) {
                    self.replay.push((key, text));
                }
            }
            Carried::Unlisten(channel) => {
                let key = Key::Listen(channel);
                self.replay.retain(|(k, _)| *k != key);
            }
            Carried::UnlistenAll => self.replay.retain(|(k, _)| !matches!(k, Key::Listen(_))),
        }
        self.check_size();
    }

    fn check_size(&mut self) {
        let entries = self.replay.len() + self.statements.len();
        let bytes: usize = self.replay.iter().map(|(_, t)| t.len()).sum::<usize>()
            + self.statements.iter().map(|(_, m)| m.len()).sum::<usize>();
        if entries > MAX_ENTRIES || bytes > MAX_BYTES {
            self.stop("more session state than the proxy follows");
        }
    }

    /// The statements to run on a new server connection, in order (SQL
    /// text, as the client sent it).
    pub fn replay(&self) -> impl Iterator<Item = &Bytes> {
        self.replay.iter().map(|(_, t)| t)
    }

    /// The Parse messages that give a new server connection the session's
    /// named prepared statements.
    pub fn parses(&self) -> impl Iterator<Item = &Bytes> {
        self.statements.iter().map(|(_, m)| m)
    }

    /// The session goes on on a new server connection, idle: nothing is
    /// awaited from it yet.
    pub fn moved(&mut self) {
        self.pending.clear();
        self.in_block.clear();
        (self.sent, self.answered, self.failed, self.status) = (0, 0, false, b'I');
    }
}

/// A NUL-terminated string at the start of `b`, and what follows it.
fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (
            b.get(..i).unwrap_or_default(),
            b.get(i + 1..).unwrap_or_default(),
        ),
        None => (b, b""),
    }
}

#[cfg(test)]
mod tests;
