//! The transaction-mode tracker: sans-IO, fed the client's messages and the
//! server's reply types, it keeps protocol-level prepared statements
//! working while a client's transactions run on different server
//! connections (PgBouncer 1.21's `max_prepared_statements`, pgdog's
//! prepared statement cache).
//!
//! - A client's named statement is known by its *definition*: the Parse
//!   body after the name (query text and parameter types). Each server
//!   connection keeps the definitions it has prepared, under names of its
//!   own (`pgwarden_<n>`), at most `max_prepared_statements`, least
//!   recently used closed first ([`ServerStatements`]).
//! - Parse of a named statement is sent under a new server name; when that
//!   server had the definition already (another client's, perhaps from
//!   before a schema change), the old name is closed after it, so every
//!   Parse is analysed afresh, as on PostgreSQL. Bind and Describe of a
//!   statement the server lacks get a Parse sent before them, whose
//!   ParseComplete is dropped. Close of a statement only forgets the
//!   client's name; the server keeps the statement for the next client.
//! - Every Parse and Close sent has an entry in the reply queue, in order,
//!   saying what becomes of its reply ([`Edit`]). After an ErrorResponse
//!   the server skips the rest of the batch up to Sync, and so do the
//!   entries: what they would have created is undone.
//! - A Query or FunctionCall sent after extended-protocol messages, before
//!   their Sync (asyncpg does this), is legal: the server runs it, unless
//!   one of those messages failed, and then skips it with the rest up to
//!   the Sync, so no ReadyForQuery answers it. To tell the two apart the
//!   proxy sends a *marker* before it, a Close of a statement no server has:
//!   its CloseComplete (dropped) says the messages before it succeeded; an
//!   error while it is outstanding is theirs, and the Query is skipped.
//!
//! The common case costs nothing: a message without a statement name
//! (simple Query, unnamed Parse/Bind, Execute, Sync, CopyData) is passed on
//! as it came, without copying.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use pgwarden_wire::ProtocolError;
use pgwarden_wire::{frame, scan};

use super::features;
use crate::frontend::clients::Activity;

/// A statement's definition: the Parse body after the name.
pub type Definition = Arc<[u8]>;

/// A statement name no server connection ever has: Close of it is a no-op
/// that still gets a CloseComplete.
const NO_STATEMENT: &[u8] = b"pgwarden_none";

/// Prefix of the statement names the proxy gives server connections.
const PREFIX: &[u8] = b"pgwarden_";

/// Simple Query messages up to this size are read whole to look for session
/// features; longer ones stream through unexamined.
const WHOLE_QUERY_LIMIT: u32 = 1 << 20;

/// The prepared statements one server connection holds.
#[derive(Debug, Default)]
pub struct ServerStatements {
    by_definition: HashMap<Definition, Named>,
    next_id: u64,
    clock: u64,
}

#[derive(Debug, Clone, Copy)]
struct Named {
    id: u64,
    used: u64,
}

impl ServerStatements {
    /// Forgets every statement (the server dropped them: `DISCARD ALL`).
    pub fn clear(&mut self) {
        self.by_definition.clear();
    }

    /// How many statements the server connection holds.
    pub fn len(&self) -> usize {
        self.by_definition.len()
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_definition.is_empty()
    }

    fn get(&mut self, def: &Definition) -> Option<u64> {
        self.clock += 1;
        let now = self.clock;
        self.by_definition.get_mut(def).map(|n| {
            n.used = now;
            n.id
        })
    }

    /// Adds `def` under a new id; when that makes more than `cap`, the
    /// least recently used other statement is forgotten and returned, for
    /// the caller to close on the server.
    fn insert(&mut self, def: Definition, cap: usize) -> (u64, Option<(Definition, u64)>) {
        let evicted = if self.by_definition.len() >= cap.max(1) {
            let victim = self
                .by_definition
                .iter()
                .min_by_key(|(_, n)| n.used)
                .map(|(d, n)| (Arc::clone(d), n.id));
            victim.inspect(|(d, _)| {
                self.by_definition.remove(d);
            })
        } else {
            None
        };
        self.next_id += 1;
        self.clock += 1;
        let id = self.next_id;
        self.by_definition.insert(
            def,
            Named {
                id,
                used: self.clock,
            },
        );
        (id, evicted)
    }

    fn remove(&mut self, def: &Definition) {
        self.by_definition.remove(def);
    }

    /// Puts back a statement whose eviction the server skipped.
    fn restore(&mut self, def: Definition, id: u64) {
        self.by_definition
            .entry(def)
            .or_insert(Named { id, used: 0 });
    }
}

/// What becomes of a ParseComplete or CloseComplete from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// Passed to the client.
    Keep,
    /// Dropped: it answers a message the proxy added.
    Drop,
}

#[derive(Debug)]
struct Pending {
    /// Which batch (up to a Sync, Query or FunctionCall) the message is in.
    batch: u64,
    edit: Edit,
    /// The marker sent before a Query or FunctionCall that follows
    /// unsynced extended-protocol messages.
    marker: bool,
    /// Undone when the server skips the message (an error before it).
    undo_server: Option<Definition>,
    undo_client: Option<Box<[u8]>>,
    /// Put back when the server skips the message: a client's statement
    /// its Close forgot, a server statement an eviction forgot.
    restore_client: Option<(Box<[u8]>, Definition)>,
    restore_server: Option<(Definition, u64)>,
}

impl Pending {
    /// Undoes what the message did to the client's statement names
    /// (`client`) and the server's statements, as the server skipping it
    /// leaves them; gives back the server statement an eviction for it
    /// forgot, for the caller to put back or not.
    fn undo(
        self,
        client: &mut HashMap<Box<[u8]>, Definition>,
        server: &mut ServerStatements,
    ) -> Option<(Definition, u64)> {
        if let Some(def) = &self.undo_server {
            server.remove(def);
        }
        if let Some(name) = &self.undo_client {
            client.remove(name);
        }
        if let Some((name, def)) = self.restore_client {
            client.insert(name, def);
        }
        self.restore_server
    }
}

/// How a client's buffered bytes go on to the server.
#[derive(Debug)]
pub struct Fed {
    /// Bytes of the buffer consumed; the rest is the start of a message
    /// that needs more bytes.
    pub upto: usize,
    /// When set, send this instead of the consumed bytes (a message was
    /// rewritten).
    pub rewritten: Option<BytesMut>,
    /// A Terminate starts at `upto`.
    pub terminate: bool,
}

/// What ends a batch the server answers with one ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Sync,
    /// A Query or FunctionCall.
    Request,
}

/// Whether buffered client bytes are enough to start a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Not yet a whole first message (or its header).
    NeedMore(usize),
    /// The client says goodbye.
    Terminate,
    /// Work to do: take a server connection.
    Go,
}

/// One transaction-mode client's protocol state, kept across its
/// transactions.
#[derive(Debug)]
pub struct Tracker {
    /// The client's statement names and their definitions.
    client: HashMap<Box<[u8]>, Definition>,
    queue: VecDeque<Pending>,
    sent_batches: u64,
    done_batches: u64,
    /// How each batch sent and not yet answered ends, oldest first.
    ends: VecDeque<End>,
    /// Extended-protocol messages were sent since the last Sync, Query or
    /// FunctionCall.
    open_extended: bool,
    /// An extended-protocol message failed and nothing sent since has
    /// reached its Sync: the server skips whatever the client sends up to
    /// the next Sync.
    skipping: bool,
    /// Queries and FunctionCalls the server skipped: ReadyForQuery replies
    /// that will not come (taken by [`Tracker::take_skipped`]).
    skipped: u32,
    max_prepared: usize,
    max_message: u32,
    /// Body bytes of a streamed message still to pass on.
    streaming: u32,
    /// Why the client keeps its server connection until it leaves.
    pub pinned: Option<&'static str>,
    /// The client ran `DISCARD ALL` or `RESET`: the settings applied for
    /// it on this server connection are gone.
    pub settings_reset: bool,
    /// The client may have changed a setting the server does not report
    /// (`SET search_path`): read it back at the release point.
    pub read_back: bool,
    /// The transaction status of the last ReadyForQuery.
    status: u8,
    /// An unnamed statement was parsed on this server connection.
    unnamed_parsed: bool,
    scratch: BytesMut,
}

impl Tracker {
    /// A client's tracker: at most `max_prepared` statements per server
    /// connection (0: named statements pin the client), messages up to
    /// `max_message` bytes.
    pub fn new(max_prepared: usize, max_message: u32) -> Tracker {
        Tracker {
            client: HashMap::new(),
            queue: VecDeque::new(),
            sent_batches: 0,
            done_batches: 0,
            ends: VecDeque::new(),
            open_extended: false,
            skipping: false,
            skipped: 0,
            max_prepared,
            max_message,
            streaming: 0,
            pinned: None,
            settings_reset: false,
            read_back: false,
            status: b'I',
            unnamed_parsed: false,
            scratch: BytesMut::new(),
        }
    }

    /// Named statements the client has prepared.
    pub fn statements(&self) -> usize {
        self.client.len()
    }

    /// True when no message is half sent to the server.
    pub fn at_boundary(&self) -> bool {
        self.streaming == 0
    }

    /// A new server connection: nothing is owed on it yet. `unused_since`:
    /// it is the client's last one, and nobody used it since, so the
    /// unnamed statement the client parsed there is still there.
    pub fn begin(&mut self, unused_since: bool) {
        self.queue.clear();
        self.sent_batches = 0;
        self.done_batches = 0;
        self.ends.clear();
        self.open_extended = false;
        self.skipping = false;
        self.skipped = 0;
        self.unnamed_parsed &= unused_since;
    }

    /// ReadyForQuery replies the server will not send after all: Queries
    /// and FunctionCalls it skipped after an error, since the last call.
    pub fn take_skipped(&mut self) -> u32 {
        std::mem::take(&mut self.skipped)
    }

    /// The server sent ReadyForQuery with transaction status `status`.
    pub fn ready(&mut self, status: u8) {
        self.status = status;
    }

    /// The connection is given up while replies are still owed: what
    /// those replies would confirm is forgotten, so the connection's
    /// statement cache never names a statement it may lack.
    /// The client's names are put back as the server skipping them would
    /// leave them: a Parse it is told failed (08007) or will send again
    /// elsewhere (a standby read retried on the primary) named nothing.
    pub fn abandon(&mut self, server: &mut ServerStatements) {
        // Newest first: a Close after a Parse of the same name puts back
        // what was there before the Parse, which then goes.
        // A statement an eviction forgot is not put back: its Close may
        // have run.
        for p in self.queue.drain(..).rev() {
            let _evicted = p.undo(&mut self.client, server);
        }
    }

    /// The query text of the client's prepared statement `name`.
    pub fn statement_text(&self, name: &[u8]) -> Option<&[u8]> {
        let def = self.client.get(name)?;
        def.split(|b| *b == 0).next()
    }

    /// True when named statements pin the client
    /// (`proxy.max_prepared_statements = 0`).
    pub fn names_pin(&self) -> bool {
        self.max_prepared == 0
    }

    /// Whether `buf` (client bytes, nothing of them sent yet) holds enough
    /// to begin: the first message whole when it is one the proxy rewrites,
    /// else its header.
    pub fn start(&self, buf: &[u8]) -> Start {
        let Some(header) = buf.first_chunk::<5>() else {
            return Start::NeedMore(5);
        };
        let [tag, len @ ..] = *header;
        if tag == b'X' {
            return Start::Terminate;
        }
        let body = u32::from_be_bytes(len).saturating_sub(4);
        if Self::is_whole(tag, body) && body <= self.max_message {
            let need = 5 + body as usize;
            if buf.len() < need {
                return Start::NeedMore(need);
            }
        }
        Start::Go
    }

    fn is_whole(tag: u8, body: u32) -> bool {
        matches!(tag, b'P' | b'B' | b'D' | b'C') || (tag == b'Q' && body <= WHOLE_QUERY_LIMIT)
    }

    /// Takes the client's buffered bytes: what to send the server, and how
    /// much of `buf` that consumed. Counts requests in `activity`.
    pub fn feed(
        &mut self,
        buf: &[u8],
        server: &mut ServerStatements,
        activity: &Activity,
    ) -> Result<Fed, ProtocolError> {
        let mut pos = 0usize;
        let mut out: Option<BytesMut> = None;
        loop {
            if self.streaming > 0 {
                let rest = buf.get(pos..).unwrap_or_default();
                let take = (self.streaming as usize).min(rest.len());
                if take == 0 {
                    break;
                }
                if let (Some(o), Some(part)) = (out.as_mut(), rest.get(..take)) {
                    o.extend_from_slice(part);
                }
                pos += take;
                self.streaming -= take as u32;
                continue;
            }
            let Some(header) = buf.get(pos..).and_then(|b| b.first_chunk::<5>()) else {
                break;
            };
            let [tag, len @ ..] = *header;
            let body_len = frame::body_len(u32::from_be_bytes(len), self.max_message)?;
            if tag == b'X' {
                return Ok(Fed {
                    upto: pos,
                    rewritten: out,
                    terminate: true,
                });
            }
            if !scan::is_frontend_tag(tag) {
                return Err(ProtocolError::UnexpectedMessage { tag });
            }
            if matches!(tag, b'Q' | b'F') && self.open_extended && !self.skipping {
                // Before the Sync of extended-protocol messages: a marker
                // first, to know whether they failed (module docs).
                let o = out.get_or_insert_with(|| {
                    let mut o = BytesMut::with_capacity(pos + 64);
                    o.extend_from_slice(buf.get(..pos).unwrap_or_default());
                    o
                });
                close_statement(o, NO_STATEMENT);
                self.push(Edit::Drop, None, None);
                if let Some(p) = self.queue.back_mut() {
                    p.marker = true;
                }
            }
            if !Self::is_whole(tag, body_len) {
                match tag {
                    b'Q' => self.pin("a query text over 1 MiB, not examined"),
                    b'F' => self.pin("FunctionCall"),
                    _ => {}
                }
                self.count(tag, activity);
                if let (Some(o), Some(h)) = (out.as_mut(), buf.get(pos..pos + 5)) {
                    o.extend_from_slice(h);
                }
                pos += 5;
                self.streaming = body_len;
                continue;
            }
            let end = pos + 5 + body_len as usize;
            let (Some(whole), Some(body)) = (buf.get(pos..end), buf.get(pos + 5..end)) else {
                break;
            };
            self.count(tag, activity);
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            let replaced = self.message(tag, body, server, &mut scratch)?;
            match (&mut out, replaced) {
                (Some(o), true) => o.extend_from_slice(&scratch),
                (Some(o), false) => o.extend_from_slice(whole),
                (None, true) => {
                    let mut o = BytesMut::with_capacity(pos + scratch.len() + 64);
                    o.extend_from_slice(buf.get(..pos).unwrap_or_default());
                    o.extend_from_slice(&scratch);
                    out = Some(o);
                }
                (None, false) => {}
            }
            // A big rewrite's buffer is not kept while the client idles.
            if scratch.capacity() <= 64 * 1024 {
                self.scratch = scratch;
            }
            pos = end;
        }
        if self.pinned.is_some() {
            activity.set_pinned();
        }
        Ok(Fed {
            upto: pos,
            rewritten: out,
            terminate: false,
        })
    }

    fn count(&mut self, tag: u8, activity: &Activity) {
        match tag {
            // Skipped by the server, unanswered.
            b'Q' | b'F' if self.skipping => {}
            b'Q' => {
                activity.request();
                activity.command();
                self.end_batch(End::Request);
            }
            b'F' => {
                activity.request();
                self.end_batch(End::Request);
            }
            b'S' => {
                let before = activity.owed();
                activity.sync();
                if activity.owed() != before {
                    self.end_batch(End::Sync);
                    self.skipping = false;
                }
            }
            b'E' => {
                activity.set_unsynced(true);
                activity.command();
                self.open_extended = true;
            }
            b'c' | b'f' => activity.copy_in_ended(),
            b'P' | b'B' | b'D' | b'C' => {
                activity.set_unsynced(true);
                self.open_extended = true;
            }
            _ => {}
        }
    }

    fn end_batch(&mut self, end: End) {
        self.sent_batches += 1;
        self.ends.push_back(end);
        self.open_extended = false;
    }

    /// The server started a COPY from the client and ignores the `syncs`
    /// Syncs sent since the command that started it.
    pub fn copy_in_started(&mut self, syncs: u32) {
        self.sent_batches = self.sent_batches.saturating_sub(u64::from(syncs));
        for _ in 0..syncs {
            self.ends.pop_back();
        }
        let done = self.done_batches;
        for p in self.queue.iter_mut().filter(|p| p.batch > done) {
            p.batch = p.batch.saturating_sub(u64::from(syncs)).max(done);
        }
    }

    fn pin(&mut self, why: &'static str) {
        if self.pinned.is_none() {
            tracing::debug!(feature = why, "the client keeps its server connection");
            self.pinned = Some(why);
        }
    }

    /// What the SQL of a Query (`prepared` false: it runs now, in order)
    /// or of a Parse (`prepared` true: it runs whenever it is executed)
    /// does to the session.
    fn sql(&mut self, text: &[u8], server: &mut ServerStatements, prepared: bool, named: bool) {
        let fx = features::effects(text);
        if let Some(why) = fx.pins {
            self.pin(why);
        }
        if fx.reads_back {
            if named {
                // It may run in any later transaction.
                self.pin("SET search_path in a named prepared statement");
            } else {
                self.read_back = true;
            }
        }
        if self.read_back && (fx.resets_settings || self.settings_reset) {
            // The value read back would be the server connection's reset
            // value, not the client's own (its startup one).
            self.pin("SET search_path with RESET or DISCARD ALL in one transaction");
        }
        if prepared && (fx.drops_statements || fx.resets_settings) {
            // When it will run is not known: keep to one server.
            self.pin("DISCARD, DEALLOCATE or RESET in a prepared statement");
        } else {
            if fx.drops_statements {
                server.clear();
            }
            self.settings_reset |= fx.resets_settings;
        }
    }

    fn push(
        &mut self,
        edit: Edit,
        undo_server: Option<Definition>,
        undo_client: Option<Box<[u8]>>,
    ) {
        self.queue.push_back(Pending {
            batch: self.sent_batches,
            edit,
            marker: false,
            undo_server,
            undo_client,
            restore_client: None,
            restore_server: None,
        });
    }

    /// One whole client message; true when `out` holds its replacement.
    fn message(
        &mut self,
        tag: u8,
        body: &[u8],
        server: &mut ServerStatements,
        out: &mut BytesMut,
    ) -> Result<bool, ProtocolError> {
        match tag {
            b'Q' => {
                self.sql(cstr(body, "Query")?.0, server, false, false);
                Ok(false)
            }
            b'P' => {
                let (name, def) = cstr(body, "Parse")?;
                self.sql(cstr(def, "Parse")?.0, server, true, !name.is_empty());
                if name.is_empty() {
                    self.unnamed_parsed = true;
                    self.push(Edit::Keep, None, None);
                    return Ok(false);
                }
                if self.max_prepared == 0 {
                    self.pin("prepared statements (proxy.max_prepared_statements = 0)");
                    self.push(Edit::Keep, None, None);
                    return Ok(false);
                }
                if let Some(old) = self.client.get(name).map(Arc::clone) {
                    // PostgreSQL refuses a name in use (42P05) and skips to
                    // Sync; so does the server, asked to prepare the old
                    // statement's own name again. The client keeps the old one.
                    let id = match server.get(&old) {
                        Some(id) => id,
                        None => self.prepare(&old, server, out),
                    };
                    put_message(out, b'P', &[&server_name(id), b"\0", &old]);
                    self.push(Edit::Keep, None, None);
                    return Ok(true);
                }
                let def: Definition = Arc::from(def);
                self.client.insert(name.into(), Arc::clone(&def));
                match server.get(&def) {
                    Some(_) if self.status == b'E' => {
                        // In a failed transaction PostgreSQL refuses any
                        // Parse (25P02): so does the server, asked to
                        // prepare an empty statement.
                        put_message(out, b'P', &[NO_STATEMENT, b"\0\0\0\0"]);
                        self.push(Edit::Keep, None, Some(name.into()));
                    }
                    Some(stale) => {
                        // The server has it, maybe from before a schema
                        // change: PostgreSQL analyses every Parse afresh, so
                        // this one is prepared again under a new name (the
                        // client waits for its ParseComplete), and the old
                        // one closed after it, or kept if the server skips
                        // the batch.
                        server.remove(&def);
                        self.prepare(&def, server, out);
                        if let Some(p) = self.queue.back_mut() {
                            p.edit = Edit::Keep;
                            p.undo_client = Some(name.into());
                        }
                        close_statement(out, &server_name(stale));
                        self.push(Edit::Drop, None, None);
                        if let Some(p) = self.queue.back_mut() {
                            p.restore_server = Some((def, stale));
                        }
                    }
                    None => {
                        // The client waits for this one's ParseComplete.
                        self.prepare(&def, server, out);
                        if let Some(p) = self.queue.back_mut() {
                            p.edit = Edit::Keep;
                            p.undo_client = Some(name.into());
                        }
                    }
                }
                Ok(true)
            }
            b'B' => {
                let (portal, rest) = cstr(body, "Bind")?;
                let (name, rest) = cstr(rest, "Bind")?;
                let Some(server_name) = self.server_name(name, server, out) else {
                    return Ok(false);
                };
                put_message(out, b'B', &[portal, b"\0", &server_name, b"\0", rest]);
                Ok(true)
            }
            b'D' => {
                let Some((&kind, rest)) = body.split_first() else {
                    return Err(ProtocolError::Malformed { what: "Describe" });
                };
                let (name, _) = cstr(rest, "Describe")?;
                if kind != b'S' {
                    return Ok(false);
                }
                let Some(server_name) = self.server_name(name, server, out) else {
                    return Ok(false);
                };
                put_message(out, b'D', &[b"S", &server_name, b"\0"]);
                Ok(true)
            }
            b'C' => {
                let Some((&kind, rest)) = body.split_first() else {
                    return Err(ProtocolError::Malformed { what: "Close" });
                };
                let (name, _) = cstr(rest, "Close")?;
                self.push(Edit::Keep, None, None);
                if kind != b'S' || name.is_empty() || self.max_prepared == 0 {
                    return Ok(false);
                }
                // The server keeps the statement for other clients.
                if let Some(def) = self.client.remove(name)
                    && let Some(p) = self.queue.back_mut()
                {
                    p.restore_client = Some((name.into(), def));
                }
                close_statement(out, NO_STATEMENT);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Sends Parse of `def` under a new server name (closing the least
    /// recently used statement first when the server is full); its reply
    /// is dropped unless the caller changes the queue's last entry.
    fn prepare(
        &mut self,
        def: &Definition,
        server: &mut ServerStatements,
        out: &mut BytesMut,
    ) -> u64 {
        let (id, evicted) = server.insert(Arc::clone(def), self.max_prepared);
        if let Some((old_def, old)) = evicted {
            close_statement(out, &server_name(old));
            self.push(Edit::Drop, None, None);
            if let Some(p) = self.queue.back_mut() {
                p.restore_server = Some((old_def, old));
            }
        }
        put_message(out, b'P', &[&server_name(id), b"\0", def]);
        self.push(Edit::Drop, Some(Arc::clone(def)), None);
        id
    }

    /// The server's name for the client's statement `name`, preparing it
    /// there first when needed; `None` to pass the message on as it is
    /// (the unnamed statement, or a name the client never prepared, which
    /// the server then reports missing).
    fn server_name(
        &mut self,
        name: &[u8],
        server: &mut ServerStatements,
        out: &mut BytesMut,
    ) -> Option<Vec<u8>> {
        if name.is_empty() {
            // Not another client's unnamed statement, left on this server.
            return (!self.unnamed_parsed && self.max_prepared != 0).then(|| NO_STATEMENT.to_vec());
        }
        if self.max_prepared == 0 {
            return None;
        }
        let Some(def) = self.client.get(name).map(Arc::clone) else {
            // Never a name of the proxy's own on the server: those are other clients'.
            return name.starts_with(PREFIX).then(|| NO_STATEMENT.to_vec());
        };
        let id = match server.get(&def) {
            Some(id) => id,
            None => self.prepare(&def, server, out),
        };
        Some(server_name(id))
    }

    /// True for the reply types [`Tracker::reply`] acts on
    /// (ParseComplete, CloseComplete, ErrorResponse, ReadyForQuery).
    pub fn follows_reply(tag: u8) -> bool {
        matches!(tag, b'1' | b'3' | b'E' | b'Z')
    }

    /// The server sent a message of type `tag`: what to do with it.
    pub fn reply(&mut self, tag: u8, server: &mut ServerStatements) -> Edit {
        match tag {
            b'1' | b'3' => self.queue.pop_front().map_or(Edit::Keep, |p| p.edit),
            b'E' => {
                self.failed(server);
                Edit::Keep
            }
            b'Z' => {
                // Anything of this batch still unanswered was skipped.
                self.skip_batch(self.done_batches, server);
                self.ends.pop_front();
                self.done_batches += 1;
                Edit::Keep
            }
            _ => Edit::Keep,
        }
    }
}

impl Tracker {
    /// The server sent ErrorResponse for the oldest unanswered batch. When
    /// an extended-protocol message failed, the server skips everything up
    /// to the next Sync: the rest of the batch, and the Queries and
    /// FunctionCalls before that Sync with their batches, which will get
    /// no ReadyForQuery. A Query's own error skips nothing after it.
    fn failed(&mut self, server: &mut ServerStatements) {
        let batch = self.done_batches;
        let extended = match self.ends.front() {
            None => self.open_extended,
            Some(End::Sync) => true,
            Some(End::Request) => self
                .queue
                .iter()
                .take_while(|p| p.batch == batch)
                .any(|p| p.marker),
        };
        self.skip_batch(batch, server);
        if !extended || self.ends.front() == Some(&End::Sync) {
            return;
        }
        let mut requests = 0u64;
        while self.ends.front() == Some(&End::Request) {
            self.ends.pop_front();
            requests += 1;
            self.skip_batch(batch + requests, server);
        }
        // The loop skipped the Sync's batch too (or the open one).
        if self.ends.is_empty() {
            // The Sync is still to come.
            self.skipping = true;
        }
        // The skipped batches are gone: renumber those after them.
        self.sent_batches -= requests;
        for p in &mut self.queue {
            p.batch -= requests;
        }
        self.skipped += u32::try_from(requests).unwrap_or(u32::MAX);
    }

    /// Undoes the unanswered entries of `batch`: the server skipped them.
    fn skip_batch(&mut self, batch: u64, server: &mut ServerStatements) {
        while self.queue.front().is_some_and(|p| p.batch == batch) {
            if let Some(p) = self.queue.pop_front()
                && let Some((def, id)) = p.undo(&mut self.client, server)
            {
                server.restore(def, id);
            }
        }
    }
}

fn server_name(id: u64) -> Vec<u8> {
    let mut n = PREFIX.to_vec();
    n.extend_from_slice(id.to_string().as_bytes());
    n
}

fn close_statement(out: &mut BytesMut, name: &[u8]) {
    put_message(out, b'C', &[b"S", name, b"\0"]);
}

/// Appends a message of type `tag` whose body is `parts`, concatenated.
fn put_message(out: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum::<usize>() + 4;
    out.reserve(len + 1);
    out.put_u8(tag);
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// Splits a NUL-terminated string off the front of `body`.
fn cstr<'a>(body: &'a [u8], what: &'static str) -> Result<(&'a [u8], &'a [u8]), ProtocolError> {
    let nul = body
        .iter()
        .position(|b| *b == 0)
        .ok_or(ProtocolError::Malformed { what })?;
    Ok((
        body.get(..nul).unwrap_or_default(),
        body.get(nul + 1..).unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests;
