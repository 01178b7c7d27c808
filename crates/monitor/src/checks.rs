//! Health and replication checks: one task per backend.
//!
//! Every `health_check.period` (every `retry_delay` after a failure) each
//! task runs one query on its backend over a kept-open connection, with
//! `health_check.timeout` for connecting and for the query, and reports the
//! result to the machine. Down backends keep being checked (pgpool-II stops
//! checking them, which leaves stale state).

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
    /// `health_check.user`.
    pub user: String,
    /// `health_check.password`.
    pub password: Option<String>,
    /// `health_check.database`.
    pub database: String,
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

/// Runs the check loop of one backend until `stop` fires.
pub async fn run(
    target: CheckTarget,
    settings: CheckSettings,
    events: mpsc::Sender<Event>,
    recheck: std::sync::Arc<Notify>,
    stop: CancellationToken,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        let result = check_once(&target, &settings, &mut client).await;
        let healthy = result.is_ok();
        let wait = if healthy {
            settings.period
        } else {
            settings.retry_delay
        };
        if let Err(e) = &result {
            tracing::debug!(backend = target.id, error = %e, "check failed");
        }
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        if events
            .send(Event::Checked {
                id: target.id,
                at_ms,
                result,
            })
            .await
            .is_err()
        {
            return;
        }
        // A recheck shortens the wait between healthy checks only: retries
        // keep their `retry_delay`, so `max_retries` still spans the same time.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = recheck.notified(), if healthy => {}
        }
    }
}

/// One check, reusing (and refreshing) `client`.
pub async fn check_once(
    t: &CheckTarget,
    s: &CheckSettings,
    client: &mut Option<tokio_postgres::Client>,
) -> Result<Observation, String> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(connect(t, s).await?);
    }
    let Some(c) = client.as_ref() else {
        return Err("not connected".into());
    };
    let row = match tokio::time::timeout(s.timeout, c.query_one(CHECK_SQL, &[])).await {
        Ok(Ok(row)) => row,
        Ok(Err(e)) => {
            *client = None;
            return Err(describe(&e));
        }
        Err(_) => {
            // The connection may be wedged: start afresh next time.
            *client = None;
            return Err(format!("no answer within {:?}", s.timeout));
        }
    };
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

async fn connect(t: &CheckTarget, s: &CheckSettings) -> Result<tokio_postgres::Client, String> {
    let login = SqlLogin {
        user: s.user.clone(),
        password: s.password.clone(),
        database: s.database.clone(),
        connect_timeout: s.timeout,
    };
    let cfg = sql::pg_config(&t.host, t.port, &login);
    match tokio::time::timeout(s.timeout, cfg.connect(tokio_postgres::NoTls)).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        }
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("connect timed out after {:?}", s.timeout)),
    }
}
