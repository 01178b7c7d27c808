//! `attach`, `detach`, `promote` and `rejoin`: resolve the backend by the
//! current state, make the request, print the monitor's answer.

use std::io::Write;
use std::time::Duration;

use pgwarden_proto::v1::{ChangeReply, ClusterState, Status};

use crate::CtlError;
use crate::cli::{PromoteArgs, RejoinArgs, Target};
use crate::monitor::Monitor;
use crate::render::summary_line;
use crate::resolve::resolve;

/// AttachBackend (pcp_attach_node) when `attach`, else DetachBackend
/// (pcp_detach_node).
pub async fn attach_or_detach(
    monitor: &mut Monitor,
    target: &Target,
    attach: bool,
    json: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let state = monitor.get_cluster().await?;
    let id = resolve(&state, &target.backend)?.id;
    let reply = if attach {
        monitor.attach(id).await?
    } else {
        monitor.detach(id).await?
    };
    super::print(out, json, &reply)
}

/// The two changes `--wait` can follow to their end.
#[derive(Debug, Clone, Copy)]
pub enum Waited<'a> {
    /// PromoteBackend (pcp_promote_node --switchover). The monitor answers
    /// as soon as the switchover starts; with `--wait`, follow it to the
    /// end.
    Promote(&'a PromoteArgs),
    /// RejoinBackend (pcp_recovery_node). The monitor answers once the
    /// rejoin command has started; with `--wait`, follow the backend until
    /// it is attached (exit 0) or the rejoin failed (exit 1), printing each
    /// new reason.
    Rejoin(&'a RejoinArgs),
}

/// `promote` or `rejoin` (see [`Waited`]): resolve the backend, make the
/// request, print the monitor's answer; with `--wait`, its message, the
/// progress, and the end.
pub async fn waited(
    monitor: &mut Monitor,
    change: Waited<'_>,
    json: bool,
    out: &mut impl Write,
    interrupt: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    let (target, wait, timeout) = match change {
        Waited::Promote(args) => (&args.target, args.wait, args.timeout),
        Waited::Rejoin(args) => (&args.target, args.wait, args.timeout),
    };
    let state = monitor.get_cluster().await?;
    let backend = resolve(&state, &target.backend)?;
    let (id, name) = (backend.id, backend.name.clone());
    let before = backend.reason.clone();
    let reply = match change {
        Waited::Promote(args) => monitor.promote(id, args.force).await?,
        Waited::Rejoin(_) => monitor.rejoin(id).await?,
    };
    if !wait {
        return super::print(out, json, &reply);
    }
    if !json {
        writeln!(out, "{}", reply.message)?;
        out.flush()?;
    }
    let since = reply.state.as_ref().map_or(0, |s| s.generation);
    let progress = (!json).then_some(&mut *out);
    let wait = Wait {
        id,
        name: &name,
        since,
        timeout,
    };
    let (state, done) = match change {
        Waited::Promote(_) => (
            wait.until_primary(monitor, progress, interrupt).await?,
            "is the primary",
        ),
        Waited::Rejoin(_) => (
            wait.until_attached(monitor, &before, progress, interrupt)
                .await?,
            "rejoined and attached",
        ),
    };
    let done = ChangeReply {
        message: format!("{name} {done} (generation {})", state.generation),
        state: Some(state),
    };
    super::print(out, json, &done)
}

/// How often `rejoin --wait` looks at the backend.
const REJOIN_POLL: Duration = Duration::from_millis(500);

/// `--wait`: following a started switchover or rejoin.
struct Wait<'a> {
    /// The standby being promoted, or the backend rejoining.
    id: u32,
    name: &'a str,
    /// The generation of the reply that started it.
    since: u64,
    timeout: Duration,
}

impl Wait<'_> {
    /// Watches the cluster until backend `id` is the primary and up with no
    /// failover in progress, writing each newer generation's line to
    /// `progress`. Fails when a later generation ends the failover with
    /// another outcome, on the timeout, or when interrupted.
    async fn until_primary(
        &self,
        monitor: &mut Monitor,
        mut progress: Option<&mut impl Write>,
        interrupt: impl Future<Output = ()>,
    ) -> Result<ClusterState, CtlError> {
        let mut states = monitor.watch().await?;
        let mut interrupt = std::pin::pin!(interrupt);
        let mut deadline = std::pin::pin!(tokio::time::sleep(self.timeout));
        let mut shown = self.since;
        let follow = "it may still complete: follow it with `pgwardenctl watch`";
        loop {
            let state = tokio::select! {
                () = &mut interrupt => {
                    return Err(CtlError::NotCompleted(format!(
                        "interrupted while waiting for {} to become the primary; {follow}",
                        self.name
                    )));
                }
                () = &mut deadline => {
                    return Err(CtlError::NotCompleted(format!(
                        "{} is not the primary after {}; {follow}",
                        self.name,
                        humantime::format_duration(self.timeout)
                    )));
                }
                state = states.next() => state?,
            };
            if let Some(out) = progress.as_mut()
                && state.generation > shown
            {
                writeln!(out, "{}", summary_line(&state))?;
                out.flush()?;
                shown = state.generation;
            }
            match self.outcome(&state) {
                Some(Ok(())) => return Ok(state),
                Some(Err(reason)) => return Err(CtlError::NotCompleted(reason)),
                None => {}
            }
        }
    }

    /// Polls the cluster every [`REJOIN_POLL`] until backend `id` is up
    /// (attached), writing each new reason to `progress`. Fails when the
    /// rejoin failed, on the timeout, or when interrupted. An earlier
    /// attempt's failure (reason `before`), still in a state that has not
    /// caught up with this request, is not this attempt's outcome: a
    /// failure counts once its reason is new or its generation is past the
    /// reply's (the start of a rejoin and its failure each commit a
    /// generation).
    async fn until_attached(
        &self,
        monitor: &mut Monitor,
        before: &str,
        mut progress: Option<&mut impl Write>,
        interrupt: impl Future<Output = ()>,
    ) -> Result<ClusterState, CtlError> {
        let name = self.name;
        let mut interrupt = std::pin::pin!(interrupt);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let follow = "it may still complete: follow it with `pgwardenctl status`";
        let mut shown = String::new();
        loop {
            let state = monitor.get_cluster().await?;
            let b = state.backends.iter().find(|b| b.id == self.id);
            let status = b.map(pgwarden_proto::v1::BackendState::status);
            let reason = b.map(|b| b.reason.clone()).unwrap_or_default();
            if status == Some(Status::Up) {
                return Ok(state);
            }
            let current = reason != before || state.generation > self.since;
            if let Some(why) = reason.strip_prefix("rejoin failed: ")
                && current
            {
                return Err(CtlError::NotCompleted(format!(
                    "{name} was not rejoined: {why}"
                )));
            }
            if let Some(out) = progress.as_mut()
                && current
                && reason != shown
                && !reason.is_empty()
            {
                writeln!(out, "{name}: {reason}")?;
                out.flush()?;
                shown = reason;
            }
            tokio::select! {
                () = &mut interrupt => {
                    return Err(CtlError::NotCompleted(format!(
                        "interrupted while waiting for {name} to rejoin; {follow}"
                    )));
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(CtlError::NotCompleted(format!(
                        "{name} is not attached after {}; {follow}",
                        humantime::format_duration(self.timeout)
                    )));
                }
                () = tokio::time::sleep(REJOIN_POLL) => {}
            }
        }
    }

    /// Whether `state` ends the wait: promoted, or a failure with the reason.
    fn outcome(&self, state: &ClusterState) -> Option<Result<(), String>> {
        let backend = state.backends.iter().find(|b| b.id == self.id);
        let up = backend.is_some_and(|b| b.status() == Status::Up);
        if state.primary_id == Some(self.id) && up && !state.failover_in_progress {
            return Some(Ok(()));
        }
        if state.generation > self.since && !state.failover_in_progress {
            let why = backend
                .map(|b| b.reason.as_str())
                .filter(|r| !r.is_empty())
                .unwrap_or("the monitor ended the failover");
            let primary = summary_line(state);
            return Some(Err(format!(
                "{} was not promoted: {why} ({primary})",
                self.name
            )));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_proto::v1::{BackendState, Role};

    fn state(generation: u64, primary: Option<u32>, in_progress: bool) -> ClusterState {
        let backend = |id: u32| BackendState {
            id,
            name: format!("pg{id}"),
            role: if Some(id) == primary {
                Role::Primary as i32
            } else {
                Role::Standby as i32
            },
            status: Status::Up as i32,
            ..Default::default()
        };
        ClusterState {
            generation,
            primary_id: primary,
            backends: vec![backend(0), backend(1)],
            failover_in_progress: in_progress,
            monitor: String::new(),
            no_quorum: false,
            switchover_in_progress: false,
            failover_blocked: String::new(),
        }
    }

    const WAIT: Wait<'static> = Wait {
        id: 1,
        name: "pg1",
        since: 5,
        timeout: Duration::from_secs(1),
    };

    #[test]
    fn promoted() {
        assert_eq!(WAIT.outcome(&state(7, Some(1), false)), Some(Ok(())));
    }

    #[test]
    fn still_going() {
        assert_eq!(WAIT.outcome(&state(5, None, true)), None);
        assert_eq!(WAIT.outcome(&state(6, None, true)), None);
        // The reply's own generation (or older) never counts as a failure.
        assert_eq!(WAIT.outcome(&state(5, Some(0), false)), None);
        // Primary of record but not up yet.
        let mut s = state(7, Some(1), false);
        s.backends[1].status = Status::Down as i32;
        assert!(WAIT.outcome(&s).is_some_and(|r| r.is_err()));
        assert_eq!(WAIT.outcome(&state(7, Some(1), true)), None);
    }

    #[test]
    fn failed() {
        let mut s = state(7, None, false);
        s.backends[1].status = Status::Detached as i32;
        s.backends[1].reason = "promotion failed: timeout".into();
        let Some(Err(reason)) = WAIT.outcome(&s) else {
            panic!()
        };
        assert_eq!(
            reason,
            "pg1 was not promoted: promotion failed: timeout \
             (generation 7: no primary; pg0 up, pg1 detached (promotion failed: timeout))"
        );
    }
}
