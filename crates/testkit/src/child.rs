//! A spawned process that cannot outlive its test.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long [`ChildGuard`]'s drop waits after `SIGTERM` before `SIGKILL`.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// Owns a spawned process (a pgwarden daemon under test): on drop it sends
/// `SIGTERM`, waits up to 5 s, then sends `SIGKILL` and reaps it.
///
/// A failing assertion unwinds through the guard, so daemons never leak into
/// the next test. Signals reach the child only (not its own children).
#[derive(Debug)]
pub struct ChildGuard(Child);

impl ChildGuard {
    /// Spawns `cmd` under a guard.
    pub fn spawn(cmd: &mut Command) -> io::Result<ChildGuard> {
        cmd.spawn().map(ChildGuard)
    }

    /// Guards an already spawned child.
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(child)
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// The child, e.g. to take its stdout or stderr pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.0
    }

    /// Sends `signal` to the child (`SIGTERM` to test graceful shutdown,
    /// `SIGSTOP` to freeze it...). An error if it has already been reaped.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        let pid = i32::try_from(self.0.id()).map_err(io::Error::other)?;
        kill(Pid::from_raw(pid), signal).map_err(io::Error::from)
    }

    /// Kills the child with `SIGKILL` (a crash) and reaps it. A no-op if it
    /// has already exited.
    pub fn kill9(&mut self) -> io::Result<()> {
        if self.0.try_wait()?.is_some() {
            return Ok(());
        }
        self.0.kill()?;
        self.0.wait().map(drop)
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still
    /// running (or cannot be waited for).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            match self.0.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => {}
                Err(_) => return None,
            }
            if start.elapsed() >= timeout {
                return None;
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// The exit status if the child has exited, without blocking.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.0.try_wait()
    }

    /// Waits for the child to exit.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        self.0.wait()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        if self.signal(Signal::SIGTERM).is_ok() && self.wait_timeout(TERM_GRACE).is_some() {
            return;
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_terminates_the_child() {
        let guard = ChildGuard::spawn(Command::new("sleep").arg("60")).unwrap();
        let pid = guard.pid();
        let start = Instant::now();
        drop(guard);
        assert!(start.elapsed() < Duration::from_secs(4));
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn drop_kills_a_child_ignoring_sigterm() {
        let guard =
            ChildGuard::spawn(Command::new("sh").args(["-c", "trap '' TERM; exec sleep 60"]))
                .unwrap();
        let pid = guard.pid();
        sleep(Duration::from_millis(200));
        drop(guard);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn signal_wait_and_kill9() {
        let mut guard = ChildGuard::spawn(Command::new("sleep").arg("60")).unwrap();
        assert!(guard.try_wait().unwrap().is_none());
        assert!(guard.wait_timeout(Duration::from_millis(50)).is_none());
        guard.signal(Signal::SIGTERM).unwrap();
        let status = guard.wait_timeout(Duration::from_secs(5)).unwrap();
        assert!(!status.success());

        let mut guard = ChildGuard::spawn(Command::new("sleep").arg("60")).unwrap();
        guard.kill9().unwrap();
        assert!(guard.try_wait().unwrap().is_some());
        guard.kill9().unwrap();
    }
}
