//! Which client requests may go to a standby: a pure classifier.
//!
//! The SQL is parsed with `sqlparser`'s PostgreSQL dialect (pure Rust: no
//! C build, no libclang, and a parse of a pgbench `-S` statement costs a
//! few microseconds). It is used as an allow-list: a statement goes to a
//! standby only when the parse proves it reads, so a statement the dialect
//! cannot parse, or parses as anything else, goes to the primary. That
//! makes a gap in the dialect cost a missed balance, never a write sent to
//! a standby (which would refuse it anyway: a standby runs every
//! transaction read-only).
//!
//! Reads: `SELECT` (and `VALUES`, set operations, `WITH` of reads) without
//! `FOR UPDATE/SHARE`, without `INTO`, without data-modifying CTEs, calling
//! only functions on the read-only list (built in, plus
//! `proxy.read_only_functions`); `EXPLAIN` of a read; and, as the
//! start of a read-only transaction, `BEGIN`/`START TRANSACTION READ ONLY`
//! (plain `BEGIN` when the client set `default_transaction_read_only`) and
//! `SET TRANSACTION READ ONLY`, with `COMMIT`/`ROLLBACK`. A SERIALIZABLE
//! transaction is not: a hot standby refuses it. A `/*NO LOAD BALANCE*/`
//! comment sends its statement to the primary. What answers for the
//! server that runs it (`SHOW`, `pg_is_in_recovery()`, `inet_server_port()`,
//! `pg_backend_pid()`, `version()`) is not a read here: a driver asking
//! whether it reached the primary must hear the primary's answer.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlparser::ast::{
    Expr, Function, ObjectName, ObjectNamePart, Query, Select, SetExpr, Statement, TableFactor,
    TransactionAccessMode, TransactionIsolationLevel, TransactionMode, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// The comment that forces the primary (pgpool's spelling).
pub const NO_LOAD_BALANCE: &str = "/*NO LOAD BALANCE*/";

/// Functions a load-balanced statement may call: they read nothing but
/// their arguments and the catalogs, and write nothing (pgpool leaves this
/// to `read_only_function_list`; a built-in list keeps the common reads
/// balanced without one).
const READ_ONLY_FUNCTIONS: &[&str] = &[
    // aggregates
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "stddev",
    "variance",
    "percentile_cont",
    "percentile_disc",
    "mode",
    // window functions
    "row_number",
    "rank",
    "dense_rank",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "ntile",
    // conditional and comparison
    "coalesce",
    "nullif",
    "greatest",
    "least",
    // math
    "abs",
    "ceil",
    "ceiling",
    "floor",
    "round",
    "trunc",
    "sqrt",
    "power",
    "mod",
    "exp",
    "ln",
    "log",
    "sign",
    "random",
    "div",
    // strings
    "lower",
    "upper",
    "length",
    "char_length",
    "octet_length",
    "substr",
    "substring",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "replace",
    "concat",
    "concat_ws",
    "format",
    "left",
    "right",
    "position",
    "strpos",
    "split_part",
    "md5",
    "encode",
    "decode",
    "to_char",
    "to_number",
    "to_date",
    "to_timestamp",
    "regexp_replace",
    "regexp_match",
    "regexp_matches",
    "lpad",
    "rpad",
    "repeat",
    "reverse",
    "initcap",
    "quote_ident",
    "quote_literal",
    "starts_with",
    // date and time
    "now",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtime",
    "localtimestamp",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "date_trunc",
    "date_part",
    "extract",
    "age",
    "make_date",
    "make_interval",
    "make_timestamp",
    "make_timestamptz",
    "timezone",
    "to_timestamp",
    // json
    "to_json",
    "to_jsonb",
    "json_build_object",
    "jsonb_build_object",
    "json_build_array",
    "jsonb_build_array",
    "row_to_json",
    "array_to_json",
    "jsonb_extract_path",
    "json_extract_path",
    "jsonb_extract_path_text",
    "json_extract_path_text",
    "jsonb_array_length",
    "json_array_length",
    "jsonb_typeof",
    "json_typeof",
    "jsonb_pretty",
    "jsonb_set",
    "jsonb_strip_nulls",
    "jsonb_each",
    "json_each",
    "jsonb_array_elements",
    "json_array_elements",
    // arrays and sets
    "array_length",
    "cardinality",
    "unnest",
    "array_position",
    "array_remove",
    "array_append",
    "array_prepend",
    "array_cat",
    "array_to_string",
    "string_to_array",
    "generate_series",
    "generate_subscripts",
    // the session and the server
    "current_database",
    "current_schema",
    "current_schemas",
    "current_user",
    "session_user",
    "user",
    "current_role",
    "current_catalog",
    "current_setting",
    "inet_client_addr",
    "inet_client_port",
    "pg_typeof",
    "pg_sleep",
    "pg_size_pretty",
    "pg_relation_size",
    "pg_total_relation_size",
    "pg_database_size",
    "pg_table_size",
    "pg_indexes_size",
    "has_table_privilege",
    "has_schema_privilege",
    "has_database_privilege",
    "pg_get_userbyid",
    "format_type",
    "obj_description",
    "col_description",
    "pg_get_expr",
    "pg_get_indexdef",
    "pg_get_constraintdef",
    "pg_get_viewdef",
    "pg_table_is_visible",
];

/// What the first request of a transaction is, for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// It only reads (or starts a read-only transaction): any eligible
    /// server may run it.
    Read,
    /// Anything else: the primary.
    Primary,
}

/// The read-only function list, built in plus configured.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    /// `proxy.read_only_functions`, lower-cased.
    extra: HashSet<String>,
    /// Which classifier's answers a thread's cache holds (0: the default).
    id: u64,
}

/// Texts of prepared statements remembered per thread and classifier, at
/// most this many (then forgotten all at once).
const REMEMBERED: usize = 4096;
/// Longer texts are not remembered.
const REMEMBERED_LEN: usize = 4096;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// [`Classifier::autocommit_prepared`]'s answers: a driver's prepared
    /// statement comes again and again with the same text.
    static PREPARED: RefCell<HashMap<u64, HashMap<Box<str>, Class>>> =
        RefCell::new(HashMap::new());
}

impl Classifier {
    /// A classifier that also allows `extra` functions.
    pub fn new(extra: &[String]) -> Classifier {
        Classifier {
            extra: extra.iter().map(|f| f.to_ascii_lowercase()).collect(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// As [`Classifier::autocommit`], for the text of an extended-protocol
    /// statement (its parameters are apart from it, so it comes again):
    /// remembered per thread, a parse spared on the next time.
    pub fn autocommit_prepared(&self, text: &str) -> Class {
        if text.len() > REMEMBERED_LEN {
            return self.autocommit(text);
        }
        let known = PREPARED.with(|c| c.borrow().get(&self.id).and_then(|m| m.get(text)).copied());
        if let Some(class) = known {
            return class;
        }
        let class = self.autocommit(text);
        PREPARED.with(|c| {
            let mut c = c.borrow_mut();
            let mine = c.entry(self.id).or_default();
            if mine.len() >= REMEMBERED {
                mine.clear();
            }
            mine.insert(text.into(), class);
        });
        class
    }

    /// Classifies the text of one Query or Parse (one or more statements).
    /// `read_only_default`: the client's `default_transaction_read_only`
    /// is on, so a plain `BEGIN` starts a read-only transaction.
    pub fn sql(&self, text: &str, read_only_default: bool) -> Class {
        self.classify(text, read_only_default, true)
    }

    /// As [`Classifier::sql`], but `Read` only for statements that run
    /// in autocommit and leave no transaction open (no `BEGIN`, `COMMIT`,
    /// `SET TRANSACTION`): the server is idle again after them.
    pub fn autocommit(&self, text: &str) -> Class {
        self.classify(text, false, false)
    }

    /// True when `text` starts a read-only transaction that a hot standby
    /// can run (`BEGIN READ ONLY`, `START TRANSACTION READ ONLY`, a plain
    /// `BEGIN` with `default_transaction_read_only`, or `BEGIN; SET
    /// TRANSACTION READ ONLY`), and whatever follows it in the same text
    /// only reads. The rest of the transaction then runs where it started:
    /// PostgreSQL refuses its writes there as on the primary (25006).
    pub fn starts_read_only(&self, text: &str, read_only_default: bool) -> bool {
        if text.contains(NO_LOAD_BALANCE) {
            return false;
        }
        let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, text) else {
            return false;
        };
        let [first, rest @ ..] = statements.as_slice() else {
            return false;
        };
        let Statement::StartTransaction {
            modes, statements, ..
        } = first
        else {
            return false;
        };
        let set_read_only = || {
            matches!(
                rest.first(),
                Some(Statement::Set(sqlparser::ast::Set::SetTransaction {
                    modes,
                    snapshot: None,
                    session: false,
                })) if read_only_modes(modes, false)
            )
        };
        // With `default` true the modes are refused only for READ WRITE or
        // SERIALIZABLE.
        let read_only = read_only_modes(modes, read_only_default)
            || (read_only_modes(modes, true) && set_read_only());
        statements.is_empty()
            && read_only
            && rest.iter().all(|s| self.statement(s, read_only_default))
    }

    fn classify(&self, text: &str, read_only_default: bool, transactions: bool) -> Class {
        if text.contains(NO_LOAD_BALANCE) {
            return Class::Primary;
        }
        let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, text) else {
            return Class::Primary;
        };
        if statements.is_empty() {
            return Class::Primary;
        }
        let all_read = statements.iter().all(|s| {
            (transactions || !is_transaction_control(s)) && self.statement(s, read_only_default)
        });
        if all_read {
            Class::Read
        } else {
            Class::Primary
        }
    }

    fn statement(&self, s: &Statement, read_only_default: bool) -> bool {
        match s {
            Statement::Query(q) => self.query(q),
            Statement::Explain { statement, .. } => self.statement(statement, read_only_default),
            Statement::StartTransaction {
                modes, statements, ..
            } => statements.is_empty() && read_only_modes(modes, read_only_default),
            Statement::Set(sqlparser::ast::Set::SetTransaction {
                modes,
                snapshot: None,
                session: false,
            }) => read_only_modes(modes, false),
            Statement::Commit { chain: false, .. }
            | Statement::Rollback {
                chain: false,
                savepoint: None,
            } => true,
            _ => false,
        }
    }

    /// A query reads only when nothing in it locks, creates or writes, and
    /// every function it calls is on the list.
    fn query(&self, q: &Query) -> bool {
        let mut check = ReadOnly { functions: self };
        !q.visit(&mut check).is_break()
    }

    fn allows(&self, name: &ObjectName) -> bool {
        let parts: Vec<&ObjectNamePart> = name.0.iter().collect();
        let (schema, last) = match parts.as_slice() {
            [last] => (None, *last),
            [schema, last] => (Some(*schema), *last),
            _ => return false,
        };
        let ident = |p: &ObjectNamePart| match p {
            ObjectNamePart::Identifier(i) if i.quote_style.is_none() => {
                Some(i.value.to_ascii_lowercase())
            }
            ObjectNamePart::Identifier(i) => Some(i.value.clone()),
            ObjectNamePart::Function(_) => None,
        };
        if let Some(s) = schema
            && ident(s).as_deref() != Some("pg_catalog")
        {
            return false;
        }
        let Some(f) = ident(last) else {
            return false;
        };
        READ_ONLY_FUNCTIONS.contains(&f.as_str()) || self.extra.contains(&f)
    }
}

fn is_transaction_control(s: &Statement) -> bool {
    matches!(
        s,
        Statement::StartTransaction { .. }
            | Statement::Set(sqlparser::ast::Set::SetTransaction { .. })
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
    )
}

/// `BEGIN`/`SET TRANSACTION` modes that make the transaction read-only
/// and runnable on a hot standby.
fn read_only_modes(modes: &[TransactionMode], read_only_default: bool) -> bool {
    let mut read_only = read_only_default;
    for m in modes {
        match m {
            TransactionMode::AccessMode(TransactionAccessMode::ReadOnly) => read_only = true,
            TransactionMode::AccessMode(TransactionAccessMode::ReadWrite) => return false,
            // A hot standby refuses SERIALIZABLE.
            TransactionMode::IsolationLevel(TransactionIsolationLevel::Serializable) => {
                return false;
            }
            TransactionMode::IsolationLevel(_) => {}
        }
    }
    read_only
}

/// Stops at the first thing that is not a read.
struct ReadOnly<'a> {
    functions: &'a Classifier,
}

impl Visitor for ReadOnly<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        // FOR UPDATE/SHARE take row locks: the primary's.
        if !q.locks.is_empty() || q.for_clause.is_some() {
            return ControlFlow::Break(());
        }
        match &*q.body {
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        // SELECT ... INTO creates a table.
        if s.into.is_some() {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::Function(Function { name, .. }) if !self.functions.allows(name) => {
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        match t {
            // A table, or a set-returning function in FROM.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. }
                if !self.functions.allows(name) =>
            {
                ControlFlow::Break(())
            }
            TableFactor::TableFunction { .. } => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(sql: &str) -> Class {
        Classifier::new(&["my_report".to_owned()]).sql(sql, false)
    }

    #[test]
    fn plain_reads_may_go_to_a_standby() {
        for sql in [
            "SELECT 1",
            "select abalance from pgbench_accounts where aid = $1",
            "SELECT a.x, count(*) FROM a JOIN b ON a.id = b.id GROUP BY a.x ORDER BY 2 DESC LIMIT 10",
            "SELECT now(), lower(name), coalesce(x, 0) FROM t WHERE y > current_date",
            "WITH r AS (SELECT * FROM t) SELECT * FROM r UNION SELECT * FROM u",
            "SELECT * FROM generate_series(1, 10)",
            "SELECT pg_catalog.pg_typeof(1), inet_client_port()",
            "VALUES (1), (2)",
            "EXPLAIN SELECT * FROM t",
            "SELECT 1; SELECT 2",
            "SELECT my_report(3)",
            "SELECT CURRENT_TIMESTAMP, CURRENT_USER",
            "SELECT (SELECT max(id) FROM t) AS m",
        ] {
            assert_eq!(class(sql), Class::Read, "{sql}");
        }
    }

    #[test]
    fn read_only_transactions_may_go_to_a_standby() {
        for sql in [
            "BEGIN READ ONLY",
            "START TRANSACTION READ ONLY",
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            "SET TRANSACTION READ ONLY",
            "BEGIN READ ONLY; SELECT 1; COMMIT",
        ] {
            assert_eq!(class(sql), Class::Read, "{sql}");
        }
        let c = Classifier::default();
        // default_transaction_read_only makes a plain BEGIN read-only...
        assert_eq!(c.sql("BEGIN", true), Class::Read);
        assert_eq!(c.sql("BEGIN", false), Class::Primary);
        // ... unless it says READ WRITE.
        assert_eq!(c.sql("BEGIN READ WRITE", true), Class::Primary);
    }

    #[test]
    fn read_only_transactions_are_told_by_their_start() {
        let c = Classifier::default();
        for sql in [
            "BEGIN READ ONLY",
            "START TRANSACTION READ ONLY",
            "begin transaction isolation level repeatable read read only",
            "BEGIN; SET TRANSACTION READ ONLY",
            "BEGIN READ ONLY; SELECT 1; COMMIT",
        ] {
            assert!(c.starts_read_only(sql, false), "{sql}");
        }
        assert!(c.starts_read_only("BEGIN", true));
        for sql in [
            "BEGIN",
            "BEGIN READ WRITE",
            "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY",
            "BEGIN; SET TRANSACTION READ WRITE",
            "SET TRANSACTION READ ONLY",
            "SELECT 1",
            "BEGIN READ ONLY; SELECT nextval('s')",
            "BEGIN READ ONLY; INSERT INTO t VALUES (1)",
            "/*NO LOAD BALANCE*/ BEGIN READ ONLY",
        ] {
            assert!(!c.starts_read_only(sql, false), "{sql}");
        }
        assert!(!c.starts_read_only("BEGIN READ WRITE", true));
    }

    #[test]
    fn remembered_answers_are_the_classifiers_own() {
        let with = Classifier::new(&["my_report".to_owned()]);
        let without = Classifier::default();
        for _ in 0..2 {
            assert_eq!(
                with.autocommit_prepared("SELECT my_report($1)"),
                Class::Read
            );
            assert_eq!(
                without.autocommit_prepared("SELECT my_report($1)"),
                Class::Primary
            );
            assert_eq!(
                with.autocommit_prepared("INSERT INTO t VALUES ($1)"),
                Class::Primary
            );
        }
    }

    #[test]
    fn autocommit_reads_leave_no_transaction_open() {
        let c = Classifier::default();
        assert_eq!(c.autocommit("SELECT 1; SELECT 2"), Class::Read);
        for sql in [
            "BEGIN READ ONLY",
            "SELECT 1; COMMIT",
            "SET TRANSACTION READ ONLY",
            "ROLLBACK",
        ] {
            assert_eq!(c.autocommit(sql), Class::Primary, "{sql}");
        }
    }

    #[test]
    fn writes_and_everything_unproven_go_to_the_primary() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET x = 1",
            "DELETE FROM t",
            "CREATE TABLE t (x int)",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT 1 INTO t2",
            "WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x",
            "WITH x AS (DELETE FROM t RETURNING *) SELECT count(*) FROM x",
            "SELECT nextval('s')",
            "SELECT setval('s', 10)",
            "SELECT pg_advisory_lock(1)",
            "SELECT my_own_function(1)",
            "SELECT public.lower('x')",
            "SELECT count(*) FROM t WHERE x = write_something()",
            "SELECT * FROM my_srf(1)",
            "SELECT 1; INSERT INTO t VALUES (1)",
            "BEGIN",
            "START TRANSACTION",
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
            "SET x = 1",
            "EXPLAIN ANALYZE DELETE FROM t",
            "LOCK TABLE t",
            "VACUUM t",
            "COPY t TO STDOUT",
            "LISTEN ch",
            "/*NO LOAD BALANCE*/ SELECT 1",
            "SELECT 1 /*NO LOAD BALANCE*/",
            "this is not sql",
            // They answer for the server that runs them: a driver asking
            // whether it reached the primary must hear the primary.
            "SHOW transaction_read_only",
            "SHOW search_path",
            "SELECT pg_is_in_recovery()",
            "SELECT inet_server_port(), pg_backend_pid()",
            "SELECT version()",
            "",
            "  ;  ",
        ] {
            assert_eq!(class(sql), Class::Primary, "{sql}");
        }
    }
}
