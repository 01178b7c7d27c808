//! Session features that cannot move between server connections, found in
//! the SQL a client sends in transaction mode.
//!
//! A transaction-mode client runs each transaction on whichever server
//! connection is free. State that outlives a transaction on the server
//! would be lost (or, worse, met by another client) when the next
//! transaction runs elsewhere, so a client that creates such state is
//! *pinned*: it keeps its server connection until it leaves, as in session
//! mode. The check is a light lexer over the statement text (comments and
//! quoted strings skipped), looking at how each statement starts, plus a few
//! function names anywhere: it errs on the side of pinning.

/// Settings whose changes the server reports (ParameterStatus), which the
/// proxy tracks per client and replays on the next server connection
/// (PgBouncer's varcache): SET of these does not pin.
pub const TRACKED_SETTINGS: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "timezone",
    "standard_conforming_strings",
];

/// True for a setting the proxy tracks (case-insensitive).
pub fn is_tracked(name: &str) -> bool {
    TRACKED_SETTINGS
        .iter()
        .any(|t| t.eq_ignore_ascii_case(name))
}

/// What a client's SQL does to the session, as far as pooling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SqlEffects {
    /// A session feature that pins the client to its server, named for
    /// logs and the admin API.
    pub pins: Option<&'static str>,
    /// `DISCARD ALL` / `DISCARD PLANS` / `DEALLOCATE`: the server forgets
    /// its prepared statements.
    pub drops_statements: bool,
    /// `DISCARD ALL` / `RESET`: settings go back to the server
    /// connection's own defaults, whatever was applied for the client.
    pub resets_settings: bool,
    /// `SET search_path`: a setting the server does not report, read back
    /// by the proxy at the release point, so it follows the client like the
    /// tracked ones ([`READ_BACK`]).
    pub reads_back: bool,
}

/// Settings the server does not report (no ParameterStatus) that the proxy
/// still lets clients SET in transaction mode: it reads them back when the
/// transaction is over, so a rolled-back or LOCAL change is seen as such.
pub const READ_BACK: &[&str] = &["search_path"];

/// Looks at `sql` (one Query or Parse text, possibly several statements).
/// Runs on every statement a transaction-mode client sends, so the common
/// statement (a SELECT, an INSERT...) costs a walk over its words and
/// nothing else: no copy, no allocation.
pub fn effects(sql: &[u8]) -> SqlEffects {
    if plainly_none(sql) {
        return SqlEffects::default();
    }
    full_effects(sql)
}

/// The walk over every word of `sql` that [`effects`] spares the common
/// statement.
fn full_effects(sql: &[u8]) -> SqlEffects {
    let mut fx = SqlEffects::default();
    // The first few words of a statement say what it is.
    let mut first: [&[u8]; FIRST_WORDS] = [b""; FIRST_WORDS];
    let mut n = 0usize;
    let mut prev: &[u8] = b"";
    for w in Words::new(sql).chain(std::iter::once(Word::End)) {
        match w {
            Word::Ident(w) => {
                // Anywhere in a statement, not only at its start.
                if fx.pins.is_none() {
                    fx.pins = anywhere_pins(prev, w);
                }
                prev = w;
                if let Some(slot) = first.get_mut(n) {
                    *slot = w;
                    n += 1;
                }
            }
            Word::Semicolon | Word::End => {
                let words = first.get(..n).unwrap_or_default();
                if words.first().is_some_and(|w| starts_with_effect(w)) {
                    statement_words(words, |words| {
                        let (pins, drops) = statement_effects(words);
                        fx.pins = fx.pins.or(pins);
                        fx.drops_statements |= drops;
                        fx.resets_settings |=
                            matches!(words, ["discard", "all", ..] | ["reset", ..]);
                        fx.reads_back |= matches!(
                            words,
                            ["set", "search_path", ..] | ["set", "session", "search_path", ..]
                        );
                    });
                }
                n = 0;
                prev = b"";
            }
        }
    }
    fx
}

/// True when `sql` has no effect, seen in one pass over its bytes and
/// erring towards `false` (then the full walk decides): one statement (a
/// `;` only at the end), nothing a word could hide in from this look (no
/// quote, comment or `$`), a first word that starts no statement with an
/// effect, and none of the words [`anywhere_pins`] looks for anywhere in
/// it, not even inside another word. Most of what clients send (a SELECT,
/// an INSERT, BEGIN, COMMIT...) is decided here at a few instructions a
/// byte.
fn plainly_none(sql: &[u8]) -> bool {
    // Eight bytes at a time: only the bytes [`worth_a_look`] marks are
    // looked at more closely.
    let mut i = 0usize;
    while let (Some(word), Some(next)) = (eight(sql, i), eight(sql, i + 1)) {
        let mut marked = worth_a_look(word, next);
        while marked != 0 {
            // The high bit of a byte: its place in the word.
            let at = i + (marked.trailing_zeros() / 8) as usize;
            if !plain_at(sql, at) {
                return false;
            }
            marked &= marked - 1;
        }
        i += 8;
    }
    for at in i..sql.len() {
        if !plain_at(sql, at) {
            return false;
        }
    }
    // The first word, as the lexer finds it.
    let Some(start) = sql.iter().position(|&c| class(c) & START != 0) else {
        return true;
    };
    let rest = sql.get(start..).unwrap_or_default();
    let len = rest
        .iter()
        .position(|&c| class(c) & PART == 0)
        .unwrap_or(rest.len());
    !starts_with_effect(rest.get(..len).unwrap_or_default())
}

/// False when the byte at `at` makes [`plainly_none`] say no: a character
/// that may start a comment, a quote, `$`, a `;` before the end, or the
/// start of a piece of a word [`anywhere_word_at`] knows.
fn plain_at(sql: &[u8], at: usize) -> bool {
    let Some(&b) = sql.get(at) else {
        return true;
    };
    let k = quick(b);
    if k == 0 {
        return true;
    }
    if k & QUICK_SPECIAL != 0 {
        let next = sql.get(at + 1).copied();
        return match b {
            // A minus or a division, not a comment.
            b'-' => next != Some(b'-'),
            b'/' => next != Some(b'*'),
            // Nothing but white space after it: one statement.
            b';' => sql
                .get(at + 1..)
                .is_some_and(|rest| rest.iter().all(u8::is_ascii_whitespace)),
            _ => false,
        };
    }
    !anywhere_word_at(sql.get(at..).unwrap_or_default())
}

/// The eight bytes from `at`, as a word (first byte lowest).
fn eight(sql: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = sql.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// The bytes of a word of SQL (`word`, and `next`: the same bytes one
/// further on) that may be what [`plain_at`] says no to, by the high bit
/// of each: one of `;-/'"$`, or the first of a pair of letters that may
/// start `advisory`, `config`, `hold` or `temp` in any case. Such a byte is
/// always marked; now and then, a byte after it is too.
fn worth_a_look(word: u64, next: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte of `x` equal to `b` (and perhaps of some
    // byte above one that is: never a miss).
    let eq = |x: u64, b: u8| {
        let y = x ^ (ONES * u64::from(b));
        y.wrapping_sub(ONES) & !y & HIGHS
    };
    let special = eq(word, b';')
        | eq(word, b'-')
        | eq(word, b'/')
        | eq(word, b'\'')
        | eq(word, b'"')
        | eq(word, b'$');
    // Letters in lower case (other bytes change too, into no letter that
    // matters here: only A-Z become a-z with this bit).
    let (lower, lower_next) = (word | (ONES * 0x20), next | (ONES * 0x20));
    let pairs = (eq(lower, b'a') & eq(lower_next, b'd'))
        | ((eq(lower, b'c') | eq(lower, b'h')) & eq(lower_next, b'o'))
        | (eq(lower, b't') & eq(lower_next, b'e'));
    special | pairs
}

/// True when `at` starts with a piece of a word [`anywhere_pins`] looks
/// for (`advisory` of the lock functions, `config` of `set_config`,
/// `hold`, `temp` of `temp`, `temporary` and `pg_temp`), in any case.
fn anywhere_word_at(at: &[u8]) -> bool {
    let starts = |w: &[u8]| at.get(..w.len()).is_some_and(|a| a.eq_ignore_ascii_case(w));
    match at.get(1).map(u8::to_ascii_lowercase) {
        Some(b'd') => starts(b"advisory"),
        Some(b'o') => starts(b"config") || starts(b"hold"),
        Some(b'e') => starts(b"temp"),
        _ => false,
    }
}

/// [`plainly_none`]'s look at a byte: a character it must look at more
/// closely (`;`, `-`, `/`, quotes, `$`), the first letter of a word
/// [`anywhere_word_at`] knows, or nothing (0).
const QUICK_SPECIAL: u8 = 1;
const QUICK_LETTER: u8 = 2;
fn quick(b: u8) -> u8 {
    QUICK.get(usize::from(b)).copied().unwrap_or(0)
}
#[allow(clippy::indexing_slicing)] // const evaluation: out of bounds fails the build
static QUICK: [u8; 256] = {
    let mut t = [0u8; 256];
    let special = b";-/'\"$";
    let mut i = 0;
    while i < special.len() {
        t[special[i] as usize] = QUICK_SPECIAL;
        i += 1;
    }
    let letters = b"achtACHT";
    let mut i = 0;
    while i < letters.len() {
        t[letters[i] as usize] = QUICK_LETTER;
        i += 1;
    }
    t
};

/// True when a statement starting with `word` can have an effect
/// [`statement_effects`] knows of.
fn starts_with_effect(word: &[u8]) -> bool {
    const FIRST: &[&[u8]] = &[
        b"listen",
        b"set",
        b"reset",
        b"create",
        b"do",
        b"prepare",
        b"execute",
        b"deallocate",
        b"discard",
        b"load",
    ];
    FIRST.iter().any(|k| k.eq_ignore_ascii_case(word))
}

/// Calls `f` with a statement's first words in lower case (cut at
/// [`WORD_LEN`] bytes: no keyword or tracked setting is that long).
fn statement_words(words: &[&[u8]], f: impl FnOnce(&[&str])) {
    let mut lower = [[0u8; WORD_LEN]; FIRST_WORDS];
    let mut out = [""; FIRST_WORDS];
    for ((buf, o), w) in lower.iter_mut().zip(out.iter_mut()).zip(words) {
        let len = w.len().min(WORD_LEN);
        for (d, c) in buf.iter_mut().zip(w.iter()) {
            *d = c.to_ascii_lowercase();
        }
        *o = std::str::from_utf8(buf.get(..len).unwrap_or_default()).unwrap_or("");
    }
    f(out.get(..words.len()).unwrap_or_default());
}

/// Session state made by a word anywhere in a statement (given the word
/// before it): session advisory locks, `set_config()`, `WITH HOLD`,
/// `INTO TEMP`, objects in `pg_temp`.
pub(super) fn anywhere_pins(prev: &[u8], word: &[u8]) -> Option<&'static str> {
    // Every word looked for starts with one of these letters: most words
    // are passed over at the first byte.
    if !matches!(
        word.first().map(u8::to_ascii_lowercase),
        Some(b'p' | b's' | b'h' | b't')
    ) {
        return None;
    }
    let is = |a: &[u8], b: &str| a.eq_ignore_ascii_case(b.as_bytes());
    if is_session_lock_function(word) {
        Some("session advisory lock")
    } else if is(word, "set_config") {
        Some("set_config()")
    } else if is(prev, "with") && is(word, "hold") {
        Some("WITH HOLD cursor")
    } else if (is(prev, "into") && (is(word, "temp") || is(word, "temporary")))
        || is(word, "pg_temp")
    {
        Some("temporary table")
    } else {
        None
    }
}

/// Words of a statement looked at, and the length they are compared to
/// (longer words are cut: no keyword or tracked setting is that long).
const FIRST_WORDS: usize = 8;
const WORD_LEN: usize = 32;

fn is_session_lock_function(word: &[u8]) -> bool {
    [
        &b"pg_advisory_lock"[..],
        b"pg_advisory_lock_shared",
        b"pg_try_advisory_lock",
        b"pg_try_advisory_lock_shared",
    ]
    .iter()
    .any(|f| f.eq_ignore_ascii_case(word))
}

/// (pins, drops statements) of one statement, given its first words
/// (lower case).
fn statement_effects(s: &[&str]) -> (Option<&'static str>, bool) {
    match s {
        ["listen", ..] => (Some("LISTEN"), false),
        ["set", "local" | "transaction" | "constraints", ..] => (None, false),
        ["set", "session", "characteristics", ..] => (Some("SET SESSION CHARACTERISTICS"), false),
        ["set", "session", "authorization", ..] | ["set", "role", ..] => {
            (Some("SET ROLE / SESSION AUTHORIZATION"), false)
        }
        ["set", "session", name, ..] | ["set", name, ..] => {
            if is_tracked(name)
                || READ_BACK.contains(name)
                || (*name == "time" && s.contains(&"zone"))
            {
                (None, false)
            } else {
                (Some("SET of a setting the proxy does not track"), false)
            }
        }
        ["reset", "all", ..] => (None, false),
        ["create", rest @ ..] if is_temp_create(rest) => (Some("temporary table"), false),
        // What a DO block does is not looked into.
        ["do", ..] => (Some("DO block"), false),
        ["prepare", ..] | ["execute", ..] => (Some("SQL PREPARE / EXECUTE"), false),
        ["deallocate", ..] => (Some("SQL PREPARE / EXECUTE"), true),
        ["discard", "all" | "plans", ..] => (None, true),
        ["discard", "temp" | "temporary" | "sequences", ..] => (None, false),
        ["load", ..] => (Some("LOAD"), false),
        _ => (None, false),
    }
}

/// `CREATE [GLOBAL|LOCAL] TEMP[ORARY] ...` (tables, views, sequences).
pub(super) fn is_temp_create(rest: &[&str]) -> bool {
    rest.iter()
        .take(3)
        .any(|w| *w == "temp" || *w == "temporary")
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Word<'a> {
    Ident(&'a [u8]),
    Semicolon,
    End,
}

/// Lower-cased identifiers and keywords of SQL text, with `;` between
/// statements; comments, quoted strings and quoted identifiers are skipped
/// (a dollar-quoted body too).
pub(super) struct Words<'a> {
    sql: &'a [u8],
    pos: usize,
}

impl<'a> Words<'a> {
    pub(super) fn new(sql: &'a [u8]) -> Self {
        Words { sql, pos: 0 }
    }

    fn peek(&self, ahead: usize) -> Option<u8> {
        self.sql.get(self.pos + ahead).copied()
    }

    /// Skips the rest of an E'...' string: to just after its closing quote
    /// (not one escaped with a backslash, nor a doubled one).
    fn skip_escape_string(&mut self) {
        while let Some(&c) = self.sql.get(self.pos) {
            self.pos += 1;
            match c {
                b'\\' => self.pos += 1,
                b'\'' if self.peek(0) == Some(b'\'') => self.pos += 1,
                b'\'' => return,
                _ => {}
            }
        }
        self.pos = self.pos.min(self.sql.len());
    }

    /// Skips to just after `end`, or to the end of the text.
    fn skip_past(&mut self, end: &[u8]) {
        match self
            .sql
            .get(self.pos..)
            .and_then(|rest| rest.windows(end.len()).position(|w| w == end))
        {
            Some(i) => self.pos += i + end.len(),
            None => self.pos = self.sql.len(),
        }
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = Word<'a>;

    fn next(&mut self) -> Option<Word<'a>> {
        let sql = self.sql;
        while let Some(&c) = sql.get(self.pos) {
            let kind = class(c);
            if kind == OTHER {
                self.pos += 1;
                continue;
            }
            if kind & START != 0 {
                let start = self.pos;
                self.pos += 1;
                while sql.get(self.pos).is_some_and(|b| class(*b) & PART != 0) {
                    self.pos += 1;
                }
                let word = sql.get(start..self.pos).unwrap_or_default();
                // E'...': a string with backslash escapes, where \' does not
                // end it (else a quote could hide a statement behind it).
                if word.eq_ignore_ascii_case(b"e") && sql.get(self.pos) == Some(&b'\'') {
                    self.pos += 1;
                    self.skip_escape_string();
                    continue;
                }
                return Some(Word::Ident(word));
            }
            match c {
                b';' => {
                    self.pos += 1;
                    return Some(Word::Semicolon);
                }
                b'-' if self.peek(1) == Some(b'-') => self.skip_past(b"\n"),
                b'/' if self.peek(1) == Some(b'*') => {
                    self.pos += 2;
                    self.skip_past(b"*/");
                }
                b'\'' => {
                    // '' inside a string is two strings back to back: same result.
                    self.pos += 1;
                    self.skip_past(b"'");
                }
                b'"' => {
                    // A quoted identifier is a word (`SET "search_path" ...`).
                    let start = self.pos + 1;
                    self.pos += 1;
                    self.skip_past(b"\"");
                    let end = self.pos.saturating_sub(1).max(start);
                    return Some(Word::Ident(self.sql.get(start..end).unwrap_or_default()));
                }
                b'$' => {
                    // $tag$ ... $tag$, or a parameter like $1.
                    let rest = self.sql.get(self.pos + 1..).unwrap_or_default();
                    let tag_len = rest
                        .iter()
                        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                        .count();
                    if rest.get(tag_len) == Some(&b'$')
                        && !rest.first().is_some_and(u8::is_ascii_digit)
                    {
                        let delim = self
                            .sql
                            .get(self.pos..self.pos + tag_len + 2)
                            .unwrap_or_default()
                            .to_vec();
                        self.pos += delim.len();
                        self.skip_past(&delim);
                    } else {
                        self.pos += 1 + tag_len;
                    }
                }
                _ => self.pos += 1,
            }
        }
        None
    }
}

/// What a byte can be to the lexer: nothing to it ([`OTHER`]), the start
/// of a word ([`START`]), part of a word ([`PART`]), or the start of
/// something else it must look at (`;`, comments, quotes, `$`).
const OTHER: u8 = 0;
const START: u8 = 1;
const PART: u8 = 2;
const SPECIAL: u8 = 4;
fn class(b: u8) -> u8 {
    // 256 entries: never out of bounds, and compiled without a check.
    CLASS.get(usize::from(b)).copied().unwrap_or(OTHER)
}
#[allow(clippy::indexing_slicing)] // const evaluation: out of bounds fails the build
static CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut c = 0usize;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphabetic() || b == b'_' {
            t[c] = START | PART;
        } else if b.is_ascii_digit() {
            t[c] = PART;
        }
        c += 1;
    }
    t[b'$' as usize] = PART | SPECIAL;
    t[b';' as usize] = SPECIAL;
    t[b'-' as usize] = SPECIAL;
    t[b'/' as usize] = SPECIAL;
    t[b'\'' as usize] = SPECIAL;
    t[b'"' as usize] = SPECIAL;
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn pins(sql: &str) -> Option<&'static str> {
        effects(sql.as_bytes()).pins
    }

    #[test]
    fn an_escaped_quote_in_an_e_string_hides_no_statement() {
        assert_eq!(
            pins(r"SELECT E'\''; SET ROLE x; --'"),
            Some("SET ROLE / SESSION AUTHORIZATION")
        );
        assert_eq!(pins(r"SELECT e'it''s \\'; LISTEN q"), Some("LISTEN"));
        assert_eq!(pins(r"SELECT E'\'; LISTEN q'"), None);
        // A word e followed by no string is still a word.
        assert_eq!(pins("SELECT e FROM t"), None);
    }

    #[test]
    fn session_state_pins_and_transaction_state_does_not() {
        assert_eq!(pins("LISTEN jobs"), Some("LISTEN"));
        assert_eq!(
            pins("  create TEMP table t (x int)"),
            Some("temporary table")
        );
        assert_eq!(
            pins("CREATE LOCAL TEMPORARY TABLE t(x int)"),
            Some("temporary table")
        );
        assert_eq!(
            pins("select pg_advisory_lock(1)"),
            Some("session advisory lock")
        );
        assert_eq!(pins("select pg_advisory_xact_lock(1)"), None);
        assert_eq!(
            pins("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
            Some("WITH HOLD cursor")
        );
        assert_eq!(pins("DECLARE c CURSOR FOR SELECT 1"), None);
        assert_eq!(pins("set search_path = app"), None, "read back");
        assert!(effects(b"SET search_path TO app, public").reads_back);
        assert!(!effects(b"RESET search_path").reads_back);
        assert!(effects(b"RESET search_path").resets_settings);
        assert!(!effects(b"SET TimeZone = 'UTC'").reads_back);
        assert_eq!(
            pins("set work_mem = '64MB'"),
            Some("SET of a setting the proxy does not track")
        );
        assert_eq!(pins("SET application_name = 'x'"), None);
        assert_eq!(pins("SET SESSION TimeZone TO 'UTC'"), None);
        assert_eq!(pins("set time zone 'UTC'"), None);
        assert_eq!(pins("SET LOCAL search_path = app"), None);
        assert_eq!(pins("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"), None);
        assert_eq!(pins("PREPARE p AS SELECT 1"), Some("SQL PREPARE / EXECUTE"));
        assert_eq!(pins("SELECT 1; LISTEN x; SELECT 2"), Some("LISTEN"));
        assert_eq!(pins("BEGIN; SELECT 1; COMMIT"), None);
        assert_eq!(pins("select 1"), None);
    }

    #[test]
    fn session_state_anywhere_in_a_statement_pins() {
        assert_eq!(pins("SET \"search_path\" = 'x'"), None);
        assert!(effects(b"SET \"search_path\" = 'x'").reads_back);
        assert_eq!(
            pins("SET \"work_mem\" = '1MB'"),
            Some("SET of a setting the proxy does not track")
        );
        assert_eq!(
            pins("DO $$ BEGIN PERFORM set_config('search_path', 'x', false); END $$"),
            Some("DO block")
        );
        assert_eq!(
            pins("SELECT a.x, a.y, a.z, a.w, a.v, set_config('search_path', 'x', false) FROM a"),
            Some("set_config()")
        );
        assert_eq!(pins("SELECT 1 INTO TEMP t"), Some("temporary table"));
        assert_eq!(
            pins("CREATE TABLE pg_temp.t (x int)"),
            Some("temporary table")
        );
        assert_eq!(
            pins("DECLARE c NO SCROLL BINARY INSENSITIVE CURSOR WITH HOLD FOR SELECT 1"),
            Some("WITH HOLD cursor")
        );
        assert!(effects(b"RESET ALL").resets_settings);
        assert!(effects(b"discard all").resets_settings);
        assert!(!effects(b"SELECT 1").resets_settings);
    }

    #[test]
    fn comments_and_quoted_text_do_not_pin() {
        for (sql, pinned) in [
            ("SELECT 'LISTEN x; listen y'", None),
            ("-- listen x\nSELECT 1", None),
            ("/* LISTEN x */ SELECT 1", None),
            ("SELECT \"listen\" FROM t", None),
            ("SELECT $$; LISTEN x$$", None),
            ("SELECT $q$ pg_advisory_lock( $q$, $1", None),
            ("SELECT 1 /* ; */ ; LISTEN x", Some("LISTEN")),
        ] {
            assert_eq!(pins(sql), pinned, "{sql}");
        }
    }

    #[test]
    fn discard_all_drops_the_servers_statements() {
        assert!(effects(b"DISCARD ALL").drops_statements);
        assert!(effects(b"deallocate all").drops_statements);
        assert!(!effects(b"SELECT 1").drops_statements);
    }

    #[test]
    fn garbage_and_unterminated_text_end_cleanly() {
        for sql in [
            &b"'unterminated"[..],
            b"/* open",
            b"$a$ open",
            b"\xff\xfe;;",
            b"",
        ] {
            let _ = effects(sql);
        }
    }

    #[test]
    fn the_quick_look_passes_the_common_statements_and_nothing_with_an_effect() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
            "UPDATE pgbench_accounts SET abalance = abalance + -5 WHERE aid = 7;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP);",
            "BEGIN;",
            "END;",
            "COMMIT",
            "select 1/2",
            "",
        ] {
            assert!(plainly_none(sql.as_bytes()), "{sql}");
        }
        // Everything the tests above find an effect in goes the full way.
        for sql in [
            "LISTEN jobs",
            "SET work_mem = 1",
            "select pg_advisory_lock(1)",
            "SELECT 1 INTO TEMP t",
            "CREATE TABLE pg_temp.t (x int)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "SELECT set_config('a', 'b', false)",
            "SELECT 1; LISTEN x",
            "/* x */ LISTEN x",
            "discard all",
            "(LISTEN x)",
        ] {
            assert!(!plainly_none(sql.as_bytes()), "{sql}");
            assert_ne!(effects(sql.as_bytes()), SqlEffects::default(), "{sql}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        /// The quick look never passes text the full walk finds an effect in.
        #[test]
        fn the_quick_look_never_hides_an_effect(
            parts in proptest::collection::vec(proptest::sample::select(&[
                "SELECT", "select", "LISTEN", "listen", "set", "SET", "Reset", "create", "TEMP",
                "temporary", "pg_temp", "into", "INTO", "with", "HOLD", "hold", "pg_advisory_lock",
                "PG_TRY_ADVISORY_LOCK", "set_config", "DO", "prepare", "execute", "deallocate",
                "discard", "all", "plans", "load", "search_path", "work_mem", "application_name",
                "local", "session", "role", "time", "zone", "t", "x", "e", "E", "abalance",
                "pgbench_accounts", "1", "42", " ", "  ", "\n", "(", ")", ",", ".", "=", "-", "--",
                "/", "/*", "*/", "*", ";", "'", "''", "\"", "$", "$$", "$q$", "$1", "\\",
                "\u{e9}", "\t", "\u{b}", "\r", "config", "advisory_lock",
                // Pieces of the letter pairs the eight-byte look marks.
                "C", "o", "h", "O", "a", "D", "emp", "MP", "old", "onfig", "dvisory", "tE",
            ][..]), 0..12)
        ) {
            let sql: String = parts.concat();
            if plainly_none(sql.as_bytes()) {
                proptest::prop_assert_eq!(full_effects(sql.as_bytes()), SqlEffects::default(), "{}", sql);
            }
        }
    }
}
