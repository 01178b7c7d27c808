//! `failover.mode = "builtin"`: promotion, fencing and repointing over SQL.
//!
//! [`fence`] makes a still reachable old primary refuse writes before a
//! standby replaces it; [`promote`] runs `pg_promote()` on the chosen
//! standby (resuming a paused replay first) and makes sure it takes writes;
//! [`follow`]
//! repoints another standby at it: its replication slot is created on the
//! new primary (slots are not replicated), its `primary_conninfo` rewritten
//! with `ALTER SYSTEM` and reloaded, and the action waits until the standby
//! streams from the new primary. Both need a superuser, or a role with the
//! grants listed on [`SqlLogin`].

use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::types::PgLsn;

use super::conninfo;
use super::sql::{self, Session, limit};
use super::{ActionError, Promoted, SqlLogin, Target};

/// How often [`follow`] looks at the standby's WAL receiver.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long [`promote`] waits for a reset `default_transaction_read_only`
/// to show in new sessions.
const UNFENCE_WAIT: Duration = Duration::from_secs(2);

/// Logs in to `target` (within `login.connect_timeout`): the session, and
/// the deadline `timeout` from then for the steps on it.
async fn connect(
    target: &Target,
    login: &SqlLogin,
    timeout: Duration,
) -> Result<(Session, Instant), ActionError> {
    let session = sql::connect(target, login).await?;
    Ok((session, Instant::now() + timeout))
}

/// What [`fence`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// It was a primary: it now defaults to read-only transactions, and
    /// this many client sessions were terminated.
    ReadOnly {
        /// Client backends terminated.
        terminated: u64,
        /// Its flushed WAL then (`pg_current_wal_flush_lsn()`): what the
        /// standby to promote should receive first ([`wait_received`]).
        flush_lsn: u64,
    },
    /// It is in recovery: nothing to fence.
    Standby,
}

/// Fences `target`, the primary being replaced, at the database, so that
/// clients that bypass the proxy stop writing to it:
///
/// 1. `ALTER SYSTEM SET default_transaction_read_only = on` and
///    `pg_reload_conf()`: new transactions are read-only by default (it
///    survives a restart: it is in `postgresql.auto.conf`; [`promote`]
///    resets it should this server ever be promoted again);
/// 2. terminates every client backend (`backend_type = 'client backend'`)
///    but this session and pgwarden's own (`application_name =
///    'pgwarden-monitor'`: the monitors' checks and actions), so that no
///    transaction begun before the fence commits. WAL senders are left
///    alone: the standbys keep receiving what was written until then.
///
/// A soft fence, best effort: a session may still `SET
/// default_transaction_read_only = off` or `BEGIN READ WRITE`, a superuser
/// may undo it. A hard fence (stopping the server, or the node) is
/// `failover.mode = "command"`'s hooks' job. The whole of it, logging in
/// included, is bounded by `timeout`: the caller goes on with the
/// promotion whatever happens here.
///
/// # Errors
/// [`ActionError::Connect`] when `target` cannot be reached (the usual case
/// when it died), [`ActionError::Sql`] / [`ActionError::Timeout`] when a
/// step fails or `timeout` passes.
pub async fn fence(
    target: &Target,
    login: &SqlLogin,
    timeout: Duration,
) -> Result<Fenced, ActionError> {
    let label = target.label();
    let login = SqlLogin {
        connect_timeout: login.connect_timeout.min(timeout),
        ..login.clone()
    };
    match tokio::time::timeout(timeout, fence_steps(target, &login, timeout)).await {
        Ok(r) => r,
        Err(_) => Err(ActionError::Timeout {
            what: format!("{label}: fence the old primary"),
            after: timeout,
        }),
    }
}

/// Waits until `target` runs no client transaction (but the monitor's own),
/// polling every 20 ms, for at most `timeout`; returns how many still run.
///
/// # Errors
/// [`ActionError::Connect`] when `target` cannot be reached,
/// [`ActionError::Sql`] when the query fails.
pub async fn drain(
    target: &Target,
    login: &SqlLogin,
    timeout: Duration,
) -> Result<u64, ActionError> {
    let deadline = Instant::now() + timeout;
    let session = sql::connect(target, login).await?;
    loop {
        let running = count_clients(
            &session,
            "count running client transactions",
            "SELECT count(*) FROM pg_stat_activity \
              WHERE backend_type = 'client backend' \
                AND pid <> pg_backend_pid() \
                AND xact_start IS NOT NULL \
                AND application_name IS DISTINCT FROM $1",
            deadline,
        )
        .await?;
        if running == 0 || Instant::now() >= deadline {
            return Ok(running);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `query`, a count of client backends that leaves out pgwarden's own
/// (its `application_name`, bound as `$1`), within `deadline`: the count.
async fn count_clients(
    session: &Session,
    what: &str,
    query: &str,
    deadline: Instant,
) -> Result<u64, ActionError> {
    let row = session
        .query_one(what, query, &[&sql::APPLICATION_NAME], limit(deadline))
        .await?;
    let count: i64 = session.column(what, &row, 0)?;
    Ok(u64::try_from(count).unwrap_or(0))
}

async fn fence_steps(
    target: &Target,
    login: &SqlLogin,
    timeout: Duration,
) -> Result<Fenced, ActionError> {
    let (session, deadline) = connect(target, login, timeout).await?;
    if session.in_recovery(limit(deadline)).await? {
        return Ok(Fenced::Standby);
    }
    session
        .execute_simple(
            "ALTER SYSTEM SET default_transaction_read_only",
            "ALTER SYSTEM SET default_transaction_read_only = on",
            limit(deadline),
        )
        .await?;
    reload(&session, deadline).await?;
    let terminated = count_clients(
        &session,
        "terminate client sessions",
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
           FROM pg_stat_activity \
          WHERE backend_type = 'client backend' \
            AND pid <> pg_backend_pid() \
            AND application_name IS DISTINCT FROM $1",
        deadline,
    )
    .await?;
    const FLUSHED: &str = "SELECT pg_current_wal_flush_lsn()";
    let flush_lsn: PgLsn = session
        .query_value(FLUSHED, FLUSHED, limit(deadline))
        .await?;
    tracing::warn!(
        backend = %session.label(),
        terminated,
        flush_lsn = %flush_lsn,
        "fenced the old primary: default_transaction_read_only = on, client sessions terminated"
    );
    Ok(Fenced::ReadOnly {
        terminated,
        flush_lsn: flush_lsn.into(),
    })
}

/// Waits until standby `target` holds the WAL up to `lsn` (received, or
/// replayed), polling, for at most `timeout`: after a [`fence`], the
/// standby about to be promoted gets what the old primary wrote until then
/// (its WAL senders keep sending), so a switchover loses nothing. `Ok(false)`
/// when `timeout` passed first.
///
/// # Errors
/// [`ActionError::Connect`], [`ActionError::Sql`] / [`ActionError::Timeout`].
pub async fn wait_received(
    target: &Target,
    login: &SqlLogin,
    lsn: u64,
    timeout: Duration,
) -> Result<bool, ActionError> {
    let (session, deadline) = connect(target, login, timeout).await?;
    const WHAT: &str = "read the WAL received";
    let lsn = PgLsn::from(lsn);
    loop {
        let row = session
            .query_one(
                WHAT,
                "SELECT COALESCE(GREATEST(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) >= $1, false)",
                &[&lsn],
                limit(deadline),
            )
            .await?;
        if session.column::<bool>(WHAT, &row, 0)? {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

/// `pg_reload_conf()`, which must signal the postmaster.
async fn reload(session: &Session, deadline: Instant) -> Result<(), ActionError> {
    const RELOAD: &str = "SELECT pg_reload_conf()";
    let signalled: bool = session.query_value(RELOAD, RELOAD, limit(deadline)).await?;
    if signalled {
        Ok(())
    } else {
        Err(ActionError::Sql {
            target: session.label().to_owned(),
            message: "pg_reload_conf() returned false (could not signal the postmaster)".to_owned(),
        })
    }
}

/// Promotes `target` with `pg_promote(wait => true, wait_seconds => ...)`,
/// checks it left recovery, and returns its new timeline and WAL position.
///
/// `timeout` bounds the promotion once logged in (`login.connect_timeout`
/// bounds the login). Promoting a backend that is already a primary is not
/// an error: it changes nothing and returns that primary's timeline and
/// position, so a promotion interrupted after `pg_promote()` can simply be
/// retried.
///
/// # Errors
/// [`ActionError::Connect`] when `target` cannot be reached,
/// [`ActionError::StillInRecovery`] when it did not finish promoting within
/// `timeout`, [`ActionError::Sql`] / [`ActionError::Timeout`] when a
/// statement fails or hangs.
pub async fn promote(
    target: &Target,
    login: &SqlLogin,
    timeout: Duration,
) -> Result<Promoted, ActionError> {
    let (session, deadline) = connect(target, login, timeout).await?;
    if session.in_recovery(limit(deadline)).await? {
        resume_replay(&session, deadline).await;
        tracing::info!(backend = %session.label(), "promoting: pg_promote()");
        const WHAT: &str = "pg_promote()";
        // The server gives up waiting a second before we give up on it, so
        // its answer (false) arrives before our own timeout.
        let wait_seconds = i32::try_from(timeout.as_secs().saturating_sub(1))
            .unwrap_or(i32::MAX)
            .max(1);
        let row = session
            .query_one(
                WHAT,
                "SELECT pg_promote(wait => true, wait_seconds => $1)",
                &[&wait_seconds],
                limit(deadline),
            )
            .await;
        match row {
            Ok(row) => {
                let done: bool = session.column(WHAT, &row, 0)?;
                if !done && session.in_recovery(limit(deadline)).await? {
                    return Err(ActionError::StillInRecovery {
                        target: session.label().to_owned(),
                    });
                }
            }
            // "recovery is not in progress": someone promoted it since we
            // looked. Anything else stands, unless it left recovery anyway.
            Err(e @ ActionError::Sql { .. }) => {
                if session.in_recovery(limit(deadline)).await? {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    } else {
        tracing::info!(
            backend = %session.label(),
            "not promoting: already a primary (not in recovery)"
        );
    }
    if session.in_recovery(limit(deadline)).await? {
        return Err(ActionError::StillInRecovery {
            target: session.label().to_owned(),
        });
    }
    let promoted = position(&session, deadline).await?;
    tracing::info!(
        backend = %session.label(),
        timeline = promoted.timeline,
        lsn = %PgLsn::from(promoted.lsn),
        "primary"
    );
    if let Err(e) = unfence(target, login, &session, deadline).await {
        // Promoted it is: failing now would only promote a second one.
        tracing::error!(
            backend = %session.label(),
            error = %e,
            "the new primary may refuse writes: could not reset default_transaction_read_only"
        );
    }
    Ok(promoted)
}

/// Before `pg_promote()`: a standby whose replay is paused
/// (`pg_wal_replay_pause()`) replays the WAL it holds first. (PostgreSQL
/// 14 and later end the pause on promotion anyway; resuming makes it
/// explicit and covers older servers.) Best effort: a failure is logged
/// and the promotion goes on.
async fn resume_replay(session: &Session, deadline: Instant) {
    const PAUSED: &str = "SELECT pg_is_wal_replay_paused()";
    let paused: Result<bool, _> = session.query_value(PAUSED, PAUSED, limit(deadline)).await;
    match paused {
        Ok(false) => {}
        Ok(true) => {
            const RESUME: &str = "SELECT pg_wal_replay_resume()";
            match session
                .query_one(RESUME, RESUME, &[], limit(deadline))
                .await
            {
                Ok(_) => tracing::info!(
                    backend = %session.label(),
                    "replay was paused: resumed, so the promotion replays all the WAL received"
                ),
                Err(e) => tracing::warn!(
                    backend = %session.label(),
                    error = %e,
                    "replay is paused and could not be resumed; promoting anyway"
                ),
            }
        }
        Err(e) => {
            tracing::warn!(backend = %session.label(), error = %e, "could not tell whether replay is paused");
        }
    }
}

/// On the new primary: undoes a [`fence`] left in `postgresql.auto.conf`
/// (a former primary, rejoined as a standby, keeps it), so it takes writes.
/// Only when `default_transaction_read_only` is on from a configuration
/// file: `ALTER SYSTEM RESET` and reload, then waits (at most
/// [`UNFENCE_WAIT`]) until a new session sees it off. Set in `postgresql.conf` itself, it
/// stays, with an error in the log.
async fn unfence(
    target: &Target,
    login: &SqlLogin,
    session: &Session,
    deadline: Instant,
) -> Result<(), ActionError> {
    let (setting, source): (String, String) = session
        .query_pair(
            "read default_transaction_read_only",
            "SELECT setting, source FROM pg_settings WHERE name = 'default_transaction_read_only'",
            limit(deadline),
        )
        .await?;
    if setting != "on" || source != "configuration file" {
        return Ok(());
    }
    // Never long: the promotion is done, the cluster waits for its result.
    let deadline = deadline.min(Instant::now() + UNFENCE_WAIT);
    session
        .execute_simple(
            "ALTER SYSTEM RESET default_transaction_read_only",
            "ALTER SYSTEM RESET default_transaction_read_only",
            limit(deadline),
        )
        .await?;
    reload(session, deadline).await?;
    // The postmaster reloads asynchronously: wait until new sessions (the
    // proxies' next ones) see it.
    loop {
        let fresh = sql::connect(target, login).await?;
        let now: String = fresh
            .query_value(
                "SHOW default_transaction_read_only",
                "SELECT current_setting('default_transaction_read_only')",
                limit(deadline),
            )
            .await?;
        if now == "off" {
            tracing::info!(
                backend = %session.label(),
                "reset default_transaction_read_only (a fence left from when it was a primary): it takes writes"
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ActionError::Sql {
                target: session.label().to_owned(),
                message: "default_transaction_read_only is still on after ALTER SYSTEM RESET: it is set in postgresql.conf".to_owned(),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// After the WAL senders took a reload in: how long the checkpointer (which
/// publishes to committing sessions whether any synchronous standby is
/// named at all, and which no view shows) is given to take it in too,
/// before the primary's WAL position is read. It is signalled with them.
const RELOAD_GRACE: Duration = Duration::from_millis(200);

/// Of the WAL senders streaming to standbys: how many have an own view of
/// `synchronous_standby_names` that does not match the standbys `$1`
/// names (ASCII lower case, as PostgreSQL compares them), and how many
/// this login may not see the details of. Each sender re-reads the setting
/// itself and publishes its `sync_priority` (above 0 for a named standby, 0
/// for any other), and the senders are the ones that acknowledge commits.
/// Senders of base backups, and those still starting, are left out; for a
/// role that is neither superuser nor member of `pg_read_all_stats`,
/// PostgreSQL shows every column but the pid as NULL.
const WAL_SENDERS_BEHIND: &str = "SELECT \
       count(*) FILTER (WHERE sync_priority IS NOT NULL AND (sync_priority > 0) IS DISTINCT FROM \
         (translate(application_name, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz') \
          = ANY ($1::text[]))), \
       count(*) FILTER (WHERE sync_priority IS NULL) \
     FROM pg_stat_replication WHERE state IS NULL OR state IN ('catchup', 'streaming')";

/// An empty transaction committed without waiting for any standby: its
/// commit record is WAL the standbys receive, flush and answer at once. A
/// WAL sender releases waiting commits only when its standby answers, and a
/// standby with nothing new to flush answers only every
/// `wal_receiver_status_interval` (10 s by default): without this, commits
/// that waited for a failed synchronous standby would go on waiting that
/// long after a healthy one was named in its place.
const NUDGE_STANDBYS: &str = "BEGIN; SET LOCAL synchronous_commit = local; \
     SELECT pg_current_xact_id(); COMMIT";

/// Sets primary `target`'s `synchronous_standby_names` to `names`, the
/// setting naming the standbys `members` (`ALTER SYSTEM`,
/// `pg_reload_conf()`); waits until new sessions see it and every connected
/// WAL sender has taken it in ([`WAL_SENDERS_BEHIND`]), then
/// [`RELOAD_GRACE`]; has the standbys answer ([`NUDGE_STANDBYS`]); and
/// returns the primary's WAL insert position then:
/// every commit acknowledged after it was confirmed by the standbys
/// `names` names. `timeout` bounds it all once logged in.
///
/// # Errors
/// [`ActionError::Connect`], [`ActionError::Sql`], [`ActionError::Timeout`].
pub async fn set_synchronous(
    target: &Target,
    login: &SqlLogin,
    names: &str,
    members: &[String],
    timeout: Duration,
) -> Result<u64, ActionError> {
    const SHOW: &str = "SELECT current_setting('synchronous_standby_names')";
    let (session, deadline) = connect(target, login, timeout).await?;
    let sql = format!(
        "ALTER SYSTEM SET synchronous_standby_names = {}",
        sql::literal(names)
    );
    let what = "ALTER SYSTEM SET synchronous_standby_names";
    session.execute_simple(what, &sql, limit(deadline)).await?;
    reload(&session, deadline).await?;
    loop {
        let fresh = sql::connect(target, login).await?;
        let now: String = fresh
            .query_value("SHOW synchronous_standby_names", SHOW, limit(deadline))
            .await?;
        if now == names {
            break;
        }
        if Instant::now() >= deadline {
            return Err(ActionError::Sql {
                target: session.label().to_owned(),
                message: format!(
                    "synchronous_standby_names is {now:?}, not {names:?}, after ALTER SYSTEM SET: \
                     is it set in postgresql.conf by an include after postgresql.auto.conf?"
                ),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let lower: Vec<String> = members.iter().map(|m| m.to_ascii_lowercase()).collect();
    loop {
        let row = session
            .query_one(
                "compare the WAL senders' synchronous priorities",
                WAL_SENDERS_BEHIND,
                &[&lower],
                limit(deadline),
            )
            .await?;
        let behind: i64 = session.column("count the WAL senders behind", &row, 0)?;
        let hidden: i64 = session.column("count the WAL senders not shown", &row, 1)?;
        if hidden > 0 {
            return Err(ActionError::Sql {
                target: session.label().to_owned(),
                message: format!(
                    "failover.user may not see the WAL senders' sync_priority in pg_stat_replication \
                     ({hidden} hidden), so it cannot check they took synchronous_standby_names in: \
                     grant it pg_read_all_stats (or pg_monitor)"
                ),
            });
        }
        if behind == 0 {
            break;
        }
        if Instant::now() >= deadline {
            return Err(ActionError::Timeout {
                what: format!(
                    "{}: {behind} WAL senders to take synchronous_standby_names = {names:?} in",
                    session.label()
                ),
                after: timeout,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    tokio::time::sleep(RELOAD_GRACE).await;
    // Only a delay when it fails (waiting commits go on at the standbys'
    // next own report): the setting itself is made.
    if let Err(e) = session
        .execute_simple("have the standbys answer", NUDGE_STANDBYS, limit(deadline))
        .await
    {
        tracing::warn!(backend = %session.label(), error = %e, "could not have the standbys answer at once; commits waiting for them go on at their next report");
    }
    let lsn: PgLsn = session
        .query_value(
            "read the WAL position",
            "SELECT pg_current_wal_lsn()",
            limit(deadline),
        )
        .await?;
    tracing::info!(
        backend = %session.label(),
        synchronous_standby_names = names,
        lsn = %lsn,
        "synchronous standbys set"
    );
    Ok(lsn.into())
}

/// The current timeline and WAL insert position of a primary.
async fn position(session: &Session, deadline: Instant) -> Result<Promoted, ActionError> {
    const WHAT: &str = "read the current timeline and WAL position";
    let (lsn, timeline_hex): (PgLsn, String) = session
        .query_pair(
            WHAT,
            "SELECT pg_current_wal_lsn(), \
                    substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
            limit(deadline),
        )
        .await?;
    let timeline = u32::from_str_radix(&timeline_hex, 16).map_err(|_| ActionError::Sql {
        target: session.label().to_owned(),
        message: format!("{WHAT}: unexpected timeline {timeline_hex:?} in the WAL file name"),
    })?;
    Ok(Promoted {
        timeline,
        lsn: lsn.into(),
    })
}

/// Repoints `standby` at `new_primary` and waits until it streams from it.
///
/// 1. Checks `standby` is in recovery, and reads its `primary_slot_name`
///    and `primary_conninfo`.
/// 2. On `new_primary`: reads its timeline, and creates that physical slot
///    unless it exists (`pg_create_physical_replication_slot(name, true)`):
///    slots are not replicated, so the promoted standby has none.
/// 3. Rewrites `primary_conninfo` with `new_primary`'s `host` and `port`
///    (dropping `hostaddr`; every other setting, `application_name` included,
///    is kept; `application_name` is set to the standby's name when missing),
///    with `ALTER SYSTEM` and `pg_reload_conf()`. The WAL receiver restarts
///    on the new setting and follows the new timeline
///    (`recovery_target_timeline = 'latest'`, the default).
/// 4. Waits until `pg_stat_wal_receiver` shows `streaming` from
///    `new_primary`'s host and port, on `new_primary`'s timeline. (The
///    timeline matters: a diverged standby does stream from the new primary
///    for a moment, the old timeline's WAL up to the fork, before its startup
///    process refuses the switch and starts over.) When `new_primary` is
///    itself a standby (cascading), `streaming` from it is enough.
///
/// `timeout` bounds all of it once logged in to the standby. Following
/// again the primary a standby already streams from is harmless.
///
/// # Errors
/// [`ActionError::CannotFollow`] when `standby` is not a standby, its
/// `primary_conninfo` cannot be parsed, or it is not streaming from
/// `new_primary` after `timeout` (the usual reason is a timeline that
/// diverged: the standby replayed WAL the new primary never had; its server
/// log then says `new timeline N forked off current database system
/// timeline M before current recovery point`; it needs `pg_rewind` or a new
/// base backup).
/// [`ActionError::Connect`], [`ActionError::Sql`], [`ActionError::Timeout`]
/// for the steps on either server.
pub async fn follow(
    standby: &Target,
    new_primary: &Target,
    login: &SqlLogin,
    timeout: Duration,
) -> Result<(), ActionError> {
    let (session, deadline) = connect(standby, login, timeout).await?;
    let cannot = |reason: String| ActionError::CannotFollow {
        target: standby.label(),
        reason,
    };
    if !session.in_recovery(limit(deadline)).await? {
        return Err(cannot(format!(
            "it is not a standby (not in recovery), so it cannot follow {}",
            new_primary.label()
        )));
    }

    // 1. What the standby uses now.
    let (slot, old_conninfo): (String, String) = session
        .query_pair(
            "read primary_slot_name and primary_conninfo",
            "SELECT current_setting('primary_slot_name'), current_setting('primary_conninfo')",
            limit(deadline),
        )
        .await?;
    let mut pairs = conninfo::parse(&old_conninfo)
        .map_err(|e| cannot(format!("cannot parse its primary_conninfo: {e}")))?;

    // 2. The new primary's timeline, and the standby's slot there.
    let timeline = prepare_primary(new_primary, login, &slot, deadline).await?;

    // 3. Point it at the new primary.
    conninfo::set(&mut pairs, "host", &new_primary.host);
    conninfo::set(&mut pairs, "port", &new_primary.port.to_string());
    conninfo::remove(&mut pairs, "hostaddr");
    if conninfo::get(&pairs, "application_name").is_none() {
        conninfo::set(&mut pairs, "application_name", &standby.name);
    }
    let new_conninfo = conninfo::format(&pairs);
    tracing::info!(
        backend = %session.label(),
        new_primary = %new_primary.label(),
        slot = %slot,
        "repointing primary_conninfo"
    );
    session
        .execute_simple(
            "ALTER SYSTEM SET primary_conninfo",
            &format!(
                "ALTER SYSTEM SET primary_conninfo = {}",
                sql::literal(&new_conninfo)
            ),
            limit(deadline),
        )
        .await?;
    reload(&session, deadline).await?;

    // 4. Wait until it streams from the new primary.
    match wait_streaming(&session, new_primary, timeline, deadline).await? {
        Streaming::Yes => {
            tracing::info!(
                backend = %session.label(),
                new_primary = %new_primary.label(),
                "streaming from the new primary"
            );
            Ok(())
        }
        Streaming::No { last, behind } => {
            let on_timeline = timeline.map_or_else(String::new, |t| format!(" on timeline {t}"));
            let hint = if behind {
                "; a standby that stays on an older timeline has usually diverged \
                 from the new primary (its server log says \"new timeline ... forked off\") and needs pg_rewind \
                 or a new base backup"
            } else {
                ""
            };
            Err(cannot(format!(
                "not streaming from {}{on_timeline} after {timeout:?}: last status {last}{hint}",
                new_primary.label()
            )))
        }
    }
}

/// On the new primary: its timeline (`None` when it is itself a standby),
/// and the standby's physical slot `slot` (none when empty).
async fn prepare_primary(
    primary: &Target,
    login: &SqlLogin,
    slot: &str,
    deadline: Instant,
) -> Result<Option<u32>, ActionError> {
    let session = sql::connect(primary, login).await?;
    let timeline = if session.in_recovery(limit(deadline)).await? {
        None
    } else {
        Some(position(&session, deadline).await?.timeline)
    };
    if !slot.is_empty() {
        ensure_slot(&session, slot, deadline).await?;
    }
    Ok(timeline)
}

/// Whether the physical slot `slot` exists on `session`'s server; another
/// kind of slot by that name is an error.
async fn slot_exists(
    session: &Session,
    slot: &str,
    deadline: Instant,
) -> Result<bool, ActionError> {
    const WHAT: &str = "look up the replication slot";
    let found = session
        .query_opt(
            WHAT,
            "SELECT slot_type FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
            limit(deadline),
        )
        .await?;
    let Some(row) = found else {
        return Ok(false);
    };
    let kind: String = session.column(WHAT, &row, 0)?;
    if kind == "physical" {
        Ok(true)
    } else {
        Err(ActionError::Sql {
            target: session.label().to_owned(),
            message: format!("replication slot {slot:?} exists but is {kind}"),
        })
    }
}

/// Creates the physical slot `slot` on the new primary unless it exists.
async fn ensure_slot(session: &Session, slot: &str, deadline: Instant) -> Result<(), ActionError> {
    if slot_exists(session, slot, deadline).await? {
        tracing::debug!(backend = %session.label(), slot, "replication slot exists");
        return Ok(());
    }
    let what = format!("create physical replication slot {slot:?}");
    let created = session
        .query_one(
            &what,
            "SELECT pg_create_physical_replication_slot($1, true)",
            &[&slot],
            limit(deadline),
        )
        .await;
    match created {
        Ok(_) => {
            tracing::info!(backend = %session.label(), slot, "created replication slot");
            Ok(())
        }
        Err(e) => {
            // Created by someone else meanwhile?
            if slot_exists(session, slot, deadline).await? {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// How [`wait_streaming`] ended.
enum Streaming {
    /// Streaming from the new primary, on its timeline.
    Yes,
    /// Not by the deadline.
    No {
        /// The WAL receiver's last state, for the message.
        last: String,
        /// It was last on an older timeline than the new primary's.
        behind: bool,
    },
}

/// Polls the standby's `pg_stat_wal_receiver` until it streams from
/// `primary`, on `timeline` when known, or `deadline` passes.
async fn wait_streaming(
    session: &Session,
    primary: &Target,
    timeline: Option<u32>,
    deadline: Instant,
) -> Result<Streaming, ActionError> {
    const WHAT: &str = "read pg_stat_wal_receiver";
    let timeline = timeline.and_then(|t| i32::try_from(t).ok());
    loop {
        let row = session
            .query_opt(
                WHAT,
                "SELECT status, sender_host, sender_port, received_tli FROM pg_stat_wal_receiver",
                &[],
                limit(deadline),
            )
            .await?;
        let (last, behind) = match row {
            None => ("no WAL receiver running".to_owned(), false),
            Some(row) => {
                let status: Option<String> = session.column(WHAT, &row, 0)?;
                let host: Option<String> = session.column(WHAT, &row, 1)?;
                let port: Option<i32> = session.column(WHAT, &row, 2)?;
                let received_tli: Option<i32> = session.column(WHAT, &row, 3)?;
                let status = status.unwrap_or_else(|| "unknown".to_owned());
                if status == "streaming"
                    && host.as_deref() == Some(primary.host.as_str())
                    && port == Some(i32::from(primary.port))
                    && timeline.is_none_or(|t| received_tli == Some(t))
                {
                    return Ok(Streaming::Yes);
                }
                let behind = matches!((received_tli, timeline), (Some(r), Some(t)) if r < t);
                let last = format!(
                    "{status} from {}:{}, timeline {}",
                    host.as_deref().unwrap_or("?"),
                    port.map_or_else(|| "?".to_owned(), |p| p.to_string()),
                    received_tli.map_or_else(|| "?".to_owned(), |t| t.to_string()),
                );
                (last, behind)
            }
        };
        let now = Instant::now();
        if now >= deadline {
            return Ok(Streaming::No { last, behind });
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}
