//! Failover actions: promote a standby, repoint the others.
//!
//! The monitor decides *what* to do (which backend failed, which standby
//! becomes the primary); this module does it, in one of the two
//! `failover.mode`s:
//!
//! - [`builtin`]: over SQL, logged in with [`SqlLogin`]. [`builtin::fence`]
//!   makes a still reachable old primary read-only by default and ends its
//!   client sessions; [`builtin::promote`] runs `pg_promote()` (lifting such
//!   a fence on the new primary) and reports the new timeline ([`Promoted`]);
//!   [`builtin::follow`] repoints a standby's `primary_conninfo` at the new
//!   primary (creating its replication slot there first) and waits until it
//!   streams.
//! - [`command`]: pgpool-II compatible hooks, `failover.command` and
//!   `failover.follow_primary_command`, with their `%` placeholders
//!   ([`command::expand`]) run by `/bin/sh` under a timeout
//!   ([`command::run_hook`]). Fencing the old primary is then
//!   `failover.command`'s job.
//!
//! [`conninfo`] parses and rewrites libpq `key=value` strings, the format of
//! `primary_conninfo`.
//!
//! Every action names the backend it acts on ([`Target`]) and fails with an
//! [`ActionError`] whose message is one line, ready for a log or an RPC
//! status.

pub mod builtin;
pub mod command;
pub mod conninfo;
mod error;
pub(crate) mod sql;
mod target;

pub use command::Placeholders;
pub use error::ActionError;
pub use target::{Promoted, SqlLogin, Target};
