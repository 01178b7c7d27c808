//! `[health_check]` and `[replication_check]`: what the monitor probes on
//! every backend, and how often.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::secret::{Secret, resolve_password};
use crate::validate;

/// `[health_check]`: the connect-and-query probe that decides a backend is
/// down (pgpool's `health_check_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// `health_check.period`: time between probes of one backend.
    pub period: Duration,
    /// `health_check.timeout`: a probe taking longer has failed.
    pub timeout: Duration,
    /// `health_check.max_retries`: failed probes retried before the backend
    /// is declared down (0 = at the first failure).
    pub max_retries: u32,
    /// `health_check.retry_delay`: wait between retries.
    pub retry_delay: Duration,
    /// `health_check.recheck_retry_delay`: wait between the retries of a
    /// failed probe that a proxy asked for (its connection to the backend
    /// failed): a short burst, so a dead primary is found sooner.
    pub recheck_retry_delay: Duration,
    /// `health_check.user`: the role probes log in as.
    pub user: String,
    /// `health_check.password`, or the contents of
    /// `health_check.password_file`; `None` = no password.
    pub password: Option<Secret>,
    /// `health_check.database`: the database probes connect to.
    pub database: String,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            max_retries: 2,
            retry_delay: Duration::from_millis(500),
            recheck_retry_delay: Duration::from_millis(100),
            user: "pgwarden".to_owned(),
            password: None,
            database: "postgres".to_owned(),
        }
    }
}

/// `[health_check]` as written.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    #[serde(with = "humantime_serde")]
    period: Duration,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
    max_retries: u32,
    #[serde(with = "humantime_serde")]
    retry_delay: Duration,
    #[serde(with = "humantime_serde")]
    recheck_retry_delay: Duration,
    user: String,
    password: Option<Secret>,
    password_file: Option<PathBuf>,
    database: String,
}

raw_default_without_password!(RawHealthCheck from HealthCheckConfig {
    period,
    timeout,
    max_retries,
    retry_delay,
    recheck_retry_delay,
    user,
    database,
});

impl RawHealthCheck {
    pub(crate) fn validate(self) -> Result<HealthCheckConfig, ConfigError> {
        validate::positive("health_check.period", self.period)?;
        validate::positive("health_check.timeout", self.timeout)?;
        validate::non_empty("health_check.user", &self.user)?;
        validate::non_empty("health_check.database", &self.database)?;
        let password =
            resolve_password("health_check", self.password, self.password_file.as_deref())?;
        Ok(HealthCheckConfig {
            period: self.period,
            timeout: self.timeout,
            max_retries: self.max_retries,
            retry_delay: self.retry_delay,
            recheck_retry_delay: self.recheck_retry_delay,
            user: self.user,
            password,
            database: self.database,
        })
    }
}

/// `[replication_check]`: the standby lag probe (pgpool's `sr_check_*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationCheckConfig {
    /// `replication_check.period`: time between lag measurements.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// `replication_check.max_lag_bytes`: a standby further behind the
    /// primary's WAL is neither promoted nor load-balanced to.
    pub max_lag_bytes: u64,
    /// `replication_check.max_lag_time`: a standby whose replay is further
    /// behind than this (the primary's `pg_stat_replication.replay_lag`)
    /// is not load-balanced to (pgpool's `delay_threshold_by_time`).
    #[serde(with = "humantime_serde")]
    pub max_lag_time: Duration,
}

impl Default for ReplicationCheckConfig {
    fn default() -> Self {
        Self {
            period: Duration::from_secs(1),
            max_lag_bytes: 16 * 1024 * 1024,
            max_lag_time: Duration::from_secs(10),
        }
    }
}

impl ReplicationCheckConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        validate::positive("replication_check.period", self.period)?;
        validate::positive("replication_check.max_lag_time", self.max_lag_time)
    }
}
