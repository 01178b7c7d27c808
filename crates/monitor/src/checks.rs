//! Health and replication checks: one task per backend.
//!
//! Every `health_check.period` (every `retry_delay` after a failure) each
//! task runs one query on its backend over a kept-open connection, with
//! `health_check.timeout` for connecting and for the query, and reports the
//! result to the machine. Down backends keep being checked (pgpool-II stops
//! checking them, which leaves stale state).
//!
//! Only the monitor's own evidence counts: a check fails when a *fresh*
//! connection cannot be opened and checked, never because someone ended the
//! check's session. When the session dies under the check (SQLSTATE 57P01
//! from `pg_terminate_backend()`, a cancel, a closed or reset connection),
//! the check is retried at once on a fresh connection, a few times within
//! `health_check.timeout` (`Round`). A server that keeps accepting fresh
//! connections whose sessions keep being killed is alive: that check ends
//! [`CheckOutcome::Alive`], which resets the failure count without a new
//! observation. A connection the server does not accept (refused, timed
//! out, 57P03 shutting down or starting up, authentication failure) and our
//! own query timeout are failures as before; so `pg_ctl stop -m fast`
//! (57P01 to every session, then new connections refused) still fails the
//! check at once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use tokio_postgres::types::PgLsn;

use crate::actions::SqlLogin;
use crate::actions::sql::{self, describe};
use crate::machine::{Event, Observation};

/// How to reach one backend.
#[derive(Debug, Clone)]
pub struct CheckTarget {
    /// Backend id.
    pub id: usize,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// The health-check settings.
#[derive(Clone)]
pub struct CheckSettings {
    /// `health_check.period`.
    pub period: Duration,
    /// `health_check.timeout`.
    pub timeout: Duration,
    /// `health_check.retry_delay`.
    pub retry_delay: Duration,
    /// `health_check.recheck_retry_delay`.
    pub recheck_retry_delay: Duration,
    /// `health_check.user`.
    pub user: String,
    /// `health_check.password`.
    pub password: Option<String>,
    /// `health_check.database`.
    pub database: String,
    /// TLS, as `server_tls` says.
    pub tls: pgwarden_tls::postgres::PgTls,
}

impl std::fmt::Debug for CheckSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckSettings")
            .field("period", &self.period)
            .field("timeout", &self.timeout)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// One round trip for everything the machine needs. On a standby the
/// timeline is the WAL receiver's (or the last checkpoint's when it is not
/// running); on a primary it is read from the current WAL file name.
const CHECK_SQL: &str = "
SELECT r.rec,
       CASE WHEN r.rec THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,
       CASE WHEN r.rec THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_flush_lsn() END,
       CASE WHEN r.rec
            THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver),
                          (SELECT timeline_id FROM pg_control_checkpoint()))::int8
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int8 END,
       (SELECT status FROM pg_stat_wal_receiver),
       (SELECT sender_port FROM pg_stat_wal_receiver),
       CASE WHEN r.rec THEN NULL ELSE (SELECT array_agg(application_name) FROM pg_stat_replication) END,
       CASE WHEN r.rec THEN NULL ELSE
            (SELECT array_agg(COALESCE(EXTRACT(epoch FROM replay_lag)::float8, 0)) FROM pg_stat_replication) END
  FROM (SELECT pg_is_in_recovery() AS rec) r";

/// Fresh connections one check may try after its session died (the first
/// always runs; the others only within `health_check.timeout`).
pub const MAX_FRESH_ATTEMPTS: u32 = 3;

/// How one check ended.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckOutcome {
    /// The check query answered.
    Observed(Observation),
    /// Fresh connections were accepted, but every session was ended by
    /// someone else before the query answered: the server is alive, there
    /// is nothing new to observe. Not a failure.
    Alive(String),
    /// The backend did not accept a fresh connection, or did not answer in
    /// time, or answered the check with an error.
    Failed(String),
}

impl CheckOutcome {
    /// The observation, when the query answered.
    pub fn observation(&self) -> Option<&Observation> {
        match self {
            CheckOutcome::Observed(o) => Some(o),
            _ => None,
        }
    }

    /// The machine's input for this outcome of backend `id` at `at_ms`.
    pub fn into_event(self, id: usize, at_ms: i64) -> Event {
        match self {
            CheckOutcome::Observed(o) => Event::Checked {
                id,
                at_ms,
                result: Ok(o),
            },
            CheckOutcome::Failed(e) => Event::Checked {
                id,
                at_ms,
                result: Err(e),
            },
            CheckOutcome::Alive(reason) => Event::AliveUnobserved { id, at_ms, reason },
        }
    }
}

/// One check: its outcome, and whether a session was ended under it.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// What the machine gets.
    pub outcome: CheckOutcome,
    /// The first "session ended by someone else" this check retried past.
    pub ended: Option<String>,
    /// It failed because nothing listens on the backend's port (a fresh
    /// connection refused): the postmaster is gone, not restarting.
    pub refused: bool,
}

/// When one attempt (connect if needed, then the query) went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Opening a fresh connection (TCP, startup, authentication).
    Connect,
    /// Running the check query on an open session.
    Query,
}

/// What went wrong, as far as classifying it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure<'a> {
    /// The server sent an error with this SQLSTATE.
    Sqlstate(&'a str),
    /// The connection closed or broke (no SQLSTATE).
    Closed,
    /// Our own time limit passed.
    OurTimeout,
    /// Anything else (a reply we cannot read...).
    Other,
}

/// What one failed attempt says about the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The server did not let a fresh connection in: evidence it is down.
    NotAccepted,
    /// The session was ended (or its statement cancelled) while the server
    /// was accepting it: someone else's doing, or a shutdown the next fresh
    /// connection will reveal. Retried.
    Ended,
    /// The server did not answer in time, or answered the check with an error.
    Broken,
}

/// Classifies a failed attempt (pure).
pub(crate) fn classify(phase: Phase, failure: Failure<'_>) -> Attempt {
    match (phase, failure) {
        (_, Failure::OurTimeout) => Attempt::Broken,
        // Terminated after the server took the connection in (between
        // authentication and ReadyForQuery): it accepts connections.
        (Phase::Connect, Failure::Sqlstate("57P01")) => Attempt::Ended,
        // Refused, unreachable, 57P03 (shutting down, starting up, in
        // recovery), 53300, authentication failed...
        (Phase::Connect, _) => Attempt::NotAccepted,
        (Phase::Query, Failure::Closed) => Attempt::Ended,
        // 57P01 admin_shutdown (pg_terminate_backend, or a fast shutdown),
        // 57P02 crash of another backend, 57P05 idle_session_timeout...,
        // 57014 query_canceled (pg_cancel_backend), 08xxx connection
        // exceptions: the session is gone, not necessarily the server.
        (Phase::Query, Failure::Sqlstate(code))
            if code.starts_with("57P") || code == "57014" || code.starts_with("08") =>
        {
            Attempt::Ended
        }
        (Phase::Query, Failure::Sqlstate(_) | Failure::Other) => Attempt::Broken,
    }
}

/// What a check does after one attempt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// Try again on a fresh connection.
    Retry,
    /// The check is over.
    Done(CheckOutcome),
}

/// The attempts of one check, and what they come to (pure: the async code
/// in [`check_once`] feeds it and does what it says).
#[derive(Debug, Default)]
pub(crate) struct Round {
    /// Fresh connections tried so far.
    fresh: u32,
    /// A fresh connection completed its login in this check.
    accepted: bool,
    /// The first session end retried past.
    ended: Option<String>,
    /// The last fresh connection was refused at the TCP level.
    refused: bool,
}

impl Round {
    /// A fresh connection completed its login.
    pub(crate) fn logged_in(&mut self) {
        self.accepted = true;
    }

    /// An attempt is starting; `fresh` when it opens a new connection.
    pub(crate) fn starting(&mut self, fresh: bool) {
        if fresh {
            self.fresh = self.fresh.saturating_add(1);
        }
    }

    /// The first session end retried past, if any.
    pub(crate) fn ended(&self) -> Option<&str> {
        self.ended.as_deref()
    }

    /// The attempt failed as `attempt` (`why` says how); `time_left`: the
    /// check's `health_check.timeout` has not passed yet.
    pub(crate) fn failed(&mut self, attempt: Attempt, why: String, time_left: bool) -> Step {
        match attempt {
            Attempt::NotAccepted | Attempt::Broken => Step::Done(CheckOutcome::Failed(why)),
            Attempt::Ended => {
                let may_retry = self.fresh == 0 || (self.fresh < MAX_FRESH_ATTEMPTS && time_left);
                if self.ended.is_none() {
                    self.ended = Some(why.clone());
                }
                if may_retry {
                    Step::Retry
                } else if self.accepted {
                    Step::Done(CheckOutcome::Alive(format!(
                        "{} fresh connection(s) accepted, each ended before the check answered: {why}",
                        self.fresh
                    )))
                } else {
                    // No login ever completed: nothing shows the server
                    // accepts connections.
                    Step::Done(CheckOutcome::Failed(why))
                }
            }
        }
    }
}

/// Runs the check loop of one backend until `stop` fires.
pub async fn run(
    target: CheckTarget,
    settings: CheckSettings,
    events: mpsc::Sender<Event>,
    recheck: std::sync::Arc<Notify>,
    stop: CancellationToken,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut told = false;
    // The failures since a check a proxy asked for (its connection to the
    // backend failed): retried in a short burst.
    let mut asked = false;
    loop {
        let Checked {
            outcome,
            ended,
            refused,
        } = check_once(&target, &settings, &mut client).await;
        let healthy = !matches!(outcome, CheckOutcome::Failed(_));
        asked &= !healthy;
        let wait = if healthy {
            settings.period
        } else if asked && refused {
            // Only when nothing listens: a server that answers (57P03,
            // restarting after a backend crash a client may have caused)
            // keeps the full retry_delay.
            settings.recheck_retry_delay.min(settings.retry_delay)
        } else {
            settings.retry_delay
        };
        match &outcome {
            CheckOutcome::Failed(e) => {
                tracing::debug!(backend = target.id, error = %e, "check failed");
            }
            CheckOutcome::Alive(why) => {
                tracing::debug!(backend = target.id, reason = %why, "check sessions ended by someone else; the server accepts connections: not a failure");
            }
            CheckOutcome::Observed(_) => {}
        }
        if let Some(why) = ended.as_deref().filter(|_| healthy) {
            if told {
                tracing::debug!(backend = target.id, reason = %why, "a check session was ended by someone else; retried on a fresh connection, not counted");
            } else {
                told = true;
                tracing::info!(
                    backend = target.id,
                    reason = %why,
                    "a check session was ended by someone else (e.g. pg_terminate_backend); \
                     retried on a fresh connection and not counted as a failed check: only the \
                     monitor's own evidence (a fresh connection refused or unanswered) counts \
                     (logged once per backend, then at debug)"
                );
            }
        }
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        if events
            .send(outcome.into_event(target.id, at_ms))
            .await
            .is_err()
        {
            return;
        }
        // A recheck ends the wait (between healthy checks, or before a
        // retry); the retries of a failing check come every
        // `recheck_retry_delay` from then on. Either way only the monitor's
        // own probes decide, `max_retries` + 1 of them.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = recheck.notified() => asked = true,
        }
    }
}

/// True when nothing listened on the port: the TCP connection was refused.
fn is_refused(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = s.source();
    }
    false
}

/// A driver error, for [`classify`].
fn failure(e: &tokio_postgres::Error) -> Failure<'_> {
    if let Some(code) = e.code() {
        Failure::Sqlstate(code.code())
    } else if e.is_closed()
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
    {
        Failure::Closed
    } else {
        Failure::Other
    }
}

/// One check, reusing (and refreshing) `client`; see the module docs for
/// when it retries on a fresh connection.
pub async fn check_once(
    t: &CheckTarget,
    s: &CheckSettings,
    client: &mut Option<tokio_postgres::Client>,
) -> Checked {
    let deadline = tokio::time::Instant::now() + s.timeout;
    let mut round = Round::default();
    loop {
        let step = attempt(t, s, client, &mut round, deadline).await;
        match step {
            Step::Retry => {
                *client = None;
                continue;
            }
            Step::Done(outcome) => {
                if !matches!(outcome, CheckOutcome::Observed(_)) {
                    *client = None;
                }
                return Checked {
                    outcome,
                    ended: round.ended().map(str::to_owned),
                    refused: round.refused,
                };
            }
        }
    }
}

/// One attempt of a check: connect when needed, run the query.
async fn attempt(
    t: &CheckTarget,
    s: &CheckSettings,
    client: &mut Option<tokio_postgres::Client>,
    round: &mut Round,
    deadline: tokio::time::Instant,
) -> Step {
    let time_left = || tokio::time::Instant::now() < deadline;
    let fresh = client.as_ref().is_none_or(|c| c.is_closed());
    round.starting(fresh);
    if fresh {
        match connect(t, s).await {
            Ok(c) => {
                round.logged_in();
                *client = Some(c);
            }
            Err((kind, why, refused)) => {
                round.refused = refused;
                return round.failed(kind, why, time_left());
            }
        }
    }
    let Some(c) = client.as_ref() else {
        return Step::Done(CheckOutcome::Failed("not connected".into()));
    };
    let row = match tokio::time::timeout(s.timeout, c.query_one(CHECK_SQL, &[])).await {
        Ok(Ok(row)) => row,
        Ok(Err(e)) => {
            let kind = classify(Phase::Query, failure(&e));
            return round.failed(kind, describe(&e), time_left());
        }
        Err(_) => {
            // The connection may be wedged: start afresh next time.
            let why = format!("no answer within {:?}", s.timeout);
            return round.failed(Attempt::Broken, why, time_left());
        }
    };
    match observation(&row) {
        Ok(o) => Step::Done(CheckOutcome::Observed(o)),
        Err(e) => Step::Done(CheckOutcome::Failed(e)),
    }
}

/// Reads the check query's row.
fn observation(row: &tokio_postgres::Row) -> Result<Observation, String> {
    let get_lsn = |i: usize| -> Result<u64, String> {
        let lsn: Option<PgLsn> = row.try_get(i).map_err(|e| e.to_string())?;
        Ok(lsn.map_or(0, u64::from))
    };
    let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
    let timeline: Option<i64> = row.try_get(3).map_err(|e| e.to_string())?;
    let status: Option<String> = row.try_get(4).map_err(|e| e.to_string())?;
    let sender_port: Option<i32> = row.try_get(5).map_err(|e| e.to_string())?;
    let names: Option<Vec<String>> = row.try_get(6).map_err(|e| e.to_string())?;
    let lags: Option<Vec<f64>> = row.try_get(7).map_err(|e| e.to_string())?;
    let streaming = status.as_deref() == Some("streaming");
    Ok(Observation {
        in_recovery,
        timeline: timeline.and_then(|t| u32::try_from(t).ok()).unwrap_or(0),
        replay_lsn: get_lsn(1)?,
        flush_lsn: get_lsn(2)?,
        streaming,
        upstream_port: if streaming {
            sender_port.and_then(|p| u16::try_from(p).ok())
        } else {
            None
        },
        replica_lag: names
            .unwrap_or_default()
            .into_iter()
            .zip(lags.unwrap_or_default())
            .collect(),
    })
}

/// Opens a fresh check connection within `health_check.timeout`; on
/// failure, its class (for [`classify`]) and description.
async fn connect(
    t: &CheckTarget,
    s: &CheckSettings,
) -> Result<tokio_postgres::Client, (Attempt, String, bool)> {
    let login = SqlLogin {
        user: s.user.clone(),
        password: s.password.clone(),
        database: s.database.clone(),
        connect_timeout: s.timeout,
        tls: s.tls.clone(),
    };
    let mut cfg = sql::pg_config(&t.host, t.port, &login);
    let tls = login.tls.apply(&mut cfg);
    match tokio::time::timeout(s.timeout, cfg.connect(tls)).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        }
        Ok(Err(e)) => Err((
            classify(Phase::Connect, failure(&e)),
            describe(&e),
            is_refused(&e),
        )),
        Err(_) => Err((
            classify(Phase::Connect, Failure::OurTimeout),
            format!("connect timed out after {:?}", s.timeout),
            false,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_tells_a_killed_session_from_a_server_that_refuses() {
        use Attempt::*;
        use Failure::*;
        use Phase::*;
        let cases = [
            // Connecting.
            (Connect, Closed, NotAccepted), // refused, reset, unreachable
            (Connect, Sqlstate("57P03"), NotAccepted), // shutting down, starting up
            (Connect, Sqlstate("28P01"), NotAccepted), // authentication failed
            (Connect, Sqlstate("53300"), NotAccepted), // too many connections
            (Connect, Sqlstate("57P01"), Ended), // terminated during login: it accepted us
            (Connect, OurTimeout, Broken),
            (Connect, Other, NotAccepted),
            // On an open session.
            (Query, Sqlstate("57P01"), Ended), // pg_terminate_backend, fast shutdown
            (Query, Sqlstate("57P02"), Ended), // crash of another backend
            (Query, Sqlstate("57014"), Ended), // pg_cancel_backend
            (Query, Sqlstate("08006"), Ended),
            (Query, Closed, Ended), // closed, reset
            (Query, OurTimeout, Broken),
            (Query, Sqlstate("42501"), Broken),
            (Query, Other, Broken),
        ];
        for (phase, failure, want) in cases {
            assert_eq!(classify(phase, failure), want, "{phase:?} {failure:?}");
        }
    }

    fn failed(outcome: Step) -> String {
        match outcome {
            Step::Done(CheckOutcome::Failed(why)) => why,
            other => panic!("not a failure: {other:?}"),
        }
    }

    #[test]
    fn a_killed_kept_open_session_is_retried_on_a_fresh_connection_even_late() {
        let mut r = Round::default();
        r.starting(false);
        let step = r.failed(Attempt::Ended, "57P01 terminated".into(), false);
        assert_eq!(step, Step::Retry);
        assert_eq!(r.ended(), Some("57P01 terminated"));
    }

    #[test]
    fn sessions_killed_on_every_fresh_connection_mean_alive_not_failed() {
        let mut r = Round::default();
        r.starting(false);
        assert_eq!(r.failed(Attempt::Ended, "killed".into(), true), Step::Retry);
        for i in 1..=MAX_FRESH_ATTEMPTS {
            r.starting(true);
            r.logged_in();
            let step = r.failed(Attempt::Ended, format!("killed {i}"), true);
            if i < MAX_FRESH_ATTEMPTS {
                assert_eq!(step, Step::Retry, "attempt {i}");
            } else {
                let Step::Done(CheckOutcome::Alive(why)) = step else {
                    panic!("{step:?}")
                };
                assert!(why.contains("3 fresh connection(s) accepted"), "{why}");
            }
        }
        // The first cause is what gets logged.
        assert_eq!(r.ended(), Some("killed"));
    }

    #[test]
    fn no_retry_past_the_timeout_once_a_fresh_connection_was_tried() {
        let mut r = Round::default();
        r.starting(true);
        r.logged_in();
        let step = r.failed(Attempt::Ended, "killed".into(), false);
        assert!(
            matches!(step, Step::Done(CheckOutcome::Alive(_))),
            "{step:?}"
        );
    }

    #[test]
    fn a_fast_shutdown_still_fails_the_check_at_once() {
        // pg_ctl stop -m fast: 57P01 to the session, then 57P03 to new ones.
        let mut r = Round::default();
        r.starting(false);
        assert_eq!(r.failed(Attempt::Ended, "57P01".into(), true), Step::Retry);
        r.starting(true);
        let why = failed(r.failed(
            Attempt::NotAccepted,
            "the database system is shutting down".into(),
            true,
        ));
        assert!(why.contains("shutting down"));
    }

    #[test]
    fn refused_timed_out_or_broken_fail_without_retry() {
        for kind in [Attempt::NotAccepted, Attempt::Broken] {
            let mut r = Round::default();
            r.starting(true);
            assert_eq!(failed(r.failed(kind, "x".into(), true)), "x");
            assert_eq!(r.ended(), None);
        }
    }

    #[test]
    fn sessions_ended_before_any_login_completed_prove_nothing() {
        let mut r = Round::default();
        for _ in 0..MAX_FRESH_ATTEMPTS {
            r.starting(true);
            let step = r.failed(Attempt::Ended, "57P01 during login".into(), true);
            if step != Step::Retry {
                assert_eq!(failed(step), "57P01 during login");
                return;
            }
        }
        panic!("retried forever");
    }

    #[test]
    fn outcomes_become_the_machines_events() {
        let o = Observation::primary(1, 42);
        assert_eq!(
            CheckOutcome::Observed(o.clone()).into_event(3, 7),
            Event::Checked {
                id: 3,
                at_ms: 7,
                result: Ok(o)
            }
        );
        assert_eq!(
            CheckOutcome::Failed("refused".into()).into_event(3, 7),
            Event::Checked {
                id: 3,
                at_ms: 7,
                result: Err("refused".into())
            }
        );
        assert_eq!(
            CheckOutcome::Alive("killed".into()).into_event(3, 7),
            Event::AliveUnobserved {
                id: 3,
                at_ms: 7,
                reason: "killed".into()
            }
        );
    }
}

#[cfg(test)]
mod refused_tests {
    use super::is_refused;

    /// Why connecting to 127.0.0.1:`port` fails.
    async fn connect_error(port: u16) -> tokio_postgres::Error {
        tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=x connect_timeout=2"),
            tokio_postgres::NoTls,
        )
        .await
        .err()
        .unwrap()
    }

    #[tokio::test]
    async fn a_port_nothing_listens_on_is_refused_and_a_timeout_is_not() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = connect_error(port).await;
        assert!(is_refused(&e), "{e:?}");
        // A server that answers, however badly, is not "refused".
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let closer = std::thread::spawn(move || drop(l.accept()));
        let e = connect_error(port).await;
        assert!(!is_refused(&e), "{e:?}");
        closer.join().unwrap();
    }
}
