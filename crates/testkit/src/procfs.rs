//! Process liveness from `/proc`, zombie-aware.
//!
//! A killed postmaster is re-parented to PID 1, which in containers may reap it
//! late or never: a zombie still answers `kill(pid, 0)`, so liveness is read
//! from `/proc/<pid>/stat` instead.

use std::fs;

/// The fields of `/proc/<pid>/stat` this crate needs.
struct Stat {
    comm: String,
    state: char,
    ppid: i32,
}

/// Parses `/proc/<pid>/stat`; `None` when the process does not exist.
fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let mut rest = text.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(Stat { comm, state, ppid })
}

impl Stat {
    /// Neither a zombie nor dead.
    fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Whether `pid` is a live (not zombie) process whose command name is
/// `postgres`: guards against a stale `postmaster.pid` naming a recycled pid.
pub(crate) fn is_live_postgres(pid: i32) -> bool {
    stat(pid).is_some_and(|s| s.is_live() && s.comm == "postgres")
}

/// Live children of `pid`.
pub(crate) fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| stat(*child).is_some_and(|s| s.ppid == pid && s.is_live()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_stat() {
        let me = i32::try_from(std::process::id()).unwrap();
        let s = stat(me).unwrap();
        assert!(s.is_live());
        assert!(!is_live_postgres(me));
        assert!(stat(i32::MAX).is_none());
    }

    #[test]
    fn finds_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        assert!(children_of(me).contains(&pid));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
