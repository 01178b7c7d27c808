//! `[failover]`: how a standby is promoted when the primary is lost.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::secret::{Secret, resolve_password};
use crate::validate;

spelled_enum! {
    /// Who performs promotion and repointing.
    pub enum FailoverMode {
        /// `"builtin"`: pgwarden runs `pg_promote()` and repoints the standbys
        /// over SQL, logging in as `failover.user`.
        #[default]
        Builtin = "builtin",
        /// `"command"`: pgwarden runs `failover.command` and
        /// `failover.follow_primary_command`, as pgpool does.
        Command = "command",
    }
}

spelled_enum! {
    /// `failover.synchronous_mode`, Patroni's meanings.
    pub enum SynchronousMode {
        /// `"off"`: asynchronous replication; a failover may lose up to
        /// `replication_check.max_lag_bytes` of acknowledged WAL.
        #[default]
        Off = "off",
        /// `"on"`: the monitor keeps the primary's
        /// `synchronous_standby_names` on healthy, caught-up standbys and
        /// promotes only a standby holding every acknowledged commit; with
        /// none left healthy, replication becomes asynchronous (said loudly).
        On = "on",
        /// `"strict"`: as `"on"`, but never asynchronous: writes wait
        /// rather than be acknowledged without a synchronous copy.
        Strict = "strict",
    }
}

/// `[failover]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverConfig {
    /// `failover.mode`.
    pub mode: FailoverMode,
    /// `failover.user`: builtin mode logs in as this role (a superuser, or
    /// one granted `pg_promote` and `ALTER SYSTEM`).
    pub user: String,
    /// `failover.password`, or the contents of `failover.password_file`;
    /// `None` = no password.
    pub password: Option<Secret>,
    /// `failover.command`: the failover hook (command mode), with pgpool's
    /// placeholders `%d %h %p %D %m %H %M %P %r %R %N %S %%`; empty = none.
    pub command: String,
    /// `failover.follow_primary_command`: run for each standby after a
    /// promotion (command mode); empty = none.
    pub follow_primary_command: String,
    /// `failover.command_timeout`: a hook still running after this is
    /// killed and counts as failed.
    pub command_timeout: Duration,
    /// `failover.rejoin_command`: makes a detached backend a standby of the
    /// current primary when an operator asks (`pgwardenctl rejoin`,
    /// pgpool's pcp_recovery_node with recovery_1st_stage_command); same
    /// placeholders, `%d %h %p %D` the backend, `%m %H %r %R` the primary,
    /// and `%a` the backend's name. Empty = rejoin is refused.
    pub rejoin_command: String,
    /// `failover.rejoin_timeout`: a rejoin (a pg_rewind, or a whole base
    /// backup) still running after this is killed and counts as failed.
    pub rejoin_timeout: Duration,
    /// `failover.switchover_drain_timeout`: a planned switchover (builtin
    /// mode) lets the old primary's running transactions finish, new ones
    /// held by the proxies, for at most this long before it fences the old
    /// primary (which ends what still runs); zero = fence at once.
    pub switchover_drain_timeout: Duration,
    /// `failover.synchronous_mode`.
    pub synchronous_mode: SynchronousMode,
    /// `failover.synchronous_count`: how many synchronous standbys confirm
    /// each commit (`ANY n (...)`), at least 1.
    pub synchronous_count: u32,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            mode: FailoverMode::Builtin,
            user: "postgres".to_owned(),
            password: None,
            command: String::new(),
            follow_primary_command: String::new(),
            command_timeout: Duration::from_secs(60),
            rejoin_command: String::new(),
            rejoin_timeout: Duration::from_secs(3600),
            switchover_drain_timeout: Duration::from_secs(5),
            synchronous_mode: SynchronousMode::Off,
            synchronous_count: 1,
        }
    }
}

/// `[failover]` as written.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RawFailover {
    mode: FailoverMode,
    user: String,
    password: Option<Secret>,
    password_file: Option<PathBuf>,
    command: String,
    follow_primary_command: String,
    #[serde(with = "humantime_serde")]
    command_timeout: Duration,
    rejoin_command: String,
    #[serde(with = "humantime_serde")]
    rejoin_timeout: Duration,
    #[serde(with = "humantime_serde")]
    switchover_drain_timeout: Duration,
    synchronous_mode: SynchronousMode,
    synchronous_count: u32,
}

raw_default_without_password!(RawFailover from FailoverConfig {
    mode,
    user,
    command,
    follow_primary_command,
    command_timeout,
    rejoin_command,
    rejoin_timeout,
    switchover_drain_timeout,
    synchronous_mode,
    synchronous_count,
});

impl RawFailover {
    pub(crate) fn validate(self) -> Result<FailoverConfig, ConfigError> {
        match self.mode {
            FailoverMode::Builtin => validate::non_empty("failover.user", &self.user)?,
            FailoverMode::Command => {
                if self.command.trim().is_empty() {
                    return Err(ConfigError::invalid(
                        "failover.command",
                        "must not be empty when failover.mode = \"command\"",
                    ));
                }
            }
        }
        if self.synchronous_mode != SynchronousMode::Off {
            // The monitor sets synchronous_standby_names over SQL in
            // either mode.
            validate::non_empty("failover.user", &self.user)?;
        }
        validate::at_least("failover.synchronous_count", self.synchronous_count, 1)?;
        validate::positive("failover.command_timeout", self.command_timeout)?;
        validate::positive("failover.rejoin_timeout", self.rejoin_timeout)?;
        let password = resolve_password("failover", self.password, self.password_file.as_deref())?;
        Ok(FailoverConfig {
            mode: self.mode,
            user: self.user,
            password,
            command: self.command,
            follow_primary_command: self.follow_primary_command,
            command_timeout: self.command_timeout,
            rejoin_command: self.rejoin_command,
            rejoin_timeout: self.rejoin_timeout,
            switchover_drain_timeout: self.switchover_drain_timeout,
            synchronous_mode: self.synchronous_mode,
            synchronous_count: self.synchronous_count,
        })
    }
}
