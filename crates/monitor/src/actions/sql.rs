//! One SQL session with a backend, for the builtin actions: connect with
//! the login's `connect_timeout`, run statements each under a time limit,
//! and turn driver errors into one-line [`ActionError`]s naming the backend.

use std::error::Error as _;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::types::{FromSql, FromSqlOwned, ToSql};
use tokio_postgres::{Client, Row};

use super::error::one_line;
use super::{ActionError, SqlLogin, Target};

/// `application_name` of the actions' sessions, so DBAs can tell them apart
/// in `pg_stat_activity`.
pub(crate) const APPLICATION_NAME: &str = "pgwarden-monitor";

/// The least time a statement is given, even when the action's deadline is
/// (almost) reached: a limit of zero would fail before the query is sent.
const MIN_STATEMENT_TIME: Duration = Duration::from_millis(500);

/// A logged-in session with one backend. Dropping it closes the connection.
pub(crate) struct Session {
    client: Client,
    label: String,
    connection: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// How long a statement may take when the action must be done by
/// `deadline`.
pub(crate) fn limit(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(MIN_STATEMENT_TIME)
}

/// A driver error with its causes (`db error: ERROR: ...`), on one line.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    one_line(&text)
}

/// How the monitor's sessions log in to `host:port` (actions and checks alike).
pub(crate) fn pg_config(host: &str, port: u16, login: &SqlLogin) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(&login.user)
        .dbname(&login.database)
        .application_name(APPLICATION_NAME)
        .connect_timeout(login.connect_timeout);
    if let Some(password) = &login.password {
        config.password(password);
    }
    config
}

/// Logs in to `target` as `login`. The whole handshake (TCP, startup,
/// authentication) is bounded by `login.connect_timeout`.
pub(crate) async fn connect(target: &Target, login: &SqlLogin) -> Result<Session, ActionError> {
    let label = target.label();
    let mut config = pg_config(&target.host, target.port, login);
    let tls = login.tls.apply(&mut config);
    let (client, connection) =
        match tokio::time::timeout(login.connect_timeout, config.connect(tls)).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                return Err(ActionError::Connect {
                    target: label,
                    message: describe(&e),
                });
            }
            Err(_) => {
                return Err(ActionError::Connect {
                    target: label,
                    message: format!("no connection after {:?}", login.connect_timeout),
                });
            }
        };
    let task_label = label.clone();
    let connection = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(backend = %task_label, "action session ended: {}", describe(&e));
        }
    });
    Ok(Session {
        client,
        label,
        connection,
    })
}

impl Session {
    /// The backend, as `name (host:port)`.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    fn sql_error(&self, what: &str, e: &tokio_postgres::Error) -> ActionError {
        ActionError::Sql {
            target: self.label.clone(),
            message: format!("{what}: {}", describe(e)),
        }
    }

    fn timeout_error(&self, what: &str, after: Duration) -> ActionError {
        ActionError::Timeout {
            what: format!("{}: {what}", self.label),
            after,
        }
    }

    /// Awaits the driver's `call` within `limit`: its error is an
    /// [`ActionError::Sql`], running past `limit` an [`ActionError::Timeout`],
    /// both naming the step `what`.
    async fn within<T>(
        &self,
        what: &str,
        limit: Duration,
        call: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, ActionError> {
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.sql_error(what, &e)),
            Err(_) => Err(self.timeout_error(what, limit)),
        }
    }

    /// Runs a query returning at most one row, within `limit`. `what` names
    /// the step in errors.
    pub(crate) async fn query_opt(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        limit: Duration,
    ) -> Result<Option<Row>, ActionError> {
        self.within(what, limit, self.client.query_opt(sql, params))
            .await
    }

    /// Runs a query returning exactly one row, within `limit`.
    pub(crate) async fn query_one(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        limit: Duration,
    ) -> Result<Row, ActionError> {
        self.within(what, limit, self.client.query_one(sql, params))
            .await
    }

    /// Runs a query without parameters returning exactly one row, within
    /// `limit`: its first column as a `T`.
    pub(crate) async fn query_value<T: FromSqlOwned>(
        &self,
        what: &str,
        sql: &str,
        limit: Duration,
    ) -> Result<T, ActionError> {
        let row = self.query_one(what, sql, &[], limit).await?;
        self.column(what, &row, 0)
    }

    /// Runs a query without parameters returning exactly one row, within
    /// `limit`: its first two columns as an `A` and a `B`.
    pub(crate) async fn query_pair<A: FromSqlOwned, B: FromSqlOwned>(
        &self,
        what: &str,
        sql: &str,
        limit: Duration,
    ) -> Result<(A, B), ActionError> {
        let row = self.query_one(what, sql, &[], limit).await?;
        Ok((self.column(what, &row, 0)?, self.column(what, &row, 1)?))
    }

    /// Runs one statement without parameters over the simple query protocol
    /// (for utility statements such as `ALTER SYSTEM`), within `limit`.
    pub(crate) async fn execute_simple(
        &self,
        what: &str,
        sql: &str,
        limit: Duration,
    ) -> Result<(), ActionError> {
        self.within(what, limit, self.client.batch_execute(sql))
            .await
    }

    /// Column `idx` of `row` as a `T`; a type mismatch is an error naming
    /// the step.
    pub(crate) fn column<'a, T: FromSql<'a>>(
        &self,
        what: &str,
        row: &'a Row,
        idx: usize,
    ) -> Result<T, ActionError> {
        row.try_get(idx).map_err(|e| self.sql_error(what, &e))
    }

    /// `pg_is_in_recovery()`: whether the backend is a standby.
    pub(crate) async fn in_recovery(&self, limit: Duration) -> Result<bool, ActionError> {
        const WHAT: &str = "SELECT pg_is_in_recovery()";
        self.query_value(WHAT, WHAT, limit).await
    }
}

/// A SQL string literal that means the same whatever
/// `standard_conforming_strings` is: `E'...'` with `\` and `'` escaped.
/// (`ALTER SYSTEM` takes no bind parameters.)
pub(crate) fn literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_escapes_quotes_and_backslashes() {
        assert_eq!(literal("plain"), "E'plain'");
        assert_eq!(literal(r"password='it\'s' x"), r"E'password=''it\\''s'' x'");
        assert_eq!(literal(""), "E''");
    }
}
