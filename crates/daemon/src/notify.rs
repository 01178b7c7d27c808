//! Telling systemd (`Type=notify`) how the daemon is: `READY=1` once its
//! sockets are bound and its state is loaded, `RELOADING=1` and `READY=1`
//! around a reload, `STOPPING=1` when a shutdown begins, and, when the unit
//! sets `WatchdogSec=` (systemd passes `WATCHDOG_USEC`), `WATCHDOG=1` pings
//! from the loop that does the daemon's real work, at half that period, so
//! a loop that is stuck gets the daemon restarted.
//!
//! Without systemd (`NOTIFY_SOCKET` unset) every call does nothing. A
//! notification that cannot be sent is logged at debug level and never
//! fails the daemon: systemd then restarts or times it out on its own.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;

fn send(what: &'static str, states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, what, "could not notify the service manager");
    }
}

/// Startup is finished: the daemon's sockets are bound and its state is
/// loaded (`READY=1`).
pub fn ready() {
    send("ready", &[NotifyState::Ready]);
}

/// A reload (SIGHUP) begins (`RELOADING=1` with the monotonic time, as
/// systemd 253+ wants); call [`reloaded`] once it is over, whatever its
/// outcome.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send("reloading", &[NotifyState::Reloading, now]),
        Err(_) => send("reloading", &[NotifyState::Reloading]),
    }
}

/// The reload is over (`READY=1`).
pub fn reloaded() {
    send("reloaded", &[NotifyState::Ready]);
}

/// A shutdown begins (`STOPPING=1`).
pub fn stopping() {
    send("stopping", &[NotifyState::Stopping]);
}

/// Sends `WATCHDOG=1` every half `WATCHDOG_USEC` from the loop that owns
/// it: the loop awaits [`Pinger::due`] beside its other work and calls
/// [`Pinger::ping`] on each turn. Without a watchdog (or for another
/// process: `WATCHDOG_PID`) it never fires.
#[derive(Debug)]
pub struct Pinger {
    every: Option<Duration>,
    next: Instant,
}

impl Pinger {
    /// The pinger systemd's environment asks for.
    pub fn from_env() -> Pinger {
        let mut usec = 0;
        let every = (std::env::var_os("NOTIFY_SOCKET").is_some()
            && sd_notify::watchdog_enabled(false, &mut usec)
            && usec > 0)
            .then(|| Duration::from_micros(usec / 2));
        Pinger::every(every)
    }

    /// A pinger firing every `every` (`None`: never).
    pub fn every(every: Option<Duration>) -> Pinger {
        Pinger {
            every,
            next: Instant::now(),
        }
    }

    /// How often it pings, if at all.
    pub fn period(&self) -> Option<Duration> {
        self.every
    }

    /// Completes when the next ping is due; never without a watchdog.
    pub async fn due(&self) {
        match self.every {
            Some(_) => tokio::time::sleep_until(self.next).await,
            None => std::future::pending().await,
        }
    }

    /// Pings if one is due (a turn of the loop proves it is not stuck).
    pub fn ping(&mut self) {
        let Some(every) = self.every else { return };
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + every;
        send("watchdog", &[NotifyState::Watchdog]);
    }
}

#[cfg(test)]
mod tests;
